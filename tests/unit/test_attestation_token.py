"""Token verification (PROTOCOLS.md §5) against real tokens and forgeries.

The fixtures in tests/data/attestation are real tokens: one issued by the AS
built into upstream tng for sample evidence, two from a Trustee AS for TDX
(EAR and the older "simple" RS384 form). All are expired, so the clock is
pinned inside each token's lifetime.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tng_nfq.attestation.token import (
    EAR_PROFILE,
    TokenRejected,
    ear_status_from_vector,
    load_trust_anchors,
    verify_token,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "attestation"
UTC = dt.timezone.utc

SAMPLE_TOKEN = (DATA / "tng_builtin_as_sample_ear.jwt").read_text().strip()
SAMPLE_CA = str(DATA / "tng_builtin_as_ca.pem")
SAMPLE_NOW = dt.datetime.fromtimestamp(1795515587 + 60, UTC)       # iat + 1 min
SAMPLE_PUBKEY_HASH = "ggFYICt9XkEShl8N+39xOWvv9gEVAtyBxCIUh7EXbpLrSzw9"

TDX_EAR_TOKEN = (DATA / "trustee_ear_tdx.jwt").read_text().strip()
TDX_EAR_CA = str(DATA / "trustee_ear_tdx.as-ca.pem")
TDX_EAR_NOW = dt.datetime.fromtimestamp(1768895707 + 60, UTC)

TDX_SIMPLE_TOKEN = (DATA / "trustee_simple_tdx.jwt").read_text().strip()
TDX_SIMPLE_CA = str(DATA / "trustee_simple_tdx.as-ca.pem")
TDX_SIMPLE_NOW = dt.datetime.fromtimestamp(1768806067 + 60, UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    return json.loads(unb64url(h)), json.loads(unb64url(p)), s


def join(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                     b64url(signature)])


def verify_sample(token: str = SAMPLE_TOKEN, **kw):
    args = dict(trust_anchors=load_trust_anchors([SAMPLE_CA]), policy_ids=["default"],
                expected_runtime_data={"pubkey-hash": SAMPLE_PUBKEY_HASH}, now=SAMPLE_NOW)
    args.update(kw)
    return verify_token(token, **args)


def ec_jwk(key: ec.EllipticCurvePrivateKey, alg: str = "ES256") -> dict:
    nums = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    return {"kty": "EC", "crv": "P-256", "alg": alg,
            "x": b64url(nums.x.to_bytes(size, "big")), "y": b64url(nums.y.to_bytes(size, "big"))}


# --------------------------------------------------------------------------
# the real tokens

def test_sample_ear_token_verifies():
    verdict = verify_sample()
    assert verdict.kind == "ear"
    assert verdict.tee_type == "sample"
    assert verdict.policy_ids == ("default",)
    assert verdict.status == "affirming"
    assert verdict.expires == dt.datetime.fromtimestamp(1795515887, UTC)
    assert verdict.claims["submods"]["cpu0"]["ear.appraisal-policy-id"] == "default"


def test_sample_ear_token_without_policy_or_runtime_expectations():
    assert verify_sample(policy_ids=[], expected_runtime_data={}).kind == "ear"


def test_naive_now_is_taken_as_utc():
    assert verify_sample(now=SAMPLE_NOW.replace(tzinfo=None)).kind == "ear"


def test_tdx_ear_token_verifies():
    _, claims, _ = split(TDX_EAR_TOKEN)
    challenge = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][
        "runtime_data_claims"]["challenge_token"]
    verdict = verify_token(TDX_EAR_TOKEN, trust_anchors=load_trust_anchors([TDX_EAR_CA]),
                           policy_ids=["default"], expected_runtime_data={"challenge_token": challenge},
                           now=TDX_EAR_NOW)
    assert (verdict.kind, verdict.tee_type, verdict.policy_ids) == ("ear", "tdx", ("default",))


def test_tdx_ear_token_nested_runtime_data_subset():
    _, claims, _ = split(TDX_EAR_TOKEN)
    hpke = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][
        "runtime_data_claims"]["hpke_key_config"]
    anchors = load_trust_anchors([TDX_EAR_CA])
    partial = {"hpke_key_config": {"expire_timestamp": hpke["expire_timestamp"]}}
    verify_token(TDX_EAR_TOKEN, trust_anchors=anchors, policy_ids=["default"],
                 expected_runtime_data=partial, now=TDX_EAR_NOW)
    with pytest.raises(TokenRejected, match="hpke_key_config"):
        verify_token(TDX_EAR_TOKEN, trust_anchors=anchors, policy_ids=["default"],
                     expected_runtime_data={"hpke_key_config": {"expire_timestamp": 1}},
                     now=TDX_EAR_NOW)


def test_tdx_simple_token_verifies():
    _, claims, _ = split(TDX_SIMPLE_TOKEN)
    challenge = claims["customized_claims"]["runtime_data"]["challenge_token"]
    verdict = verify_token(TDX_SIMPLE_TOKEN, trust_anchors=load_trust_anchors([TDX_SIMPLE_CA]),
                           policy_ids=["default"], expected_runtime_data={"challenge_token": challenge},
                           now=TDX_SIMPLE_NOW)
    assert (verdict.kind, verdict.tee_type, verdict.policy_ids, verdict.status) == (
        "simple", "tdx", ("default",), "affirming")


def test_tdx_simple_token_wrong_policy_and_runtime_data():
    anchors = load_trust_anchors([TDX_SIMPLE_CA])
    with pytest.raises(TokenRejected, match="policy 'strict' not appraised"):
        verify_token(TDX_SIMPLE_TOKEN, trust_anchors=anchors, policy_ids=["strict"],
                     expected_runtime_data={}, now=TDX_SIMPLE_NOW)
    with pytest.raises(TokenRejected, match="runtime data does not match: challenge_token"):
        verify_token(TDX_SIMPLE_TOKEN, trust_anchors=anchors, policy_ids=["default"],
                     expected_runtime_data={"challenge_token": "x"}, now=TDX_SIMPLE_NOW)


def test_simple_token_expired():
    with pytest.raises(TokenRejected, match="token expired at 2026-01-19T07:06:07"):
        verify_token(TDX_SIMPLE_TOKEN, trust_anchors=load_trust_anchors([TDX_SIMPLE_CA]),
                     policy_ids=["default"], expected_runtime_data={},
                     now=TDX_SIMPLE_NOW + dt.timedelta(hours=1))


# --------------------------------------------------------------------------
# rejections of the real sample token

def test_wrong_ca():
    with pytest.raises(TokenRejected, match="signer chain does not lead to a trusted CA"):
        verify_sample(trust_anchors=load_trust_anchors([TDX_EAR_CA]))


def test_no_anchors():
    with pytest.raises(TokenRejected, match="no trust anchors"):
        verify_sample(trust_anchors=[])


def test_clock_after_exp():
    with pytest.raises(TokenRejected, match=r"^token expired at 2026-11-24T10:24:47\+00:00$"):
        verify_sample(now=dt.datetime.fromtimestamp(1795515887 + 1, UTC))
    with pytest.raises(TokenRejected, match="token expired"):
        verify_sample(now=dt.datetime.fromtimestamp(1795515887, UTC))  # exp itself is too late


def test_wrong_policy_id():
    with pytest.raises(TokenRejected, match=r"^policy 'strict' not appraised \(token has 'default'\)$"):
        verify_sample(policy_ids=["default", "strict"])


def test_wrong_pubkey_hash():
    with pytest.raises(TokenRejected, match="runtime data does not match: pubkey-hash 'AAAA' "
                                            "not in token claims"):
        verify_sample(expected_runtime_data={"pubkey-hash": "AAAA"})


def test_missing_runtime_data_key():
    with pytest.raises(TokenRejected, match="runtime data does not match: nonce"):
        verify_sample(expected_runtime_data={"pubkey-hash": SAMPLE_PUBKEY_HASH, "nonce": "n"})


def test_alg_none_forged():
    header, payload, _ = split(SAMPLE_TOKEN)
    header["alg"] = "none"
    with pytest.raises(TokenRejected, match="^alg none is not accepted$"):
        verify_sample(join(header, payload))
    header["jwk"]["alg"] = "none"
    with pytest.raises(TokenRejected, match="alg none is not accepted"):
        verify_sample(join(header, payload))


def test_hs256_forged():
    # The classic confusion attack: HMAC keyed with public material.
    header, payload, _ = split(SAMPLE_TOKEN)
    header["alg"] = "HS256"
    secret = Path(SAMPLE_CA).read_bytes()
    unsigned = join(header, payload).rsplit(".", 1)[0]
    sig = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenRejected, match="^alg HS256 is not accepted$"):
        verify_sample(f"{unsigned}.{b64url(sig)}")
    header["jwk"]["alg"] = "HS256"
    unsigned = join(header, payload).rsplit(".", 1)[0]
    with pytest.raises(TokenRejected, match="alg HS256 is not accepted"):
        verify_sample(f"{unsigned}.{b64url(sig)}")


def test_jwk_alg_disagrees_with_header():
    header, payload, sig = split(SAMPLE_TOKEN)
    header["alg"] = "ES384"
    with pytest.raises(TokenRejected, match="header alg ES384 differs from jwk alg ES256"):
        verify_sample(join(header, payload))


def test_signature_tampered():
    h, p, s = SAMPLE_TOKEN.split(".")
    raw = bytearray(unb64url(s))
    raw[5] ^= 0x01
    with pytest.raises(TokenRejected, match="^signature does not verify"):
        verify_sample(f"{h}.{p}.{b64url(bytes(raw))}")
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verify_sample(f"{h}.{p}.")


def test_payload_tampered():
    h, _, s = SAMPLE_TOKEN.split(".")
    _, payload, _ = split(SAMPLE_TOKEN)
    payload["exp"] += 3600
    p = b64url(json.dumps(payload).encode())
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verify_sample(f"{h}.{p}.{s}")


def test_jwk_key_is_not_the_leaf_key():
    # Signed correctly with our own key, but presenting the real AS's chain.
    header, payload, _ = split(SAMPLE_TOKEN)
    own = ec.generate_private_key(ec.SECP256R1())
    header["jwk"] = {**ec_jwk(own), "x5c": header["jwk"]["x5c"]}
    forged = jwt.encode(payload, own, algorithm="ES256", headers={"jwk": header["jwk"]})
    with pytest.raises(TokenRejected, match="^jwk key is not the signer certificate's key$"):
        verify_sample(forged)


def test_malformed_tokens():
    for bad, msg in [("abc", "not a JWS compact token"),
                     ("a.b", "not a JWS compact token"),
                     ("!!.e30.", "token header is not base64url"),
                     (b64url(b"[1]") + ".e30.", "token header is not a JSON object"),
                     (b64url(b'{"alg":"ES256"}') + ".e30.", "token header has no jwk")]:
        with pytest.raises(TokenRejected, match=msg):
            verify_sample(bad)
    header, payload, _ = split(SAMPLE_TOKEN)
    header["jwk"].pop("x5c")
    with pytest.raises(TokenRejected, match="no x5c"):
        verify_sample(join(header, payload))
    header["jwk"]["x5c"] = ["not base64!"]
    with pytest.raises(TokenRejected, match="x5c entry 0 is not a base64 DER certificate"):
        verify_sample(join(header, payload))


def test_load_trust_anchors(tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(Path(SAMPLE_CA).read_bytes() + Path(TDX_EAR_CA).read_bytes())
    assert len(load_trust_anchors([str(both)])) == 2
    assert len(load_trust_anchors([SAMPLE_CA, TDX_EAR_CA, TDX_SIMPLE_CA])) == 3
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="empty.pem"):
        load_trust_anchors([str(empty)])
    with pytest.raises(OSError):
        load_trust_anchors([str(tmp_path / "missing.pem")])


# --------------------------------------------------------------------------
# tokens we sign ourselves, for the cases the fixtures do not cover

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test AS"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, days_before=1, days_after=30):
    return (x509.CertificateBuilder()
            .subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=days_before))
            .not_valid_after(NOW + dt.timedelta(days=days_after))
            .sign(issuer_key, hashes.SHA256()))


class Pki:
    def __init__(self):
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("ca", self.ca_key, "ca", self.ca_key)
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = _cert("mid", self.mid_key, "ca", self.ca_key)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _cert("signer", self.leaf_key, "mid", self.mid_key)

    def token(self, claims: dict, chain=None, *, encode=b64url, key=None) -> str:
        chain = chain if chain is not None else [self.leaf, self.mid, self.ca]
        x5c = [encode(c.public_bytes(serialization.Encoding.DER)) for c in chain]
        key = key or self.leaf_key
        return jwt.encode(claims, key, algorithm="ES256", headers={"jwk": {**ec_jwk(key), "x5c": x5c}})


def ear_claims(**submod) -> dict:
    cpu0 = {"ear.status": "affirming",
            "ear.trustworthiness-vector": {"configuration": 2, "hardware": 2},
            "ear.appraisal-policy-id": "default",
            "ear.veraison.annotated-evidence": {"report_data": "x", "runtime_data_claims": {"pubkey-hash": "H"},
                                                "sample": {"svn": "1"}}}
    cpu0.update(submod)
    cpu0 = {k: v for k, v in cpu0.items() if v is not None}
    return {"eat_profile": EAR_PROFILE, "iat": int(NOW.timestamp()) - 10,
            "exp": int(NOW.timestamp()) + 300, "submods": {"cpu0": cpu0}}


@pytest.fixture(scope="module")
def pki():
    return Pki()


def check(pki, token, anchors=None, policy_ids=("default",), expected=None, now=NOW):
    return verify_token(token, trust_anchors=anchors or [pki.ca], policy_ids=list(policy_ids),
                        expected_runtime_data={"pubkey-hash": "H"} if expected is None else expected,
                        now=now)


def test_std_base64_x5c_entries_accepted(pki):
    std_padded = lambda der: base64.b64encode(der).decode()  # noqa: E731
    assert check(pki, pki.token(ear_claims(), encode=std_padded)).kind == "ear"
    url_padded = lambda der: base64.urlsafe_b64encode(der).decode()  # noqa: E731
    assert check(pki, pki.token(ear_claims(), encode=url_padded)).kind == "ear"


def test_chain_variants(pki):
    # the chain may stop before the anchor, or the anchor may be an intermediate
    assert check(pki, pki.token(ear_claims(), chain=[pki.leaf, pki.mid])).kind == "ear"
    assert check(pki, pki.token(ear_claims(), chain=[pki.leaf]), anchors=[pki.mid]).kind == "ear"
    with pytest.raises(TokenRejected, match="does not lead to a trusted CA"):
        check(pki, pki.token(ear_claims(), chain=[pki.leaf]))
    with pytest.raises(TokenRejected, match="signer chain is broken"):
        check(pki, pki.token(ear_claims(), chain=[pki.leaf, pki.ca]))


def test_expired_signer_certificate(pki):
    leaf = _cert("old signer", pki.leaf_key, "mid", pki.mid_key, days_before=30, days_after=-1)
    with pytest.raises(TokenRejected, match="signer certificate .* expired at"):
        check(pki, pki.token(ear_claims(), chain=[leaf, pki.mid, pki.ca]))


def test_anchor_not_yet_valid(pki):
    with pytest.raises(TokenRejected, match="is not valid before"):
        check(pki, pki.token(ear_claims()), now=NOW - dt.timedelta(days=2))


def test_self_signed_leaf_equal_to_anchor():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("solo", key, "solo", key)
    token = jwt.encode(ear_claims(), key, algorithm="ES256",
                       headers={"jwk": {**ec_jwk(key), "x5c": [b64url(cert.public_bytes(
                           serialization.Encoding.DER))]}})
    verdict = verify_token(token, trust_anchors=[cert], policy_ids=["default"],
                           expected_runtime_data={"pubkey-hash": "H"}, now=NOW)
    assert verdict.kind == "ear"


def test_status_contraindicated_and_warning(pki):
    with pytest.raises(TokenRejected, match="^status 'contraindicated' in submod cpu0$"):
        check(pki, pki.token(ear_claims(**{"ear.status": "contraindicated"})))
    with pytest.raises(TokenRejected, match="status 'warning'"):
        check(pki, pki.token(ear_claims(**{"ear.status": "warning"})))


def test_status_derived_from_vector_when_missing(pki):
    ok = ear_claims(**{"ear.status": None, "ear.trustworthiness-vector": {"a": 2, "b": 31, "c": -3}})
    assert check(pki, pki.token(ok)).status == "affirming"
    bad = ear_claims(**{"ear.status": None, "ear.trustworthiness-vector": {"a": 2, "b": 96}})
    with pytest.raises(TokenRejected, match="contraindicated"):
        check(pki, pki.token(bad))


def test_ear_status_from_vector_tiers():
    assert ear_status_from_vector({"a": 2, "b": 31}) == "affirming"
    assert ear_status_from_vector({"a": 2, "b": 32}) == "warning"
    assert ear_status_from_vector({"a": 95}) == "warning"
    assert ear_status_from_vector({"a": 2, "b": 96}) == "contraindicated"
    assert ear_status_from_vector({"a": -2}) == "affirming"
    assert ear_status_from_vector({"a": -40}) == "warning"
    assert ear_status_from_vector({"a": -97}) == "contraindicated"
    assert ear_status_from_vector({"a": 0, "b": 1}) == "none"
    assert ear_status_from_vector({}) == "none"
    assert ear_status_from_vector({"a": "x"}) == "contraindicated"


def test_every_submod_must_affirm(pki):
    claims = ear_claims()
    claims["submods"]["gpu0"] = {**claims["submods"]["cpu0"], "ear.status": "warning"}
    with pytest.raises(TokenRejected, match="status 'warning' in submod gpu0"):
        check(pki, pki.token(claims))


def test_eat_profile_and_exp_required(pki):
    claims = ear_claims()
    claims["eat_profile"] = "tag:example.com,2023:other"
    with pytest.raises(TokenRejected, match="eat_profile"):
        check(pki, pki.token(claims))
    claims = ear_claims()
    del claims["exp"]
    with pytest.raises(TokenRejected, match="^token has no exp$"):
        check(pki, pki.token(claims))


def test_neither_ear_nor_simple(pki):
    with pytest.raises(TokenRejected, match="neither"):
        check(pki, pki.token({"exp": int(NOW.timestamp()) + 60}))


def test_rsa_token_with_ec_style_alg_mismatch():
    # An RS384 token whose JWK says ES256 must not verify.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert("rsa", key, "rsa", key)
    nums = key.public_key().public_numbers()
    jwk_ = {"kty": "RSA", "alg": "ES256", "n": b64url(nums.n.to_bytes(256, "big")), "e": "AQAB",
            "x5c": [b64url(cert.public_bytes(serialization.Encoding.DER))]}
    header = {"alg": "ES256", "typ": "JWT", "jwk": jwk_}
    with pytest.raises(TokenRejected, match="alg ES256 does not fit"):
        verify_token(join(header, ear_claims(), b"\0" * 64), trust_anchors=[cert], policy_ids=[],
                     expected_runtime_data={}, now=NOW)
