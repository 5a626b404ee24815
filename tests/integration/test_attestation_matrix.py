"""Issue #3: remote attestation (attest / verify / no_ra), wire-compatible with TNG 2.x.

Every trust model, run end to end across the two lab namespaces (ingress in
the client namespace, egress in the server namespace), with the sample-TEE
dev AA and dev AS as the attestation infrastructure:

1. tng_nfq egress attest  -> upstream ingress verify (builtin AS, trust_all)
2. upstream egress attest -> tng_nfq ingress verify (dev AS, REST / gRPC)
3. upstream ingress verify (background check against the dev AS) -> tng_nfq egress attest
4. passport both ways, attester fetching its token over REST and gRPC
5. reverse one-way (client attests, server verifies) and two-way, upstream on either end
6. tng_nfq <-> tng_nfq in all four trust models

Each case carries a real request (random bytes echoed by the backend) and
checks the response; on the tng_nfq side the access-log line says whether
the connection was attested and what was verified of the peer.
"""

from __future__ import annotations

import json

import pytest

from helpers.attestation import (  # noqa: F401  (att is a fixture)
    OK_SAMPLE,
    UPSTREAM_BUILTIN_VERIFY,
    att,
    attest,
    attest_passport,
    egress,
    ingress,
    verify_bg,
    verify_passport,
)

IN, TUN, BACK = 10001, 20001, 30001
AS_PORT, AS_GRPC = 18080, 18081

pytestmark = pytest.mark.root
interop = pytest.mark.interop


def nfq_egress(lab, ra: dict, name: str = "egress"):
    return lab.start_nfq(lab.server, {"add_egress": [egress(TUN, BACK, ra)]}, name)


def nfq_ingress(lab, ra: dict, name: str = "ingress"):
    return lab.start_nfq(lab.client, {"add_ingress": [ingress(IN, TUN, ra)]}, name)


def up_egress(lab, ra: dict, name: str = "up-egress"):
    return lab.start_upstream(lab.server, {"add_egress": [egress(TUN, BACK, ra)]}, name)


def up_ingress(lab, ra: dict, name: str = "up-ingress"):
    return lab.start_upstream(lab.client, {"add_ingress": [ingress(IN, TUN, ra)]}, name)


def ok_line(gw) -> dict:
    """The one access-log line of the one request, which must have succeeded."""
    (entry,) = gw.wait_access(1)
    assert entry["outcome"] == "ok", entry
    assert entry["encrypted"] is True, entry
    return entry


def verified(model: str = "background_check") -> dict:
    return {**OK_SAMPLE, "model": model}


def request_through(att, backend):
    data = att.roundtrip(IN)
    (closed,) = backend.wait_event("closed")
    assert closed["bytes_in"] == len(data)
    return data


# -- 1. tng_nfq attests, upstream verifies with its builtin AS -------------------

@interop
def test_ours_attest_upstream_builtin_verify(lab, att):
    aa = att.start_aa(lab.server)
    backend = att.start_backend(BACK)
    ours = nfq_egress(lab, {"attest": attest(aa)})
    up_ingress(lab, {"verify": UPSTREAM_BUILTIN_VERIFY})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and "peer_attestation" not in entry, entry
    assert len(aa.requests("GetEvidence")) == 1  # one certificate, made at start


# -- 2. upstream attests, tng_nfq verifies against the dev AS ------------------------

@interop
@pytest.mark.parametrize("api, anchors", [("rest", True), ("rest", False), ("grpc", True)],
                         ids=["rest-trusted_certs_paths", "rest-get-certificate", "grpc"])
def test_upstream_attest_ours_verify(lab, att, api, anchors):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client, grpc_port=AS_GRPC)
    backend = att.start_backend(BACK)
    up_egress(lab, {"attest": attest(aa)})
    ours = nfq_ingress(lab, {"verify": verify_bg(svc, grpc=api == "grpc", anchors=anchors)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and entry["peer_attestation"] == verified(), entry
    (appraisal,) = svc.appraisals()
    assert appraisal["api"] == api
    if api == "rest":
        body = json.loads(appraisal["body"])
        assert body["verification_requests"][0]["tee"] == "sample"
    assert bool(svc.events("certificate served")) == (not anchors)


# -- 3. upstream verifies (background check, dev AS), tng_nfq attests ---------------

@interop
def test_upstream_background_check_verify_ours_attest(lab, att):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.client)
    backend = att.start_backend(BACK)
    ours = nfq_egress(lab, {"attest": attest(aa)})
    up_ingress(lab, {"verify": verify_bg(svc)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and "peer_attestation" not in entry, entry
    # upstream really sent our evidence to the AS, bound to our certificate's key
    (appraisal,) = svc.appraisals()
    (vr,) = json.loads(appraisal["body"])["verification_requests"]
    assert vr["tee"] == "sample" and set(vr["runtime_data"]["structured"]) == {"pubkey-hash"}


# -- 4. passport model, both ways, token over REST and gRPC ---------------------

@interop
@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_passport_ours_attest_upstream_verify(lab, att, api):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.server, grpc_port=AS_GRPC)
    backend = att.start_backend(BACK)
    ours = nfq_egress(lab, {"attest": attest_passport(aa, svc, grpc=api == "grpc")})
    up_ingress(lab, {"verify": verify_passport(svc.ca)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and "peer_attestation" not in entry, entry
    (appraisal,) = svc.appraisals()  # our attester fetched the token once
    assert appraisal["api"] == api


@interop
@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_passport_upstream_attest_ours_verify(lab, att, api):
    aa = att.start_aa(lab.server)
    svc = att.start_as(lab.server, grpc_port=AS_GRPC)
    backend = att.start_backend(BACK)
    up_egress(lab, {"attest": attest_passport(aa, svc, grpc=api == "grpc", upstream=True)})
    ours = nfq_ingress(lab, {"verify": verify_passport(svc.ca)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and entry["peer_attestation"] == verified("passport"), entry
    assert [a["api"] for a in svc.appraisals()] == [api]


# -- 5. reverse one-way and two-way with upstream on either end ----------------

@interop
def test_reverse_upstream_attest_ours_verify(lab, att):
    """Client attests, server verifies and presents the dummy certificate."""
    aa = att.start_aa(lab.client)
    svc = att.start_as(lab.server)
    backend = att.start_backend(BACK)
    ours = nfq_egress(lab, {"verify": verify_bg(svc)})
    up_ingress(lab, {"attest": attest(aa)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and entry["peer_attestation"] == verified(), entry
    assert len(svc.appraisals()) == 1


@interop
def test_reverse_ours_attest_upstream_verify(lab, att):
    aa = att.start_aa(lab.client)
    svc = att.start_as(lab.server)
    backend = att.start_backend(BACK)
    up_egress(lab, {"verify": verify_bg(svc)})
    ours = nfq_ingress(lab, {"attest": attest(aa)})

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and "peer_attestation" not in entry, entry
    assert len(svc.appraisals()) == 1  # upstream's egress appraised our evidence


@interop
@pytest.mark.parametrize("upstream_side", ["ingress", "egress"])
def test_two_way_with_upstream(lab, att, upstream_side):
    client_aa, server_aa = att.start_aa(lab.client, "client-aa"), att.start_aa(lab.server, "server-aa")
    client_as, server_as = att.start_as(lab.client, "client-as"), att.start_as(lab.server, "server-as")
    backend = att.start_backend(BACK)
    server_ra = {"attest": attest(server_aa), "verify": verify_bg(server_as)}
    client_ra = {"attest": attest(client_aa), "verify": verify_bg(client_as)}
    if upstream_side == "ingress":
        ours = nfq_egress(lab, server_ra)
        up_ingress(lab, client_ra)
    else:
        up_egress(lab, server_ra)
        ours = nfq_ingress(lab, client_ra)

    request_through(att, backend)

    entry = ok_line(ours)
    assert entry["attested"] is True and entry["peer_attestation"] == verified(), entry
    # each side's AS appraised the other side's evidence
    assert len(client_as.appraisals()) == len(server_as.appraisals()) == 1


# -- 6. tng_nfq <-> tng_nfq, all four trust models ---------------------------------

@pytest.mark.parametrize("model", ["one-way", "reverse", "two-way", "no_ra"])
def test_ours_both_ends(lab, att, model):
    backend = att.start_backend(BACK)
    client_ra: dict = {}
    server_ra: dict = {}
    if model == "no_ra":
        client_ra = server_ra = {"no_ra": True}
    if model in ("one-way", "two-way"):
        server_ra["attest"] = attest(att.start_aa(lab.server, "server-aa"))
        client_ra["verify"] = verify_bg(att.start_as(lab.client, "client-as"))
    if model in ("reverse", "two-way"):
        client_ra["attest"] = attest(att.start_aa(lab.client, "client-aa"))
        server_ra["verify"] = verify_bg(att.start_as(lab.server, "server-as"))
    eg = nfq_egress(lab, server_ra)
    ing = nfq_ingress(lab, client_ra)

    request_through(att, backend)

    i_entry, e_entry = ok_line(ing), ok_line(eg)
    assert i_entry["attested"] is e_entry["attested"] is (model != "no_ra"), (i_entry, e_entry)
    assert i_entry.get("peer_attestation") == (verified() if "verify" in client_ra else None), i_entry
    assert e_entry.get("peer_attestation") == (verified() if "verify" in server_ra else None), e_entry
