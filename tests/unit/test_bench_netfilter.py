"""Pure parts of the netfilter suite (bench/netfilter.py) and its option wiring: no root, no processes."""

from __future__ import annotations

import json
import socket
import struct
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import DEFAULT_SUITES, SUITES  # noqa: E402
from bench import netfilter as nf  # noqa: E402
from bench.__main__ import estimate_seconds, parse_args  # noqa: E402
from tng_nfq.config.load import load_config  # noqa: E402


def _checksum_ok(src: str, dst: str, segment: bytes) -> bool:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(segment))
    data = pseudo + segment
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_syn_header_is_a_syn_with_a_valid_checksum():
    seg = nf.tcp_syn("198.18.0.1", "198.18.0.2", 40000, 8081, 12345)
    sport, dport, seq, ack, off, flags, win = struct.unpack("!HHIIBBH", seg[:16])
    assert (sport, dport, seq, ack, off >> 4, flags) == (40000, 8081, 12345, 0, 5, 0x02)
    assert _checksum_ok("198.18.0.1", "198.18.0.2", seg)


def test_syn_sender_script_builds_the_same_header():
    # the in-namespace sender is a string; run its header builder against tcp_syn
    ns: dict = {}
    body = nf.SYN_SENDER.split("sent = 0")[0].replace("s = socket.socket(socket.AF_INET, socket.SOCK_RAW, "
                                                     "socket.IPPROTO_TCP)", "")
    argv = sys.argv
    sys.argv = ["x", "198.18.0.2", "8081", "1", "1", "198.18.0.1"]
    try:
        exec(body, ns)  # noqa: S102 - our own script text
    finally:
        sys.argv = argv
    assert ns["syn"](40000, 777) == nf.tcp_syn("198.18.0.1", "198.18.0.2", 40000, 8081, 777)


def test_configs_are_accepted_by_the_config_loader():
    for cfg in (*nf.mapping_configs(10001, 30001, 5201), *nf.netfilter_configs(5201)):
        load_config(json.dumps(cfg))
    ingress, egress = nf.netfilter_configs(5201)
    assert ingress["add_ingress"][0]["netfilter"]["capture_dst"] == {"host": nf.SERVER_ADDR, "port": 5201}
    assert egress["add_egress"][0]["netfilter"]["capture_dst"] == {"port": 5201}
    assert ingress["add_ingress"][0]["no_ra"] and egress["add_egress"][0]["no_ra"]
    assert ingress["admin_bind"]["port"] == egress["admin_bind"]["port"] == nf.ADMIN_PORT


def test_count_access_counts_connection_lines_of_the_mode_any_outcome():
    lines = [{"event": "connection", "mode": "netfilter", "outcome": "ok"},
             {"event": "connection", "mode": "netfilter", "outcome": "error", "error": "connection reset by peer"},
             {"event": "connection", "mode": "mapping", "outcome": "ok"},
             {"event": "ready"}]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json connection\n"
    assert nf.count_access(text) == 2
    assert nf.count_access(text, outcome="ok") == 1
    assert nf.count_access(text, "mapping") == 1


def test_classified_reads_the_admin_status():
    assert nf.classified({"netfilter": {"classifier": {"flows_classified": 7, "queues": []}}}) == 7
    assert nf.classified({"netfilter": {}}) is None
    assert nf.classified({}) is None


def _suite(reps=2):
    s = types.SimpleNamespace(args=types.SimpleNamespace(streams=[1, 8], reps=reps), foreign=set(),
                              tp_cpu={p: {1: [1.5, 1.7], 8: [1.6]} for p in nf.TP_PEERS},
                              tp={p: {1: [], 8: []} for p in nf.TP_PEERS},
                              tp_errors={p: [] for p in nf.TP_PEERS},
                              cr={p: [] for p in nf.CR_PEERS}, cr_errors={p: [] for p in nf.CR_PEERS},
                              info={}, verified={}, syn=[], syn_errors=[])
    for p, v in (("direct", 20e9), ("mapping", 5e9), ("netfilter", 4.9e9), ("netfilter-noclassifier", 5e9)):
        s.tp[p][1] = [v, v * 1.02]
        s.tp[p][8] = [v * 0.9, v * 0.92]
    for p, c in (("direct", 10000.0), ("mapping", 400.0), ("netfilter", 380.0), ("netfilter-noclassifier", 400.0)):
        for rep in (1, 2):
            fl = {"ingress": 800, "egress": 800} if p == "netfilter" else {}
            s.cr[p].append({"rep": rep, "conn_per_s": c, "ok": 800, "failed": 0, "connections_total": 801,
                            "flows_classified": fl, "egress_tunnel_ok": 801,
                            "cpu": {"procs_cpu_s": {"ingress": 1.6, "egress": 0.8}}})
    s.syn = [{"rep": 1, "sent": 60000, "sent_per_s": 30000.0, "classified": 30000, "classified_per_s": 15000.0},
             {"rep": 2, "sent": 60000, "sent_per_s": 30000.0, "classified": 32000, "classified_per_s": 16000.0}]
    return s


def test_summarize_ratios_medians_and_table(tmp_path):
    res = nf.summarize(_suite())
    assert res["throughput"]["headline"] == {"1": 0.98, "8": 0.98}
    assert res["throughput"]["peers"]["netfilter"]["streams"]["1"]["status"] == "ok"
    assert res["throughput"]["peers"]["netfilter"]["streams"]["1"]["median_tunnel_cpu_s_per_gb"] == 1.6
    cr = res["connrate"]
    assert cr["ratios"] == {"classifier_on_vs_off": 0.95, "netfilter_vs_mapping": 0.95}
    assert cr["peers"]["netfilter"]["flows_classified_per_rep"] == {"ingress": [800, 800], "egress": [800, 800]}
    assert cr["peers"]["mapping"]["median_cpu_ms_per_conn"] == {"ingress": 2.0, "egress": 1.0}
    assert res["synrate"]["median_classified_per_s"] == 15500.0
    table = nf.format_table(res)
    assert "netfilter / mapping: 1 stream(s) 0.980x" in table and "classifier on / off: 0.95x" in table
    pytest.importorskip("matplotlib")
    nf.plot(res, tmp_path / "nf.png")
    assert (tmp_path / "nf.png").stat().st_size > 1000


def test_a_peer_with_no_samples_is_failed_and_ratios_are_none():
    s = _suite()
    s.tp["netfilter"] = {1: [], 8: []}
    s.tp_errors["netfilter"] = ["rep 1, 1 streams: only 0 of 2 iperf3 connections in the egress access log"]
    res = nf.summarize(s)
    assert res["throughput"]["peers"]["netfilter"]["streams"]["1"]["status"] == "failed"
    assert res["throughput"]["headline"] == {"1": None, "8": None}
    nf.format_table(res)


def test_netfilter_suite_is_opt_in_and_takes_its_presets():
    assert "netfilter" in SUITES and "netfilter" not in DEFAULT_SUITES
    assert parse_args([]).suites == list(DEFAULT_SUITES)
    a = parse_args(["--suites", "netfilter"])
    assert a.suites == ["netfilter"]
    assert (a.nf_duration, a.nf_connrate_duration, a.nf_syn_duration) == (4.0, 3.0, 3.0)
    q = parse_args(["--suites", "connrate,netfilter", "--quick", "--duration", "5"])
    assert (q.nf_duration, q.nf_connrate_duration) == (5.0, 2.0)
    assert 120 < estimate_seconds(a) < 300
