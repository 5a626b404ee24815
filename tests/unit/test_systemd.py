"""sd_notify: the client against real datagram sockets (path and abstract),
and READY=1 / STOPPING=1 from a real `tng-nfq launch` in a throw-away
network namespace (root), in step with its "ready" log line."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tng_nfq import systemd

WAIT = 20.0


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(WAIT)
    return sock


def _messages(sock: socket.socket, until: str, timeout: float = WAIT, proc=None) -> list[str]:
    """Datagrams received until one contains the line `until`."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            got.append(sock.recv(4096).decode())
            if until in got[-1].splitlines():
                return got
        elif proc is not None and proc.poll() is not None:
            break
    raise AssertionError(f"no {until!r} on the notify socket; received {got}")


def test_no_socket_is_a_no_op():
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        assert systemd.notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_socket(monkeypatch):
    name = f"tngnfq-test-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready("serving: 1 ingress, 0 egress")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving: 1 ingress, 0 egress"
        assert systemd.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        assert systemd.status("two\nlines")
        assert sock.recv(4096) == b"STATUS=two lines"


def test_unreachable_socket_does_not_raise(tmp_path):
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def _tng_nfq() -> str:
    exe = Path(sys.executable).parent / "tng-nfq"
    if exe.exists():
        return str(exe)
    found = shutil.which("tng-nfq")
    if found is None:
        pytest.skip("`tng-nfq` is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.root
def test_daemon_notifies_ready_and_stopping(tmp_path):
    """A real daemon in a private namespace: READY=1 arrives once it has
    logged "ready" (not before), STOPPING=1 once SIGTERM starts the stop."""
    from tng_nfq.lab.netns import single_namespace, stop_process

    if shutil.which("ip") is None:
        pytest.skip("`ip` is not installed (scripts/install-system-deps.sh)")
    # A path socket works across network namespaces (abstract names do not:
    # they belong to the network namespace that bound them).
    notify_path = str(tmp_path / "notify.sock")
    config = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": 10001},
                                           "out": {"host": "127.0.0.1", "port": 20001}},
                               "no_ra": True}]}
    log_path = tmp_path / "daemon.log"
    with _receiver(notify_path) as sock, single_namespace("sdnotify") as ns, log_path.open("w") as log:
        proc = ns.popen([_tng_nfq(), "--log-format", "json", "launch", "--config-content", json.dumps(config)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                        env={**os.environ, "NOTIFY_SOCKET": notify_path})
        try:
            got = _messages(sock, "READY=1", proc=proc)
            events = [json.loads(line).get("event") for line in log_path.read_text().splitlines()
                      if line.startswith("{")]
            assert "ready" in events, f"READY=1 before the 'ready' log line: {events}"
            assert "STATUS=serving: 1 ingress, 0 egress" in got[-1].splitlines()
            assert sum("READY=1" in m.splitlines() for m in got) == 1

            os.killpg(proc.pid, signal.SIGTERM)
            _messages(sock, "STOPPING=1", proc=None)
            assert proc.wait(WAIT) == 0
        finally:
            stop_process(proc)
