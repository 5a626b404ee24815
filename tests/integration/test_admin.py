"""Admin/control API: readiness transitions, counters that move with traffic,
live flows, Prometheus text that prometheus-client parses."""

from __future__ import annotations

import json
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.attestation import att, attest, egress, ingress  # noqa: F401  (fixture)

pytestmark = pytest.mark.root

ADMIN_PORT = 9901


def _get(ns, path: str, port: int = ADMIN_PORT) -> tuple[int, str]:
    script = ("import sys, urllib.request, urllib.error\n"
              "try:\n"
              f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n"
              "    code, body = r.status, r.read()\n"
              "except urllib.error.HTTPError as e:\n"
              "    code, body = e.code, e.read()\n"
              "except OSError as e:  # not listening yet\n"
              "    code, body = 0, str(e).encode()\n"
              "sys.stdout.write(str(code) + '\\n' + body.decode())\n")
    out = ns.run([sys.executable, "-c", script]).stdout
    code, _, body = out.partition("\n")
    return int(code), body


def _metrics(ns) -> dict:
    samples = {}
    for family in text_string_to_metric_families(_get(ns, "/metrics")[1]):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_readiness_counters_flows_metrics(lab, att):
    # The server's attester starts without an Attestation Agent: the instance
    # must answer /livez but not be ready until the AA appears.
    backend = lab.start_backend(30001)
    aa_path = att.aa_path("late-aa")
    cfg = {"control_interface": {"restful": {"host": "127.0.0.1", "port": ADMIN_PORT}},
           "add_egress": [egress(20001, 30001, {"attest": {"aa_addr": f"unix://{aa_path}"}})]}
    server_gw = lab.start_nfq(lab.server, cfg, "egress", wait_ready=False)
    lab.poll_until(lambda: _get(lab.server, "/livez")[0] == 200, "livez 200", proc=server_gw.proc)
    code, body = _get(lab.server, "/readyz")
    assert code == 503 and "not ready" in body
    status = json.loads(_get(lab.server, "/status")[1])
    assert status["ready"] is False
    assert status["egress"][0]["attestation"]["attester"]["ready"] is False
    assert "unreachable" in (status["egress"][0]["attestation"]["attester"]["last_error"] or "")

    aa = att.start_aa(lab.server, name="late-aa")
    lab.poll_until(lambda: _get(lab.server, "/readyz")[0] == 200, "readyz 200 once the AA answers",
                   proc=server_gw.proc)
    assert aa.alive

    client_cfg = {"admin_bind": {"port": ADMIN_PORT},
                  "add_ingress": [ingress(10001, 20001, {"no_ra": True})]}
    lab.start_nfq(lab.client, client_cfg, "ingress")
    before = _metrics(lab.client)
    labels = (("id", "add_ingress[0]"), ("mode", "mapping"), ("type", "ingress"))
    assert before[("tng_cx_total", labels)] == 0

    # an open connection shows up in /flows with its byte counts
    sock = lab.connect(10001)
    try:
        sock.sendall(b"ECHO\n" + b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += sock.recv(65536)
        flows = lab.poll_until(lambda: json.loads(_get(lab.client, "/flows")[1])["flows"], "a live flow")
        assert len(flows) == 1
        flow = flows[0]
        assert flow["endpoint"] == "add_ingress[0]" and flow["state"] == "open"
        assert flow["bytes_up"] == 1005 and flow["bytes_down"] == 1000
        assert flow["upstream"] == "198.18.0.2:20001"
    finally:
        sock.close()

    after = lab.poll_until(lambda: m if (m := _metrics(lab.client))[("tng_cx_active", labels)] == 0 else None,
                           "connection closed in metrics")
    assert after[("tng_cx_total", labels)] == 1
    assert after[("tng_rx_bytes_total", labels)] == 1005
    assert after[("tng_tx_bytes_total", labels)] == 1000
    assert after[("tng_cx_failed_total", labels)] == 0

    # the server side counts the same connection, attested
    server_stats = json.loads(_get(lab.server, "/stats")[1])["egress"][0]
    assert server_stats["connections"]["total"] == 1
    assert server_stats["attestation"]["attester"]["tee_type"] == "sample"
    assert backend.wait_reports(1)[0]["cmd"] == "ECHO"  # the bytes reached the backend


def test_admin_port_taken_fails_cleanly(lab):
    blocker = lab.start_backend(9902)
    cfg = {"admin_bind": {"host": "127.0.0.1", "port": 9902},
           "add_egress": [egress(20001, 30001, {"no_ra": True})]}
    gw = lab.start_nfq(lab.server, cfg, "egress", wait_ready=False)
    assert lab.poll_until(lambda: gw.proc.poll() is not None, "exit") and gw.proc.returncode == 1
    assert "admin_bind: cannot listen on 127.0.0.1:9902" in gw.log_text()
    # nothing of the instance stayed behind: the tunnel port is free again
    assert lab.server.run(["ss", "-Hltn", "sport = :20001"]).stdout.strip() == ""
    assert blocker.proc.poll() is None
