"""TlsChannel and Relay over socketpairs: no root, no network, real OpenSSL."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
from OpenSSL import SSL

from tng_nfq.tunnel.channel import TlsChannel, TlsError
from tng_nfq.tunnel.relay import ConnectionStats, Relay
from tng_nfq.tunnel.tls import ALPN_RATS_TLS, client_context, no_ra_identity, server_context


def _pair(request_client_cert: bool = False):
    a, b = socket.socketpair()
    client = TlsChannel(client_context(), a, server_side=False)
    server = TlsChannel(server_context(no_ra_identity(), request_client_cert), b, server_side=True)
    errors = []

    def serve():
        try:
            server.handshake(5)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    client.handshake(5)
    t.join()
    assert not errors, errors
    return client, server


def _recv_all(channel: TlsChannel) -> bytes:
    from OpenSSL._util import ffi

    raw = bytearray(65536)
    plain = bytearray(65536 + 32768)
    raw_ptr, plain_ptr = ffi.from_buffer(raw), ffi.from_buffer(plain)
    out = bytearray()
    n = 0
    while True:
        try:
            k = channel.receive(raw_ptr, n, plain_ptr, len(plain))
            while k:
                out += plain[:k]
                k = channel.receive(raw_ptr, 0, plain_ptr, len(plain))
        except EOFError:
            return bytes(out)
        n = channel.sock.recv_into(raw)
        if n == 0:
            return bytes(out)


def test_handshake_negotiates_tls13_and_rats_tls():
    client, server = _pair()
    assert client.version == server.version == "TLSv1.3"
    assert client.alpn == server.alpn == ALPN_RATS_TLS
    # the no_ra certificate reaches the client, DER-encoded
    from cryptography.hazmat.primitives.serialization import Encoding

    assert client.peer_certificate_der() == no_ra_identity().cert.public_bytes(Encoding.DER)


def test_large_send_is_delivered_whole_and_in_order():
    # regression: pyOpenSSL enables partial writes, one SSL_write may take a single record
    from OpenSSL._util import ffi

    client, server = _pair()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    buf = bytearray(payload)
    out = bytearray(len(payload) * 2)

    def send():
        client.send(ffi.from_buffer(buf), len(buf), memoryview(out), ffi.from_buffer(out))
        client.close_write()

    t = threading.Thread(target=send)
    t.start()
    got = _recv_all(server)
    t.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_server_refuses_client_without_rats_tls_alpn():
    a, b = socket.socketpair()
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_alpn_protos([b"h2"])
    ctx.set_verify(SSL.VERIFY_NONE, None)
    bad_client = SSL.Connection(ctx, a)
    bad_client.set_connect_state()
    server = TlsChannel(server_context(no_ra_identity(), False), b, server_side=True)
    result = {}

    def client_side():
        try:
            bad_client.do_handshake()
            result["client"] = "ok"
        except SSL.Error as exc:
            result["client"] = str(exc)

    t = threading.Thread(target=client_side)
    t.start()
    with pytest.raises(TlsError, match="does not offer ALPN rats-tls"):
        server.handshake(5)
    t.join()
    assert "no application protocol" in result["client"]


def test_handshake_times_out_when_peer_is_silent():
    a, b = socket.socketpair()
    server = TlsChannel(server_context(no_ra_identity(), False), b, server_side=True)
    with pytest.raises(TlsError, match="not finished after"):
        server.handshake(0.3)
    a.close()


def test_relay_half_close_and_byte_counts():
    """Ingress-shaped relay: app <-> plain socket | relay | TLS channel <-> peer."""
    app, relay_plain = socket.socketpair()
    client, server = _pair()
    stats = ConnectionStats(endpoint="add_ingress[0]", mode="mapping", downstream="app", listener="l")
    relay = Relay(relay_plain, client, stats, plain_is_downstream=True)
    t = threading.Thread(target=relay.run)
    t.start()

    app.sendall(b"request bytes")
    app.shutdown(socket.SHUT_WR)  # half-close: the app is done sending
    assert _recv_all(server) == b"request bytes"  # server sees data then close_notify

    # the other direction still works after the app's FIN
    from OpenSSL._util import ffi

    reply = bytearray(b"late reply")
    out = bytearray(4096)
    server.send(ffi.from_buffer(reply), len(reply), memoryview(out), ffi.from_buffer(out))
    server.close_write()
    got = b""
    while True:
        chunk = app.recv(4096)
        if not chunk:
            break
        got += chunk
    assert got == b"late reply"
    t.join(5)
    assert not t.is_alive()
    assert relay.error is None
    assert (stats.bytes_up, stats.bytes_down) == (len(b"request bytes"), len(b"late reply"))


def test_relay_abort_on_peer_reset():
    app, relay_plain = socket.socketpair()
    client, server = _pair()
    stats = ConnectionStats(endpoint="add_ingress[0]", mode="mapping", downstream="app", listener="l")
    relay = Relay(relay_plain, client, stats, plain_is_downstream=True)
    t = threading.Thread(target=relay.run)
    t.start()
    server.sock.sendall(b"\x17\x03\x03\x00\x05garbage")  # a corrupt application_data record
    t.join(5)
    assert not t.is_alive()
    assert relay.error and "decrypt failed" in relay.error
    assert app.recv(10) == b""  # the app's connection is torn down


def test_alpn_refusals_do_not_leak_into_concurrent_handshakes():
    """Refusing one client's ALPN must not fail other handshakes on the same context
    (pyOpenSSL keeps callback exceptions on the shared context)."""
    ctx = server_context(no_ra_identity(), False)
    bad_ctx = SSL.Context(SSL.TLS_METHOD)
    bad_ctx.set_alpn_protos([b"h2"])
    outcomes = {"good": [], "bad": []}
    lock = threading.Lock()

    def one(kind: str):
        a, b = socket.socketpair()
        server = TlsChannel(ctx, b, server_side=True)
        if kind == "good":
            client = TlsChannel(client_context(), a, server_side=False)
            run_client = lambda: client.handshake(5)  # noqa: E731
        else:
            conn = SSL.Connection(bad_ctx, a)
            conn.set_connect_state()
            run_client = conn.do_handshake
        t = threading.Thread(target=lambda: _quiet(run_client))
        t.start()
        try:
            server.handshake(5)
            result = "ok"
        except TlsError as exc:
            result = str(exc)
        t.join()
        a.close()
        b.close()
        with lock:
            outcomes[kind].append(result)

    threads = [threading.Thread(target=one, args=("good" if i % 2 else "bad",)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes["good"] == ["ok"] * 20
    assert all("does not offer ALPN rats-tls" in r for r in outcomes["bad"]) and len(outcomes["bad"]) == 20


def _quiet(fn):
    try:
        fn()
    except Exception:
        pass  # the client side's failure is asserted through the server's view
