"""HTTP backend and keep-alive request-rate client of the `encap` suite (stdlib only).

Started with `python -I` inside the benchmark's namespace:

    encap_load.py serve --port P [--big BYTES]
        GET /big   -> 200, Content-Length BYTES of zeros, written in 1 MiB pieces
        GET /small -> 200, 100 bytes
        POST /up   -> reads the whole body (Content-Length or chunked), answers
                      200 with the byte count as text
        keep-alive (HTTP/1.1), one thread per connection.

    encap_load.py rate --port P --duration S [--probe-timeout S]
        One TCP connection, GET /small back to back (keep-alive) for S seconds;
        prints one JSON line {"ok", "req_per_s", "seconds", "failed", "error"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

SMALL = b"s" * 100
PIECE = 1 << 20


# -- a minimal HTTP/1.1 reader, shared by server and client -----------------------------


class Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> bool:
        data = self.sock.recv(256 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> tuple[str, dict[str, str]] | None:
        """(first line, lower-cased headers) or None at a clean EOF."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not self._more():
                if self.buf:
                    raise ConnectionError("EOF inside a message head")
                return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    def line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\r\n")
            if nl >= 0:
                out = bytes(self.buf[:nl])
                del self.buf[:nl + 2]
                return out
            if not self._more():
                raise ConnectionError("EOF inside a chunk line")

    def skip(self, n: int) -> int:
        """Consume n body bytes (without keeping them)."""
        left = n
        while left:
            if not self.buf and not self._more():
                raise ConnectionError("EOF inside a body")
            take = min(left, len(self.buf))
            del self.buf[:take]
            left -= take
        return n

    def body(self, headers: dict[str, str]) -> int:
        """Consume a body framed by `headers`; its length."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int(self.line().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.line():
                        pass
                    return total
                total += self.skip(size)
                self.line()
        return self.skip(int(headers.get("content-length", "0") or 0))


# -- server ------------------------------------------------------------------------------


def _serve_conn(sock: socket.socket, big: int, zeros: memoryview) -> None:
    conn = Conn(sock)
    try:
        while True:
            got = conn.head()
            if got is None:
                return
            line, headers = got
            method, path = line.split(" ")[:2]
            got_bytes = conn.body(headers)
            if method == "GET" and path == "/big":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % big)
                left = big
                while left:
                    n = min(left, len(zeros))
                    sock.sendall(zeros[:n])
                    left -= n
            elif method == "POST":
                reply = str(got_bytes).encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(reply), reply))
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(SMALL), SMALL))
            if headers.get("connection", "").lower() == "close":
                return
    except (OSError, ValueError, ConnectionError):
        pass
    finally:
        sock.close()


def serve(host: str, port: int, big: int) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(256)
    zeros = memoryview(bytes(PIECE))
    print(f"listening on {host}:{port}", flush=True)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=_serve_conn, args=(sock, big, zeros), daemon=True).start()


# -- request-rate client ----------------------------------------------------------------------


REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: encap-bench\r\n\r\n"


def one_request(conn: Conn) -> None:
    conn.sock.sendall(REQUEST)
    got = conn.head()
    if got is None:
        raise ConnectionError("connection closed before the response")
    line, headers = got
    if not line.startswith("HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status line {line!r}")
    if conn.body(headers) != len(SMALL):
        raise ConnectionError("short body")


def rate(host: str, port: int, duration: float, probe_timeout: float) -> dict:
    deadline = time.monotonic() + probe_timeout
    while True:  # readiness and warm-up (key configuration, attestation) before timing
        try:
            sock = socket.create_connection((host, port), timeout=10)
            conn = Conn(sock)
            one_request(conn)
            break
        except (OSError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                return {"ok": 0, "req_per_s": None, "error": f"probe: {exc}"}
            time.sleep(0.1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done, error = 0, None
    t0 = time.monotonic()
    end = t0 + duration
    try:
        while time.monotonic() < end:
            one_request(conn)
            done += 1
    except (OSError, ConnectionError) as exc:
        error = str(exc) or type(exc).__name__
    elapsed = time.monotonic() - t0
    sock.close()
    return {"ok": done, "seconds": round(elapsed, 3), "req_per_s": round(done / elapsed, 1) if done else None,
            "error": error}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="encap_load.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--big", type=int, default=256 << 20)
    r = sub.add_parser("rate")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--duration", type=float, default=3.0)
    r.add_argument("--probe-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.host, args.port, args.big)
        return 0
    print(json.dumps(rate(args.host, args.port, args.duration, args.probe_timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
