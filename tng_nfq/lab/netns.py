"""Throw-away network namespaces for the demo, the tests and the benchmarks.

Everything the lab creates lives inside namespaces it made itself: the veth
pairs are created inside the first namespace and moved into the second, so
the host's own network never sees a link, address, rule or route of ours.
Names carry the creating process id so that parallel runs do not collide and
leftovers of a crashed run can be found (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

NAME_PREFIX = "tngnfq"


class LabError(RuntimeError):
    pass


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def existing_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone."""
    removed = []
    for name in existing_namespaces():
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != NAME_PREFIX or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # owner still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_namespace_processes(name)
        _run(["ip", "netns", "delete", name], check=False)
        removed.append(name)
    return removed


def _kill_namespace_processes(name: str) -> None:
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Namespace:
    """One network namespace with loopback up."""

    name: str
    addresses: list[str] = field(default_factory=list)

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float | None = 60,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self.cmd(argv), timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise LabError(f"[{self.name}] {shlex.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or '').strip()}")
        return proc

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        # own process group so a stop reaches children (e.g. `ip netns exec` wrappers)
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(self.cmd(argv), **kw)

    @property
    def address(self) -> str:
        return self.addresses[0]


class Lab:
    """A set of namespaces joined by veth links, removed on exit (also on failure).

    >>> with Lab() as lab:
    ...     client = lab.add("client"); server = lab.add("server")
    ...     lab.link(client, "198.18.0.1/24", server, "198.18.0.2/24")
    """

    def __init__(self, tag: str = "lab"):
        self.tag = tag
        self.namespaces: list[Namespace] = []
        self._links = 0
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Lab":
        sweep_stale()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, role: str) -> Namespace:
        name = f"{NAME_PREFIX}-{os.getpid()}-{self.tag}-{role}"[:60]
        if name in existing_namespaces():
            _kill_namespace_processes(name)
            _run(["ip", "netns", "delete", name], check=False)
        _run(["ip", "netns", "add", name])
        ns = Namespace(name)
        self.namespaces.append(ns)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def link(self, a: Namespace, a_cidr: str, b: Namespace, b_cidr: str, mtu: int | None = None) -> None:
        """Join two namespaces with a veth pair; the pair is born inside `a`."""
        self._links += 1
        ifa, ifb = f"veth{self._links}a", f"veth{self._links}b"
        a.run(["ip", "link", "add", ifa, "type", "veth", "peer", "name", ifb])
        a.run(["ip", "link", "set", ifb, "netns", b.name])
        for ns, ifname, cidr in ((a, ifa, a_cidr), (b, ifb, b_cidr)):
            ns.run(["ip", "addr", "add", cidr, "dev", ifname])
            if mtu:
                ns.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
            ns.run(["ip", "link", "set", ifname, "up"])
            ns.addresses.append(cidr.split("/")[0])

    def spawn(self, ns: Namespace, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a background process in `ns`; it is stopped when the lab closes."""
        proc = ns.popen(argv, **kw)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
        for ns in reversed(self.namespaces):
            _kill_namespace_processes(ns.name)
            _run(["ip", "netns", "delete", ns.name], check=False)
        self.namespaces.clear()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
    """Signal a process group, wait, escalate to SIGKILL; return the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=timeout)


def wait_for_port(ns: Namespace | None, host: str, port: int, timeout: float = 15.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Poll until something accepts TCP on host:port (inside `ns` when given)."""
    deadline = time.monotonic() + timeout
    probe = ["python3", "-c",
             "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()",
             host, str(port)]
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LabError(f"process {proc.args!r} exited with {proc.returncode} before {host}:{port} came up")
        argv = ns.cmd(probe) if ns else probe
        if subprocess.run(argv, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise LabError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for_log_event(log_path, event: str, proc: subprocess.Popen, timeout: float = 15.0) -> dict:
    """Wait until a JSON-logging tng-nfq writes `event` (e.g. "ready") to its log file."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = open(log_path, encoding="utf-8", errors="replace").read()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                return entry
        if proc.poll() is not None:
            raise LabError(f"{shlex.join(map(str, proc.args))[:200]} exited with {proc.returncode} "
                           f"before logging {event!r}: {text.strip()[-500:]}")
        time.sleep(0.05)
    raise LabError(f"no {event!r} in {log_path} after {timeout}s")


@contextlib.contextmanager
def single_namespace(tag: str) -> Iterator[Namespace]:
    """A lone namespace with only loopback: a private place for loopback benchmarks."""
    with Lab(tag) as lab:
        yield lab.add("solo")
