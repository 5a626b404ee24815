"""The NFQUEUE flow classifier, in lab namespaces only.

Client namespace: curl -> 198.18.0.2:8080, captured by tng-nfq's netfilter
ingress (with its classifier workers). Server namespace: netfilter egress on
8080 in front of an HTTP backend.

The invariant: whatever happens to the classifier - working, SIGKILLed,
stalled (SIGSTOP), its queue full - the captured connection still goes
through the tunnel (or is refused); the wire between the namespaces never
carries the request in clear.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tng_nfq.lab.capture import analyze_pcap, capture
from tng_nfq.lab.netns import wait_for_port

pytestmark = pytest.mark.root

APP = 8080
CLIENT_VETH = "veth1a"


def ingress_config() -> dict:
    return {"add_ingress": [{"netfilter": {"capture_dst": {"port": APP}}, "no_ra": True}]}


def egress_config() -> dict:
    return {"add_egress": [{"netfilter": {"capture_dst": {"port": APP}}, "no_ra": True}]}


@pytest.fixture
def body(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    data = b"classified " + os.urandom(8).hex().encode() + b"\n"
    (site / "index.txt").write_bytes(data)
    return site, data


@pytest.fixture
def server(lab, body):
    site, _ = body
    path, handle = lab._log("http")
    proc = lab.lab.spawn(lab.server, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory",
                                      str(site), str(APP)], stdout=handle, stderr=handle)
    wait_for_port(lab.server, "127.0.0.1", APP, timeout=lab.WAIT, proc=proc)
    return lab.start_nfq(lab.server, egress_config(), "egress")


def classifier_started(gw) -> dict:
    (entry,) = gw.events("classifier started")
    return entry


def stop_summary(gw) -> dict:
    assert gw.stop() == 0
    (entry,) = gw.events("classifier stopped")
    return entry


def curl_app(lab, timeout: int = 20) -> subprocess.CompletedProcess:
    return lab.client.run(["curl", "-sS", "--fail", "--max-time", str(timeout),
                           f"http://{lab.SERVER_ADDR}:{APP}/index.txt"], check=False, timeout=timeout + 10)


def assert_tls_only(pcap, body: bytes) -> None:
    report = analyze_pcap(pcap, APP)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert not report.contains(b"GET /index.txt") and not report.contains(body.strip())


def test_workers_bind_with_fail_open_and_classify_each_connection(lab, server, body, tmp_path):
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")
    started = classifier_started(ingress)
    assert started["queues"] == [5650 + i for i in range(len(started["queues"]))]
    assert set(started["fail_open_ack"].values()) == {0}  # NFQA_CFG_F_FAIL_OPEN|GSO accepted
    assert "NFQUEUE" in lab.client.run(["iptables-save", "-t", "raw"]).stdout

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface=CLIENT_VETH) as pcap:
        results = [curl_app(lab) for _ in range(3)]

    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert all(r.stdout.encode() == body[1] for r in results)
    assert_tls_only(pcap, body[1])
    assert [e["outcome"] for e in ingress.wait_access(3)] == ["ok"] * 3
    summary = stop_summary(ingress)
    assert summary["flows_classified"] >= 3  # one per connection (a retransmitted SYN may add one)
    assert not any("TNGNFQ" in l for l in lab.client.run(["iptables-save"]).stdout.splitlines())


def test_killed_worker_still_tunnels_never_in_clear(lab, server, body, tmp_path, monkeypatch):
    monkeypatch.setenv("TNG_NFQ_QUEUES", "1")
    monkeypatch.setenv("TNG_NFQ_WORKER_RESTART_DELAY", "600")  # stays dead for this test
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")
    (pid,) = classifier_started(ingress)["pids"]
    os.kill(pid, signal.SIGKILL)
    lab.poll_until(lambda: ingress.events("classifier worker exited; its queue is bypassed until it is "
                                          "restarted"), "worker death noticed")

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface=CLIENT_VETH) as pcap:
        result = curl_app(lab)

    assert result.returncode == 0, result.stderr  # --queue-bypass, then the static steering
    assert result.stdout.encode() == body[1]
    assert_tls_only(pcap, body[1])
    assert ingress.wait_access()[0]["outcome"] == "ok"
    assert stop_summary(ingress)["flows_classified"] == 0  # the bypass path it was


def test_stalled_worker_is_replaced_and_traffic_still_tunnels(lab, server, body, tmp_path, monkeypatch):
    monkeypatch.setenv("TNG_NFQ_QUEUES", "1")
    monkeypatch.setenv("TNG_NFQ_WORKER_STALL_TIMEOUT", "1")
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")
    (pid,) = classifier_started(ingress)["pids"]
    os.kill(pid, signal.SIGSTOP)

    with capture(lab.client, APP, tmp_path / "wire.pcap", interface=CLIENT_VETH) as pcap:
        result = curl_app(lab)  # its SYN waits in the stalled queue until the watchdog acts

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == body[1]
    assert_tls_only(pcap, body[1])
    assert ingress.events("classifier worker stalled; killing it (its queue is bypassed until a new "
                          "worker binds)")
    summary = stop_summary(ingress)
    assert summary["restarts"] == {"5650": 1} or summary["restarts"]["5650"] >= 1


def test_full_queue_fails_open_into_the_tunnel(lab, server, body, tmp_path, monkeypatch):
    """Queue length 1 and a stopped worker: the first SYN fills the queue; the
    next connections' SYNs are let through by NFQA_CFG_F_FAIL_OPEN - into the
    static steering, so they still go through the tunnel."""
    monkeypatch.setenv("TNG_NFQ_QUEUES", "1")
    monkeypatch.setenv("TNG_NFQ_QUEUE_MAXLEN", "1")
    monkeypatch.setenv("TNG_NFQ_WORKER_STALL_TIMEOUT", "600")
    ingress = lab.start_nfq(lab.client, ingress_config(), "ingress")
    (pid,) = classifier_started(ingress)["pids"]
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = lab.client.popen(["curl", "-sS", "--max-time", "30", "-o", "/dev/null",
                                  f"http://{lab.SERVER_ADDR}:{APP}/index.txt"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with capture(lab.client, APP, tmp_path / "wire.pcap", interface=CLIENT_VETH) as pcap:
            result = curl_app(lab, timeout=10)
        assert result.returncode == 0, result.stderr
        assert result.stdout.encode() == body[1]
        assert_tls_only(pcap, body[1])
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stuck.wait(timeout=40) == 0
    assert stop_summary(ingress)["restarts"] == {"5650": 0}


def test_workers_die_with_a_killed_daemon_and_the_next_start_binds_every_queue(lab, server):
    first = lab.start_nfq(lab.client, ingress_config(), "first")
    pids = classifier_started(first)["pids"]
    os.kill(first.proc.pid, signal.SIGKILL)  # the daemon alone, not its process group

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone too (its parent is dead; init reaps it)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")

    lab.poll_until(lambda: all(gone(pid) for pid in pids), "workers exit with their daemon")
    second = lab.start_nfq(lab.client, ingress_config(), "second")
    started = classifier_started(second)
    assert set(started["fail_open_ack"].values()) == {0}
    assert len(started["pids"]) == len(pids)
    assert curl_app(lab).returncode == 0
    assert stop_summary(second)["flows_classified"] >= 1
