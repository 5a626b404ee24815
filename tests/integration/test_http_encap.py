"""HTTP encapsulation (encap_in_http / decap_from_http) end to end, through a
real nginx that routes by path, in lab namespaces only.

client namespace (198.18.0.1)              server namespace (198.18.0.2)
  curl -> ingress 127.0.0.1:10001            nginx 198.18.0.2:8080
          (mapping, encap_in_http,             /api/predict/ -> egress 127.0.0.1:20001
           path_rewrites)  ==== HTTP ====>     /             -> 404 "no route"
                                             egress (mapping, decap_from_http) -> app 127.0.0.1:30001

The app echoes what it received (method, target, Host, body digest). A
capture on the veth shows what nginx and the network see: outer POSTs with
the rewritten path and the inner Host, nothing of the inner request.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from helpers.http_app_runner import start_app
from helpers.nginx import Nginx, nginx_binary
from tng_nfq.lab.capture import capture

pytestmark = pytest.mark.root

INGRESS, NGINX, EGRESS, APP = 10001, 8080, 20001, 30001
SECRET = "inner-secret-7d1f"
REWRITES = [{"match_regex": "^/api/predict/([^/]+)([/]?.*)$", "substitution": "/api/predict/\\1"}]



@pytest.fixture
def app(lab):
    return start_app(lab, APP)


@pytest.fixture
def nginx(lab, tmp_path):
    if nginx_binary() is None:
        pytest.skip("nginx not installed")
    box = Nginx(lab.lab, lab.server, tmp_path, f"{lab.SERVER_ADDR}:{NGINX}",
                {"/api/predict/": f"127.0.0.1:{EGRESS}"})
    yield box
    box.stop()


def ingress_cfg(target_port: int = NGINX, **extra) -> dict:
    return {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": INGRESS},
                                         "out": {"host": "198.18.0.2", "port": target_port}},
                             "encap_in_http": {"path_rewrites": REWRITES}, "no_ra": True, **extra}]}


def egress_cfg(decap: dict | None = None) -> dict:
    return {"add_egress": [{"mapping": {"in": {"host": "127.0.0.1", "port": EGRESS},
                                        "out": {"host": "127.0.0.1", "port": APP}},
                            "decap_from_http": decap or {}, "no_ra": True}]}


def curl(lab, *args: str, ns=None) -> str:
    proc = (ns or lab.client).run(["curl", "-sS", "--max-time", "20", *args], check=False, timeout=40)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def start_pair(lab, ingress_impl: str = "tng_nfq", egress_impl: str = "tng_nfq"):
    eg = lab.start_gateway(egress_impl, lab.server, egress_cfg(), "egress")
    ing = lab.start_gateway(ingress_impl, lab.client, ingress_cfg(), "ingress")
    return ing, eg


def test_requests_cross_nginx_routed_by_the_rewritten_path(lab, app, nginx, tmp_path):
    ing, eg = start_pair(lab)
    url = f"http://127.0.0.1:{INGRESS}/api/predict/model-a/v1/run?token={SECRET}"
    body = os.urandom(2 * 1024 * 1024)
    (tmp_path / "up.bin").write_bytes(body)
    pcap = tmp_path / "wire.pcap"
    with capture(lab.client, NGINX, pcap, interface="veth1a"):
        got = json.loads(curl(lab, "-H", f"X-Secret: {SECRET}", url))
        posted = json.loads(curl(lab, "--data-binary", f"@{tmp_path / 'up.bin'}", url))
        chunked = json.loads(curl(lab, "-H", "Transfer-Encoding: chunked", "--data-binary",
                                  f"@{tmp_path / 'up.bin'}", url))
        big = curl(lab, f"http://127.0.0.1:{INGRESS}/api/predict/model-b/big")
    # the app got the inner request exactly: method, full path + query, Host, headers, body
    got.pop("conn")
    assert got == {"method": "GET", "target": f"/api/predict/model-a/v1/run?token={SECRET}",
                   "host": f"127.0.0.1:{INGRESS}", "x_secret": SECRET, "n": 0,
                   "sha": hashlib.sha256(b"").hexdigest(), "te": None}
    assert (posted["method"], posted["n"], posted["sha"]) == ("POST", len(body), hashlib.sha256(body).hexdigest())
    assert (chunked["n"], chunked["sha"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert big == "B" * (3 * 1024 * 1024)
    # nginx saw outer POSTs only, on the rewritten path, with the inner Host and the tng marker
    lab.poll_until(lambda: len(nginx.requests()) >= 6, "nginx log")
    seen = nginx.requests()
    assert [(r["method"], r["uri"], r["api"], r["status"]) for r in seen] == [
        ("POST", "/api/predict/model-a", "/tng/key-config", 200)] + [
        ("POST", "/api/predict/model-a", "/tng/tunnel", 200)] * 3 + [
        ("POST", "/api/predict/model-b", "/tng/key-config", 200),
        ("POST", "/api/predict/model-b", "/tng/tunnel", 200)], seen
    assert all(r["host"] == "127.0.0.1" and r["tng"] for r in seen), seen
    assert {r["content_type"] for r in seen if r["api"] == "/tng/tunnel"} == {"message/ohttp-chunked-req"}
    # the wire between ingress and nginx: no inner path, header or body in clear
    wire = pcap.read_bytes()
    for needle in (SECRET.encode(), b"/v1/run", b"X-Secret", body[:64], b"B" * 64, b"GET /api"):
        assert needle not in wire, needle
    assert b"POST /api/predict/model-a HTTP/1.1" in wire
    assert all(e["outcome"] == "ok" and e["encrypted"] for e in ing.access()), ing.access()


def test_unrouted_path_gets_a_clear_error(lab, app, nginx):
    """An inner path that path_rewrites maps to "/", which nginx does not
    route to the egress: the key-config request (sent on the outer path,
    like upstream) gets nginx's 404 and the application a 502 saying so."""
    lab.start_nfq(lab.server, egress_cfg(), "egress")
    ing = lab.start_nfq(lab.client, ingress_cfg(), "ingress")
    proc = lab.client.run(["curl", "-sS", "--max-time", "20", "-w", "%{http_code}",
                           f"http://127.0.0.1:{INGRESS}/other"], check=False, timeout=40)
    assert proc.stdout.endswith("502"), proc.stdout
    assert "key configuration" in proc.stdout and "HTTP 404" in proc.stdout, proc.stdout
    (line,) = ing.wait_access(1)
    assert line["outcome"] == "error" and "HTTP 404" in line["error"], line
    assert [(r["uri"], r["api"], r["status"]) for r in nginx.requests()] == [("/", "/tng/key-config", 404)]


@pytest.mark.parametrize("ingress_impl, egress_impl", [
    ("upstream", "tng_nfq"), ("tng_nfq", "upstream"), ("upstream", "upstream")])
def test_interop_with_upstream_through_nginx(lab, app, nginx, ingress_impl, egress_impl, tmp_path):
    start_pair(lab, ingress_impl, egress_impl)
    url = f"http://127.0.0.1:{INGRESS}/api/predict/model-a/x?q={SECRET}"
    got = json.loads(curl(lab, "-H", f"X-Secret: {SECRET}", url))
    assert (got["method"], got["target"], got["x_secret"]) == ("GET", f"/api/predict/model-a/x?q={SECRET}", SECRET)
    body = os.urandom(1024 * 1024)
    (tmp_path / "up.bin").write_bytes(body)
    posted = json.loads(curl(lab, "--data-binary", f"@{tmp_path / 'up.bin'}", url))
    assert (posted["n"], posted["sha"]) == (len(body), hashlib.sha256(body).hexdigest())
    big = curl(lab, f"http://127.0.0.1:{INGRESS}/api/predict/model-b/big")
    assert big == "B" * (3 * 1024 * 1024)
    # nginx writes its log line once it has finished the request: wait for the last one
    lab.poll_until(lambda: len([r for r in nginx.requests() if r["api"] == "/tng/tunnel"]) >= 3, "nginx log")
    assert [r["uri"] for r in nginx.requests() if r["api"] == "/tng/tunnel"] == [
        "/api/predict/model-a", "/api/predict/model-a", "/api/predict/model-b"]


def test_keep_alive_requests_share_one_client_connection(lab, app, nginx):
    ing, _ = start_pair(lab)
    base = f"http://127.0.0.1:{INGRESS}/api/predict/m"
    out = curl(lab, f"{base}/one", f"{base}/two", f"{base}/three")
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["target"] for a in answers] == ["/api/predict/m/one", "/api/predict/m/two", "/api/predict/m/three"]
    # the egress kept its backend connection alive across the three requests
    assert len({a["conn"] for a in answers}) == 1, answers
    (line,) = ing.wait_access(1)
    assert line["requests"] == 3 and line["outcome"] == "ok", line


def test_raw_tcp_client_gets_a_clear_error(lab, app, nginx):
    ing, _ = start_pair(lab)
    sock = lab.connect(INGRESS)
    sock.sendall(b"\x16\x03\x01\x00\x05hello not http\r\n\r\n")
    reply, _ = lab.recv_until_closed(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"carries HTTP only" in reply.split(b"\r\n\r\n", 1)[1], reply
    (line,) = ing.wait_access(1)
    assert line["outcome"] == "error", line


def test_manual_allow_non_tng_traffic_regexes(lab, app):
    """The manual's example: netfilter egress capturing 30001 with
    decap_from_http.allow_non_tng_traffic_regexes ["/api/builtin/.*"]."""
    lab.start_nfq(lab.server, {"add_egress": [{
        "netfilter": {"capture_dst": {"port": APP}, "capture_local_traffic": True},
        "decap_from_http": {"allow_non_tng_traffic_regexes": ["/api/builtin/.*"]}, "no_ra": True}]}, "egress")
    ing = lab.start_nfq(lab.client, {"add_ingress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": INGRESS}, "out": {"host": "198.18.0.2", "port": APP}},
        "encap_in_http": {"path_rewrites": REWRITES}, "no_ra": True}]}, "ingress")

    def status(url: str, *extra: str, ns=None) -> tuple[int, str]:
        proc = (ns or lab.server).run(["curl", "-sS", "--max-time", "20", "-o", "/dev/stdout", "-w",
                                       "\n%{http_code}", *extra, url], check=False, timeout=40)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code), body

    # through the tunnel: works
    code, body = status(f"http://127.0.0.1:{INGRESS}/", ns=lab.client)
    assert code == 200 and json.loads(body)["target"] == "/", body
    # plain traffic to the captured port: denied
    code, body = status(f"http://127.0.0.1:{APP}")
    assert code == 403 and "RejectNonTngRequest" in body, body
    # the manual's four examples
    assert status(f"http://127.0.0.1:{APP}/api/builtin")[0] == 403
    code, body = status(f"http://127.0.0.1:{APP}/api/builtin/")
    assert code == 200 and json.loads(body)["target"] == "/api/builtin/"
    code, body = status(f"http://127.0.0.1:{APP}/api/builtin/abc")
    assert code == 200 and json.loads(body)["method"] == "GET"
    code, body = status(f"http://127.0.0.1:{APP}/api/builtin/abc", "-X", "POST")
    assert code == 200 and json.loads(body)["method"] == "POST"
    assert ing.access()[0]["outcome"] == "ok"


def test_manual_http_proxy_with_encapsulation(lab, app):
    """The manual's last example: http_proxy ingress (domain "*", port 30001)
    with encap_in_http, netfilter egress with decap_from_http."""
    lab.start_nfq(lab.server, {"add_egress": [{
        "netfilter": {"capture_dst": {"port": APP}, "capture_local_traffic": True},
        "decap_from_http": {}, "no_ra": True}]}, "egress")
    ing = lab.start_nfq(lab.client, {"add_ingress": [{
        "http_proxy": {"proxy_listen": {"host": "0.0.0.0", "port": 41000},
                       "dst_filter": {"domain": "*", "port": APP}},
        "encap_in_http": {"path_rewrites": REWRITES}, "no_ra": True}]}, "ingress")
    env_curl = ["env", "all_proxy=http://127.0.0.1:41000", "curl", "-sS", "--max-time", "20"]
    proc = lab.client.run([*env_curl, f"http://{lab.SERVER_ADDR}:{APP}/api/predict/m/x?k={SECRET}",
                           f"http://{lab.SERVER_ADDR}:{APP}/two"], check=False, timeout=40)
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert (first["target"], first["host"]) == (f"/api/predict/m/x?k={SECRET}", f"{lab.SERVER_ADDR}:{APP}")
    assert second["target"] == "/two"
    (line,) = ing.wait_access(1)
    assert line["outcome"] == "ok" and line["requests"] == 2 and line["encrypted"], line
    # raw TCP through CONNECT cannot be encapsulated: a clear refusal
    proc = lab.client.run([*env_curl, "-p", "-w", "%{http_code}", "-o", "/dev/null",
                           f"http://{lab.SERVER_ADDR}:{APP}/"], check=False, timeout=40)
    assert "400" in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
