"""An echo backend that logs every TCP connection it accepts, run in a lab namespace.

Unlike backend.py it reports connections that carry no bytes at all, so a
test can prove that a refused tunnel connection never reached the backend.
Readiness is its "listening" line (no probe connection is ever needed).

stdout (JSON lines): {"event": "listening"}, then per connection
{"event": "accepted", "id": n, "peer": ...} and
{"event": "closed", "id": n, "bytes_in": k, "sha256_in": ...}.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import signal
import socket
import sys
import threading

_lock = threading.Lock()
_ids = itertools.count(1)


def emit(**fields) -> None:
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def serve_one(conn: socket.socket, peer) -> None:
    n = next(_ids)
    emit(event="accepted", id=n, peer=f"{peer[0]}:{peer[1]}")
    total = 0
    digest = hashlib.sha256()
    try:
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                total += len(data)
                digest.update(data)
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
    except OSError as exc:
        emit(event="error", id=n, error=str(exc))
    emit(event="closed", id=n, bytes_in=total, sha256_in=digest.hexdigest())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(128)
    emit(event="listening", port=args.port)
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=serve_one, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
