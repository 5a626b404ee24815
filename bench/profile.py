"""Profile a tng_nfq tunnel pair under benchmark load with py-spy.

    .venv/bin/python -m bench.profile --load connrate [--ra attest|no_ra] [--duration 10]
    .venv/bin/python -m bench.profile --load throughput [--streams 8] [--duration 10]

Same private namespace, same peers and load as `python -m bench` (the
connrate load generator or iperf3), one run. py-spy samples the ingress and
the egress process twice at once (both `--nonblocking`, so the tunnel is
never paused): every thread that is on a CPU ("active"), and only the thread
holding the GIL ("gil"). Results in DIR (default bench/results/profile-<ts>/):
flame graphs (*.svg), raw collapsed stacks (*.txt) and summary.txt/json with
the share of samples per category, per top function and per tng_nfq line.

Reading it: "active" samples / rate = CPU seconds in Python-visible code
(C code called from Python counts toward its caller, e.g. OpenSSL inside
`handshake`); "gil" samples / rate = seconds the GIL was held. When the
GIL is held nearly all of the sampled time, threads mostly wait for each
other: more threads in one process cannot help.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import linecache
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tng_nfq.lab.netns import Lab, stop_process

from . import connrate
from .measure import parse_iperf_json
from .peers import Context, IperfServer, Ports, TngNfq, venv_tool

RESULTS_ROOT = Path(__file__).resolve().parent / "results"

# (category, regex on one frame "func (file:line)"); the first category found
# anywhere in a sample's stack, in this order, takes the sample.
_M = r"^(?:\w+\.)?"  # py-spy writes methods as Class.method
CATEGORIES: list[tuple[str, str]] = [
    ("thread creation (Thread.start)", _M + r"start \(threading\.py"),
    ("access log / structlog", _M + r"access \(tng_nfq/tunnel/endpoint\.py|\(structlog/"),
    ("peer check: verify + verdict cache", _M + r"check_peer \(tng_nfq/tunnel/security\.py"),
    ("TLS handshake", _M + r"handshake \(tng_nfq/tunnel/channel\.py"),
    ("TLS connection object (SSL.Connection)", _M + r"(__init__ \(tng_nfq/tunnel/channel\.py|new_channel \()"),
    ("dial (socket.create_connection)", _M + r"create_connection \(socket\.py"),
    ("close sockets / TLS close_notify", _M + r"(_close \(tng_nfq/tunnel/relay\.py|close_write \(|failed \()"),
    ("relay: buffers per connection", "__RELAY_ALLOC__"),
    ("relay: decrypt path (TLS -> plain)", _M + r"(_tls_to_plain|receive) \(tng_nfq/tunnel/(relay|channel)\.py"),
    ("relay: encrypt path (plain -> TLS)", _M + r"(_plain_to_tls|send) \(tng_nfq/tunnel/(relay|channel)\.py"),
    ("relay: start/join helper thread", _M + r"run \(tng_nfq/tunnel/relay\.py"),
    ("accept loop", _M + r"_accept_loop \("),
    ("connection setup (other, in handle)", _M + r"handle \(tng_nfq/tunnel/(ingress|egress)/"),
    ("thread bootstrap/teardown", _M + r"_bootstrap"),
]

# a sampled thread with no Python frame: a thread starting (before its first
# frame) or exiting (thread state teardown); with --gil it holds the GIL meanwhile
NO_PYTHON_FRAME = "thread start/exit in C (no Python frame)"

FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _source_line(file: str, line: int) -> str:
    """Source text of a frame, looked up in the installed tng_nfq package or the stdlib."""
    import tng_nfq

    candidates = []
    if file.startswith("tng_nfq/"):
        candidates.append(Path(tng_nfq.__file__).parent.parent / file)
    else:
        candidates.append(Path(os.__file__).parent / file)
    for cand in candidates:
        text = linecache.getline(str(cand), line)
        if text:
            return text.strip()
    return ""


def _is_relay_alloc(frame: str) -> bool:
    m = FRAME_RE.match(frame)
    if not m or not m["line"] or not m["file"].endswith("tunnel/relay.py"):
        return False
    src = _source_line(m["file"], int(m["line"]))
    return any(k in src for k in ("bytearray(", "ciphertext_buffer(", "from_buffer(", "memoryview("))


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy raw output: one 'frame;frame;...;leaf count' per line, root first."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def categorize(frames: list[str]) -> str:
    for name, pattern in CATEGORIES:
        if pattern == "__RELAY_ALLOC__":
            if any(_is_relay_alloc(f) for f in frames):
                return name
            continue
        rx = re.compile(pattern)
        if any(rx.search(f) for f in frames):
            return name
    return "other"


def summarize(stacks: list[tuple[list[str], int]], rate: float) -> dict:
    total = sum(c for _, c in stacks)
    cats: Counter = Counter()
    leaf: Counter = Counter()
    inclusive: Counter = Counter()
    lines: Counter = Counter()
    for frames, count in stacks:
        cats[categorize(frames) if frames != [""] else NO_PYTHON_FRAME] += count
        leaf[_strip_line(frames[-1])] += count
        for f in {_strip_line(f) for f in frames}:
            inclusive[f] += count
        own = [f for f in frames if "tng_nfq/" in f]
        if own:
            lines[own[-1]] += count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "seconds": round(total / rate, 2),
        "categories": [{"name": k, "samples": v, "pct": pct(v)} for k, v in cats.most_common()],
        "top_self": [{"frame": k, "pct": pct(v)} for k, v in leaf.most_common(15)],
        "top_inclusive": [{"frame": k, "pct": pct(v)} for k, v in inclusive.most_common(25)],
        "top_tng_nfq_lines": [{"frame": k, "source": _frame_source(k), "pct": pct(v)}
                              for k, v in lines.most_common(15)],
    }


def _strip_line(frame: str) -> str:
    m = FRAME_RE.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def _frame_source(frame: str) -> str:
    m = FRAME_RE.match(frame)
    return _source_line(m["file"], int(m["line"])) if m and m["line"] else ""


# perf (native, system-wide, kernel call chains; user stacks lack frame pointers, so
# user-space samples are classified by their leaf symbol/library only).
# (category, regex on the joined "sym (dso)" chain, leaf first); first match wins.
PERF_CATEGORIES: list[tuple[str, str]] = [
    ("kernel: page faults (first touch of fresh memory)", r"exc_page_fault"),
    ("kernel: mmap/munmap/madvise (malloc trim, thread stacks)", r"__x64_sys_(munmap|mmap|madvise|mprotect)"),
    ("kernel: thread create/exit (clone, exit)", r"__x64_sys_clone|copy_process|__x64_sys_exit|do_exit|"
                                                 r"__x64_sys_set_robust_list|__x64_sys_rseq"),
    ("kernel: futex (GIL, locks, thread start/join)", r"__x64_sys_futex"),
    ("kernel: TCP/socket syscalls (loopback TCP incl. softirq)",
     r"__x64_sys_(connect|accept4?|sendto|recvfrom|sendmsg|recvmsg|close|shutdown|setsockopt|socket|"
     r"getsockopt|getsockname|getpeername|bind|listen|write|read)\b|tcp_|__sys_"),
    ("kernel: scheduler / other", r"\[kernel\.kallsyms\]"),
    ("OpenSSL (crypto + TLS state machine)", r"_rust\.abi3\.so|libcrypto|libssl|_openssl"),
    ("libc memset/memcpy (zeroing/copying buffers)", r"^__mem(set|move|cpy)"),
    ("libc malloc/free", r"^(_int_malloc|_int_free|malloc|cfree|free|__libc_calloc|calloc|realloc|"
                         r"_int_realloc|malloc_consolidate|unlink_chunk|tcache_|sysmalloc|systrim|"
                         r"heap_trim|arena_get2|_int_memalign)"),
    ("Python interpreter (libpython)", r"libpython|/python3"),
    ("libc other (pthread, locks)", r"libc\.so"),
    ("cffi / _socket / other extension", r"\.so"),
]


def perf_by_process(text: str, pids: dict[str, int]) -> list[tuple[str, int]]:
    """Samples per process (comm/pid) over the whole machine: who else used the CPUs."""
    names = {pid: role for role, pid in pids.items()}
    counts: Counter = Counter()
    for line in text.splitlines():
        if line.strip() and not line.startswith("\t"):
            counts[line.split()[0].split("/")[0]] += 1
    out = []
    for pid, n in counts.most_common():
        label = names.get(int(pid)) if pid.isdigit() else None
        out.append((f"{label} (tng-nfq {pid})" if label else _comm(pid), n))
    return out


def _comm(pid: str) -> str:
    try:
        return f"{Path(f'/proc/{pid}/comm').read_text().strip()} {pid}"
    except OSError:
        return f"pid {pid} (exited)" if pid != "0" else "idle/kernel (pid 0)"


def parse_perf_script(text: str, pids: dict[str, int]) -> dict[str, Counter]:
    """`perf script -F pid,tid,ip,sym,dso` output -> category counts per watched process."""
    by_pid = {pid: role for role, pid in pids.items()}
    out = {role: Counter() for role in pids}
    rx = [(name, re.compile(p)) for name, p in PERF_CATEGORIES]
    role, chain = None, []

    def flush():
        if role is not None:
            joined = "\n".join(chain)
            for name, r in rx:
                if r.search(joined):
                    out[role][name] += 1
                    return
            out[role]["unknown"] += 1

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):  # sample header "PID/TID" (pid right-aligned); frames start with a tab
            flush()
            head = line.split()[0]
            pid = int(head.split("/")[0]) if head.split("/")[0].isdigit() else -1
            role, chain = by_pid.get(pid), []
            continue
        if role is not None:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                chain.append(parts[1])  # "sym+off (dso)"
    flush()
    return out


def format_summary(report: dict) -> str:
    out = [f"load: {report['load']}  achieved: {report['achieved']}",
           f"py-spy: {report['rate']} Hz, {report['duration']} s, --nonblocking; process CPU over the window: "
           + ", ".join(f"{k} {v}" for k, v in report.get("cpu_pct", {}).items())]
    for end in ("ingress", "egress"):
        for mode in ("active", "gil"):
            s = report["ends"].get(end, {}).get(mode)
            if not s:
                continue
            out.append("")
            if mode == "gil":
                what = "GIL held"
            else:  # py-spy cannot tell blocked threads from running ones without pausing the process
                what = "wall clock, all threads (blocked ones too: NOT CPU)"
            out.append(f"== {end} / {mode}: {s['samples']} samples = {s['seconds']} s "
                       f"({100 * s['seconds'] / report['duration']:.0f}% of one core) - {what}")
            for c in s["categories"]:
                out.append(f"  {c['pct']:5.1f}%  {c['name']}")
            if mode == "gil":
                out.append("  top self (leaf) frames:")
                for t in s["top_self"][:10]:
                    out.append(f"    {t['pct']:5.1f}%  {t['frame']}")
                out.append("  innermost tng_nfq line:")
                for t in s["top_tng_nfq_lines"][:10]:
                    out.append(f"    {t['pct']:5.1f}%  {t['frame']}  | {t['source']}")
    if report.get("perf_by_process"):
        out.append("")
        out.append("== perf: CPU per process over the window (% of one core), whole machine:")
        for name, n in report["perf_by_process"]:
            out.append(f"  {100 * n / report['perf_rate_hz'] / report['duration']:5.1f}%  {name}")
    for role, cats in report.get("perf", {}).items():
        total = sum(cats.values())
        out.append("")
        out.append(f"== {role} / perf (native, kernel+user): {total} samples")
        for name, n in sorted(cats.items(), key=lambda kv: -kv[1]):
            out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def _cpu_seconds(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--load", choices=("connrate", "throughput"), required=True)
    ap.add_argument("--ra", choices=("no_ra", "attest"), default="attest", help="connrate only")
    ap.add_argument("--streams", type=int, default=8, help="throughput only: iperf3 -P")
    ap.add_argument("--concurrency", type=int, default=connrate.DEFAULTS["concurrency"])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds sampled")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true",
                    help="flame graphs with native frames (OpenSSL, libc); pauses the process per sample")
    ap.add_argument("--perf", action="store_true",
                    help="also `perf record -a -g` the window and classify native samples per end")
    ap.add_argument("--tng-nfq-from", metavar="GIT_REF", default=None,
                    help="run tng-nfq from this commit instead of the working tree (as python -m bench)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.profile: needs root (private network namespace)", file=sys.stderr)
        return 2
    pyspy = venv_tool("py-spy")
    if not pyspy:
        print("bench.profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    out = args.out or RESULTS_ROOT / ("profile-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    load_desc = (f"connrate {args.ra}, {args.concurrency} workers" if args.load == "connrate"
                 else f"throughput iperf3 -P {args.streams}")
    report: dict = {"load": load_desc, "rate": args.rate, "duration": args.duration, "ends": {},
                    "loadavg_start": list(os.getloadavg())}
    print(f"bench.profile: {load_desc}, {args.duration:g}s of sampling; output in {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tngnfq-prof-") as tmp, Lab("prof") as lab:
        ns = lab.add("solo")
        ctx = Context(lab=lab, workdir=Path(tmp), logdir=out / "logs", ports=Ports())
        if args.tng_nfq_from:
            from .__main__ import export_tree

            report["tng_nfq_from"] = export_tree(args.tng_nfq_from, Path(tmp) / "src")
            ctx.nfq_env["PYTHONPATH"] = str(Path(tmp) / "src")
        infra = server = None
        if args.load == "connrate":
            infra = connrate.Infra(ctx, ns, need_attestation=args.ra == "attest")
            infra.start()
            peer = connrate.make_peer(f"tng_nfq:{args.ra}", ctx, infra)
            port = peer.start(ns, ctx.ports.take(), infra.backend_port)
            load_argv = connrate.loadgen_argv(port, args.concurrency, args.duration + 3, {})
        else:
            server = IperfServer(ctx, ns, ctx.ports.take())
            server.start()
            peer = TngNfq(ctx)
            port = peer.start(ns, ctx.ports.take(), server.port)
            load_argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{args.duration + 3:g}",
                         "-P", str(args.streams), "-J"]
        pids = {p.role: p.proc.pid for p in peer.procs}
        load = ns.popen(load_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # probe/handshakes done, load at full speed
        spies = []
        cpu0 = {r: _cpu_seconds(p) for r, p in pids.items()}
        t0 = time.monotonic()
        for role, pid in pids.items():
            for mode, extra in (("active", []), ("gil", ["--gil"])):
                for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                    if fmt == "flamegraph" and mode == "gil":
                        continue
                    # only one tracer may stop a process: the flame graph pass pauses it per
                    # sample (better idle detection), the raw passes read memory without pausing
                    blocking = [] if fmt == "flamegraph" and args.native else ["--nonblocking"]
                    spies.append(((role, mode, fmt), ns.popen(
                        [pyspy, "record", "--pid", str(pid), "--duration", f"{args.duration:g}",
                         "--rate", str(args.rate), *blocking, "--format", fmt,
                         "--output", str(out / f"{role}-{mode}.{ext}"), *extra],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "999", "-o", str(out / "perf.data"),
                                     "--", "sleep", f"{args.duration:g}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for key, spy in spies:
            _, err = spy.communicate(timeout=args.duration + 60)
            if spy.returncode != 0:
                print(f"py-spy {key} failed: {err.strip()[-300:]}", file=sys.stderr)
        wall = time.monotonic() - t0
        cpu1 = {r: _cpu_seconds(p) for r, p in pids.items()}
        report["cpu_pct"] = {r: (None if cpu0[r] is None or cpu1[r] is None
                                 else f"{100 * (cpu1[r] - cpu0[r]) / wall:.0f}%") for r in pids}
        if perf is not None:
            perf.wait(timeout=args.duration + 60)
            script = subprocess.run(["perf", "script", "-i", str(out / "perf.data"), "-F", "pid,tid,ip,sym,dso"],
                                    capture_output=True, text=True)
            report["perf"] = {r: dict(c) for r, c in parse_perf_script(script.stdout, pids).items()}
            report["perf_by_process"] = perf_by_process(script.stdout, pids)[:12]
            report["perf_rate_hz"] = 999
        stdout, _ = load.communicate(timeout=args.duration + 60)
        if args.load == "connrate":
            try:
                doc = json.loads(stdout.strip().splitlines()[-1])
                report["achieved"] = f"{doc.get('conn_per_s')} conn/s (while sampled)"
            except (ValueError, IndexError):
                report["achieved"] = "load generator output unreadable"
        else:
            sample = parse_iperf_json(stdout)
            report["achieved"] = (f"{sample.bps / 1e9:.2f} Gbit/s (while sampled)" if sample.bps
                                  else f"iperf3 failed: {sample.error}")
        stop_process(load)
        peer.stop()
        if infra:
            infra.stop()
        if server:
            server.stop()
    for role in ("ingress", "egress"):
        for mode in ("active", "gil"):
            f = out / f"{role}-{mode}.txt"
            if f.exists():
                report["ends"].setdefault(role, {})[mode] = summarize(parse_collapsed(f.read_text()), args.rate)
    report["loadavg_end"] = list(os.getloadavg())
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    text = format_summary(report)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nflame graphs: {out}/ingress-active.svg, {out}/egress-active.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
