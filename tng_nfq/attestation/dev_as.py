"""A development Attestation Service for the *sample* TEE.

A real server (REST, optionally gRPC) speaking the CoCo Attestation Service
API of PROTOCOLS.md §4, issuing EAR tokens shaped like Trustee's and signed
by a CA it keeps in `state_dir`. It appraises only sample evidence, which
proves nothing about the machine: it exists so that our verifier, our
attester and upstream `tng` can be exercised end to end without a TEE.

Layers: the appraisal (`DevAttestationService.attest`) is pure apart from the
clock and the signing key; the HTTP handler and the gRPC glue only move bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import jwt
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tng_nfq import __version__
from tng_nfq.attestation.as_client import (
    AttestationRequest,
    VerificationRequest,
    b64_tolerant,
    b64url_nopad,
    parse_rest_body,
)
from tng_nfq.attestation.evidence import canonical_json
from tng_nfq.attestation.token import EAR_PROFILE

log = structlog.get_logger(component="dev-as")

TOKEN_LIFETIME = 300          # seconds, like Trustee's default
MAX_BODY = 16 << 20
CA_VALIDITY = dt.timedelta(days=3650)
SIGNER_VALIDITY = dt.timedelta(days=3650)

# Trustworthiness vectors (AR4SI claim values): 2 = affirming ("approved"),
# 96/97 = contraindicated.
VECTOR_AFFIRMING = {"configuration": 2, "executables": 2, "file-system": 2, "hardware": 2}
VECTOR_CONTRAINDICATED = {"configuration": 96, "executables": 96, "file-system": 96, "hardware": 97}


class RequestError(ValueError):
    """A request the AS refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# signing identity in state_dir

@dataclass(frozen=True)
class SigningIdentity:
    key: ec.EllipticCurvePrivateKey
    signer: x509.Certificate
    ca: x509.Certificate

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.signer, self.ca))

    def jwk(self) -> dict:
        nums = self.key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "alg": "ES256",
                "x": b64url_nopad(nums.x.to_bytes(32, "big")), "y": b64url_nopad(nums.y.to_bytes(32, "big")),
                # upstream's AS writes x5c as base64url without padding; so do we
                "x5c": [b64url_nopad(c.public_bytes(serialization.Encoding.DER))
                        for c in (self.signer, self.ca)]}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tng_nfq dev AS"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes, mode: int) -> None:
    # write-then-rename: a concurrent reader sees the old file or the whole new one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_or_create_identity(state_dir: str) -> SigningIdentity:
    """Reuse ca.pem/ca-key.pem/signer.pem/signer-key.pem, creating them on first start."""
    d = Path(state_dir)
    files = {n: d / n for n in ("ca.pem", "ca-key.pem", "signer.pem", "signer-key.pem")}
    if all(p.exists() for p in files.values()):
        ca = x509.load_pem_x509_certificate(files["ca.pem"].read_bytes())
        signer = x509.load_pem_x509_certificate(files["signer.pem"].read_bytes())
        key = serialization.load_pem_private_key(files["signer-key.pem"].read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files['signer-key.pem']}: not an EC key")
        return SigningIdentity(key, signer, ca)

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate peers' clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("dev AS CA")).issuer_name(_name("dev AS CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + CA_VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    signer = (x509.CertificateBuilder()
              .subject_name(_name("dev AS token signer")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + SIGNER_VALIDITY)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False, key_agreement=False,
                                           key_cert_sign=False, crl_sign=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    # keys first, ca.pem last: ca.pem's presence is what others wait for
    _write_private(files["ca-key.pem"], _pem_key(ca_key), 0o600)
    _write_private(files["signer-key.pem"], _pem_key(key), 0o600)
    _write_private(files["signer.pem"], signer.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_private(files["ca.pem"], ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return SigningIdentity(key, signer, ca)


# --------------------------------------------------------------------------
# sample evidence and policies

HEX64 = frozenset("0123456789abcdefABCDEF")


def expected_report_data(req: VerificationRequest) -> bytes | None:
    """hash(runtime data) as the evidence must carry it; None when no runtime data was sent."""
    if req.raw_runtime_data is not None:
        try:
            material = b64_tolerant(req.raw_runtime_data)
        except ValueError:
            raise RequestError("runtime_data.raw is not base64") from None
    elif req.runtime_data is not None:
        # RFC 8785 canonical JSON, as the attester hashed it (PROTOCOLS.md §2, §4)
        material = canonical_json(req.runtime_data).encode("utf-8")
    else:
        return None
    return hashlib.new(req.runtime_data_hash_algorithm, material).digest()


def _report_data_matches(report_data: str, digest: bytes) -> bool:
    # base64 (the sample attester's form), also hex; either exactly the digest
    # or the digest zero-padded to a 64-byte report data field
    wanted = {digest, digest.ljust(64, b"\0")}
    decoded = []
    try:
        decoded.append(b64_tolerant(report_data))
    except ValueError:
        pass
    try:
        decoded.append(bytes.fromhex(report_data))
    except ValueError:
        pass
    return any(d in wanted for d in decoded)


def parse_sample_evidence(req: VerificationRequest) -> dict:
    """Decode and check sample evidence; returns its JSON object or raises RequestError."""
    if req.tee != "sample":
        raise RequestError(f"tee {req.tee!r} is not supported: this development attestation service "
                           f"appraises only 'sample' evidence")
    try:
        raw = b64_tolerant(req.evidence)
    except ValueError:
        raise RequestError("evidence is not base64url") from None
    try:
        ev = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("sample evidence is not JSON") from None
    if not isinstance(ev, dict):
        raise RequestError("sample evidence is not a JSON object")
    for name in ("svn", "report_data", "measure_register"):
        if name not in ev:
            raise RequestError(f"sample evidence has no {name}")
    if not isinstance(ev["report_data"], str):
        raise RequestError("sample evidence report_data is not a string")
    mr = ev["measure_register"]
    if not isinstance(mr, str) or len(mr) != 64 or not set(mr) <= HEX64:
        raise RequestError("sample evidence measure_register is not 64 hex characters")
    digest = expected_report_data(req)
    if digest is not None and not _report_data_matches(ev["report_data"], digest):
        raise RequestError(f"sample evidence report_data does not match the "
                           f"{req.runtime_data_hash_algorithm} of the runtime data")
    return ev


@dataclass(frozen=True)
class Policy:
    """The appraisal this AS applies, whatever the requested policy id is called."""

    name: str
    min_svn: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Policy":
        if text in ("trust_all", "deny_all"):
            return cls(text)
        if text.startswith("reject_svn_below:"):
            try:
                return cls("reject_svn_below", int(text.split(":", 1)[1]))
            except ValueError:
                pass
        raise ValueError(f"unknown policy {text!r}: use trust_all, deny_all or reject_svn_below:N")

    def appraise(self, evidence: dict) -> tuple[str, dict]:
        """(ear.status, trustworthiness vector) for one piece of sample evidence."""
        if self.name == "deny_all":
            return "contraindicated", dict(VECTOR_CONTRAINDICATED)
        if self.name == "reject_svn_below":
            try:
                svn = int(str(evidence["svn"]), 0)
            except ValueError:
                raise RequestError(f"sample evidence svn {evidence['svn']!r} is not a number") from None
            if svn < (self.min_svn or 0):
                return "contraindicated", {**VECTOR_AFFIRMING, "executables": 96}
        return "affirming", dict(VECTOR_AFFIRMING)


# --------------------------------------------------------------------------
# the service

class DevAttestationService:
    def __init__(self, identity: SigningIdentity, policy: Policy, clock: Callable[[], float] = time.time):
        self.identity = identity
        self.policy = policy
        self.clock = clock

    def challenge(self) -> dict:
        nonce = base64.b64encode(secrets.token_bytes(32)).decode()
        now = int(self.clock())
        token = jwt.encode({"nonce": nonce, "iat": now, "exp": now + TOKEN_LIFETIME}, self.identity.key,
                           algorithm="ES256", headers={"typ": "JWT"})
        return {"nonce": nonce, "extra_params": {"jwt": token}}

    def attest(self, req: AttestationRequest) -> str:
        """Appraise every verification request; one EAR token with a submod each."""
        ids = list(dict.fromkeys(req.policy_ids)) or ["default"]
        if len(ids) > 1:
            # an EAR names a single appraisal policy per submod
            raise RequestError(f"this attestation service appraises one policy per request; "
                               f"got {', '.join(map(repr, ids))}")
        submods = {}
        for i, vr in enumerate(req.requests):
            ev = parse_sample_evidence(vr)
            status, vector = self.policy.appraise(ev)
            submods[f"cpu{i}"] = {
                "ear.status": status,
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": ids[0],
                "ear.veraison.annotated-evidence": {
                    "report_data": ev["report_data"],
                    "runtime_data_claims": vr.runtime_data,
                    "sample": {k: v for k, v in ev.items() if k != "report_data"},
                },
            }
        now = int(self.clock())
        claims = {"eat_profile": EAR_PROFILE, "iat": now,
                  "ear.verifier-id": {"developer": "https://github.com/inclavare-containers/tng (tng_nfq)",
                                      "build": f"tng_nfq dev-as {__version__}"},
                  "submods": submods, "exp": now + TOKEN_LIFETIME}
        return jwt.encode(claims, self.identity.key, algorithm="ES256",
                          headers={"typ": "JWT", "jwk": self.identity.jwk()})


# --------------------------------------------------------------------------
# REST

def _make_handler(service: DevAttestationService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as reqwest clients expect
        server_version = "tng_nfq-dev-as"
        timeout = 30                    # idle keep-alive connections do not pin a thread forever

        def log_message(self, fmt, *args):  # http.server's own stderr lines: replaced by ours
            pass

        def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes | None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                self._send(400, b"bad or missing Content-Length")
                return None
            return self.rfile.read(length)

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") == "/certificate":
                self._send(200, service.identity.chain_pem(), "application/x-pem-file")
                log.info("certificate served", peer=self.client_address[0])
            else:
                self._send(404, b"not found")

        def do_POST(self):  # noqa: N802
            path = self.path.rstrip("/")
            body = self._body()
            if body is None:
                return
            if path == "/challenge":
                # Trustee's answer: a fresh nonce, and in extra_params a JWT
                # carrying it, which TNG's HTTP encapsulation binds into the
                # evidence's runtime data as its challenge_token.
                self._send(200, json.dumps(service.challenge()).encode(), "application/json")
                return
            if path != "/attestation":
                self._send(404, b"not found")
                return
            text = body.decode("utf-8", "replace")
            try:
                req = parse_rest_body(json.loads(body))
                token = service.attest(req)
            except RequestError as exc:
                log.info("attestation refused", status=exc.status, reason=str(exc), body=text[:4096])
                self._send(exc.status, str(exc).encode())
                return
            except ValueError as exc:  # JSON or body shape
                log.info("attestation refused", status=400, reason=str(exc), body=text[:4096])
                self._send(400, f"invalid request body: {exc}".encode())
                return
            log.info("attestation request", api="rest", layout=req.layout, body=text[:4096],
                     policy=service.policy.name)
            self._send(200, token.encode())

    return Handler


def _split_hostport(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _grpc_handler(service: DevAttestationService) -> Callable[[AttestationRequest], str]:
    def handle(req: AttestationRequest) -> str:
        try:
            token = service.attest(req)
        except RequestError as exc:
            log.info("attestation refused", api="grpc", layout=req.layout, status=exc.status, reason=str(exc))
            raise  # a ValueError: INVALID_ARGUMENT
        log.info("attestation request", api="grpc", layout=req.layout, policy=service.policy.name,
                 tee=[r.tee for r in req.requests], policy_ids=list(req.policy_ids),
                 runtime_data=[r.runtime_data for r in req.requests])
        return token
    return handle


def serve(listen: str, *, grpc_listen: str | None = None, policy: str = "trust_all", state_dir: str,
          stop: threading.Event | None = None,
          ready: Callable[[tuple[str, int], int | None], None] | None = None) -> None:
    """Serve until `stop` is set (forever when None).

    `ready`, if given, is called once both APIs listen, with the REST address
    and the gRPC port (useful with port 0).
    """
    service = DevAttestationService(load_or_create_identity(state_dir), Policy.parse(policy))
    host, port = _split_hostport(listen)
    server_cls = _Server
    if ":" in host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    httpd = server_cls((host, port), _make_handler(service))
    grpc_server = grpc_port = thread = None
    try:
        if grpc_listen:
            from tng_nfq.attestation import as_grpc

            def on_raw(data: bytes) -> None:
                log.info("grpc request received", size=len(data), wire_fields=as_grpc.wire_fields(data))

            grpc_server, grpc_port = as_grpc.start_server(grpc_listen, _grpc_handler(service), on_raw=on_raw)
        rest_addr = httpd.server_address[:2]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="dev-as-http", daemon=True)
        thread.start()
        log.info("dev AS ready", rest=f"{rest_addr[0]}:{rest_addr[1]}", grpc_port=grpc_port,
                 policy=policy, state_dir=state_dir)
        if ready is not None:
            ready(rest_addr, grpc_port)
        stop = stop or threading.Event()
        while not stop.wait(0.5):  # short waits: signal handlers run between them
            pass
    finally:
        if thread is not None:
            httpd.shutdown()  # returns once serve_forever has; it would hang if never started
        httpd.server_close()
        if grpc_server is not None:
            grpc_server.stop(grace=1).wait(5)
        log.info("dev AS stopped")


def run_forever(listen: str, *, grpc_listen: str | None = None, policy: str = "trust_all",
                state_dir: str) -> None:
    """Serve until SIGTERM or SIGINT, then return (the process exits 0)."""
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(listen, grpc_listen=grpc_listen, policy=policy, state_dir=state_dir, stop=stop)


def main(argv: list[str] | None = None) -> int:
    """`python -m tng_nfq.attestation.dev_as` (same options as `tng-nfq dev as`)."""
    import argparse

    from tng_nfq.logs import configure

    p = argparse.ArgumentParser(prog="python -m tng_nfq.attestation.dev_as", description=__doc__.split("\n")[0])
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--grpc", dest="grpc_listen", default=None)
    p.add_argument("--policy", default="trust_all")
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    configure(fmt="json")
    run_forever(args.listen, grpc_listen=args.grpc_listen, policy=args.policy, state_dir=args.state_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
