"""Thin blocking I/O around the sans-io HTTP/1.1 pieces (tng_nfq/http/h1.py):
one `HttpStream` per TCP connection reads heads and decoded bodies and
writes messages. Used by the HTTP encapsulation endpoints."""

from __future__ import annotations

import socket
from typing import Iterator

from tng_nfq.http.h1 import BodyDecoder, LAST_CHUNK, chunk
from tng_nfq.http.parser import ParseError

MAX_IOV = 512  # pieces per sendmsg (the kernel takes up to IOV_MAX = 1024)
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
        self._held: list | None = None  # pieces collected between hold() and flush()
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

    def body(self, decoder: BodyDecoder, views: bool = False) -> Iterator[bytes]:
        """The decoded body pieces; leaves what follows the body in `buffered`.
        `views`: chunked data may come as memoryview slices (no copies)."""
        decoder.views = views
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

    # -- writing ---------------------------------------------------------------------
    # Between hold() and flush(), send() only collects: the pieces of one
    # message that are ready together (head, chunks, last chunk) leave in one
    # system call and one TCP segment train, instead of one wake-up of the
    # peer each.  Callers flush before anything that may wait for input.

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._send_parts(held)

    def _send_parts(self, parts: list) -> None:
        total = sum(len(p) for p in parts)
        if len(parts) == 1:
            self.sock.sendall(parts[0])
        else:
            sent = 0
            for i in range(0, len(parts), MAX_IOV):
                batch = parts[i:i + MAX_IOV]
                want = sum(len(p) for p in batch)
                done = self.sock.sendmsg(batch)
                if done < want:  # interrupted or a full buffer: send the rest plainly
                    self.sock.sendall(memoryview(b"".join(bytes(p) for p in batch))[done:])
                sent += want
        self.bytes_out += total

    def send(self, data: bytes) -> None:
        if not data:
            return
        if self._held is not None:
            # bytes are immutable: keep a reference; copy anything else
            self._held.append(data if type(data) is bytes else bytes(data))
            return
        self.sock.sendall(data)
        self.bytes_out += len(data)

    def send_chunk(self, data: bytes) -> None:
        self.send(chunk(data))

    def send_sealed_chunk(self, encoder, head: bytes, data) -> None:
        """One HTTP chunk holding `encoder.write(head + data)`, sealed straight
        into a reused buffer and sent with one call (no copies of `data`),
        together with anything held; holding goes on."""
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
            out = buf[:end + 2]
            if self._held:
                held, self._held = self._held, []
                self._send_parts(held + [out])
            else:
                self.sock.sendall(out)
                self.bytes_out += end + 2
            out.release()

    def end_chunks(self) -> None:
        self.send(LAST_CHUNK)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
