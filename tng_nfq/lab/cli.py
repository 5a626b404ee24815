"""`tng-nfq lab ...`: the Vagrant lab's scenarios in network namespaces on one host.

    tng-nfq lab up                 # namespaces client/gateway/server, same addresses as vagrant/Vagrantfile
    tng-nfq lab run 1              # one scenario (number or directory name); `run all` for every one
    tng-nfq lab down               # stop everything, delete the namespaces
    tng-nfq lab list
    tng-nfq lab wire-check --pcap F --port P [--expect-absent TEXT]   # used by the scenario scripts

`vagrant/netns-lab` is the same thing as a script. Needs root except
`list` and `wire-check`.
"""

from __future__ import annotations

import os
import sys

import click


def _need_root() -> None:
    if os.geteuid() != 0:
        click.echo("tng-nfq lab: needs root (creates network namespaces)", err=True)
        sys.exit(1)


def _lab(prefix: str):
    from tng_nfq.lab.scenarios import NetnsLab

    return NetnsLab(prefix)


_prefix_option = click.option("--prefix", default="tnglab", show_default=True, metavar="NAME",
                              help="Namespace names: NAME-client, NAME-gateway, NAME-server.")


@click.group()
def lab() -> None:
    """The three-machine lab (vagrant/) mirrored in network namespaces."""


@lab.command("list")
def lab_list() -> None:
    """List the scenarios and their steps."""
    from tng_nfq.lab.netns import LabError
    from tng_nfq.lab.scenarios import list_scenarios

    try:
        for s in list_scenarios():
            click.echo(f"{s.name}: {s.title}")
            for st in s.steps():
                click.echo(f"    {st.role:8} {st.script} {' '.join(st.args)}".rstrip())
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@lab.command("up")
@_prefix_option
def lab_up(prefix: str) -> None:
    """Create the namespaces (recreated when present)."""
    from tng_nfq.lab.netns import LabError

    _need_root()
    try:
        nl = _lab(prefix)
        nl.up()
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"lab up: {nl.ns('client')} 192.168.56.10 -> {nl.ns('gateway')} 192.168.56.20|192.168.57.20 "
               f"-> {nl.ns('server')} 192.168.57.30 (state in {nl.state})")


@lab.command("down")
@_prefix_option
def lab_down(prefix: str) -> None:
    """Stop every process of the lab and delete its namespaces."""
    from tng_nfq.lab.netns import LabError

    _need_root()
    try:
        nl = _lab(prefix)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    nl.down()
    click.echo(f"lab down: no namespace {prefix}-* left" if not nl.namespaces()
               else f"lab down: still present: {nl.namespaces()}")


@lab.command("run")
@_prefix_option
@click.option("--keep", is_flag=True, help="Leave the scenario's processes running afterwards.")
@click.argument("scenarios", nargs=-1, required=True)
def lab_run(prefix: str, keep: bool, scenarios: tuple[str, ...]) -> None:
    """Run scenarios (numbers, directory names, or `all`) in the lab that is up."""
    from tng_nfq.lab.netns import LabError

    _need_root()
    try:
        nl = _lab(prefix)
        chosen = nl.scenarios() if "all" in scenarios else [nl.find(s) for s in scenarios]
        if not nl.is_up():
            raise LabError(f"the lab {prefix} is not up: run `tng-nfq lab up` (or vagrant/netns-lab up) first")
        failed = []
        for sc in chosen:
            click.secho(f"=== scenario {sc.name}: {sc.title}", bold=True)
            res = nl.run(sc, out=click.echo, keep=keep,
                         on_step=lambda st: click.secho(f"--> {st.role}: {st.script} {' '.join(st.args)}".rstrip(),
                                                        bold=True))
            if res.ok:
                click.secho(f"=== scenario {sc.name}: PASSED in {res.seconds:.1f}s", fg="green")
            else:
                failed.append(sc.name)
                click.secho(f"=== scenario {sc.name}: FAILED after {res.seconds:.1f}s", fg="red")
                click.echo(res.logs, err=True)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(1 if failed else 0)


@lab.command("wire-check")
@click.option("--pcap", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="The TCP port captured.")
@click.option("--expect-absent", multiple=True, metavar="TEXT", help="Text that must never appear in clear.")
@click.option("--allow-http-encapsulation", is_flag=True,
              help="Accept HTTP requests carrying a `tng` header (HTTP encapsulation) besides TLS flows.")
def lab_wire_check(pcap: str, port: int, expect_absent: tuple[str, ...], allow_http_encapsulation: bool) -> None:
    """Judge a tcpdump capture: at least one flow, every flow TLS with ALPN
    rats-tls (or encapsulated HTTP when allowed), no plaintext. Exit 0 when clean."""
    from pathlib import Path

    from tng_nfq.capture import judge, report
    from tng_nfq.lab.capture import analyze_pcap

    lines, leaked = report(Path(pcap), [port], [t.encode() for t in expect_absent])
    flows = analyze_pcap(pcap, port).flows
    problems = []
    if not flows:
        problems.append("no flow captured")
    for verdict in judge(flows, [t.encode() for t in expect_absent]):
        f = verdict.flow
        if f.is_tls and f.alpn_offered != ["rats-tls"]:
            problems.append(f"{f.client} -> {f.server}: ALPN offered {f.alpn_offered}, not rats-tls")
        if not f.is_tls and not (allow_http_encapsulation and verdict.encapsulated):
            problems.append(f"{f.client} -> {f.server}: not TLS")
    for line in lines:
        click.echo(line)
    for p in problems:
        click.echo(f"problem: {p}")
    sys.exit(1 if leaked or problems else 0)
