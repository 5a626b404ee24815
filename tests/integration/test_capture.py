"""`tng-nfq capture`: pcap through NFQUEUE, read back by tshark, plaintext report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PLAIN_PORT = 7000
INGRESS, TUNNEL, BACKEND = 10001, 20001, 30001
MARKER = "capture-test-secret-7f3a"


def _start_capture(lab, args: list[str], out: Path) -> subprocess.Popen:
    argv = [str(Path(sys.executable).with_name("tng-nfq")), "capture", "--duration", "60",
            "--pcap", str(out), *args]
    log = (lab.workdir / "capture.log").open("w")
    proc = lab.lab.spawn(lab.client, argv, stdout=log, stderr=subprocess.STDOUT)
    # armed once its chain is hooked into raw OUTPUT
    lab.poll_until(lambda: "-j TNGCAP_CAPTURE" in lab.client.run(["iptables-save", "-t", "raw"]).stdout,
                   "capture rules installed", proc=proc)
    return proc


def _finish(lab, proc) -> tuple[int, str]:
    proc.send_signal(2)  # SIGINT: stop capturing, write the report
    rc = proc.wait(timeout=30)
    return rc, (lab.workdir / "capture.log").read_text()


def _tshark(pcap: Path, *args: str) -> list[str]:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by scripts/install-system-deps.sh"
    res = subprocess.run([tshark, "-r", str(pcap), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]


def test_plaintext_flow_is_reported_and_pcap_opens_in_tshark(lab):
    # loopback inside the client namespace: packets pass raw OUTPUT only once each
    backend = lab.start_backend(PLAIN_PORT, ns=lab.client)
    pcap = lab.workdir / "plain.pcap"
    proc = _start_capture(lab, ["--port", str(PLAIN_PORT), "--expect-absent", MARKER], pcap)
    request = f"ECHO\nGET /{MARKER} HTTP/1.1\r\nHost: lab\r\n\r\n".encode()
    with lab.connect(PLAIN_PORT) as sock:
        sock.sendall(request)
        sock.shutdown(1)
        assert lab.recv_all(sock) == request[5:]  # the echo backend answers through the capture
    rc, out = _finish(lab, proc)
    assert rc == 3, out
    assert "NOT TLS" in out and f"GET /{MARKER}" in out
    assert f"'{MARKER}' seen in clear" in out
    assert "verdict: PLAINTEXT found on a tunnel port" in out
    frames = _tshark(pcap, "-T", "fields", "-e", "tcp.dstport")
    assert len(frames) >= 6 and str(PLAIN_PORT) in frames  # handshake, data, FINs in both directions
    assert backend.wait_reports(1)
    # the capture's rules are gone again
    assert "TNGCAP" not in lab.client.run(["iptables-save", "-t", "raw"]).stdout


def test_tunnel_flow_is_tls_with_rats_tls(lab):
    lab.start_backend(BACKEND)
    lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    ingress_cfg = lab.ingress_config((INGRESS, TUNNEL))
    lab.start_nfq(lab.client, ingress_cfg, "ingress")
    pcap = lab.workdir / "tunnel.pcap"
    proc = _start_capture(lab, ["--config-content", json.dumps(ingress_cfg), "--expect-absent", MARKER], pcap)
    payload = f"{MARKER} through the tunnel".encode()
    assert lab.echo(INGRESS, payload) == payload
    rc, out = _finish(lab, proc)
    assert rc == 0, out
    assert f"port {TUNNEL}: 1 flow(s)" in out
    assert "[TLS]" in out and "ALPN offered: rats-tls" in out
    assert "verdict: no plaintext on the wire" in out
    alpn = _tshark(pcap, "-d", f"tcp.port=={TUNNEL},tls", "-Y", "tls.handshake.type == 1",
                   "-T", "fields", "-e", "tls.handshake.extensions_alpn_str")
    assert alpn == ["rats-tls"]
    assert "TNGCAP" not in lab.client.run(["iptables-save", "-t", "raw"]).stdout


def test_daemon_capture_option_reports_at_exit(lab):
    """`tng-nfq launch --capture PCAP`: the daemon captures its own tunnel
    ports while it runs and logs the report and verdict when it stops."""
    lab.start_backend(BACKEND)
    lab.start_nfq(lab.server, lab.egress_config((TUNNEL, BACKEND)), "egress")
    pcap = lab.workdir / "daemon.pcap"
    log = lab.workdir / "daemon-capture.log"
    argv = [str(Path(sys.executable).with_name("tng-nfq")), "--log-format", "json", "launch",
            "--config-content", json.dumps(lab.ingress_config((INGRESS, TUNNEL))), "--capture", str(pcap)]
    proc = lab.lab.spawn(lab.client, argv, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    lab.poll_until(lambda: "-j TNGCAP_CAPTURE" in lab.client.run(["iptables-save", "-t", "raw"]).stdout,
                   "capture rules installed", proc=proc)
    lab.poll_until(lambda: '"event": "ready"' in log.read_text(), "daemon ready", proc=proc)
    payload = f"{MARKER} through the tunnel".encode()
    assert lab.echo(INGRESS, payload) == payload
    proc.send_signal(15)
    assert proc.wait(timeout=30) == 0
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (verdict,) = [e for e in events if e.get("event") == "capture verdict"]
    assert verdict["plaintext"] is False and verdict["packets"] > 0, verdict
    report = [e["line"] for e in events if e.get("event") == "capture report"]
    assert any("[TLS]" in line for line in report) and any("ALPN offered: rats-tls" in line for line in report)
    assert _tshark(pcap, "-T", "fields", "-e", "tcp.dstport")  # the pcap opens in tshark
    assert "TNGCAP" not in lab.client.run(["iptables-save", "-t", "raw"]).stdout
