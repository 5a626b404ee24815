"""The things iperf3 traffic goes through, one class per peer.

Every peer has the same interface:

    port = peer.start(ns, in_port, out_port)   # iperf3 client connects to 127.0.0.1:port
    peer.check()                               # raises PeerError if a process died
    peer.stop()

`out_port` is where the iperf3 server listens, `in_port` is where a tunnel's
client side should listen. Extra ports (the hop between the two tunnel ends,
control interfaces) come from the shared `Ports` allocator so that a restart
never reuses a port with sockets still in TIME_WAIT.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tng_nfq.lab.netns import Lab, Namespace, stop_process

from .measure import LOG_SECTION_MARK, ports_listening_in, tail

READY_TIMEOUT = 20.0


class PeerError(RuntimeError):
    """A peer could not be started or died."""


class Ports:
    """Hands out fresh loopback ports inside the private namespace."""

    def __init__(self, first: int = 20000):
        self._next = first

    def take(self) -> int:
        port = self._next
        self._next += 1
        return port


@dataclass
class Context:
    lab: Lab
    workdir: Path  # private temp dir (keys, config files)
    logdir: Path   # kept with the results
    ports: Ports
    rep: int = 0
    # extra environment for tng-nfq processes only (what-if experiments: OPENSSL_CONF, MALLOC_*)
    nfq_env: dict[str, str] = field(default_factory=dict)


def venv_tool(name: str) -> str | None:
    """A console script of this venv (tng, tng-nfq), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


@dataclass
class _Proc:
    role: str
    proc: subprocess.Popen
    log: Path
    fh: IO


class Peer:
    name = "?"
    description = ""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.procs: list[_Proc] = []
        self.commands: dict[str, list[str]] = {}
        self.ns: Namespace | None = None

    # -- interface ---------------------------------------------------------
    def start(self, ns: Namespace, in_port: int, out_port: int) -> int:
        raise NotImplementedError

    def check(self) -> None:
        for p in self.procs:
            if p.proc.poll() is not None:
                raise PeerError(self._died(p))

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p.proc)
            p.fh.close()
        self.procs.clear()

    # -- helpers -----------------------------------------------------------
    def _spawn(self, role: str, argv: list[str]) -> _Proc:
        assert self.ns is not None
        log = self.ctx.logdir / f"{self.name}-{role}.log"
        fh = open(log, "a")
        fh.write(f"\n{LOG_SECTION_MARK}rep {self.ctx.rep + 1} {dt.datetime.now(dt.timezone.utc).isoformat()} "
                 f"{' '.join(argv)}\n")
        fh.flush()
        extra = {}
        if self.ctx.nfq_env and Path(argv[0]).name == "tng-nfq":
            extra["env"] = {**os.environ, **self.ctx.nfq_env}
            fh.write(f"extra environment: {self.ctx.nfq_env}\n")
            fh.flush()
        proc = self.ctx.lab.spawn(self.ns, argv, stdin=subprocess.DEVNULL, stdout=fh,
                                  stderr=subprocess.STDOUT, **extra)
        entry = _Proc(role, proc, log, fh)
        self.procs.append(entry)
        self.commands[role] = list(argv)
        return entry

    def _died(self, p: _Proc) -> str:
        """One line with the exit code and the last thing the process said, then the log tail."""
        last = tail(p.log, 8)
        final = last.splitlines()[-1] if last else "no output"
        msg = f"{self.name} {p.role} exited with code {p.proc.returncode}: {final}"
        return msg + (f"\n[{p.log.name}]\n{last}" if last else "")

    def _wait_listening(self, ports: dict[int, _Proc], extra=None, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every port is in LISTEN state in the namespace (no probe connection made).

        `extra` is an optional callable returning True once some additional readiness
        condition (e.g. an HTTP /readyz) holds.
        """
        assert self.ns is not None
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            pid = self.procs[0].proc.pid
            listening = ports_listening_in(pid, self.ns.name)
            missing = sorted(set(ports) - listening)
            if not missing and (extra is None or extra()):
                return
            if time.monotonic() > deadline:
                what = (f"ports {missing} not listening" if missing else "/readyz not 200")
                logs = "\n".join(f"[{p.log.name}]\n{tail(p.log, 4)}" for p in self.procs)
                raise PeerError(f"{self.name}: {what} after {timeout:.0f}s\n{logs}")
            time.sleep(0.05)


class Direct(Peer):
    name = "direct"
    description = "iperf3 client straight to the iperf3 server on loopback, no tunnel"

    def start(self, ns, in_port, out_port):
        self.ns = ns
        return out_port

    def check(self):
        return None


class Stunnel(Peer):
    """stunnel4 client and server, TLS 1.3 only, self-signed ECDSA P-256 certificate."""

    name = "stunnel"
    description = "stunnel4 client -> stunnel4 server (TLS 1.3, self-signed P-256), two processes"

    def start(self, ns, in_port, out_port):
        self.ns = ns
        exe = shutil.which("stunnel4") or shutil.which("stunnel")
        if not exe:
            raise PeerError("stunnel4 is not installed (scripts/install-system-deps.sh installs it)")
        cert, key = self.ctx.workdir / "cert.pem", self.ctx.workdir / "key.pem"
        if not cert.exists():
            write_self_signed(cert, key)
        hop = self.ctx.ports.take()
        common = ["foreground = yes", "pid =", "debug = info",
                  "sslVersionMin = TLSv1.3", "sslVersionMax = TLSv1.3"]
        server_conf = self.ctx.workdir / f"stunnel-server-{self.ctx.rep}.conf"
        server_conf.write_text("\n".join(common + [
            "[bench]", f"accept = 127.0.0.1:{hop}", f"connect = 127.0.0.1:{out_port}",
            f"cert = {cert}", f"key = {key}"]) + "\n")
        client_conf = self.ctx.workdir / f"stunnel-client-{self.ctx.rep}.conf"
        client_conf.write_text("\n".join(common + [
            "[bench]", "client = yes", f"accept = 127.0.0.1:{in_port}",
            f"connect = 127.0.0.1:{hop}"]) + "\n")
        server = self._spawn("server", [exe, str(server_conf)])
        client = self._spawn("client", [exe, str(client_conf)])
        self._wait_listening({hop: server, in_port: client})
        return in_port


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A throw-away self-signed ECDSA P-256 certificate for 127.0.0.1/localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tng-nfq-bench")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


NO_RA = {"no_ra": True}


def ingress_config(in_port: int, hop: int, control_port: int | None = None, ra: dict | None = None) -> dict:
    """`ra` is the remote-attestation part of the entry: {"no_ra": true} (default) or {"verify": {...}}."""
    cfg: dict = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": in_port},
                                              "out": {"host": "127.0.0.1", "port": hop}},
                                  **(ra or NO_RA)}]}
    if control_port is not None:
        cfg["control_interface"] = {"restful": {"host": "127.0.0.1", "port": control_port}}
    return cfg


def egress_config(hop: int, out_port: int, control_port: int | None = None, ra: dict | None = None) -> dict:
    """`ra`: {"no_ra": true} (default) or {"attest": {...}}."""
    cfg: dict = {"add_egress": [{"mapping": {"in": {"host": "127.0.0.1", "port": hop},
                                             "out": {"host": "127.0.0.1", "port": out_port}},
                                 **(ra or NO_RA)}]}
    if control_port is not None:
        cfg["control_interface"] = {"restful": {"host": "127.0.0.1", "port": control_port}}
    return cfg


class _TngLike(Peer):
    """Two instances of a TNG-compatible gateway: one ingress mapping, one egress mapping."""

    tool = "?"
    use_control_interface = False

    def __init__(self, ctx: Context, ingress_ra: dict | None = None, egress_ra: dict | None = None,
                 label: str | None = None):
        """`ingress_ra`/`egress_ra`: the remote-attestation part of each config (default no_ra);
        `label` names this variant in logs and results (default: the peer name)."""
        super().__init__(ctx)
        self.ingress_ra, self.egress_ra = ingress_ra, egress_ra
        if label:
            self.name = label

    def start(self, ns, in_port, out_port):
        self.ns = ns
        exe = venv_tool(self.tool)
        if not exe:
            raise PeerError(f"{self.tool} not found next to {sys.executable} nor on PATH")
        hop = self.ctx.ports.take()
        ctl_in = ctl_eg = None
        if self.use_control_interface:
            ctl_in, ctl_eg = self.ctx.ports.take(), self.ctx.ports.take()
        egress = self._spawn("egress", [exe, "launch", "--config-content",
                                        json.dumps(egress_config(hop, out_port, ctl_eg, self.egress_ra))])
        ingress = self._spawn("ingress", [exe, "launch", "--config-content",
                                          json.dumps(ingress_config(in_port, hop, ctl_in, self.ingress_ra))])
        ports = {hop: egress, in_port: ingress}
        extra = None
        if self.use_control_interface:
            ports.update({ctl_eg: egress, ctl_in: ingress})
            extra = lambda: all(self._readyz(p) for p in (ctl_eg, ctl_in))  # noqa: E731
        self._wait_listening(ports, extra)
        return in_port

    def _readyz(self, port: int) -> bool:
        """GET /readyz inside the namespace (a short-lived Python in the namespace)."""
        assert self.ns is not None
        script = ("import sys,urllib.request\n"
                  "try:\n"
                  f"  r=urllib.request.urlopen('http://127.0.0.1:{port}/readyz',timeout=1)\n"
                  "  sys.exit(0 if r.status==200 else 1)\n"
                  "except Exception:\n"
                  "  sys.exit(1)\n")
        try:
            return self.ns.run([sys.executable, "-c", script], check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False


class UpstreamTng(_TngLike):
    name = "upstream-tng"
    description = "upstream tng 2.12 (tng-sdk wheel): ingress instance -> egress instance, no_ra"
    tool = "tng"
    use_control_interface = True


class TngNfq(_TngLike):
    name = "tng_nfq"
    description = "tng-nfq launch (this project): ingress instance -> egress instance, no_ra"
    tool = "tng-nfq"
    use_control_interface = False  # readiness by listening ports only, for now


PEERS: dict[str, type[Peer]] = {cls.name: cls for cls in (Direct, Stunnel, UpstreamTng, TngNfq)}


@dataclass
class IperfServer:
    """The one iperf3 server of a run (restarted after a failed test, so it never stays wedged)."""

    ctx: Context
    ns: Namespace
    port: int
    proc: subprocess.Popen | None = None
    restarts: int = 0
    _fh: IO | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.ctx.logdir / "iperf3-server.log"
        self._fh = open(log, "a")
        self.proc = self.ctx.lab.spawn(self.ns, ["iperf3", "-s", "-p", str(self.port)],
                                       stdin=subprocess.DEVNULL, stdout=self._fh,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.port not in ports_listening_in(self.proc.pid, self.ns.name):
            if self.proc.poll() is not None:
                raise PeerError(f"iperf3 server exited with {self.proc.returncode}: {tail(log, 4)}")
            if time.monotonic() > deadline:
                raise PeerError(f"iperf3 server not listening on {self.port}: {tail(log, 4)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()
