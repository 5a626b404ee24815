"""The attester: keeps a current attested certificate for one endpoint.

A certificate binds a fresh P-256 key to TEE evidence: the AA is asked for
evidence over SHA-384 of the canonical runtime data `{"pubkey-hash": ...}`
of that key (PROTOCOLS.md §2). Fetching evidence is slow (a real AA talks
to the TEE), so certificates are made in a background thread and reused for
`refresh_interval` seconds; 0 means fresh evidence for every handshake.
An AA that is down is retried with backoff; the endpoint is not ready until
the first certificate exists.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from tng_nfq.attestation.aa_client import AttestationAgentClient, AttestationAgentError
from tng_nfq.attestation.evidence import (
    HASH_ALGO_IDS,
    CocoEvidence,
    build_attested_certificate,
    canonical_json,
    new_key,
    pubkey_hash,
    runtime_data,
    runtime_data_hash,
)
from tng_nfq.config.model import AttestConfig
from tng_nfq.tunnel.security import NotReady
from tng_nfq.tunnel.tls import Identity

log = structlog.get_logger(component="attester")

CERT_VALIDITY_HOURS = 6.0
AA_TIMEOUT = 50.0
PER_HANDSHAKE_AA_TIMEOUT = 10.0  # below the 15 s handshake timeout
RETRY_INITIAL = 1.0
RETRY_MAX = 30.0


@dataclass(frozen=True)
class AttesterStatus:
    ready: bool
    tee_type: str | None
    last_evidence_at: float | None
    last_error: str | None


class Attester:
    def __init__(self, cfg: AttestConfig, path: str):
        self.cfg = cfg
        self.path = path
        self.log = log.bind(endpoint=path, aa_addr=cfg.aa_addr)
        self._current: Identity | None = None
        self._made_at = 0.0
        self._tee_type: str | None = None
        self._last_error: str | None = None
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # False for HTTP encapsulation, which binds evidence to HPKE keys on
        # demand: no certificates are kept, the loop only proves the AA answers.
        self.make_certificates = True

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._refresh_loop, name=f"{self.path}-attester", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    @property
    def ready(self) -> bool:
        on_demand = self.cfg.refresh_interval == 0 or not self.make_certificates
        return self._current is not None or (on_demand and self._made_at > 0)

    def wait_ready(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.ready or self._stop.is_set(), timeout)

    def status(self) -> AttesterStatus:
        return AttesterStatus(self.ready, self._tee_type, self._made_at or None, self._last_error)

    # -- certificates -----------------------------------------------------------

    def identity(self, timeout: float) -> Identity:
        """The certificate to present now (fresh per call when refresh_interval is 0)."""
        if self.cfg.refresh_interval == 0:
            try:
                return self._make_identity()
            except Exception as exc:  # AA/AS down or answering badly: refuse this connection only
                self._last_error = _one_line(exc)
                self.log.warning("cannot obtain fresh evidence for a handshake", error=self._last_error)
                raise NotReady(f"{self.path}: cannot obtain fresh evidence: {self._last_error}") from None
        if not self.wait_ready(timeout):
            raise NotReady(f"{self.path}: no attested certificate yet"
                           + (f" (last error: {self._last_error})" if self._last_error else ""))
        if self._current is None:
            raise NotReady(f"{self.path}: attester stopped")
        return self._current

    def _make_identity(self) -> Identity:
        key = new_key()
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        runtime = runtime_data(pubkey_hash(spki))
        digest = runtime_data_hash(runtime, "sha384")
        # Per-handshake evidence must arrive within the handshake's own time
        # budget; background refreshes may wait as long as upstream does (50 s).
        aa_timeout = PER_HANDSHAKE_AA_TIMEOUT if self.cfg.refresh_interval == 0 else AA_TIMEOUT
        client = AttestationAgentClient(self.cfg.aa_addr, timeout=aa_timeout)
        tee_type, evidence, additional = client.collect(digest)
        if self.cfg.model == "passport":
            from tng_nfq.attestation.as_client import AttestationServiceClient

            as_client = AttestationServiceClient(self.cfg.as_addr, grpc=self.cfg.as_is_grpc)
            token = as_client.attest(tee=tee_type, evidence=evidence, runtime_data=runtime,
                                     hash_algo="sha384", policy_ids=self.cfg.policy_ids,
                                     additional_evidence=additional)
            cert = build_attested_certificate(key, passport_token=token, validity_hours=CERT_VALIDITY_HOURS)
        else:
            coco = CocoEvidence(tee_type=tee_type, aa_evidence=evidence, aa_additional_evidence=additional,
                                aa_runtime_data=canonical_json(runtime),
                                aa_runtime_data_hash_algo=HASH_ALGO_IDS["sha384"])
            cert = build_attested_certificate(key, coco=coco, validity_hours=CERT_VALIDITY_HOURS)
        self._tee_type = tee_type
        self._made_at = time.time()
        self._last_error = None
        return Identity.from_objects(cert, key, attested=True)

    # -- evidence over arbitrary runtime data (HTTP encapsulation) ------------------

    def evidence_for(self, runtime: dict) -> CocoEvidence:
        """Fresh evidence from the AA over SHA-384 of the canonical JSON of `runtime`."""
        digest = runtime_data_hash(runtime, "sha384")
        client = AttestationAgentClient(self.cfg.aa_addr, timeout=PER_HANDSHAKE_AA_TIMEOUT)
        tee_type, evidence, additional = client.collect(digest)
        self._tee_type = tee_type
        self._made_at = time.time()
        return CocoEvidence(tee_type=tee_type, aa_evidence=evidence, aa_additional_evidence=additional,
                            aa_runtime_data=canonical_json(runtime),
                            aa_runtime_data_hash_algo=HASH_ALGO_IDS["sha384"])

    def passport_token_for(self, runtime: dict) -> str:
        """Evidence over `runtime`, appraised by our own AS (passport model): its token."""
        from tng_nfq.attestation.as_client import AttestationServiceClient

        coco = self.evidence_for(runtime)
        as_client = AttestationServiceClient(self.cfg.as_addr, grpc=self.cfg.as_is_grpc)
        return as_client.attest(tee=coco.tee_type, evidence=coco.aa_evidence, runtime_data=runtime,
                                hash_algo="sha384", policy_ids=self.cfg.policy_ids,
                                additional_evidence=coco.aa_additional_evidence)

    def challenge_token(self) -> str:
        """A challenge from our own AS (passport model)."""
        from tng_nfq.attestation.as_client import AttestationServiceClient

        return AttestationServiceClient(self.cfg.as_addr).challenge()

    def _refresh_loop(self) -> None:
        delay = RETRY_INITIAL
        if self.cfg.refresh_interval == 0:
            # Per-handshake evidence: still prove at start that the AA answers.
            interval = None
        else:
            # never keep a certificate past half its validity, whatever the interval
            interval = min(float(self.cfg.refresh_interval), CERT_VALIDITY_HOURS * 3600 / 2)
        if not self.make_certificates:
            interval = None
        while not self._stop.is_set():
            try:
                if self.make_certificates:
                    identity = self._make_identity()
                else:
                    self.evidence_for({"tng-nfq": "attestation agent readiness probe"})
                    identity = None
            except Exception as exc:  # AA/AS down, bad answers: retry, never die
                self._last_error = _one_line(exc)
                level = self.log.warning if self._current is None else self.log.info
                level("cannot obtain attested certificate; retrying", error=self._last_error,
                      retry_in_s=round(delay, 1))
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_INITIAL
            with self._lock:
                first = self._current is None and interval is not None
                if interval is not None:
                    self._current = identity
                self._lock.notify_all()
            if not self.make_certificates:
                self.log.info("attestation agent answers; evidence is made per HPKE key configuration",
                              tee_type=self._tee_type, model=self.cfg.model)
            else:
                self.log.info("attested certificate ready" if first else "attested certificate renewed",
                              tee_type=self._tee_type, model=self.cfg.model)
            if interval is None:
                return
            # Renew a little before the interval ends so handshakes never wait.
            if self._stop.wait(max(1.0, interval * 0.9)):
                return


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, AttestationAgentError):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
