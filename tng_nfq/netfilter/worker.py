"""One NFQUEUE classifier worker process: `python -m tng_nfq.netfilter.worker
--queue N --spec JSON`.

Binds queue N (headers only), sets NFQA_CFG_F_FAIL_OPEN | GSO on the queue
through its own netlink socket, then answers every queued first packet with
`repeat` and a mark naming the endpoint. The callback never raises: an
internal error becomes a plain accept (the packet then meets the static
steering rules, so it is still captured). Reports one JSON line per event
on stdout for the daemon: bound, flow (one per connection), heartbeat
(about once a second while the loop turns - its absence tells the daemon's
watchdog the worker is stalled).

Dies with its parent (PR_SET_PDEATHSIG): an orphaned worker would keep the
queue bound and block the next instance.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

from tng_nfq.netfilter.classifier import (
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    Classifier,
    parse_ack,
    parse_ipv4_tcp,
    queue_flags_message,
    verdict_mark,
)

COPY_RANGE = 128  # IPv4 + TCP headers with options fit
DEFAULT_MAXLEN = 4096
HEARTBEAT = 1.0
PR_SET_PDEATHSIG = 1


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def set_fail_open(nfq, queue: int, flags: int = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO) -> int | None:
    """Send the flags on the queue's own netlink socket; the kernel's ack code
    (0 = accepted), or None if a queued packet came before the ack (the
    library's loop then reads and ignores the ack)."""
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)  # a dup of the fd
    try:
        seq = int(time.time()) & 0x7FFFFFFF
        sock.send(queue_flags_message(queue, flags, flags, seq))
        ready, _, _ = select.select([sock], [], [], 2.0)
        if not ready:
            return None
        answer = parse_ack(sock.recv(65536, socket.MSG_PEEK), seq)
        if answer is not None:
            sock.recv(65536)  # consume our ack; leave anything else to the library
        return answer
    finally:
        sock.close()


class Worker:
    def __init__(self, queue: int, spec: list[dict]):
        self.queue = queue
        self.classifier = Classifier(spec)
        self.seen = 0
        self.errors = 0
        self.unmatched = 0

    def on_packet(self, packet) -> None:
        """The NFQUEUE callback. Never raises."""
        try:
            self.seen += 1
            parsed = parse_ipv4_tcp(packet.get_payload())
            if parsed is None:
                self.unmatched += 1
                packet.accept()
                return
            key, _flags = parsed
            tag, path = self.classifier.classify(packet.hook, key)
            if not tag:
                self.unmatched += 1
            packet.set_mark(verdict_mark(packet.get_mark(), tag))
            packet.repeat()
            emit("flow", queue=self.queue, src=f"{key.src}:{key.sport}", dst=f"{key.dst}:{key.dport}",
                 endpoint=path, tag=tag, hook=packet.hook, t=time.time())
        except Exception as exc:  # noqa: BLE001 - an error must never stop traffic
            self.errors += 1
            try:
                packet.accept()
            except Exception:  # noqa: BLE001 - verdict already given
                pass
            try:
                emit("error", queue=self.queue, error=repr(exc))
            except Exception:  # noqa: BLE001
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tng_nfq.netfilter.worker")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--spec", required=True, help="RulePlan.classifier_spec() as JSON")
    parser.add_argument("--maxlen", type=int, default=DEFAULT_MAXLEN)
    args = parser.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from netfilterqueue import COPY_PACKET, NetfilterQueue

    worker = Worker(args.queue, json.loads(args.spec))
    nfq = NetfilterQueue()
    try:
        nfq.bind(args.queue, worker.on_packet, max_len=args.maxlen, mode=COPY_PACKET, range=COPY_RANGE)
    except OSError as exc:
        emit("bind_failed", queue=args.queue, error=str(exc))
        return 1
    ack = set_fail_open(nfq, args.queue)
    emit("bound", queue=args.queue, pid=os.getpid(), flags_ack=ack)
    fd = nfq.get_fd()
    next_beat = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_beat:
                emit("heartbeat", queue=args.queue, seen=worker.seen, unmatched=worker.unmatched,
                     errors=worker.errors)
                next_beat = now + HEARTBEAT
            ready, _, _ = select.select([fd], [], [], HEARTBEAT / 2)
            if ready:
                nfq.run(block=False)
    finally:
        nfq.unbind()


if __name__ == "__main__":
    sys.exit(main())
