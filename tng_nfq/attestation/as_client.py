"""Client of a CoCo Attestation Service (PROTOCOLS.md §4), REST or gRPC.

The message model and the REST bodies are plain functions (no I/O) shared
with the dev AS; `AttestationServiceClient` is the thin blocking I/O layer on
top. It is meant to be called from a worker thread: every network operation
has a timeout, and every failure is one `AttestationServiceError` whose text
names the service and what went wrong, fit for a log line.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography import x509

HASH_ALGORITHMS = ("sha256", "sha384", "sha512")
DEFAULT_HASH_ALGORITHM = "sha384"
MAX_RESPONSE_BYTES = 4 << 20  # a token with a TDX event log is ~50 kB; this is generous
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class AttestationServiceError(Exception):
    """The AS could not be asked or did not issue a token; str(exc) is one line."""


# --------------------------------------------------------------------------
# message model (shared by REST and gRPC, client and dev server)

@dataclass(frozen=True)
class VerificationRequest:
    """One piece of evidence to appraise (Trustee's IndividualAttestationRequest)."""

    tee: str
    evidence: str                          # base64url without padding, as on the wire
    runtime_data: Any = None               # structured runtime data (parsed JSON) ...
    raw_runtime_data: str | None = None    # ... or raw, base64 as on the wire
    init_data: Any = None                  # None, {"raw": b64} or {"structured": value}
    runtime_data_hash_algorithm: str = DEFAULT_HASH_ALGORITHM


@dataclass(frozen=True)
class AttestationRequest:
    requests: tuple[VerificationRequest, ...]
    policy_ids: tuple[str, ...]
    layout: str = "current"   # "current" (AS >= 1.6, a list of requests) or "flat" (AS <= 1.5.2)


def b64url_nopad(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_tolerant(text: str) -> bytes:
    """Decode base64url or standard base64, with or without padding."""
    s = "".join(text.split()).rstrip("=")
    s += "=" * (-len(s) % 4)
    alt = b"-_" if ("-" in s or "_" in s) else b"+/"
    return base64.b64decode(s.encode("ascii"), altchars=alt, validate=True)


def build_request(*, tee: str, evidence: bytes, runtime_data: Any, hash_algo: str = DEFAULT_HASH_ALGORITHM,
                  policy_ids: Sequence[str], additional_evidence: bytes | None = None) -> AttestationRequest:
    """The request for one AA evidence blob (plus any additional device evidence)."""
    if hash_algo not in HASH_ALGORITHMS:
        raise ValueError(f"runtime data hash algorithm {hash_algo!r} is not one of {', '.join(HASH_ALGORITHMS)}")
    first = VerificationRequest(tee=tee, evidence=b64url_nopad(evidence), runtime_data=runtime_data,
                                runtime_data_hash_algorithm=hash_algo)
    extra = tuple(VerificationRequest(tee=t, evidence=ev, runtime_data=runtime_data,
                                      runtime_data_hash_algorithm=hash_algo)
                  for t, ev in _additional_requests(additional_evidence))
    return AttestationRequest(requests=(first, *extra), policy_ids=tuple(policy_ids))


def _additional_requests(additional: bytes | None) -> list[tuple[str, str]]:
    """Best effort: the AA's additional evidence as a JSON object {tee: evidence}.

    That is how CoCo composes device (e.g. GPU) evidence with the primary TEE
    evidence: one more verification request per entry, bound to the same
    runtime data. Anything else (empty, `{}`, not JSON) adds nothing: the
    sample AA has none, and upstream also tolerates an AA without it.
    """
    if not additional:
        return []
    try:
        value = json.loads(additional)
    except (UnicodeDecodeError, ValueError):
        return []
    if not isinstance(value, dict):
        return []
    out = []
    for tee, ev in value.items():
        text = ev if isinstance(ev, str) else json.dumps(ev, separators=(",", ":"))
        out.append((tee, b64url_nopad(text.encode("utf-8"))))
    return out


def _runtime_data_json(req: VerificationRequest) -> dict | None:
    if req.raw_runtime_data is not None:
        return {"raw": req.raw_runtime_data}
    if req.runtime_data is not None:
        return {"structured": req.runtime_data}
    return None


def rest_body(req: AttestationRequest) -> dict:
    """JSON body of `POST /attestation` for AS >= 1.6."""
    return {"verification_requests": [{"tee": r.tee, "evidence": r.evidence,
                                       "runtime_data": _runtime_data_json(r),
                                       "init_data": r.init_data,
                                       "runtime_data_hash_algorithm": r.runtime_data_hash_algorithm}
                                      for r in req.requests],
            "policy_ids": list(req.policy_ids)}


def rest_flat_body(req: AttestationRequest) -> dict:
    """The older flat body (AS <= 1.5.2): one evidence only, so additional evidence is dropped."""
    r = req.requests[0]
    return {"tee": r.tee, "evidence": r.evidence, "runtime_data": _runtime_data_json(r),
            "init_data": r.init_data, "runtime_data_hash_algorithm": r.runtime_data_hash_algorithm,
            "policy_ids": list(req.policy_ids)}


def _missing(field: str) -> ValueError:
    # worded like Trustee's serde errors, which clients (upstream's, ours) match on
    return ValueError(f"missing field `{field}`")


def _parse_individual(obj: Any) -> VerificationRequest:
    if not isinstance(obj, dict):
        raise ValueError("a verification request is not a JSON object")
    for name in ("tee", "evidence"):
        if name not in obj:
            raise _missing(name)
        if not isinstance(obj[name], str):
            raise ValueError(f"`{name}` is not a string")
    rd = obj.get("runtime_data")
    structured = raw = None
    if rd is not None:
        if not isinstance(rd, dict) or len(rd) != 1 or not ({"structured", "raw"} & rd.keys()):
            raise ValueError("`runtime_data` must be {\"structured\": ...} or {\"raw\": ...}")
        if "raw" in rd:
            if not isinstance(rd["raw"], str):
                raise ValueError("`runtime_data.raw` is not a string")
            raw = rd["raw"]
        else:
            structured = rd["structured"]
    algo = obj.get("runtime_data_hash_algorithm") or DEFAULT_HASH_ALGORITHM
    if algo not in HASH_ALGORITHMS:
        raise ValueError(f"unknown runtime_data_hash_algorithm {algo!r}")
    return VerificationRequest(tee=obj["tee"], evidence=obj["evidence"], runtime_data=structured,
                               raw_runtime_data=raw, init_data=obj.get("init_data"),
                               runtime_data_hash_algorithm=algo)


def _policy_ids(obj: dict) -> tuple[str, ...]:
    ids = obj.get("policy_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("`policy_ids` is not a list of strings")
    return tuple(ids)


def parse_rest_body(obj: Any) -> AttestationRequest:
    """A `POST /attestation` body, either layout; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("body is not a JSON object")
    if "verification_requests" in obj:
        reqs = obj["verification_requests"]
        if not isinstance(reqs, list) or not reqs:
            raise ValueError("`verification_requests` is not a non-empty list")
        return AttestationRequest(tuple(_parse_individual(r) for r in reqs), _policy_ids(obj), "current")
    if "tee" in obj:
        return AttestationRequest((_parse_individual(obj),), _policy_ids(obj), "flat")
    raise _missing("verification_requests")


def parse_token_text(body: bytes) -> str:
    """The JWT in an AS answer (plain text; a JSON string is tolerated)."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("answer is not UTF-8") from None
    if text.startswith('"'):
        try:
            text = json.loads(text)
        except ValueError:
            raise ValueError("answer is not a token") from None
        if not isinstance(text, str):
            raise ValueError("answer is not a token")
        text = text.strip()
    if not _JWT_RE.match(text):
        raise ValueError("answer is not a token")
    return text


def grpc_target(as_addr: str) -> str:
    """`http://127.0.0.1:5000/` -> `127.0.0.1:5000` (the form grpc channels take)."""
    parts = urllib.parse.urlsplit(as_addr if "://" in as_addr else f"http://{as_addr}")
    if not parts.hostname:
        raise ValueError(f"as_addr {as_addr!r} names no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def _one_line(data: bytes | str, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return " ".join(text.split())[:limit]


# --------------------------------------------------------------------------
# I/O

class AttestationServiceClient:
    """Blocking client; safe to share between threads."""

    def __init__(self, as_addr: str, *, grpc: bool = False, timeout: float = 10.0):
        self.as_addr = as_addr
        self.use_grpc = grpc
        self.timeout = timeout
        parts = urllib.parse.urlsplit(as_addr if "://" in as_addr else f"http://{as_addr}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"as_addr {as_addr!r} is not an http(s) URL")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._grpc_channel = None
        self._grpc_lock = threading.Lock()

    def _fail(self, what: str) -> AttestationServiceError:
        return AttestationServiceError(f"attestation service {self.as_addr}: {what}")

    # -- public API

    def attest(self, *, tee: str, evidence: bytes, runtime_data: dict, hash_algo: str = DEFAULT_HASH_ALGORITHM,
               policy_ids: Sequence[str], additional_evidence: bytes | None = None) -> str:
        """Have the AS appraise the evidence; return its token (not verified here)."""
        req = build_request(tee=tee, evidence=evidence, runtime_data=runtime_data, hash_algo=hash_algo,
                            policy_ids=policy_ids, additional_evidence=additional_evidence)
        if self.use_grpc:
            return self._attest_grpc(req)
        return self._attest_rest(req)

    def challenge(self) -> str:
        """A challenge token (JWT) from `POST /challenge` (Trustee: `{"nonce", "extra_params": {"jwt"}}`),
        used by HTTP encapsulation to prove the evidence is fresh. An AS too old
        to have the API gets upstream's fallback, the literal "dummy nonce"."""
        if self.use_grpc:
            raise self._fail("challenge tokens need the REST API of the attestation service")
        status, body = self._post_json("/challenge", {})
        if not 200 <= status < 300:
            if b"Failed to get inner tee" in body:
                return "dummy nonce"
            raise self._fail(f"challenge: HTTP {status}: {_one_line(body)}")
        try:
            obj = json.loads(body)
            params = obj.get("extra_params", obj.get("extra-params"))
            token = params["jwt"]
            if not isinstance(token, str) or not token:
                raise ValueError
            return token
        except (ValueError, TypeError, KeyError, AttributeError):
            raise self._fail(f"challenge: answered {_one_line(body)!r}, not {{nonce, extra_params.jwt}}") from None

    def certificate_chain(self) -> list[x509.Certificate]:
        """The AS's token-signing chain from `GET /certificate` (REST only)."""
        if self.use_grpc:
            raise self._fail("the gRPC API has no certificate endpoint; configure trusted_certs_paths")
        status, body = self._http("GET", self._prefix + "/certificate", None)
        if not 200 <= status < 300:
            raise self._fail(f"HTTP {status}: {_one_line(body)}")
        try:
            return x509.load_pem_x509_certificates(body)
        except ValueError:
            raise self._fail("answered something that is not a PEM certificate chain") from None

    def close(self) -> None:
        with self._grpc_lock:
            if self._grpc_channel is not None:
                self._grpc_channel.close()
                self._grpc_channel = None

    # -- REST

    def _attest_rest(self, req: AttestationRequest) -> str:
        status, body = self._post_json("/attestation", rest_body(req))
        if not 200 <= status < 300 and b"missing field `tee`" in body:
            # an AS <= 1.5.2 that wants the flat body; upstream retries the same way
            status, body = self._post_json("/attestation", rest_flat_body(req))
        if not 200 <= status < 300:
            raise self._fail(f"HTTP {status}: {_one_line(body)}")
        try:
            return parse_token_text(body)
        except ValueError:
            raise self._fail("answered something that is not a token") from None

    def _post_json(self, path: str, obj: dict) -> tuple[int, bytes]:
        return self._http("POST", self._prefix + path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def _http(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        # http.client rather than urllib: no proxy environment variables get a
        # say in where evidence is sent, and errors map to one line each.
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        headers = {"Accept": "*/*", "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise self._fail(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
            return resp.status, data
        except (socket.timeout, TimeoutError):
            raise self._fail(f"timed out after {self.timeout:g}s") from None
        except ConnectionRefusedError:
            raise self._fail("unreachable: connection refused") from None
        except ssl.SSLError as exc:
            raise self._fail(f"TLS error: {exc.reason or exc}") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The TCP connection was made (connect errors are raised before
            # any byte is written), so the peer is up but hung up on an HTTP
            # request: typically a different protocol on that port.
            raise self._fail(f"is not an HTTP server (it hung up on the request: {exc.strerror or exc})") from None
        except (http.client.BadStatusLine, http.client.LineTooLong) as exc:
            raise self._fail(f"is not an HTTP server (it answered {_one_line(str(exc))})") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
            raise self._fail(f"unreachable: {reason}") from None
        finally:
            conn.close()

    # -- gRPC

    def _channel(self):
        import grpc

        with self._grpc_lock:
            if self._grpc_channel is None:
                target = grpc_target(self.as_addr)
                if self._scheme == "https":
                    self._grpc_channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
                else:
                    self._grpc_channel = grpc.insecure_channel(target)
            return self._grpc_channel

    def _attest_grpc(self, req: AttestationRequest) -> str:
        from tng_nfq.attestation import as_grpc

        channel = self._channel()
        try:
            return as_grpc.evaluate(channel, req, timeout=self.timeout)
        except as_grpc.GrpcCallError as exc:
            if exc.looks_like_old_layout():
                # an AS <= 1.5.2 could not decode the v1.6 message: send the flat one
                try:
                    return as_grpc.evaluate(channel, AttestationRequest(req.requests, req.policy_ids, "flat"),
                                            timeout=self.timeout)
                except as_grpc.GrpcCallError as exc2:
                    raise self._fail(exc2.describe(self.timeout)) from None
            raise self._fail(exc.describe(self.timeout)) from None
        except ValueError:
            raise self._fail("answered something that is not a token") from None


__all__ = ["AttestationServiceClient", "AttestationServiceError", "AttestationRequest", "VerificationRequest",
           "build_request", "rest_body", "rest_flat_body", "parse_rest_body", "parse_token_text",
           "grpc_target", "b64url_nopad", "b64_tolerant", "HASH_ALGORITHMS"]
