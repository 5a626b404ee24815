import base64
import datetime as dt
import json

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, strategies as st

from tng_nfq.attestation import evidence as ev
from tng_nfq.attestation.evidence import (
    COCO_EVIDENCE_TAG, OID_DICE_CMW, OID_DICE_EMPTY, PASSPORT_TAG, CocoEvidence,
    EvidenceError, build_attested_certificate, canonical_json, new_key,
    parse_peer_certificate, pubkey_hash, runtime_data, runtime_data_hash,
)

UTC = dt.timezone.utc

# From fixtures/attestation/tng_builtin_as_sample_ear.jwt (issued by upstream's builtin AS)
FIXTURE_PUBKEY_HASH = "ggFYICt9XkEShl8N+39xOWvv9gEVAtyBxCIUh7EXbpLrSzw9"
FIXTURE_REPORT_DATA = "KvmdO9cRUq41ycvQrnRdeGnKeVPXEyfkL7gSNJylMrMP00aySeLq6SeCKIDHESb/"

# The certificate upstream tng 2.12 presented as an egress attester with our
# dev AA (sample TEE), captured 2026-11-27; valid 04:29:58..10:29:58 UTC.
UPSTREAM_CERT_DER = bytes.fromhex(
    "3082033f308202e5a00302010202012a300a06082a8648ce3d040302302d311d301b06035504"
    "0a0c14496e636c617661726520436f6e7461696e657273310c300a06035504030c03544e4730"
    "1e170d3236313132373034323935385a170d3236313132373130323935385a302d311d301b06"
    "0355040a0c14496e636c617661726520436f6e7461696e657273310c300a06035504030c0354"
    "4e473059301306072a8648ce3d020106082a8648ce3d03010703420004e39a0d335bb1301018"
    "d18df9f02e44b76b169a436c0bd0cc98d3dc3ca292c130764dcaa5f2d766172a5bafbd63af61"
    "f8b2a9822323c1da7ac6c5143ac4277fb2a38201f4308201f0301d0603551d0e041604140215"
    "11206cf19c1ab019cd4404e5c6e5a0abf88d301f0603551d23041830168014021511206cf19c"
    "1ab019cd4404e5c6e5a0abf88d300c0603551d130101ff04023000300e0603551d0f0101ff04"
    "04030203e830820182060667810505040904820176da00c0c0008259016ca5687465655f7479"
    "70656673616d706c656b61615f65766964656e636558c57b2273766e223a2231222c22726570"
    "6f72745f64617461223a22474f4e61317554514c452f735847577535657a45546d466e417330"
    "6366324c4a4651485657716b5067312f754248316649626974423137784e36537a7849665822"
    "2c226d6561737572655f7265676973746572223a223030303030303030303030303030303030"
    "3030303030303030303030303030303030303030303030303030303030303030303030303030"
    "303030303030303030222c2263635f6576656e746c6f67223a6e756c6c7d7661615f61646469"
    "74696f6e616c5f65766964656e6365f66f61615f72756e74696d655f6461746178427b227075"
    "626b65792d68617368223a2267674659494d39496831547350775545674b4536697035723373"
    "68735a644e426c44786d446963324f33506764645a2f227d781961615f72756e74696d655f64"
    "6174615f686173685f616c676f0740300a06066781050504020400300a06082a8648ce3d0403"
    "020348003045022100c6ebb2eaf248883ec219080915b56b45b31d0d3d7615ea18f2c37b78c2"
    "4fe7e00220686ee4f30963f68b98bf6ac0a65c2b222308ffb8e2cb88720a1a41e829b54381"
)
UPSTREAM_CERT_TIME = dt.datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def sample_evidence(report: bytes) -> bytes:
    return json.dumps({"svn": "1", "report_data": base64.b64encode(report).decode(),
                       "measure_register": "0" * 64, "cc_eventlog": None},
                      separators=(",", ":")).encode()


def coco_for(key) -> CocoEvidence:
    ph = pubkey_hash(ev.spki_der(key.public_key()))
    rd = runtime_data(ph)
    return CocoEvidence("sample", sample_evidence(runtime_data_hash(rd)), None,
                        canonical_json(rd), 7)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- binding encodings --------------------------------------------------------

def test_fixture_report_data_from_pubkey_hash():
    decoded = cbor2.loads(base64.b64decode(FIXTURE_PUBKEY_HASH))
    assert decoded[0] == 1 and isinstance(decoded[1], bytes) and len(decoded[1]) == 32
    rd = runtime_data(FIXTURE_PUBKEY_HASH)
    assert canonical_json(rd) == '{"pubkey-hash":"%s"}' % FIXTURE_PUBKEY_HASH
    assert base64.b64encode(runtime_data_hash(rd)).decode() == FIXTURE_REPORT_DATA


def test_pubkey_hash_shape():
    key = new_key()
    spki = ev.spki_der(key.public_key())
    value = pubkey_hash(spki)
    raw = base64.b64decode(value)
    assert raw[:4] == bytes([0x82, 0x01, 0x58, 0x20])
    assert cbor2.loads(raw) == [1, __import__("hashlib").sha256(spki).digest()]


def test_runtime_data_hash_algos():
    rd = runtime_data("x")
    assert len(runtime_data_hash(rd, "sha256")) == 32
    assert len(runtime_data_hash(rd)) == 48
    assert len(runtime_data_hash(rd, "sha512")) == 64
    with pytest.raises(ValueError):
        runtime_data_hash(rd, "md5")
    assert ev.HASH_ALGO_IDS == {"sha256": 1, "sha384": 7, "sha512": 8}


@pytest.mark.parametrize("obj, text", [
    ({"b": 1, "a": [True, False, None]}, '{"a":[true,false,null],"b":1}'),
    ({"k": "é\n\"\\\x01"}, r'{"k":"é\n\"\\\u0001"}'),
    # UTF-16 order: U+1F600 (D83D DE00) sorts before U+E000
    ({"\ue000": 1, "\U0001F600": 2}, '{"\U0001F600":2,"\ue000":1}'),
    ({"n": [1.0, 0.5, 1e21, 1e-7, -0.0, 123.456, 1e-6]},
     '{"n":[1,0.5,1e+21,1e-7,0,123.456,0.000001]}'),
    ({"nested": {"z": {}, "y": []}}, '{"nested":{"y":[],"z":{}}}'),
])
def test_canonical_json(obj, text):
    assert canonical_json(obj) == text


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12))
def test_canonical_json_parses_back(obj):
    text = canonical_json(obj)
    # ints written for integral floats read back as ints: compare numerically
    assert _num(json.loads(text)) == _num(obj)
    assert canonical_json(json.loads(text)) == text


def _num(obj):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        return float(obj)
    if isinstance(obj, list):
        return [_num(x) for x in obj]
    return {k: _num(v) for k, v in obj.items()}


def test_canonical_json_rejects():
    for bad in (float("nan"), float("inf"), {1: 2}, object(), "\ud800"):
        with pytest.raises((ValueError, TypeError)):
            canonical_json(bad)


# -- upstream's real certificate ----------------------------------------------

def test_parses_upstream_certificate():
    pe = parse_peer_certificate(UPSTREAM_CERT_DER, now=UPSTREAM_CERT_TIME)
    cert = x509.load_der_x509_certificate(UPSTREAM_CERT_DER)
    assert pe.pubkey_hash == pubkey_hash(ev.spki_der(cert.public_key()))
    assert pe.coco is not None and pe.passport_token is None
    assert pe.coco.tee_type == "sample"
    assert pe.coco.aa_additional_evidence is None
    assert pe.coco.aa_runtime_data_hash_algo == 7
    assert json.loads(pe.coco.aa_runtime_data) == {"pubkey-hash": pe.pubkey_hash}
    report = json.loads(pe.coco.aa_evidence)["report_data"]
    assert base64.b64decode(report) == runtime_data_hash(runtime_data(pe.pubkey_hash))
    assert pe.not_after == dt.datetime(2026, 11, 27, 10, 29, 58, tzinfo=UTC)


def test_our_extension_bytes_equal_upstreams():
    cert = x509.load_der_x509_certificate(UPSTREAM_CERT_DER)
    theirs = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_CMW)).value.value
    pe = parse_peer_certificate(UPSTREAM_CERT_DER, now=UPSTREAM_CERT_TIME)
    assert ev.cmw_extension_value(coco=pe.coco) == theirs
    assert theirs[:5] == bytes.fromhex("da00c0c000")  # tag(0xC0C000) with a 4-byte argument


def test_our_certificate_layout_matches_upstreams():
    theirs = x509.load_der_x509_certificate(UPSTREAM_CERT_DER)
    key = new_key()
    ours = build_attested_certificate(key, coco=coco_for(key))
    assert ours.subject == theirs.subject == ours.issuer
    assert ours.subject.rfc4514_string() == "CN=TNG,O=Inclavare Containers"
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert [(e.oid, e.critical) for e in ours.extensions] ==         [(e.oid, e.critical) for e in theirs.extensions]
    assert ours.not_valid_after_utc - ours.not_valid_before_utc == dt.timedelta(hours=6)
    empty = ours.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_EMPTY))
    assert empty.value.value == b""


def test_upstream_certificate_outside_validity():
    with pytest.raises(EvidenceError, match="expired"):
        parse_peer_certificate(UPSTREAM_CERT_DER, now=UPSTREAM_CERT_TIME + dt.timedelta(hours=6))
    with pytest.raises(EvidenceError, match="not valid before"):
        parse_peer_certificate(UPSTREAM_CERT_DER, now=UPSTREAM_CERT_TIME - dt.timedelta(hours=1))
    # 5 minutes of skew tolerated
    parse_peer_certificate(UPSTREAM_CERT_DER, now=dt.datetime(2026, 11, 27, 4, 26, tzinfo=UTC))


# -- round trips ------------------------------------------------------------

def test_round_trip_coco():
    key = new_key()
    coco = coco_for(key)
    cert = build_attested_certificate(key, coco=coco)
    pe = parse_peer_certificate(der(cert))
    assert pe.coco == coco
    assert pe.passport_token is None
    assert pe.pubkey_hash == pubkey_hash(ev.spki_der(key.public_key()))
    assert pe.not_after == cert.not_valid_after_utc


def test_round_trip_coco_with_additional_evidence():
    key = new_key()
    coco = CocoEvidence("sample", b"ev", b"more", canonical_json(runtime_data(
        pubkey_hash(ev.spki_der(key.public_key())))), 1)
    pe = parse_peer_certificate(der(build_attested_certificate(key, coco=coco)))
    assert pe.coco == coco


def test_round_trip_passport():
    key = new_key()
    cert = build_attested_certificate(key, passport_token="eyJ.a.b", validity_hours=1)
    raw = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_CMW)).value.value
    assert cbor2.loads(raw) == cbor2.CBORTag(PASSPORT_TAG, (b"eyJ.a.b", b""))
    pe = parse_peer_certificate(der(cert))
    assert pe.passport_token == "eyJ.a.b" and pe.coco is None


def test_build_needs_exactly_one_kind():
    key = new_key()
    with pytest.raises(ValueError):
        build_attested_certificate(key)
    with pytest.raises(ValueError):
        build_attested_certificate(key, coco=coco_for(key), passport_token="t")


# -- tampering ---------------------------------------------------------------

def _cert_with_extension(key, value: bytes | None, *, hours=6.0, start=None, sign_key=None):
    now = start or dt.datetime.now(UTC)
    name = x509.Name.from_rfc4514_string("CN=TNG,O=Inclavare Containers")
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(key.public_key()).serial_number(1)
         .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=hours)))
    if value is not None:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_DICE_CMW), value),
                            critical=False)
    return der(b.sign(sign_key or key, hashes.SHA256()))


def test_no_extension():
    key = new_key()
    with pytest.raises(EvidenceError, match=r"certificate carries no attestation evidence "
                                            r"\(extension 2\.23\.133\.5\.4\.9 missing\)"):
        parse_peer_certificate(_cert_with_extension(key, None))


def test_bad_self_signature():
    key, other = new_key(), new_key()
    value = ev.cmw_extension_value(coco=coco_for(key))
    with pytest.raises(EvidenceError, match="self-signature"):
        parse_peer_certificate(_cert_with_extension(key, value, sign_key=other))


def test_flipped_signature_byte():
    key = new_key()
    blob = bytearray(der(build_attested_certificate(key, coco=coco_for(key))))
    blob[-5] ^= 0x01
    with pytest.raises(EvidenceError):
        parse_peer_certificate(bytes(blob))


def test_bound_to_a_different_key():
    key_a, key_b = new_key(), new_key()
    cert = build_attested_certificate(key_b, coco=coco_for(key_a))
    with pytest.raises(EvidenceError, match="evidence is bound to a different key"):
        parse_peer_certificate(der(cert))


def test_expired():
    key = new_key()
    value = ev.cmw_extension_value(coco=coco_for(key))
    start = dt.datetime.now(UTC) - dt.timedelta(hours=8)
    with pytest.raises(EvidenceError, match="expired"):
        parse_peer_certificate(_cert_with_extension(key, value, start=start))


def test_not_der():
    with pytest.raises(EvidenceError, match="not valid DER"):
        parse_peer_certificate(b"\x30\x03abc")


def _coco_map(key, **changes):
    c = coco_for(key)
    m = {"tee_type": c.tee_type, "aa_evidence": c.aa_evidence,
         "aa_additional_evidence": None, "aa_runtime_data": c.aa_runtime_data,
         "aa_runtime_data_hash_algo": 7}
    for k, v in changes.items():
        if v is KeyError:
            del m[k]
        else:
            m[k] = v
    return cbor2.dumps(m)


@pytest.mark.parametrize("make, fragment", [
    (lambda k: cbor2.dumps(cbor2.CBORTag(0xC0C002, [_coco_map(k), b""])), "unknown CBOR tag 0xc0c002"),
    (lambda k: cbor2.dumps([_coco_map(k), b""]), "not a CBOR tag"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k)])), r"\[bstr evidence, bstr\]"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, ["text", b""])), r"\[bstr evidence, bstr\]"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k), b""])) + b"\x00", "trailing"),
    (lambda k: b"\xff\xff", "not valid CBOR"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [cbor2.dumps([1]), b""])), "must be a CBOR map"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, tee_type=KeyError), b""])), "lacks tee_type"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_evidence="str"), b""])), "aa_evidence"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_additional_evidence=3), b""])), "aa_additional_evidence"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_runtime_data=b"x"), b""])), "aa_runtime_data must be text"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_runtime_data_hash_algo=True), b""])), "must be an integer"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_runtime_data_hash_algo=2), b""])), "unsupported runtime data hash"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_runtime_data="{"), b""])), "not JSON"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(COCO_EVIDENCE_TAG, [_coco_map(k, aa_runtime_data="{}"), b""])), "different key"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(PASSPORT_TAG, [b"", b""])), "empty"),
    (lambda k: cbor2.dumps(cbor2.CBORTag(PASSPORT_TAG, [b"\xff", b""])), "not ASCII"),
])
def test_malformed_evidence(make, fragment):
    key = new_key()
    with pytest.raises(EvidenceError, match=fragment):
        parse_peer_certificate(_cert_with_extension(key, make(key)))


def test_rsa_and_p384_self_signed_accepted():
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        rd = canonical_json(runtime_data(pubkey_hash(ev.spki_der(key.public_key()))))
        value = ev.cmw_extension_value(coco=CocoEvidence("sample", b"e", None, rd))
        pe = parse_peer_certificate(_cert_with_extension(key, value))
        assert pe.coco.tee_type == "sample"


def test_unsupported_curve_refused():
    key = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(EvidenceError, match="unsupported curve"):
        parse_peer_certificate(_cert_with_extension(key, b"\x00"))


def test_raw_spki_is_the_certificates_own_bytes():
    # The verifier hashes the SubjectPublicKeyInfo exactly as it sits in the
    # TBSCertificate (not a re-encoding of the parsed key).
    for key in (new_key(), rsa.generate_private_key(65537, 2048)):
        cert = x509.load_der_x509_certificate(_cert_with_extension(key, b"\x00"))
        spki = ev._raw_spki(cert)
        assert spki == ev.spki_der(key.public_key())
        assert spki in cert.tbs_certificate_bytes


# -- robustness: anything malformed is an EvidenceError, nothing else ---------

_VALID = der(build_attested_certificate(_k := new_key(), coco=coco_for(_k)))


@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)),
                min_size=1, max_size=4))
def test_mutated_certificates_fail_cleanly(flips):
    blob = bytearray(_VALID)
    for pos, mask in flips:
        blob[pos] ^= mask
    try:
        parse_peer_certificate(bytes(blob))
    except EvidenceError:
        pass


@given(st.binary(max_size=300))
def test_arbitrary_extension_content_fails_cleanly(content):
    key = new_key()
    with pytest.raises(EvidenceError):
        parse_peer_certificate(_cert_with_extension(key, content))
