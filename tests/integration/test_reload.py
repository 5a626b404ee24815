"""SIGHUP: a good configuration file is applied (new endpoints start, removed
ones drain, unchanged ones keep their connections); a bad one is refused
and the running configuration stays. Netfilter endpoints too: their rules
are replaced under live traffic (new connections through an unchanged
endpoint are measured all along the reload), and a reload that cannot bind
or whose rules the kernel refuses leaves the rules byte-identical."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tng_nfq.lab.netns import wait_for_log_event, wait_for_port

pytestmark = pytest.mark.root

TUNNEL_A, TUNNEL_B, BACKEND = 20001, 20002, 30001
IN_A, IN_B = 10001, 10002


def _ingress(*pairs) -> dict:
    return {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": listen},
                                         "out": {"host": "198.18.0.2", "port": tunnel}}, "no_ra": True}
                            for listen, tunnel in pairs]}


def _events(path, event):
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


def test_sighup_applies_good_config_and_refuses_bad(lab):
    lab.start_backend(BACKEND)
    lab.start_nfq(lab.server, lab.egress_config((TUNNEL_A, BACKEND), (TUNNEL_B, BACKEND)), "egress")

    cfg_path = lab.workdir / "ingress.json"
    cfg_path.write_text(json.dumps(_ingress((IN_A, TUNNEL_A))))
    log_path = lab.workdir / "ingress.log"
    proc = lab.lab.spawn(lab.client, [lab.nfq_argv({})[0], "--log-format", "json", "launch",
                                      "--config-file", str(cfg_path)],
                         stdout=subprocess.DEVNULL, stderr=log_path.open("w"))
    wait_for_log_event(log_path, "ready", proc)

    # a connection through A stays open across the reload that removes A
    held = lab.connect(IN_A)
    held.sendall(b"ECHO\nbefore ")
    assert held.recv(100) == b"before "

    cfg_path.write_text(json.dumps(_ingress((IN_B, TUNNEL_B))))
    proc.send_signal(signal.SIGHUP)
    reloaded = lab.poll_until(lambda: _events(log_path, "reloaded"), "reloaded", proc=proc)[0]
    assert reloaded["added"] == ["add_ingress[0]"] and reloaded["removed"] == ["add_ingress[0]"]

    assert lab.echo(IN_B, b"through B") == b"through B"  # the new endpoint serves
    with pytest.raises(ConnectionRefusedError):  # the removed one accepts no more
        lab.connect(IN_A)
    held.sendall(b"after")  # ... but its open connection is drained, not cut
    assert held.recv(100) == b"after"
    held.shutdown(1)
    assert lab.recv_all(held) == b""
    held.close()
    lab.poll_until(lambda: _events(log_path, "drained"), "A drained", proc=proc)

    # a broken file is refused; B keeps serving
    cfg_path.write_text('{"add_ingress": [{"mapping": {"in": {"port": 0}}}]}')
    proc.send_signal(signal.SIGHUP)
    refused = lab.poll_until(lambda: [e for e in _events(log_path, "reload refused; the running "
                                                         "configuration stays")], "refused", proc=proc)[0]
    assert "add_ingress[0].mapping" in refused["error"]
    assert lab.echo(IN_B, b"still B") == b"still B"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


# -- netfilter endpoints ------------------------------------------------------------
#
# server namespace: backends on 0.0.0.0:30001 (A) and :30002 (B), tng-nfq with
# netfilter egress endpoints (redirect listeners 40001 for A, 40002 for B)
# started with --config-file; client namespace: one tng-nfq with mapping
# ingress 127.0.0.1:10001 -> 198.18.0.2:30001 and :10002 -> :30002.

BACKEND_A, BACKEND_B = 30001, 30002
REDIRECT_A, REDIRECT_B = 40001, 40002
CLIENT_A, CLIENT_B = 10001, 10002
HELPERS = Path(__file__).parent / "helpers"


def _nf_egress(*pairs) -> dict:
    return {"add_egress": [{"netfilter": {"capture_dst": {"port": backend}, "listen_port": redirect},
                            "no_ra": True} for backend, redirect in pairs]}


def _our_chains(ns) -> list[str]:
    """Our rules and chains as iptables-save prints them (counters zeroed)."""
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in ns.run(["iptables-save"]).stdout.splitlines()
            if "TNGNFQ_" in line or line.startswith("*")]


def _listening(ns, port: int) -> bool:
    out = ns.run(["ss", "-Htln", f"sport = :{port}"]).stdout
    return bool(out.strip())


class _Instance:
    """tng-nfq in the server namespace, run from a config file (SIGHUP reloads it)."""

    def __init__(self, lab, config: dict, ns=None, name: str = "server"):
        self.lab = lab
        self.cfg = lab.workdir / f"{name}.json"
        self.cfg.write_text(json.dumps(config))
        self.log = lab.workdir / f"{name}.log"
        self.proc = lab.lab.spawn(ns or lab.server, [lab.nfq_argv({})[0], "--log-format", "json", "launch",
                                               "--config-file", str(self.cfg)],
                                  stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        wait_for_log_event(self.log, "ready", self.proc)

    def events(self, event: str) -> list[dict]:
        return _events(self.log, event)

    def reload(self, config: dict, outcome: str = "reloaded") -> dict:
        before = len(self.events(outcome))
        self.cfg.write_text(json.dumps(config))
        self.proc.send_signal(signal.SIGHUP)
        return self.lab.poll_until(lambda: self.events(outcome)[before:], outcome, proc=self.proc)[0]

    def access(self, endpoint: str) -> list[dict]:
        return [e for e in self.events("connection") if e.get("endpoint") == endpoint]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0


@pytest.fixture
def nf(lab):
    """Backends A and B in the server namespace, the client's mapping ingress."""
    for port in (BACKEND_A, BACKEND_B):
        path, handle = lab._log(f"backend-{port}")
        proc = lab.lab.spawn(lab.server, [sys.executable, str(HELPERS / "backend.py"), "--host", "0.0.0.0",
                                          "--port", str(port), "--name", f"b{port}"],
                             stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        wait_for_port(lab.server, "127.0.0.1", port, timeout=lab.WAIT, proc=proc)
    lab.start_nfq(lab.client, lab.ingress_config((CLIENT_A, BACKEND_A), (CLIENT_B, BACKEND_B)), "ingress")
    return lab


def _held(lab, port: int):
    sock = lab.connect(port)
    sock.sendall(b"ECHO\nbefore ")
    assert sock.recv(100) == b"before "
    return sock


def _finish(lab, sock, data: bytes = b"after") -> None:
    sock.sendall(data)
    assert sock.recv(100) == data
    sock.shutdown(socket.SHUT_WR)
    assert lab.recv_all(sock) == b""
    sock.close()


class _Traffic:
    """New connections through one client port, back to back, until stopped:
    every one must be echoed (a connection the rules did not steer would
    carry TLS to the plaintext backend and fail)."""

    def __init__(self, lab, port: int):
        self.lab, self.port = lab, port
        self.ok, self.failed = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        n = 0
        while not self._stop.is_set():
            n += 1
            payload = f"flow {n}".encode()
            try:
                got = self.lab.echo(self.port, payload)
            except OSError as exc:
                self.failed.append(f"{n}: {exc!r}")
                continue
            if got == payload:
                self.ok += 1
            else:
                self.failed.append(f"{n}: {got!r}")

    def stop(self):
        self._stop.set()
        self._thread.join(self.lab.WAIT)
        return self.ok, self.failed


def test_sighup_adds_a_netfilter_egress_and_the_old_one_keeps_its_connections(nf):
    lab = nf
    server = _Instance(lab, _nf_egress((BACKEND_A, REDIRECT_A)))
    held = _held(lab, CLIENT_A)
    assert not [l for l in _our_chains(lab.server) if "40002" in l]
    traffic = _Traffic(lab, CLIENT_A)  # new connections through A all along the reload
    lab.poll_until(lambda: traffic.ok >= 3, "traffic through A")

    reloaded = server.reload(_nf_egress((BACKEND_A, REDIRECT_A), (BACKEND_B, REDIRECT_B)))

    lab.poll_until(lambda: traffic.ok >= 3 + 3, "traffic through A after the reload")
    ok, failed = traffic.stop()
    assert not failed, failed
    assert reloaded["added"] == ["add_egress[1]"] and reloaded["removed"] == [] and reloaded["kept"] == 1
    (replaced,) = server.events("netfilter rules replaced")
    assert replaced["queues_added"] and replaced["queues_retired"]  # the classifier moved to new queues
    assert not set(replaced["queues_added"]) & set(replaced["queues_retired"])

    _finish(lab, held)  # the connection opened before the reload is intact
    assert lab.echo(CLIENT_B, b"through the new egress") == b"through the new egress"
    (entry,) = lab.poll_until(lambda: server.access("add_egress[1]"), "access through B")
    assert entry["mode"] == "netfilter" and entry["outcome"] == "ok", entry
    assert entry["listener"] == f"0.0.0.0:{REDIRECT_B}"
    rules = _our_chains(lab.server)
    assert any(f"--dport {BACKEND_A} -j REDIRECT --to-ports {REDIRECT_A}" in l for l in rules), rules
    assert any(f"--dport {BACKEND_B} -j REDIRECT --to-ports {REDIRECT_B}" in l for l in rules), rules
    queue = replaced["queues_added"][0]
    assert all(f"--queue-num {queue} " in l or f"--queue-balance {queue}:" in l
               for l in rules if "NFQUEUE" in l), rules
    for table in ("raw", "mangle", "nat"):  # still exactly one jump per built-in chain
        saved = lab.server.run(["iptables-save", "-t", table]).stdout.splitlines()
        assert saved.count("-A PREROUTING -p tcp -j TNGNFQ_PREROUTING") == 1, (table, saved)
    server.stop()
    assert not [l for l in _our_chains(lab.server) if not l.startswith("*")]


def test_sighup_removes_a_netfilter_egress_drains_it_and_the_other_keeps_working(nf):
    lab = nf
    server = _Instance(lab, _nf_egress((BACKEND_A, REDIRECT_A), (BACKEND_B, REDIRECT_B)))
    held = _held(lab, CLIENT_A)
    traffic = _Traffic(lab, CLIENT_B)
    lab.poll_until(lambda: traffic.ok >= 3, "traffic through B")

    before_removal = server.access("add_egress[0]")
    reloaded = server.reload(_nf_egress((BACKEND_B, REDIRECT_B)))

    lab.poll_until(lambda: traffic.ok >= 3 + 3, "traffic through B after the reload")
    ok, failed = traffic.stop()
    assert not failed, failed
    assert reloaded["removed"] == ["add_egress[0]"] and reloaded["added"] == [] and reloaded["kept"] == 1
    rules = _our_chains(lab.server)
    assert not [l for l in rules if str(BACKEND_A) in l or str(REDIRECT_A) in l], rules
    assert any(f"--dport {BACKEND_B} -j REDIRECT --to-ports {REDIRECT_B}" in l for l in rules), rules
    assert not [l for l in rules if "TNGNFQ_EGRESS1" in l], rules  # B is add_egress[0] now

    assert not _listening(lab.server, REDIRECT_A)  # stopped accepting ...
    assert not server.events("drained")
    _finish(lab, held)  # ... but the open connection runs to its end
    (drained,) = lab.poll_until(lambda: server.events("drained"), "A drained", proc=server.proc)
    assert drained["endpoint"] == "add_egress[0]"
    assert _listening(lab.server, REDIRECT_B)
    # A is no longer captured: the client's TLS now reaches the plaintext backend
    try:
        answer = lab.echo(CLIENT_A, b"x")
    except OSError as exc:
        answer = repr(exc)
    assert answer != b"x"
    assert len(server.access("add_egress[0]")) == len(before_removal) + 1  # only the held one
    server.stop()


def test_sighup_with_a_port_taken_is_refused_and_the_rules_stay_byte_identical(nf):
    lab = nf
    server = _Instance(lab, _nf_egress((BACKEND_A, REDIRECT_A)))
    squatter = lab.lab.spawn(lab.server, [sys.executable, "-c",
                                          "import socket, time\n"
                                          "s = socket.socket()\n"
                                          f"s.bind(('0.0.0.0', {REDIRECT_B}))\n"
                                          "s.listen()\n"
                                          "time.sleep(600)\n"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_for_port(lab.server, "127.0.0.1", REDIRECT_B, timeout=lab.WAIT, proc=squatter)
    held = _held(lab, CLIENT_A)
    before = _our_chains(lab.server)
    traffic = _Traffic(lab, CLIENT_A)
    lab.poll_until(lambda: traffic.ok >= 3, "traffic through A")

    refused = server.reload(_nf_egress((BACKEND_A, REDIRECT_A), (BACKEND_B, REDIRECT_B)),
                            "reload refused; the running configuration stays")

    assert f"add_egress[1].netfilter.listen_port: cannot listen on 0.0.0.0:{REDIRECT_B}" in refused["error"]
    lab.poll_until(lambda: traffic.ok >= 3 + 3, "traffic through A after the refusal")
    ok, failed = traffic.stop()
    assert not failed, failed
    assert _our_chains(lab.server) == before
    assert not server.events("netfilter rules replaced") and not server.events("reloaded")
    _finish(lab, held)

    # a rule the kernel refuses (a cgroup that does not exist): the transaction
    # fails, the classifier workers started for it are stopped again, nothing changed
    bad = _nf_egress((BACKEND_A, REDIRECT_A))
    bad["add_ingress"] = [{"netfilter": {"capture_dst": [{"port": 30009}], "listen_port": 40009,
                                         "capture_cgroup": ["tng-nfq-test/does-not-exist"]}, "no_ra": True}]
    refused = server.reload(bad, "reload refused; the running configuration stays")
    assert "cannot replace netfilter rules" in refused["error"], refused
    assert _our_chains(lab.server) == before
    assert not _listening(lab.server, 40009)  # the new endpoint's listener was closed again
    assert lab.echo(CLIENT_A, b"still A") == b"still A"
    assert server.events("classifier queues retired")  # the prepared workers went away
    server.stop()
    squatter.kill()
    squatter.wait()


def test_sighup_changing_what_a_netfilter_egress_captures_keeps_its_listener(nf):
    """Same listen_port, another capture_dst: the running endpoint is kept
    (listener and connections), only its rules change. Any other change with
    the same listen_port is refused, naming the endpoint that holds the port."""
    lab = nf
    server = _Instance(lab, _nf_egress((BACKEND_A, REDIRECT_A)))
    held = _held(lab, CLIENT_A)

    reloaded = server.reload(_nf_egress((BACKEND_B, REDIRECT_A)))

    assert reloaded["added"] == [] and reloaded["removed"] == []
    assert reloaded["recaptured"] == ["add_egress[0] -> add_egress[0]"]
    _finish(lab, held)
    assert lab.echo(CLIENT_B, b"now B") == b"now B"
    entries = lab.poll_until(lambda: a if len(a := server.access("add_egress[0]")) >= 2 else None,
                             "two connections through the kept listener")
    assert [e["upstream"] for e in entries] == [f"{lab.SERVER_ADDR}:{BACKEND_A}", f"{lab.SERVER_ADDR}:{BACKEND_B}"]
    assert all(e["listener"] == f"0.0.0.0:{REDIRECT_A}" and e["outcome"] == "ok" for e in entries), entries
    rules = _our_chains(lab.server)
    assert not [l for l in rules if f"--dport {BACKEND_A}" in l], rules

    other_mark = _nf_egress((BACKEND_B, REDIRECT_A))
    other_mark["add_egress"][0]["netfilter"]["so_mark"] = 77
    before = _our_chains(lab.server)
    refused = server.reload(other_mark, "reload refused; the running configuration stays")
    assert f"cannot listen on 0.0.0.0:{REDIRECT_A}" in refused["error"]
    assert "held by add_egress[0], which this reload replaces" in refused["error"]
    assert _our_chains(lab.server) == before
    assert lab.echo(CLIENT_B, b"still B") == b"still B"
    server.stop()


def test_sighup_installs_then_removes_a_gateway_ingress_with_its_policy_routing(nf):
    """An instance without netfilter rules gets its first netfilter endpoint
    by reload (fresh install, policy routing for the gateway role), and loses
    it again (rules, ip rule and route gone). The server's netfilter egress
    captures A, so a plain connection from the client namespace to
    198.18.0.2:30001 is echoed only while the client's ingress tunnels it."""
    lab = nf
    _Instance(lab, _nf_egress((BACKEND_A, REDIRECT_A), (BACKEND_B, REDIRECT_B)))
    mapping_only = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": 10050},
                                                 "out": {"host": lab.SERVER_ADDR, "port": BACKEND_B}},
                                     "no_ra": True}]}
    client = _Instance(lab, mapping_only, ns=lab.client, name="client-nf")
    assert not [l for l in _our_chains(lab.client) if "TNGNFQ" in l]

    def plain_echo(data: bytes):
        try:
            return _echo_to(lab, lab.SERVER_ADDR, BACKEND_A, data)
        except OSError as exc:
            return repr(exc)

    assert plain_echo(b"plain") != b"plain"  # TLS listener on the server: plaintext fails

    with_ingress = dict(mapping_only)
    with_ingress["add_ingress"] = mapping_only["add_ingress"] + [
        {"netfilter": {"capture_dst": [{"host": lab.SERVER_ADDR, "port": BACKEND_A}], "listen_port": 40020},
         "no_ra": True}]
    reloaded = client.reload(with_ingress)
    assert reloaded["added"] == ["add_ingress[1]"]
    assert client.events("netfilter rules installed")
    rules = [l for l in _our_chains(lab.client) if "TNGNFQ" in l]
    assert any("-j REDIRECT --to-ports 40020" in l for l in rules), rules
    assert any("-j TPROXY --on-port 40020" in l for l in rules), rules
    assert "lookup 5650" in lab.client.run(["ip", "-4", "rule"]).stdout
    assert plain_echo(b"captured") == b"captured"
    assert lab.echo(10050, b"mapping") == b"mapping"  # the kept mapping endpoint

    reloaded = client.reload(mapping_only)
    assert reloaded["removed"] == ["add_ingress[1]"]
    assert not [l for l in _our_chains(lab.client) if "TNGNFQ" in l]
    assert "lookup 5650" not in lab.client.run(["ip", "-4", "rule"]).stdout
    assert not lab.client.run(["ip", "-4", "route", "show", "table", "5650"]).stdout.strip()
    assert plain_echo(b"plain again") != b"plain again"
    assert lab.echo(10050, b"mapping") == b"mapping"
    client.stop()


def _echo_to(lab, host: str, port: int, data: bytes) -> bytes:
    with lab.connect(port, host=host) as sock:
        sock.sendall(b"ECHO\n" + data)
        sock.shutdown(socket.SHUT_WR)
        return lab.recv_all(sock)


def test_sighup_refuses_to_capture_the_port_a_kept_endpoint_chose_automatically(nf):
    lab = nf
    auto = {"netfilter": {"capture_dst": {"port": BACKEND_A}}, "no_ra": True}
    server = _Instance(lab, {"add_egress": [auto]})
    assert len(server.events("netfilter rules installed")) == 1
    before = _our_chains(lab.server)
    assert any("--to-ports 40000" in l for l in before), before  # the first free port from 40000

    refused = server.reload({"add_egress": [auto, {"netfilter": {"capture_dst": {"port": 40000}},
                                                   "no_ra": True}]},
                            "reload refused; the running configuration stays")

    assert refused["error"].startswith("add_egress[0].netfilter.listen_port: the port it listens on (40000")
    assert _our_chains(lab.server) == before
    assert lab.echo(CLIENT_A, b"still A") == b"still A"
    server.stop()
