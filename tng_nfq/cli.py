"""The `tng-nfq` command line."""

from __future__ import annotations

import sys

import click

from tng_nfq import __version__

# exit codes
EXIT_RUNTIME = 1  # could not start / failed while running
EXIT_CONFIG = 2  # the configuration was rejected (nothing was started)


def _fail(message: str, code: int) -> None:
    click.echo(f"tng-nfq: error: {message}", err=True)
    sys.exit(code)


def _config_source(config_file: str | None, config_content: str | None):
    from tng_nfq.config import ConfigError, load_config, load_config_file

    if (config_file is None) == (config_content is None):
        raise click.UsageError("give exactly one of --config-file and --config-content")
    try:
        if config_file is not None:
            return load_config_file(config_file)
        return load_config(config_content)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)


def _config_options(fn):
    fn = click.option("--config-content", metavar="JSON", help="The configuration document itself.")(fn)
    fn = click.option("--config-file", "-c", metavar="FILE",
                      help="Path of a TNG configuration document (JSON; // comments allowed).")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tng-nfq")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Log line format (default: console on a terminal, JSON otherwise).")
@click.pass_context
def main(ctx: click.Context, verbose: bool, log_format: str | None) -> None:
    """tng-nfq: remote-attested TLS tunnels under unmodified TCP/HTTP applications.

    Reads TNG's configuration language and speaks TNG 2.x's wire formats
    (rats-tls, and chunked OHTTP for HTTP encapsulation), so either end of a
    tunnel may be upstream `tng`.
    """
    from tng_nfq.logs import configure

    configure(verbose=verbose, fmt=log_format)
    ctx.ensure_object(dict)


@main.command()
@_config_options
@click.option("--capture", "capture_pcap", metavar="PCAP", default=None,
              help="Also capture the tunnel ports (as `tng-nfq capture`) into PCAP while running; "
                   "the per-flow report and plaintext verdict are logged at exit.")
def launch(config_file: str | None, config_content: str | None, capture_pcap: str | None) -> None:
    """Run the gateway until SIGTERM/SIGINT (then exit 0).

    SIGHUP re-reads --config-file: unchanged endpoints keep running, removed
    ones are drained, new ones start; a bad file is refused and logged while
    the running configuration stays.
    """
    from tng_nfq.daemon import Daemon
    from tng_nfq.tunnel.endpoint import StartError
    from tng_nfq.tunnel.security import SetupRefused

    config = _config_source(config_file, config_content)
    try:
        daemon = Daemon(config)
    except SetupRefused as exc:
        _fail(str(exc), EXIT_CONFIG)
    daemon.config_path = config_file  # SIGHUP reloads it
    capturing = _start_daemon_capture(config, capture_pcap) if capture_pcap else None
    try:
        daemon.run()
    except StartError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    finally:
        if capturing is not None:
            capturing()


def _start_daemon_capture(config, pcap: str):
    """Capture in a thread beside the daemon; returns the function that stops
    it and logs the report (one line per report line, then the verdict)."""
    import threading
    from pathlib import Path

    import structlog

    from tng_nfq.capture import CaptureError, ports_of, report, run_capture

    log = structlog.get_logger(component="capture")
    ports, path, stop = ports_of(config), Path(pcap), threading.Event()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["packets"] = run_capture(ports, path, None, stop=stop)
        except CaptureError as exc:
            outcome["error"] = str(exc)
            log.error("capture failed", error=str(exc))

    thread = threading.Thread(target=work, name="capture", daemon=True)
    thread.start()
    log.info("capturing", ports=ports, pcap=str(path))

    def finish() -> None:
        stop.set()
        thread.join(10)
        if "packets" not in outcome:
            return
        lines, leaked = report(path, ports, [])
        for line in lines:
            log.info("capture report", line=line)
        log.info("capture verdict", packets=outcome["packets"], pcap=str(path), plaintext=leaked)

    return finish


@main.command()
@_config_options
def check(config_file: str | None, config_content: str | None) -> None:
    """Validate a configuration without starting anything.

    Exit 0 when the document is valid and this version can run all of it;
    2 with one line naming the JSON path of the first problem otherwise.
    """
    from tng_nfq.daemon import build
    from tng_nfq.tunnel.security import SetupRefused

    config = _config_source(config_file, config_content)
    try:
        build(config)
    except SetupRefused as exc:
        _fail(f"{exc} (the configuration itself is valid)", EXIT_CONFIG)
    click.echo(f"configuration OK: {len(config.ingress)} ingress, {len(config.egress)} egress")


@main.group()
def rules() -> None:
    """The netfilter rules of tng-nfq (see rules/README.md)."""


@rules.command("show")
@_config_options
@click.option("--removal", is_flag=True, help="Print the removal instead of the installation.")
def rules_show(config_file: str | None, config_content: str | None, removal: bool) -> None:
    """Print the exact rules a configuration installs (no root needed)."""
    from tng_nfq.netfilter.commands import show_plan
    from tng_nfq.netfilter.plan import PlanError

    config = _config_source(config_file, config_content)
    try:
        click.echo(show_plan(config).render(removal=removal), nl=False)
    except PlanError as exc:
        _fail(str(exc), EXIT_CONFIG)


@rules.command("flush")
@click.option("--force", is_flag=True, help="Also while a running tng-nfq holds this network namespace.")
def rules_flush(force: bool) -> None:
    """Remove every rule, chain, ip rule and route of tng-nfq from this network namespace."""
    from tng_nfq.netfilter.apply import flush
    from tng_nfq.netfilter.iptables import IptablesError
    from tng_nfq.netfilter.lock import AlreadyRunning
    from tng_nfq.netfilter.routing import RoutingError

    try:
        removed = flush(force=force)
    except AlreadyRunning as exc:
        _fail(f"{exc} (stop it, or use --force)", EXIT_RUNTIME)
    except (IptablesError, RoutingError, OSError) as exc:
        _fail(str(exc), EXIT_RUNTIME)
    for line in removed:
        click.echo(f"removed: {line}")
    if not removed:
        click.echo("nothing of tng-nfq found in this network namespace")


@main.group()
def dev() -> None:
    """Sample-TEE development services: an Attestation Agent and an Attestation
    Service that speak the real CoCo protocols (no TEE needed)."""


@dev.command("aa")
@click.option("--socket", "socket_path", required=True, metavar="PATH",
              help="Unix socket to serve ttrpc on (e.g. /run/confidential-containers/attestation-agent/"
                   "attestation-agent.sock); use unix://PATH as aa_addr.")
def dev_aa(socket_path: str) -> None:
    """Run a sample-TEE Attestation Agent (ttrpc over a unix socket) until SIGTERM/SIGINT."""
    from tng_nfq.attestation.dev_aa import run_forever

    run_forever(socket_path)


@dev.command("as")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="REST API address (POST /attestation, GET /certificate, POST /challenge).")
@click.option("--grpc", "grpc_listen", default=None, metavar="HOST:PORT", help="Also serve the gRPC API here.")
@click.option("--policy", default="trust_all", show_default=True,
              help="Appraisal policy: trust_all, deny_all, or reject_svn_below:N.")
@click.option("--state-dir", required=True, metavar="DIR",
              help="Where the token-signing CA (ca.pem) and signer are kept (created on first start).")
def dev_as(listen: str, grpc_listen: str | None, policy: str, state_dir: str) -> None:
    """Run a sample-TEE Attestation Service issuing EAR tokens until SIGTERM/SIGINT."""
    from tng_nfq.attestation.dev_as import run_forever

    run_forever(listen, grpc_listen=grpc_listen, policy=policy, state_dir=state_dir)


@main.command()
@_config_options
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              help="TCP port to capture (repeatable); default: the tunnel ports of the configuration.")
@click.option("--pcap", type=click.Path(dir_okay=False), default=None,
              help="Where to write the pcap (default: ./tng-nfq-capture-<time>-<pid>.pcap).")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Seconds to capture (default: until Ctrl-C / SIGTERM).")
@click.option("--expect-absent", "expect_absent", multiple=True, metavar="TEXT",
              help="Text that must never appear in clear on these ports (repeatable).")
def capture(config_file, config_content, ports, pcap, duration, expect_absent) -> None:
    """Capture the tunnel's ports through NFQUEUE (fail-open, each packet accepted
    at once), write a pcap, reassemble the flows and report any plaintext.

    Exit 0: no plaintext seen; 3: plaintext on a tunnel port; 1: capture failed.
    Needs root (iptables, NFQUEUE).
    """
    from pathlib import Path

    from tng_nfq.capture import CaptureError, default_pcap_path, ports_of, report, run_capture

    port_list = sorted(set(ports))
    if config_file is not None or config_content is not None:
        port_list = sorted(set(port_list) | set(ports_of(_config_source(config_file, config_content))))
    if not port_list:
        raise click.UsageError("give --port, or a configuration (--config-file/--config-content) with tunnel ports")
    path = Path(pcap) if pcap else default_pcap_path()
    click.echo(f"capturing tcp ports {', '.join(map(str, port_list))} -> {path}"
               + (f" for {duration:g}s" if duration else " (Ctrl-C to stop)"), err=True)
    try:
        count = run_capture(port_list, path, duration)
    except CaptureError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    lines, leaked = report(path, port_list, [t.encode() for t in expect_absent])
    click.echo(f"{count} packets written to {path}")
    for line in lines:
        click.echo(line)
    sys.exit(3 if leaked else 0)


@main.command()
def demo() -> None:
    """Run the demo: lab scenario 1 (netfilter on both ends, sample attestation)
    in three namespaces, a real HTTP request, the verdict, /flows and a packet
    capture proving the wire carries only TLS; then clean up. Needs root."""
    from tng_nfq.demo import run_demo

    sys.exit(run_demo())


from tng_nfq.lab.cli import lab  # noqa: E402  (the `tng-nfq lab` group)
main.add_command(lab)

if __name__ == "__main__":
    main()
