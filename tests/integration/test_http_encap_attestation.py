"""HTTP encapsulation with remote attestation (docs/ohttp-wire.md §2), in lab
namespaces with the sample-TEE dev AA / dev AS:

- the egress binds its HPKE key configuration to evidence; the ingress
  refuses to seal a request to a key the AS did not vouch for;
- the ingress attests its own X25519 key; the egress verifies it and opens
  requests in HPKE auth mode only from that key;
- both models (background check, passport), tng_nfq on both ends and
  upstream tng 2.12 on either end.

Every case carries a real HTTP request (the app echoes what it received).
"""

from __future__ import annotations

import json

import pytest

from helpers.attestation import (  # noqa: F401  (att is a fixture)
    att,
    attest,
    attest_passport,
    verify_bg,
    verify_passport,
)
from helpers.http_app_runner import start_app

pytestmark = pytest.mark.root
interop = pytest.mark.interop

IN, TUN, APP = 10001, 20001, 30001
SERVER_AS, CLIENT_AS = 18080, 18090
SAMPLE = {"tee_type": "sample", "policy_ids": ["default"], "status": "affirming"}


def ingress(ra: dict) -> dict:
    return {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": IN},
                                         "out": {"host": "198.18.0.2", "port": TUN}},
                             "encap_in_http": {}, **ra}]}


def egress(ra: dict) -> dict:
    return {"add_egress": [{"mapping": {"in": {"host": "198.18.0.2", "port": TUN},
                                        "out": {"host": "127.0.0.1", "port": APP}},
                            "decap_from_http": {}, **ra}]}


def request(lab, path: str = "/hello?x=1") -> tuple[int, str]:
    proc = lab.client.run(["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}",
                           f"http://127.0.0.1:{IN}{path}"], check=False, timeout=60)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def ok(lab) -> dict:
    code, body = request(lab)
    assert code == 200, body
    got = json.loads(body)
    assert got["target"] == "/hello?x=1", got
    return got


def line(gw) -> dict:
    """The access-log line of the connection that carried the one request
    (an egress also logs the key-config and client-attestation calls)."""
    gw.wait_access(1, where=lambda e: e.get("tunneled", 1))
    (entry,) = [e for e in gw.access() if e.get("tunneled", 1)]
    return entry


# -- tng_nfq on both ends ----------------------------------------------------------------

@pytest.mark.parametrize("model", ["background_check", "passport"])
def test_ours_egress_attests_ingress_verifies(lab, att, model):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.server if model == "passport" else lab.client, port=SERVER_AS)
    start_app(lab, APP)
    server_ra = {"attest": attest(aa) if model == "background_check" else attest_passport(aa, svc)}
    client_ra = {"verify": verify_bg(svc) if model == "background_check" else verify_passport(svc.ca)}
    eg = lab.start_nfq(lab.server, egress(server_ra), "egress")
    ing = lab.start_nfq(lab.client, ingress(client_ra), "ingress")
    ok(lab)
    ok(lab)  # the key configuration (and its verdict) is cached: one appraisal
    entry = ing.wait_access(2)[0]
    assert entry["outcome"] == "ok" and entry["attested"], entry
    assert entry["peer_attestation"] == {**SAMPLE, "model": model}, entry
    (appraisal,) = svc.appraisals()
    (vr,) = json.loads(appraisal["body"])["verification_requests"]
    # the evidence covers the published key configuration (and a challenge)
    assert set(vr["runtime_data"]["structured"]) == {"challenge_token", "hpke_key_config"}
    eg.wait_access(2)
    assert all(e["attested"] for e in eg.access()), eg.access()


def test_ours_two_way_background_check(lab, att):
    client_aa, server_aa = att.start_aa(lab.client, "client-aa"), att.start_aa(lab.server, "server-aa")
    client_as = att.start_as(lab.client, "client-as", port=CLIENT_AS)
    server_as = att.start_as(lab.server, "server-as", port=SERVER_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"attest": attest(server_aa), "verify": verify_bg(server_as)}), "egress")
    ing = lab.start_nfq(lab.client, ingress({"attest": attest(client_aa), "verify": verify_bg(client_as)}),
                        "ingress")
    ok(lab)
    e_line, i_line = line(eg), line(ing)
    assert e_line["outcome"] == "ok" and e_line["peer_attestation"]["status"] == "affirming", e_line
    assert i_line["outcome"] == "ok" and i_line["peer_attestation"]["status"] == "affirming", i_line
    # the egress appraised the client's key (pk_s), the client's AS the egress's key configuration
    (server_side,) = server_as.appraisals()
    assert set(json.loads(server_side["body"])["verification_requests"][0]["runtime_data"]["structured"]) == {
        "challenge_token", "pk_s"}
    assert len(client_as.appraisals()) == 1


def test_ours_client_attests_passport(lab, att):
    aa = att.start_aa(lab.client)
    svc = att.start_as(lab.client, port=CLIENT_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"verify": verify_passport(svc.ca)}), "egress")
    lab.start_nfq(lab.client, ingress({"attest": attest_passport(aa, svc)}), "ingress")
    ok(lab)
    entry = line(eg)
    assert entry["peer_attestation"] == {**SAMPLE, "model": "passport"}, entry


# -- refusals ----------------------------------------------------------------------------

def test_unattested_egress_is_refused_before_any_request_leaves(lab, att):
    svc = att.start_as(lab.client, port=CLIENT_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"no_ra": True}), "egress")
    ing = lab.start_nfq(lab.client, ingress({"verify": verify_bg(svc)}), "ingress")
    code, body = request(lab)
    assert code == 502 and "sent no evidence" in body, body
    entry = line(ing)
    assert entry["outcome"] == "error" and "peer attestation failed" in entry["error"], entry
    # only the key-config request reached the egress, no tunnel request
    assert [e.get("tunneled") for e in eg.access()] == [0]


def test_wrong_policy_is_refused(lab, att):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.server, port=SERVER_AS)
    start_app(lab, APP)
    lab.start_nfq(lab.server, egress({"attest": attest_passport(aa, svc)}), "egress")
    ing = lab.start_nfq(lab.client, ingress({"verify": verify_passport(svc.ca, policy_ids=("prod",))}), "ingress")
    code, body = request(lab)
    assert code == 502 and "policy" in body, body
    assert "policy" in line(ing)["error"]


def test_egress_that_verifies_refuses_an_unattested_client(lab, att):
    svc = att.start_as(lab.server, port=SERVER_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"verify": verify_bg(svc)}), "egress")
    lab.start_nfq(lab.client, ingress({"no_ra": True}), "ingress")
    code, body = request(lab)
    assert code == 502 and "403" in body and "carries no attestation" in body, body
    refused = [e for e in eg.access() if e["outcome"] == "error"]
    assert refused and "carries no attestation" in refused[0]["error"], eg.access()


# -- upstream tng 2.12 on either end -------------------------------------------------------

@interop
def test_upstream_ingress_verifies_ours_egress_attests(lab, att):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client, port=CLIENT_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"attest": attest(aa)}), "egress")
    lab.start_upstream(lab.client, ingress({"verify": verify_bg(svc)}), "up-ingress")
    ok(lab)
    assert line(eg)["outcome"] == "ok"
    (appraisal,) = svc.appraisals()  # upstream sent our evidence to its AS: the binding held
    assert set(json.loads(appraisal["body"])["verification_requests"][0]["runtime_data"]["structured"]) == {
        "challenge_token", "hpke_key_config"}


@interop
def test_ours_ingress_verifies_upstream_egress_attests(lab, att):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client, port=CLIENT_AS)
    start_app(lab, APP)
    lab.start_upstream(lab.server, egress({"attest": attest(aa)}), "up-egress")
    ing = lab.start_nfq(lab.client, ingress({"verify": verify_bg(svc)}), "ingress")
    ok(lab)
    entry = line(ing)
    assert entry["outcome"] == "ok" and entry["peer_attestation"] == {**SAMPLE, "model": "background_check"}


@interop
def test_upstream_ingress_attests_ours_egress_verifies(lab, att):
    aa = att.start_aa(lab.client)
    svc = att.start_as(lab.server, port=SERVER_AS)
    start_app(lab, APP)
    eg = lab.start_nfq(lab.server, egress({"verify": verify_bg(svc)}), "egress")
    lab.start_upstream(lab.client, ingress({"attest": attest(aa)}), "up-ingress")
    ok(lab)
    tunneled = [e for e in eg.access() if e.get("tunneled")]
    assert tunneled and tunneled[0]["peer_attestation"]["status"] == "affirming", eg.access()


@interop
def test_ours_ingress_attests_upstream_egress_verifies(lab, att):
    aa = att.start_aa(lab.client)
    svc = att.start_as(lab.server, port=SERVER_AS)
    start_app(lab, APP)
    lab.start_upstream(lab.server, egress({"verify": verify_bg(svc)}), "up-egress")
    ing = lab.start_nfq(lab.client, ingress({"attest": attest(aa)}), "ingress")
    ok(lab)
    assert line(ing)["attested"] is True
    assert len(svc.appraisals()) == 1  # upstream's egress appraised our attested key


@interop
@pytest.mark.parametrize("upstream_side", ["ingress", "egress"])
def test_passport_with_upstream(lab, att, upstream_side):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.server, port=SERVER_AS)
    start_app(lab, APP)
    server_cfg = egress({"attest": attest_passport(aa, svc, upstream=upstream_side == "egress")})
    client_cfg = ingress({"verify": verify_passport(svc.ca)})
    if upstream_side == "egress":
        lab.start_upstream(lab.server, server_cfg, "up-egress")
        ing = lab.start_nfq(lab.client, client_cfg, "ingress")
        ok(lab)
        assert line(ing)["peer_attestation"] == {**SAMPLE, "model": "passport"}
    else:
        lab.start_nfq(lab.server, server_cfg, "egress")
        lab.start_upstream(lab.client, client_cfg, "up-ingress")
        ok(lab)


# -- web_page_inject, seen by a real browser ---------------------------------------------------

@pytest.mark.timeout(240)
def test_web_page_inject_shows_the_verdict_in_chromium(lab, att, tmp_path):
    from helpers.browser import CHROMIUM, copy_artifact, dom, png_rows, screenshot

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client, port=CLIENT_AS)
    start_app(lab, APP)
    lab.start_nfq(lab.server, egress({"attest": attest(aa)}), "egress")
    ing = lab.start_nfq(lab.client, {"add_ingress": [{**ingress({"verify": verify_bg(svc)})["add_ingress"][0],
                                                      "web_page_inject": True}]}, "ingress")
    url = f"http://127.0.0.1:{IN}/app/page"
    text = dom(url, ns_name=lab.client.name)
    png = tmp_path / "web_page_inject_e2e.png"
    screenshot(url, png, ns_name=lab.client.name, width=1200, height=800)
    copy_artifact(png)
    # the bar, with the verdict on the origin, and the whole (gzip-decoded) page
    assert 'data-attested="true"' in text, text[:2000]
    for needle in ("ATTESTED", "sample", "default", svc.rest_addr):
        assert needle in text, needle
    assert "END-OF-PAGE" in text
    body_at = text.lower().index("<body")
    assert text.index("<tng-attestation-banner", body_at) < text.index("<h1>", body_at)
    green = (0x17, 0x69, 0x2E)
    band = [row for row in png_rows(png, 120)
            if sum(all(abs(a - b) <= 12 for a, b in zip(px, green)) for px in row) > len(row) // 2]
    assert len(band) >= 15, "no green bar at the top of the screenshot"
    # JSON passes untouched, byte for byte
    code, body = request(lab)
    assert code == 200 and "tng-attestation-banner" not in body and json.loads(body)["target"] == "/hello?x=1"
    assert all(e["outcome"] == "ok" for e in ing.access()), ing.access()
