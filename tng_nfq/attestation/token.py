"""Verification of Attestation Service tokens (EAR and the older "simple" form).

Pure: no I/O, the clock is a parameter. The checks follow PROTOCOLS.md §5:

1. the header names its signer with a JWK that carries the certificate chain
   (`jwk.x5c`); the chain must lead to one of the caller's trust anchors;
2. the JWK key must be the leaf certificate's key and the algorithm comes from
   the JWK (never `none`, never HMAC: an HMAC "key" would be public data);
3. the signature, then `exp`;
4. the appraisal itself: EAR submodule status, appraisal policy id, and the
   runtime data the caller expects (e.g. the `pubkey-hash` of the TLS
   certificate the token was presented for).

Every rejection is a `TokenRejected` whose message is one line meant for a
log or an error response.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

EAR_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"

# Asymmetric JWS algorithms we accept, with the key type each needs. HMAC and
# `none` are absent on purpose: with a public "key" anybody could sign.
_EC_ALGS = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_OKP_ALGS = {"EdDSA"}
ACCEPTED_ALGS = frozenset(_EC_ALGS) | _RSA_ALGS | _OKP_ALGS

# Keys of `ear.veraison.annotated-evidence` that are not the TEE's own claims;
# whatever else is there names the TEE ("sample", "tdx", ...).
_ANNOTATION_KEYS = {"report_data", "runtime_data_claims", "init_data", "init_data_claims"}


class TokenRejected(Exception):
    """The token is not acceptable; str(exc) is a one-line reason."""


@dataclass(frozen=True)
class TokenVerdict:
    kind: str                      # "ear" or "simple"
    tee_type: str | None           # "sample", "tdx", ... when the claims reveal it
    policy_ids: tuple[str, ...]    # the policies the AS says it appraised with
    status: str                    # "affirming" for every accepted token
    expires: datetime              # from `exp`, timezone-aware UTC
    claims: dict = field(repr=False, compare=False)


# --------------------------------------------------------------------------
# trust anchors

def load_trust_anchors(paths: Sequence[str]) -> list[x509.Certificate]:
    """All certificates of the given PEM files (several per file allowed).

    Raises OSError when a file cannot be read and ValueError when one holds
    no PEM certificate: a verifier without anchors must not start.
    """
    anchors: list[x509.Certificate] = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(f"{path}: no usable PEM certificate ({exc})") from None
        anchors.extend(certs)
    return anchors


# --------------------------------------------------------------------------
# small decoders

def _b64_any(text: str) -> bytes:
    """base64url or standard base64, padded or not (x5c entries come both ways)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    s = "".join(text.split())
    s = s.rstrip("=")
    s += "=" * (-len(s) % 4)
    url = "-" in s or "_" in s
    if url and ("+" in s or "/" in s):
        raise ValueError("mixes the base64 and base64url alphabets")
    alt = b"-_" if url else b"+/"
    return base64.b64decode(s.encode("ascii"), altchars=alt, validate=True)


def _b64url_strict(part: str, what: str) -> bytes:
    if not part or any(c not in _B64URL_CHARS for c in part):
        raise TokenRejected(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected(f"{what} is not base64url") from None


_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise TokenRejected(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"{what} is not a JSON object")
    return value


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    # a naive datetime is taken as UTC (datetime.utcnow() style callers)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


# --------------------------------------------------------------------------
# keys and chain

def _jwk_public_key(jwk: Mapping[str, Any]):
    """The public key a JWK describes (EC, RSA or OKP/Ed25519)."""
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            curves = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
            curve = curves.get(jwk.get("crv"))
            if curve is None:
                raise TokenRejected(f"jwk curve {jwk.get('crv')!r} is not supported")
            x = int.from_bytes(_b64_any(jwk["x"]), "big")
            y = int.from_bytes(_b64_any(jwk["y"]), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        if kty == "RSA":
            n = int.from_bytes(_b64_any(jwk["n"]), "big")
            e = int.from_bytes(_b64_any(jwk["e"]), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64_any(jwk["x"]))
    except TokenRejected:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenRejected(f"jwk is malformed: {exc}") from None
    raise TokenRejected(f"jwk key type {kty!r} is not supported")


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_alg_fits_key(alg: str, key) -> None:
    if alg in _EC_ALGS:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _EC_ALGS[alg]):
            raise TokenRejected(f"alg {alg} does not fit the signer's key")
    elif alg in _RSA_ALGS:
        if not isinstance(key, rsa.RSAPublicKey):
            raise TokenRejected(f"alg {alg} does not fit the signer's key")
    elif alg in _OKP_ALGS:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise TokenRejected(f"alg {alg} does not fit the signer's key")


def _check_validity(cert: x509.Certificate, now: datetime, role: str) -> None:
    if now < cert.not_valid_before_utc:
        raise TokenRejected(f"{role} certificate {_describe(cert)!r} is not valid before "
                            f"{cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise TokenRejected(f"{role} certificate {_describe(cert)!r} expired at "
                            f"{cert.not_valid_after_utc.isoformat()}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    # Equal DER, or the same subject and key: a CA re-issued with new dates
    # is still the same anchor.
    if a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER):
        return True
    return a.subject == b.subject and _spki(a.public_key()) == _spki(b.public_key())


def verify_chain(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate],
                 now: datetime) -> None:
    """The chain (leaf first) must lead to an anchor; raise TokenRejected otherwise.

    Walk from the leaf: a certificate that is an anchor, or is signed by one,
    ends the walk successfully; otherwise the next certificate must have
    issued it. Each certificate walked (and the anchor reached) must be valid
    at `now`. Extensions (basic constraints, key usage) are not enforced:
    the AS signers in the wild (rcgen, Trustee) are not consistent about them,
    and the anchor set is explicit configuration.
    """
    if not anchors:
        raise TokenRejected("no trust anchors configured")
    for i, cert in enumerate(chain):
        role = "signer" if i == 0 else "chain"
        _check_validity(cert, now, role)
        for anchor in anchors:
            if _same_cert(cert, anchor):
                return
        for anchor in anchors:
            if _issued_by(cert, anchor):
                _check_validity(anchor, now, "trust anchor")
                return
        if i + 1 >= len(chain):
            break
        if not _issued_by(cert, chain[i + 1]):
            raise TokenRejected(f"signer chain is broken: {_describe(cert)!r} is not signed by "
                                f"{_describe(chain[i + 1])!r}")
    raise TokenRejected("signer chain does not lead to a trusted CA")


# --------------------------------------------------------------------------
# claims

def _tier(value: Any) -> int:
    """AR4SI trust tier of one trustworthiness claim: 0 none, 1 affirming, 2 warning, 3 contraindicated."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 3  # not a claim value we understand: fail closed
    v = abs(value)  # negative values mirror the positive tiers
    if v <= 1:
        return 0
    if v <= 31:
        return 1
    if v <= 95:
        return 2
    return 3


_TIER_NAMES = {0: "none", 1: "affirming", 2: "warning", 3: "contraindicated"}


def ear_status_from_vector(vector: Any) -> str:
    """The worst tier over a trustworthiness vector (used when `ear.status` is absent)."""
    if not isinstance(vector, dict) or not vector:
        return "none"
    return _TIER_NAMES[max(_tier(v) for v in vector.values())]


def _is_subset(expected: Any, actual: Any) -> bool:
    """`expected` ⊆ `actual`: objects key by key (recursively), other values equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _is_subset(v, actual[k]) for k, v in expected.items())
    return expected == actual


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_runtime_data(expected: Mapping[str, Any], claims_list: list[Any]) -> None:
    """Every expected item must be in (at least one of) the token's runtime data claims."""
    dicts = [c for c in claims_list if isinstance(c, dict)]
    for key, value in expected.items():
        if any(key in c and _is_subset(value, c[key]) for c in dicts):
            continue
        present = [c[key] for c in dicts if key in c]
        has = f" (token has {_short(present[0])!r})" if present else ""
        raise TokenRejected(f"runtime data does not match: {key} {_short(value)!r} "
                            f"not in token claims{has}")


def _check_ear(claims: dict, policy_ids: Sequence[str], expected: Mapping[str, Any]):
    profile = claims.get("eat_profile")
    if profile != EAR_PROFILE:
        raise TokenRejected(f"eat_profile {profile!r} is not {EAR_PROFILE!r}")
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods:
        raise TokenRejected("EAR token has no submods")
    appraised: list[str] = []
    runtime_claims: list[Any] = []
    tee_type = None
    for name, sub in submods.items():
        if not isinstance(sub, dict):
            raise TokenRejected(f"submod {name} is not an object")
        status = sub.get("ear.status")
        if status is None:
            status = ear_status_from_vector(sub.get("ear.trustworthiness-vector"))
        if status != "affirming":
            raise TokenRejected(f"status {status!r} in submod {name}")
        policy = sub.get("ear.appraisal-policy-id")
        for wanted in policy_ids:
            if wanted != policy:
                raise TokenRejected(f"policy {wanted!r} not appraised (token has {policy!r})")
        if isinstance(policy, str) and policy not in appraised:
            appraised.append(policy)
        annotated = sub.get("ear.veraison.annotated-evidence")
        if isinstance(annotated, dict):
            runtime_claims.append(annotated.get("runtime_data_claims"))
            if tee_type is None:
                tee_type = next((k for k in annotated if k not in _ANNOTATION_KEYS), None)
    _check_runtime_data(expected, runtime_claims)
    return tee_type, tuple(appraised)


def _check_simple(claims: dict, policy_ids: Sequence[str], expected: Mapping[str, Any]):
    reports = claims.get("evaluation-reports")
    appraised: list[str] = []
    if isinstance(reports, list):
        appraised = [r["policy-id"] for r in reports
                     if isinstance(r, dict) and isinstance(r.get("policy-id"), str)]
    for wanted in policy_ids:
        if wanted not in appraised:
            raise TokenRejected(f"policy {wanted!r} not appraised (token has "
                                f"{', '.join(map(repr, appraised)) or 'none'})")
    customized = claims.get("customized_claims")
    runtime = customized.get("runtime_data") if isinstance(customized, dict) else None
    _check_runtime_data(expected, [runtime])
    tee = claims.get("tee")
    return (tee if isinstance(tee, str) else None), tuple(appraised)


# --------------------------------------------------------------------------
# the entry point

def verify_token(token: str, *, trust_anchors: Sequence[x509.Certificate],
                 policy_ids: Sequence[str], expected_runtime_data: Mapping[str, Any],
                 now: datetime | None = None) -> TokenVerdict:
    """Check an AS token completely; return what it says or raise TokenRejected."""
    now = _utc(now)
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenRejected("not a JWS compact token")
    header = _json_object(_b64url_strict(parts[0], "token header"), "token header")

    header_alg = header.get("alg")
    if not isinstance(header_alg, str):
        raise TokenRejected("token header has no alg")
    # Refuse none/HMAC before anything else: they never authenticate an AS.
    if header_alg.lower() == "none" or header_alg.upper().startswith("HS"):
        raise TokenRejected(f"alg {header_alg} is not accepted")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise TokenRejected("token header has no jwk")
    alg = jwk.get("alg", header_alg)
    if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
        raise TokenRejected(f"alg {alg} is not accepted")
    if alg != header_alg:
        raise TokenRejected(f"header alg {header_alg} differs from jwk alg {alg}")
    if alg not in ACCEPTED_ALGS:
        raise TokenRejected(f"alg {alg} is not supported")

    x5c = jwk.get("x5c", header.get("x5c"))
    if not isinstance(x5c, list) or not x5c:
        raise TokenRejected("token header has no x5c certificate chain")
    chain = []
    for i, entry in enumerate(x5c):
        try:
            chain.append(x509.load_der_x509_certificate(_b64_any(entry)))
        except (ValueError, TypeError, binascii.Error):
            raise TokenRejected(f"x5c entry {i} is not a base64 DER certificate") from None
    verify_chain(chain, trust_anchors, now)

    key = _jwk_public_key(jwk)
    leaf_key = chain[0].public_key()
    if _spki(key) != _spki(leaf_key):
        raise TokenRejected("jwk key is not the signer certificate's key")
    _check_alg_fits_key(alg, leaf_key)

    signature = _b64url_strict(parts[2], "token signature") if parts[2] else b""
    algorithm = get_default_algorithms()[alg]
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    try:
        ok = algorithm.verify(signing_input, leaf_key, signature)
    except Exception:  # malformed signature encodings raise inside the backend
        ok = False
    if not ok:
        raise TokenRejected("signature does not verify with the signer certificate")

    claims = _json_object(_b64url_strict(parts[1], "token payload"), "token payload")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise TokenRejected("token has no exp")
    try:
        expires = datetime.fromtimestamp(exp, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise TokenRejected(f"token exp {exp!r} is out of range") from None
    if now >= expires:
        raise TokenRejected(f"token expired at {expires.isoformat()}")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and now.timestamp() < nbf:
        raise TokenRejected(f"token not valid before "
                            f"{datetime.fromtimestamp(nbf, timezone.utc).isoformat()}")

    expected = dict(expected_runtime_data or {})
    if "submods" in claims or "eat_profile" in claims:
        tee_type, appraised = _check_ear(claims, policy_ids, expected)
        kind = "ear"
    elif "customized_claims" in claims or "evaluation-reports" in claims:
        tee_type, appraised = _check_simple(claims, policy_ids, expected)
        kind = "simple"
    else:
        raise TokenRejected("token is neither an EAR nor a simple AS token")
    return TokenVerdict(kind=kind, tee_type=tee_type, policy_ids=appraised,
                        status="affirming", expires=expires, claims=claims)
