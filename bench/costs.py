"""Per-connection costs of tng_nfq's building blocks, measured one at a time.

    .venv/bin/python -m bench.costs [--n 2000]

No namespace, no network: every step runs in this process, single-threaded
(except the thread-creation steps), with tng_nfq's own code and settings
(its TLS contexts, its relay buffer sizes, its 512 KiB thread stacks, its
structlog configuration). Each line is microseconds of CPU per operation
(process CPU time, so time blocked does not count), median of 5 rounds.
The connection-rate suite measures the whole; this says which part costs
what, so the profile's shares can be turned into microseconds.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import sys
import threading
import time


def cpu_us_per_op(fn, n: int, rounds: int = 5) -> float:
    results = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn(n)
        results.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(results)


# -- the steps ---------------------------------------------------------------


def thread_start_join(n: int) -> None:
    from tng_nfq.tunnel import endpoint  # noqa: F401 - sets threading.stack_size(512 KiB) like the daemon

    for _ in range(n):
        t = threading.Thread(target=lambda: None, daemon=True)
        t.start()
        t.join()


def relay_buffers(n: int) -> None:
    """The buffers one tng_nfq Relay allocates per connection (both directions), allocated and freed."""
    from tng_nfq.tunnel.channel import ciphertext_buffer
    from tng_nfq.tunnel.relay import CHUNK

    for _ in range(n):
        a = bytearray(CHUNK)
        b = ciphertext_buffer(CHUNK)
        c = bytearray(CHUNK)
        d = bytearray(CHUNK + 2 * 16384)
        del a, b, c, d


def relay_buffers_in_fresh_threads(n: int) -> None:
    """Same, but each set in a new thread, as the relay does (thread creation included)."""
    from tng_nfq.tunnel import endpoint  # noqa: F401

    for _ in range(n):
        t = threading.Thread(target=relay_buffers, args=(1,), daemon=True)
        t.start()
        t.join()


def handshake_buffers(n: int) -> None:
    """The scratch buffers of one TlsChannel (constructor + handshake)."""
    from tng_nfq.tunnel.channel import MAX_RECORD, RECORD_OVERHEAD

    for _ in range(n):
        a = bytearray(4 * (MAX_RECORD + RECORD_OVERHEAD))
        b = bytearray(MAX_RECORD + RECORD_OVERHEAD)
        del a, b


def _tls_pair(groups: bytes | None = None):
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from tng_nfq.tunnel.tls import client_context, no_ra_identity, server_context

    cctx, sctx = client_context(None), server_context(no_ra_identity(), request_client_cert=False)
    if groups:  # what-if: a key exchange other than OpenSSL's default (X25519MLKEM768 first)
        for ctx in (cctx, sctx):
            if lib.SSL_CTX_set1_curves_list(ctx._context, groups) != 1:
                raise RuntimeError(f"groups {groups!r} refused")
    return cctx, sctx, SSL


def tls_handshake_memory(n: int, groups: bytes | None = None) -> None:
    """One full TLS 1.3 handshake, client and server in this process over memory BIOs (no sockets)."""
    cctx, sctx, SSL = _tls_pair(groups)
    for _ in range(n):
        c, s = SSL.Connection(cctx, None), SSL.Connection(sctx, None)
        c.set_connect_state()
        s.set_accept_state()
        for _ in range(10):
            progressed = False
            for a, b in ((c, s), (s, c)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    data = b""
                if data:
                    b.bio_write(data)
                    progressed = True
            if not progressed:
                break


def tls_handshake_x25519(n: int) -> None:
    """The same handshake with the key exchange limited to X25519 (what upstream's peers negotiate)."""
    tls_handshake_memory(n, groups=b"X25519")


def peer_cert_der(n: int) -> None:
    """What check_peer does on a verdict-cache hit: peer cert -> cryptography -> DER -> sha256."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from tng_nfq.tunnel.tls import no_ra_identity

    from OpenSSL import crypto

    x = crypto.X509.from_cryptography(no_ra_identity().cert)
    for _ in range(n):
        der = x.to_cryptography().public_bytes(Encoding.DER)
        hashlib.sha256(der).digest()


def access_log_line(n: int) -> None:
    """One access-log line through tng_nfq's structlog setup (JSON), written to a buffer."""
    from tng_nfq.logs import configure
    from tng_nfq.tunnel.endpoint import Endpoint
    from tng_nfq.tunnel.relay import ConnectionStats

    buf = io.StringIO()
    configure(fmt="json", stream=buf)
    stats = ConnectionStats(endpoint="add_ingress[0]", mode="mapping", downstream="127.0.0.1:40000",
                            listener="127.0.0.1:20001", upstream="127.0.0.1:20002")
    for _ in range(n):
        Endpoint.access(None, stats, None, clean_tls_close=True)  # type: ignore[arg-type]
        if buf.tell() > 1 << 20:
            buf.seek(0)
            buf.truncate()


def tcp_connect_accept_close(n: int) -> None:
    """Kernel cost of one loopback TCP connection (connect, accept, close both), no data."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    addr = lsock.getsockname()
    for _ in range(n):
        c = socket.create_connection(addr)
        s, _ = lsock.accept()
        s.close()
        c.close()
    lsock.close()


STEPS = [
    ("thread start+join (512 KiB stack)", thread_start_join, 1),
    ("relay buffers: allocate+free one set (~1.1 MB, same thread)", relay_buffers, 1),
    ("relay buffers in a fresh thread (thread + buffers)", relay_buffers_in_fresh_threads, 1),
    ("TlsChannel scratch buffers (~80 KB)", handshake_buffers, 1),
    ("TLS 1.3 full handshake, client+server, memory BIOs (OpenSSL + pyOpenSSL)", tls_handshake_memory, 0.25),
    ("  same, key exchange X25519 only (upstream pairs use x25519)", tls_handshake_x25519, 0.25),
    ("verdict-cache hit path: peer cert -> cryptography -> DER -> sha256", peer_cert_der, 1),
    ("access log line (structlog JSON)", access_log_line, 1),
    ("loopback TCP connect+accept+close (socket module + kernel)", tcp_connect_accept_close, 1),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="operations per round (handshakes: a quarter)")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; CPU microseconds per operation (median of 5 rounds)")
    for label, fn, scale in STEPS:
        n = max(10, int(args.n * scale))
        fn(min(n, 50))  # warm up imports and caches
        print(f"{cpu_us_per_op(fn, n):9.1f} us  {label}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
