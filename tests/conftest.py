"""Shared fixtures: root gate, two-namespace lab, gateways, backends, clients.

Everything a test starts lives inside network namespaces the `lab` fixture
creates and removes (also when the test fails): the host's own network never
sees a listener, client, rule or packet of the tests. The test process
itself talks to the namespaces through sockets created inside them (`setns`
on the calling thread only, switched back at once), so a test can drive a
connection byte by byte — half-close, resets, open connections across a
SIGTERM — without a helper process.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tng_nfq.lab.capture import WireReport, _packets, analyze_pcap, capture
from tng_nfq.lab.netns import (
    Lab,
    Namespace,
    existing_namespaces,
    stop_process,
    wait_for_log_event,
    wait_for_port,
)

CLIENT_ADDR = "198.18.0.1"
SERVER_ADDR = "198.18.0.2"
WAIT = 20.0  # upper bound for anything the tests wait for (never asserted as a duration)
BULK_SIZE = 10 * 1024 * 1024
HELPERS = Path(__file__).parent / "integration" / "helpers"
BIN = Path(sys.executable).parent


def _console_script(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not installed (pip install -e '.[test]')")
    return found


def is_root() -> bool:
    return os.geteuid() == 0


# -- root gate ---------------------------------------------------------------

@pytest.fixture
def require_root() -> None:
    if not is_root():
        pytest.skip("needs root: creates network namespaces (CI runs these as root)")


@pytest.fixture(autouse=True)
def _root_marker_gate(request) -> None:
    if request.node.get_closest_marker("root") is not None and not is_root():
        pytest.skip("marked root: needs root and network namespaces (CI runs these as root)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (scripts/install-system-deps.sh)")
    return path


# -- failure reports: show the daemons' logs ---------------------------------

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# -- sockets inside a namespace -----------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def ns_socket(ns: Namespace, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that belongs to `ns` (only this thread visits the namespace, briefly)."""
    with open(f"/run/netns/{ns.name}") as target, open("/proc/thread-self/ns/net") as home:
        _setns(target.fileno())
        try:
            return socket.socket(family, kind)
        finally:
            _setns(home.fileno())


def ns_connect(ns: Namespace, host: str, port: int, timeout: float = WAIT) -> socket.socket:
    sock = ns_socket(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer's EOF (the socket's timeout bounds every wait)."""
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def recv_until_closed(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, str]:
    """Read until the connection ends; returns (data, "eof" | "reset").

    A connection that is still open after `timeout` fails the test (raises
    socket.timeout)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hello_extensions(stream: bytes) -> dict[int, bytes] | None:
    """Extensions (type -> body) of the ClientHello or ServerHello that opens
    `stream`; None when the stream does not start with one."""
    try:
        if stream[0] != 22 or stream[5] not in (1, 2):
            return None
        client = stream[5] == 1
        pos = 5 + 4 + 2 + 32  # record header, handshake header, legacy version, random
        pos += 1 + stream[pos]  # session id
        if client:
            pos += 2 + int.from_bytes(stream[pos:pos + 2], "big")  # cipher suites
            pos += 1 + stream[pos]  # compression methods
        else:
            pos += 2 + 1  # the chosen cipher suite and compression
        end = pos + 2 + int.from_bytes(stream[pos:pos + 2], "big")
        pos += 2
        extensions = {}
        while pos + 4 <= end:
            etype = int.from_bytes(stream[pos:pos + 2], "big")
            elen = int.from_bytes(stream[pos + 2:pos + 4], "big")
            extensions[etype] = stream[pos + 4:pos + 4 + elen]
            pos += 4 + elen
        return extensions
    except IndexError:
        return None


EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43


def server_hello_version(s2c: bytes) -> int | None:
    """The TLS version a server selected in its ServerHello (0x0304 = TLS 1.3).

    TLS 1.3 puts it in the supported_versions extension; the legacy field says
    TLS 1.2 (0x0303). None when `s2c` does not start with a ServerHello."""
    extensions = hello_extensions(s2c)
    if extensions is None or s2c[5] != 2:
        return None
    chosen = extensions.get(EXT_SUPPORTED_VERSIONS)
    if chosen is not None and len(chosen) == 2:
        return int.from_bytes(chosen, "big")
    return int.from_bytes(s2c[9:11], "big")


def capture_holes(pcap: Path, port: int) -> list[str]:
    """What a capture of `port` is missing: TCP sequence ranges that were sent
    (later bytes or the FIN prove it) but are not in the file, per flow and
    direction. tcpdump can drop packets when the machine is busy; a capture
    with holes cannot prove what crossed the wire, so tests repeat it."""
    flows: dict[tuple, dict] = {}
    for ip in _packets(Path(pcap)):
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        if port not in (sport, dport):
            continue
        flags = tcp[13]
        length = len(tcp) - (tcp[12] >> 4) * 4
        key = (ip[12:16], sport, ip[16:20], dport)
        d = flows.setdefault(key, {"syn": None, "fin": None, "segs": []})
        if flags & 0x02:
            d["syn"] = seq
        if flags & 0x01:
            d["fin"] = (seq + length) & 0xFFFFFFFF
        if length:
            d["segs"].append((seq, length))
    holes = []
    for (src, sport, dst, dport), d in flows.items():
        name = f"{'.'.join(map(str, src))}:{sport}->{'.'.join(map(str, dst))}:{dport}"
        if d["syn"] is None:
            holes.append(f"{name}: SYN not captured")
            continue
        base = (d["syn"] + 1) & 0xFFFFFFFF
        end = 0
        for off, length in sorted(((seq - base) & 0xFFFFFFFF, length) for seq, length in d["segs"]):
            if off > end:
                holes.append(f"{name}: bytes {end}..{off} missing")
            end = max(end, off + length)
        if d["fin"] is not None and (d["fin"] - base) & 0xFFFFFFFF > end:
            holes.append(f"{name}: bytes {end}..{(d['fin'] - base) & 0xFFFFFFFF} (before the FIN) missing")
    return holes


# -- processes in the lab ----------------------------------------------------

def read_json_lines(path: Path) -> list[dict]:
    entries = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def poll_until(condition: Callable[[], object], what: str, timeout: float = WAIT,
               proc: subprocess.Popen | None = None):
    """Bounded polling: return the first truthy value of `condition()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = condition()
            if value:
                return value
            raise AssertionError(f"{what}: process exited with {proc.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g}s")
        time.sleep(0.05)


@dataclass
class Gateway:
    """One running gateway instance (ours or upstream) in a namespace."""

    impl: str  # "tng_nfq" | "upstream"
    name: str
    ns: Namespace
    proc: subprocess.Popen
    log_path: Path
    config: dict

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, event: str | None = None) -> list[dict]:
        entries = read_json_lines(self.log_path)
        return [e for e in entries if event is None or e.get("event") == event]

    def access(self) -> list[dict]:
        """Access-log lines (tng_nfq only)."""
        return self.events("connection")

    def wait_access(self, count: int = 1, where: Callable[[dict], bool] = lambda e: True,
                    timeout: float = WAIT) -> list[dict]:
        return poll_until(lambda: (lines if len(lines := [e for e in self.access() if where(e)]) >= count
                                   else None),
                          f"{self.name}: {count} access-log line(s)", timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return stop_process(self.proc, sig, timeout=15)


@dataclass
class Backend:
    ns: Namespace
    port: int
    proc: subprocess.Popen
    log_path: Path

    def reports(self) -> list[dict]:
        return [e for e in read_json_lines(self.log_path) if "cmd" in e]

    def wait_reports(self, count: int = 1) -> list[dict]:
        return poll_until(lambda: r if len(r := self.reports()) >= count else None,
                          f"backend :{self.port}: {count} report(s)", proc=self.proc)


def ingress_config(*pairs: tuple[int, int], tunnel_host: str = SERVER_ADDR) -> dict:
    """add_ingress mapping entries: (local listen port on 127.0.0.1, tunnel port on the server)."""
    return {"add_ingress": [
        {"mapping": {"in": {"host": "127.0.0.1", "port": listen},
                     "out": {"host": tunnel_host, "port": tunnel}},
         "no_ra": True}
        for listen, tunnel in pairs]}


def egress_config(*pairs: tuple[int, int], tunnel_host: str = SERVER_ADDR) -> dict:
    """add_egress mapping entries: (tunnel port on the server address, backend port on 127.0.0.1)."""
    return {"add_egress": [
        {"mapping": {"in": {"host": tunnel_host, "port": tunnel},
                     "out": {"host": "127.0.0.1", "port": backend}},
         "no_ra": True}
        for tunnel, backend in pairs]}


class TwoHostLab:
    """A client and a server namespace joined by one veth link (198.18.0.1 <-> .2)."""

    CONTROL_PORT = 51000  # upstream tng's restful control interface (readiness)
    CLIENT_ADDR = CLIENT_ADDR
    SERVER_ADDR = SERVER_ADDR
    BULK_SIZE = BULK_SIZE
    WAIT = WAIT
    # helpers for the test modules (which cannot import this conftest cleanly)
    ingress_config = staticmethod(ingress_config)
    egress_config = staticmethod(egress_config)
    recv_all = staticmethod(recv_all)
    recv_until_closed = staticmethod(recv_until_closed)
    poll_until = staticmethod(poll_until)
    sha256 = staticmethod(sha256)
    server_hello_version = staticmethod(server_hello_version)
    hello_extensions = staticmethod(hello_extensions)
    EXT_PRE_SHARED_KEY = EXT_PRE_SHARED_KEY
    ns_connect = staticmethod(ns_connect)
    capture_holes = staticmethod(capture_holes)

    def __init__(self, lab: Lab, workdir: Path):
        self.lab = lab
        self.workdir = workdir
        self.client = lab.add("client")
        self.server = lab.add("server")
        lab.link(self.client, f"{CLIENT_ADDR}/24", self.server, f"{SERVER_ADDR}/24")
        self.gateways: list[Gateway] = []
        self.backends: list[Backend] = []
        self._files = []
        self._seq = itertools.count(1)
        self._control_ports = itertools.count(self.CONTROL_PORT)

    def _log(self, name: str):
        path = self.workdir / f"{next(self._seq):02d}-{name}.log"
        handle = path.open("w")
        self._files.append(handle)
        return path, handle

    def close_files(self) -> None:
        for handle in self._files:
            handle.close()

    # -- gateways ------------------------------------------------------------

    def nfq_argv(self, config: dict) -> list[str]:
        return [_console_script("tng-nfq"), "--log-format", "json", "launch",
                "--config-content", json.dumps(config)]

    def start_nfq(self, ns: Namespace, config: dict, name: str, wait_ready: bool = True) -> Gateway:
        path, handle = self._log(f"tng_nfq-{name}")
        proc = self.lab.spawn(ns, self.nfq_argv(config), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=handle)
        gw = Gateway("tng_nfq", name, ns, proc, path, config)
        self.gateways.append(gw)
        if wait_ready:
            wait_for_log_event(path, "ready", proc, timeout=WAIT)
        return gw

    def start_upstream(self, ns: Namespace, config: dict, name: str) -> Gateway:
        port = next(self._control_ports)
        config = {**config, "control_interface": {"restful": {"host": "127.0.0.1", "port": port}}}
        path, handle = self._log(f"upstream-{name}")
        proc = self.lab.spawn(ns, [_console_script("tng"), "launch", "--config-content", json.dumps(config)],
                              stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        gw = Gateway("upstream", name, ns, proc, path, config)
        self.gateways.append(gw)
        probe = ("import sys, urllib.request\n"
                 "try:\n"
                 f"    ok = urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=1).status == 200\n"
                 "except Exception:\n"
                 "    ok = False\n"
                 "sys.exit(0 if ok else 1)\n")
        poll_until(lambda: ns.run([sys.executable, "-c", probe], check=False).returncode == 0,
                   f"upstream tng {name}: /readyz 200", proc=proc)
        return gw

    def start_gateway(self, impl: str, ns: Namespace, config: dict, name: str) -> Gateway:
        if impl == "tng_nfq":
            return self.start_nfq(ns, config, name)
        if impl == "upstream":
            return self.start_upstream(ns, config, name)
        raise ValueError(impl)

    # -- backends ------------------------------------------------------------

    def start_backend(self, port: int, name: str = "backend", blob: Path | None = None,
                      ns: Namespace | None = None) -> Backend:
        ns = ns or self.server
        path, handle = self._log(f"backend-{port}")
        argv = [sys.executable, str(HELPERS / "backend.py"), "--port", str(port), "--name", name]
        if blob is not None:
            argv += ["--blob", str(blob)]
        proc = self.lab.spawn(ns, argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        wait_for_port(ns, "127.0.0.1", port, timeout=WAIT, proc=proc)
        backend = Backend(ns, port, proc, path)
        self.backends.append(backend)
        return backend

    def start_http_backend(self, port: int, directory: Path, ns: Namespace | None = None) -> subprocess.Popen:
        ns = ns or self.server
        path, handle = self._log(f"http-{port}")
        proc = self.lab.spawn(ns, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                   "--directory", str(directory), str(port)],
                              stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        wait_for_port(ns, "127.0.0.1", port, timeout=WAIT, proc=proc)
        return proc

    # -- clients (run in the client namespace unless told otherwise) --------

    def connect(self, port: int, host: str = "127.0.0.1", ns: Namespace | None = None) -> socket.socket:
        return ns_connect(ns or self.client, host, port)

    def curl(self, url: str, ns: Namespace | None = None) -> subprocess.CompletedProcess:
        require_tool("curl")
        return (ns or self.client).run(["curl", "-sS", "--fail", "--max-time", "20", url],
                                       check=False, timeout=WAIT + 10)

    def upload(self, port: int, data: bytes) -> bytes:
        """UPLOAD `data` and half-close; return the backend's reply."""
        with self.connect(port) as sock:
            sock.sendall(b"UPLOAD\n")
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock)

    def download(self, port: int) -> bytes:
        """DOWNLOAD the backend's blob; return the bytes received before its EOF."""
        with self.connect(port) as sock:
            sock.sendall(b"DOWNLOAD\n")
            data = recv_all(sock)
            sock.shutdown(socket.SHUT_WR)
            return data

    def echo(self, port: int, data: bytes) -> bytes:
        """Full duplex: send `data` from one thread while the other reads the echo."""
        with self.connect(port) as sock:
            errors = []

            def send():
                try:
                    sock.sendall(b"ECHO\n")
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    errors.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            received = recv_all(sock)
            sender.join(WAIT)
            assert not errors, errors
            return received

    def echo_paced(self, port: int, data: bytes, chunk: int = 16384) -> bytes:
        """ECHO `data` one chunk at a time, waiting for each chunk's echo: at most
        one chunk is in flight, so a packet capture keeps up with the traffic."""
        received = bytearray()
        with self.connect(port) as sock:
            sock.sendall(b"ECHO\n")
            for start in range(0, len(data), chunk):
                piece = data[start:start + chunk]
                sock.sendall(piece)
                want = len(received) + len(piece)
                while len(received) < want:
                    got = sock.recv(want - len(received))
                    if not got:
                        raise AssertionError(f"connection closed after {len(received)} echoed bytes")
                    received += got
            sock.shutdown(socket.SHUT_WR)
            received += recv_all(sock)
        return bytes(received)

    def capture_complete(self, ports: dict[int, str], traffic: Callable[[], object],
                         check_each: Callable[[int, WireReport], None], attempts: int = 4,
                         ns: Namespace | None = None) -> tuple[object, dict[int, WireReport]]:
        """Run `traffic()` while tcpdump captures each port (port -> interface).

        `check_each(port, report)` runs on every capture, complete or not (the
        place for "the marker never appears in clear"). Returns the traffic's
        result and the reports of the first attempt whose captures have no
        holes; a capture with holes (tcpdump dropped packets) is repeated with
        fresh connections, at most `attempts` times."""
        ns = ns or self.client
        missing = []
        for attempt in range(1, attempts + 1):
            pcaps = {port: self.workdir / f"capture{attempt}-{port}.pcap" for port in ports}
            with contextlib.ExitStack() as stack:
                for port, interface in ports.items():
                    stack.enter_context(capture(ns, port, pcaps[port], interface=interface))
                result = traffic()
            reports = {port: analyze_pcap(path, port) for port, path in pcaps.items()}
            for port, report in reports.items():
                check_each(port, report)
            holes = [h for port, path in pcaps.items() for h in capture_holes(path, port)]
            if not holes:
                return result, reports
            missing.append(holes)
        raise AssertionError(f"no complete capture in {attempts} attempts: {missing}")

    def dump_logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"----- {path.name} -----\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


_lab_ids = itertools.count(1)


@pytest.fixture
def lab(require_root, tmp_path, request):
    """Client and server namespaces, linked; everything in them is stopped and
    the namespaces deleted at the end, whatever the outcome."""
    require_tool("ip")
    tag = f"t{next(_lab_ids)}"
    names: list[str] = []
    with Lab(tag) as raw:
        two = TwoHostLab(raw, tmp_path)
        names = [ns.name for ns in raw.namespaces]
        try:
            yield two
        finally:
            rep = getattr(request.node, "rep_call", None)
            if rep is not None and rep.failed:
                print(two.dump_logs())
            raw.close()
            two.close_files()
    leftover = set(names) & set(existing_namespaces())
    assert not leftover, f"namespaces left behind: {leftover}"


@pytest.fixture(scope="session")
def blob(tmp_path_factory) -> Path:
    """10 MB of random bytes in a file (the DOWNLOAD payload; also uploaded)."""
    path = tmp_path_factory.mktemp("blob") / "random.bin"
    path.write_bytes(os.urandom(BULK_SIZE))
    return path


@pytest.fixture(scope="session")
def blob_bytes(blob) -> bytes:
    return blob.read_bytes()
