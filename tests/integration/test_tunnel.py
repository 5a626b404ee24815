"""tng_nfq <-> tng_nfq: no_ra mapping tunnels across two lab namespaces.

client namespace (198.18.0.1)             server namespace (198.18.0.2)
  test socket / curl                        backend 127.0.0.1:30001
    -> ingress 127.0.0.1:10001  == rats-tls ==> egress 198.18.0.2:20001 -> backend
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.root

INGRESS, TUNNEL, BACKEND = 10001, 20001, 30001


@pytest.fixture
def tunnel(lab, blob):
    """Bulk backend + egress (server ns) + ingress (client ns), all ready."""
    backend = lab.start_backend(BACKEND, blob=blob)
    egress = lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    ingress = lab.start_nfq(lab.client, lab.ingress_config((INGRESS, TUNNEL)), "ingress")
    return SimpleNamespace(backend=backend, egress=egress, ingress=ingress)


def only_line(lines: list[dict]) -> dict:
    assert len(lines) == 1, lines
    return lines[0]


def assert_ok_access(entry: dict, endpoint: str, upstream: str, bytes_up: int, bytes_down: int) -> None:
    assert entry["endpoint"] == endpoint
    assert entry["mode"] == "mapping"
    assert entry["upstream"] == upstream
    assert entry["outcome"] == "ok", entry
    assert "error" not in entry
    assert entry["encrypted"] is True
    assert entry["attested"] is False  # no_ra
    assert entry["bytes_up"] == bytes_up, entry
    assert entry["bytes_down"] == bytes_down, entry


# -- data through the tunnel -------------------------------------------------

def test_http_get_with_curl(lab, tmp_path):
    site = tmp_path / "site"
    (site / "api").mkdir(parents=True)
    body = b"hello through a rats-tls tunnel\n" + os.urandom(2000).hex().encode()
    (site / "api" / "model.txt").write_bytes(body)
    lab.start_http_backend(BACKEND, site)
    egress = lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    ingress = lab.start_nfq(lab.client, lab.ingress_config((INGRESS, TUNNEL)), "ingress")

    result = lab.curl(f"http://127.0.0.1:{INGRESS}/api/model.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == body
    line_in = only_line(ingress.wait_access())
    line_eg = only_line(egress.wait_access())
    assert line_in["outcome"] == line_eg["outcome"] == "ok"
    assert line_in["upstream"] == f"{lab.SERVER_ADDR}:{TUNNEL}"
    assert line_eg["upstream"] == f"127.0.0.1:{BACKEND}"
    assert line_eg["downstream"].startswith(f"{lab.CLIENT_ADDR}:")
    # the HTTP response (headers + body) came down, the request went up
    assert line_in["bytes_down"] > len(body)
    assert line_in["bytes_up"] == line_eg["bytes_up"] > 0
    assert line_in["bytes_down"] == line_eg["bytes_down"]


def test_upload_10mb_sha256_and_access_log_counts(lab, tunnel, blob_bytes):
    reply = lab.upload(INGRESS, blob_bytes)

    expected = f"OK {len(blob_bytes)} {lab.sha256(blob_bytes)}\n".encode()
    assert reply == expected
    report = only_line(tunnel.backend.wait_reports())
    assert report["bytes_in"] == len(blob_bytes) and report["sha256_in"] == lab.sha256(blob_bytes)
    up = len(b"UPLOAD\n") + len(blob_bytes)
    assert_ok_access(only_line(tunnel.ingress.wait_access()), "add_ingress[0]",
                     f"{lab.SERVER_ADDR}:{TUNNEL}", bytes_up=up, bytes_down=len(expected))
    assert_ok_access(only_line(tunnel.egress.wait_access()), "add_egress[0]",
                     f"127.0.0.1:{BACKEND}", bytes_up=up, bytes_down=len(expected))


def test_download_10mb_sha256_and_access_log_counts(lab, tunnel, blob_bytes):
    data = lab.download(INGRESS)

    assert len(data) == len(blob_bytes)
    assert lab.sha256(data) == lab.sha256(blob_bytes)
    up = len(b"DOWNLOAD\n")
    assert_ok_access(only_line(tunnel.ingress.wait_access()), "add_ingress[0]",
                     f"{lab.SERVER_ADDR}:{TUNNEL}", bytes_up=up, bytes_down=len(blob_bytes))
    assert_ok_access(only_line(tunnel.egress.wait_access()), "add_egress[0]",
                     f"127.0.0.1:{BACKEND}", bytes_up=up, bytes_down=len(blob_bytes))


def test_full_duplex_echo_10mb(lab, tunnel, blob_bytes):
    echoed = lab.echo(INGRESS, blob_bytes)

    assert len(echoed) == len(blob_bytes)
    assert lab.sha256(echoed) == lab.sha256(blob_bytes)
    entry = only_line(tunnel.ingress.wait_access())
    assert entry["outcome"] == "ok"
    assert entry["bytes_up"] == len(b"ECHO\n") + len(blob_bytes)
    assert entry["bytes_down"] == len(blob_bytes)


def test_many_concurrent_connections(lab, tunnel):
    """40 connections at once, each echoing its own random data."""
    payloads = [os.urandom(200_000 + i) for i in range(40)]
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            results[i] = lab.echo(INGRESS, payloads[i])
        except Exception as exc:  # reported below, per connection
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(lab.WAIT * 2)

    assert len(results) == len(payloads)
    bad = {i: r for i, r in results.items() if r != payloads[i]}
    assert not bad, {i: (r if isinstance(r, Exception) else f"{len(r)} bytes") for i, r in bad.items()}
    for gw in (tunnel.ingress, tunnel.egress):
        lines = gw.wait_access(len(payloads))
        assert all(e["outcome"] == "ok" for e in lines), [e for e in lines if e["outcome"] != "ok"]
        assert sorted(e["bytes_down"] for e in lines) == sorted(len(p) for p in payloads)


# -- half-close --------------------------------------------------------------

def test_half_close_client_fin_then_server_reply(lab, tunnel):
    """The client sends, then shuts its write side; the backend sees EOF, and
    only then answers; the answer reaches the client, then both close."""
    payload = os.urandom(300_000)
    sock = lab.connect(INGRESS)
    try:
        sock.sendall(b"UPLOAD\n" + payload)
        sock.shutdown(socket.SHUT_WR)  # our FIN; the read side stays open
        data, how = lab.recv_until_closed(sock)
    finally:
        sock.close()

    # The reply carries the digest of everything we sent: the backend could
    # only compute it after it saw our EOF, so it was sent after our FIN.
    assert data == f"OK {len(payload)} {lab.sha256(payload)}\n".encode()
    assert how == "eof"  # an orderly close after the reply, no reset
    report = only_line(tunnel.backend.wait_reports())
    assert report["cmd"] == "UPLOAD" and report["bytes_in"] == len(payload)
    for gw in (tunnel.ingress, tunnel.egress):
        entry = only_line(gw.wait_access())
        assert entry["outcome"] == "ok", entry
        assert "note" not in entry, entry  # both TLS halves ended with close_notify
        assert entry["bytes_up"] == len(b"UPLOAD\n") + len(payload)
        assert entry["bytes_down"] == len(data)


def test_half_close_server_fin_then_client_data(lab, tunnel):
    """The reverse: the backend answers and shuts its write side first; the
    client still sends afterwards and the backend receives it all."""
    late = os.urandom(100_000)
    sock = lab.connect(INGRESS)
    try:
        sock.sendall(b"GREET\n")
        sock.settimeout(lab.WAIT)
        greeting = b""
        while True:
            chunk = sock.recv(100)
            if not chunk:
                break  # the backend's FIN came through the tunnel
            greeting += chunk
        assert greeting == b"HELLO\n"
        sock.sendall(late)  # our direction is still open
        sock.shutdown(socket.SHUT_WR)
        rest, how = lab.recv_until_closed(sock)
    finally:
        sock.close()

    assert rest == b"" and how == "eof"
    report = only_line(tunnel.backend.wait_reports())
    assert report["cmd"] == "GREET"
    assert report["bytes_in"] == len(late) and report["sha256_in"] == lab.sha256(late)
    entry = only_line(tunnel.egress.wait_access())
    assert entry["outcome"] == "ok", entry
    assert entry["bytes_up"] == len(b"GREET\n") + len(late)


# -- failures ----------------------------------------------------------------

def test_backend_down_then_up(lab, blob):
    egress = lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    ingress = lab.start_nfq(lab.client, lab.ingress_config((INGRESS, TUNNEL)), "ingress")

    sock = lab.connect(INGRESS)
    try:
        sock.sendall(b"ECHO\nanyone there?")
        data, how = lab.recv_until_closed(sock)  # bounded: fails the test if left open
    finally:
        sock.close()

    assert data == b""
    assert how in ("eof", "reset")
    entry = only_line(egress.wait_access(where=lambda e: e["outcome"] == "error"))
    assert "backend" in entry["error"] and f"127.0.0.1:{BACKEND}" in entry["error"], entry
    assert entry["endpoint"] == "add_egress[0]"
    assert egress.alive and ingress.alive

    lab.start_backend(BACKEND, blob=blob)
    assert lab.echo(INGRESS, b"now it works") == b"now it works"
    assert egress.alive and ingress.alive
    ok = egress.wait_access(where=lambda e: e["outcome"] == "ok")
    assert len(ok) == 1


def test_tunnel_peer_down_then_up(lab, blob):
    ingress = lab.start_nfq(lab.client, lab.ingress_config((INGRESS, TUNNEL)), "ingress")

    sock = lab.connect(INGRESS)
    try:
        sock.sendall(b"ECHO\nanyone there?")
        data, how = lab.recv_until_closed(sock)
    finally:
        sock.close()

    assert data == b"" and how in ("eof", "reset")
    entry = only_line(ingress.wait_access(where=lambda e: e["outcome"] == "error"))
    assert entry["endpoint"] == "add_ingress[0]"
    assert "tunnel peer" in entry["error"] and f"{lab.SERVER_ADDR}:{TUNNEL}" in entry["error"], entry
    assert ingress.alive

    # the same ingress serves once the egress exists
    lab.start_backend(BACKEND, blob=blob)
    lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    assert lab.echo(INGRESS, b"peer is back") == b"peer is back"
    assert ingress.alive


def test_several_ingress_and_egress_entries(lab):
    names = {30001: "alpha", 30002: "bravo", 30003: "charlie"}
    for port, name in names.items():
        lab.start_backend(port, name=name)
    egress = lab.start_nfq(lab.server, lab.egress_config((20001, 30001), (20002, 30002), (20003, 30003)),
                           "egress")
    # deliberately not index-aligned: ingress[i] -> egress[(i+1) % 3]
    ingress = lab.start_nfq(lab.client, lab.ingress_config((10001, 20002), (10002, 20003), (10003, 20001)),
                            "ingress")
    expected = {10001: "bravo", 10002: "charlie", 10003: "alpha"}

    for port, name in expected.items():
        with lab.connect(port) as sock:
            sock.sendall(b"IDENT\n")
            sock.shutdown(socket.SHUT_WR)
            assert lab.recv_all(sock) == f"{name}\n".encode()

    in_lines = ingress.wait_access(3)
    eg_lines = egress.wait_access(3)
    assert sorted(e["endpoint"] for e in in_lines) == [f"add_ingress[{i}]" for i in range(3)]
    assert sorted(e["endpoint"] for e in eg_lines) == [f"add_egress[{i}]" for i in range(3)]
    assert all(e["outcome"] == "ok" for e in in_lines + eg_lines)
    by_endpoint = {e["endpoint"]: e for e in eg_lines}
    assert by_endpoint["add_egress[1]"]["listener"] == f"{lab.SERVER_ADDR}:20002"
    assert by_endpoint["add_egress[1]"]["upstream"] == "127.0.0.1:30002"


# -- signals -----------------------------------------------------------------

@pytest.mark.parametrize("side", ["ingress", "egress"])
def test_sigterm_with_open_connection(lab, tunnel, side):
    sock = lab.connect(INGRESS)
    try:
        sock.sendall(b"ECHO\nping")
        got = b""
        while got != b"ping":
            chunk = sock.recv(100)
            assert chunk, "connection closed before the echo"
            got += chunk
        victim = getattr(tunnel, side)
        other = tunnel.egress if side == "ingress" else tunnel.ingress

        assert victim.stop(signal.SIGTERM) == 0

        data, how = lab.recv_until_closed(sock)  # the open connection was closed
    finally:
        sock.close()
    assert data == b"" and how in ("eof", "reset")
    assert victim.events("stopped"), victim.log_text()[-2000:]
    # the connection that was cut still got its access-log line
    assert len(victim.access()) == 1, victim.log_text()[-2000:]
    assert other.alive


def test_sigint_exits_zero(lab, tunnel):
    assert lab.echo(INGRESS, b"before") == b"before"

    assert tunnel.ingress.stop(signal.SIGINT) == 0
    assert tunnel.egress.stop(signal.SIGINT) == 0

    for gw in (tunnel.ingress, tunnel.egress):
        assert gw.events("stopped"), gw.log_text()[-2000:]
    with pytest.raises(ConnectionRefusedError):
        lab.connect(INGRESS).close()
    with pytest.raises(ConnectionRefusedError):
        lab.connect(TUNNEL, host=lab.SERVER_ADDR).close()


ROUNDS = 8
STORMS = 3  # client threads opening connections in a loop


@pytest.mark.parametrize("side", ["ingress", "egress"])
def test_sigterm_while_connections_arrive(lab, blob, side):
    """SIGTERM while new connections keep arriving (the daemon is accepting
    them and starting their handlers): exit 0 every time, and a connection
    that was open is closed.

    Several rounds with a fresh daemon each, because what goes wrong here is
    a race; a daemon that ignores the signal (-9 after the wait) or crashes
    on it (1) fails the round."""
    lab.start_backend(BACKEND, blob=blob)
    if side == "ingress":
        lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
        ns, config, host, port = lab.client, lab.ingress_config((INGRESS, TUNNEL)), "127.0.0.1", INGRESS
    else:
        ns, config, host, port = lab.server, lab.egress_config((TUNNEL, BACKEND)), lab.SERVER_ADDR, TUNNEL
    for round_ in range(ROUNDS):
        victim = lab.start_nfq(ns, config, f"{side}-{round_}")
        # egress: raw TCP that never sends a ClientHello (its handler sits in the handshake);
        # ingress: its handler dials the egress and handshakes
        held = lab.connect(port, host=host)
        storms = [_ConnectionStorm(lab, host, port) for _ in range(STORMS)]
        for storm in storms:
            storm.start()
        try:
            lab.poll_until(lambda: all(storm.count >= 10 for storm in storms), "connections arriving")
            rc = victim.stop(signal.SIGTERM)
        finally:
            for storm in storms:
                storm.stop()
        try:
            assert rc == 0, (f"round {round_}: exit {rc} after SIGTERM (-9: ignored it and was killed)\n"
                             + victim.log_text()[-3000:])
            data, how = lab.recv_until_closed(held)
        finally:
            held.close()
        assert data == b"" and how in ("eof", "reset")
        assert victim.events("stopped"), victim.log_text()[-2000:]


class _ConnectionStorm(threading.Thread):
    """Opens and closes connections to host:port until stopped or refused."""

    def __init__(self, lab, host: str, port: int):
        super().__init__(daemon=True)
        self.lab, self.host, self.port = lab, host, port
        self.count = 0
        self._stop_flag = threading.Event()

    def run(self) -> None:
        while not self._stop_flag.is_set():
            try:
                self.lab.connect(self.port, host=self.host).close()
            except OSError:
                if self.count:
                    return  # the daemon is gone
                continue
            self.count += 1

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(self.lab.WAIT)


@pytest.mark.parametrize("side", ["ingress", "egress"])
def test_sigterm_delivered_to_a_worker_thread(lab, blob, side):
    """The kernel may hand a process-directed SIGTERM to any thread that does
    not block it. Deliver it to such a worker thread on purpose (tgkill): the
    daemon must still stop and exit 0. (A design that blocks SIGTERM in every
    worker thread is immune; then the signal goes to the process.)"""
    lab.start_backend(BACKEND, blob=blob)
    egress = lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    victim = egress
    if side == "ingress":
        victim = lab.start_nfq(lab.client, lab.ingress_config((INGRESS, TUNNEL)), "ingress")
    held = lab.connect(INGRESS) if side == "ingress" else lab.connect(TUNNEL, host=lab.SERVER_ADDR)
    try:
        if side == "ingress":
            held.sendall(b"ECHO\nping")
            assert held.recv(4) == b"ping"  # relaying: two more threads
        pid = victim.proc.pid
        workers = _threads_not_blocking(pid, signal.SIGTERM)
        if workers:
            _tgkill(pid, workers[0], signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
        try:
            rc = victim.proc.wait(lab.WAIT)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, (f"{side}: SIGTERM delivered to thread {workers[:1]} of {pid}: "
                         + ("still running" if rc is None else f"exit {rc}") + "\n" + victim.log_text()[-3000:])
        data, how = lab.recv_until_closed(held)
    finally:
        held.close()
    assert data == b"" and how in ("eof", "reset")
    assert victim.events("stopped")


def _threads_not_blocking(pid: int, sig: int) -> list[int]:
    """Thread ids of `pid`, other than the main thread, that can receive `sig`."""
    tids = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        tid = int(task.name)
        if tid == pid:
            continue
        status = (task / "status").read_text()
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-fA-F]+)", status, re.M).group(1), 16)
        if not blocked & (1 << (sig - 1)):
            tids.append(tid)
    return tids


def _tgkill(tgid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "tgkill"):
        rc = libc.tgkill(tgid, tid, int(sig))
    else:  # glibc < 2.30
        rc = libc.syscall({"x86_64": 234, "aarch64": 131}[platform.machine()], tgid, tid, int(sig))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"tgkill({tgid}, {tid}): {os.strerror(err)}")


@pytest.mark.parametrize("side", ["ingress", "egress"])
def test_sigterm_during_bulk_transfer(lab, tunnel, blob_bytes, side):
    """SIGTERM while the relay threads are busy moving data: exit 0, the
    client's connection is cut, the cut connection is logged."""
    sock = lab.connect(INGRESS)
    sender = threading.Thread(target=_send_quietly, args=(sock, b"ECHO\n" + blob_bytes * 4), daemon=True)
    try:
        sender.start()
        got = 0
        while got < 1 << 20:  # data is flowing both ways through the tunnel
            chunk = sock.recv(1 << 16)
            assert chunk, "connection closed before the transfer was under way"
            got += len(chunk)
        victim = getattr(tunnel, side)

        assert victim.stop(signal.SIGTERM) == 0

        data, how = lab.recv_until_closed(sock)
    finally:
        sock.close()
        sender.join(lab.WAIT)
    assert got + len(data) < 4 * len(blob_bytes)  # it was cut, not completed
    assert victim.events("stopped")
    assert len(victim.access()) == 1


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the connection is cut under our feet: expected


# -- the egress refuses what is not rats-tls --------------------------------

def _tls_client(lab, *, max_version=None, alpn=None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    sock = lab.connect(TUNNEL, host=lab.SERVER_ADDR)
    try:
        return ctx.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


@pytest.mark.parametrize("peer", ["plaintext-http", "tls1.2", "alpn-h2", "no-alpn"])
def test_egress_refuses_non_rats_tls_peer(lab, tunnel, peer):
    """Whatever reaches the tunnel port without TLS 1.3 + ALPN rats-tls is
    refused and logged; not one byte of it reaches the backend."""
    if peer == "plaintext-http":
        sock = lab.connect(TUNNEL, host=lab.SERVER_ADDR)
        sock.sendall(b"IDENT\nGET / HTTP/1.1\r\nHost: backend\r\n\r\n")
    elif peer == "tls1.2":
        with pytest.raises(ssl.SSLError):
            _tls_client(lab, max_version=ssl.TLSVersion.TLSv1_2, alpn=["rats-tls"])
        sock = None
    elif peer == "alpn-h2":
        with pytest.raises(ssl.SSLError):
            _tls_client(lab, alpn=["h2"])
        sock = None
    else:
        sock = _tls_client(lab)  # TLS 1.3 handshake completes; the ALPN check follows it
        assert sock.version() == "TLSv1.3" and sock.selected_alpn_protocol() is None
        try:
            sock.sendall(b"IDENT\n")
        except OSError:
            pass  # already closed by the egress: fine
    if sock is not None:
        try:
            try:
                data, how = lab.recv_until_closed(sock)
            except (ssl.SSLError, OSError):
                data, how = b"", "tls-error"
        finally:
            sock.close()
        assert data == b"", data

    entry = only_line(tunnel.egress.wait_access())
    assert entry["outcome"] == "error", entry
    assert entry["bytes_up"] == 0 and entry["bytes_down"] == 0, entry
    assert tunnel.backend.reports() == []  # nothing was forwarded
    assert tunnel.egress.alive
    # and the tunnel still works for a real peer
    assert lab.echo(INGRESS, b"still serving") == b"still serving"


# -- proof of encryption -----------------------------------------------------

def test_capture_wire_is_tls_only(lab, tmp_path, blob):
    """Capture both tunnel ports while marked HTTP and binary traffic crosses;
    the marker must never be on the wire, every flow must be TLS 1.3 with
    ALPN rats-tls offered. A capture of the plaintext side is the control
    that proves the marker would have been seen."""
    marker = b"TNGNFQ-SECRET-" + os.urandom(8).hex().encode()
    site = tmp_path / "site"
    site.mkdir()
    (site / marker.decode()).write_bytes(b"response " + marker * 50)
    lab.start_http_backend(30001, site)
    lab.start_backend(30002, blob=blob)
    lab.start_nfq(lab.server, lab.egress_config((20001, 30001), (20002, 30002)), "egress")
    lab.start_nfq(lab.client, lab.ingress_config((10001, 20001), (10002, 20002)), "ingress")
    bulk = (os.urandom(4096) + marker) * 32

    def traffic():
        return lab.curl(f"http://127.0.0.1:10001/{marker.decode()}"), lab.echo_paced(10002, bulk)

    def no_marker_on_the_wire(port, report):
        if port != 10001:
            assert not report.contains(marker), [f.summary() for f in report.flows]

    (result, echoed), reports = lab.capture_complete({20001: "any", 20002: "any", 10001: "lo"},
                                                     traffic, no_marker_on_the_wire)

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == b"response " + marker * 50
    assert echoed == bulk
    assert reports[10001].contains(marker), "control capture of the plaintext side missed the marker"
    for port in (20001, 20002):
        report = reports[port]
        summary = [f.summary() for f in report.flows]
        assert len(report.flows) == 1, summary
        assert report.all_tls, summary
        flow = report.flows[0]
        assert flow.alpn_offered == ["rats-tls"], summary
        assert flow.tls_version_ok, summary
        assert lab.server_hello_version(flow.s2c) == 0x0304, summary
        assert 23 in flow.records_c2s and 23 in flow.records_s2c, summary  # application data both ways
        assert flow.server == f"{lab.SERVER_ADDR}:{port}"
    # the binary payload crossed as ciphertext of at least its own size
    bulk_flow = reports[20002].flows[0]
    assert len(bulk_flow.c2s) > len(bulk) and len(bulk_flow.s2c) > len(bulk)


# -- start failures ----------------------------------------------------------

@pytest.mark.parametrize("clash", ["add_ingress[1].mapping.in", "add_egress[0].mapping.in"])
def test_port_in_use_exits_1_and_leaves_nothing(lab, clash):
    """One instance, three endpoints; one port is taken: exit 1, one line naming
    the JSON path, and none of the other endpoints stays listening."""
    busy = 10002 if clash.startswith("add_ingress") else 20001
    blocker = lab.lab.spawn(lab.client, [
        sys.executable, "-c",
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "time.sleep(600)\n", str(busy)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.poll_until(lambda: _listening(lab, busy), f"blocker on {busy}", proc=blocker)
    config = {**lab.ingress_config((10001, 20001), (10002, 20001)),
              **lab.egress_config((20001, 30001), tunnel_host="127.0.0.1")}

    result = lab.client.run(lab.nfq_argv(config), check=False, timeout=60)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tng-nfq: error: {clash}: "), lines[0]
    assert f"127.0.0.1:{busy}" in lines[0] and "in use" in lines[0], lines[0]
    assert result.stdout == ""
    # nothing left: only the blocker lives in the namespace, and no other port listens
    pids = subprocess.run(["ip", "netns", "pids", lab.client.name], capture_output=True, text=True).stdout.split()
    assert pids == [str(blocker.pid)]
    for port in {10001, 10002, 20001} - {busy}:
        assert not _listening(lab, port), f"port {port} still listening"


def _listening(lab, port: int) -> bool:
    try:
        lab.connect(port).close()
        return True
    except ConnectionRefusedError:
        return False
