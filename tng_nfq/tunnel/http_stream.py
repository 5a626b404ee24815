"""Thin blocking I/O around the sans-io HTTP/1.1 pieces (tng_nfq/http/h1.py):
one `HttpStream` per TCP connection reads heads and decoded bodies and
writes messages. Used by the HTTP encapsulation endpoints."""

from __future__ import annotations

import socket
from typing import Iterator

from tng_nfq.http.h1 import BodyDecoder, LAST_CHUNK, chunk
from tng_nfq.http.parser import ParseError

READ_SIZE = 64 * 1024


class PeerClosed(Exception):
    """The connection ended cleanly between two messages."""


class HttpStream:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffered = b""  # bytes read but not consumed yet
        self.bytes_in = 0
        self.bytes_out = 0

    def _recv(self) -> bytes:
        data = self.sock.recv(READ_SIZE)
        self.bytes_in += len(data)
        return data

    def read_head(self, parser, timeout: float | None = None):
        """Feed `parser` (OriginHeadParser / ResponseHeadParser) until a head is
        complete. PeerClosed when the connection ends before any byte of it."""
        self.sock.settimeout(timeout)
        try:
            data, self.buffered = self.buffered, b""
            while True:
                if data:
                    head = parser.feed(data)
                    if head is not None:
                        self.buffered = parser.rest
                        return head
                data = self._recv()
                if not data:
                    if parser.started:
                        raise ParseError(400, "connection closed inside a message head")
                    raise PeerClosed()
        finally:
            self.sock.settimeout(None)

    def body(self, decoder: BodyDecoder) -> Iterator[bytes]:
        """The decoded body pieces; leaves what follows the body in `buffered`."""
        data, self.buffered = self.buffered, b""
        while True:
            if data:
                for piece in decoder.feed(data):
                    if piece:
                        yield piece
            if decoder.done:
                self.buffered = decoder.rest
                return
            data = self._recv()
            if not data:
                decoder.eof()
                return

    def read_all(self, decoder: BodyDecoder, limit: int) -> bytes:
        out = bytearray()
        for piece in self.body(decoder):
            out += piece
            if len(out) > limit:
                raise ParseError(413, f"body larger than {limit} bytes")
        return bytes(out)

    def send(self, data: bytes) -> None:
        if data:
            self.sock.sendall(data)
            self.bytes_out += len(data)

    def send_chunk(self, data: bytes) -> None:
        self.send(chunk(data))

    def end_chunks(self) -> None:
        self.send(LAST_CHUNK)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
