"""Pure parts of the connection-rate suite (bench/connrate.py, bench/loadgen.py, bench/report.py)
and of the profiling helpers (bench/profile.py): no root, no processes, no network."""

from __future__ import annotations

import errno
import json
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import CONNRATE_HEADLINES  # noqa: E402
from bench.connrate import (  # noqa: E402
    attest_ra,
    base_peer,
    connrate_peers,
    count_events,
    loadgen_argv,
    parse_loadgen_output,
    verify_ra,
)
from bench.loadgen import (  # noqa: E402
    error_kind,
    expected_reply,
    make_request,
    parse_watch,
    percentile,
    proc_cpu_seconds,
    tree_cpu_seconds,
)
from bench.peers import egress_config, ingress_config  # noqa: E402
from bench.profile import categorize, parse_collapsed, parse_perf_script, summarize  # noqa: E402
from bench.report import (  # noqa: E402
    build_connrate_results,
    cpu_ms_per_conn,
    format_connrate_table,
    other_cpu_pct,
)


def _sample(rate, ok, ingress=None, egress=None, failed=0, as_requests=None, loadgen_s=0.3):
    procs = {"backend": 0.2}
    if ingress is not None:
        procs.update(ingress=ingress, egress=egress)
    return {"conn_per_s": rate, "ok": ok, "failed": failed, "errors": {"reset": failed} if failed else {},
            "latency_ms": {"p50": 2.0, "p90": 3.0, "p99": 9.0}, "as_requests": as_requests,
            "cpu": {"wall_s": 3.0, "loadgen_cpu_s": loadgen_s, "procs_cpu_s": procs,
                    "machine_busy_pct": 100.0, "machine_cpus": 2, "loadgen_pct": 10.0}}


# -- loadgen ----------------------------------------------------------------------


def test_request_and_reply_shape():
    req = make_request(7, 100)
    assert len(req) == 100 and req.startswith(b"Q00007:")
    rep = expected_reply(req)
    assert len(rep) == 100 and rep[:1] == b"R" and rep[1:] == req[1:]
    assert len(make_request(1, 4)) == 4  # shorter than the header: cut


def test_parse_watch():
    assert parse_watch("ingress=12,egress=34") == {"ingress": 12, "egress": 34}
    assert parse_watch("") == {}
    with pytest.raises(ValueError):
        parse_watch("ingress")


def test_percentile():
    vals = sorted(float(i) for i in range(1, 101))
    assert percentile(vals, 50) in (50.0, 51.0)
    assert percentile(vals, 99) == 99.0
    assert percentile([], 50) is None


def test_error_kind():
    assert error_kind(ConnectionRefusedError(errno.ECONNREFUSED, "x")) == "refused"
    assert error_kind(ConnectionResetError(errno.ECONNRESET, "x")) == "reset"
    assert error_kind(socket.timeout()) == "timeout"
    assert error_kind(BlockingIOError(errno.EAGAIN, "x")) == "timeout"  # SO_RCVTIMEO expired
    assert error_kind(OSError(errno.EMFILE, "x")) == "emfile"


def test_cpu_of_this_process():
    import os

    own = proc_cpu_seconds(os.getpid())
    assert own >= 0
    # the tree (read after) includes this process, whose CPU time only grows
    assert tree_cpu_seconds(os.getpid()) >= own
    assert proc_cpu_seconds(2 ** 22 + 12345) is None  # no such pid


# -- connrate harness pieces --------------------------------------------------------


def test_connrate_peers_follow_peers_option():
    assert connrate_peers(["direct", "stunnel", "upstream-tng", "tng_nfq"]) == [
        "direct", "upstream-tng:attest", "tng_nfq:attest", "upstream-tng:no_ra", "tng_nfq:no_ra"]
    assert connrate_peers(["tng_nfq", "stunnel"]) == ["tng_nfq:attest", "tng_nfq:no_ra"]
    assert connrate_peers(["stunnel"]) == []
    assert base_peer("upstream-tng:attest") == "upstream-tng"


def test_attested_configs():
    ing = ingress_config(10001, 10002, ra=verify_ra(8080, Path("/s/ca.pem")))
    entry = ing["add_ingress"][0]
    assert "no_ra" not in entry
    assert entry["verify"] == {"as_addr": "http://127.0.0.1:8080/", "policy_ids": ["default"],
                               "trusted_certs_paths": ["/s/ca.pem"]}
    eg = egress_config(10002, 5201, control_port=9000, ra=attest_ra(Path("/tmp/aa.sock")))
    assert eg["add_egress"][0]["attest"] == {"aa_addr": "unix:///tmp/aa.sock"}
    assert "no_ra" not in eg["add_egress"][0] and "refresh_interval" not in eg["add_egress"][0]["attest"]
    assert eg["control_interface"] == {"restful": {"host": "127.0.0.1", "port": 9000}}
    assert ingress_config(1, 2)["add_ingress"][0]["no_ra"] is True  # default stays no_ra


def test_loadgen_argv():
    argv = loadgen_argv(20001, 16, 3.0, {"ingress": 5, "egress": 6}, python="py")
    assert argv[:3] == ["py", "-I", str(REPO / "bench" / "loadgen.py")]
    assert argv[3:] == ["run", "--port", "20001", "--concurrency", "16", "--duration", "3", "--size", "100",
                        "--probe-timeout", "20", "--watch", "ingress=5,egress=6"]
    assert "--watch" not in loadgen_argv(1, 1, 1.5, {}, python="py")


def test_parse_loadgen_output():
    good = _sample(1000.0, 3000)
    sample, err = parse_loadgen_output("noise\n" + json.dumps(good) + "\n", 0, as_requests=2)
    assert err == "" and sample["conn_per_s"] == 1000.0 and sample["as_requests"] == 2
    assert parse_loadgen_output("", 1, "Traceback\nboom")[1] == "load generator exited 1: boom"
    assert parse_loadgen_output("{x", 0)[1].startswith("load generator output is not JSON")
    err = parse_loadgen_output(json.dumps({"error": "no successful exchange within 20s: refused"}), 1)[1]
    assert err == "load generator: no successful exchange within 20s: refused"
    assert parse_loadgen_output(json.dumps({"ok": 0, "conn_per_s": 0.0, "errors": {"reset": 9}}), 0)[1] \
        .startswith("no exchange completed")


def test_count_events(tmp_path):
    log = tmp_path / "as.log"
    log.write_text('{"event": "dev AS ready"}\n{"event": "attestation request", "api": "rest"}\n'
                   '{"event": "attestation request"}\n{"event": "attestation refused"}\n')
    assert count_events(log, "attestation request") == 2
    assert count_events(tmp_path / "missing.log", "attestation request") == 0


# -- report -------------------------------------------------------------------------


def test_cpu_ms_per_conn():
    per = cpu_ms_per_conn(_sample(1000.0, 3000, ingress=1.5, egress=0.9))
    assert per["ingress"] == pytest.approx(0.5) and per["egress"] == pytest.approx(0.3)
    assert per["tunnel"] == pytest.approx(0.8) and per["loadgen"] == pytest.approx(0.1)
    assert "tunnel" not in cpu_ms_per_conn(_sample(9000.0, 27000))  # direct: no tunnel ends
    assert cpu_ms_per_conn({"ok": 0}) == {}


def test_other_cpu_pct():
    # 2 cores fully busy for 3 s = 6 CPU s; ours: 0.3 + 0.2 + 1.5 + 0.9 = 2.9 s -> 3.1 s others = 103% of a core
    assert other_cpu_pct(_sample(1000.0, 3000, ingress=1.5, egress=0.9)) == pytest.approx(103.3, abs=0.1)
    assert other_cpu_pct({"cpu": {}}) is None


def _connrate():
    samples = {
        "direct": [_sample(9000.0, 27000), _sample(9500.0, 28500), _sample(8000.0, 24000)],
        "upstream-tng:attest": [_sample(1000.0, 3000, 1.5, 1.5, as_requests=1)] * 3,
        "tng_nfq:attest": [_sample(250.0, 750, 2.0, 1.5, as_requests=1), _sample(200.0, 600, 2.0, 1.5, 1, 1),
                           _sample(300.0, 900, 2.0, 1.5, as_requests=1)],
        "upstream-tng:no_ra": [_sample(1200.0, 3600, 1.5, 1.5)] * 3,
        "tng_nfq:no_ra": [],
    }
    errors = {p: [] for p in samples}
    errors["tng_nfq:attest"] = ["rep 2: 1 failed exchanges {'reset': 1}"]
    errors["tng_nfq:no_ra"] = ["rep 1: start failed: tng-nfq egress exited with code 1: boom"]
    return build_connrate_results(peers=list(samples), reps=3, samples=samples, errors=errors,
                                  headlines=CONNRATE_HEADLINES, params={"concurrency": 16})


def test_build_connrate_results():
    res = _connrate()
    d = res["peers"]["direct"]
    assert d["median_conn_per_s"] == 9000.0 and (d["min_conn_per_s"], d["max_conn_per_s"]) == (8000.0, 9500.0)
    assert d["status"] == "ok" and d["n"] == 3
    t = res["peers"]["tng_nfq:attest"]
    assert t["median_conn_per_s"] == 250.0 and t["status"] == "partial" and t["failed_exchanges"] == 1
    assert t["median_cpu_ms_per_conn"]["ingress"] == pytest.approx(2000 / 750, abs=1e-3)
    assert t["as_requests_per_rep"] == [1, 1, 1]
    assert res["peers"]["tng_nfq:no_ra"]["status"] == "failed"
    assert res["ratios"]["attest"] == {"numerator": "tng_nfq:attest", "denominator": "upstream-tng:attest",
                                       "ratio": pytest.approx(0.25)}
    assert res["ratios"]["no_ra"]["ratio"] is None  # numerator failed
    assert res["ratios"]["vs_direct"]["upstream-tng:no_ra"] == pytest.approx(1200 / 9000)
    assert json.loads(json.dumps(res)) == res


def test_format_connrate_table():
    lines = format_connrate_table(_connrate()).splitlines()
    assert lines[0].split()[:2] == ["peer", "conn/s"]
    row = next(ln for ln in lines if ln.startswith("tng_nfq:attest"))
    assert "250 (n=3)" in row and "200..300" in row and row.endswith("partial")
    assert "connrate tng_nfq / upstream-tng: attest 0.25x, no_ra n/a" in lines
    assert any(ln.startswith("tng_nfq:no_ra failed: rep 1: start failed") for ln in lines)


def test_plot_connrate_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.report import plot_connrate

    out = tmp_path / "c.png"
    plot_connrate({"machine": {"nproc": 2}, "connrate": _connrate()}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- profile helpers ------------------------------------------------------------------

_HANDSHAKE = ["Thread._bootstrap (threading.py:1002)", "Endpoint._run_handler (tng_nfq/tunnel/endpoint.py:147)",
              "MappingIngressEndpoint.handle (tng_nfq/tunnel/ingress/mapping.py:45)",
              "TlsChannel.handshake (tng_nfq/tunnel/channel.py:83)", "Connection.do_handshake (OpenSSL/SSL.py:1)"]
_START = ["Thread._bootstrap (threading.py:1002)", "Endpoint._accept_loop (tng_nfq/tunnel/endpoint.py:143)",
          "Thread.start (threading.py:957)"]
RAW = f"{';'.join(_HANDSHAKE)} 6\n{';'.join(_START)} 3\n 1\n"


def test_parse_collapsed_and_categorize():
    stacks = parse_collapsed(RAW)
    assert [c for _, c in stacks] == [6, 3, 1]
    assert categorize(stacks[0][0]) == "TLS handshake"
    assert categorize(stacks[1][0]) == "thread creation (Thread.start)"
    s = summarize(stacks, rate=100)
    assert s["samples"] == 10 and s["seconds"] == 0.1
    cats = {c["name"]: c["pct"] for c in s["categories"]}
    assert cats == {"TLS handshake": 60.0, "thread creation (Thread.start)": 30.0,
                    "thread start/exit in C (no Python frame)": 10.0}


PERF = """\
  100/101 
\tffffffff815ea064 do_anonymous_page+0x4d4 ([kernel.kallsyms])
\tffffffff821f3046 exc_page_fault+0x176 ([kernel.kallsyms])
\t          1b07 __memset_avx512_unaligned_erms+0x7 (/usr/lib/x86_64-linux-gnu/libc.so.6)

  100/102 
\t          74aa5e __ecp_nistz256_sqr_montx+0x13e (/venv/cryptography/hazmat/bindings/_rust.abi3.so)

  200/201 
\t          fcaf2 _PyEval_EvalFrameDefault+0x1f82 (/usr/lib/libpython3.11.so.1.0)

  999/999 
\t          fcaf2 _PyEval_EvalFrameDefault+0x1f82 (/usr/lib/libpython3.11.so.1.0)
"""


def test_parse_perf_script():
    out = parse_perf_script(PERF, {"ingress": 100, "egress": 200})
    assert dict(out["ingress"]) == {"kernel: page faults (first touch of fresh memory)": 1,
                                    "OpenSSL (crypto + TLS state machine)": 1}
    assert dict(out["egress"]) == {"Python interpreter (libpython)": 1}
