"""The classifier's sans-I/O parts: header parsing, endpoint naming, verdict
marks, the fail-open config message, and a callback that never raises."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from tng_nfq.config import load_config
from tng_nfq.netfilter.classifier import (
    Classifier,
    FlowKey,
    parse_ack,
    parse_ipv4_tcp,
    queue_flags_message,
    verdict_mark,
)
from tng_nfq.netfilter.plan import build_plan
from tng_nfq.netfilter.worker import Worker

SYN = 0x02


def ipv4_tcp(src="10.0.0.1", dst="198.18.0.2", sport=40123, dport=8080, flags=SYN, ihl=5,
             frag=0, proto=socket.IPPROTO_TCP) -> bytes:
    options = bytes(4 * (ihl - 5))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    total = 4 * ihl + len(tcp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + options + tcp


def test_parse_ipv4_tcp():
    key, flags = parse_ipv4_tcp(ipv4_tcp())
    assert key == FlowKey("10.0.0.1", 40123, "198.18.0.2", 8080) and flags == SYN


def test_parse_ipv4_tcp_with_ip_options():
    key, _ = parse_ipv4_tcp(ipv4_tcp(ihl=7, sport=1, dport=2))
    assert (key.sport, key.dport) == (1, 2)


@pytest.mark.parametrize("packet", [
    b"",
    b"\x45" + bytes(10),
    ipv4_tcp(proto=socket.IPPROTO_UDP),
    ipv4_tcp(frag=0x0010),  # a non-first fragment
    b"\x60" + bytes(60),  # IPv6
    ipv4_tcp()[:30],  # truncated TCP header
])
def test_parse_ipv4_tcp_rejects(packet):
    assert parse_ipv4_tcp(packet) is None


def spec_for(doc: dict) -> list[dict]:
    config = load_config(json.dumps(doc))
    ports = {p: 40000 + i for i, p in enumerate(["add_ingress[0]", "add_ingress[1]", "add_egress[0]"])}
    return build_plan(config, ports, queues=1).classifier_spec()


SPEC = spec_for({
    "add_ingress": [
        {"netfilter": {"capture_dst": [{"host": "10.9.0.0/16", "port": 443}]}, "no_ra": True},
        {"netfilter": {"capture_dst": {"port": 8080}}, "no_ra": True}],
    "add_egress": [{"netfilter": {"capture_dst": {"port": 30001}}, "no_ra": True}]})


@pytest.mark.parametrize("hook, dst, dport, expected", [
    (3, "10.9.1.1", 443, (1, "add_ingress[0]")),       # local app, OUTPUT
    (0, "10.9.1.1", 443, (1, "add_ingress[0]")),       # forwarded (gateway), PREROUTING
    (3, "10.8.1.1", 443, (0, None)),                   # outside the CIDR
    (3, "192.0.2.1", 8080, (2, "add_ingress[1]")),
    (0, "198.18.0.2", 30001, (3, "add_egress[0]")),    # tunnel arriving at the egress
    (3, "198.18.0.2", 30001, (0, None)),               # egress without capture_local_traffic
    (3, "198.18.0.2", 9999, (0, None)),
])
def test_classify(hook, dst, dport, expected):
    assert Classifier(SPEC).classify(hook, FlowKey("10.0.0.1", 5555, dst, dport)) == expected


def test_verdict_mark_adds_decision_and_tag_keeps_other_bits():
    assert verdict_mark(0, 3) == 0x01030000
    assert verdict_mark(0x2000235, 1) == 0x3010235
    assert verdict_mark(0x00FF0000, 2) == 0x01020000  # an old tag is replaced
    assert verdict_mark(0, 0) == 0x01000000


def test_queue_flags_message_layout():
    msg = queue_flags_message(5651, 0x5, 0x5, seq=77)
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, msg_type, flags, seq, pid) == (len(msg), (3 << 8) | 2, 0x1 | 0x4, 77, 0)
    family, version, res_id = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, res_id) == (socket.AF_UNSPEC, 0, 5651)
    attrs = {}
    pos = 20
    while pos < len(msg):
        alen, atype = struct.unpack_from("=HH", msg, pos)
        attrs[atype] = struct.unpack_from("!I", msg, pos + 4)[0]
        pos += alen
    assert attrs == {4: 0x5, 5: 0x5}  # NFQA_CFG_MASK, NFQA_CFG_FLAGS, big-endian


def test_parse_ack():
    ack = struct.pack("=IHHII", 36, 2, 0, 77, 0) + struct.pack("=i", 0) + bytes(16)
    nack = struct.pack("=IHHII", 36, 2, 0, 77, 0) + struct.pack("=i", -22) + bytes(16)
    assert parse_ack(ack, 77) == 0
    assert parse_ack(nack, 77) == 22
    assert parse_ack(ack, 78) is None
    assert parse_ack(b"short", 77) is None


class FakePacket:
    def __init__(self, payload: bytes, hook: int = 3, mark: int = 0, fail: bool = False):
        self.payload, self.hook, self.mark, self.fail = payload, hook, mark, fail
        self.verdict = None
        self.new_mark = None

    def get_payload(self):
        if self.fail:
            raise RuntimeError("boom")
        return self.payload

    def get_mark(self):
        return self.mark

    def set_mark(self, mark):
        self.new_mark = mark

    def repeat(self):
        self.verdict = "repeat"

    def accept(self):
        self.verdict = "accept"


def test_callback_tags_and_repeats(capsys):
    worker = Worker(5650, SPEC)
    packet = FakePacket(ipv4_tcp(dst="192.0.2.1", dport=8080))
    worker.on_packet(packet)
    assert (packet.verdict, packet.new_mark) == ("repeat", 0x01020000)
    event = json.loads(capsys.readouterr().out)
    assert event["event"] == "flow" and event["endpoint"] == "add_ingress[1]"


def test_callback_never_raises_and_accepts_on_error(capsys):
    worker = Worker(5650, SPEC)
    broken = FakePacket(b"", fail=True)
    worker.on_packet(broken)
    assert broken.verdict == "accept" and worker.errors == 1
    odd = FakePacket(b"not a packet")
    worker.on_packet(odd)
    assert odd.verdict == "accept"
