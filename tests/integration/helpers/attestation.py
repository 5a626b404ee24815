"""Attestation pieces for the lab: dev AA / dev AS / fake AS / rogue TLS peers
and a connection-logging backend, each started inside a lab namespace.

Import the `att` fixture into a test module (`from helpers.attestation import
att`); it builds on conftest's `lab` (TwoHostLab). Every process is spawned
with `lab.lab.spawn`, so the lab stops it (also when a test fails), and
every readiness wait is bounded polling of the process's own "listening" /
"ready" log line.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives import serialization

from tng_nfq.lab.netns import Namespace

HELPERS = Path(__file__).parent
BIN = Path(sys.executable).parent
WAIT = 20.0


def _json_lines(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


@dataclass
class Proc:
    """A helper process in a namespace that writes JSON lines to `log_path`."""

    name: str
    ns: Namespace
    proc: subprocess.Popen
    log_path: Path
    poll_until: Callable = field(repr=False)

    def events(self, event: str | None = None) -> list[dict]:
        return [e for e in _json_lines(self.log_path) if event is None or e.get("event") == event]

    def wait_event(self, event: str, count: int = 1, timeout: float = WAIT) -> list[dict]:
        return self.poll_until(lambda: got if len(got := self.events(event)) >= count else None,
                               f"{self.name}: {count} {event!r} line(s)", timeout, proc=self.proc)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class AA(Proc):
    path: Path = None

    @property
    def addr(self) -> str:
        return f"unix://{self.path}"

    def requests(self, method: str | None = None) -> list[dict]:
        return [e for e in self.events("aa request") if method is None or e.get("method") == method]


@dataclass
class AS(Proc):
    port: int = 0
    grpc_port: int | None = None
    state_dir: Path = None

    @property
    def ca(self) -> str:
        return str(self.state_dir / "ca.pem")

    @property
    def rest_addr(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def grpc_addr(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}/"

    def appraisals(self) -> list[dict]:
        """Tokens issued (REST and gRPC)."""
        return self.events("attestation request")

    def refusals(self) -> list[dict]:
        return self.events("attestation refused")


@dataclass
class ConnBackend(Proc):
    port: int = 0

    def accepted(self) -> list[dict]:
        return self.events("accepted")

    def closed(self) -> list[dict]:
        return self.events("closed")


class Kit:
    """Starts attestation helpers in the lab's namespaces."""

    def __init__(self, lab, sockdir: Path):
        self.lab = lab
        self.sockdir = sockdir
        self._seq = itertools.count(1)

    def _spawn(self, ns: Namespace, argv: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        path = self.lab.workdir / f"att{next(self._seq):02d}-{name}.log"
        with path.open("w") as log:
            proc = self.lab.lab.spawn(ns, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return proc, path

    # -- attestation agent ----------------------------------------------------

    def aa_path(self, name: str) -> Path:
        # unix socket paths are limited to 107 bytes: a short directory in /tmp
        return self.sockdir / f"{name}.sock"

    def start_aa(self, ns: Namespace, name: str = "aa", mode: str = "sample", wait: bool = True) -> AA:
        path = self.aa_path(name)
        argv = [sys.executable, str(HELPERS / "aa_server.py"), "--socket", str(path), "--mode", mode]
        proc, log = self._spawn(ns, argv, f"aa-{name}")
        aa = AA(name, ns, proc, log, self.lab.poll_until, path=path)
        if wait:
            aa.wait_event("listening")
        return aa

    # -- attestation service --------------------------------------------------

    def start_as(self, ns: Namespace, name: str = "as", policy: str = "trust_all", port: int = 18080,
                 grpc_port: int | None = None, state_dir: Path | None = None) -> AS:
        state = state_dir or (self.lab.workdir / f"{name}-state")
        argv = [str(BIN / "tng-nfq"), "--log-format", "json", "dev", "as", "--listen", f"127.0.0.1:{port}",
                "--policy", policy, "--state-dir", str(state)]
        if grpc_port is not None:
            argv += ["--grpc", f"127.0.0.1:{grpc_port}"]
        proc, log = self._spawn(ns, argv, f"as-{name}")
        svc = AS(name, ns, proc, log, self.lab.poll_until, port=port, grpc_port=grpc_port, state_dir=state)
        svc.wait_event("dev AS ready")
        return svc

    def start_fake_as(self, ns: Namespace, port: int, mode: str, name: str | None = None) -> Proc:
        argv = [sys.executable, str(HELPERS / "fake_as.py"), "--port", str(port), "--mode", mode]
        name = name or f"fake-as-{mode}"
        proc, log = self._spawn(ns, argv, name)
        fake = Proc(name, ns, proc, log, self.lab.poll_until)
        fake.wait_event("listening")
        return fake

    # -- backend and rogue peers ----------------------------------------------

    def start_backend(self, port: int, ns: Namespace | None = None) -> ConnBackend:
        ns = ns or self.lab.server
        argv = [sys.executable, str(HELPERS / "conn_backend.py"), "--port", str(port)]
        proc, log = self._spawn(ns, argv, f"backend-{port}")
        backend = ConnBackend(f"backend :{port}", ns, proc, log, self.lab.poll_until, port=port)
        backend.wait_event("listening")
        return backend

    def write_identity(self, name: str, cert, key) -> tuple[str, str]:
        cert_path = self.lab.workdir / f"{name}-cert.pem"
        key_path = self.lab.workdir / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(cert_path), str(key_path)

    def start_rogue_server(self, ns: Namespace, host: str, port: int, cert_path: str, key_path: str,
                           *, tls_min: str = "1.3", tls_max: str = "1.3", alpn: str = "rats-tls",
                           name: str = "rogue-server") -> Proc:
        argv = [sys.executable, str(HELPERS / "rogue_tls.py"), "server", "--host", host, "--port", str(port),
                "--cert", cert_path, "--key", key_path, "--min", tls_min, "--max", tls_max, "--alpn", alpn]
        proc, log = self._spawn(ns, argv, name)
        rogue = Proc(name, ns, proc, log, self.lab.poll_until)
        rogue.wait_event("listening")
        return rogue

    def rogue_client(self, ns: Namespace, host: str, port: int, *, tls_min: str = "1.3", tls_max: str = "1.3",
                     alpn: str = "rats-tls", cert: tuple[str, str] | None = None,
                     send: str = "SECRET-APPLICATION-BYTES\n") -> dict:
        argv = [sys.executable, str(HELPERS / "rogue_tls.py"), "client", "--host", host, "--port", str(port),
                "--min", tls_min, "--max", tls_max, "--alpn", alpn, "--send", send]
        if cert is not None:
            argv += ["--cert", cert[0], "--key", cert[1]]
        res = ns.run(argv, check=False, timeout=60)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    # -- traffic ----------------------------------------------------------------

    def exchange(self, port: int, data: bytes, ns: Namespace | None = None,
                 host: str = "127.0.0.1") -> tuple[bytes, str]:
        """Send `data`, half-close, read until the connection ends.

        Returns (reply, "eof" | "reset" | "send failed"); an open connection
        after the lab's WAIT fails the test (socket timeout)."""
        sock = self.lab.ns_connect(ns or self.lab.client, host, port)
        with sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                reply, _ = self.lab.recv_until_closed(sock)
                return reply, "send failed"
            except OSError as exc:
                # ENOTCONN: the peer reset the connection between our send and
                # our half-close (a fast refusal); nothing more can be read.
                if exc.errno != errno.ENOTCONN:
                    raise
                return b"", "send failed"
            return self.lab.recv_until_closed(sock)

    def roundtrip(self, port: int, size: int = 100_000, ns: Namespace | None = None) -> bytes:
        """One real request through the tunnel: the echo of random bytes must come back whole."""
        data = os.urandom(size)
        reply, end = self.exchange(port, data, ns)
        assert end == "eof" and reply == data, (end, len(reply), len(data))
        return data


@pytest.fixture
def att(lab):
    sockdir = Path(tempfile.mkdtemp(prefix="tngatt-", dir="/tmp"))
    try:
        yield Kit(lab, sockdir)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


# -- config pieces --------------------------------------------------------------

def ingress(listen: int, tunnel: int, ra: dict, tunnel_host: str = "198.18.0.2") -> dict:
    return {"mapping": {"in": {"host": "127.0.0.1", "port": listen},
                        "out": {"host": tunnel_host, "port": tunnel}}, **ra}


def egress(tunnel: int, backend: int, ra: dict, tunnel_host: str = "198.18.0.2") -> dict:
    return {"mapping": {"in": {"host": tunnel_host, "port": tunnel},
                        "out": {"host": "127.0.0.1", "port": backend}}, **ra}


def attest(aa: AA, **extra) -> dict:
    return {"aa_addr": aa.addr, **extra}


def verify_bg(svc: AS, grpc: bool = False, anchors: bool = True, policy_ids=("default",)) -> dict:
    cfg = {"as_addr": svc.grpc_addr if grpc else svc.rest_addr, "policy_ids": list(policy_ids)}
    if grpc:
        cfg["as_is_grpc"] = True
    if anchors:
        cfg["trusted_certs_paths"] = [svc.ca]
    return cfg


def attest_passport(aa: AA, svc: AS, grpc: bool = False, policy_ids=("default",), upstream: bool = False,
                    **extra) -> dict:
    cfg = {"model": "passport", "aa_addr": aa.addr, "as_addr": svc.grpc_addr if grpc else svc.rest_addr,
           "policy_ids": list(policy_ids), **extra}
    if grpc and upstream:
        cfg["as_type"] = "grpc"  # upstream 2.x spelling
    elif grpc:
        cfg["as_is_grpc"] = True  # the manual's spelling (ours accepts both)
    return cfg


def verify_passport(ca: str, policy_ids=("default",)) -> dict:
    return {"model": "passport", "policy_ids": list(policy_ids), "trusted_certs_paths": [ca]}


UPSTREAM_BUILTIN_VERIFY = {"as_type": "builtin", "attestation_policy": {"type": "trust_all"}}

OK_SAMPLE = {"tee_type": "sample", "policy_ids": ["default"], "status": "affirming"}
