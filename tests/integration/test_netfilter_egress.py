"""Egress netfilter end to end, in lab namespaces only.

client namespace (198.18.0.1)                server namespace (198.18.0.2)
  curl -> ingress mapping 127.0.0.1:10001      HTTP backend 0.0.0.0:30001
          == rats-tls to 198.18.0.2:30001 ==>  nat PREROUTING REDIRECT -> egress :40000
                                               egress -> 198.18.0.2:30001 (SO_MARK 565)

The manual's example "tng client as verifier and tng server as attester,
while tng server is using netfilter mode", with no_ra on both ends. The
wire between the namespaces is captured on the server's veth and must carry
TLS only; the kernel state (iptables-save, ip rule, ip route) inside the
server namespace must be what it was before, after a normal exit, after a
SIGKILL and the next start, and after `rules flush`.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from tng_nfq.lab.capture import analyze_pcap, capture
from tng_nfq.lab.netns import wait_for_port

pytestmark = pytest.mark.root

INGRESS, BACKEND, OTHER, LISTEN = 10001, 30001, 30002, 40000
SERVER_VETH = "veth1b"  # the lab's first link, server end

# other software's rules, present before tng-nfq starts (our hooks must come first)
FOREIGN = "*nat\n-A PREROUTING -p udp -j RETURN\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n"


def egress_config(capture_local_traffic: bool = False, **netfilter) -> dict:
    nf = {"capture_dst": {"port": BACKEND}, "capture_local_traffic": capture_local_traffic, **netfilter}
    return {"add_egress": [{"netfilter": nf, "no_ra": True}]}


def ingress_config(host: str = "198.18.0.2") -> dict:
    return {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": INGRESS},
                                        "out": {"host": host, "port": BACKEND}}, "no_ra": True}]}


def kernel_state(ns) -> dict:
    saved = ns.run(["iptables-save"]).stdout
    return {"iptables": "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in saved.splitlines()
                                  if not line.startswith("#")),
            "ip rule": ns.run(["ip", "-4", "rule"]).stdout,
            "ip route": ns.run(["ip", "-4", "route", "show", "table", "all"]).stdout}


def our_rules(ns) -> list[str]:
    return [line for line in ns.run(["iptables-save"]).stdout.splitlines() if "TNGNFQ_" in line]


def http_backend(lab, port: int, site, ns=None):
    """python http.server on 0.0.0.0:port (the egress reaches it at the server's address)."""
    ns = ns or lab.server
    path, handle = lab._log(f"http-{port}")
    proc = lab.lab.spawn(ns, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory",
                              str(site), str(port)], stdin=None, stdout=handle, stderr=handle)
    wait_for_port(ns, "127.0.0.1", port, timeout=lab.WAIT, proc=proc)
    return path


def request_sources(log_path) -> list[str]:
    """Client addresses of the requests http.server logged."""
    return re.findall(r"^(\S+) - - \[", log_path.read_text(), re.M)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    marker = b"TNGNFQ-NETFILTER-" + os.urandom(8).hex().encode()
    (site / "index.txt").write_bytes(b"through the netfilter egress " + marker + b"\n")
    (site / "other.txt").write_bytes(b"an uncaptured port\n")
    return site


@pytest.fixture
def server(lab, site):
    """Backends in the server namespace and the state from before tng-nfq."""
    lab.server.run(["iptables-restore", "--noflush"], input=FOREIGN)
    backend_log = http_backend(lab, BACKEND, site)
    http_backend(lab, OTHER, site)
    return {"before": kernel_state(lab.server), "backend_log": backend_log,
            "body": (site / "index.txt").read_bytes()}


def test_curl_through_the_tunnel_is_tls_on_the_wire_and_rules_are_gone_after_exit(lab, server, tmp_path):
    egress = lab.start_nfq(lab.server, egress_config(), "egress")
    lab.start_nfq(lab.client, ingress_config(), "ingress")
    assert "-A PREROUTING -p tcp -j TNGNFQ_PREROUTING" in our_rules(lab.server)
    first = [l for l in lab.server.run(["iptables-save", "-t", "nat"]).stdout.splitlines()
             if l.startswith("-A PREROUTING ")][0]
    assert first == "-A PREROUTING -p tcp -j TNGNFQ_PREROUTING"  # ahead of the foreign rule

    with capture(lab.server, BACKEND, tmp_path / "wire.pcap", interface=SERVER_VETH) as pcap:
        result = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == server["body"]
    report = analyze_pcap(pcap, BACKEND)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert all(f.alpn_offered == ["rats-tls"] and f.tls_version_ok for f in report.flows)
    assert not report.contains(server["body"].split()[-1]) and not report.contains(b"GET /index.txt")
    (entry,) = egress.wait_access()
    assert entry["mode"] == "netfilter" and entry["outcome"] == "ok", entry
    assert entry["upstream"] == f"{lab.SERVER_ADDR}:{BACKEND}"
    assert entry["listener"] == f"0.0.0.0:{LISTEN}"
    assert entry["downstream"].startswith(f"{lab.CLIENT_ADDR}:")
    # the backend saw the egress (a local address), never the client
    assert request_sources(server["backend_log"]) == [lab.SERVER_ADDR]

    assert egress.stop() == 0
    assert kernel_state(lab.server) == server["before"]


def test_plaintext_to_a_captured_port_is_refused_and_other_ports_are_untouched(lab, server):
    egress = lab.start_nfq(lab.server, egress_config(), "egress")

    direct = lab.curl(f"http://{lab.SERVER_ADDR}:{BACKEND}/index.txt")
    other = lab.curl(f"http://{lab.SERVER_ADDR}:{OTHER}/other.txt")

    assert direct.returncode != 0  # met the TLS listener, not the backend
    assert other.returncode == 0 and other.stdout == "an uncaptured port\n"
    (entry,) = egress.wait_access()
    assert entry["outcome"] == "error" and "handshake" in entry["error"], entry
    assert request_sources(server["backend_log"]) == []  # no plaintext reached the backend


def test_without_capture_local_traffic_local_clients_reach_the_backend(lab, server):
    egress = lab.start_nfq(lab.server, egress_config(capture_local_traffic=False), "egress")

    for host in ("127.0.0.1", lab.SERVER_ADDR):
        local = lab.curl(f"http://{host}:{BACKEND}/index.txt", ns=lab.server)
        assert local.returncode == 0, local.stderr
        assert local.stdout.encode() == server["body"]
    assert egress.access() == []
    assert request_sources(server["backend_log"]) == ["127.0.0.1", lab.SERVER_ADDR]
    assert not any(l.startswith("-A OUTPUT") and "TNGNFQ" in l for l in our_rules(lab.server))


def test_with_capture_local_traffic_local_plaintext_is_refused_and_the_tunnel_still_works(lab, server):
    egress = lab.start_nfq(lab.server, egress_config(capture_local_traffic=True), "egress")
    lab.start_nfq(lab.client, ingress_config(), "ingress")

    local = lab.curl(f"http://127.0.0.1:{BACKEND}/index.txt", ns=lab.server)
    tunnel = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt")

    assert local.returncode != 0
    # nat OUTPUT is hooked too, yet the egress's own marked connection is not recaptured
    assert tunnel.returncode == 0, tunnel.stderr
    assert tunnel.stdout.encode() == server["body"]
    outcomes = sorted(e["outcome"] for e in egress.wait_access(2))
    assert outcomes == ["error", "ok"]
    assert request_sources(server["backend_log"]) == [lab.SERVER_ADDR]
    assert "-A OUTPUT -p tcp -j TNGNFQ_OUTPUT" in our_rules(lab.server)


def test_manual_example_ingress_and_egress_in_one_instance(lab, server):
    """The manual's config as written (one instance: mapping ingress to
    127.0.0.1:30001, netfilter egress on 30001 with capture_local_traffic)."""
    config = {**ingress_config(host="127.0.0.1"), **egress_config(capture_local_traffic=True)}
    gw = lab.start_nfq(lab.server, config, "both")

    result = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt", ns=lab.server)

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == server["body"]
    entries = gw.wait_access(2)
    assert {(e["endpoint"], e["mode"], e["outcome"]) for e in entries} == {
        ("add_ingress[0]", "mapping", "ok"), ("add_egress[0]", "netfilter", "ok")}
    assert gw.stop() == 0
    assert kernel_state(lab.server) == server["before"]


def test_direct_connection_to_the_listener_is_refused_as_a_loop(lab, server):
    egress = lab.start_nfq(lab.server, egress_config(), "egress")

    sock = lab.connect(LISTEN, host=lab.SERVER_ADDR)
    try:
        data, how = lab.recv_until_closed(sock)
    finally:
        sock.close()

    assert data == b""
    (entry,) = egress.wait_access()
    assert "loop" in entry["error"], entry


def test_sigkill_leftovers_are_swept_by_the_next_start_then_rules_flush(lab, server):
    first = lab.start_nfq(lab.server, egress_config(capture_local_traffic=True), "first")
    first.stop(signal.SIGKILL)
    assert our_rules(lab.server)  # a crash leaves its rules behind

    second = lab.start_nfq(lab.server, egress_config(capture_local_traffic=True), "second")
    lab.start_nfq(lab.client, ingress_config(), "ingress")
    result = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt")

    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in second.events()].count("removed leftovers of an earlier tng-nfq "
                                                        "in this network namespace") == 1
    # exactly one set of rules: nothing duplicated by the sweep-then-install
    for table in ("raw", "mangle", "nat"):
        saved = lab.server.run(["iptables-save", "-t", table]).stdout.splitlines()
        assert saved.count("-A PREROUTING -p tcp -j TNGNFQ_PREROUTING") == 1, (table, saved)

    second.stop(signal.SIGKILL)
    flushed = lab.server.run([sys.executable, "-m", "tng_nfq.cli", "rules", "flush"])
    assert "removed: -X TNGNFQ_EGRESS0" in flushed.stdout
    assert kernel_state(lab.server) == server["before"]


def test_second_instance_in_the_namespace_is_refused(lab, server):
    first = lab.start_nfq(lab.server, egress_config(), "first")
    rules = our_rules(lab.server)

    second = lab.start_nfq(lab.server, egress_config(listen_port=40100), "second", wait_ready=False)
    assert second.proc.wait(timeout=lab.WAIT) == 1
    assert (f"tng-nfq: error: another tng-nfq (pid {first.proc.pid}) already manages netfilter rules "
            "in this network namespace") in second.log_text()
    assert our_rules(lab.server) == rules
    assert first.alive


@pytest.mark.interop
def test_upstream_tng_ingress_to_our_egress_netfilter(lab, server, tmp_path):
    egress = lab.start_nfq(lab.server, egress_config(), "egress")
    lab.start_upstream(lab.client, ingress_config(), "upstream-ingress")

    with capture(lab.server, BACKEND, tmp_path / "wire.pcap", interface=SERVER_VETH) as pcap:
        result = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == server["body"]
    report = analyze_pcap(pcap, BACKEND)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert not report.contains(b"GET /index.txt")
    (entry,) = egress.wait_access()
    assert entry["outcome"] == "ok" and entry["upstream"] == f"{lab.SERVER_ADDR}:{BACKEND}", entry
    assert egress.stop() == 0
    assert kernel_state(lab.server) == server["before"]


def test_legacy_backend_end_to_end(lab, site, monkeypatch):
    """TNG_NFQ_IPTABLES=legacy (what `iptables -V` saying "(legacy)" selects):
    the rules go into the legacy tables, none into nf_tables, and leave again."""
    monkeypatch.setenv("TNG_NFQ_IPTABLES", "legacy")
    primer = "".join(f"*{t}\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n" for t in ("raw", "mangle", "nat"))
    lab.server.run(["iptables-legacy-restore", "--noflush"], input=primer)
    http_backend(lab, BACKEND, site)

    def legacy_state():
        saved = lab.server.run(["iptables-legacy-save"]).stdout
        return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", l) for l in saved.splitlines() if not l.startswith("#"))

    before = legacy_state()
    egress = lab.start_nfq(lab.server, egress_config(), "egress")
    lab.start_nfq(lab.client, ingress_config(), "ingress")

    result = lab.curl(f"http://127.0.0.1:{INGRESS}/index.txt")

    assert result.returncode == 0, result.stderr
    assert "-A PREROUTING -p tcp -j TNGNFQ_PREROUTING" in legacy_state()
    assert "TNGNFQ" not in lab.server.run(["iptables-nft-save"]).stdout
    assert egress.wait_access()[0]["outcome"] == "ok"
    assert egress.stop() == 0
    assert legacy_state() == before
