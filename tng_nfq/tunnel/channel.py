"""The TLS side of one tunnel connection: OpenSSL over memory BIOs.

Why memory BIOs: one OpenSSL connection object must never be used by two
threads at once, yet a relay wants one thread per direction, each blocked
in its own socket call. So OpenSSL only transforms bytes here (pure CPU,
under `_ssl_lock`), and the socket I/O happens outside the lock. Ciphertext
leaves through `_send_lock`, taken before `_ssl_lock` is released, so TLS
records reach the wire in the order OpenSSL produced them.

Why raw `lib` calls: the per-record path (one SSL_read per 16 KiB record)
goes straight to the OpenSSL binding with pointers into buffers reused for
the life of the connection; pyOpenSSL's wrappers would allocate and copy per
call. cffi releases the GIL inside each OpenSSL call.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

from OpenSSL import SSL
from OpenSSL._util import exception_from_error_queue, lib

from tng_nfq.tunnel.reuse import Buffer

# Ciphertext produced by one SSL_write of a full plaintext chunk: 16 KiB
# records plus at most 22 bytes of framing and tag each.
MAX_RECORD = 16384
RECORD_OVERHEAD = 22

_WANT_READ = lib.SSL_ERROR_WANT_READ
_ZERO_RETURN = lib.SSL_ERROR_ZERO_RETURN


_PEER_GONE = (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET)


class TlsError(Exception):
    """The TLS layer failed (bad record, alert from the peer, handshake failure)."""


class HandshakeTimeout(TlsError):
    pass


def _ssl_error_text() -> str:
    try:
        exception_from_error_queue(SSL.Error)
    except SSL.Error as exc:
        parts = [p[2] for p in exc.args[0] if len(p) == 3] if exc.args and exc.args[0] else []
        return "; ".join(parts) or "TLS error"
    return "TLS error"


class TlsChannel:
    """TLS 1.3 over a connected TCP socket, safe for one reader plus one writer thread."""

    def __init__(self, ctx: SSL.Context, sock: socket.socket, server_side: bool):
        self.sock = sock
        self.server_side = server_side
        self.conn = SSL.Connection(ctx, None)  # None: memory BIOs
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        # pyOpenSSL keeps the raw handles of a memory-BIO connection here.
        self._ssl = self.conn._ssl
        self._bio_in = self.conn._into_ssl
        self._bio_out = self.conn._from_ssl
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._write_closed = False
        # Why the session died, as the reading side learnt it (e.g. the
        # peer's alert): a write failing afterwards reports the same reason.
        self._failure: str | None = None

    # ---- handshake --------------------------------------------------------

    def handshake(self, timeout: float) -> None:
        """Run the TLS handshake over the (blocking) socket within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        scratch = _scratch()
        buf, ptr = scratch.data, scratch.ptr
        try:
            while True:
                try:
                    self.conn.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                except SSL.Error as exc:
                    self._flush_protocol_output()  # the alert, so the peer learns why
                    reason = _describe(exc)
                    if self.server_side and "no application protocol" in reason:
                        reason = "client does not offer ALPN rats-tls (no application protocol)"
                    raise TlsError(f"handshake failed: {reason}") from None
                self._flush_protocol_output()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HandshakeTimeout(f"handshake not finished after {timeout:g}s")
                self.sock.settimeout(remaining)
                try:
                    n = self.sock.recv_into(buf)
                except socket.timeout:
                    raise HandshakeTimeout(f"handshake not finished after {timeout:g}s") from None
                if n == 0:
                    raise TlsError("peer closed the connection during the handshake")
                lib.BIO_write(self._bio_in, ptr, n)
            self._flush_protocol_output()
        finally:
            self.sock.settimeout(None)

    @property
    def alpn(self) -> bytes:
        return self.conn.get_alpn_proto_negotiated() or b""

    @property
    def version(self) -> str:
        return self.conn.get_protocol_version_name()

    @property
    def cipher(self) -> str:
        return self.conn.get_cipher_name() or ""

    def peer_certificate_der(self) -> bytes | None:
        cert = self.conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.DER)

    # ---- data path --------------------------------------------------------

    def send(self, ptr, nbytes: int, out_mv: memoryview, out_ptr) -> None:
        """Encrypt `nbytes` at `ptr` and send the records.

        `out_mv`/`out_ptr` is the caller's ciphertext buffer, big enough for
        the records of `nbytes` of plaintext (see `ciphertext_size`).
        """
        self._ssl_lock.acquire()
        try:
            # pyOpenSSL turns on partial writes: SSL_write may take one record at a time.
            done = 0
            while done < nbytes:
                k = lib.SSL_write(self._ssl, ptr + done, nbytes - done)
                if k <= 0:
                    reason = _ssl_error_text()
                    raise TlsError(self._failure or f"encrypt failed: {reason}")
                done += k
            produced = 0
            cap = len(out_mv)
            while produced < cap:
                k = lib.BIO_read(self._bio_out, out_ptr + produced, cap - produced)
                if k <= 0:
                    break
                produced += k
            self._send_lock.acquire()
        finally:
            self._ssl_lock.release()
        try:
            self.sock.sendall(out_mv[:produced])
        finally:
            self._send_lock.release()

    def receive(self, raw_ptr, nbytes: int, plain_ptr, cap: int) -> int:
        """Feed `nbytes` of ciphertext (may be 0) and decrypt into `plain_ptr`.

        Returns the plaintext byte count; 0 means more ciphertext is needed.
        Raises EOFError on the peer's close_notify, TlsError on failure.
        Stops early when fewer than one record of room is left, so call again
        with nbytes=0 until it returns 0.
        """
        ssl = self._ssl
        with self._ssl_lock:
            if nbytes:
                lib.BIO_write(self._bio_in, raw_ptr, nbytes)
            total = 0
            while cap - total >= MAX_RECORD:
                k = lib.SSL_read(ssl, plain_ptr + total, cap - total)
                if k > 0:
                    total += k
                    continue
                err = lib.SSL_get_error(ssl, k)
                if err == _WANT_READ:
                    break
                if err == _ZERO_RETURN:
                    if total:
                        break  # hand over the data first; EOF on the next call
                    raise EOFError("close_notify")
                reason = _ssl_error_text()
                if "alert" in reason:
                    # e.g. TLS 1.3 "certificate required": the server judges
                    # the client only after the client's handshake finished.
                    self._failure = f"peer refused the session: {reason}"
                else:
                    self._failure = f"decrypt failed: {reason}"
                raise TlsError(self._failure)
            # Reading may make OpenSSL answer (e.g. a KeyUpdate); send that too.
            scratch = _scratch()
            pending = lib.BIO_read(self._bio_out, scratch.ptr, SCRATCH)
            if pending > 0:
                self._send_lock.acquire()
        if pending > 0:
            try:
                self.sock.sendall(scratch.view[:pending])
            finally:
                self._send_lock.release()
        return total

    def close_write(self) -> None:
        """Send close_notify and a TCP FIN: our half of the stream is done."""
        if self._write_closed:
            return
        self._write_closed = True
        with self._ssl_lock:
            lib.SSL_shutdown(self._ssl)
            scratch = _scratch()
            pending = lib.BIO_read(self._bio_out, scratch.ptr, SCRATCH)
            self._send_lock.acquire()
        try:
            if pending > 0:
                self.sock.sendall(scratch.view[:pending])
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The peer is already gone (it reset, or answered with an alert
            # and closed). Our half is closed either way; the reading
            # direction sees the alert or the reset and reports the real
            # reason, which "not connected" here would hide.
            if exc.errno not in _PEER_GONE:
                raise
        finally:
            self._send_lock.release()

    def _flush_protocol_output(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if not data:
                return
            self.sock.sendall(data)


def ciphertext_size(plain_chunk: int) -> int:
    """Room for the records that encrypt `plain_chunk` bytes of plaintext."""
    records = -(-plain_chunk // MAX_RECORD)
    # one spare record: close_notify or a KeyUpdate may ride along
    return (records + 1) * (MAX_RECORD + RECORD_OVERHEAD + 256)


# Per-thread scratch space for handshake input and the rare protocol records
# produced while reading (KeyUpdate answers, close_notify): threads are
# pooled, so this is allocated once per thread, not per connection.
SCRATCH = 4 * (MAX_RECORD + RECORD_OVERHEAD)
_local = threading.local()


def _scratch() -> Buffer:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = Buffer(SCRATCH)
    return buf


def _describe(exc: SSL.Error) -> str:
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    if exc.args and isinstance(exc.args[0], list):
        reasons = [r[2] for r in exc.args[0] if isinstance(r, tuple) and len(r) == 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or exc.__class__.__name__
