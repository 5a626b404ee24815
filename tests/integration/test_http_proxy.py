"""Ingress http_proxy end to end, in lab namespaces only.

client namespace (198.18.0.1)                    server namespace (198.18.0.2)
  nc -X connect / curl -x / all_proxy              nc -l 9991 (the manual's cachefs case)
    -> tng-nfq http_proxy 0.0.0.0:41000            app (HTTP/1.1, keep-alive) 0.0.0.0:30001
       dst_filters *:9991, 198.18.0.*:30001        tng-nfq egress netfilter capturing 9991, 30001
       == rats-tls to 198.18.0.2:9991/30001 ==>    app 0.0.0.0:30002 (not captured: reached in clear)

no_ra on both ends. Captures on the server's veth prove what crosses the
wire: TLS only toward the filtered ports, the clear request toward 30002.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tng_nfq.lab.capture import analyze_pcap, capture
from tng_nfq.lab.netns import wait_for_port

pytestmark = pytest.mark.root

PROXY, CACHEFS, APP, CLEAR, CLOSED = 41000, 9991, 30001, 30002, 30009
SERVER_VETH = "veth1b"
HEAD_TIMEOUT = "2"  # the daemon's 408 timeout in these tests (TNG_NFQ_HTTP_HEAD_TIMEOUT)

# An HTTP/1.1 origin that says what it received: method, target, Host, Via,
# body size and digest (POST bodies read per their framing by http.server).
APP_SOURCE = r'''
import hashlib, http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body_in=b""):
        out = json.dumps({"method": self.command, "target": self.path, "host": self.headers.get("Host"),
                          "via": self.headers.get("Via"), "port": int(sys.argv[1]),
                          "n": len(body_in), "sha": hashlib.sha256(body_in).hexdigest(),
                          "marker": sys.argv[2]}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self._reply()

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(bytes(data))

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''


def proxy_config() -> dict:
    return {"add_ingress": [{"http_proxy": {"proxy_listen": {"host": "0.0.0.0", "port": PROXY},
                                            "dst_filters": [{"domain": "*", "port": CACHEFS},
                                                            {"domain": "198.18.0.*", "port": APP}]},
                             "no_ra": True}]}


def egress_config() -> dict:
    return {"add_egress": [{"netfilter": {"capture_dst": {"port": port}}, "no_ra": True}
                           for port in (CACHEFS, APP)]}


@pytest.fixture
def setup(lab, tmp_path, monkeypatch):
    app = tmp_path / "app.py"
    app.write_text(APP_SOURCE)
    marker = "TNGNFQ-HTTP-PROXY-" + os.urandom(6).hex()
    for port in (APP, CLEAR):
        path, handle = lab._log(f"app-{port}")
        proc = lab.lab.spawn(lab.server, [sys.executable, str(app), str(port), marker],
                             stdin=None, stdout=handle, stderr=handle)
        wait_for_port(lab.server, "127.0.0.1", port, timeout=lab.WAIT, proc=proc)
    egress = lab.start_nfq(lab.server, egress_config(), "egress")
    monkeypatch.setenv("TNG_NFQ_HTTP_HEAD_TIMEOUT", HEAD_TIMEOUT)
    proxy = lab.start_nfq(lab.client, proxy_config(), "proxy")
    return {"egress": egress, "proxy": proxy, "marker": marker}


def curl(lab, *args, env=None, timeout=30):
    return lab.client.run(["curl", "-sS", "--max-time", "20", *args], check=False, timeout=timeout,
                          env={**os.environ, **(env or {})})


def replies(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def exchange(lab, data: bytes) -> bytes:
    """Send raw bytes to the proxy, return everything it answers until it closes."""
    with lab.connect(PROXY) as sock:
        sock.sendall(data)
        answer, _ = lab.recv_until_closed(sock)
    return answer


def test_manual_cachefs_case_nc_connect_is_tls_on_the_wire(lab, setup, tmp_path):
    """`nc -X connect -x 127.0.0.1:41000 <server> 9991` to `nc -l 9991` behind a netfilter egress."""
    request = f"cachefs hello {setup['marker']}\n".encode()
    reply = f"cachefs reply {setup['marker'][::-1]}\n".encode()
    (tmp_path / "reply.txt").write_bytes(reply)
    (tmp_path / "request.txt").write_bytes(request)
    got = tmp_path / "got.txt"
    with open(tmp_path / "reply.txt", "rb") as stdin, open(got, "wb") as stdout:
        listener = lab.lab.spawn(lab.server, ["nc", "-N", "-l", str(CACHEFS)], stdin=stdin, stdout=stdout)
    # nc -l serves one connection: readiness from the socket table, not a probe connection
    lab.poll_until(lambda: f":{CACHEFS} " in lab.server.run(["ss", "-Hltn"]).stdout,
                   "nc -l listening", proc=listener)

    with capture(lab.server, CACHEFS, tmp_path / "wire.pcap", interface=SERVER_VETH) as pcap:
        with open(tmp_path / "request.txt", "rb") as stdin:
            result = lab.client.run(["nc", "-N", "-X", "connect", "-x", f"127.0.0.1:{PROXY}",
                                     lab.SERVER_ADDR, str(CACHEFS)], stdin=stdin, text=False,
                                    check=False, timeout=lab.WAIT)
        listener.wait(timeout=lab.WAIT)

    assert result.stdout == reply, result.stderr
    assert got.read_bytes() == request
    report = analyze_pcap(pcap, CACHEFS)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert all(f.alpn_offered == ["rats-tls"] for f in report.flows)
    assert not report.contains(setup["marker"].encode()) and not report.contains(setup["marker"][::-1].encode())
    (entry,) = setup["proxy"].wait_access()
    assert entry["mode"] == "http_proxy" and entry["outcome"] == "ok", entry
    assert entry["encrypted"] is True and entry["upstream"] == f"{lab.SERVER_ADDR}:{CACHEFS}"
    assert entry["bytes_up"] == len(request) and entry["bytes_down"] == len(reply)


def test_curl_get_and_chunked_post_through_the_tunnel_then_clear_on_one_connection(lab, setup, tmp_path):
    upload = os.urandom(300_000)
    (tmp_path / "upload.bin").write_bytes(upload)
    tunneled = f"http://{lab.SERVER_ADDR}:{APP}"
    clear = f"http://{lab.SERVER_ADDR}:{CLEAR}"

    pcaps = {port: tmp_path / f"wire-{port}.pcap" for port in (APP, CLEAR)}
    with capture(lab.server, APP, pcaps[APP], interface=SERVER_VETH), \
            capture(lab.server, CLEAR, pcaps[CLEAR], interface=SERVER_VETH):
        # one curl, one proxy connection (curl reuses it): tunnel, tunnel, then clear
        first = curl(lab, "-v", "-x", f"http://127.0.0.1:{PROXY}", f"{tunneled}/a?x=1", f"{tunneled}/b",
                     f"{clear}/c")
        post = curl(lab, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{tmp_path / 'upload.bin'}",
                    f"{tunneled}/up", env={"all_proxy": f"http://127.0.0.1:{PROXY}"})
        sized = curl(lab, "--data-binary", f"@{tmp_path / 'upload.bin'}", f"{tunneled}/sized",
                     env={"http_proxy": f"http://127.0.0.1:{PROXY}"})

    assert first.returncode == 0, first.stderr
    a, b, c = replies(first.stdout)
    assert (a["target"], a["port"], a["via"]) == ("/a?x=1", APP, None)  # origin-form, no proxy marker
    assert a["host"] == f"{lab.SERVER_ADDR}:{APP}"
    assert (b["target"], b["port"]) == ("/b", APP)
    assert (c["target"], c["port"]) == ("/c", CLEAR) and c["via"].startswith("1.1 tng-nfq-")
    assert first.stderr.count("Re-using existing connection") >= 2, first.stderr  # keep-alive held
    assert post.returncode == 0, post.stderr
    (p,) = replies(post.stdout)
    assert (p["method"], p["n"], p["sha"]) == ("POST", len(upload), lab.sha256(upload))
    (s,) = replies(sized.stdout)
    assert (s["n"], s["sha"]) == (len(upload), lab.sha256(upload))

    wire = {port: analyze_pcap(path, port) for port, path in pcaps.items()}
    assert wire[APP].flows and wire[APP].all_tls, [f.summary() for f in wire[APP].flows]
    assert not wire[APP].contains(setup["marker"].encode()) and not wire[APP].contains(b"/sized")
    assert wire[CLEAR].contains(b"GET /c HTTP/1.1") and wire[CLEAR].contains(setup["marker"].encode())

    entries = setup["proxy"].wait_access(4)
    by_port = {}
    for e in entries:
        by_port.setdefault(e["upstream"], []).append(e)
    assert all(e["encrypted"] for e in by_port[f"{lab.SERVER_ADDR}:{APP}"]), entries
    assert [e["encrypted"] for e in by_port[f"{lab.SERVER_ADDR}:{CLEAR}"]] == [False]
    assert all(e["outcome"] == "ok" for e in entries), entries
    # two tunneled requests on the first client connection shared one tunnel
    assert len(by_port[f"{lab.SERVER_ADDR}:{APP}"]) == 3


def test_errors_are_answered_and_the_proxy_stays_up(lab, setup):
    cases = [
        (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
        (b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n", b"400 Bad Request"),
        (b"GET http://h/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414 URI Too Long"),
        (b"GET http://h/ HTTP/1.1\r\n" + b"X-Big: " + b"v" * 70_000 + b"\r\n\r\n",
         b"431 Request Header Fields Too Large"),
        (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n", b"408 Request Timeout"),  # stalls: head never ends
        (f"GET http://{lab.SERVER_ADDR}:{CLOSED}/ HTTP/1.1\r\n\r\n".encode(), b"502 Bad Gateway"),
        (f"CONNECT {lab.SERVER_ADDR}:{CLOSED} HTTP/1.1\r\n\r\n".encode(), b"502 Bad Gateway"),
        (f"GET http://{lab.CLIENT_ADDR}:{PROXY}/ HTTP/1.1\r\n\r\n".encode(), b"508 Loop Detected"),
        (f"GET http://127.0.0.1:{PROXY}/ HTTP/1.1\r\n\r\n".encode(), b"508 Loop Detected"),
        (f"CONNECT localhost:{PROXY} HTTP/1.1\r\n\r\n".encode(), b"508 Loop Detected"),
    ]
    for request, status in cases:
        answer = exchange(lab, request)
        assert answer.startswith(b"HTTP/1.1 " + status), (request[:60], answer[:200])
        assert b"tng-nfq http_proxy: " in answer
        assert setup["proxy"].alive
        ok = curl(lab, "-x", f"http://127.0.0.1:{PROXY}", f"http://{lab.SERVER_ADDR}:{APP}/alive")
        assert ok.returncode == 0 and replies(ok.stdout)[0]["target"] == "/alive", (request[:60], ok.stderr)
    errors = [e for e in setup["proxy"].access() if e["outcome"] == "error"]
    assert any("loop" in e["error"] for e in errors), errors
    assert any(e["error"].startswith("408") for e in errors), errors


def test_a_forwarded_request_steered_back_to_the_proxy_does_not_loop(lab, setup):
    """The clear request we forward comes back to us (a REDIRECT rule in the
    client namespace): it arrives in origin-form with our Via marker and is
    refused instead of being forwarded again."""
    lab.client.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", lab.SERVER_ADDR,
                    "--dport", "30005", "-j", "REDIRECT", "--to-ports", str(PROXY)])

    answer = exchange(lab, f"GET http://{lab.SERVER_ADDR}:30005/x HTTP/1.1\r\n\r\n".encode())

    assert answer.startswith(b"HTTP/1.1 400 ") and b"not a proxy request" in answer, answer[:300]
    assert setup["proxy"].alive


def read_response(sock) -> bytes:
    """One response with a Content-Length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_sigterm_with_an_open_keep_alive_connection_stops_cleanly(lab, setup):
    sock = lab.connect(PROXY)
    try:
        for path in ("/one", "/two"):  # same tunnel, kept alive between requests
            sock.sendall(f"GET http://{lab.SERVER_ADDR}:{APP}{path} HTTP/1.1\r\n\r\n".encode())
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 200") and f'"target": "{path}"'.encode() in answer
        assert setup["proxy"].stop() == 0
        rest, _ = lab.recv_until_closed(sock)
        assert rest == b""
    finally:
        sock.close()
    (entry,) = setup["proxy"].wait_access()
    assert entry["encrypted"] is True and entry["upstream"] == f"{lab.SERVER_ADDR}:{APP}", entry


def test_a_malformed_chunked_body_cuts_the_request_and_the_proxy_stays_up(lab, setup):
    request = (f"POST http://{lab.SERVER_ADDR}:{APP}/bad HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\nzz\r\n").encode()

    answer = exchange(lab, request)

    assert b"tng-nfq http_proxy" not in answer  # no answer of ours after bytes went upstream
    (entry,) = setup["proxy"].wait_access(where=lambda e: e["outcome"] == "error")
    assert "malformed request body" in entry["error"] and entry["encrypted"] is True, entry
    ok = curl(lab, "-x", f"http://127.0.0.1:{PROXY}", f"http://{lab.SERVER_ADDR}:{APP}/alive")
    assert ok.returncode == 0 and replies(ok.stdout)[0]["target"] == "/alive", ok.stderr


def test_manual_cachefs_case_in_one_instance(lab, tmp_path):
    """The manual's cachefs config as written (one instance: http_proxy ingress
    with dst_filter *:9991, netfilter egress capturing 9991 with
    capture_local_traffic; no_ra instead of the sample attestation), both nc
    ends on 127.0.0.1; the tunnel leg is the egress listener's port on lo."""
    marker = "TNGNFQ-CACHEFS-" + os.urandom(6).hex()
    (tmp_path / "reply.txt").write_bytes(f"pong {marker[::-1]}\n".encode())
    (tmp_path / "request.txt").write_bytes(f"ping {marker}\n".encode())
    config = {"add_ingress": [{"http_proxy": {"proxy_listen": {"host": "0.0.0.0", "port": PROXY},
                                              "dst_filter": {"domain": "*", "port": CACHEFS}},
                               "no_ra": True}],
              "add_egress": [{"netfilter": {"capture_dst": {"port": CACHEFS}, "capture_local_traffic": True},
                              "no_ra": True}]}
    gw = lab.start_nfq(lab.server, config, "cachefs")
    with open(tmp_path / "reply.txt", "rb") as stdin, open(tmp_path / "got.txt", "wb") as stdout:
        listener = lab.lab.spawn(lab.server, ["nc", "-N", "-l", str(CACHEFS)], stdin=stdin, stdout=stdout)
    lab.poll_until(lambda: f":{CACHEFS} " in lab.server.run(["ss", "-Hltn"]).stdout,
                   "nc -l listening", proc=listener)

    with capture(lab.server, 40000, tmp_path / "lo.pcap", interface="lo") as pcap:
        with open(tmp_path / "request.txt", "rb") as stdin:
            result = lab.server.run(["nc", "-N", "-X", "connect", "-x", f"127.0.0.1:{PROXY}",
                                     "127.0.0.1", str(CACHEFS)], stdin=stdin, text=False,
                                    check=False, timeout=lab.WAIT)
        listener.wait(timeout=lab.WAIT)

    assert result.stdout == (tmp_path / "reply.txt").read_bytes(), result.stderr
    assert (tmp_path / "got.txt").read_bytes() == (tmp_path / "request.txt").read_bytes()
    report = analyze_pcap(pcap, 40000)
    assert report.flows and report.all_tls, [f.summary() for f in report.flows]
    assert not report.contains(marker.encode()) and not report.contains(marker[::-1].encode())
    entries = gw.wait_access(2)
    assert {(e["endpoint"], e["mode"], e["encrypted"], e["outcome"]) for e in entries} == {
        ("add_ingress[0]", "http_proxy", True, "ok"), ("add_egress[0]", "netfilter", True, "ok")}, entries
