"""The `encap` suite: HTTP encapsulation (encap_in_http / decap_from_http) side by side.

Each inner HTTP request travels as chunked Oblivious HTTP inside an outer
HTTP POST (docs/ohttp-wire.md). Measured per peer and repetition, in the
benchmark's private namespace, against one HTTP backend (bench/encap_load.py):

- ``download``: one `curl` GET of a large response (default 256 MiB), MB/s;
- ``upload``: one `curl` POST of a large body (same size, Content-Length), MB/s;
- ``rate``: GET of a 100-byte response back to back on one keep-alive
  connection for a few seconds (bench/encap_load.py rate), requests/s.

Peers: ``direct`` (no tunnel), ``upstream-tng:no_ra`` / ``tng_nfq:no_ra``
(ingress ``encap_in_http`` -> egress ``decap_from_http``, no_ra) and
``upstream-tng:attest`` / ``tng_nfq:attest`` (the same plus one-way
background-check attestation: egress ``attest`` via the dev AA, ingress
``verify`` via the dev AS). Round-robin with a rotating first peer, peers
started and stopped per repetition, medians; ratios tng_nfq / upstream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .connrate import Infra, attest_ra, verify_ra
from .loadgen import tree_cpu_seconds
from .measure import foreign_processes, ports_listening_in, schedule
from .peers import Context, Direct, Peer, PeerError, TngNfq, UpstreamTng
from .report import median, ratio

LOAD = Path(__file__).resolve().parent / "encap_load.py"
PEER_NAMES = ("direct", "upstream-tng:no_ra", "tng_nfq:no_ra", "upstream-tng:attest", "tng_nfq:attest")
HEADLINES = {"no_ra": ("tng_nfq:no_ra", "upstream-tng:no_ra"),
             "attest": ("tng_nfq:attest", "upstream-tng:attest")}
METRICS = ("download", "upload", "rate")
UNITS = {"download": "MB/s", "upload": "MB/s", "rate": "req/s"}
# CPU of both tunnel ends per unit of work: robust against other load on the box
CPU_UNITS = {"download": "tunnel CPU s/GB", "upload": "tunnel CPU s/GB", "rate": "tunnel CPU ms/req"}
DEFAULTS = {"size_mb": 256, "rate_duration": 3.0}
QUICK = {"size_mb": 128, "rate_duration": 2.0}
MB = 1e6


def _say(msg: str) -> None:
    print(msg, flush=True)


def base_peer(name: str) -> str:
    return name.split(":", 1)[0]


def encap_peers(selected: list[str]) -> list[str]:
    """The encap variants of the peers chosen with --peers (stunnel has none)."""
    return [p for p in PEER_NAMES if base_peer(p) in selected]


def encap_ra(ra: dict | None, side: str) -> dict:
    """The config entry's extra keys: encapsulation plus the attestation part (default no_ra)."""
    key = "encap_in_http" if side == "ingress" else "decap_from_http"
    return {key: {}, **(ra or {"no_ra": True})}


def curl_argv(port: int, kind: str, upload_file: Path | None = None) -> list[str]:
    url = f"http://127.0.0.1:{port}/" + ("big" if kind == "download" else "up")
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
            "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"]
    if kind == "upload":
        argv += ["-X", "POST", "-T", str(upload_file), "-H", "Expect:",
                 "-H", "Content-Type: application/octet-stream"]
    return argv + [url]


def parse_curl(stdout: str, kind: str, expected: int) -> tuple[float | None, str]:
    """(MB/s, "") or (None, reason) from curl's -w line."""
    parts = stdout.strip().split()
    if len(parts) != 4:
        return None, f"curl output not understood: {stdout.strip()[:200]!r}"
    code, down, up, total = parts
    if code != "200":
        return None, f"HTTP {code}"
    moved = float(up if kind == "upload" else down)
    if int(moved) != expected:
        return None, f"moved {int(moved)} bytes, expected {expected}"
    seconds = float(total)
    if seconds <= 0:
        return None, "zero time"
    return moved / seconds / MB, ""


def parse_rate(stdout: str) -> tuple[float | None, str]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None, "rate client printed nothing"
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return None, f"rate client output is not JSON ({exc.msg})"
    if doc.get("error") and not doc.get("ok"):
        return None, f"rate client: {doc['error']}"
    if doc.get("error"):
        return None, f"rate client failed after {doc.get('ok')} requests: {doc['error']}"
    if not doc.get("req_per_s"):
        return None, "no request completed"
    return float(doc["req_per_s"]), ""


def cpu_per_unit(metric: str, cpu_s: float | None, value: float | None, size: int, seconds: float) -> float | None:
    """Tunnel CPU per GB moved (download/upload) or per request (rate, ms)."""
    if cpu_s is None or not value:
        return None
    if metric == "rate":
        return cpu_s * 1000 / (value * seconds)
    return cpu_s / (size / 1e9)


def summarize(peers: list[str], samples: dict, errors: dict, reps: int) -> dict:
    """Medians per peer and metric, ratios tng_nfq/upstream (and /direct)."""
    out: dict = {"peers": {}, "ratios": {}, "cpu_ratios": {}, "vs_direct": {}}
    for p in peers:
        entry = {"errors": list(errors.get(p, []))}
        got = 0
        for m in METRICS:
            vals = list(samples.get(p, {}).get(m, []))
            got += len(vals)
            entry[m] = {"samples": vals, "median": median(vals), "min": min(vals) if vals else None,
                        "max": max(vals) if vals else None, "unit": UNITS[m]}
            cpu = [v for v in samples.get(p, {}).get(f"{m}_cpu", []) if v is not None]
            if cpu:
                entry[m].update(cpu_samples=cpu, cpu_median=median(cpu), cpu_unit=CPU_UNITS[m])
        expected = reps * len(METRICS)
        entry["status"] = ("failed" if got == 0 and entry["errors"] else "not run" if got == 0
                           else "partial" if got < expected or entry["errors"] else "ok")
        out["peers"][p] = entry
    for label, (num, den) in HEADLINES.items():
        if num in peers and den in peers:
            out["ratios"][label] = {m: ratio(out["peers"][num][m]["median"], out["peers"][den][m]["median"])
                                    for m in METRICS}
            # tng_nfq's CPU per unit / upstream's: below 1 is cheaper
            out["cpu_ratios"][label] = {m: ratio(out["peers"][num][m].get("cpu_median"),
                                                 out["peers"][den][m].get("cpu_median")) for m in METRICS}
    if "direct" in peers:
        for p in peers:
            if p != "direct":
                out["vs_direct"][p] = {m: ratio(out["peers"][p][m]["median"],
                                                out["peers"]["direct"][m]["median"]) for m in METRICS}
    return out


def _fmt(v, spec):
    if v is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 0))
    return format(v, spec)


def format_table(res: dict) -> str:
    lines = ["encap (HTTP encapsulation, chunked OHTTP): median of repetitions",
             f"{'peer':<21}{'download MB/s':>15}{'upload MB/s':>14}{'rate req/s':>12}  status"]
    for p, e in res["peers"].items():
        lines.append(f"{p:<21}{_fmt(e['download']['median'], '15.0f')}{_fmt(e['upload']['median'], '14.0f')}"
                     f"{_fmt(e['rate']['median'], '12.0f')}  {e['status']}")
    lines.append(f"{'tunnel CPU (both ends)':<21}{'s/GB':>15}{'s/GB':>14}{'ms/req':>12}")
    for p, e in res["peers"].items():
        if p == "direct":
            continue
        lines.append(f"{p:<21}{_fmt(e['download'].get('cpu_median'), '15.2f')}"
                     f"{_fmt(e['upload'].get('cpu_median'), '14.2f')}{_fmt(e['rate'].get('cpu_median'), '12.2f')}")
    for label, r in res["ratios"].items():
        lines.append(f"ratio tng_nfq/upstream {label:<7} download {_fmt(r['download'], '.2f')}x  "
                     f"upload {_fmt(r['upload'], '.2f')}x  rate {_fmt(r['rate'], '.2f')}x")
    for label, r in res.get("cpu_ratios", {}).items():
        lines.append(f"CPU ratio (lower=cheaper) {label:<7} download {_fmt(r['download'], '.2f')}x  "
                     f"upload {_fmt(r['upload'], '.2f')}x  per request {_fmt(r['rate'], '.2f')}x")
    return "\n".join(lines)


class _Infra(Infra):
    """connrate's shared services (dev AA/AS) with the encap HTTP backend instead."""

    def __init__(self, ctx: Context, ns, need_attestation: bool, size: int):
        super().__init__(ctx, ns, need_attestation)
        self.size = size

    def start_backend(self) -> None:
        svc = self._spawn("backend", [sys.executable, "-I", str(LOAD), "serve", "--port",
                                      str(self.backend_port), "--big", str(self.size)])
        self._wait(svc, lambda: self.backend_port in ports_listening_in(svc.proc.pid, self.ns.name))


def make_peer(name: str, ctx: Context, infra: Infra) -> Peer:
    base, _, ra = name.partition(":")
    if base == "direct":
        return Direct(ctx)
    cls = {"tng_nfq": TngNfq, "upstream-tng": UpstreamTng}[base]
    ing = verify_ra(infra.as_port, infra.as_state / "ca.pem") if ra == "attest" else None
    eg = attest_ra(infra.aa_socket) if ra == "attest" else None
    return cls(ctx, ingress_ra=encap_ra(ing, "ingress"), egress_ra=encap_ra(eg, "egress"), label=f"encap-{name}")


class Suite:
    def __init__(self, args, lab, ns, ctx: Context, peers: list[str]):
        self.args, self.lab, self.ns, self.ctx, self.peers = args, lab, ns, ctx, peers
        self.size = int(args.encap_size_mb * (1 << 20))
        self.samples = {p: {k: [] for m in METRICS for k in (m, f"{m}_cpu")} for p in peers}
        self.errors: dict[str, list[str]] = {p: [] for p in peers}
        self.info: dict[str, dict] = {p: {} for p in peers}
        self.plan = schedule(peers, args.reps)
        self.foreign: set[str] = set()
        self.disabled: set[str] = set()
        self.upload_file = ctx.workdir / "upload.bin"

    def _tag(self, rep: int, name: str) -> str:
        return f"[encap rep {rep + 1}/{self.args.reps}] {name:<20}"

    def run(self) -> None:
        with open(self.upload_file, "wb") as fh:
            fh.truncate(self.size)  # sparse zeros, read from the page cache
        infra = _Infra(self.ctx, self.ns, any(p.endswith(":attest") for p in self.peers), self.size)
        try:
            try:
                infra.start()
            except PeerError as exc:
                for p in self.peers:
                    self.errors[p].append(f"shared services did not start: {exc}")
                _say(f"encap: shared services did not start: {str(exc).splitlines()[0]}")
                return
            for rep, name in self.plan:
                self.measure_peer(rep, name, infra)
        finally:
            infra.stop()
            self.upload_file.unlink(missing_ok=True)

    def measure_peer(self, rep: int, name: str, infra: Infra) -> None:
        if name in self.disabled:
            return
        self.ctx.rep = rep
        peer = make_peer(name, self.ctx, infra)
        try:
            try:
                port = peer.start(self.ns, self.ctx.ports.take(), infra.backend_port)
            except Exception as exc:  # noqa: BLE001 - disables the peer
                self.errors[name].append(f"rep {rep + 1}: start failed: {exc}")
                self.disabled.add(name)
                _say(f"{self._tag(rep, name)} FAILED to start: {str(exc).splitlines()[0]}")
                return
            self.info[name]["commands"] = peer.commands
            self.foreign.update(foreign_processes(self.ns.name))
            # warm-up + readiness: the rate client probes until one request succeeds
            # (key configuration fetched, attestation done) before its timed window
            got = {}
            pids = [p.proc.pid for p in getattr(peer, "procs", [])]
            for metric in ("rate", "download", "upload"):
                before = self._cpu(pids)
                value, error = self._measure(metric, port)
                after = self._cpu(pids)
                if value is None:
                    try:
                        peer.check()
                    except PeerError as exc:
                        error += f"; {exc}"
                    self.errors[name].append(f"rep {rep + 1} {metric}: {error}")
                    got[metric] = "FAILED"
                    continue
                self.samples[name][metric].append(value)
                if pids and before is not None and after is not None:
                    self.samples[name][f"{metric}_cpu"].append(
                        cpu_per_unit(metric, after - before, value, self.size, self.args.encap_rate_duration))
                got[metric] = f"{value:.0f}"
            _say(f"{self._tag(rep, name)} download {got['download']} MB/s, upload {got['upload']} MB/s, "
                 f"rate {got['rate']} req/s")
        finally:
            peer.stop()

    @staticmethod
    def _cpu(pids: list[int]) -> float | None:
        """CPU seconds of both tunnel ends (the rate client's warm-up counts too:
        one request next to thousands)."""
        vals = [tree_cpu_seconds(p) for p in pids]
        return None if any(v is None for v in vals) else sum(vals)

    def _measure(self, metric: str, port: int) -> tuple[float | None, str]:
        try:
            if metric == "rate":
                argv = [sys.executable, "-I", str(LOAD), "rate", "--port", str(port),
                        "--duration", f"{self.args.encap_rate_duration:g}"]
                proc = self.ns.run(argv, check=False, timeout=self.args.encap_rate_duration + 60)
                return parse_rate(proc.stdout or "")
            proc = self.ns.run(curl_argv(port, metric, self.upload_file), check=False, timeout=150)
        except subprocess.TimeoutExpired:
            return None, f"{metric} did not finish in time"
        if proc.returncode != 0:
            return None, f"curl exited {proc.returncode}: {(proc.stderr or '').strip()[:200]}"
        return parse_curl(proc.stdout or "", metric, self.size)

    def results(self) -> dict:
        res = summarize(self.peers, self.samples, self.errors, self.args.reps)
        for p in self.peers:
            res["peers"][p].update(self.info.get(p, {}))
        res["params"] = {"peers": self.peers, "reps": self.args.reps, "size_bytes": self.size,
                         "rate_duration": self.args.encap_rate_duration,
                         "download": "curl GET of /big (Content-Length), MB/s = bytes / curl time_total",
                         "upload": "curl -X POST -T file (Content-Length), MB/s = bytes / curl time_total",
                         "rate": "bench/encap_load.py rate: GET /small (100 B) back to back on one keep-alive "
                                 "connection, after one untimed warm-up request",
                         "order": [f"rep{r + 1}:{p}" for r, p in self.plan]}
        return res


def run_suite(args, lab, ns, ctx: Context, peers: list[str]) -> Suite:
    suite = Suite(args, lab, ns, ctx, peers)
    t0 = time.monotonic()
    try:
        suite.run()
    finally:
        suite.elapsed = round(time.monotonic() - t0, 1)
    return suite
