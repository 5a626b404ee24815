"""Pure helpers of the benchmark harness (bench/): no root, no processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ is a top-level directory of the repository, not part of the installed package
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.__main__ import parse_args  # noqa: E402
from bench.measure import (  # noqa: E402
    iperf_client_argv,
    last_section,
    listening_ports,
    parse_iperf_json,
    schedule,
)
from bench.peers import egress_config, ingress_config  # noqa: E402
from bench.report import build_results, format_table, median, peer_status, ratio  # noqa: E402

G = 1e9


def test_median_odd_even_and_empty():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([]) is None
    assert median([float("nan"), 5.0]) == 5.0


def test_ratio():
    assert ratio(6.0, 4.0) == 1.5
    assert ratio(None, 4.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_peer_status():
    assert peer_status({1: [1.0], 8: [2.0]}, [], expected=2) == "ok"
    assert peer_status({1: [1.0], 8: []}, ["rep 1, 8 streams: boom"], expected=2) == "partial"
    assert peer_status({1: [], 8: []}, ["start failed"], expected=2) == "failed"
    assert peer_status({1: [], 8: []}, [], expected=2) == "not run"  # run interrupted before it


def _results():
    samples = {
        "direct": {1: [40 * G, 42 * G, 44 * G], 8: [50 * G, 48 * G, 52 * G]},
        "upstream-tng": {1: [10 * G, 12 * G, 11 * G], 8: [13 * G, 12 * G, 14 * G]},
        "tng_nfq": {1: [5.5 * G, 5 * G, 6 * G], 8: [6.5 * G, 6.5 * G, 6.5 * G]},
        "stunnel": {1: [], 8: []},
    }
    errors = {"stunnel": ["rep 1: start failed: stunnel4 is not installed"]}
    return build_results(peers=["direct", "stunnel", "upstream-tng", "tng_nfq"], streams=[1, 8],
                         reps=3, samples=samples, errors=errors, machine={"nproc": 2},
                         params={"reps": 3, "duration": 5.0})


def test_build_results_medians_and_ratios():
    res = _results()
    assert res["peers"]["direct"]["streams"]["1"]["median_bps"] == 42 * G
    assert res["peers"]["direct"]["streams"]["8"]["median_gbps"] == 50.0
    assert res["peers"]["upstream-tng"]["streams"]["1"]["samples_bps"] == [10 * G, 12 * G, 11 * G]
    assert res["peers"]["upstream-tng"]["streams"]["1"]["min_bps"] == 10 * G
    assert res["peers"]["upstream-tng"]["streams"]["1"]["max_bps"] == 12 * G
    head = res["ratios"]["headline"]
    assert (head["numerator"], head["denominator"]) == ("tng_nfq", "upstream-tng")
    assert head["by_streams"]["1"] == pytest.approx(5.5 / 11)
    assert head["by_streams"]["8"] == pytest.approx(6.5 / 13)
    vs = res["ratios"]["vs_direct"]
    assert vs["direct"] == {"1": 1.0, "8": 1.0}
    assert vs["upstream-tng"]["1"] == pytest.approx(11 / 42)
    assert vs["tng_nfq"]["8"] == pytest.approx(6.5 / 50)
    assert vs["stunnel"] == {"1": None, "8": None}
    assert res["peers"]["stunnel"]["status"] == "failed"
    assert res["peers"]["tng_nfq"]["status"] == "ok"
    assert res["machine"]["nproc"] == 2


def test_build_results_survives_json_round_trip():
    res = _results()
    assert json.loads(json.dumps(res)) == res


def test_headline_is_none_when_numerator_failed():
    res = build_results(peers=["upstream-tng", "tng_nfq"], streams=[1], reps=1,
                        samples={"upstream-tng": {1: [10 * G]}, "tng_nfq": {1: []}},
                        errors={"tng_nfq": ["rep 1: start failed: tng_nfq egress exited with code 1"]})
    assert res["ratios"]["headline"]["by_streams"] == {"1": None}
    assert res["ratios"]["vs_direct"]["upstream-tng"] == {"1": None}  # no baseline measured


def test_format_table():
    text = format_table(_results())
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["peer", "1"]
    row = next(ln for ln in lines if ln.startswith("upstream-tng"))
    assert "11.00 (n=3)" in row and "13.00 (n=3)" in row and "0.26x" in row and row.endswith("ok")
    row = next(ln for ln in lines if ln.startswith("stunnel"))
    assert "- (n=0)" in row and "n/a" in row and row.endswith("failed")
    assert "headline tng_nfq / upstream-tng: 1 stream 0.50x, 8 streams 0.50x" in lines
    assert "stunnel failed: rep 1: start failed: stunnel4 is not installed" in lines


IPERF_OK = {
    "start": {"test_start": {"num_streams": 8}},
    "end": {"sum_sent": {"bits_per_second": 1.25e10},
            "sum_received": {"bits_per_second": 1.2e10}},
}


def test_parse_iperf_json():
    assert parse_iperf_json(json.dumps(IPERF_OK)).bps == 1.2e10
    bad = parse_iperf_json(json.dumps({"start": {}, "end": {},
                                       "error": "unable to connect to server: Connection refused"}))
    assert bad.bps is None and bad.error == "iperf3: unable to connect to server: Connection refused"
    assert parse_iperf_json("").error == "iperf3 printed no JSON"
    assert parse_iperf_json("{trunc").error.startswith("iperf3 output is not JSON")
    assert parse_iperf_json(json.dumps({"end": {}})).error.startswith("iperf3 JSON has no")
    zero = {"end": {"sum_received": {"bits_per_second": 0}}}
    assert parse_iperf_json(json.dumps(zero)).bps is None


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D2F0 0100007F:4E20 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 00000000:0
"""


def test_listening_ports():
    assert listening_ports(PROC_NET_TCP) == {20000, 20001}  # the ESTABLISHED one is not listening
    assert listening_ports(PROC_NET_TCP6) == {5201}
    assert listening_ports("header only\n") == set()


def test_schedule_round_robin_rotates_first_peer():
    order = schedule(["a", "b", "c"], 3)
    assert order == [(0, "a"), (0, "b"), (0, "c"),
                     (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b")]
    for rep in range(3):
        assert sorted(p for r, p in order if r == rep) == ["a", "b", "c"]


def test_last_section_keeps_only_latest_start():
    log = "\n===== rep 1 x\nold line\n\n===== rep 2 y\nTraceback\n  boom\nError: bad\n"
    assert last_section(log) == ["Traceback", "  boom", "Error: bad"]
    assert last_section("no header\n") == ["no header"]


def test_tng_configs_match_the_documented_shape():
    assert ingress_config(10001, 10002) == {"add_ingress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": 10001},
                    "out": {"host": "127.0.0.1", "port": 10002}}, "no_ra": True}]}
    eg = egress_config(10002, 5201, control_port=9000)
    assert eg["add_egress"][0]["mapping"]["out"] == {"host": "127.0.0.1", "port": 5201}
    assert eg["add_egress"][0]["no_ra"] is True
    assert eg["control_interface"] == {"restful": {"host": "127.0.0.1", "port": 9000}}


def test_iperf_client_argv():
    assert iperf_client_argv(10001, 5.0, 8) == [
        "iperf3", "-c", "127.0.0.1", "-p", "10001", "-t", "5", "-P", "8", "-J",
        "--connect-timeout", "5000"]


def test_parse_args_quick_and_overrides():
    a = parse_args(["--quick"])
    assert (a.reps, a.duration, a.streams) == (2, 3.0, [1, 8])
    assert a.peers == ["direct", "stunnel", "upstream-tng", "tng_nfq"]
    b = parse_args(["--quick", "--reps", "4", "--peers", "direct,tng_nfq", "--streams", "2"])
    assert (b.reps, b.duration, b.peers, b.streams) == (4, 3.0, ["direct", "tng_nfq"], [2])
    c = parse_args([])
    assert (c.reps, c.duration, c.suites) == (3, 4.0, ["throughput", "connrate"])  # both suites: shorter
    assert (c.connrate_duration, c.concurrency) == (3.0, 16)
    t = parse_args(["--suite", "throughput"])
    assert (t.reps, t.duration, t.suites) == (3, 5.0, ["throughput"])
    q = parse_args(["--quick", "--suites", "connrate,throughput"])
    assert (q.suites, q.connrate_duration, q.connrate_reps) == (["throughput", "connrate"], 2.0, 2)
    with pytest.raises(SystemExit):
        parse_args(["--suites", "latency"])
    with pytest.raises(SystemExit):
        parse_args(["--suite", "connrate", "--peers", "stunnel"])  # connrate has no stunnel
    with pytest.raises(SystemExit):
        parse_args(["--peers", "direct,nginx"])


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.report import plot_throughput

    out = tmp_path / "t.png"
    plot_throughput(_results(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
