"""A tiny TCP backend for the integration tests, run inside a lab namespace.

One connection = one command line (terminated by "\\n"), then:

  ECHO      echo every byte back; on the client's EOF, shut our write side
  UPLOAD    read until the client's EOF, then reply "OK <n> <sha256>\\n"
            (the reply can only exist after the EOF: that is the half-close proof)
  DOWNLOAD  send the file given by --blob, then shut our write side and wait
            for the client's EOF
  GREET     send "HELLO\\n", shut our write side first, then read until the
            client's EOF (reverse half-close)
  IDENT     reply "<--name>\\n"

Every finished command is reported as one JSON line on stdout
({"cmd": ..., "bytes_in": ..., "sha256_in": ..., "bytes_out": ...}) so a test
can check what the backend really saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import socketserver
import sys
import threading

CHUNK = 256 * 1024
_out_lock = threading.Lock()


def report(**fields) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def read_line(sock: socket.socket) -> tuple[bytes, bytes]:
    """The command line and whatever arrived after it in the same reads."""
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return buf, b""
        buf += data
    line, rest = buf.split(b"\n", 1)
    return line.strip(), rest


def drain(sock: socket.socket, first: bytes = b"") -> tuple[int, str]:
    digest = hashlib.sha256(first)
    total = len(first)
    buf = bytearray(CHUNK)
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            return total, digest.hexdigest()
        digest.update(memoryview(buf)[:n])
        total += n


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            self._serve(sock)
        except OSError as exc:
            report(cmd="?", error=str(exc))

    def _serve(self, sock: socket.socket) -> None:
        args = self.server.args
        cmd, rest = read_line(sock)
        if not cmd and not rest:
            return  # a readiness probe: connected and closed
        name = cmd.decode(errors="replace")
        if cmd == b"ECHO":
            total = len(rest)
            digest = hashlib.sha256(rest)
            if rest:
                sock.sendall(rest)
            buf = bytearray(CHUNK)
            while True:
                n = sock.recv_into(buf)
                if n == 0:
                    break
                sock.sendall(memoryview(buf)[:n])
                digest.update(memoryview(buf)[:n])
                total += n
            sock.shutdown(socket.SHUT_WR)
            report(cmd=name, bytes_in=total, sha256_in=digest.hexdigest(), bytes_out=total)
        elif cmd == b"UPLOAD":
            total, sha = drain(sock, rest)
            reply = f"OK {total} {sha}\n".encode()
            sock.sendall(reply)
            sock.shutdown(socket.SHUT_WR)
            report(cmd=name, bytes_in=total, sha256_in=sha, bytes_out=len(reply))
        elif cmd == b"DOWNLOAD":
            with open(args.blob, "rb") as f:
                data = f.read()
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            total, sha = drain(sock, rest)
            report(cmd=name, bytes_in=total, sha256_in=sha, bytes_out=len(data))
        elif cmd == b"GREET":
            sock.sendall(b"HELLO\n")
            sock.shutdown(socket.SHUT_WR)
            total, sha = drain(sock, rest)
            report(cmd=name, bytes_in=total, sha256_in=sha, bytes_out=6)
        elif cmd == b"IDENT":
            reply = f"{args.name}\n".encode()
            sock.sendall(reply)
            sock.shutdown(socket.SHUT_WR)
            total, sha = drain(sock, rest)
            report(cmd=name, bytes_in=total, sha256_in=sha, bytes_out=len(reply))
        else:
            report(cmd=name, error="unknown command")
        sock.close()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--blob", help="file served by DOWNLOAD")
    args = parser.parse_args()
    server = Server((args.host, args.port), Handler)
    server.args = args
    report(event="listening", host=args.host, port=args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
