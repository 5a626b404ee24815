"""Thin blocking I/O around the sans-io HTTP/1.1 pieces (tng_nfq/http/h1.py):
one `HttpStream` per TCP connection reads heads and decoded bodies and
writes messages. Used by the HTTP encapsulation endpoints."""

from __future__ import annotations

import socket
from typing import Iterator

from tng_nfq.http.h1 import BodyDecoder, LAST_CHUNK, chunk
from tng_nfq.http.parser import ParseError

READ_SIZE = 256 * 1024  # fewer recv calls and loop turns per byte of a large body


class PeerClosed(Exception):
    """The connection ended cleanly between two messages."""


class HttpStream:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffered = b""  # bytes read but not consumed yet
        self.bytes_in = 0
        self.bytes_out = 0
        self._scratch = bytearray()  # reused for sealed chunks (send_sealed_chunk)
        # A message goes out in a few writes (head, chunks, last chunk); with
        # Nagle on, a write waiting for the ACK of the previous one stalls
        # every keep-alive request for a delayed-ACK round.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (socketpair in tests, unix sockets)

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

    def send_sealed_chunk(self, encoder, head: bytes, data) -> None:
        """One HTTP chunk holding `encoder.write(head + data)`, sealed straight
        into a reused buffer and sent with one call (no copies of `data`)."""
        n = encoder.sealed_size(len(head) + len(data))
        if not n:
            return
        size_line = b"%x\r\n" % n
        total = len(size_line) + n + 2
        if len(self._scratch) < total:
            self._scratch = bytearray(max(total, 2 * len(self._scratch)))
        with memoryview(self._scratch) as buf:
            start = len(size_line)
            buf[:start] = size_line
            end = encoder.write_into(buf, start, head, data)
            buf[end:end + 2] = b"\r\n"
            self.sock.sendall(buf[:end + 2])
        self.bytes_out += end + 2

    def end_chunks(self) -> None:
        self.send(LAST_CHUNK)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
