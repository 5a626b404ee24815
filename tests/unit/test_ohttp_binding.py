"""The attestation binding of HTTP encapsulation (tng_nfq/tunnel/ohttp_binding.py)
with stand-in attester/verifier objects: which runtime data is asked for,
which claims are required of the peer, and which refusals follow."""

import base64
import json
from types import SimpleNamespace

import pytest

from tng_nfq.attestation.evidence import CocoEvidence
from tng_nfq.attestation.verifier import AttestationFailed, Verdict
from tng_nfq.http.ohttp.keyconfig import KeyPair
from tng_nfq.http.ohttp.tng import HpkeKeyConfig, KeyConfigRequest, KeyConfigResponse, Metadata
from tng_nfq.tunnel.ohttp_binding import (
    BindingRefused,
    ClientBinding,
    ServerBinding,
    evidence_from_json,
    evidence_json,
    metadata_for,
    sender_key,
)

VERDICT = Verdict(tee_type="sample", policy_ids=("default",), status="affirming", model="background_check",
                  as_addr="http://as/", expires=2e9, verified_at=1.0)
COCO = CocoEvidence(tee_type="sample", aa_evidence=b"\x00evidence", aa_additional_evidence=None,
                    aa_runtime_data='{"a":1}', aa_runtime_data_hash_algo=7)


class FakeAttester:
    def __init__(self, model="background_check"):
        self.cfg = SimpleNamespace(model=model)
        self.asked: list[dict] = []

    def evidence_for(self, runtime):
        self.asked.append(runtime)
        return COCO

    def passport_token_for(self, runtime):
        self.asked.append(runtime)
        return "passport-token"

    def challenge_token(self):
        return "own-challenge"


class FakeVerifier:
    def __init__(self, model="background_check", fail=None):
        self.cfg = SimpleNamespace(model=model)
        self.fail = fail
        self.checked: list[tuple[str, dict]] = []

    def challenge_token(self):
        return "verifier-challenge"

    def appraise_evidence(self, coco):
        assert coco == COCO
        return "token-from-evidence"

    def verify_bound_token(self, token, expected):
        self.checked.append((token, expected))
        if self.fail:
            raise AttestationFailed(self.fail)
        return VERDICT


def security(attester=None, verifier=None):
    return SimpleNamespace(attester=attester, verifier=verifier)


CONFIG = HpkeKeyConfig.for_keys([KeyPair.generate()], now=100)


def test_evidence_json_round_trip_as_upstream_writes_it():
    obj = evidence_json(COCO)
    assert obj == {"aa_tee_type": "sample", "aa_evidence": base64.b64encode(b"\x00evidence").decode(),
                   "aa_runtime_data": '{"a":1}', "aa_runtime_data_hash_algo": "sha384"}
    assert evidence_from_json(json.loads(json.dumps(obj))) == COCO
    for bad in (None, [], {"aa_tee_type": "x"}, {**obj, "aa_evidence": "%%%"}):
        with pytest.raises(AttestationFailed):
            evidence_from_json(bad)


def test_server_binds_the_published_key_configuration():
    attester = FakeAttester()
    server = ServerBinding(security(attester), "add_egress[0]")
    resp = server.key_config_response(KeyConfigRequest("background_check", "their-challenge"), CONFIG)
    assert attester.asked == [{"challenge_token": "their-challenge", "hpke_key_config": CONFIG.as_json()}]
    assert resp.evidence == evidence_json(COCO)
    passport = ServerBinding(security(FakeAttester("passport")), "e")
    resp = passport.key_config_response(KeyConfigRequest("passport"), CONFIG)
    assert resp.attestation_result == "passport-token"
    # nothing asked, or nothing to show: a plain key configuration
    assert server.key_config_response(KeyConfigRequest(None), CONFIG).evidence is None
    assert ServerBinding(security(None, FakeVerifier()), "e").key_config_response(
        KeyConfigRequest("passport"), CONFIG).attestation_result is None
    with pytest.raises(BindingRefused) as refused:
        server.key_config_response(KeyConfigRequest("passport"), CONFIG)
    assert refused.value.status == 500


def test_server_checks_the_clients_attested_key():
    verifier = FakeVerifier()
    server = ServerBinding(security(None, verifier), "e")
    pk = b"p" * 32
    assert server.check_client(Metadata(attestation_result="tok", pk_s=pk)) is VERDICT
    assert verifier.checked == [("tok", {"pk_s": base64.b64encode(pk).decode()})]
    for md, status in ((Metadata(), 403), (Metadata(attestation_result="tok", pk_s=b"short"), 400)):
        with pytest.raises(BindingRefused) as refused:
            server.check_client(md)
        assert refused.value.status == status
    with pytest.raises(BindingRefused, match="client attestation failed: bad policy"):
        ServerBinding(security(None, FakeVerifier(fail="bad policy")), "e").check_client(
            Metadata(attestation_result="tok", pk_s=pk))
    # an egress that does not verify takes anonymous clients only
    plain = ServerBinding(security(FakeAttester()), "e")
    assert plain.check_client(Metadata()) is None
    with pytest.raises(BindingRefused):
        plain.check_client(Metadata(attestation_result="tok", pk_s=pk))
    assert server.challenge() == {"challenge_token": "verifier-challenge"}
    assert server.verify_evidence({"evidence": evidence_json(COCO)})["attestation_result"] == "token-from-evidence"


def test_client_requires_the_key_configuration_in_the_token():
    verifier = FakeVerifier()
    client = ClientBinding(security(None, verifier), "i")
    assert client.key_config_request() == ("background_check", "verifier-challenge")
    verdict, expires = client.check_server(KeyConfigResponse(CONFIG, evidence=evidence_json(COCO)))
    assert verdict is VERDICT and expires == VERDICT.expires
    assert verifier.checked == [("token-from-evidence", {"hpke_key_config": CONFIG.as_json()})]
    with pytest.raises(AttestationFailed, match="no evidence"):
        client.check_server(KeyConfigResponse(CONFIG))
    passport = ClientBinding(security(None, FakeVerifier("passport")), "i")
    assert passport.key_config_request() == ("passport", None)
    with pytest.raises(AttestationFailed, match="no attestation result"):
        passport.check_server(KeyConfigResponse(CONFIG))
    assert ClientBinding(security(), "i").check_server(KeyConfigResponse(CONFIG)) == (None, None)


def test_client_credential_background_check_uses_the_egress_api():
    attester = FakeAttester()
    calls = []

    def api(name, body):
        calls.append((name, body))
        return {"challenge_token": "egress-challenge"} if name == "challenge" else {"attestation_result": "x.e30.y"}

    cred = ClientBinding(security(attester), "i").credential(api)
    assert [c[0] for c in calls] == ["challenge", "verify"]
    (asked,) = attester.asked
    assert asked == {"challenge_token": "egress-challenge", "pk_s": base64.b64encode(cred.public_key).decode()}
    assert cred.token == "x.e30.y" and len(cred.private_key) == 32
    md = metadata_for(cred, b"h" * 32)
    assert (md.attestation_result, md.pk_s, md.as_provider) == ("x.e30.y", cred.public_key, "coco")
    assert sender_key(md) == cred.public_key and sender_key(Metadata()) is None
    assert metadata_for(None, b"h" * 32) == Metadata(key_hint=b"h" * 32)
