"""A misbehaving Attestation Service, run inside a lab namespace.

  --mode garbage   POST /attestation -> 200 with an HTML page instead of a token
  --mode 5xx       POST /attestation -> 503 with a text body
  --mode slow      POST /attestation -> holds the request for --delay seconds, then a 503
  --mode raw       answers any connection with bytes that are not HTTP, then closes

stdout: {"event": "listening", ...} once it accepts, then {"event": "as request",
"path": ...} for every request it read (for raw mode: every connection).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()


def emit(**fields) -> None:
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def make_handler(mode: str, delay: float, release: threading.Event):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def do_GET(self):  # noqa: N802
            emit(event="as request", method="GET", path=self.path)
            self._send(404, b"not found", "text/plain")

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length", "0") or 0)
            self.rfile.read(length)
            emit(event="as request", method="POST", path=self.path, mode=mode)
            if mode == "garbage":
                self._send(200, b"<html><body>Welcome to nginx!</body></html>\n", "text/html")
            elif mode == "5xx":
                self._send(503, b"upstream attestation backend unavailable\n", "text/plain")
            elif mode == "slow":
                release.wait(delay)
                self._send(503, b"too late\n", "text/plain")

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_raw(host: str, port: int, stop: threading.Event) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    listener.settimeout(0.2)
    emit(event="listening", port=port, mode="raw")
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        with conn:
            emit(event="as request", method="?", path="?", mode="raw")
            try:
                conn.sendall(b"\x16\x03\x01\x00\x05hello, this is not HTTP\r\n\r\n")
            except OSError:
                pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["garbage", "5xx", "slow", "raw"], required=True)
    p.add_argument("--delay", type=float, default=120.0)
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.mode == "raw":
        serve_raw(args.host, args.port, stop)
        return
    release = threading.Event()
    server = Server((args.host, args.port), make_handler(args.mode, args.delay, release))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    emit(event="listening", port=args.port, mode=args.mode)
    while not stop.wait(0.5):
        pass
    release.set()
    server.shutdown()


if __name__ == "__main__":
    main()
