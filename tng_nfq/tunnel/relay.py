"""Moving bytes between the plaintext socket and the TLS channel.

One tunneled connection = one plaintext TCP socket + one TLS channel, two
threads (one per direction), each blocked in its own socket call with the
GIL released. Half-close is kept: EOF on one side becomes close_notify+FIN
(or a FIN) on the other, and the connection ends when both directions are
done. A reset or a TLS failure on either side aborts both.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from tng_nfq.tunnel.channel import TlsChannel, TlsError, ciphertext_size
from tng_nfq.tunnel.reuse import BUFFERS, THREADS

# Plaintext read per recv: large enough that per-call Python overhead is
# small against the copy and crypto cost, small enough to stay in cache.
CHUNK = 256 * 1024
CIPHERTEXT_CHUNK = ciphertext_size(CHUNK)
PLAINTEXT_CHUNK = CHUNK + 2 * 16384  # a partial record may precede a full chunk's worth
_LINGER_RESET = struct.pack("ii", 1, 0)
_ids = itertools.count(1)


@dataclass
class ConnectionStats:
    """What the access log and the admin API report about one connection."""

    endpoint: str  # e.g. "add_ingress[0]"
    mode: str
    downstream: str  # who connected to us
    listener: str  # where we accepted it
    upstream: str = ""  # where we forwarded it
    id: int = field(default_factory=lambda: next(_ids))
    started: float = field(default_factory=time.time)
    bytes_up: int = 0  # downstream -> upstream (application bytes)
    bytes_down: int = 0  # upstream -> downstream
    encrypted: bool = True
    attested: bool = False
    attestation: dict | None = None  # the verdict on the peer, when verified
    state: str = "handshake"


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class Relay:
    """Pumps one connection until both directions are finished.

    `plain_is_downstream` says which side the application client is on: the
    ingress relays downstream=plain/upstream=TLS, the egress the reverse.
    """

    def __init__(self, plain: socket.socket, channel: TlsChannel, stats: ConnectionStats,
                 plain_is_downstream: bool):
        self.plain = plain
        self.channel = channel
        self.stats = stats
        self.plain_is_downstream = plain_is_downstream
        self.error: str | None = None
        self.clean_tls_close = True
        self._aborted = False
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------

    def run(self) -> None:
        """Relay in the calling thread plus one helper thread; returns when done."""
        self.stats.state = "open"
        encrypt_done = threading.Event()

        def encrypt() -> None:
            try:
                self._guard(self._plain_to_tls)
            finally:
                encrypt_done.set()

        THREADS.submit(encrypt)
        self._guard(self._tls_to_plain)
        encrypt_done.wait()
        self.stats.state = "closed"
        self._close(reset=self._aborted)

    def abort(self, reason: str) -> None:
        """Tear the connection down from any thread (daemon shutdown, errors)."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            if self.error is None:
                self.error = reason
        for sock in (self.plain, self.channel.sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv
            except OSError:
                pass

    # -- the two directions ---------------------------------------------------

    def _guard(self, pump) -> None:
        try:
            pump()
        except EOFError:
            pass
        except (OSError, TlsError) as exc:
            self.abort(_short(exc))

    def _count(self, n: int, toward_tls: bool) -> None:
        # toward TLS means away from the plaintext side
        if toward_tls == self.plain_is_downstream:
            self.stats.bytes_up += n
        else:
            self.stats.bytes_down += n

    def _plain_to_tls(self) -> None:
        buf = BUFFERS.get(CHUNK)
        out = BUFFERS.get(CIPHERTEXT_CHUNK)
        recv_into, send, count = self.plain.recv_into, self.channel.send, self._count
        data, ptr, out_mv, out_ptr = buf.data, buf.ptr, out.view, out.ptr
        try:
            while True:
                n = recv_into(data)
                if n == 0:
                    if not self._aborted:
                        self.channel.close_write()
                    return
                send(ptr, n, out_mv, out_ptr)
                count(n, True)
        finally:
            BUFFERS.put(buf)
            BUFFERS.put(out)

    def _tls_to_plain(self) -> None:
        raw = BUFFERS.get(CHUNK)
        plain = BUFFERS.get(PLAINTEXT_CHUNK)
        raw_data, raw_ptr, plain_mv, plain_ptr = raw.data, raw.ptr, plain.view, plain.ptr
        cap = PLAINTEXT_CHUNK
        tls_recv_into = self.channel.sock.recv_into
        receive, sendall, count = self.channel.receive, self.plain.sendall, self._count
        n = 0  # the handshake may have left records in the channel already
        try:
            while True:
                k = receive(raw_ptr, n, plain_ptr, cap)
                while k:
                    sendall(plain_mv[:k])
                    count(k, False)
                    k = receive(raw_ptr, 0, plain_ptr, cap)
                n = tls_recv_into(raw_data)
                if n == 0:
                    if not self._aborted:
                        self.clean_tls_close = False  # FIN without close_notify
                    return
        finally:
            BUFFERS.put(raw)
            BUFFERS.put(plain)
            if not self._aborted:
                try:
                    self.plain.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _close(self, reset: bool) -> None:
        for sock in (self.plain, self.channel.sock):
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.close()
            except OSError:
                pass


def _short(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "peer closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or exc.__class__.__name__
