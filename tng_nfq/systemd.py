"""A tiny sd_notify client: tells systemd (Type=notify units) how the daemon is doing.

systemd hands a notify-type service the address of a datagram socket in
$NOTIFY_SOCKET: a filesystem path, or an abstract socket name written with a
leading "@". The protocol is one datagram per message of newline-separated
`KEY=value` lines (`READY=1`, `STOPPING=1`, `STATUS=free text`). Without
$NOTIFY_SOCKET (not under systemd) every call does nothing. A failure to
send is logged and otherwise ignored: the daemon never dies for systemd.

The daemon sends `READY=1` exactly when it logs "ready" (every listener
bound, rules in, every attester holding its first certificate), so
`systemctl start tng-nfq` returns only once the gateway can serve, and
`STOPPING=1` when a stop begins.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(component="systemd")

ENV = "NOTIFY_SOCKET"


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock:CID:PORT, not supported here


def notify(*lines: str, environ: dict | None = None) -> bool:
    """Send `lines` (each `KEY=value`) as one message; True when it was sent."""
    raw = (os.environ if environ is None else environ).get(ENV, "")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.warning("sd_notify socket address not supported", notify_socket=raw)
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sd_notify failed", notify_socket=raw, error=str(exc))
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1 (plus an optional STATUS= line)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str | None = "stopping") -> bool:
    """STOPPING=1 (plus an optional STATUS= line)."""
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    """A free-text status line (shown by `systemctl status`)."""
    return notify(f"STATUS={text}")
