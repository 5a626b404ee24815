"""`tng-nfq demo` (`make demo`): the lab's scenario 1 end to end on one machine.

The three Vagrant machines of vagrant/ become three network namespaces with
the same addresses (client 192.168.56.10 -> gateway 192.168.56.20 |
192.168.57.20 -> server 192.168.57.30; they exist only inside the
namespaces), and scenario 1 (the seed's use case 2, netfilter on both ends)
runs with its own scripts (vagrant/scenarios/1-netfilter-both-ends/):

- gateway: the sample Attestation Service, tcpdump on the wire toward the server;
- server: an unmodified HTTP backend on 8080, the sample-TEE Attestation
  Agent, a netfilter egress (capture 8080, `attest`);
- client: a netfilter ingress (capture 8080, `verify`) with the admin API,
  then unmodified curl to http://192.168.57.30:8080/.

The demo prints the response, the attestation verdict, the admin API's
`/flows` and the capture verdict, then removes everything it created (also
on failure or Ctrl-C).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import click

from tng_nfq.lab.netns import LabError

SCENARIO = "1"
TOOLS = ("ip", "curl", "tcpdump", "ss", "setsid", "iptables")


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def run_demo() -> int:
    if os.geteuid() != 0:
        click.echo("tng-nfq demo needs root (it creates network namespaces).", err=True)
        return 1
    for tool in TOOLS:
        if shutil.which(tool) is None:
            click.echo(f"tng-nfq demo needs `{tool}`; run scripts/install-system-deps.sh", err=True)
            return 1
    from tng_nfq.lab.scenarios import NetnsLab

    work = Path(tempfile.mkdtemp(prefix="tng-nfq-demo-"))
    lab = None
    code = 1
    try:
        # tngnfq-<pid>-...: a later lab run sweeps these if this process is killed
        lab = NetnsLab(prefix=f"tngnfq-{os.getpid()}-demo", state_dir=work / "state")
        code = _run(lab)
    except (LabError, subprocess.TimeoutExpired) as exc:
        click.secho(f"demo failed: {exc}", fg="red", err=True)
    except KeyboardInterrupt:
        click.echo("interrupted; cleaning up", err=True)
        code = 130
    finally:
        _step("cleaning up (processes, rules, namespaces, veths)")
        if lab is not None:
            lab.down()
            left = lab.namespaces()
            if left:
                click.secho(f"  namespaces left behind: {left}", fg="red", err=True)
                code = code or 1
            else:
                click.echo(f"  removed: {', '.join(lab.ns(r) for r in ('client', 'gateway', 'server'))}")
        shutil.rmtree(work, ignore_errors=True)
    if code == 0:
        click.secho("demo OK: the server was attested, the request went through the tunnel, "
                    "and the wire carried only TLS", fg="green")
    return code


def _run(lab) -> int:
    scenario = lab.find(SCENARIO)
    _step("creating the lab: namespaces client, gateway, server "
          "(192.168.56.10 -> 192.168.56.20 | 192.168.57.20 -> 192.168.57.30)")
    lab.up()
    _step(f"running scenario {scenario.title.removeprefix('Scenario ')} (vagrant/scenarios/{scenario.name}/)")
    result = lab.run(scenario, out=click.echo,
                     on_step=lambda st: _step(f"{st.role}: {st.script}  ({_purpose(st)})"))
    summary = _summary(result.output)
    if not result.ok:
        click.secho(f"demo FAILED in step {result.steps[-1].step.role}: {result.steps[-1].step.script}",
                    fg="red", err=True)
        click.echo(result.logs, err=True)
        return 1
    _step("summary")
    for label, value in summary:
        click.echo(f"  {label:17} {value}")
    return 0 if all(value != "(not seen)" for _, value in summary) else 1


_PURPOSES = {
    ("gateway", "gateway.sh"): "Attestation Service, capture of the wire toward the server",
    ("server", "server.sh"): "HTTP backend, Attestation Agent, netfilter egress with attest",
    ("client", "client.sh"): "netfilter ingress with verify, then curl",
    ("gateway", "check.sh"): "capture verdict",
    ("server", "check.sh"): "what the server saw",
}


def _purpose(step) -> str:
    return _PURPOSES.get((step.role, step.script), "scenario step")


def _summary(output: str) -> list[tuple[str, str]]:
    """The lines the demo promises, picked out of the scenario scripts' output."""
    def find(pattern: str) -> str:
        m = re.search(pattern, output, re.M)
        return m.group(1).strip() if m else "(not seen)"

    return [
        ("response:", find(r"^\[client\] response: (.*)$")),
        ("attestation:", find(r"^\[client\] attestation verdict on the peer: (.*)$")),
        ("/flows (client):", find(r"^\[client\] /flows: (.*)$")),
        ("capture verdict:", find(r"^\[gateway\] verdict: (.*)$")),
    ]
