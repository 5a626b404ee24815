"""The flow classifier's logic, sans I/O: header parsing, endpoint matching,
verdict marks, and the netlink message that sets the queue's fail-open flags.

The kernel queues only the first packet (SYN) of a connection that one of
our raw chains matched; the worker (worker.py) feeds it here, records the
flow, and answers `repeat` with a mark that names the endpoint. The static
steering rules do the capturing whatever the worker says or whether it
runs at all - the classifier can only add information, never open a way
around the tunnel.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from tng_nfq.netfilter.plan import DECIDED_MARK, TAG_MASK, TAG_SHIFT

# linux/netfilter.h hook numbers as NFQUEUE reports them
HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}

# linux/netfilter/nfnetlink.h, nfnetlink_queue.h, netlink.h
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFNETLINK_V0 = 0


@dataclass(frozen=True)
class FlowKey:
    src: str
    sport: int
    dst: str
    dport: int

    def __str__(self) -> str:
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


def parse_ipv4_tcp(packet: bytes) -> tuple[FlowKey, int] | None:
    """(addresses and ports, TCP flags) of an IPv4/TCP packet; None for anything else.

    Only the headers are needed (the queue copies 128 bytes)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or packet[9] != socket.IPPROTO_TCP or len(packet) < ihl + 14:
        return None
    (frag,) = struct.unpack_from("!H", packet, 6)
    if frag & 0x1FFF:  # a later fragment: no TCP header here
        return None
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    flags = packet[ihl + 13]
    key = FlowKey(socket.inet_ntoa(packet[12:16]), sport, socket.inet_ntoa(packet[16:20]), dport)
    return key, flags


class Classifier:
    """Names the endpoint a queued first packet belongs to, from the plan's
    classifier_spec(): the first endpoint (in plan order) with a match for
    the packet's hook, destination address and port. cgroups are not visible
    here; the kernel already checked them before queueing."""

    def __init__(self, spec: list[dict]):
        self._matches: list[tuple[int, str, str, ipaddress.IPv4Network | None, int | None]] = []
        for endpoint in spec:
            for hook, host, port in endpoint["matches"]:
                net = ipaddress.IPv4Network(host if "/" in host else f"{host}/32") if host else None
                self._matches.append((endpoint["tag"], endpoint["path"], hook, net, port))

    def classify(self, hook: int, key: FlowKey) -> tuple[int, str | None]:
        """(tag, endpoint path); (0, None) when nothing of ours matches."""
        hook_name = HOOKS.get(hook)
        dst = ipaddress.IPv4Address(key.dst)
        for tag, path, match_hook, net, port in self._matches:
            if match_hook != hook_name:
                continue
            if port is not None and port != key.dport:
                continue
            if net is not None and dst not in net:
                continue
            return tag, path
        return 0, None


def verdict_mark(mark: int, tag: int) -> int:
    """The packet's mark with our decision added (other bits untouched)."""
    return (mark & ~TAG_MASK & 0xFFFFFFFF) | DECIDED_MARK | ((tag << TAG_SHIFT) & TAG_MASK)


def queue_flags_message(queue: int, flags: int, mask: int, seq: int) -> bytes:
    """NFQNL_MSG_CONFIG setting `flags` under `mask` on `queue`, asking for an ack.

    nlmsghdr + nfgenmsg (family AF_UNSPEC, version 0, res_id = queue number,
    big-endian) + NFQA_CFG_MASK and NFQA_CFG_FLAGS (big-endian u32 each)."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, NFNETLINK_V0, queue)
    for attr_type, value in ((NFQA_CFG_MASK, mask), (NFQA_CFG_FLAGS, flags)):
        body += struct.pack("=HH", 8, attr_type) + struct.pack("!I", value)
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_ack(data: bytes, seq: int) -> int | None:
    """The error code (0 = success) of the NLMSG_ERROR answering `seq` in
    `data`; None when `data` does not start with that answer."""
    if len(data) < 20:
        return None
    _length, msg_type, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", data, 0)
    if msg_type != NLMSG_ERROR or msg_seq != seq:
        return None
    (error,) = struct.unpack_from("=i", data, 16)
    return -error
