"""python -m bench: loopback TCP throughput through direct / stunnel / upstream-tng / tng_nfq.

Everything (iperf3 server and client, both ends of every tunnel) runs inside one
fresh network namespace with only a loopback interface; the namespace and
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

from . import PEER_NAMES
from .measure import first_line, run_iperf_client, schedule
from .peers import PEERS, Context, IperfServer, PeerError, Ports, venv_tool
from .report import GBIT, build_results, format_table, plot_throughput, write_json

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
DEFAULTS = {"reps": 3, "duration": 5.0}
QUICK = {"reps": 2, "duration": 3.0}


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
        description="Bulk TCP throughput (iperf3) through direct loopback, stunnel, upstream TNG "
                    "and tng_nfq, side by side, inside a private network namespace. Needs root.")
    ap.add_argument("--peers", type=_csv(str), default=list(PEER_NAMES),
                    help=f"comma-separated subset of {','.join(PEER_NAMES)} (default: all)")
    ap.add_argument("--streams", type=_csv(int), default=[1, 8],
                    help="comma-separated parallel stream counts (iperf3 -P), default 1,8")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"repetitions per peer and stream count (default {DEFAULTS['reps']}, "
                         f"--quick {QUICK['reps']})")
    ap.add_argument("--duration", type=float, default=None,
                    help=f"seconds per iperf3 run (default {DEFAULTS['duration']:g}, "
                         f"--quick {QUICK['duration']:g})")
    ap.add_argument("--quick", action="store_true",
                    help="short run (about a minute): fewer repetitions, shorter runs")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default bench/results/<UTC timestamp>/)")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    if args.reps is None:
        args.reps = preset["reps"]
    if args.duration is None:
        args.duration = preset["duration"]
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
    return args


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
        "loadavg_start": list(os.getloadavg()),
    }


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench: needs root (it creates a private network namespace); "
              "run `sudo .venv/bin/python -m bench` or `sudo make bench`", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3"):
        if not shutil.which(tool):
            print(f"bench: `{tool}` not found; run scripts/install-system-deps.sh", file=sys.stderr)
            return 2

    started = dt.datetime.now(dt.timezone.utc)
    out = args.out or RESULTS_ROOT / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    logdir = out / "logs"
    logdir.mkdir(exist_ok=True)
    machine = machine_info()
    plan = schedule(args.peers, args.reps)
    est = len(plan) * len(args.streams) * (args.duration + 0.7)
    _say(f"bench: {len(args.peers)} peers x streams {args.streams} x {args.reps} reps x "
         f"{args.duration:g}s (about {est / 60:.1f} min); output in {out}")
    if machine["loadavg_start"][0] > 0.5:
        _say(f"bench: note: load average is {machine['loadavg_start'][0]:.2f} before starting; "
             "other work on this machine skews the numbers")

    samples = {p: {s: [] for s in args.streams} for p in args.peers}
    errors: dict[str, list[str]] = {p: [] for p in args.peers}
    peer_info: dict[str, dict] = {p: {"description": PEERS[p].description} for p in args.peers}
    disabled: set[str] = set()
    interrupted = False
    aborted = None
    ns_name = None
    server_restarts = 0

    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    lab = Lab("bench")
    tmp = tempfile.TemporaryDirectory(prefix="tngnfq-bench-")
    t0 = time.monotonic()
    try:
        lab.__enter__()
        ns = lab.add("solo")
        ns_name = ns.name
        ports = Ports()
        ctx = Context(lab=lab, workdir=Path(tmp.name), logdir=logdir, ports=ports)
        server = IperfServer(ctx, ns, ports.take())
        server.start()
        for rep, name in plan:
            if name in disabled:
                continue
            ctx.rep = rep
            peer = PEERS[name](ctx)
            try:
                try:
                    port = peer.start(ns, ports.take(), server.port)
                except Exception as exc:  # noqa: BLE001 - any start failure disables the peer
                    errors[name].append(f"rep {rep + 1}: start failed: {exc}")
                    disabled.add(name)
                    _say(f"[rep {rep + 1}/{args.reps}] {name}: FAILED to start: "
                         f"{str(exc).splitlines()[0]}")
                    continue
                peer_info[name]["commands"] = peer.commands
                for s in args.streams:
                    try:
                        peer.check()
                    except PeerError as exc:
                        errors[name].append(f"rep {rep + 1}, {s} streams: not measured: {exc}")
                        _say(f"[rep {rep + 1}/{args.reps}] {name}: died: {str(exc).splitlines()[0]}")
                        break
                    sample = run_iperf_client(ns, port, args.duration, s)
                    if sample.error and "busy" in sample.error:
                        time.sleep(1.0)  # a previous test is still winding down on the server
                        sample = run_iperf_client(ns, port, args.duration, s)
                    if sample.bps is not None:
                        samples[name][s].append(sample.bps)
                        _say(f"[rep {rep + 1}/{args.reps}] {name:<13} {s:>2} stream(s): "
                             f"{sample.bps / GBIT:7.2f} Gbit/s")
                        continue
                    reason = sample.error or "unknown error"
                    try:
                        peer.check()
                    except PeerError as exc:
                        reason += f"; {exc}"
                    errors[name].append(f"rep {rep + 1}, {s} streams: {reason}")
                    _say(f"[rep {rep + 1}/{args.reps}] {name:<13} {s:>2} stream(s): "
                         f"FAILED: {reason.splitlines()[0]}")
                    server.restart()  # never let a half-finished test wedge the next one
            finally:
                peer.stop()
        server_restarts = server.restarts
        server.stop()
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
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in old.items():
                signal.signal(sig, handler)

    leftover = [n for n in existing_namespaces() if n == ns_name]
    finished = dt.datetime.now(dt.timezone.utc)
    machine["loadavg_end"] = list(os.getloadavg())
    params = {"peers": args.peers, "streams": args.streams, "reps": args.reps,
              "duration": args.duration, "quick": args.quick,
              "iperf3_client": "iperf3 -c 127.0.0.1 -p PORT -t DURATION -P STREAMS -J",
              "order": [f"rep{r + 1}:{p}" for r, p in plan]}
    results = build_results(peers=args.peers, streams=args.streams, reps=args.reps,
                            samples=samples, errors=errors, machine=machine, params=params,
                            extra_peer_info=peer_info)
    results["run"] = {"started_utc": started.isoformat(), "finished_utc": finished.isoformat(),
                      "elapsed_s": round(time.monotonic() - t0, 1), "interrupted": interrupted,
                      "aborted": aborted, "namespace": ns_name,
                      "namespace_removed": ns_name is not None and not leftover,
                      "iperf3_server_restarts": server_restarts, "logs": "logs/"}
    write_json(results, out / "results.json")
    try:
        plot_throughput(results, out / "throughput.png")
        chart = out / "throughput.png"
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        chart = None
        _say(f"bench: chart not written: {exc}")
    (out / "summary.txt").write_text(format_table(results) + "\n")

    _say("")
    _say(format_table(results))
    _say("")
    _say(f"results: {out / 'results.json'}" + (f", chart: {chart}" if chart else ""))
    if leftover:
        _say(f"bench: WARNING namespace {ns_name} still exists")
    if interrupted:
        return 130
    if aborted or leftover:
        return 1
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
