"""HTTP layer of the gateway: sans-io parsing and pure matching (no sockets here)."""
