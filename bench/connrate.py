"""The connection-rate suite: new connections per second through a tunnel.

Every connection carries one short request/response (bench/loadgen.py): the
cost measured is the per-connection one (accept, TLS handshake, attestation
check, dialling the backend, teardown), not bytes.

Peers (all in the benchmark's private namespace):

- ``direct``: generator -> backend, no tunnel (the ceiling of this machine).
- ``upstream-tng:attest`` / ``tng_nfq:attest``: one-way attestation, egress
  ``attest`` through the sample-TEE dev AA, ingress ``verify`` against the dev
  AS over REST with policy ``default``; default ``refresh_interval``, so the
  egress presents cached evidence.
- ``upstream-tng:no_ra`` / ``tng_nfq:no_ra``: the same pairs without attestation.

The dev AA, the dev AS and the backend are started once per suite and shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import CONNRATE_PEER_NAMES
from .measure import foreign_processes, ports_listening_in, schedule, tail
from .peers import READY_TIMEOUT, Context, Direct, Peer, PeerError, TngNfq, UpstreamTng, venv_tool

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
DEFAULTS = {"reps": 3, "duration": 3.0, "concurrency": 16}
QUICK = {"reps": 2, "duration": 2.0}
REQUEST_SIZE = 100
PROBE_TIMEOUT = 20.0


def _say(msg: str) -> None:
    print(msg, flush=True)


def base_peer(name: str) -> str:
    """'tng_nfq:attest' -> 'tng_nfq' (the name --peers selects by)."""
    return name.split(":", 1)[0]


def connrate_peers(selected: list[str]) -> list[str]:
    """The connection-rate variants of the peers selected with --peers (stunnel has none)."""
    return [p for p in CONNRATE_PEER_NAMES if base_peer(p) in selected]


def verify_ra(as_port: int, ca_pem: Path) -> dict:
    return {"verify": {"as_addr": f"http://127.0.0.1:{as_port}/", "policy_ids": ["default"],
                       "trusted_certs_paths": [str(ca_pem)]}}


def attest_ra(aa_socket: Path) -> dict:
    return {"attest": {"aa_addr": f"unix://{aa_socket}"}}


def loadgen_argv(port: int, concurrency: int, duration: float, watch: dict[str, int],
                 python: str = sys.executable) -> list[str]:
    argv = [python, "-I", str(LOADGEN), "run", "--port", str(port), "--concurrency", str(concurrency),
            "--duration", f"{duration:g}", "--size", str(REQUEST_SIZE),
            "--probe-timeout", f"{PROBE_TIMEOUT:g}"]
    if watch:
        argv += ["--watch", ",".join(f"{k}={v}" for k, v in watch.items())]
    return argv


def count_events(path: Path, event: str) -> int:
    """How many JSON log lines of a tng-nfq dev service carry this event."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return text.count(f'"event": "{event}"')


@dataclass
class _Service:
    role: str
    proc: subprocess.Popen
    log: Path
    fh: object = field(repr=False, default=None)


class Infra:
    """The shared pieces: request/response backend, sample-TEE AA and AS."""

    def __init__(self, ctx: Context, ns, need_attestation: bool):
        self.ctx, self.ns, self.need_attestation = ctx, ns, need_attestation
        self.services: dict[str, _Service] = {}
        self.backend_port = ctx.ports.take()
        self.as_port = ctx.ports.take()
        self.aa_socket = ctx.workdir / "aa.sock"
        self.as_state = ctx.workdir / "as-state"
        self.backend_restarts = 0

    @property
    def as_log(self) -> Path:
        return self.ctx.logdir / "dev-as.log"

    def _spawn(self, role: str, argv: list[str]) -> _Service:
        log = self.ctx.logdir / f"{role}.log"
        fh = open(log, "a")
        extra = {}
        if self.ctx.nfq_env and Path(argv[0]).name == "tng-nfq":
            extra["env"] = {**os.environ, **self.ctx.nfq_env}
        proc = self.ctx.lab.spawn(self.ns, argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                  **extra)
        svc = _Service(role, proc, log, fh)
        self.services[role] = svc
        return svc

    def _wait(self, svc: _Service, ready) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if svc.proc.poll() is not None:
                raise PeerError(f"{svc.role} exited with {svc.proc.returncode}: {tail(svc.log, 4)}")
            if time.monotonic() > deadline:
                raise PeerError(f"{svc.role} not ready after {READY_TIMEOUT:.0f}s: {tail(svc.log, 4)}")
            time.sleep(0.05)

    def start(self) -> None:
        self.start_backend()
        if not self.need_attestation:
            return
        tool = venv_tool("tng-nfq")
        if not tool:
            raise PeerError(f"tng-nfq not found next to {sys.executable}")
        aa = self._spawn("dev-aa", [tool, "--log-format", "json", "dev", "aa", "--socket", str(self.aa_socket)])
        as_ = self._spawn("dev-as", [tool, "--log-format", "json", "dev", "as",
                                     "--listen", f"127.0.0.1:{self.as_port}",
                                     "--state-dir", str(self.as_state), "--policy", "trust_all"])
        self._wait(aa, self.aa_socket.exists)
        self._wait(as_, lambda: (self.as_port in ports_listening_in(as_.proc.pid, self.ns.name)
                                 and (self.as_state / "ca.pem").exists()))

    def start_backend(self) -> None:
        svc = self._spawn("backend", [sys.executable, "-I", str(LOADGEN), "serve", "--port",
                                      str(self.backend_port), "--size", str(REQUEST_SIZE)])
        self._wait(svc, lambda: self.backend_port in ports_listening_in(svc.proc.pid, self.ns.name))

    def restart_backend_if_dead(self) -> None:
        svc = self.services.get("backend")
        if svc is not None and svc.proc.poll() is None:
            return
        self.backend_restarts += 1
        self.start_backend()

    def check(self) -> None:
        for svc in self.services.values():
            if svc.proc.poll() is not None:
                raise PeerError(f"{svc.role} exited with {svc.proc.returncode}: {tail(svc.log, 4)}")

    def pids(self) -> dict[str, int]:
        names = {"backend": "backend", "dev-aa": "aa", "dev-as": "as"}
        return {names[r]: s.proc.pid for r, s in self.services.items() if s.proc.poll() is None}

    def stop(self) -> None:
        from tng_nfq.lab.netns import stop_process

        for svc in reversed(list(self.services.values())):
            stop_process(svc.proc)
            svc.fh.close()
        self.services.clear()


def make_peer(name: str, ctx: Context, infra: Infra) -> Peer:
    base, _, ra = name.partition(":")
    if base == "direct":
        return Direct(ctx)
    cls = {"tng_nfq": TngNfq, "upstream-tng": UpstreamTng}[base]
    if ra == "attest":
        ca = infra.as_state / "ca.pem"
        return cls(ctx, ingress_ra=verify_ra(infra.as_port, ca), egress_ra=attest_ra(infra.aa_socket),
                   label=name)
    return cls(ctx, label=name)


class ConnRateRunner:
    """Measures every connrate peer once per repetition (round-robin), one retry per failed run."""

    def __init__(self, args, ns, ctx: Context, infra: Infra, peers: list[str]):
        self.args, self.ns, self.ctx, self.infra, self.peers = args, ns, ctx, infra, peers
        self.samples: dict[str, list[dict]] = {p: [] for p in peers}
        self.errors: dict[str, list[str]] = {p: [] for p in peers}
        self.info: dict[str, dict] = {p: {} for p in peers}
        self.disabled: set[str] = set()
        self.retries = 0
        self.foreign: set[str] = set()

    def _tag(self, rep: int, name: str) -> str:
        return f"[connrate rep {rep + 1}/{self.args.connrate_reps}] {name:<19}"

    def _start(self, peer: Peer, rep: int, name: str) -> int | None:
        try:
            port = peer.start(self.ns, self.ctx.ports.take(), self.infra.backend_port)
        except Exception as exc:  # noqa: BLE001 - any start failure disables the peer
            peer.stop()
            self.errors[name].append(f"rep {rep + 1}: start failed: {exc}")
            self.disabled.add(name)
            _say(f"{self._tag(rep, name)} FAILED to start: {str(exc).splitlines()[0]}")
            return None
        self.info[name]["commands"] = peer.commands
        return port

    def measure_peer(self, rep: int, name: str) -> None:
        if name in self.disabled:
            return
        self.ctx.rep = rep
        peer = make_peer(name, self.ctx, self.infra)
        try:
            port = self._start(peer, rep, name)
            if port is None:
                return
            for attempt in (1, 2):
                sample, error = self._measure_once(peer, port)
                if sample is not None:
                    sample["rep"] = rep + 1
                    self.samples[name].append(sample)
                    if sample["failed"]:
                        self.errors[name].append(f"rep {rep + 1}: {sample['failed']} failed exchanges "
                                                 f"{sample['errors']}")
                    _say(f"{self._tag(rep, name)} {sample['conn_per_s']:8.0f} conn/s  "
                         f"p50 {sample['latency_ms']['p50']} ms, failed {sample['failed']}, "
                         f"loadgen CPU {sample['cpu']['loadgen_pct']:.0f}%"
                         + (" (retry)" if attempt == 2 else ""))
                    return
                try:
                    peer.check()
                except PeerError as exc:
                    error += f"; {exc}"
                self.errors[name].append(f"rep {rep + 1}, attempt {attempt}: {error}")
                _say(f"{self._tag(rep, name)} FAILED: {error.splitlines()[0]}"
                     + ("; retrying once" if attempt == 1 else ""))
                if attempt == 2:
                    return
                self.infra.restart_backend_if_dead()
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

    def _measure_once(self, peer: Peer, port: int) -> tuple[dict | None, str]:
        try:
            peer.check()
            self.infra.check()
        except PeerError as exc:
            return None, f"not measured: {exc}"
        self.foreign.update(foreign_processes(self.ns.name))
        watch = {p.role: p.proc.pid for p in getattr(peer, "procs", [])}
        watch.update(self.infra.pids())
        argv = loadgen_argv(port, self.args.concurrency, self.args.connrate_duration, watch)
        as_before = count_events(self.infra.as_log, "attestation request")
        budget = PROBE_TIMEOUT + self.args.connrate_duration + 30
        try:
            proc = self.ns.run(argv, check=False, timeout=budget)
        except subprocess.TimeoutExpired:
            return None, f"load generator did not finish within {budget:.0f}s"
        return parse_loadgen_output(proc.stdout or "", proc.returncode, proc.stderr or "",
                                    as_requests=count_events(self.infra.as_log, "attestation request")
                                    - as_before)


def parse_loadgen_output(stdout: str, returncode: int, stderr: str = "",
                         as_requests: int | None = None) -> tuple[dict | None, str]:
    """(sample, "") for a usable run, else (None, reason)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        return None, f"load generator exited {returncode}: {last}"
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return None, f"load generator output is not JSON ({exc.msg})"
    if doc.get("error"):
        return None, f"load generator: {doc['error']}"
    if not doc.get("ok") or not doc.get("conn_per_s"):
        return None, f"no exchange completed in the window (errors {doc.get('errors')})"
    doc["as_requests"] = as_requests
    return doc, ""


def run_suite(args, lab, ns, ctx: Context, peers: list[str]) -> dict:
    """Start the shared services, measure every peer per repetition, stop everything."""
    need_att = any(p.endswith(":attest") for p in peers)
    infra = Infra(ctx, ns, need_att)
    runner = ConnRateRunner(args, ns, ctx, infra, peers)
    plan = schedule(peers, args.connrate_reps)
    state: dict = {"runner": runner, "plan": plan, "infra": infra, "error": None}
    try:
        try:
            infra.start()
        except PeerError as exc:
            state["error"] = f"shared services did not start: {exc}"
            for p in peers:
                runner.errors[p].append(state["error"])
            _say(f"connrate: {state['error'].splitlines()[0]}")
            return state
        for rep, name in plan:
            runner.measure_peer(rep, name)
    finally:
        state["backend_restarts"] = infra.backend_restarts
        infra.stop()
    return state
