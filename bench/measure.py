"""iperf3 runs, listening-socket checks and the run schedule.

The parsing and scheduling helpers are pure (unit-tested); `run_iperf_client`
is the only part that starts a process.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Iterable, Sequence

TCP_LISTEN = "0A"  # st column value of a listening socket in /proc/net/tcp*


@dataclass
class Sample:
    """One iperf3 client run: a throughput or an error, never both."""

    bps: float | None
    error: str | None = None


def parse_iperf_json(text: str) -> Sample:
    """Received throughput of an `iperf3 -c ... -J` run (sum over all streams)."""
    if not text.strip():
        return Sample(None, "iperf3 printed no JSON")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return Sample(None, f"iperf3 output is not JSON ({exc.msg} at char {exc.pos})")
    if not isinstance(doc, dict):
        return Sample(None, "iperf3 JSON is not an object")
    if doc.get("error"):
        return Sample(None, f"iperf3: {doc['error']}")
    try:
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        return Sample(None, "iperf3 JSON has no end.sum_received.bits_per_second")
    if bps <= 0:
        return Sample(None, "iperf3 measured 0 bit/s")
    return Sample(bps)


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state, from the text of /proc/net/tcp or /proc/net/tcp6."""
    ports = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_LISTEN:
            continue
        _, _, port_hex = fields[1].rpartition(":")
        try:
            ports.add(int(port_hex, 16))
        except ValueError:
            continue
    return ports


def same_netns(pid: int, netns_name: str) -> bool:
    """Whether process `pid` already lives in the named namespace (`ip netns exec` did its setns)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns_name}").st_ino
    except OSError:
        return False


def ports_listening_in(pid: int, netns_name: str) -> set[int]:
    """Listening TCP ports of the namespace that `pid` lives in; empty until `pid` is inside it.

    Reads /proc/<pid>/net/tcp*, which shows the network namespace of that
    process, so no probe connection is made (a probe through a tunnel would
    reach the iperf3 server as a bogus client).
    """
    if not same_netns(pid, netns_name):
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                ports |= listening_ports(fh.read())
        except OSError:
            continue
    # the answer only counts if the process did not leave/die while we read
    return ports if same_netns(pid, netns_name) else set()


BENCH_COMMS = frozenset({"iperf3", "tng", "tng-nfq", "stunnel", "stunnel4", "iperf", "netperf"})


def foreign_processes(netns_name: str, comms=BENCH_COMMS) -> set[str]:
    """Benchmark-like processes (iperf3, tng, stunnel...) running OUTSIDE our namespace.

    They compete for the same CPUs (and, being outside the harness, may signal
    ours), so the run records them to explain noisy numbers.
    """
    try:
        ours = os.stat(f"/run/netns/{netns_name}").st_ino
    except OSError:
        return set()
    seen = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as fh:
                comm = fh.read().strip()
            if comm not in comms:
                continue
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == ours:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        seen.add(cmdline[:200] or comm)
    return seen


def schedule(peers: Sequence[str], reps: int) -> list[tuple[int, str]]:
    """Round-robin order: every repetition visits every peer once, the first peer rotating.

    Rotation spreads slow drift (thermal, other load) and "first after idle"
    effects over all peers instead of always hitting the same one.
    """
    order = []
    n = len(peers)
    for rep in range(reps):
        for i in range(n):
            order.append((rep, peers[(rep + i) % n]))
    return order


def iperf_client_argv(port: int, duration: float, streams: int) -> list[str]:
    return ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", _num(duration),
            "-P", str(streams), "-J", "--connect-timeout", "5000"]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def run_iperf_client(ns, port: int, duration: float, streams: int) -> Sample:
    """Run one iperf3 client in namespace `ns` against 127.0.0.1:port."""
    argv = iperf_client_argv(port, duration, streams)
    try:
        proc = ns.run(argv, check=False, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return Sample(None, f"iperf3 client did not finish within {duration + 30:.0f}s")
    sample = parse_iperf_json(proc.stdout or "")
    if sample.error and proc.returncode != 0 and not (proc.stdout or "").strip():
        stderr = (proc.stderr or "").strip().splitlines()
        sample.error = f"iperf3 exited {proc.returncode}: {stderr[-1] if stderr else 'no output'}"
    return sample


LOG_SECTION_MARK = "===== "


def last_section(text: str) -> list[str]:
    """Non-empty lines after the last section header: the output of the latest start in an appended log."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(LOG_SECTION_MARK):
            lines = lines[i + 1:]
            break
    return [ln.rstrip() for ln in lines if ln.strip()]


def tail(path, lines: int = 8) -> str:
    """Last lines a process logged since its latest start (for error messages)."""
    try:
        with open(path, errors="replace") as fh:
            content = last_section(fh.read())
    except OSError:
        return ""
    return "\n".join(content[-lines:])


def first_line(argv: Iterable[str]) -> str:
    """First output line of a version command, or a note that it failed."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (proc.stdout or "") + (proc.stderr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else f"unavailable (exit {proc.returncode})"
