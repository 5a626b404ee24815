"""The verifier: decides whether a peer's certificate proves a trustworthy TEE.

Background-check model: the evidence in the certificate goes to the
Attestation Service, whose token is then checked locally (PROTOCOLS.md §5).
Passport model: the certificate already carries a token; only the local
checks run. Either way the token must name the `pubkey-hash` of the very
certificate the peer presented in this handshake.

Verdicts are cached by the certificate's DER hash until the token or the
certificate expires, so a peer that reuses its certificate (as attesters
do for `refresh_interval`) is not sent to the AS on every connection, yet
every connection is still checked against a verdict for exactly its cert.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog

from tng_nfq.attestation.evidence import CocoEvidence, EvidenceError, canonical_json, parse_peer_certificate, runtime_data
from tng_nfq.attestation.token import TokenRejected, load_trust_anchors, verify_token
from tng_nfq.config.model import VerifyConfig

log = structlog.get_logger(component="verifier")

CACHE_SIZE = 4096


class AttestationFailed(Exception):
    """The peer is not trusted; the message is one line saying why."""


@dataclass(frozen=True)
class Verdict:
    tee_type: str | None
    policy_ids: tuple[str, ...]
    status: str
    model: str
    as_addr: str | None
    expires: float  # epoch seconds
    verified_at: float

    def as_log_fields(self) -> dict:
        return {"tee_type": self.tee_type, "policy_ids": list(self.policy_ids), "status": self.status,
                "model": self.model}


@dataclass
class VerifierStats:
    ok: int = 0
    failed: int = 0
    cache_hits: int = 0
    last_result: str | None = None
    last_at: float | None = None


class Verifier:
    def __init__(self, cfg: VerifyConfig, path: str):
        self.cfg = cfg
        self.path = path
        self.stats = VerifierStats()
        self._cache: OrderedDict[bytes, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self._anchors = load_trust_anchors(list(cfg.trusted_certs_paths)) if cfg.trusted_certs_paths else None
        self._as_client = None
        if cfg.model != "passport":
            from tng_nfq.attestation.as_client import AttestationServiceClient

            self._as_client = AttestationServiceClient(cfg.as_addr, grpc=cfg.as_is_grpc)

    def _trust_anchors(self):
        if self._anchors is not None:
            return self._anchors
        if self._as_client is None:
            raise AttestationFailed("no trust anchors: set trusted_certs_paths")
        # Fetched per verification (not cached) so that a rotated AS signer is
        # picked up; verdict caching keeps this off the per-connection path.
        try:
            return self._as_client.certificate_chain()
        except Exception as exc:
            raise AttestationFailed(f"cannot fetch the attestation service certificate: {exc}") from None

    def verify(self, peer_der: bytes | None) -> Verdict:
        """Verify the certificate the peer presented; raises AttestationFailed."""
        try:
            verdict = self._verify(peer_der)
        except AttestationFailed as exc:
            self.stats.failed += 1
            self.stats.last_result = f"rejected: {exc}"
            self.stats.last_at = time.time()
            raise
        self.stats.ok += 1
        self.stats.last_result = verdict.status
        self.stats.last_at = time.time()
        return verdict

    def _verify(self, peer_der: bytes | None) -> Verdict:
        if not peer_der:
            raise AttestationFailed("peer presented no certificate")
        key = hashlib.sha256(peer_der).digest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.expires > now:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return cached
        try:
            peer = parse_peer_certificate(peer_der)
        except EvidenceError as exc:
            raise AttestationFailed(str(exc)) from None
        expected = runtime_data(peer.pubkey_hash)
        if peer.passport_token is not None:
            if self.cfg.model != "passport":
                raise AttestationFailed("peer presented a passport token but this endpoint verifies "
                                        "in the background-check model")
            token = peer.passport_token
        elif peer.coco is not None:
            if self.cfg.model == "passport":
                raise AttestationFailed("peer presented raw evidence but this endpoint expects a passport token")
            token = self._appraise(peer)
        else:  # pragma: no cover - parse_peer_certificate guarantees one of them
            raise AttestationFailed("certificate carries no evidence")
        try:
            result = verify_token(token, trust_anchors=self._trust_anchors(), policy_ids=self.cfg.policy_ids,
                                  expected_runtime_data=expected)
        except TokenRejected as exc:
            raise AttestationFailed(f"attestation token rejected: {exc}") from None
        expires = min(result.expires.timestamp(), peer.not_after.timestamp())
        verdict = Verdict(tee_type=result.tee_type or (peer.coco.tee_type if peer.coco else None),
                          policy_ids=result.policy_ids, status=result.status, model=self.cfg.model,
                          as_addr=self.cfg.as_addr, expires=expires, verified_at=now)
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict

    # -- HTTP encapsulation: tokens and evidence bound to other runtime data ---------

    def challenge_token(self) -> str:
        if self._as_client is None:
            raise AttestationFailed("the passport model has no attestation service to ask for a challenge")
        try:
            return self._as_client.challenge()
        except Exception as exc:
            raise AttestationFailed(str(exc)) from None

    def appraise_evidence(self, coco: "CocoEvidence") -> str:
        """Background-check model: have our AS turn the peer's evidence into a token."""
        from tng_nfq.attestation.as_client import AttestationServiceError

        if self._as_client is None:
            raise AttestationFailed("peer sent raw evidence but this endpoint expects a passport token")
        algo = {1: "sha256", 7: "sha384", 8: "sha512"}.get(coco.aa_runtime_data_hash_algo)
        if algo is None:
            raise AttestationFailed(f"unknown runtime data hash algorithm {coco.aa_runtime_data_hash_algo}")
        try:
            structured = json.loads(coco.aa_runtime_data)
        except ValueError:
            raise AttestationFailed("the evidence's runtime data is not JSON") from None
        try:
            return self._as_client.attest(tee=coco.tee_type, evidence=coco.aa_evidence, runtime_data=structured,
                                          hash_algo=algo, policy_ids=self.cfg.policy_ids,
                                          additional_evidence=coco.aa_additional_evidence)
        except AttestationServiceError as exc:
            raise AttestationFailed(str(exc)) from None

    def verify_bound_token(self, token: str, expected_runtime: dict) -> Verdict:
        """Check a token whose runtime-data claims must contain `expected_runtime`
        (e.g. the HPKE key configuration, or a client's HPKE public key).
        Verdicts are cached per token."""
        key = hashlib.sha256(token.encode() + canonical_json(expected_runtime).encode()).digest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.expires > now:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return cached
        try:
            try:
                result = verify_token(token, trust_anchors=self._trust_anchors(), policy_ids=self.cfg.policy_ids,
                                      expected_runtime_data=expected_runtime)
            except TokenRejected as exc:
                raise AttestationFailed(f"attestation token rejected: {exc}") from None
        except AttestationFailed as exc:
            self.stats.failed += 1
            self.stats.last_result = f"rejected: {exc}"
            self.stats.last_at = time.time()
            raise
        verdict = Verdict(tee_type=result.tee_type, policy_ids=result.policy_ids, status=result.status,
                          model=self.cfg.model, as_addr=self.cfg.as_addr, expires=result.expires.timestamp(),
                          verified_at=now)
        self.stats.ok += 1
        self.stats.last_result = verdict.status
        self.stats.last_at = now
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict

    def _appraise(self, peer) -> str:
        from tng_nfq.attestation.as_client import AttestationServiceError

        coco = peer.coco
        algo = {1: "sha256", 7: "sha384", 8: "sha512"}.get(coco.aa_runtime_data_hash_algo)
        if algo is None:
            raise AttestationFailed(f"unknown runtime data hash algorithm {coco.aa_runtime_data_hash_algo}")
        try:
            # exactly the runtime data the evidence covers (already checked to
            # name this certificate's key by parse_peer_certificate)
            structured = json.loads(coco.aa_runtime_data)
            return self._as_client.attest(tee=coco.tee_type, evidence=coco.aa_evidence,
                                          runtime_data=structured, hash_algo=algo,
                                          policy_ids=self.cfg.policy_ids,
                                          additional_evidence=coco.aa_additional_evidence)
        except AttestationServiceError as exc:
            raise AttestationFailed(str(exc)) from None


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
