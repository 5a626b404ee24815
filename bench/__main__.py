"""python -m bench: loopback benchmarks through direct / stunnel / upstream-tng / tng_nfq.

Suites: `throughput` (iperf3 bulk TCP) and `connrate` (new connections per
second with a short request/response, attested and no_ra). Everything (load
generators, servers, both ends of every tunnel, the sample AA/AS) runs inside
one fresh network namespace with only a loopback interface; the namespace and
every process are removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tng_nfq.lab.netns import Lab, existing_namespaces

from . import CONNRATE_HEADLINES, DEFAULT_SUITES, PEER_NAMES, SUITES
from . import connrate
from . import encap as encapsuite
from . import netfilter as nfsuite
from .measure import Sample, first_line, foreign_processes, run_iperf_client, schedule
from .peers import PEERS, Context, IperfServer, PeerError, Ports, venv_tool
from .report import (
    GBIT,
    build_connrate_results,
    build_results,
    format_connrate_table,
    format_table,
    plot_connrate,
    plot_throughput,
    write_json,
)

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
# throughput alone keeps its longer runs; with both suites the default stays near 3 minutes
DEFAULTS = {"reps": 3, "duration": 5.0}
DEFAULTS_WITH_CONNRATE = {"reps": 3, "duration": 4.0}
QUICK = {"reps": 2, "duration": 3.0}
PEER_START_S = {"direct": 0.0, "stunnel": 0.3, "upstream-tng": 1.5, "tng_nfq": 1.2}  # rough, for the estimate


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return [kind(t) for t in items]
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Bulk TCP throughput (iperf3) and connection rate (short request/response per "
                    "connection, attested and no_ra) through direct loopback, stunnel, upstream TNG "
                    "and tng_nfq, side by side, inside a private network namespace. Needs root.")
    ap.add_argument("--suites", type=_csv(str), default=None,
                    help=f"comma-separated subset of {','.join(SUITES)} (default: {','.join(DEFAULT_SUITES)}; "
                         "netfilter only when named)")
    ap.add_argument("--suite", dest="suites", type=_csv(str), help="same as --suites")
    ap.add_argument("--peers", type=_csv(str), default=list(PEER_NAMES),
                    help=f"comma-separated subset of {','.join(PEER_NAMES)} (default: all; connrate "
                         "runs the attest and no_ra variants of each tng, and has no stunnel)")
    ap.add_argument("--streams", type=_csv(int), default=[1, 8],
                    help="throughput: comma-separated parallel stream counts (iperf3 -P), default 1,8")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"repetitions of every test, both suites (default {DEFAULTS['reps']}, "
                         f"--quick {QUICK['reps']})")
    ap.add_argument("--duration", type=float, default=None,
                    help=f"throughput: seconds per iperf3 run (default {DEFAULTS['duration']:g} alone, "
                         f"{DEFAULTS_WITH_CONNRATE['duration']:g} with connrate, --quick {QUICK['duration']:g})")
    ap.add_argument("--connrate-duration", type=float, default=None,
                    help=f"connrate: seconds per timed load run (default {connrate.DEFAULTS['duration']:g}, "
                         f"--quick {connrate.QUICK['duration']:g})")
    ap.add_argument("--concurrency", type=int, default=connrate.DEFAULTS["concurrency"],
                    help="connrate: concurrent client connections (worker threads) of the load generator "
                         f"(default {connrate.DEFAULTS['concurrency']})")
    ap.add_argument("--tng-nfq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the tng-nfq processes only, repeatable (what-if "
                         "experiments, e.g. OPENSSL_CONF=groups.cnf or MALLOC_ARENA_MAX=2); recorded in results")
    ap.add_argument("--tng-nfq-from", metavar="GIT_REF", default=None,
                    help="run tng-nfq (gateways and dev AA/AS) from this commit (e.g. HEAD), exported to a "
                         "temp dir and put first on PYTHONPATH, instead of the working tree that other "
                         "people may be editing meanwhile")
    ap.add_argument("--encap-size-mb", type=float, default=None,
                    help=f"encap: MiB per download and per upload (default {encapsuite.DEFAULTS['size_mb']}, "
                         f"--quick {encapsuite.QUICK['size_mb']})")
    ap.add_argument("--encap-rate-duration", type=float, default=None,
                    help=f"encap: seconds of keep-alive requests per rate run (default "
                         f"{encapsuite.DEFAULTS['rate_duration']:g}, --quick {encapsuite.QUICK['rate_duration']:g})")
    ap.add_argument("--quick", action="store_true",
                    help="short run (about 1.4 minutes with both suites): fewer repetitions, shorter runs")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default bench/results/<UTC timestamp>/)")
    args = ap.parse_args(argv)
    if args.suites is None:
        args.suites = list(DEFAULT_SUITES)
    bad = [s for s in args.suites if s not in SUITES]
    if bad or len(set(args.suites)) != len(args.suites):
        ap.error(f"--suites: choose distinct names from {', '.join(SUITES)}")
    args.suites = [s for s in SUITES if s in args.suites]  # fixed order: throughput first
    if args.quick:
        preset = QUICK
    elif "connrate" in args.suites:
        preset = DEFAULTS_WITH_CONNRATE
    else:
        preset = DEFAULTS
    if args.reps is None:
        args.reps = preset["reps"]
    nf_preset = nfsuite.QUICK if args.quick else nfsuite.DEFAULTS
    args.nf_duration = args.duration if args.duration is not None else nf_preset["duration"]
    args.nf_connrate_duration = (args.connrate_duration if args.connrate_duration is not None
                                 else nf_preset["connrate_duration"])
    args.nf_syn_duration = nf_preset["syn_duration"]
    enc_preset = encapsuite.QUICK if args.quick else encapsuite.DEFAULTS
    if args.encap_size_mb is None:
        args.encap_size_mb = enc_preset["size_mb"]
    if args.encap_rate_duration is None:
        args.encap_rate_duration = enc_preset["rate_duration"]
    if args.duration is None:
        args.duration = preset["duration"]
    if args.connrate_duration is None:
        args.connrate_duration = (connrate.QUICK if args.quick else connrate.DEFAULTS)["duration"]
    args.connrate_reps = args.reps
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEER_NAMES)}")
    if len(set(args.peers)) != len(args.peers):
        ap.error("--peers lists a peer twice")
    if any(s < 1 or s > 128 for s in args.streams) or len(set(args.streams)) != len(args.streams):
        ap.error("--streams must be distinct integers between 1 and 128")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if not 1 <= args.duration <= 600:
        ap.error("--duration must be between 1 and 600 seconds")
    args.nfq_env = {}
    for item in args.tng_nfq_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--tng-nfq-env wants KEY=VALUE, got {item!r}")
        args.nfq_env[key] = value
    if not 0.5 <= args.connrate_duration <= 600:
        ap.error("--connrate-duration must be between 0.5 and 600 seconds")
    if not 1 <= args.concurrency <= 512:
        ap.error("--concurrency must be between 1 and 512")
    if not 1 <= args.encap_size_mb <= 4096 or not 0.5 <= args.encap_rate_duration <= 600:
        ap.error("--encap-size-mb must be 1..4096 and --encap-rate-duration 0.5..600")
    if "encap" in args.suites and not encapsuite.encap_peers(args.peers):
        ap.error("encap has no peer among --peers (it runs direct, upstream-tng and tng_nfq)")
    if "connrate" in args.suites and not connrate.connrate_peers(args.peers):
        ap.error("connrate has no peer among --peers (it runs direct, upstream-tng and tng_nfq)")
    return args


def estimate_seconds(args) -> float:
    """A rough duration of the whole run, printed at the start."""
    total = 0.0
    if "throughput" in args.suites:
        per_rep = sum(PEER_START_S.get(p, 1.0) + len(args.streams) * (args.duration + 0.7) for p in args.peers)
        total += args.reps * per_rep
    if "connrate" in args.suites:
        cr = connrate.connrate_peers(args.peers)
        per_rep = sum(PEER_START_S.get(connrate.base_peer(p), 1.0) + args.connrate_duration + 0.6 for p in cr)
        total += 2.0 + args.reps * per_rep
    if "netfilter" in args.suites:
        tp = sum(2 * 1.5 * (p != "direct") + len(args.streams) * (args.nf_duration + 0.7) for p in nfsuite.TP_PEERS)
        cr = sum(2 * 1.5 * (p != "direct") + args.nf_connrate_duration + 1.5 for p in nfsuite.CR_PEERS)
        total += 3.0 + args.reps * (tp + cr + 2.0 + args.nf_syn_duration + 1.0)
    if "encap" in args.suites:
        # start + rate window + ~1 s per 128 MiB each way through a tunnel
        per_peer = 2.0 + args.encap_rate_duration + 2 * args.encap_size_mb / 128
        total += 2.0 + args.reps * per_peer * len(encapsuite.encap_peers(args.peers))
    return total


def machine_info() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tng = venv_tool("tng")
    tng_full = ""
    if tng:
        try:
            tng_full = subprocess.run([tng, "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            tng_full = f"unavailable ({exc})"
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    stunnel_version = "not installed"
    if stunnel:
        out = subprocess.run([stunnel, "-version"], capture_output=True, text=True, timeout=10)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("stunnel ")]
        stunnel_version = lines[0].strip() if lines else "unknown"
    try:
        import tng_nfq
        nfq_version = tng_nfq.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        nfq_version = f"unavailable ({exc})"
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    # the peers run the working tree (editable install): say when it differs from the commit
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "tng_nfq"],
                           capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tng_version": tng_full.splitlines()[0] if tng_full else "not found",
        "tng_version_full": tng_full,
        "tng_nfq_version": nfq_version,
        "iperf3_version": first_line(["iperf3", "--version"]),
        "stunnel_version": stunnel_version,
        "openssl_version": first_line(["openssl", "version"]),
        "git_commit": commit,
        "tng_nfq_uncommitted_changes": [ln[3:] for ln in dirty],
        "loadavg_start": list(os.getloadavg()),
    }


def export_tree(ref: str, dest: Path) -> dict:
    """`git archive REF tng_nfq` into dest: a fixed copy of the package to run the peers from."""
    repo = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                         capture_output=True, text=True)
    if rev.returncode != 0:
        raise RuntimeError(f"--tng-nfq-from {ref}: not a commit ({rev.stderr.strip()})")
    commit = rev.stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, "tng_nfq"],
                             capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return {"ref": ref, "commit": commit}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _say(msg: str) -> None:
    print(msg, flush=True)


EXTERNAL_SIGNAL = "interrupt - the client has terminated"


class Runner:
    """Measures one peer in one repetition; keeps samples, errors and the retry policy.

    Policy: a failed iperf3 run is recorded as an error, then whatever died (the
    peer, the iperf3 server) is restarted and the run is retried once; a retry
    that succeeds counts as a sample (the peer's status stays "partial"). A peer
    that cannot start is not tried again in later repetitions.
    """

    def __init__(self, args, ns, ctx, server, samples, errors, peer_info):
        self.args, self.ns, self.ctx, self.server = args, ns, ctx, server
        self.samples, self.errors, self.peer_info = samples, errors, peer_info
        self.disabled: set[str] = set()
        self.retries = 0
        self.foreign: set[str] = set()

    def _tag(self, rep: int, name: str, streams: int | None = None) -> str:
        tag = f"[rep {rep + 1}/{self.args.reps}] {name:<13}"
        return tag if streams is None else f"{tag} {streams:>2} stream(s):"

    def _start(self, peer, rep: int, name: str) -> int | None:
        try:
            port = peer.start(self.ns, self.ctx.ports.take(), self.server.port)
        except Exception as exc:  # noqa: BLE001 - any start failure disables the peer
            peer.stop()
            self.errors[name].append(f"rep {rep + 1}: start failed: {exc}")
            self.disabled.add(name)
            _say(f"{self._tag(rep, name)} FAILED to start: {str(exc).splitlines()[0]}")
            return None
        self.peer_info[name]["commands"] = peer.commands
        return port

    def measure_peer(self, rep: int, name: str) -> None:
        if name in self.disabled:
            return
        self.ctx.rep = rep
        peer = PEERS[name](self.ctx)
        try:
            port = self._start(peer, rep, name)
            if port is None:
                return
            for s in self.args.streams:
                for attempt in (1, 2):
                    self.foreign.update(foreign_processes(self.ns.name))
                    sample = self._measure_once(peer, port, s)
                    if sample.bps is not None:
                        self.samples[name][s].append(sample.bps)
                        _say(f"{self._tag(rep, name, s)} {sample.bps / GBIT:7.2f} Gbit/s"
                             + (" (retry)" if attempt == 2 else ""))
                        break
                    reason = sample.error or "unknown error"
                    if EXTERNAL_SIGNAL in reason:
                        reason += " (the iperf3 client was signalled by something outside the harness)"
                    try:
                        peer.check()
                    except PeerError as exc:
                        reason += f"; {exc}"
                    self.errors[name].append(f"rep {rep + 1}, {s} streams, attempt {attempt}: {reason}")
                    _say(f"{self._tag(rep, name, s)} FAILED: {reason.splitlines()[0]}"
                         + ("; retrying once" if attempt == 1 else ""))
                    self.server.restart()  # never let a half-finished test wedge the next one
                    if attempt == 2:
                        break
                    try:
                        peer.check()
                    except PeerError:
                        peer.stop()
                        self.retries += 1
                        port = self._start(peer, rep, name)
                        if port is None:
                            return
        finally:
            peer.stop()

    def _measure_once(self, peer, port: int, streams: int) -> Sample:
        try:
            peer.check()
        except PeerError as exc:
            return Sample(None, f"not measured: {exc}")
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.server.restart()
        sample = run_iperf_client(self.ns, port, self.args.duration, streams)
        if sample.error and "busy" in sample.error:
            time.sleep(1.0)  # a previous test is still winding down on the server
            sample = run_iperf_client(self.ns, port, self.args.duration, streams)
        return sample


CONNRATE_DESCRIPTIONS = {
    "direct": "load generator straight to the request/response backend, no tunnel",
    "upstream-tng:attest": "upstream tng 2.12: ingress verify (dev AS, REST, policy default) -> egress attest (dev AA)",
    "tng_nfq:attest": "tng-nfq: ingress verify (dev AS, REST, policy default) -> egress attest (dev AA)",
    "upstream-tng:no_ra": "upstream tng 2.12: ingress -> egress, no_ra",
    "tng_nfq:no_ra": "tng-nfq: ingress -> egress, no_ra",
}


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench: needs root (it creates a private network namespace); "
              "run `sudo .venv/bin/python -m bench` or `sudo make bench`", file=sys.stderr)
        return 2
    tools = ["ip"] + (["iperf3"] if {"throughput", "netfilter"} & set(args.suites) else [])
    for tool in tools:
        if not shutil.which(tool):
            print(f"bench: `{tool}` not found; run scripts/install-system-deps.sh", file=sys.stderr)
            return 2

    started = dt.datetime.now(dt.timezone.utc)
    out = args.out or RESULTS_ROOT / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    logdir = out / "logs"
    logdir.mkdir(exist_ok=True)
    machine = machine_info()
    do_tp = "throughput" in args.suites
    do_cr = "connrate" in args.suites
    do_nf = "netfilter" in args.suites
    do_enc = "encap" in args.suites
    enc_peers = encapsuite.encap_peers(args.peers) if do_enc else []
    enc_state = None
    tp_peers = args.peers if do_tp else []
    cr_peers = connrate.connrate_peers(args.peers) if do_cr else []
    plan = schedule(tp_peers, args.reps) if do_tp else []
    what = []
    if do_tp:
        what.append(f"throughput: {len(tp_peers)} peers x streams {args.streams} x {args.reps} reps x "
                    f"{args.duration:g}s")
    if do_cr:
        what.append(f"connrate: {len(cr_peers)} peers x {args.reps} reps x {args.connrate_duration:g}s, "
                    f"{args.concurrency} workers")
    if do_nf:
        what.append(f"netfilter: throughput {len(nfsuite.TP_PEERS)} peers x streams {args.streams} x "
                    f"{args.nf_duration:g}s, connrate {len(nfsuite.CR_PEERS)} peers x {args.nf_connrate_duration:g}s, "
                    f"synrate {args.nf_syn_duration:g}s, {args.reps} reps")
    if do_enc:
        what.append(f"encap: {len(enc_peers)} peers x {args.reps} reps, {args.encap_size_mb:g} MiB down/up, "
                    f"{args.encap_rate_duration:g}s keep-alive rate")
    _say(f"bench: {'; '.join(what)} (about {estimate_seconds(args) / 60:.1f} min); output in {out}")
    if args.nfq_env:
        _say(f"bench: tng-nfq runs with extra environment {args.nfq_env} (an experiment, not the default)")
    if machine["loadavg_start"][0] > 0.5:
        _say(f"bench: note: load average is {machine['loadavg_start'][0]:.2f} before starting; "
             "other work on this machine skews the numbers")

    samples = {p: {s: [] for s in args.streams} for p in tp_peers}
    errors: dict[str, list[str]] = {p: [] for p in tp_peers}
    peer_info: dict[str, dict] = {p: {"description": PEERS[p].description} for p in tp_peers}
    runner = None
    cr_state: dict | None = None
    nf_state = None
    nf_error = None
    interrupted = False
    aborted = None
    ns_name = None
    server = None
    timings: dict[str, float] = {}

    # SIGTERM/SIGHUP clean up like Ctrl-C does (unless ignored on purpose, e.g. under nohup)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if old[sig] is not signal.SIG_IGN:
            signal.signal(sig, _raise_interrupt)
    lab = Lab("bench")
    tmp = tempfile.TemporaryDirectory(prefix="tngnfq-bench-")
    if args.tng_nfq_from:
        try:
            source = export_tree(args.tng_nfq_from, Path(tmp.name) / "src")
        except RuntimeError as exc:
            tmp.cleanup()
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        args.nfq_env["PYTHONPATH"] = str(Path(tmp.name) / "src")
        machine["tng_nfq_from"] = source
        _say(f"bench: tng-nfq runs from {args.tng_nfq_from} = {source['commit'][:12]} (exported), "
             "not the working tree")
    t0 = time.monotonic()
    try:
        lab.__enter__()
        ns = lab.add("solo")
        ns_name = ns.name
        ports = Ports()
        if do_tp:
            ctx = Context(lab=lab, workdir=Path(tmp.name), logdir=logdir, ports=ports, nfq_env=args.nfq_env)
            server = IperfServer(ctx, ns, ports.take())
            server.start()
            runner = Runner(args, ns, ctx, server, samples, errors, peer_info)
            for rep, name in plan:
                runner.measure_peer(rep, name)
            server.stop()
            timings["throughput_s"] = round(time.monotonic() - t0, 1)
        if do_cr:
            t1 = time.monotonic()
            crdir = logdir / "connrate"
            crdir.mkdir(exist_ok=True)
            crwork = Path(tmp.name) / "connrate"
            crwork.mkdir(exist_ok=True)
            cr_ctx = Context(lab=lab, workdir=crwork, logdir=crdir, ports=ports, nfq_env=args.nfq_env)
            cr_state = connrate.run_suite(args, lab, ns, cr_ctx, cr_peers)
            timings["connrate_s"] = round(time.monotonic() - t1, 1)
        if do_nf:
            t2 = time.monotonic()
            nf_state = nfsuite.Suite(args, lab, logdir / "netfilter", args.nfq_env)
            try:
                nfsuite.run_suite(args, lab, logdir / "netfilter", args.nfq_env, suite=nf_state)
            except Exception as exc:  # noqa: BLE001 - keep the other suites' results
                nf_error = f"{type(exc).__name__}: {exc}"
                _say(f"bench: netfilter suite aborted: {nf_error}")
            timings["netfilter_s"] = round(time.monotonic() - t2, 1)
        if do_enc:
            t3 = time.monotonic()
            encdir = logdir / "encap"
            encdir.mkdir(exist_ok=True)
            encwork = Path(tmp.name) / "encap"
            encwork.mkdir(exist_ok=True)
            enc_ctx = Context(lab=lab, workdir=encwork, logdir=encdir, ports=ports, nfq_env=args.nfq_env)
            enc_state = encapsuite.Suite(args, lab, ns, enc_ctx, enc_peers)
            enc_state.run()
            timings["encap_s"] = round(time.monotonic() - t3, 1)
    except KeyboardInterrupt:
        interrupted = True
        _say("bench: interrupted, cleaning up")
    except Exception as exc:  # noqa: BLE001 - still clean up and write what we have
        aborted = f"{type(exc).__name__}: {exc}"
        _say(f"bench: aborted: {aborted}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must run to the end
        try:
            lab.close()
            tmp.cleanup()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    ours = {ns_name} | ({nf_state.client.name, nf_state.server.name} if nf_state else set())
    leftover = [n for n in existing_namespaces() if n in ours]
    finished = dt.datetime.now(dt.timezone.utc)
    machine["loadavg_end"] = list(os.getloadavg())
    params = {"suites": args.suites, "tng_nfq_env": args.nfq_env, "peers": tp_peers, "streams": args.streams,
              "reps": args.reps,
              "duration": args.duration, "quick": args.quick,
              "iperf3_client": "iperf3 -c 127.0.0.1 -p PORT -t DURATION -P STREAMS -J",
              "order": [f"rep{r + 1}:{p}" for r, p in plan]}
    results = build_results(peers=tp_peers, streams=args.streams, reps=args.reps,
                            samples=samples, errors=errors, machine=machine, params=params,
                            extra_peer_info=peer_info)
    results["schema"] = 2
    results["suites"] = args.suites
    if do_cr:
        cr_runner = cr_state["runner"] if cr_state else None
        info = {p: {"description": CONNRATE_DESCRIPTIONS.get(p, "")} for p in cr_peers}
        for p in cr_peers:
            if cr_runner:
                info[p].update(cr_runner.info.get(p, {}))
        cr_params = {"peers": cr_peers, "reps": args.reps, "duration": args.connrate_duration,
                     "concurrency": args.concurrency, "request_bytes": connrate.REQUEST_SIZE,
                     "reply_bytes": connrate.REQUEST_SIZE,
                     "exchange": "connect, send request, read reply, read the server's EOF, close "
                                 "(the backend closes first)",
                     "load_generator": "bench/loadgen.py run (Python threads, blocking sockets)",
                     "order": [f"rep{r + 1}:{p}" for r, p in (cr_state or {}).get("plan", [])]}
        results["connrate"] = build_connrate_results(
            peers=cr_peers, reps=args.reps,
            samples=cr_runner.samples if cr_runner else {},
            errors=cr_runner.errors if cr_runner else {p: [] for p in cr_peers},
            headlines={k: v for k, v in CONNRATE_HEADLINES.items() if v[0] in cr_peers and v[1] in cr_peers},
            params=cr_params, extra_peer_info=info)
    if do_nf:
        results["netfilter"] = nfsuite.summarize(nf_state) if nf_state else {}
        results["netfilter"]["aborted"] = nf_error
        results["netfilter"]["params"] = {
            "reps": args.reps, "streams": args.streams, "duration": args.nf_duration,
            "connrate_duration": args.nf_connrate_duration, "concurrency": args.concurrency,
            "syn_duration": args.nf_syn_duration,
            "namespaces": "client 198.18.0.1/24 <-veth-> server 198.18.0.2/24 (lab addresses inside "
                          "the benchmark's own namespaces)"}
    if do_enc:
        results["encap"] = enc_state.results() if enc_state else {}
    foreign = set(runner.foreign) if runner else set()
    if enc_state:
        foreign |= enc_state.foreign
    if nf_state:
        foreign |= nf_state.foreign
    if cr_state:
        foreign |= cr_state["runner"].foreign
    results["run"] = {"started_utc": started.isoformat(), "finished_utc": finished.isoformat(),
                      "elapsed_s": round(time.monotonic() - t0, 1), **timings, "interrupted": interrupted,
                      "aborted": aborted, "namespace": ns_name,
                      "namespace_removed": ns_name is not None and not leftover,
                      "iperf3_server_restarts": server.restarts if server else 0,
                      "peer_restarts": runner.retries if runner else 0,
                      "connrate_peer_restarts": cr_state["runner"].retries if cr_state else 0,
                      "connrate_backend_restarts": cr_state.get("backend_restarts", 0) if cr_state else 0,
                      "foreign_processes_seen": sorted(foreign),
                      "logs": "logs/"}
    write_json(results, out / "results.json")
    charts = []
    for enabled, plot, name in ((do_tp, plot_throughput, "throughput.png"),
                                (do_cr, plot_connrate, "connrate.png"),
                                (do_nf and nf_state is not None, _plot_netfilter, "netfilter.png")):
        if not enabled:
            continue
        try:
            plot(results, out / name)
            charts.append(str(out / name))
        except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
            _say(f"bench: {name} not written: {exc}")
    tables = []
    if do_tp:
        tables.append(format_table(results))
    if do_cr:
        tables.append(format_connrate_table(results["connrate"]))
    if do_nf and nf_state is not None:
        tables.append(nfsuite.format_table(results["netfilter"]))
    if do_enc and results.get("encap", {}).get("peers"):
        tables.append(encapsuite.format_table(results["encap"]))
    summary = "\n\n".join(tables)
    (out / "summary.txt").write_text(summary + "\n")

    _say("")
    if interrupted or aborted:
        _say("bench: PARTIAL RESULTS (run " + ("interrupted" if interrupted else "aborted") + ")")
    _say(summary)
    _say("")
    _say(f"load average: {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end")
    _say(f"results: {out / 'results.json'}" + (f", charts: {', '.join(charts)}" if charts else ""))
    if foreign:
        _say("bench: note: other benchmark-like processes ran outside the namespace meanwhile "
             "(they share the CPUs): " + "; ".join(sorted(foreign)[:5]))
    if leftover:
        _say(f"bench: WARNING namespace {ns_name} still exists")
    if interrupted:
        return 130
    if aborted or leftover:
        return 1
    return 0


def _plot_netfilter(results, path) -> None:
    nfsuite.plot(results["netfilter"], path)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
