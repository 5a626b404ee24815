"""Connection-rate load generator and its request/response backend (stdlib only).

Run inside the benchmark's network namespace as a plain script (it is not
imported by the harness at run time, so it starts fast and pulls in nothing):

    python bench/loadgen.py serve --port P [--size 100] [--threads K]
    python bench/loadgen.py run --port P --concurrency N --duration D [--watch name=pid,...]

One exchange = connect, send a SIZE-byte request, read the SIZE-byte reply,
read the server's close (EOF), close. The server closes first, so through a
tunnel the close has to travel back to the client before the exchange
counts: a connection is only "done" once the whole tunnel has torn it down.

`run` prints one JSON object on stdout: completed exchanges and failures in
the timed window, conn/s, latency percentiles, and CPU seconds of itself and
of the watched processes (with their descendants) over exactly that window,
read from /proc, so the harness can tell how much of the two cores went to
the generator, the backend and each tunnel end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIRST_REPLY_BYTE = ord("R")


# -- CPU accounting from /proc ------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        except OSError:
            continue
    return kids


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads, live and exited), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `pid` and its live descendants (None if `pid` is gone)."""
    own = proc_cpu_seconds(pid)
    if own is None:
        return None
    total, todo, seen = own, _children(pid), {pid}
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        cpu = proc_cpu_seconds(child)
        if cpu is not None:
            total += cpu
            todo += _children(child)
    return total


def system_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def parse_watch(text: str) -> dict[str, int]:
    """'ingress=123,egress=456' -> {'ingress': 123, 'egress': 456}."""
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, pid = item.partition("=")
        if not name or not pid.isdigit():
            raise ValueError(f"bad --watch item {item!r} (want name=pid)")
        out[name] = int(pid)
    return out


class CpuWindow:
    """CPU seconds used by us, by watched process trees and by the whole machine between two marks."""

    def __init__(self, watch: dict[str, int]):
        self.watch = watch
        self._start: dict | None = None

    def _snap(self) -> dict:
        return {"t": time.perf_counter(), "self": self_cpu_seconds(), "sys": system_cpu_ticks(),
                "procs": {name: tree_cpu_seconds(pid) for name, pid in self.watch.items()}}

    def start(self) -> None:
        self._start = self._snap()

    def stop(self) -> dict:
        assert self._start is not None
        a, b = self._start, self._snap()
        wall = b["t"] - a["t"]
        busy = b["sys"][0] - a["sys"][0]
        total = b["sys"][1] - a["sys"][1]
        ncpu = os.cpu_count() or 1
        procs = {}
        for name in self.watch:
            x, y = a["procs"][name], b["procs"][name]
            procs[name] = None if x is None or y is None else round(y - x, 4)
        return {
            "wall_s": round(wall, 4),
            "loadgen_cpu_s": round(b["self"] - a["self"], 4),
            "procs_cpu_s": procs,
            # share of ALL cores busy during the window (100 = every core busy)
            "machine_busy_pct": round(100.0 * busy / total, 1) if total > 0 else None,
            "machine_cpus": ncpu,
        }


# -- the client ---------------------------------------------------------------

_TIMEVAL = "ll"


def _set_timeouts(sock: socket.socket, timeout: float) -> None:
    # Kernel-side timeouts keep the socket blocking: no poll() before every call.
    tv = struct.pack(_TIMEVAL, int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def make_request(worker: int, size: int) -> bytes:
    head = f"Q{worker:05d}:".encode()
    return (head + b"q" * size)[:size]


def expected_reply(request: bytes) -> bytes:
    return b"R" + request[1:]


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)) or getattr(exc, "errno", None) in (
            errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.ETIMEDOUT):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


class ProtocolError(Exception):
    pass


def exchange(addr, request: bytes, reply: bytes, buf: bytearray, timeout: float) -> None:
    """One connection: request, reply, the server's EOF, close. Raises on any deviation."""
    size = len(reply)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _set_timeouts(sock, timeout)
        sock.connect(addr)
        sock.sendall(request)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = sock.recv_into(view[got:], len(buf) - got)
            if n == 0:
                raise ProtocolError("short reply" if got else "closed before reply")
            got += n
        if got > size:
            raise ProtocolError("reply too long")
        if buf[:size] != reply:
            raise ProtocolError("wrong reply")
        if sock.recv_into(buf) != 0:
            raise ProtocolError("data after reply")
    finally:
        sock.close()


class Worker(threading.Thread):
    def __init__(self, idx: int, addr, size: int, timeout: float, go: threading.Event, window: dict):
        super().__init__(name=f"w{idx}", daemon=True)
        self.addr, self.timeout, self.go, self.window = addr, timeout, go, window
        self.request = make_request(idx, size)
        self.reply = expected_reply(self.request)
        self.ok = 0
        self.late = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []

    def run(self) -> None:
        self.go.wait()
        deadline = self.window["deadline"]
        buf = bytearray(len(self.reply) + 64)
        clock, addr, request, reply, timeout = time.perf_counter, self.addr, self.request, self.reply, self.timeout
        lat = self.latencies.append
        while True:
            t0 = clock()
            if t0 >= deadline:
                return
            try:
                exchange(addr, request, reply, buf, timeout)
            except (OSError, ProtocolError) as exc:
                kind = str(exc) if isinstance(exc, ProtocolError) else error_kind(exc)
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if clock() < deadline:
                    time.sleep(0.01)  # a refused connect must not spin
                continue
            t1 = clock()
            if t1 <= deadline:
                self.ok += 1
                lat(t1 - t0)
            else:
                self.late += 1  # finished after the window: not counted


def percentile(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def probe(addr, size: int, timeout: float, give_up_after: float) -> dict:
    """Sequential exchanges until one succeeds: readiness, and the first (uncached) attestation."""
    request = make_request(99999, size)
    reply = expected_reply(request)
    buf = bytearray(size + 64)
    t0 = time.perf_counter()
    attempts, last = 0, None
    while True:
        attempts += 1
        try:
            exchange(addr, request, reply, buf, timeout)
            return {"ok": True, "attempts": attempts, "s": round(time.perf_counter() - t0, 3)}
        except (OSError, ProtocolError) as exc:
            last = str(exc) if isinstance(exc, ProtocolError) else error_kind(exc)
        if time.perf_counter() - t0 > give_up_after:
            return {"ok": False, "attempts": attempts, "s": round(time.perf_counter() - t0, 3),
                    "error": last}
        time.sleep(0.1)


def run_load(args) -> dict:
    addr = (args.host, args.port)
    result: dict = {"concurrency": args.concurrency, "duration_s": args.duration, "size": args.size}
    result["probe"] = probe(addr, args.size, args.timeout, args.probe_timeout)
    if not result["probe"]["ok"]:
        result["error"] = f"no successful exchange within {args.probe_timeout:g}s: {result['probe']['error']}"
        return result
    go = threading.Event()
    window: dict = {}
    workers = [Worker(i, addr, args.size, args.timeout, go, window) for i in range(args.concurrency)]
    for w in workers:
        w.start()
    cpu = CpuWindow(parse_watch(args.watch))
    cpu.start()
    window["deadline"] = time.perf_counter() + args.duration
    go.set()
    time.sleep(max(0.0, window["deadline"] - time.perf_counter()))
    result["cpu"] = cpu.stop()
    for w in workers:
        w.join(args.timeout + 2)
    stuck = sum(w.is_alive() for w in workers)
    ok = sum(w.ok for w in workers)
    errors: dict[str, int] = {}
    for w in workers:
        for k, v in w.errors.items():
            errors[k] = errors.get(k, 0) + v
    lats = sorted(x for w in workers for x in w.latencies)
    wall = result["cpu"]["wall_s"]
    result.update({
        "ok": ok,
        "failed": sum(errors.values()),
        "errors": errors,
        "late": sum(w.late for w in workers),
        "stuck_workers": stuck,
        "conn_per_s": round(ok / wall, 1) if wall > 0 else None,
        "latency_ms": {f"p{p}": (None if percentile(lats, p) is None else round(percentile(lats, p) * 1e3, 3))
                       for p in (50, 90, 99)},
    })
    result["cpu"]["loadgen_pct"] = round(100.0 * result["cpu"]["loadgen_cpu_s"] / wall, 1) if wall > 0 else None
    return result


# -- the backend ----------------------------------------------------------------


def serve(args) -> int:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(4096)
    size = args.size
    stop = threading.Event()

    def loop() -> None:
        buf = bytearray(size + 64)
        view = memoryview(buf)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.01)
                continue
            try:
                _set_timeouts(conn, args.timeout)
                got = 0
                while got < size:
                    n = conn.recv_into(view[got:], len(buf) - got)
                    if n == 0:
                        break
                    got += n
                if got == size:
                    buf[0] = FIRST_REPLY_BYTE
                    conn.sendall(view[:size])
            except OSError:
                pass
            finally:
                conn.close()

    threads = [threading.Thread(target=loop, daemon=True, name=f"acc{i}") for i in range(args.threads)]
    for t in threads:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    try:
        lsock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    lsock.close()
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="loadgen.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="request/response backend: read SIZE bytes, answer SIZE bytes, close")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, default=100)
    s.add_argument("--threads", type=int, default=32, help="accepting threads, each serves one connection at a time")
    s.add_argument("--timeout", type=float, default=5.0)
    r = sub.add_parser("run", help="N workers, each doing exchanges back to back for DURATION seconds")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--size", type=int, default=100)
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument("--duration", type=float, default=3.0)
    r.add_argument("--timeout", type=float, default=5.0, help="per socket operation")
    r.add_argument("--probe-timeout", type=float, default=20.0,
                   help="give up if no exchange succeeds within this many seconds before the timed window")
    r.add_argument("--watch", default="", help="name=pid,... whose CPU time (with descendants) is reported")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    result = run_load(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
