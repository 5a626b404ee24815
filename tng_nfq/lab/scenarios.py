"""The three-machine lab's scenarios, mirrored in network namespaces on one host.

`vagrant/Vagrantfile` describes three machines - client, gateway, server -
on two private networks (client 192.168.56.10 | gateway 192.168.56.20 and
192.168.57.20 | server 192.168.57.30; the gateway routes between them).
The scenarios are shell scripts under `vagrant/scenarios/<n>-<name>/`, with
a `steps` file naming, in order, which role runs which script. The very
same files run on the Vagrant machines (`vagrant/vagrant-lab`) and here,
where each role is a network namespace with the same addresses and each
step is `ip netns exec <ns> vagrant/scenarios/step ROLE SCENARIO SCRIPT`.

Namespaces are `<prefix>-client`, `<prefix>-gateway`, `<prefix>-server`;
processes started by the scripts live inside them and keep pid/log files in
`<state>/<role>/`. `down()` stops them (tng-nfq first, so its rules go),
kills whatever is left in the namespaces and deletes the namespaces - which
removes every veth, address, route and rule with them. The host's own
network is never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tng_nfq.lab.netns import LabError, _kill_namespace_processes, _run, existing_namespaces, sweep_stale

ROLES = ("client", "gateway", "server")
DEFAULT_PREFIX = "tnglab"
STATE_ROOT = Path("/run/tng-nfq-lab")
STEP_TIMEOUT = 120.0

# (namespace a, interface in a, address, namespace b, interface in b, address)
LINKS = (
    ("client", "eth1", "192.168.56.10/24", "gateway", "eth1", "192.168.56.20/24"),
    ("gateway", "eth2", "192.168.57.20/24", "server", "eth1", "192.168.57.30/24"),
)
DEFAULT_ROUTES = {"client": "192.168.56.20", "server": "192.168.57.20"}


def scenarios_dir() -> Path:
    """vagrant/scenarios of the source tree (override: TNG_NFQ_LAB_SCENARIOS)."""
    env = os.environ.get("TNG_NFQ_LAB_SCENARIOS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "vagrant" / "scenarios"
    if not here.is_dir():
        raise LabError(f"no scenario scripts at {here} (run from a source checkout, "
                       "or set TNG_NFQ_LAB_SCENARIOS to vagrant/scenarios)")
    return here


@dataclass(frozen=True)
class Step:
    role: str
    script: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str  # directory name, e.g. "1-netfilter-both-ends"
    path: Path

    @property
    def number(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def title(self) -> str:
        for line in (self.path / "steps").read_text().splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
        return self.name

    def steps(self) -> list[Step]:
        steps = []
        for n, line in enumerate((self.path / "steps").read_text().splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) < 2 or words[0] not in ROLES:
                raise LabError(f"{self.path / 'steps'}:{n}: expected 'ROLE SCRIPT [ARGS]' with ROLE in {ROLES}")
            if not (self.path / words[1]).is_file():
                raise LabError(f"{self.path / 'steps'}:{n}: no script {words[1]}")
            steps.append(Step(words[0], words[1], tuple(words[2:])))
        return steps

    def roles(self) -> list[str]:
        return sorted({s.role for s in self.steps()}, key=ROLES.index)


def list_scenarios(root: Path | None = None) -> list[Scenario]:
    root = root or scenarios_dir()
    found = [Scenario(p.name, p) for p in root.iterdir()
             if p.is_dir() and p.name[:1].isdigit() and (p / "steps").is_file()]
    return sorted(found, key=lambda s: (int(s.number) if s.number.isdigit() else 1 << 30, s.name))


def find_scenario(name: str, root: Path | None = None) -> Scenario:
    """A scenario by directory name or by its number ("1")."""
    scenarios = list_scenarios(root)
    for s in scenarios:
        if name in (s.name, s.number):
            return s
    raise LabError(f"no scenario {name!r}; known: {', '.join(s.name for s in scenarios)}")


@dataclass
class StepResult:
    step: Step
    returncode: int
    output: str
    seconds: float


@dataclass
class RunResult:
    scenario: Scenario
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    logs: str = ""  # tails of the scripts' logs, kept when a step failed

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.returncode == 0 for s in self.steps)

    @property
    def output(self) -> str:
        return "".join(s.output for s in self.steps)


class NetnsLab:
    """The three-machine lab as three network namespaces on this host."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, state_dir: Path | None = None,
                 tng_nfq: str | None = None, root: Path | None = None):
        self.prefix = prefix
        self.root = Path(root) if root else scenarios_dir()  # vagrant/scenarios
        self.state = Path(state_dir) if state_dir else STATE_ROOT / prefix
        self.tng_nfq = tng_nfq or _tng_nfq_executable()
        self.leftovers: list[str] = []  # processes still running after stop.sh (then killed)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def namespaces(self) -> list[str]:
        present = set(existing_namespaces())
        return [self.ns(r) for r in ROLES if self.ns(r) in present]

    def is_up(self) -> bool:
        return len(self.namespaces()) == len(ROLES)

    # -- topology ------------------------------------------------------------

    def up(self) -> None:
        """Create the namespaces, veths, addresses and routes (recreated if present)."""
        sweep_stale()  # tngnfq-<pid>-* of runs killed hard (the demo's and the tests' prefixes)
        self.down()
        try:
            for role in ROLES:
                _run(["ip", "netns", "add", self.ns(role)])
                self._ip(role, "link", "set", "lo", "up")
            for a, if_a, addr_a, b, if_b, addr_b in LINKS:
                tmp = f"tmp{os.getpid() % 100000}"
                # born inside `a`, the peer moved into `b`: the host never sees either end
                self._ip(a, "link", "add", if_a, "type", "veth", "peer", "name", tmp)
                self._ip(a, "link", "set", tmp, "netns", self.ns(b))
                self._ip(b, "link", "set", tmp, "name", if_b)
                for role, ifname, addr in ((a, if_a, addr_a), (b, if_b, addr_b)):
                    self._ip(role, "addr", "add", addr, "dev", ifname)
                    self._ip(role, "link", "set", ifname, "up")
            for role, via in DEFAULT_ROUTES.items():
                self._ip(role, "route", "add", "default", "via", via)
            self.exec("gateway", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self.state.mkdir(parents=True, exist_ok=True)
            self.state.chmod(0o755)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop everything, delete the namespaces (veths, addresses, rules go with them)."""
        present = set(existing_namespaces())
        for role in ROLES:
            if self.ns(role) in present and (self.state / role).exists():
                self._stop_role(role)
        for role in ROLES:
            if self.ns(role) in present:
                _kill_namespace_processes(self.ns(role))
                _run(["ip", "netns", "delete", self.ns(role)], check=False)
        shutil.rmtree(self.state, ignore_errors=True)

    def _ip(self, role: str, *argv: str) -> None:
        _run(["ip", "-n", self.ns(role), *argv])

    def exec(self, role: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(["ip", "netns", "exec", self.ns(role), *argv], **kw)
        if proc.returncode != 0:
            raise LabError(f"[{role}] {' '.join(argv)} failed: {(proc.stderr or '').strip()}")
        return proc

    # -- scenarios -----------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        return list_scenarios(self.root)

    def find(self, name: str) -> Scenario:
        return find_scenario(name, self.root)

    def env(self, marker: str) -> dict:
        bindir = str(Path(self.tng_nfq).parent)
        return {**os.environ, "LAB_STATE": str(self.state), "TNG_NFQ": self.tng_nfq, "LAB_MARKER": marker,
                "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def step(self, scenario: Scenario, step: Step, marker: str, out: Callable[[str], None] | None = None,
             timeout: float = STEP_TIMEOUT) -> StepResult:
        if self.ns(step.role) not in existing_namespaces():
            raise LabError(f"the lab is not up (no namespace {self.ns(step.role)}): run `netns-lab up` first")
        runner = self.root / "step"
        argv = ["ip", "netns", "exec", self.ns(step.role), "bash", str(runner), step.role, scenario.name,
                step.script, *step.args]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=self.env(marker), start_new_session=True)
        lines = []
        deadline = started + timeout
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        timed_out = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(timeout=min(left, 1.0)):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if out:
                out(line.rstrip("\n"))
        if timed_out:
            import signal

            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            lines.append(f"[{step.role}] FAILED: {step.script} timed out after {timeout:g}s\n")
            if out:
                out(lines[-1].rstrip("\n"))
        code = proc.wait()
        sel.close()
        proc.stdout.close()
        return StepResult(step, 124 if timed_out else code, "".join(lines), time.monotonic() - started)

    def run(self, scenario: Scenario, out: Callable[[str], None] | None = None, marker: str | None = None,
            keep: bool = False, on_step: Callable[[Step], None] | None = None) -> RunResult:
        """Run every step in order; stop at the first failure. Afterwards every
        role's processes are stopped (unless `keep`), also on failure."""
        marker = marker or f"TNGLAB-SECRET-{secrets.token_hex(6)}"
        result = RunResult(scenario)
        started = time.monotonic()
        try:
            for role in ROLES:  # leftovers of an earlier run
                self._stop_role(role)
            for step in scenario.steps():
                if on_step:
                    on_step(step)
                res = self.step(scenario, step, marker, out)
                result.steps.append(res)
                if res.returncode != 0:
                    break
        finally:
            if not result.ok:
                result.logs = self.logs()
            if not keep:
                for role in ROLES:
                    self._stop_role(role)
            result.seconds = time.monotonic() - started
        return result

    def stop(self) -> None:
        for role in ROLES:
            self._stop_role(role)

    def _stop_role(self, role: str) -> None:
        if self.ns(role) not in existing_namespaces():
            return
        argv = ["ip", "netns", "exec", self.ns(role), "bash", str(self.root / "step"), role, "-", "stop.sh"]
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=self.env("-"))
        except subprocess.TimeoutExpired:
            pass
        # whatever the scripts did not track (or a daemon slow to exit): gone too
        deadline = time.monotonic() + 5
        while (pids := self._pids(role)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pids:
            self.leftovers += [f"{role}: {_cmdline(pid)}" for pid in pids]
            _kill_namespace_processes(self.ns(role))

    def _pids(self, role: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns(role)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def logs(self, tail: int = 40) -> str:
        """The tails of every log the scripts left (for failure reports)."""
        out = []
        for path in sorted(self.state.glob("*/*.log")):
            try:
                lines = path.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                continue
            out.append(f"--- {path.relative_to(self.state)} ---\n" + "\n".join(lines))
        return "\n".join(out)


def _tng_nfq_executable() -> str:
    exe = Path(sys.executable).with_name("tng-nfq")
    if exe.exists():
        return str(exe)
    found = shutil.which("tng-nfq")
    if found:
        return found
    raise LabError("tng-nfq is not installed next to this Python nor on PATH")


def _cmdline(pid: int) -> str:
    try:
        return f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)
