"""Remote attestation for HTTP encapsulation (docs/ohttp-wire.md §2).

There is no TLS certificate to carry evidence, so attestation binds the
HPKE keys instead:

- the egress (server) proves that its HPKE key configuration comes from a
  TEE: its evidence covers the runtime data
  `{"challenge_token": <JWT>, "hpke_key_config": {...as published...}}`;
  the ingress accepts a key configuration only when the AS token's
  runtime-data claims contain exactly that `hpke_key_config`;
- the ingress (client) proves its own X25519 key `pk_s`: the token covers
  `{"challenge_token": <JWT>, "pk_s": base64(pk_s)}`, travels in every
  tunnel request's metadata, and the request is sealed in HPKE auth mode
  with that key, so only the attested client can have sent it.

Models: background check (the verifier's AS appraises the peer's evidence,
with a challenge the verifier issued) and passport (the attester's own AS
appraises, the peer checks the token). Evidence is always SHA-384 over the
canonical JSON of the runtime data, as for certificates.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass

from tng_nfq.attestation.evidence import CocoEvidence, HASH_ALGO_IDS, hash_algo_name
from tng_nfq.attestation.verifier import AttestationFailed, Verdict
from tng_nfq.http.ohttp import hpke
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.tng import HpkeKeyConfig, KeyConfigRequest, KeyConfigResponse, Metadata

AA_PROVIDER = "coco"


class BindingRefused(Exception):
    """The peer's attestation (or its absence) is not acceptable; `status`
    is the HTTP status an egress answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def evidence_json(coco: CocoEvidence) -> dict:
    """CoCo evidence as upstream puts it in JSON (standard base64 bytes)."""
    out = {"aa_tee_type": coco.tee_type,
           "aa_evidence": base64.b64encode(coco.aa_evidence).decode(),
           "aa_runtime_data": coco.aa_runtime_data,
           "aa_runtime_data_hash_algo": hash_algo_name(coco.aa_runtime_data_hash_algo)}
    if coco.aa_additional_evidence is not None:
        out["aa_additional_evidence"] = base64.b64encode(coco.aa_additional_evidence).decode()
    return out


def evidence_from_json(obj) -> CocoEvidence:
    if not isinstance(obj, dict):
        raise AttestationFailed("evidence is not a JSON object")
    try:
        algo = obj.get("aa_runtime_data_hash_algo", "sha384")
        algo_id = HASH_ALGO_IDS[algo] if isinstance(algo, str) else int(algo)
        additional = obj.get("aa_additional_evidence")
        return CocoEvidence(
            tee_type=str(obj["aa_tee_type"]),
            aa_evidence=base64.b64decode(obj["aa_evidence"], validate=True),
            aa_additional_evidence=base64.b64decode(additional, validate=True) if additional else None,
            aa_runtime_data=str(obj["aa_runtime_data"]),
            aa_runtime_data_hash_algo=algo_id)
    except (KeyError, ValueError, TypeError) as exc:
        raise AttestationFailed(f"malformed evidence: {exc}") from None


def _token_expiry(token: str) -> float | None:
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


# ---- egress (server) side -------------------------------------------------------------


class ServerBinding:
    def __init__(self, security, path: str):
        self.attester = security.attester
        self.verifier = security.verifier
        self.path = path

    def key_config_response(self, request: KeyConfigRequest, config: HpkeKeyConfig) -> KeyConfigResponse:
        if request.model is None or self.attester is None:
            # Nothing asked, or nothing to show (like upstream: no attestation_info);
            # a verifying client then refuses the key configuration itself.
            return KeyConfigResponse(config)
        model = self.attester.cfg.model
        if request.model != model:
            raise BindingRefused(500, f"this egress attests in the {model} model but the client asks for "
                                      f"{request.model}")
        try:
            if model == "passport":
                claims = {"challenge_token": self.attester.challenge_token(),
                          "hpke_key_config": config.as_json()}
                return KeyConfigResponse(config, attestation_result=self.attester.passport_token_for(claims))
            claims = {"challenge_token": request.challenge_token, "hpke_key_config": config.as_json()}
            return KeyConfigResponse(config, evidence=evidence_json(self.attester.evidence_for(claims)))
        except Exception as exc:  # AA or AS trouble: this request fails, the egress keeps serving
            raise BindingRefused(500, f"cannot attest the key configuration: {exc}") from None

    # client attestation -----------------------------------------------------------

    def check_client(self, metadata: Metadata) -> Verdict | None:
        """The client's credential from a tunnel request's metadata; None when
        this egress does not verify (and the client did not attest)."""
        if self.verifier is None:
            if metadata.attestation_result is not None:
                raise BindingRefused(400, "the client sent attestation but this egress does not verify clients")
            return None
        if metadata.attestation_result is None:
            raise BindingRefused(403, "this egress verifies clients, but the request carries no attestation")
        if len(metadata.pk_s) != hpke.N_PK:
            raise BindingRefused(400, "the client's attested public key is not an X25519 key")
        try:
            return self.verifier.verify_bound_token(
                metadata.attestation_result, {"pk_s": base64.b64encode(metadata.pk_s).decode()})
        except AttestationFailed as exc:
            raise BindingRefused(403, f"client attestation failed: {exc}") from None

    def challenge(self) -> dict:
        if self.verifier is None:
            raise BindingRefused(500, "client attestation is not required by this egress")
        try:
            return {"challenge_token": self.verifier.challenge_token()}
        except AttestationFailed as exc:
            raise BindingRefused(500, f"cannot get a challenge: {exc}") from None

    def verify_evidence(self, body: dict) -> dict:
        if self.verifier is None:
            raise BindingRefused(500, "client attestation is not required by this egress")
        try:
            token = self.verifier.appraise_evidence(evidence_from_json(body.get("evidence")))
        except AttestationFailed as exc:
            raise BindingRefused(403, f"client evidence refused: {exc}") from None
        return {"attestation_result": token, "as_provider": AA_PROVIDER}


# ---- ingress (client) side ---------------------------------------------------------------


@dataclass
class ClientCredential:
    private_key: bytes
    public_key: bytes
    token: str
    expires: float


class ClientBinding:
    def __init__(self, security, path: str):
        self.attester = security.attester
        self.verifier = security.verifier
        self.path = path
        self._lock = threading.Lock()

    # verifying the egress -------------------------------------------------------------

    def key_config_request(self) -> tuple[str | None, str | None]:
        if self.verifier is None:
            return None, None
        if self.verifier.cfg.model == "passport":
            return "passport", None
        return "background_check", self.verifier.challenge_token()

    def check_server(self, response: KeyConfigResponse) -> tuple[Verdict | None, float | None]:
        if self.verifier is None:
            return None, None
        expected = {"hpke_key_config": response.hpke_key_config.as_json()}
        if self.verifier.cfg.model == "passport":
            if response.attestation_result is None:
                raise AttestationFailed("the egress sent no attestation result with its key configuration")
            token = response.attestation_result
        else:
            if response.evidence is None:
                raise AttestationFailed("the egress sent no evidence with its key configuration")
            token = self.verifier.appraise_evidence(evidence_from_json(response.evidence))
        verdict = self.verifier.verify_bound_token(token, expected)
        return verdict, verdict.expires

    # proving ourselves ----------------------------------------------------------------------

    def credential(self, api) -> ClientCredential | None:
        """A fresh attested X25519 key. `api(name, body)` reaches the egress's
        background-check endpoints when our attester is in that model."""
        if self.attester is None:
            return None
        sk, pk = hpke.generate_key_pair()
        pk_b64 = base64.b64encode(pk).decode()
        if self.attester.cfg.model == "passport":
            claims = {"challenge_token": self.attester.challenge_token(), "pk_s": pk_b64}
            token = self.attester.passport_token_for(claims)
        else:
            challenge = api("challenge", None).get("challenge_token")
            if not isinstance(challenge, str):
                raise AttestationFailed("the egress sent no challenge_token")
            coco = self.attester.evidence_for({"challenge_token": challenge, "pk_s": pk_b64})
            answer = api("verify", {"evidence": evidence_json(coco), "aa_provider": AA_PROVIDER})
            token = answer.get("attestation_result")
            if not isinstance(token, str):
                raise AttestationFailed("the egress's verifier sent no attestation_result")
        expires = _token_expiry(token) or (time.time() + 300)
        return ClientCredential(sk, pk, token, expires)


def metadata_for(credential: ClientCredential | None, key_hint: bytes) -> Metadata:
    if credential is None:
        return Metadata(key_hint=key_hint)
    return Metadata(attestation_result=credential.token, pk_s=credential.public_key, key_hint=key_hint,
                    as_provider=AA_PROVIDER)


def sender_key(metadata: Metadata | None) -> bytes | None:
    """The HPKE auth-mode sender key of a request (attested clients only)."""
    if metadata is None or metadata.attestation_result is None:
        return None
    if len(metadata.pk_s) != hpke.N_PK:
        raise OhttpError("attested public key is not an X25519 key")
    return metadata.pk_s
