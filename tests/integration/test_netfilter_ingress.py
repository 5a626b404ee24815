"""Ingress netfilter end to end, in lab namespaces only.

Use case 2 of the seed with no_ra on both ends: unmodified curl in the
client namespace connects to 198.18.0.2:8080; tng-nfq's netfilter ingress
captures it (nat OUTPUT REDIRECT) and carries it through rats-tls to the
server, whose netfilter egress captures port 8080 and hands the plaintext
to the backend. Also: cgroup-limited capture (capture_cgroup /
nocapture_cgroup, cgroup v2 paths), the gateway role (a router namespace
between client and server catching forwarded traffic with TPROXY), a
SIGKILLed ingress failing closed, interop with an upstream tng egress.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tng_nfq.lab.capture import analyze_pcap, capture
from tng_nfq.lab.netns import wait_for_port

from helpers.attestation import att, attest, verify_bg  # noqa: F401 (att is a fixture)

pytestmark = pytest.mark.root

APP, OTHER = 8080, 30002


def kernel_state(ns) -> dict:
    saved = ns.run(["iptables-save"]).stdout
    return {"iptables": "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in saved.splitlines()
                                  if not line.startswith("#")),
            "ip rule": ns.run(["ip", "-4", "rule"]).stdout,
            "ip route": ns.run(["ip", "-4", "route", "show", "table", "all"]).stdout}


def prime_tables(ns) -> None:
    """Other software's rules in nat and mangle, present before tng-nfq starts."""
    ns.run(["iptables-restore", "--noflush"],
           input="*nat\n-A OUTPUT -p udp -j RETURN\n-A PREROUTING -p udp -j RETURN\nCOMMIT\n"
                 "*mangle\n-A PREROUTING -p udp -j RETURN\nCOMMIT\n")


def ingress_config(**netfilter) -> dict:
    nf = {"capture_dst": {"port": APP}, **netfilter}
    return {"add_ingress": [{"netfilter": nf, "no_ra": True}]}


def egress_config(port: int = APP) -> dict:
    return {"add_egress": [{"netfilter": {"capture_dst": {"port": port}, "capture_local_traffic": True},
                            "no_ra": True}]}


def http_backend(lab, ns, port: int, site) -> Path:
    path, handle = lab._log(f"http-{port}")
    proc = lab.lab.spawn(ns, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory",
                              str(site), str(port)], stdout=handle, stderr=handle)
    wait_for_port(ns, "127.0.0.1", port, timeout=lab.WAIT, proc=proc)
    return path


def request_sources(log_path: Path) -> list[str]:
    return re.findall(r"^(\S+) - - \[", log_path.read_text(), re.M)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    marker = b"TNGNFQ-INGRESS-" + os.urandom(8).hex().encode()
    (site / "index.txt").write_bytes(b"captured by the netfilter ingress " + marker + b"\n")
    return site


@pytest.fixture
def usecase2(lab, site):
    """Server: backend on 8080 behind a netfilter egress, another backend on
    30002 (uncaptured). Both namespaces primed with foreign rules."""
    prime_tables(lab.client)
    prime_tables(lab.server)
    backend_log = http_backend(lab, lab.server, APP, site)
    other_log = http_backend(lab, lab.server, OTHER, site)
    before = {"client": kernel_state(lab.client), "server": kernel_state(lab.server)}
    egress = lab.start_nfq(lab.server, egress_config(), "egress")
    return {"before": before, "backend_log": backend_log, "other_log": other_log, "egress": egress,
            "body": (site / "index.txt").read_bytes()}


def test_usecase2_transparent_on_both_ends(lab, usecase2, tmp_path):
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface="veth1a") as pcap:
        result = lab.curl(f"http://{lab.SERVER_ADDR}:{APP}/index.txt")
    other = lab.curl(f"http://{lab.SERVER_ADDR}:{OTHER}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == usecase2["body"]
    report = analyze_pcap(pcap, APP)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert all(f.alpn_offered == ["rats-tls"] for f in report.flows)
    assert not report.contains(b"GET /index.txt") and not report.contains(usecase2["body"][-20:])
    (entry,) = ingress.wait_access()
    assert (entry["mode"], entry["outcome"], entry["upstream"]) == ("netfilter", "ok", f"{lab.SERVER_ADDR}:{APP}")
    assert entry["downstream"].startswith("127.0.0.1:") or entry["downstream"].startswith(lab.CLIENT_ADDR)
    (eg,) = usecase2["egress"].wait_access()
    assert eg["outcome"] == "ok", eg
    # the uncaptured port went straight through, in the clear, untouched by us
    assert other.returncode == 0 and request_sources(usecase2["other_log"]) == [lab.CLIENT_ADDR]
    assert len(ingress.access()) == 1

    assert ingress.stop() == 0 and usecase2["egress"].stop() == 0
    assert kernel_state(lab.client) == usecase2["before"]["client"]
    assert kernel_state(lab.server) == usecase2["before"]["server"]


def test_killed_ingress_fails_closed(lab, usecase2, tmp_path):
    """SIGKILL leaves the steering rules in place with no listener behind them:
    the app's connection is refused - nothing leaves the client in clear."""
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")
    ingress.stop(signal.SIGKILL)

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface="veth1a") as pcap:
        result = lab.curl(f"http://{lab.SERVER_ADDR}:{APP}/index.txt")

    assert result.returncode != 0
    assert analyze_pcap(pcap, APP).flows == []  # not even a SYN carried payload out
    assert request_sources(usecase2["backend_log"]) == []

    again = lab.start_nfq(lab.client, ingress_config(), "ingress-again")  # sweeps, then works
    assert lab.curl(f"http://{lab.SERVER_ADDR}:{APP}/index.txt").returncode == 0
    assert again.stop() == 0
    assert kernel_state(lab.client) == usecase2["before"]["client"]


# -- cgroups ------------------------------------------------------------------------

def cgroup2_root() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    pytest.skip("no cgroup v2 hierarchy mounted")


@pytest.fixture
def cgroups():
    """Two fresh cgroup v2 groups (removed afterwards): ("/tngnfq-<pid>/app", "/tngnfq-<pid>/other")."""
    root = cgroup2_root()
    base = root / f"tngnfq-{os.getpid()}"
    made = [base, base / "app", base / "other"]
    for path in made:
        path.mkdir(exist_ok=True)
    try:
        yield {"root": root, "app": f"/{base.name}/app", "other": f"/{base.name}/other"}
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def curl_in_cgroup(lab, ns, cgroup_dir: Path, url: str):
    """curl started inside `cgroup_dir` (its sockets belong to that cgroup).

    The shell joins the cgroup before `ip netns exec` (which mounts a fresh
    /sys without the cgroup filesystems); membership survives the execs."""
    return subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup_dir),
                           *ns.cmd(["curl", "-sS", "--fail", "--max-time", "20", url])],
                          capture_output=True, text=True, timeout=lab.WAIT + 10)


def test_capture_cgroup_limits_capture_to_that_cgroup(lab, usecase2, cgroups):
    ingress = lab.start_nfq(lab.client, ingress_config(capture_cgroup=cgroups["app"]), "ingress")
    url = f"http://{lab.SERVER_ADDR}:{APP}/index.txt"

    inside = curl_in_cgroup(lab, lab.client, cgroups["root"] / cgroups["app"].lstrip("/"), url)
    outside = curl_in_cgroup(lab, lab.client, cgroups["root"] / cgroups["other"].lstrip("/"), url)

    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.encode() == usecase2["body"]
    assert outside.returncode != 0  # not captured: plaintext met the server's TLS egress
    (entry,) = ingress.wait_access()
    assert entry["outcome"] == "ok"
    errors = [e for e in usecase2["egress"].wait_access(2) if e["outcome"] == "error"]
    assert len(errors) == 1 and errors[0]["downstream"].startswith(lab.CLIENT_ADDR)
    assert "TPROXY" not in lab.client.run(["iptables-save"]).stdout  # no gateway part with cgroups
    assert ingress.stop() == 0
    assert kernel_state(lab.client) == usecase2["before"]["client"]


def test_nocapture_cgroup_is_left_alone(lab, usecase2, cgroups):
    ingress = lab.start_nfq(lab.client, ingress_config(nocapture_cgroup=[cgroups["other"]]), "ingress")
    url = f"http://{lab.SERVER_ADDR}:{APP}/index.txt"

    captured = curl_in_cgroup(lab, lab.client, cgroups["root"] / cgroups["app"].lstrip("/"), url)
    excluded = curl_in_cgroup(lab, lab.client, cgroups["root"] / cgroups["other"].lstrip("/"), url)

    assert captured.returncode == 0, captured.stderr
    assert excluded.returncode != 0
    assert [e["outcome"] for e in ingress.wait_access()] == ["ok"]
    assert ingress.stop() == 0


# -- gateway role ------------------------------------------------------------------

def test_gateway_catches_forwarded_traffic_with_tproxy(lab, site, tmp_path):
    """client (198.19.1.1) -> router (198.19.1.254 | 198.19.2.254) -> server (198.19.2.1).
    tng-nfq on the router; the client and server hosts run nothing of ours
    except the server's egress."""
    raw = lab.lab
    client, router, server = raw.add("gwclient"), raw.add("router"), raw.add("gwserver")
    raw.link(client, "198.19.1.1/24", router, "198.19.1.254/24")
    raw.link(router, "198.19.2.254/24", server, "198.19.2.1/24")
    client.run(["ip", "route", "add", "default", "via", "198.19.1.254"])
    server.run(["ip", "route", "add", "default", "via", "198.19.2.254"])
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    prime_tables(router)
    backend_log = http_backend(lab, server, APP, site)
    before = kernel_state(router)
    egress = lab.start_nfq(server, egress_config(), "egress")
    gateway = lab.start_nfq(router, ingress_config(), "gateway")
    router_to_server = "veth3a"  # the router's end of the second link

    with capture(router, APP, tmp_path / "wire.pcap", interface=router_to_server) as pcap:
        result = lab.curl("http://198.19.2.1:8080/index.txt", ns=client)

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == (site / "index.txt").read_bytes()
    report = analyze_pcap(pcap, APP)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert not report.contains(b"GET /index.txt")
    (entry,) = gateway.wait_access()
    assert entry["outcome"] == "ok" and entry["downstream"].startswith("198.19.1.1:"), entry
    assert entry["upstream"] == "198.19.2.1:8080"
    assert egress.wait_access()[0]["outcome"] == "ok"
    assert request_sources(backend_log) == ["198.19.2.1"]
    assert "lookup 5650" in router.run(["ip", "-4", "rule"]).stdout

    assert gateway.stop() == 0
    assert kernel_state(router) == before


# -- interop -----------------------------------------------------------------------

@pytest.mark.interop
def test_our_netfilter_ingress_to_upstream_tng_egress(lab, site, tmp_path):
    http_backend(lab, lab.server, 30001, site)
    lab.start_upstream(lab.server, {"add_egress": [
        {"mapping": {"in": {"host": lab.SERVER_ADDR, "port": APP}, "out": {"host": "127.0.0.1", "port": 30001}},
         "no_ra": True}]}, "upstream-egress")
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface="veth1a") as pcap:
        result = lab.curl(f"http://{lab.SERVER_ADDR}:{APP}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == (site / "index.txt").read_bytes()
    report = analyze_pcap(pcap, APP)
    assert report.flows and report.all_tls
    assert ingress.wait_access()[0]["outcome"] == "ok"


def test_failed_install_leaves_nothing_and_says_why(lab):
    prime_tables(lab.client)
    before = kernel_state(lab.client)

    gw = lab.start_nfq(lab.client, ingress_config(capture_cgroup="/tngnfq-no-such-group"), "bad",
                       wait_ready=False)

    assert gw.proc.wait(timeout=lab.WAIT) == 1
    error = [l for l in gw.log_text().splitlines() if l.startswith("tng-nfq: error:")]
    assert len(error) == 1 and "cannot install netfilter rules" in error[0], gw.log_text()
    assert "capture_cgroup/nocapture_cgroup path" in error[0]
    assert kernel_state(lab.client) == before
    assert lab.client.run(["ss", "-Htln"]).stdout.strip() == ""  # no listener left either


def test_usecase2_as_written_verify_and_attest(lab, site, att, tmp_path):
    """Use case 2 with its attestation roles: the client verifies (background
    check against the sample AS), the server attests (sample AA)."""
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client)  # on 18080: not a captured port
    http_backend(lab, lab.server, APP, site)
    egress = lab.start_nfq(lab.server, {"add_egress": [{
        "netfilter": {"capture_dst": {"port": APP}, "capture_local_traffic": True},
        "attest": attest(aa)}]}, "egress")
    ingress = lab.start_nfq(lab.client, {"add_ingress": [{
        "netfilter": {"capture_dst": {"port": APP}}, "verify": verify_bg(svc)}]}, "ingress")

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface="veth1a") as pcap:
        result = lab.curl(f"http://{lab.SERVER_ADDR}:{APP}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == (site / "index.txt").read_bytes()
    assert analyze_pcap(pcap, APP).all_tls
    (entry,) = ingress.wait_access()
    assert entry["outcome"] == "ok" and entry["attested"] is True, entry
    assert egress.wait_access()[0]["outcome"] == "ok"
    assert svc.appraisals()
