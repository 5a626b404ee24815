"""`tng-nfq capture`: packet-capture debugging of the tunnel's ports.

Packets of the chosen TCP ports are copied to userspace through NFQUEUE and
accepted at once (the queue is bypassed when nobody listens and runs
fail-open when full, so capturing can never stall or drop traffic). They are
written to a pcap (raw IPv4 link type: tshark and Wireshark open it), then
the TCP flows are reassembled and checked: TLS handshake seen, ALPN offered,
record counts, HTTP requests, and any plaintext that should have been
encrypted (an HTTP request line on a tunnel port, or a marker given with
`--expect-absent`).

Its rules live in chains of their own (`TNGCAP_*`), apart from the daemon's
`TNGNFQ_*`, and are removed on exit, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tng_nfq.config.model import Config, MappingEgress, MappingIngress, NetfilterEgress, NetfilterIngress
from tng_nfq.lab.capture import FlowReport, analyze_pcap

CHAIN = "TNGCAP_CAPTURE"
QUEUE_NUM = 5600
LINKTYPE_IPV4 = 228
SNAPLEN = 65535
HTTP_REQUEST_LINE = re.compile(rb"(?:^|\n)(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT) (\S+) HTTP/1\.[01]\r\n")


class CaptureError(Exception):
    pass


def ports_of(config: Config) -> list[int]:
    """The TCP ports that carry tunnel traffic for a configuration."""
    ports: set[int] = set()
    for spec in config.ingress:
        mode = spec.mode
        if isinstance(mode, MappingIngress):
            ports.add(mode.upstream.port)
        elif isinstance(mode, NetfilterIngress):
            ports.update(d.port for d in mode.capture_dst if d.port)
    for spec in config.egress:
        mode = spec.mode
        if isinstance(mode, MappingEgress):
            ports.add(mode.listen.port)
        elif isinstance(mode, NetfilterEgress) and mode.capture_dst.port:
            ports.add(mode.capture_dst.port)
    return sorted(ports)


def rules_text(ports: list[int], queue: int = QUEUE_NUM) -> str:
    """iptables-restore text: copy every packet of `ports` to the queue.

    raw OUTPUT sees what this host sends, raw PREROUTING what arrives from
    elsewhere; loopback packets would pass both, so PREROUTING skips `lo`.
    """
    lines = ["*raw", f":{CHAIN} - [0:0]"]
    for port in ports:
        for direction in ("--dport", "--sport"):
            lines.append(f"-A {CHAIN} -p tcp -m tcp {direction} {port} "
                         f"-j NFQUEUE --queue-num {queue} --queue-bypass")
    lines += [f"-I PREROUTING 1 -p tcp ! -i lo -j {CHAIN}", f"-I OUTPUT 1 -p tcp -j {CHAIN}", "COMMIT"]
    return "\n".join(lines) + "\n"


def removal_text(raw_table_save: str) -> str:
    """Delete every jump to our chain found in `iptables-save -t raw` output, then the chain."""
    if f":{CHAIN} " not in raw_table_save:
        return ""
    lines = ["*raw"]
    for line in raw_table_save.splitlines():
        if line.startswith("-A ") and line.split()[1] != CHAIN and line.endswith(f"-j {CHAIN}"):
            lines.append("-D " + line[3:])
    lines += [f"-F {CHAIN}", f"-X {CHAIN}", "COMMIT"]
    return "\n".join(lines) + "\n"


def sweep(iptables) -> None:
    import subprocess

    save = subprocess.run([iptables.save, "-t", "raw"], capture_output=True, text=True, timeout=30).stdout
    text = removal_text(save)
    if text:
        iptables.apply(text)


class PcapWriter:
    """pcap with LINKTYPE_IPV4: the queue hands us IP packets without a link header."""

    def __init__(self, path: Path):
        self.file = path.open("wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_IPV4))
        self.count = 0

    def write(self, packet: bytes, ts: float) -> None:
        sec = int(ts)
        usec = int((ts - sec) * 1_000_000)
        data = packet[:SNAPLEN]
        self.file.write(struct.pack("<IIII", sec, usec, len(data), len(packet)))
        self.file.write(data)
        self.count += 1

    def close(self) -> None:
        self.file.close()


@dataclass
class FlowVerdict:
    flow: FlowReport
    http_requests: list[str] = field(default_factory=list)  # request lines seen in clear
    encapsulated: int = 0  # requests marked as HTTP encapsulation (`x-tng-ohttp-api` or `tng` header)
    leaks: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        f = self.flow
        kind = "TLS" if f.is_tls else "NOT TLS"
        out = [f"{f.client} -> {f.server}  [{kind}]  {len(f.c2s)} B up, {len(f.s2c)} B down"]
        if f.is_tls:
            out.append(f"    TLS handshake seen, TLS 1.3 offered: {'yes' if f.tls_version_ok else 'no'}, "
                       f"ALPN offered: {', '.join(f.alpn_offered) or 'none'}")
            out.append(f"    records up: {len(f.records_c2s)}, down: {len(f.records_s2c)}")
        if self.http_requests:
            out.append(f"    HTTP requests in clear: {len(self.http_requests)} (first: {self.http_requests[0]})")
        if self.encapsulated:
            out.append(f"    HTTP encapsulation requests (x-tng-ohttp-api / tng header): {self.encapsulated}")
        out += [f"    PLAINTEXT: {leak}" for leak in self.leaks]
        return out


_ENCAP_MARKER = re.compile(rb"\r\n(?:x-tng-ohttp-api|tng):", re.IGNORECASE)


def judge(flows: list[FlowReport], expect_absent: list[bytes]) -> list[FlowVerdict]:
    verdicts = []
    for flow in flows:
        v = FlowVerdict(flow)
        requests = [m for m in HTTP_REQUEST_LINE.finditer(flow.c2s)]
        v.http_requests = [f"{m.group(1).decode()} {m.group(2).decode(errors='replace')}" for m in requests]
        plain = []
        for m, line in zip(requests, v.http_requests):
            head_end = flow.c2s.find(b"\r\n\r\n", m.start())
            head = flow.c2s[m.start():head_end if head_end >= 0 else len(flow.c2s)]
            if _ENCAP_MARKER.search(head):
                v.encapsulated += 1  # its body is sealed (OHTTP); only the outer head is clear
            else:
                plain.append(line)
        if not flow.is_tls and plain:
            v.leaks.append(f"HTTP request line on a tunnel port: {plain[0]}")
        for marker in expect_absent:
            where = [d for d, data in (("up", flow.c2s), ("down", flow.s2c)) if marker in data]
            if where:
                v.leaks.append(f"{marker.decode(errors='replace')!r} seen in clear ({'/'.join(where)})")
        verdicts.append(v)
    return verdicts


def run_capture(ports: list[int], pcap: Path, duration: float | None, stop: threading.Event | None = None,
                on_bound=None) -> int:
    """Capture until `duration` elapses, `stop` is set, or SIGINT/SIGTERM; return packets written."""
    from netfilterqueue import NetfilterQueue

    from tng_nfq.netfilter.iptables import Iptables, IptablesError
    from tng_nfq.netfilter.worker import set_fail_open

    if not ports:
        raise CaptureError("no ports to capture: give --port or a configuration with tunnel ports")
    stop = stop or threading.Event()
    try:
        iptables = Iptables.detect()
        sweep(iptables)  # what a killed earlier capture left behind
    except IptablesError as exc:
        raise CaptureError(str(exc)) from None
    writer = PcapWriter(pcap)
    nfq = NetfilterQueue()

    def on_packet(packet) -> None:
        try:
            writer.write(packet.get_payload(), time.time())
        finally:
            packet.accept()  # at once: capturing never holds traffic back

    installed = False
    previous = {}
    try:
        try:
            nfq.bind(QUEUE_NUM, on_packet, max_len=8192)
        except OSError as exc:
            raise CaptureError(f"cannot bind NFQUEUE {QUEUE_NUM}: {exc} (another capture running?)") from None
        set_fail_open(nfq, QUEUE_NUM)
        iptables.apply(rules_text(ports))
        installed = True
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        if on_bound is not None:
            on_bound()
        deadline = None if duration is None else time.monotonic() + duration
        fd = nfq.get_fd()
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                nfq.run(block=False)
    finally:
        if installed:
            try:
                sweep(iptables)
            except IptablesError:
                pass
        nfq.unbind()
        writer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return writer.count


def report(pcap: Path, ports: list[int], expect_absent: list[bytes]) -> tuple[list[str], bool]:
    """Human-readable report lines and whether plaintext was found."""
    lines = []
    leaked = False
    for port in ports:
        flows = analyze_pcap(pcap, port).flows
        lines.append(f"port {port}: {len(flows)} flow(s)")
        for verdict in judge(flows, expect_absent):
            lines += ["  " + line for line in verdict.lines()]
            leaked = leaked or bool(verdict.leaks)
    lines.append("verdict: PLAINTEXT found on a tunnel port" if leaked else "verdict: no plaintext on the wire")
    return lines, leaked


def default_pcap_path() -> Path:
    return Path(f"tng-nfq-capture-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.pcap")
