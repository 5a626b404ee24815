"""Reuse of the two things every tunneled connection needs and that are
expensive to make fresh: threads and large buffers.

Measured on the connection-rate benchmark (bench/README.md, "Where the time
goes"): starting and ending two threads per connection and per end, and
zeroing about 1 MiB of new relay buffers, together took over half of the
GIL time of a short connection. Idle threads wait for the next connection
for a while instead of exiting; released buffers go back to a small free
list instead of to the allocator.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import structlog
from OpenSSL._util import ffi

log = structlog.get_logger(component="reuse")

IDLE_THREAD_SECONDS = 30.0


class ThreadPool:
    """Runs each submitted task at once on an idle thread or a new one.

    Unlike a fixed-size executor it never queues a task behind others: relay
    tasks block for the life of a connection, so waiting for a free worker
    would stall unrelated connections.
    """

    def __init__(self, idle_seconds: float = IDLE_THREAD_SECONDS):
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting in _tasks.get()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable, *args) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that worker is spoken for; the task is in the queue before unlock
                self._tasks.put((fn, args))
                return
        threading.Thread(target=self._work, args=(fn, args), name="tng-worker", daemon=True).start()

    def _work(self, fn: Callable, args: tuple) -> None:
        while True:
            try:
                fn(*args)
            except Exception:  # tasks catch their own errors; this is a last guard for the pool
                log.exception("task failed")
            fn = args = None  # drop references (sockets, buffers) while idle
            with self._lock:
                self._idle += 1
            try:
                fn, args = self._tasks.get(timeout=self.idle_seconds)
                continue
            except queue.Empty:
                pass
            with self._lock:
                # A submitter may have counted on us just as we timed out.
                try:
                    fn, args = self._tasks.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return


class Buffer:
    """A reusable bytearray with its memoryview and a C pointer for OpenSSL calls."""

    __slots__ = ("data", "view", "ptr")

    def __init__(self, size: int):
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.ptr = ffi.from_buffer(self.data)


class BufferPool:
    """Free lists of fixed-size buffers, bounded so idle memory stays small."""

    def __init__(self, keep: int = 32):
        self.keep = keep
        self._free: dict[int, list[Buffer]] = {}
        self._lock = threading.Lock()

    def get(self, size: int) -> Buffer:
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()
        return Buffer(size)

    def put(self, buf: Buffer) -> None:
        # Contents are not cleared: every user writes before it reads, and
        # only within the bytes it wrote.
        with self._lock:
            free = self._free.setdefault(len(buf.data), [])
            if len(free) < self.keep:
                free.append(buf)


THREADS = ThreadPool()
BUFFERS = BufferPool()
