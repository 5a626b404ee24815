"""One tng-nfq with netfilter rules per network namespace.

The lock is an abstract unix socket named after the namespace's inode,
bound (and listening) for the holder's lifetime. Abstract names live in the
network namespace and vanish with the process - a SIGKILLed holder releases
it at once, so there is no stale lock file to clean up. A refused second
instance learns the holder's pid by connecting (SO_PEERCRED).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading


class AlreadyRunning(RuntimeError):
    def __init__(self, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another tng-nfq ({who}) already manages netfilter rules in this network "
                         "namespace; only one instance per network namespace is allowed")


def namespace_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def lock_name() -> str:
    return f"\0tng-nfq-{namespace_inode()}"


def holder_pid(name: str | None = None) -> int | None:
    """The pid holding the lock, None if nobody does (or it cannot be told)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(name or lock_name())
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid or None
    except OSError:
        return None
    finally:
        probe.close()


class NamespaceLock:
    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    @property
    def held(self) -> bool:
        return self._sock is not None

    def acquire(self) -> None:
        if self._sock is not None:
            return
        name = lock_name()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunning(holder_pid(name)) from None
            raise
        # Listening lets a refused instance connect and read our pid
        # (SO_PEERCRED); a daemon thread accepts and drops those probes so
        # they never fill the backlog.
        sock.listen(8)
        self._sock = sock
        threading.Thread(target=self._drop_probes, args=(sock,), name="netns-lock", daemon=True).start()

    @staticmethod
    def _drop_probes(sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # released
            conn.close()

    def release(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
            except OSError:
                pass
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "NamespaceLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
