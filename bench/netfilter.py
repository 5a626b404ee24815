"""The netfilter suite: a netfilter-captured tng-nfq tunnel next to the same tunnel in mapping mode.

Two namespaces of the benchmark's Lab (client 198.18.0.1, server 198.18.0.2,
joined by a veth pair; netfilter needs one namespace per instance):

- throughput (iperf3, 1 and 8 streams), peers
  ``direct`` (iperf3 -c 198.18.0.2 over the veth, no tunnel: the ceiling),
  ``mapping`` (client: ingress mapping 127.0.0.1:X -> 198.18.0.2:T; server:
  egress mapping 198.18.0.2:T -> 127.0.0.1:P; iperf3 -c 127.0.0.1 -p X) and
  ``netfilter`` (client: ingress netfilter capture_dst {198.18.0.2, P};
  server: egress netfilter capture_dst {port P}; iperf3 -c 198.18.0.2 -p P,
  the kernel steers it through both ends). Every netfilter run is checked in
  the egress access log: its iperf3 connections must show up there as
  ``mode netfilter, outcome ok``, otherwise the sample is rejected.
- connrate (bench/loadgen.py request/response per connection, backend in the
  server namespace), peers ``netfilter`` (classifier on, the default),
  ``netfilter-noclassifier`` (TNG_NFQ_QUEUES=0) and ``mapping``; for the
  netfilter peers the classifiers' ``flows_classified`` (admin /status) of
  both ends is read before and after each load run.
- synrate: raw SYNs from the client namespace (raw socket, one new source
  port per SYN) at a port captured by a netfilter egress in the server
  namespace; SYN-ACKs are answered by the client kernel with RST. Nothing
  but the classifier and the steering work per SYN; the classifier's
  flows_classified per second is the rate its workers sustain (queues are
  fail-open, so what they cannot take bypasses them uncounted).
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tng_nfq.lab.netns import LabError, stop_process, wait_for_log_event

from .loadgen import tree_cpu_seconds
from .connrate import LOADGEN, PROBE_TIMEOUT, REQUEST_SIZE, parse_loadgen_output
from .measure import foreign_processes, ports_listening_in, run_iperf_client, schedule, tail
from .peers import READY_TIMEOUT, PeerError, venv_tool

CLIENT_ADDR, SERVER_ADDR = "198.18.0.1", "198.18.0.2"
TP_PEERS = ("direct", "mapping", "netfilter", "netfilter-noclassifier")
CR_PEERS = ("direct", "mapping", "netfilter", "netfilter-noclassifier")
HEADLINE = ("netfilter", "mapping")
ADMIN_PORT = 9901
IPERF_PORT, BACKEND_PORT, SYN_PORT = 5201, 8080, 8081
HOP_PORT, MAP_IN_PORT = 30001, 10001
EGRESS_LISTEN, INGRESS_LISTEN, SYN_LISTEN = 40000, 40001, 40002
DEFAULTS = {"duration": 4.0, "connrate_duration": 3.0, "syn_duration": 3.0}
QUICK = {"duration": 3.0, "connrate_duration": 2.0, "syn_duration": 2.0}
SYN_RATE = 30000  # offered SYNs per second in the synrate test (paced; above what the workers take)


def _say(msg: str) -> None:
    print(msg, flush=True)


# -- configurations (pure; unit-tested) ------------------------------------------

def mapping_configs(map_in: int, hop: int, port: int) -> tuple[dict, dict]:
    """(ingress in the client ns, egress in the server ns) of the mapping tunnel."""
    ingress = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": map_in},
                                            "out": {"host": SERVER_ADDR, "port": hop}}, "no_ra": True}]}
    egress = {"add_egress": [{"mapping": {"in": {"host": SERVER_ADDR, "port": hop},
                                          "out": {"host": "127.0.0.1", "port": port}}, "no_ra": True}]}
    return ingress, egress


def netfilter_configs(port: int, admin_port: int | None = ADMIN_PORT) -> tuple[dict, dict]:
    """(ingress in the client ns, egress in the server ns) capturing SERVER_ADDR:port."""
    ingress: dict = {"add_ingress": [{"netfilter": {"capture_dst": {"host": SERVER_ADDR, "port": port},
                                                    "listen_port": INGRESS_LISTEN}, "no_ra": True}]}
    egress: dict = {"add_egress": [{"netfilter": {"capture_dst": {"port": port}, "listen_port": EGRESS_LISTEN},
                                    "no_ra": True}]}
    if admin_port is not None:
        ingress["admin_bind"] = {"host": "127.0.0.1", "port": admin_port}
        egress["admin_bind"] = {"host": "127.0.0.1", "port": admin_port}
    return ingress, egress


def count_access(text: str, mode: str = "netfilter", outcome: str | None = None) -> int:
    """Access-log lines (event "connection") of a JSON-logging tng-nfq with this mode (and outcome).

    Any outcome by default: iperf3's server resets its data connections at the end of a test,
    so the tunnel logs those as "connection reset by peer" after carrying every byte."""
    n = 0
    for line in text.splitlines():
        if '"connection"' not in line:
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "connection" and e.get("mode") == mode and outcome in (None, e.get("outcome")):
            n += 1
    return n


def classified(status: dict) -> int | None:
    """netfilter.classifier.flows_classified of an admin /status body (None: no classifier)."""
    nf = status.get("netfilter") if isinstance(status, dict) else None
    cl = nf.get("classifier") if isinstance(nf, dict) else None
    if not isinstance(cl, dict):
        return None
    value = cl.get("flows_classified")
    return value if isinstance(value, int) else None


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A 20-byte TCP SYN header with a correct checksum (for a raw IPPROTO_TCP socket)."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr))
    data = pseudo + hdr
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    csum = ~total & 0xFFFF
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:]


# the SYN sender runs inside the client namespace as `python -I -c SYN_SENDER dst port rate duration`
SYN_SENDER = r"""
import socket, struct, sys, time, json
dst, dport, rate, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
src = sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
def syn(sport, seq):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 80, 2, 64240, 0, 0)
    t = sum(struct.unpack("!16H", pseudo + hdr))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return hdr[:16] + struct.pack("!H", ~t & 0xFFFF) + hdr[18:]
sent = 0; errors = 0; sport = 20000
start = time.monotonic(); end = start + duration
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - start) * rate) - sent
    if due <= 0:
        time.sleep(0.0005)
        continue
    for _ in range(min(due, 200)):
        sport = sport + 1 if sport < 65000 else 20000
        try:
            s.sendto(syn(sport, sent * 7919 & 0xFFFFFFFF), (dst, 0))
            sent += 1
        except OSError:
            errors += 1
print(json.dumps({"sent": sent, "errors": errors, "elapsed": time.monotonic() - start}))
"""


# -- processes -------------------------------------------------------------------

class Gateway:
    """One `tng-nfq --log-format json launch` in a namespace, ready when it logs "ready"."""

    def __init__(self, lab, ns, config: dict, log: Path, env: dict | None = None):
        self.ns, self.log, self.config = ns, log, config
        self.argv = [venv_tool("tng-nfq") or "tng-nfq", "--log-format", "json", "launch",
                     "--config-content", json.dumps(config)]
        self._fh = open(log, "w")
        full_env = {**os.environ, **env} if env else None
        self.proc = lab.spawn(ns, self.argv, stdin=subprocess.DEVNULL, stdout=self._fh,
                              stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self) -> None:
        try:
            wait_for_log_event(self.log, "ready", self.proc, timeout=READY_TIMEOUT)
        except LabError as exc:
            raise PeerError(str(exc)) from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self._fh.close()


def admin_status(ns, port: int = ADMIN_PORT) -> dict:
    """GET /status of the admin API inside `ns` (a short-lived Python in the namespace)."""
    script = ("import sys,urllib.request\n"
              f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/status',timeout=3).read().decode())")
    proc = ns.run([sys.executable, "-I", "-c", script], check=False, timeout=10)
    if proc.returncode != 0:
        raise PeerError(f"admin /status in {ns.name}: {(proc.stderr or '').strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


class NfPeer:
    """One peer of the suite: 0 or 2 gateways; `target` is where clients connect."""

    def __init__(self, name: str, suite: "Suite", port: int):
        self.name, self.suite, self.port = name, suite, port
        self.gateways: dict[str, Gateway] = {}
        self.commands: dict[str, list[str]] = {}

    def start(self) -> tuple[str, int]:
        s = self.suite
        rep = s.rep + 1
        if self.name == "direct":
            return SERVER_ADDR, self.port
        env = None
        if self.name == "mapping":
            ingress, egress = mapping_configs(MAP_IN_PORT, HOP_PORT, self.port)
        else:
            ingress, egress = netfilter_configs(self.port)
            if self.name == "netfilter-noclassifier":
                env = {"TNG_NFQ_QUEUES": "0"}
        env = {**s.nfq_env, **(env or {})} or None
        tag = f"{s.stage}-{self.name}-rep{rep}"
        self.gateways["egress"] = Gateway(s.lab, s.server, egress, s.logdir / f"{tag}-egress.log", env)
        self.gateways["egress"].wait_ready()
        self.gateways["ingress"] = Gateway(s.lab, s.client, ingress, s.logdir / f"{tag}-ingress.log", env)
        self.gateways["ingress"].wait_ready()
        self.commands = {role: g.argv for role, g in self.gateways.items()}
        if env:
            self.commands["environment"] = [f"{k}={v}" for k, v in env.items()]
        if self.name == "mapping":
            return "127.0.0.1", MAP_IN_PORT
        return SERVER_ADDR, self.port

    def check(self) -> None:
        for role, g in self.gateways.items():
            if not g.alive():
                raise PeerError(f"{self.name} {role} exited with {g.proc.returncode}: {tail(g.log, 3)}")

    def cpu_seconds(self) -> float | None:
        """CPU seconds so far of both gateways and their children (classifier workers)."""
        if not self.gateways:
            return None
        vals = [tree_cpu_seconds(g.proc.pid) for g in self.gateways.values()]
        return None if any(v is None for v in vals) else sum(vals)

    def egress_ok(self) -> int:
        g = self.gateways.get("egress")
        mode = "mapping" if self.name == "mapping" else "netfilter"
        return count_access(g.text(), mode) if g else 0

    def stop(self) -> None:
        for g in reversed(list(self.gateways.values())):
            g.stop()
        self.gateways.clear()


class Suite:
    def __init__(self, args, lab, logdir: Path, nfq_env: dict):
        logdir.mkdir(parents=True, exist_ok=True)
        self.args, self.lab, self.logdir, self.nfq_env = args, lab, logdir, dict(nfq_env)
        self.rep = 0
        self.stage = "tp"
        self.client = lab.add("nfc")
        self.server = lab.add("nfs")
        lab.link(self.client, f"{CLIENT_ADDR}/24", self.server, f"{SERVER_ADDR}/24")
        self.services: list[tuple[subprocess.Popen, object]] = []
        self.foreign: set[str] = set()
        self.tp = {p: {s: [] for s in args.streams} for p in TP_PEERS}
        self.tp_errors: dict[str, list[str]] = {p: [] for p in TP_PEERS}
        # CPU seconds of both gateways (with their classifier workers) per GB carried, per test
        self.tp_cpu: dict[str, dict[int, list[float]]] = {p: {s: [] for s in args.streams} for p in TP_PEERS}
        self.cr: dict[str, list[dict]] = {p: [] for p in CR_PEERS}
        self.cr_errors: dict[str, list[str]] = {p: [] for p in CR_PEERS}
        self.info: dict[str, dict] = {}
        self.verified: dict[str, dict] = {}
        self.syn: list[dict] = []
        self.syn_errors: list[str] = []
        self.disabled: set[str] = set()

    def _note_foreign(self) -> None:
        """Benchmark-like processes outside both of our namespaces (other people's runs)."""
        self.foreign.update(foreign_processes(self.client.name) & foreign_processes(self.server.name))

    def _service(self, ns, name: str, argv: list[str], port: int) -> subprocess.Popen:
        fh = open(self.logdir / f"{name}.log", "a")
        proc = self.lab.spawn(ns, argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        self.services.append((proc, fh))
        deadline = time.monotonic() + READY_TIMEOUT
        while port not in ports_listening_in(proc.pid, ns.name):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"{name} did not start: {tail(self.logdir / f'{name}.log', 3)}")
            time.sleep(0.05)
        return proc

    def start_services(self) -> None:
        self.iperf = self._service(self.server, "iperf3-server", ["iperf3", "-s", "-p", str(IPERF_PORT)],
                                   IPERF_PORT)
        self._service(self.server, "backend", [sys.executable, "-I", str(LOADGEN), "serve", "--host", "0.0.0.0",
                                               "--port", str(BACKEND_PORT), "--size", str(REQUEST_SIZE)],
                      BACKEND_PORT)

    def restart_iperf(self) -> None:
        for i, (proc, fh) in enumerate(self.services):
            if proc is self.iperf:
                stop_process(proc)
                fh.close()
                del self.services[i]
                break
        self.iperf = self._service(self.server, "iperf3-server", ["iperf3", "-s", "-p", str(IPERF_PORT)],
                                   IPERF_PORT)

    def stop_services(self) -> None:
        for proc, fh in reversed(self.services):
            stop_process(proc)
            fh.close()
        self.services.clear()

    # -- throughput ----------------------------------------------------------------

    def throughput(self, rep: int, name: str) -> None:
        key = f"tp:{name}"
        if key in self.disabled:
            return
        self.rep, self.stage = rep, "tp"
        peer = NfPeer(name, self, IPERF_PORT)
        try:
            try:
                host, port = peer.start()
            except Exception as exc:  # noqa: BLE001
                self.tp_errors[name].append(f"rep {rep + 1}: start failed: {exc}")
                self.disabled.add(key)
                _say(f"[netfilter rep {rep + 1}] {name:<10} FAILED to start: {str(exc).splitlines()[0]}")
                return
            self.info.setdefault(name, {})["commands"] = peer.commands
            for s in self.args.streams:
                self._note_foreign()
                before = peer.egress_ok()
                sample = None
                for attempt in (1, 2):
                    try:
                        peer.check()
                    except PeerError as exc:
                        self.tp_errors[name].append(f"rep {rep + 1}, {s} streams: {exc}")
                        break
                    cpu0 = peer.cpu_seconds()
                    sample = run_iperf_client_to(self.client, host, port, self.args.nf_duration, s)
                    cpu1 = peer.cpu_seconds()
                    if sample.bps is not None:
                        break
                    self.tp_errors[name].append(f"rep {rep + 1}, {s} streams, attempt {attempt}: {sample.error}")
                    self.restart_iperf()
                    sample = None
                if sample is None:
                    _say(f"[netfilter rep {rep + 1}] {name:<10} {s:>2} stream(s): FAILED")
                    continue
                through = None
                if name.startswith("netfilter"):
                    # iperf3 opens 1 control + s data connections: all must be in the egress access log
                    deadline = time.monotonic() + 3
                    while (through := peer.egress_ok() - before) < s + 1 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    self.verified.setdefault(name, {})[f"rep{rep + 1}/{s}"] = through
                    if through < s + 1:
                        self.tp_errors[name].append(
                            f"rep {rep + 1}, {s} streams: only {through} of {s + 1} iperf3 connections in the "
                            "egress access log (not through the tunnel): sample rejected")
                        _say(f"[netfilter rep {rep + 1}] {name:<10} {s:>2} stream(s): NOT THROUGH THE TUNNEL")
                        continue
                self.tp[name][s].append(sample.bps)
                if cpu0 is not None and cpu1 is not None and sample.bps:
                    gb = sample.bps * self.args.nf_duration / 8 / 1e9
                    self.tp_cpu[name][s].append(round((cpu1 - cpu0) / gb, 4))
                _say(f"[netfilter rep {rep + 1}] {name:<10} {s:>2} stream(s): {sample.bps / 1e9:7.2f} Gbit/s"
                     + (f"  ({through} tunnel connections in the egress log)" if through is not None else ""))
        finally:
            peer.stop()

    # -- connection rate -------------------------------------------------------------

    def connrate(self, rep: int, name: str) -> None:
        key = f"cr:{name}"
        if key in self.disabled:
            return
        self.rep, self.stage = rep, "cr"
        peer = NfPeer(name, self, BACKEND_PORT)
        try:
            try:
                host, port = peer.start()
            except Exception as exc:  # noqa: BLE001
                self.cr_errors[name].append(f"rep {rep + 1}: start failed: {exc}")
                self.disabled.add(key)
                _say(f"[netfilter connrate rep {rep + 1}] {name:<22} FAILED to start: {str(exc).splitlines()[0]}")
                return
            self.info.setdefault(f"connrate:{name}", {})["commands"] = peer.commands
            self._note_foreign()
            flows_before = self._flows(peer)
            ok_before = peer.egress_ok()
            watch = {role: g.proc.pid for role, g in peer.gateways.items()}
            argv = [sys.executable, "-I", str(LOADGEN), "run", "--host", host, "--port", str(port),
                    "--concurrency", str(self.args.concurrency), "--duration", f"{self.args.nf_connrate_duration:g}",
                    "--size", str(REQUEST_SIZE), "--probe-timeout", f"{PROBE_TIMEOUT:g}"]
            if watch:
                argv += ["--watch", ",".join(f"{k}={v}" for k, v in watch.items())]
            budget = PROBE_TIMEOUT + self.args.nf_connrate_duration + 30
            try:
                proc = self.client.run(argv, check=False, timeout=budget)
            except subprocess.TimeoutExpired:
                self.cr_errors[name].append(f"rep {rep + 1}: load generator did not finish within {budget:.0f}s")
                return
            sample, error = parse_loadgen_output(proc.stdout or "", proc.returncode, proc.stderr or "")
            if sample is None:
                self.cr_errors[name].append(f"rep {rep + 1}: {error}")
                _say(f"[netfilter connrate rep {rep + 1}] {name:<22} FAILED: {error}")
                return
            time.sleep(0.3)  # let the last access-log lines and flow reports land
            flows_after = self._flows(peer)
            sample["rep"] = rep + 1
            # every exchange the generator made (probes, timed, after-window, failed) is a connection
            sample["connections_total"] = (sample.get("ok", 0) + sample.get("late", 0) + sample.get("failed", 0)
                                           + sample.get("probe", {}).get("attempts", 0))
            sample["flows_classified"] = {r: (flows_after[r] - flows_before[r])
                                          if flows_after.get(r) is not None and flows_before.get(r) is not None
                                          else None for r in flows_after}
            sample["egress_tunnel_ok"] = peer.egress_ok() - ok_before if name != "direct" else None
            self.cr[name].append(sample)
            fl = sample["flows_classified"]
            _say(f"[netfilter connrate rep {rep + 1}] {name:<22} {sample['conn_per_s']:8.0f} conn/s  "
                 f"failed {sample['failed']}"
                 + (f", egress tunnel connections {sample['egress_tunnel_ok']}" if sample["egress_tunnel_ok"]
                    is not None else "")
                 + (f", classified ingress {fl.get('ingress')} egress {fl.get('egress')}" if fl else ""))
        finally:
            peer.stop()

    def _flows(self, peer: NfPeer) -> dict[str, int | None]:
        if not peer.name.startswith("netfilter"):
            return {}
        out = {}
        for role, ns in (("ingress", self.client), ("egress", self.server)):
            try:
                out[role] = classified(admin_status(ns))
            except Exception:  # noqa: BLE001 - recorded as unknown
                out[role] = None
        return out

    # -- raw SYN rate -----------------------------------------------------------------

    def synrate(self, rep: int) -> None:
        """Paced raw SYNs against a port captured by an egress with only classifier + steering working."""
        self.rep, self.stage = rep, "syn"
        _, egress = netfilter_configs(SYN_PORT)
        egress["add_egress"][0]["netfilter"]["listen_port"] = SYN_LISTEN
        g = Gateway(self.lab, self.server, egress, self.logdir / f"syn-egress-rep{rep + 1}.log",
                    self.nfq_env or None)
        try:
            g.wait_ready()
            self.info.setdefault("synrate", {})["commands"] = {"egress": g.argv}
            before = classified(admin_status(self.server))
            t0 = time.monotonic()
            proc = self.client.run([sys.executable, "-I", "-c", SYN_SENDER, SERVER_ADDR, str(SYN_PORT),
                                    str(SYN_RATE), f"{self.args.nf_syn_duration:g}", CLIENT_ADDR],
                                   check=False, timeout=self.args.nf_syn_duration + 30)
            sent_doc = json.loads((proc.stdout or "{}").strip().splitlines()[-1] or "{}") if proc.stdout else {}
            time.sleep(0.5)  # queued SYNs drain
            after = classified(admin_status(self.server))
            elapsed = sent_doc.get("elapsed") or (time.monotonic() - t0)
            if before is None or after is None or not sent_doc.get("sent"):
                raise PeerError(f"no count (before {before}, after {after}, sender {proc.returncode}: "
                                f"{(proc.stderr or '').strip()[-200:]})")
            sample = {"rep": rep + 1, "offered_syn_per_s": SYN_RATE, "sent": sent_doc["sent"],
                      "send_errors": sent_doc.get("errors", 0), "elapsed_s": round(elapsed, 3),
                      "sent_per_s": round(sent_doc["sent"] / elapsed, 1),
                      "classified": after - before, "classified_per_s": round((after - before) / elapsed, 1)}
            self.syn.append(sample)
            _say(f"[netfilter synrate rep {rep + 1}] sent {sample['sent_per_s']:.0f} SYN/s, classified "
                 f"{sample['classified_per_s']:.0f} flows/s ({sample['classified']} of {sample['sent']})")
        except Exception as exc:  # noqa: BLE001
            self.syn_errors.append(f"rep {rep + 1}: {exc}")
            _say(f"[netfilter synrate rep {rep + 1}] FAILED: {str(exc).splitlines()[0]}")
        finally:
            g.stop()


def run_iperf_client_to(ns, host: str, port: int, duration: float, streams: int):
    """measure.run_iperf_client, but to any host (it always targets 127.0.0.1)."""
    if host == "127.0.0.1":
        return run_iperf_client(ns, port, duration, streams)
    from .measure import Sample, parse_iperf_json

    argv = ["iperf3", "-c", host, "-p", str(port), "-t", f"{duration:g}", "-P", str(streams), "-J"]
    try:
        proc = ns.run(argv, check=False, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return Sample(None, f"iperf3 client did not finish within {duration + 30:g}s")
    sample = parse_iperf_json(proc.stdout)
    if sample.bps is None and not sample.error:
        return Sample(None, f"iperf3 exited {proc.returncode}: {(proc.stderr or '').strip()[-200:]}")
    return sample


def _median(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def summarize(suite_or_state) -> dict:
    """The results.json `netfilter` section from a finished Suite."""
    s = suite_or_state
    tp = {}
    for p in TP_PEERS:
        tp[p] = {"description": {"direct": "iperf3 client ns -> server ns over the veth, no tunnel",
                                 "mapping": "tng-nfq ingress mapping (client ns) -> egress mapping (server ns), no_ra",
                                 "netfilter": "tng-nfq ingress netfilter capture_dst {198.18.0.2, P} (client ns) "
                                              "-> egress netfilter capture_dst {P} (server ns), no_ra",
                                 "netfilter-noclassifier": "the netfilter pair with TNG_NFQ_QUEUES=0 (no classifier "
                                                           "queues, no raw/mangle classifier rules)"}[p],
                 "streams": {}, "errors": s.tp_errors[p], **s.info.get(p, {})}
        for n, vals in s.tp[p].items():
            cpu = getattr(s, "tp_cpu", {}).get(p, {}).get(n, [])
            tp[p]["streams"][str(n)] = {"samples_bps": vals, "median_bps": _median(vals),
                                        "samples_tunnel_cpu_s_per_gb": cpu,
                                        "median_tunnel_cpu_s_per_gb": _median(cpu),
                                        "min_bps": min(vals) if vals else None,
                                        "max_bps": max(vals) if vals else None,
                                        "status": "ok" if len(vals) == s.args.reps and not s.tp_errors[p]
                                        else ("failed" if not vals else "partial")}
    ratios: dict = {"netfilter_vs_mapping": {}, "vs_direct": {}}
    for n in s.args.streams:
        num = tp["netfilter"]["streams"][str(n)]["median_bps"]
        den = tp["mapping"]["streams"][str(n)]["median_bps"]
        ratios["netfilter_vs_mapping"][str(n)] = round(num / den, 3) if num and den else None
        d = tp["direct"]["streams"][str(n)]["median_bps"]
        ratios["vs_direct"][str(n)] = {p: (round(tp[p]["streams"][str(n)]["median_bps"] / d, 3)
                                           if d and tp[p]["streams"][str(n)]["median_bps"] else None)
                                       for p in TP_PEERS}
    cr = {}
    for p in CR_PEERS:
        samples = s.cr[p]
        cps = [x["conn_per_s"] for x in samples]
        flows = {}
        for role in ("ingress", "egress"):
            vals = [x.get("flows_classified", {}).get(role) for x in samples]
            if any(v is not None for v in vals):
                flows[role] = vals
        cr[p] = {"samples_conn_per_s": cps, "median_conn_per_s": _median(cps),
                 "min_conn_per_s": min(cps) if cps else None, "max_conn_per_s": max(cps) if cps else None,
                 "connections_per_rep": [x.get("connections_total") for x in samples],
                 "failed_exchanges": [x.get("failed") for x in samples],
                 "egress_tunnel_connections_per_rep": [x.get("egress_tunnel_ok") for x in samples],
                 "flows_classified_per_rep": flows,
                 "median_cpu_ms_per_conn": _cpu_ms(samples),
                 "errors": s.cr_errors[p], **s.info.get(f"connrate:{p}", {}), "samples": samples}
    on, off = cr["netfilter"]["median_conn_per_s"], cr["netfilter-noclassifier"]["median_conn_per_s"]
    mp = cr["mapping"]["median_conn_per_s"]
    cr_ratios = {"classifier_on_vs_off": round(on / off, 3) if on and off else None,
                 "netfilter_vs_mapping": round(on / mp, 3) if on and mp else None}
    syn_rates = [x["classified_per_s"] for x in s.syn]
    return {"throughput": {"peers": tp, "ratios": ratios, "headline": ratios["netfilter_vs_mapping"],
                           "tunnel_check": s.verified},
            "connrate": {"peers": cr, "ratios": cr_ratios},
            "synrate": {"samples": s.syn, "errors": s.syn_errors,
                        "median_classified_per_s": _median(syn_rates), "offered_syn_per_s": SYN_RATE,
                        "sender": "python raw socket in the client ns, paced, one new source port per SYN",
                        **s.info.get("synrate", {})},
            "foreign_processes_seen": sorted(s.foreign)}


def _cpu_ms(samples: list[dict]) -> dict:
    out = {}
    for role in ("ingress", "egress"):
        vals = []
        for x in samples:
            cpu_s = (x.get("cpu", {}).get("procs_cpu_s") or {}).get(role)
            if cpu_s is not None and x.get("ok"):
                vals.append(round(1e3 * cpu_s / x["ok"], 3))
        m = _median(vals)
        if m is not None:
            out[role] = m
    return out


def run_suite(args, lab, logdir: Path, nfq_env: dict, suite: "Suite | None" = None) -> "Suite":
    """Create the two namespaces, run throughput, connrate and synrate; the Lab removes everything."""
    suite = suite or Suite(args, lab, logdir, nfq_env)
    try:
        suite.start_services()
        for rep, name in schedule(list(TP_PEERS), args.reps):
            suite.throughput(rep, name)
        for rep, name in schedule(list(CR_PEERS), args.reps):
            suite.connrate(rep, name)
        for rep in range(args.reps):
            suite.synrate(rep)
    finally:
        suite.stop_services()
    return suite


# -- report ---------------------------------------------------------------------------

def _g(bps):
    return "-" if bps is None else f"{bps / 1e9:.2f}"


def format_table(res: dict) -> str:
    tp, cr, syn = res["throughput"], res["connrate"], res["synrate"]
    streams = list(next(iter(tp["peers"].values()))["streams"]) if tp["peers"] else []
    lines = ["netfilter suite: throughput (client ns -> server ns over a veth), median Gbit/s [min-max], "
             "tunnel CPU s per GB (both gateways + classifier workers)",
             f"{'peer':<24}" + "".join(f"{s + ' stream(s)':>36}" for s in streams)]
    for p, d in tp["peers"].items():
        cells = []
        for s in streams:
            st = d["streams"][s]
            cpu = st.get("median_tunnel_cpu_s_per_gb")
            cells.append(f"{_g(st['median_bps'])} [{_g(st['min_bps'])}-{_g(st['max_bps'])}]"
                         + (f" {cpu:.2f}s/GB" if cpu is not None else "") + f" {st['status']}")
        lines.append(f"{p:<24}" + "".join(f"{c:>36}" for c in cells))
    lines.append("netfilter / mapping: " + ", ".join(
        f"{s} stream(s) {'-' if r is None else f'{r:.3f}x'}" for s, r in tp["headline"].items()))
    lines += ["", "netfilter suite: connections per second (100-byte request/response each)",
              f"{'peer':<24}{'median':>9}{'min':>8}{'max':>8}  {'CPU ms/conn in/eg':>18}  classified in/eg per rep"]
    for p, d in cr["peers"].items():
        cpu = d.get("median_cpu_ms_per_conn") or {}
        cpu_s = f"{cpu.get('ingress', '-')}/{cpu.get('egress', '-')}" if cpu else "-"
        fl = d.get("flows_classified_per_rep") or {}
        fl_s = " ".join(f"{a}/{b}" for a, b in zip(fl.get("ingress", []), fl.get("egress", []))) or "-"
        conns = d.get("connections_per_rep") or []
        if fl and conns:
            fl_s += f" (connections {' '.join(str(c) for c in conns)})"
        nums = [("-" if v is None else f"{v:.0f}") for v in
                (d["median_conn_per_s"], d["min_conn_per_s"], d["max_conn_per_s"])]
        lines.append(f"{p:<24}{nums[0]:>9}{nums[1]:>8}{nums[2]:>8}  {cpu_s:>18}  {fl_s}")
    r = cr["ratios"]
    lines.append(f"classifier on / off: {r['classifier_on_vs_off']}x; netfilter / mapping: {r['netfilter_vs_mapping']}x")
    lines += ["", "netfilter suite: raw SYNs at a captured port (classifier + steering only)"]
    for x in syn["samples"]:
        lines.append(f"  rep {x['rep']}: sent {x['sent_per_s']:.0f} SYN/s, classified {x['classified_per_s']:.0f} "
                     f"flows/s ({x['classified']} of {x['sent']})")
    lines.append(f"  median classified flows/s: {syn['median_classified_per_s']}")
    for err in syn["errors"]:
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Left: throughput bars (peers x streams); right: conn/s bars and the SYN rate as text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp, cr, syn = res["throughput"], res["connrate"], res["synrate"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.2, 1]})
    peers = list(tp["peers"])
    streams = list(next(iter(tp["peers"].values()))["streams"]) if peers else []
    width = 0.8 / max(1, len(streams))
    top = 1.0
    for j, s in enumerate(streams):
        for i, p in enumerate(peers):
            st = tp["peers"][p]["streams"][s]
            if st["median_bps"] is None:
                a1.text(i, 0, "failed", ha="center", color="firebrick")
                continue
            med = st["median_bps"] / 1e9
            x = i - 0.4 + width * (j + 0.5)
            a1.bar(x, med, width * 0.92, yerr=[[med - st["min_bps"] / 1e9], [st["max_bps"] / 1e9 - med]],
                   capsize=3, color=f"C{j}", label=f"{s} stream(s)" if i == 0 else None)
            label = f"{med:.2f}"
            if p == "netfilter" and tp["headline"].get(s) is not None:
                label += f"\n{tp['headline'][s]:.2f}x\nmapping"
            a1.annotate(label, (x, st["max_bps"] / 1e9), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
            top = max(top, st["max_bps"] / 1e9)
    a1.set_xticks(range(len(peers)), [p.replace("netfilter-noclassifier", "netfilter\n(no classifier)")
                                      for p in peers])
    a1.set_ylim(0, top * 1.3)
    a1.set_ylabel("median throughput (Gbit/s), whiskers min..max")
    a1.set_title("iperf3, client ns -> server ns over a veth", fontsize=10)
    a1.legend(loc="upper right")
    crp = [p for p in cr["peers"] if p != "direct"]
    meds = [cr["peers"][p]["median_conn_per_s"] or 0 for p in crp]
    bars = a2.bar(range(len(crp)), meds, 0.6, color=["C2", "C3", "C4"][:len(crp)])
    for b, p in zip(bars, crp):
        fl = cr["peers"][p].get("flows_classified_per_rep") or {}
        extra = ""
        if fl.get("egress"):
            extra = f"\nclassified/rep {fl['egress']}"
        a2.annotate(f"{b.get_height():.0f}{extra}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    a2.set_xticks(range(len(crp)), [p.replace("netfilter-noclassifier", "netfilter\n(TNG_NFQ_QUEUES=0)")
                                    for p in crp])
    a2.set_ylim(0, max(meds + [1]) * 1.4)
    a2.set_ylabel("median conn/s (100 B request/response)")
    d = cr["peers"].get("direct", {}).get("median_conn_per_s")
    a2.set_title(f"connection rate (direct over the veth: {d:.0f} conn/s)" if d else "connection rate",
                 fontsize=10)
    rate = syn["median_classified_per_s"]
    a2.text(0.02, 0.97, f"raw SYNs, classifier + steering only: {'-' if rate is None else f'{rate:.0f}'} flows/s "
                        f"classified (offered {syn['offered_syn_per_s']}/s)",
            transform=a2.transAxes, ha="left", va="top", fontsize=8.5)
    fig.suptitle("tng-nfq netfilter capture vs mapping, no_ra: " + ", ".join(
        f"{s} stream(s) {'-' if r is None else f'{r:.2f}x'}" for s, r in tp["headline"].items()),
        fontsize=11, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
