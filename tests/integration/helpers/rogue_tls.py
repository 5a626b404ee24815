"""A misbehaving rats-tls peer for fault tests, run inside a lab namespace.

server: listens in place of an egress and presents the certificate it is
        given (e.g. valid evidence bound to another key), with a chosen TLS
        version range and ALPN behaviour. stdout, JSON lines:
        {"event": "listening"}, then per connection {"event": "accepted"},
        {"event": "handshake", "ok": ..., "version": ..., "alpn": ...} and
        {"event": "closed", "app_bytes_in": n} (bytes the tunnel peer sent
        after the handshake: a refusing peer sends none).
client: connects to an egress like an ingress would, but with a chosen TLS
        version range / ALPN offer; sends --send after the handshake and
        prints one JSON line with what happened.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_lock = threading.Lock()


def emit(**fields) -> None:
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def _versions(ctx: ssl.SSLContext, args) -> None:
    ctx.minimum_version = VERSIONS[args.min]
    ctx.maximum_version = VERSIONS[args.max]


def _alpn(ctx: ssl.SSLContext, args) -> None:
    if args.alpn != "none":
        ctx.set_alpn_protocols(args.alpn.split(","))


def run_server(args) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    _versions(ctx, args)
    _alpn(ctx, args)
    ctx.verify_mode = ssl.CERT_NONE
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(16)
    emit(event="listening", port=args.port)

    def one(raw: socket.socket) -> None:
        emit(event="accepted")
        raw.settimeout(30)
        try:
            tls = ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            emit(event="handshake", ok=False, error=str(exc))
            raw.close()
            emit(event="closed", app_bytes_in=0)
            return
        emit(event="handshake", ok=True, version=tls.version(), alpn=tls.selected_alpn_protocol())
        total = 0
        try:
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                total += len(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            tls.close()
        emit(event="closed", app_bytes_in=total)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def run_client(args) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _versions(ctx, args)
    _alpn(ctx, args)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    out: dict = {}
    raw = socket.create_connection((args.host, args.port), timeout=30)
    try:
        tls = ctx.wrap_socket(raw)
    except (OSError, ssl.SSLError) as exc:
        out.update(handshake="failed", error=str(exc))
        print(json.dumps(out))
        return
    out.update(handshake="ok", version=tls.version(), alpn=tls.selected_alpn_protocol())
    received = 0
    try:
        # TLS 1.3: a server's refusal of our certificate or ALPN shows up on
        # the first read, after our first write.
        tls.sendall(args.send.encode())
        while True:
            data = tls.recv(65536)
            if not data:
                out["end"] = "eof"
                break
            received += len(data)
    except (OSError, ssl.SSLError) as exc:
        out["end"] = f"error: {exc}"
    out["received"] = received
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--min", choices=list(VERSIONS), default="1.3")
    p.add_argument("--max", choices=list(VERSIONS), default="1.3")
    p.add_argument("--alpn", default="rats-tls", help="comma-separated list, or none")
    p.add_argument("--send", default="SECRET-APPLICATION-BYTES\n")
    args = p.parse_args()
    (run_server if args.role == "server" else run_client)(args)


if __name__ == "__main__":
    main()
