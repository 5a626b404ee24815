"""Pure parts of the encap suite (bench/encap.py, bench/encap_load.py): no root, no namespace."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import SUITES  # noqa: E402
from bench import encap  # noqa: E402
from bench import encap_load  # noqa: E402
from bench.__main__ import estimate_seconds, parse_args  # noqa: E402
from bench.peers import egress_config, ingress_config  # noqa: E402
from tng_nfq.config.load import load_config  # noqa: E402


def test_registered_and_opt_in():
    assert "encap" in SUITES
    args = parse_args(["--suites", "encap", "--quick"])
    assert args.suites == ["encap"]
    assert args.encap_size_mb == encap.QUICK["size_mb"]
    assert args.encap_rate_duration == encap.QUICK["rate_duration"]
    assert "encap" not in parse_args([]).suites
    assert estimate_seconds(args) > 0
    full = parse_args(["--suites", "encap", "--encap-size-mb", "64"])
    assert full.encap_size_mb == 64 and full.encap_rate_duration == encap.DEFAULTS["rate_duration"]


def test_peers_follow_selection():
    assert encap.encap_peers(["direct", "stunnel", "upstream-tng", "tng_nfq"]) == list(encap.PEER_NAMES)
    assert encap.encap_peers(["tng_nfq"]) == ["tng_nfq:no_ra", "tng_nfq:attest"]
    assert encap.encap_peers(["stunnel"]) == []


def test_configs_are_valid_tng_nfq_configs():
    ing = ingress_config(1, 2, ra=encap.encap_ra(None, "ingress"))
    eg = egress_config(2, 3, ra=encap.encap_ra(None, "egress"))
    assert ing["add_ingress"][0]["encap_in_http"] == {} and ing["add_ingress"][0]["no_ra"] is True
    assert eg["add_egress"][0]["decap_from_http"] == {}
    attest = encap.encap_ra({"attest": {"aa_addr": "unix:///x"}}, "egress")
    assert "no_ra" not in attest and attest["decap_from_http"] == {}
    for cfg in (ing, eg):
        load_config(json.dumps(cfg))


def test_curl_argv_and_parse():
    down = encap.curl_argv(5, "download")
    assert down[-1] == "http://127.0.0.1:5/big" and "-T" not in down
    up = encap.curl_argv(5, "upload", Path("/tmp/f"))
    assert up[-1] == "http://127.0.0.1:5/up" and up[up.index("-T") + 1] == "/tmp/f" and "Expect:" in up
    assert encap.parse_curl("200 1000000 0 0.5", "download", 1000000) == (2.0, "")
    assert encap.parse_curl("200 4 1000000 2.0", "upload", 1000000) == (0.5, "")
    assert encap.parse_curl("502 10 0 0.1", "download", 1000000)[0] is None
    value, why = encap.parse_curl("200 999 0 0.1", "download", 1000000)
    assert value is None and "999" in why
    assert encap.parse_curl("garbage", "download", 1)[0] is None


def test_parse_rate():
    assert encap.parse_rate('{"ok": 10, "req_per_s": 5.0, "error": null}\n') == (5.0, "")
    assert encap.parse_rate('{"ok": 3, "req_per_s": 1.0, "error": "boom"}')[0] is None
    assert encap.parse_rate("")[0] is None
    assert encap.parse_rate("not json")[0] is None


def test_summarize_ratios_and_table():
    peers = ["direct", "upstream-tng:no_ra", "tng_nfq:no_ra"]
    samples = {"direct": {"download": [1000, 1200, 1100], "upload": [500], "rate": [10000]},
               "upstream-tng:no_ra": {"download": [400, 420, 410], "upload": [300], "rate": [1000]},
               "tng_nfq:no_ra": {"download": [300, 310, 305], "upload": [330], "rate": [500]}}
    res = encap.summarize(peers, samples, {"tng_nfq:no_ra": ["rep 2 rate: x"]}, reps=3)
    assert res["peers"]["upstream-tng:no_ra"]["download"]["median"] == 410
    assert abs(res["ratios"]["no_ra"]["download"] - 305 / 410) < 1e-9
    assert abs(res["ratios"]["no_ra"]["upload"] - 1.1) < 1e-9
    assert res["ratios"]["no_ra"]["rate"] == 0.5
    assert "attest" not in res["ratios"]
    assert res["peers"]["tng_nfq:no_ra"]["status"] == "partial"
    assert res["peers"]["direct"]["status"] == "partial"  # 5 of 9 samples
    assert abs(res["vs_direct"]["tng_nfq:no_ra"]["download"] - 305 / 1100) < 1e-9
    table = encap.format_table(res)
    assert "0.74x" in table and "1.10x" in table and "0.50x" in table
    empty = encap.summarize(["tng_nfq:attest"], {}, {"tng_nfq:attest": ["start failed"]}, reps=1)
    assert empty["peers"]["tng_nfq:attest"]["status"] == "failed"
    assert "       -" in encap.format_table(empty)


def _server(big: int):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    zeros = memoryview(bytes(1000))

    def loop():
        while True:
            try:
                sock, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=encap_load._serve_conn, args=(sock, big, zeros), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return lsock


def test_backend_and_rate_client_on_loopback():
    lsock = _server(big=2500)
    port = lsock.getsockname()[1]
    try:
        conn = encap_load.Conn(socket.create_connection(("127.0.0.1", port), timeout=5))
        conn.sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        line, headers = conn.head()
        assert line.startswith("HTTP/1.1 200") and conn.body(headers) == 2500
        # chunked upload on the same keep-alive connection
        conn.sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
        line, headers = conn.head()
        assert conn.buf[:int(headers["content-length"])] == b"5"
        conn.body(headers)
        encap_load.one_request(conn)
        conn.sock.close()
        out = encap_load.rate("127.0.0.1", port, 0.2, 5.0)
        assert out["ok"] > 0 and out["req_per_s"] > 0 and out["error"] is None
    finally:
        lsock.close()


def test_cpu_per_unit_and_cpu_ratios():
    assert encap.cpu_per_unit("download", 2.0, 300.0, 500_000_000, 3.0) == 4.0
    assert encap.cpu_per_unit("rate", 3.0, 1000.0, 1, 3.0) == 1.0  # 3000 requests, 3 s CPU
    assert encap.cpu_per_unit("rate", None, 1000.0, 1, 3.0) is None
    peers = ["upstream-tng:no_ra", "tng_nfq:no_ra"]
    samples = {"upstream-tng:no_ra": {"download": [400], "download_cpu": [3.0], "rate": [1000], "rate_cpu": [1.0]},
               "tng_nfq:no_ra": {"download": [420], "download_cpu": [2.4, None], "rate": [300], "rate_cpu": [2.5]}}
    res = encap.summarize(peers, samples, {}, reps=1)
    assert res["peers"]["tng_nfq:no_ra"]["download"]["cpu_median"] == 2.4
    assert abs(res["cpu_ratios"]["no_ra"]["download"] - 0.8) < 1e-9
    assert res["cpu_ratios"]["no_ra"]["rate"] == 2.5
    assert res["cpu_ratios"]["no_ra"]["upload"] is None
    table = encap.format_table(res)
    assert "CPU ratio" in table and "0.80x" in table and "2.40" in table
