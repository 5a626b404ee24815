"""`tng-nfq demo`: the README's main job, end to end on one machine.

Two lab namespaces joined by a veth pair (addresses exist only inside
them): "server" plays the TEE: a plain HTTP backend, the sample-TEE
Attestation Agent and a tng-nfq egress (mapping, `attest`); "client" runs
the sample Attestation Service, a tng-nfq ingress (mapping, `verify`) and
curl. The tunnel only opens once the AS has appraised the server's
evidence; tcpdump on the tunnel port proves the wire carries TLS only.
Everything is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from tng_nfq.lab.capture import analyze_pcap, capture
from tng_nfq.lab.netns import Lab, LabError, wait_for_log_event, wait_for_port

CLIENT_ADDR = "198.18.0.1"
SERVER_ADDR = "198.18.0.2"
BACKEND_PORT = 30001
TUNNEL_PORT = 20001
INGRESS_PORT = 10001
SECRET_PATH = "/api/predict/demo-secret-request"


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def _tng_nfq() -> list[str]:
    exe = Path(sys.executable).with_name("tng-nfq")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tng_nfq.cli"]


AS_PORT = 8080


def demo_configs(aa_socket: str) -> tuple[dict, dict]:
    egress = {"add_egress": [{
        "mapping": {"in": {"host": SERVER_ADDR, "port": TUNNEL_PORT},
                    "out": {"host": "127.0.0.1", "port": BACKEND_PORT}},
        "attest": {"aa_addr": f"unix://{aa_socket}"}}]}
    ingress = {"add_ingress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": INGRESS_PORT},
                    "out": {"host": SERVER_ADDR, "port": TUNNEL_PORT}},
        "verify": {"as_addr": f"http://127.0.0.1:{AS_PORT}/", "policy_ids": ["default"]}}]}
    return ingress, egress


def run_demo() -> int:
    if os.geteuid() != 0:
        click.echo("tng-nfq demo needs root (it creates network namespaces).", err=True)
        return 1
    for tool in ("ip", "curl", "tcpdump"):
        if shutil.which(tool) is None:
            click.echo(f"tng-nfq demo needs `{tool}`; run scripts/install-system-deps.sh", err=True)
            return 1
    work = Path(tempfile.mkdtemp(prefix="tng-nfq-demo-"))
    try:
        with Lab("demo") as lab:
            return _run(lab, work)
    except (LabError, subprocess.TimeoutExpired) as exc:
        click.secho(f"demo failed: {exc}", fg="red", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted; cleaned up", err=True)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(lab: Lab, work: Path) -> int:
    _step("creating lab namespaces 'client' and 'server' (veth 198.18.0.1 <-> 198.18.0.2)")
    client = lab.add("client")
    server = lab.add("server")
    lab.link(client, f"{CLIENT_ADDR}/24", server, f"{SERVER_ADDR}/24")

    _step(f"server: plain HTTP backend on 127.0.0.1:{BACKEND_PORT}")
    site = work / "site"
    (site / SECRET_PATH.strip("/")).parent.mkdir(parents=True)
    (site / SECRET_PATH.strip("/")).write_text("hello from the backend, delivered through a rats-tls tunnel\n")
    backend = lab.spawn(server, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                 "--directory", str(site), str(BACKEND_PORT)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(server, "127.0.0.1", BACKEND_PORT, proc=backend)

    aa_socket = work / "attestation-agent.sock"
    _step(f"server: sample-TEE Attestation Agent (ttrpc) on unix://{aa_socket}")
    aa = lab.spawn(server, [*_tng_nfq(), "dev", "aa", "--socket", str(aa_socket)],
                   stdout=subprocess.DEVNULL, stderr=(work / "aa.log").open("w"))
    _wait_for_file(aa_socket, aa)
    _step(f"client: sample Attestation Service (REST) on 127.0.0.1:{AS_PORT}, policy trust_all")
    as_proc = lab.spawn(client, [*_tng_nfq(), "dev", "as", "--listen", f"127.0.0.1:{AS_PORT}",
                                 "--state-dir", str(work / "as-state")],
                        stdout=subprocess.DEVNULL, stderr=(work / "as.log").open("w"))
    wait_for_port(client, "127.0.0.1", AS_PORT, proc=as_proc)

    ingress_cfg, egress_cfg = demo_configs(str(aa_socket))
    logs = {}
    for ns, name, cfg, role in ((server, "egress", egress_cfg, "server: tng-nfq egress (mapping, attest)"),
                                (client, "ingress", ingress_cfg, "client: tng-nfq ingress (mapping, verify)")):
        _step(f"{role}: {json.dumps(cfg)}")
        logs[name] = work / f"{name}.log"
        proc = lab.spawn(ns, [*_tng_nfq(), "--log-format", "json", "launch", "--config-content", json.dumps(cfg)],
                         stdout=subprocess.DEVNULL, stderr=logs[name].open("w"))
        wait_for_log_event(logs[name], "ready", proc)

    pcap = work / "tunnel.pcap"
    _step(f"client: curl http://127.0.0.1:{INGRESS_PORT}{SECRET_PATH}  (capturing tcp port {TUNNEL_PORT})")
    with capture(client, TUNNEL_PORT, pcap):
        result = client.run(["curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{INGRESS_PORT}{SECRET_PATH}"],
                            check=False)
    if result.returncode != 0:
        click.secho(f"curl failed ({result.returncode}): {result.stderr.strip()}", fg="red")
        _show_logs(logs)
        return 1
    click.echo(f"response: {result.stdout.strip()}")

    _step("what crossed the wire (tcpdump of the tunnel port, reassembled)")
    report = analyze_pcap(pcap, TUNNEL_PORT)
    for flow in report.flows:
        click.echo(f"  {flow.summary()}")
    leaked = report.contains(SECRET_PATH.encode()) or report.contains(b"hello from the backend")
    ok = report.all_tls and not leaked
    click.echo(f"  TLS on every flow: {'yes' if report.all_tls else 'NO'}")
    click.echo(f"  request/response text seen in clear: {'YES' if leaked else 'no'}")

    _step("access log of the tunnel")
    verdicts: list = []
    for name, path in logs.items():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "connection":
                click.echo(f"  {name}: {entry['downstream']} -> {entry['listener']} ({entry['mode']}) -> "
                           f"{entry['upstream']}: {entry['bytes_up']} B up, {entry['bytes_down']} B down, "
                           f"encrypted={entry['encrypted']} attested={entry['attested']}")
                if name == "ingress":
                    verdicts.append(entry.get("peer_attestation"))
    _step("attestation result (the client's verdict on the server)")
    verdict = verdicts[-1] if verdicts else None
    if verdict:
        click.echo(f"  TEE type: {verdict['tee_type']}, policy: {', '.join(verdict['policy_ids'])}, "
                   f"status: {verdict['status']} (model {verdict['model']}, AS http://127.0.0.1:{AS_PORT}/)")
    else:
        click.echo("  no verdict recorded")
    ok = ok and bool(verdict) and verdict.get("status") == "affirming"
    _step("cleaning up (processes, namespaces, veth)")
    if ok:
        click.secho("demo OK: the server was attested, the request went through the tunnel, "
                    "and the wire carried only TLS", fg="green")
        return 0
    click.secho("demo FAILED: the capture does not show a clean TLS tunnel", fg="red")
    _show_logs(logs)
    return 1


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"{path} did not appear (process exit code {proc.poll()})")
        time.sleep(0.05)


def _show_logs(logs: dict) -> None:
    for name, path in logs.items():
        click.echo(f"--- {name} log ---", err=True)
        click.echo(path.read_text()[-3000:], err=True)
