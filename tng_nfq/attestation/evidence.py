"""Attestation evidence carried in TLS certificates (PROTOCOLS.md section 2).

An attester binds its TLS key to TEE evidence: the SHA-256 of the key's
SubjectPublicKeyInfo goes into ``pubkey-hash``, the canonical JSON
``{"pubkey-hash": ...}`` is the runtime data, and the TEE report carries a
hash of that runtime data.  The evidence then travels in a self-signed
certificate for that key, in the TCG DICE conceptual-message-wrapper
extension.  A verifier recomputes ``pubkey-hash`` from the key it actually
sees, so evidence copied into another certificate is worthless.

Pure functions only; no I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

COCO_EVIDENCE_TAG = 0xC0C000  # CBOR tag: CoCo evidence, background-check model
PASSPORT_TAG = 0xC0C001  # CBOR tag: Attestation Service token, passport model
OID_DICE_CMW = "2.23.133.5.4.9"  # TCG DICE conceptual message wrapper
OID_DICE_EMPTY = "2.23.133.5.4.2"  # present with empty content in upstream's certificates

HASH_ALGO_IDS = {"sha256": 1, "sha384": 7, "sha512": 8}
_HASH_ALGO_NAMES = {v: k for k, v in HASH_ALGO_IDS.items()}

# Clock skew tolerated on both ends of a peer certificate's validity window.
CLOCK_SKEW = dt.timedelta(minutes=5)

_SUBJECT = x509.Name([
    # DER order as upstream writes it (RFC 4514 renders it CN=TNG,O=Inclavare Containers)
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inclavare Containers"),
    x509.NameAttribute(NameOID.COMMON_NAME, "TNG"),
])

_COCO_KEYS = ("tee_type", "aa_evidence", "aa_additional_evidence",
              "aa_runtime_data", "aa_runtime_data_hash_algo")


class EvidenceError(Exception):
    """A peer certificate does not carry usable, correctly bound evidence."""


# --------------------------------------------------------------------------
# key binding


def pubkey_hash(spki_der: bytes) -> str:
    """``base64std(CBOR([1, bstr(SHA-256(SPKI DER))]))``; 1 is the hash
    algorithm id for SHA-256 (named-information registry)."""
    digest = hashlib.sha256(spki_der).digest()
    return base64.b64encode(cbor2.dumps([1, digest])).decode("ascii")


def runtime_data(pubkey_hash_value: str) -> dict:
    return {"pubkey-hash": pubkey_hash_value}


def canonical_json(obj: Any) -> str:
    """RFC 8785 (JCS) serialization of JSON values built from dict, list,
    str, int, float, bool and None."""
    out: list[str] = []
    _jcs(obj, out)
    return "".join(out)


def _jcs(obj: Any, out: list[str]) -> None:
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        out.append(_es_number(obj))
    elif isinstance(obj, str):
        out.append(_jcs_string(obj))
    elif isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        # JCS sorts by UTF-16 code units, which differs from code point order
        # once characters outside the BMP meet ones above U+E000.
        items = sorted(obj.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        out.append("{")
        for i, (key, value) in enumerate(items):
            if i:
                out.append(",")
            out.append(_jcs_string(key))
            out.append(":")
            _jcs(value, out)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _jcs(value, out)
        out.append("]")
    else:
        raise TypeError(f"cannot serialize {type(obj).__name__} as JSON")


def _jcs_string(s: str) -> str:
    # json.dumps with ensure_ascii=False escapes exactly what JCS escapes:
    # quote, backslash, \b \f \n \r \t and other controls as lowercase \u00xx.
    if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        raise ValueError("string contains a lone surrogate; not valid I-JSON")
    return json.dumps(s, ensure_ascii=False)


def _es_number(x: float) -> str:
    """ECMAScript Number::toString, which JCS prescribes for numbers."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON numbers")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires;
    # value = int(digits) * 10**exponent, with no leading zeros in digits.
    t = decimal.Decimal(repr(abs(x))).as_tuple()
    raw = "".join(map(str, t.digits))
    digits = raw.rstrip("0")
    n = len(raw) + t.exponent  # digits before the decimal point
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = ("+" if e >= 0 else "-") + str(abs(e))
        body = digits + "e" + exp if k == 1 else digits[0] + "." + digits[1:] + "e" + exp
    return sign + body


def runtime_data_hash(runtime: dict, algo: str = "sha384") -> bytes:
    """The hash of the canonical runtime data that the TEE report carries."""
    if algo not in HASH_ALGO_IDS:
        raise ValueError(f"unsupported runtime data hash algorithm {algo!r}")
    return hashlib.new(algo, canonical_json(runtime).encode("utf-8")).digest()


# --------------------------------------------------------------------------
# building our certificate


@dataclass(frozen=True)
class CocoEvidence:
    tee_type: str
    aa_evidence: bytes
    aa_additional_evidence: bytes | None
    aa_runtime_data: str
    aa_runtime_data_hash_algo: int = 7

    def to_cbor(self) -> bytes:
        # Key order as upstream serialises its struct (fields in declaration order).
        return cbor2.dumps({
            "tee_type": self.tee_type,
            "aa_evidence": bytes(self.aa_evidence),
            "aa_additional_evidence": (bytes(self.aa_additional_evidence)
                                       if self.aa_additional_evidence is not None else None),
            "aa_runtime_data": self.aa_runtime_data,
            "aa_runtime_data_hash_algo": int(self.aa_runtime_data_hash_algo),
        })


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def cmw_extension_value(*, coco: CocoEvidence | None = None,
                        passport_token: str | None = None) -> bytes:
    """The DER extnValue contents of the 2.23.133.5.4.9 extension: plain CBOR
    ``tag(T, [bstr evidence, bstr ""])`` (no extra ASN.1 wrapping)."""
    if (coco is None) == (passport_token is None):
        raise ValueError("give exactly one of coco evidence or a passport token")
    if coco is not None:
        tag, evidence = COCO_EVIDENCE_TAG, coco.to_cbor()
    else:
        tag, evidence = PASSPORT_TAG, passport_token.encode("utf-8")
    return cbor2.dumps(cbor2.CBORTag(tag, [evidence, b""]))


def build_attested_certificate(key: ec.EllipticCurvePrivateKey, *,
                               coco: CocoEvidence | None = None,
                               passport_token: str | None = None,
                               validity_hours: float = 6.0,
                               now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed certificate for ``key`` carrying the evidence, laid out
    like upstream's (same name, extensions and criticality)."""
    ext_value = cmw_extension_value(coco=coco, passport_token=passport_token)
    now = now or dt.datetime.now(dt.timezone.utc)
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT)
        .issuer_name(_SUBJECT)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=validity_hours))
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=False, key_agreement=True, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier(OID_DICE_CMW), ext_value), critical=False)
        .add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier(OID_DICE_EMPTY), b""), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


# --------------------------------------------------------------------------
# checking a peer's certificate


@dataclass(frozen=True)
class PeerEvidence:
    pubkey_hash: str  # recomputed from the presented certificate's key, never from its claims
    coco: CocoEvidence | None
    passport_token: str | None
    not_after: dt.datetime


def parse_peer_certificate(der: bytes, now: dt.datetime | None = None) -> PeerEvidence:
    """Check a peer's self-signed attested certificate and extract its evidence.

    This does not appraise the evidence (that is the Attestation Service's
    job, or the token check's in the passport model); it makes sure the
    evidence is well-formed and bound to the certificate's key.
    """
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        raise EvidenceError(f"peer certificate is not valid DER X.509: {exc}") from exc

    try:
        _check_self_signature(cert)
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise EvidenceError(f"peer certificate uses an unsupported key or signature: {exc}") from exc

    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    not_before, not_after = _validity(cert)
    if now + CLOCK_SKEW < not_before:
        raise EvidenceError(f"peer certificate is not valid before {not_before.isoformat()}")
    if now - CLOCK_SKEW > not_after:
        raise EvidenceError(f"peer certificate expired at {not_after.isoformat()}")

    key_hash = pubkey_hash(_raw_spki(cert))

    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_CMW))
    except x509.ExtensionNotFound:
        raise EvidenceError("certificate carries no attestation evidence "
                            f"(extension {OID_DICE_CMW} missing)") from None
    except ValueError as exc:  # duplicate or malformed extensions
        raise EvidenceError(f"peer certificate has malformed extensions: {exc}") from exc
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
    tag, evidence = _decode_cmw(raw)

    if tag == PASSPORT_TAG:
        try:
            token = evidence.decode("ascii")
        except UnicodeDecodeError:
            raise EvidenceError("passport token in the certificate is not ASCII text") from None
        if not token:
            raise EvidenceError("passport token in the certificate is empty")
        return PeerEvidence(key_hash, None, token, not_after)

    coco = _decode_coco(evidence)
    try:
        claims = json.loads(coco.aa_runtime_data)
    except ValueError:
        raise EvidenceError("aa_runtime_data in the certificate is not JSON") from None
    if not isinstance(claims, dict) or claims.get("pubkey-hash") != key_hash:
        raise EvidenceError("evidence is bound to a different key "
                            "(aa_runtime_data pubkey-hash does not match the certificate's key)")
    return PeerEvidence(key_hash, coco, None, not_after)


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    # The *_utc accessors exist from cryptography 42; setup.cfg allows 41.
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (cert.not_valid_before.replace(tzinfo=dt.timezone.utc),
            cert.not_valid_after.replace(tzinfo=dt.timezone.utc))


def _check_self_signature(cert: x509.Certificate) -> None:
    public_key = cert.public_key()
    hash_alg = cert.signature_hash_algorithm
    if hash_alg is None:
        raise EvidenceError("peer certificate uses an unsupported signature algorithm")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, (ec.SECP256R1, ec.SECP384R1)):
                raise EvidenceError(
                    f"peer certificate key uses unsupported curve {public_key.curve.name}")
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
        elif isinstance(public_key, rsa.RSAPublicKey):
            pss = cert.signature_algorithm_parameters
            pad = pss if isinstance(pss, padding.PSS) else padding.PKCS1v15()
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, pad, hash_alg)
        else:
            raise EvidenceError(
                f"peer certificate key type {type(public_key).__name__} is not supported")
    except InvalidSignature:
        raise EvidenceError("peer certificate's self-signature does not verify") from None


def _decode_cbor_exact(data: bytes, what: str) -> Any:
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # cbor2 raises assorted errors on bad input
        raise EvidenceError(f"{what} is not valid CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise EvidenceError(f"{what} has {len(data) - fp.tell()} trailing bytes after the CBOR item")
    return obj


def _decode_cmw(raw: bytes) -> tuple[int, bytes]:
    obj = _decode_cbor_exact(raw, f"extension {OID_DICE_CMW}")
    if not isinstance(obj, cbor2.CBORTag):
        raise EvidenceError(f"extension {OID_DICE_CMW} is not a CBOR tag "
                            f"(found {type(obj).__name__})")
    if obj.tag not in (COCO_EVIDENCE_TAG, PASSPORT_TAG):
        raise EvidenceError(f"extension {OID_DICE_CMW} has unknown CBOR tag {obj.tag:#x} "
                            f"(expected {COCO_EVIDENCE_TAG:#x} CoCo evidence or "
                            f"{PASSPORT_TAG:#x} passport token)")
    content = obj.value
    if (not isinstance(content, (list, tuple)) or len(content) != 2
            or not all(isinstance(item, bytes) for item in content)):
        raise EvidenceError(f"extension {OID_DICE_CMW}: tagged value must be "
                            "[bstr evidence, bstr]")
    return obj.tag, content[0]


def _decode_coco(data: bytes) -> CocoEvidence:
    obj = _decode_cbor_exact(data, "CoCo evidence")
    if not isinstance(obj, dict):
        raise EvidenceError(f"CoCo evidence must be a CBOR map, found {type(obj).__name__}")
    missing = [k for k in _COCO_KEYS if k not in obj]
    if missing:
        raise EvidenceError(f"CoCo evidence lacks {', '.join(missing)}")
    tee_type = obj["tee_type"]
    aa_evidence = obj["aa_evidence"]
    additional = obj["aa_additional_evidence"]
    runtime = obj["aa_runtime_data"]
    algo = obj["aa_runtime_data_hash_algo"]
    if not isinstance(tee_type, str) or not tee_type:
        raise EvidenceError("CoCo evidence: tee_type must be non-empty text")
    if not isinstance(aa_evidence, bytes):
        raise EvidenceError("CoCo evidence: aa_evidence must be a byte string")
    if additional is not None and not isinstance(additional, bytes):
        raise EvidenceError("CoCo evidence: aa_additional_evidence must be a byte string or null")
    if not isinstance(runtime, str):
        raise EvidenceError("CoCo evidence: aa_runtime_data must be text")
    if isinstance(algo, bool) or not isinstance(algo, int):
        raise EvidenceError("CoCo evidence: aa_runtime_data_hash_algo must be an integer")
    if algo not in _HASH_ALGO_NAMES:
        raise EvidenceError(f"CoCo evidence: unsupported runtime data hash algorithm id {algo}")
    return CocoEvidence(tee_type, aa_evidence, additional, runtime, algo)


def hash_algo_name(algo_id: int) -> str:
    """'sha384' for 7 etc. (the name the Attestation Service expects)."""
    try:
        return _HASH_ALGO_NAMES[algo_id]
    except KeyError:
        raise ValueError(f"unknown runtime data hash algorithm id {algo_id}") from None


# --------------------------------------------------------------------------
# minimal DER walking: the SubjectPublicKeyInfo exactly as presented


def _der_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise EvidenceError("truncated DER in the peer certificate")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise EvidenceError("bad DER length in the peer certificate")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise EvidenceError("truncated DER in the peer certificate")
    return tag, pos, pos + length


def _raw_spki(cert: x509.Certificate) -> bytes:
    """The subjectPublicKeyInfo bytes from the TBSCertificate as sent.

    Hashing a re-serialisation of the parsed key could differ from what the
    attester hashed (e.g. a compressed EC point); the raw bytes cannot.
    """
    tbs = cert.tbs_certificate_bytes
    _, pos, end = _der_tlv(tbs, 0)  # TBSCertificate SEQUENCE
    tag, _, nxt = _der_tlv(tbs, pos)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = nxt
    # serialNumber, signature, issuer, validity, subject
    for _ in range(5):
        _, _, pos = _der_tlv(tbs, pos)
    tag, _, spki_end = _der_tlv(tbs, pos)
    if tag != 0x30 or spki_end > end:
        raise EvidenceError("peer certificate has no subjectPublicKeyInfo")
    spki = tbs[pos:spki_end]
    return spki
