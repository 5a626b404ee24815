# Gateway: routes between the client and server networks (nothing of tng-nfq
# in the path), runs the sample Attestation Service the client's verifier
# asks, and captures the wire toward the server.
start_bg as "$TNG_NFQ" --log-format json dev as --listen "0.0.0.0:$AS_PORT" --state-dir "$STATE/as-state"
wait_until as 20 port_open 127.0.0.1 "$AS_PORT"
say "sample Attestation Service (REST) on 0.0.0.0:$AS_PORT, policy trust_all"
capture_start 8080
