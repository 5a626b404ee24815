"""gRPC form of the Attestation Service API: message layouts and service glue.

No generated code: the two request layouts of PROTOCOLS.md §4 are written and
read with our protobuf wire codec, and grpcio carries raw bytes through
generic stubs/handlers.

v1.6 (current)::

    AttestationRequest { repeated IndividualAttestationRequest verification_requests = 1;
                         repeated string policy_ids = 2; }
    IndividualAttestationRequest { string tee = 1; string evidence = 3;
        oneof runtime_data { string raw_runtime_data = 4; string structured_runtime_data = 5; }
        oneof init_data { string raw_init_data = 6; string structured_init_data = 7; }
        string runtime_data_hash_algorithm = 8; }

v1.5.2 (flat)::

    AttestationRequest { string tee = 1; string evidence = 2; raw_runtime_data = 3;
        structured_runtime_data = 4; raw_init_data = 5; structured_init_data = 6;
        runtime_data_hash_algorithm = 7; init_data_hash_algorithm = 8; repeated string policy_ids = 9; }

    AttestationResponse { string attestation_token = 1; }
"""

from __future__ import annotations

import json
from typing import Any, Callable

from tng_nfq.attestation import protobuf as pb
from tng_nfq.attestation.as_client import (
    DEFAULT_HASH_ALGORITHM,
    HASH_ALGORITHMS,
    AttestationRequest,
    VerificationRequest,
    parse_token_text,
)

SERVICE = "attestation.AttestationService"
METHOD = "AttestationEvaluate"
METHOD_PATH = f"/{SERVICE}/{METHOD}"


# --------------------------------------------------------------------------
# messages

def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _init_fields(r: VerificationRequest, raw_no: int, structured_no: int) -> list:
    init = r.init_data
    if isinstance(init, dict) and "raw" in init:
        return [(raw_no, init["raw"])]
    if isinstance(init, dict) and "structured" in init:
        return [(structured_no, _json_text(init["structured"]))]
    return []


def _runtime_fields(r: VerificationRequest, raw_no: int, structured_no: int) -> list:
    if r.raw_runtime_data is not None:
        return [(raw_no, r.raw_runtime_data)]
    if r.runtime_data is not None:
        return [(structured_no, _json_text(r.runtime_data))]
    return []


def encode_individual(r: VerificationRequest) -> bytes:
    return pb.encode_message([(1, r.tee), (3, r.evidence), *_runtime_fields(r, 4, 5),
                              *_init_fields(r, 6, 7), (8, r.runtime_data_hash_algorithm)])


def encode_request(req: AttestationRequest) -> bytes:
    """The request in the layout `req.layout` names ("current" or "flat")."""
    if req.layout == "flat":
        r = req.requests[0]
        return pb.encode_message([(1, r.tee), (2, r.evidence), *_runtime_fields(r, 3, 4),
                                  *_init_fields(r, 5, 6), (7, r.runtime_data_hash_algorithm),
                                  *[(9, p) for p in req.policy_ids]])
    return pb.encode_message([*[(1, encode_individual(r)) for r in req.requests],
                              *[(2, p) for p in req.policy_ids]])


def _structured(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None


def _algo(text: str) -> str:
    algo = text or DEFAULT_HASH_ALGORITHM
    if algo not in HASH_ALGORITHMS:
        raise ValueError(f"unknown runtime_data_hash_algorithm {algo!r}")
    return algo


def _individual(fields: dict, *, tee: int, evidence: int, raw_rd: int, st_rd: int, raw_init: int,
                st_init: int, algo: int) -> VerificationRequest:
    if tee not in fields:
        raise ValueError("missing field `tee`")
    structured = raw = init = None
    if raw_rd in fields:
        raw = pb.get_string(fields, raw_rd)
    elif st_rd in fields:
        structured = _structured(pb.get_string(fields, st_rd), "structured_runtime_data")
    if raw_init in fields:
        init = {"raw": pb.get_string(fields, raw_init)}
    elif st_init in fields:
        init = {"structured": _structured(pb.get_string(fields, st_init), "structured_init_data")}
    return VerificationRequest(tee=pb.get_string(fields, tee), evidence=pb.get_string(fields, evidence),
                               runtime_data=structured, raw_runtime_data=raw, init_data=init,
                               runtime_data_hash_algorithm=_algo(pb.get_string(fields, algo)))


def _decode_current(fields: dict) -> AttestationRequest | None:
    """The v1.6 reading, or None when the bytes do not fit it."""
    if any(n not in (1, 2) for n in fields) or 1 not in fields:
        return None
    try:
        subs = pb.get_repeated_messages(fields, 1)
        if not subs or any(1 not in s or 3 not in s for s in subs):
            return None
        policy_ids = tuple(pb.get_repeated_strings(fields, 2))
    except pb.ProtobufError:
        return None
    reqs = tuple(_individual(s, tee=1, evidence=3, raw_rd=4, st_rd=5, raw_init=6, st_init=7, algo=8)
                 for s in subs)
    return AttestationRequest(reqs, policy_ids, "current")


def decode_request(data: bytes) -> AttestationRequest:
    """Either layout. They are told apart by shape: the v1.6 message has only
    fields 1 and 2, and its field 1 parses as a message holding a tee and an
    evidence; a flat tee string ("sample", "tdx", ...) cannot parse that way
    (its first byte is a group or invalid tag) and the flat layout carries
    fields 3..9. Raises ValueError (ProtobufError included) when malformed."""
    fields = pb.decode_message(data)
    current = _decode_current(fields)
    if current is not None:
        return current
    req = _individual(fields, tee=1, evidence=2, raw_rd=3, st_rd=4, raw_init=5, st_init=6, algo=7)
    return AttestationRequest((req,), tuple(pb.get_repeated_strings(fields, 9)), "flat")


def wire_fields(data: bytes) -> dict:
    """Which field numbers a request carries, top level and (when they parse)
    inside field 1: enough to tell the layouts apart in a log line."""
    try:
        fields = pb.decode_message(data)
    except pb.ProtobufError as exc:
        return {"undecodable": str(exc)}
    inner = []
    for value in fields.get(1, []):
        try:
            inner.append(sorted(pb.decode_message(value)) if isinstance(value, bytes) else None)
        except pb.ProtobufError:
            inner.append(None)
    return {"top": sorted(fields), "field1": inner}


def encode_response(token: str) -> bytes:
    return pb.encode_message([(1, token)])


def decode_response(data: bytes) -> str:
    """The token of an AttestationResponse; ValueError when there is none."""
    return parse_token_text(pb.get_string(pb.decode_message(data), 1).encode("utf-8"))


# --------------------------------------------------------------------------
# client

class GrpcCallError(Exception):
    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    def looks_like_old_layout(self) -> bool:
        # tonic answers an undecodable message with INTERNAL "failed to decode
        # Protobuf message: ..."; that is an AS <= 1.5.2 reading our v1.6 bytes
        return self.code in ("INTERNAL", "INVALID_ARGUMENT", "UNKNOWN") and "decode" in self.details.lower()

    def describe(self, timeout: float) -> str:
        details = " ".join(self.details.split())[:200]
        if self.code == "UNAVAILABLE":
            return f"unreachable: {details}"
        if self.code == "DEADLINE_EXCEEDED":
            return f"timed out after {timeout:g}s"
        return f"gRPC {self.code}: {details}"


def evaluate(channel, req: AttestationRequest, *, timeout: float) -> str:
    """One AttestationEvaluate call; GrpcCallError on an RPC failure, ValueError on a bad answer."""
    import grpc

    call = channel.unary_unary(METHOD_PATH, request_serializer=encode_request,
                               response_deserializer=lambda b: b)  # parsed below, with our errors
    try:
        answer = call(req, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise GrpcCallError(code.name if code is not None else "UNKNOWN", details or "") from None
    return decode_response(answer)


# --------------------------------------------------------------------------
# server glue

def service_handler(handler: Callable[[AttestationRequest], str],
                    on_raw: Callable[[bytes], None] | None = None):
    """A grpc generic handler serving AttestationEvaluate with `handler`.

    `handler` returns the token; it raises ValueError for a bad request
    (INVALID_ARGUMENT), PermissionError for refused evidence
    (PERMISSION_DENIED); anything else becomes INTERNAL. `on_raw` sees each
    request's bytes first (the dev AS logs their layout).
    """
    import grpc

    def evaluate_rpc(request: bytes, context):
        code = message = None
        if on_raw is not None:
            on_raw(request)
        try:
            req = decode_request(request)
        except ValueError as exc:
            req = None
            code, message = grpc.StatusCode.INVALID_ARGUMENT, f"failed to decode Protobuf message: {exc}"
        if req is not None:
            try:
                return encode_response(handler(req))
            except PermissionError as exc:
                code, message = grpc.StatusCode.PERMISSION_DENIED, str(exc)
            except ValueError as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except Exception as exc:  # noqa: BLE001 - the peer gets a status, not a dropped call
                code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        context.abort(code, message)

    rpc = grpc.unary_unary_rpc_method_handler(evaluate_rpc)  # raw bytes in and out
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: rpc})


def start_server(listen: str, handler: Callable[[AttestationRequest], str], *, max_workers: int = 4,
                 on_raw: Callable[[bytes], None] | None = None):
    """Start a gRPC server on "HOST:PORT" (port 0 picks one); returns (server, port)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dev-as-grpc"))
    server.add_generic_rpc_handlers((service_handler(handler, on_raw),))
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:  # newer grpcio raises instead of returning 0
        raise OSError(f"cannot listen for gRPC on {listen}: {exc}") from None
    if not port:
        raise OSError(f"cannot listen for gRPC on {listen}")
    server.start()
    return server, port
