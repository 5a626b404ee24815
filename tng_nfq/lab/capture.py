"""Capture a tunnel port with tcpdump and prove what crossed the wire.

Used by the demo and the tests: tcpdump writes a pcap inside a lab
namespace; `analyze_pcap` reassembles each TCP flow per direction (a small
struct-based reader, no dependencies) and parses the TLS record layer, so a
test can assert "every flow on this port is TLS 1.3 with ALPN rats-tls and
the request text never appears in clear".
"""

from __future__ import annotations

import contextlib
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tng_nfq.lab.netns import LabError, Namespace

TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


@contextlib.contextmanager
def capture(ns: Namespace, port: int, pcap: str | Path, interface: str = "any") -> Iterator[Path]:
    """Run tcpdump on `port` inside `ns` for the duration of the block."""
    pcap = Path(pcap)
    proc = ns.popen(["tcpdump", "-i", interface, "-U", "--immediate-mode", "-B", "32768", "-n", "-s", "0", "-w", str(pcap),
                     f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on ..." once the capture is armed
    deadline = time.monotonic() + 10
    armed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if pcap.exists() and pcap.stat().st_size >= 24:
            armed = True
            break
        time.sleep(0.05)
    if not armed:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise LabError(f"tcpdump did not start: {err.strip()}")
    time.sleep(0.2)
    try:
        yield pcap
    finally:
        time.sleep(0.3)  # let the last segments reach the file
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Direction:
    segments: dict[int, bytes] = field(default_factory=dict)  # seq -> payload
    syn_seq: int | None = None

    def stream(self) -> bytes:
        """Reassembled payload (retransmissions collapsed, gaps left out)."""
        if not self.segments:
            return b""
        base = self.syn_seq + 1 if self.syn_seq is not None else min(self.segments)
        out = bytearray()
        for seq in sorted(self.segments, key=lambda s: (s - base) & 0xFFFFFFFF):
            offset = (seq - base) & 0xFFFFFFFF
            data = self.segments[seq]
            if offset + len(data) <= len(out):
                continue  # retransmission of bytes we have
            # a gap (segment lost by the capture) is closed up: keep what we have
            out += data[max(0, len(out) - offset):]
        return bytes(out)


@dataclass
class FlowReport:
    client: str
    server: str
    c2s: bytes
    s2c: bytes
    records_c2s: list[int]
    records_s2c: list[int]
    alpn_offered: list[str]
    tls_version_ok: bool

    @property
    def is_tls(self) -> bool:
        """Both directions are a well-formed sequence of TLS records."""
        return bool(self.records_c2s) and self.records_c2s[0] == 22 and (
            not self.s2c or (bool(self.records_s2c) and self.records_s2c[0] == 22))

    def summary(self) -> str:
        def count(records):
            names = [TLS_CONTENT_TYPES.get(r, str(r)) for r in records]
            return ", ".join(f"{n}×{names.count(n)}" for n in dict.fromkeys(names)) or "none"
        return (f"{self.client} -> {self.server}: {len(self.c2s)} B up [{count(self.records_c2s)}], "
                f"{len(self.s2c)} B down [{count(self.records_s2c)}], ALPN offered {self.alpn_offered}")


@dataclass
class WireReport:
    flows: list[FlowReport]

    @property
    def all_tls(self) -> bool:
        return bool(self.flows) and all(f.is_tls for f in self.flows)

    def contains(self, marker: bytes) -> bool:
        return any(marker in f.c2s or marker in f.s2c for f in self.flows)

    @property
    def total_payload(self) -> int:
        return sum(len(f.c2s) + len(f.s2c) for f in self.flows)


def tls_records(stream: bytes) -> tuple[list[int], bool]:
    """Content types of the TLS records that tile `stream` exactly; ([], False) if it is not TLS."""
    types = []
    pos = 0
    while pos + 5 <= len(stream):
        ctype, major, _minor, length = struct.unpack_from("!BBBH", stream, pos)
        if ctype not in TLS_CONTENT_TYPES or major != 3 or length > 16384 + 256:
            return [], False
        types.append(ctype)
        pos += 5 + length
    return types, pos == len(stream) or pos > len(stream)  # a capture may end mid-record


def client_hello_alpn(stream: bytes) -> tuple[list[str], bool]:
    """ALPN names offered in the ClientHello, and whether TLS 1.3 was offered."""
    try:
        if stream[0] != 22 or stream[5] != 1:
            return [], False
        pos = 5 + 4 + 2 + 32  # record hdr, handshake hdr, version, random
        pos += 1 + stream[pos]  # session id
        (n,) = struct.unpack_from("!H", stream, pos)
        pos += 2 + n  # cipher suites
        pos += 1 + stream[pos]  # compression
        (ext_total,) = struct.unpack_from("!H", stream, pos)
        pos += 2
        end = pos + ext_total
        alpn, tls13 = [], False
        while pos + 4 <= end:
            etype, elen = struct.unpack_from("!HH", stream, pos)
            body = stream[pos + 4:pos + 4 + elen]
            if etype == 16:  # application_layer_protocol_negotiation
                i = 2
                while i < len(body):
                    ln = body[i]
                    alpn.append(body[i + 1:i + 1 + ln].decode(errors="replace"))
                    i += 1 + ln
            elif etype == 43:  # supported_versions
                versions = body[1:1 + body[0]]
                tls13 = any(versions[i:i + 2] == b"\x03\x04" for i in range(0, len(versions), 2))
            pos += 4 + elen
        return alpn, tls13
    except (IndexError, struct.error):
        return [], False


def _packets(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    pos = 24
    while pos + 16 <= len(data):
        _ts, _us, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ip = _ip_payload(linktype, frame)
        if ip is not None:
            yield ip


def _ip_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet
        if len(frame) >= 14 and frame[12:14] == b"\x08\x00":
            return frame[14:]
    elif linktype == 113:  # Linux cooked v1
        if len(frame) >= 16 and frame[14:16] == b"\x08\x00":
            return frame[16:]
    elif linktype == 276:  # Linux cooked v2
        if len(frame) >= 20 and frame[0:2] == b"\x08\x00":
            return frame[20:]
    elif linktype in (101, 228):  # raw IP / raw IPv4
        return frame
    return None


def analyze_pcap(path: str | Path, port: int) -> WireReport:
    flows: dict[tuple, dict[str, Direction]] = {}
    order: list[tuple] = []
    for ip in _packets(Path(path)):
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total_len = struct.unpack_from("!H", ip, 2)[0]
        src, dst = ip[12:16], ip[16:20]
        tcp = ip[ihl:total_len]
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        off = (tcp[12] >> 4) * 4
        flags = tcp[13]
        payload = tcp[off:]
        if port not in (sport, dport):
            continue
        to_server = dport == port
        client = (src, sport) if to_server else (dst, dport)
        server = (dst, dport) if to_server else (src, sport)
        key = (client, server)
        if key not in flows:
            flows[key] = {"c2s": Direction(), "s2c": Direction()}
            order.append(key)
        d = flows[key]["c2s" if to_server else "s2c"]
        if flags & 0x02:  # SYN
            d.syn_seq = seq
        if payload:
            d.segments.setdefault(seq, payload)
    reports = []
    for key in order:
        (caddr, cport), (saddr, sport) = key
        c2s = flows[key]["c2s"].stream()
        s2c = flows[key]["s2c"].stream()
        if not c2s and not s2c:
            continue  # e.g. a refused connection: no payload either way
        rec_c, ok_c = tls_records(c2s)
        rec_s, ok_s = tls_records(s2c)
        alpn, tls13 = client_hello_alpn(c2s)
        reports.append(FlowReport(
            client=f"{_ip(caddr)}:{cport}", server=f"{_ip(saddr)}:{sport}", c2s=c2s, s2c=s2c,
            records_c2s=rec_c if ok_c else [], records_s2c=rec_s if ok_s else [],
            alpn_offered=alpn, tls_version_ok=tls13))
    return WireReport(reports)


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)
