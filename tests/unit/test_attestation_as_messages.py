"""Attestation Service messages (PROTOCOLS.md §4): REST bodies, gRPC layouts,
and the client's retry/error logic with the network replaced by a stub."""

from __future__ import annotations

import base64
import json

import pytest

from tng_nfq.attestation import as_grpc
from tng_nfq.attestation.as_client import (
    AttestationRequest,
    AttestationServiceClient,
    AttestationServiceError,
    VerificationRequest,
    build_request,
    grpc_target,
    parse_rest_body,
    parse_token_text,
    rest_body,
    rest_flat_body,
)
from tng_nfq.attestation.protobuf import ProtobufError

EVIDENCE = b'{"svn":"1","report_data":"AAAA","measure_register":"' + b"0" * 64 + b'","cc_eventlog":null}'
EVIDENCE_B64URL = base64.urlsafe_b64encode(EVIDENCE).rstrip(b"=").decode()
RUNTIME = {"pubkey-hash": "ggFYICt9XkEShl8N+39xOWvv9gEVAtyBxCIUh7EXbpLrSzw9"}
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln"


def sample_request(**kw) -> AttestationRequest:
    args = dict(tee="sample", evidence=EVIDENCE, runtime_data=RUNTIME, hash_algo="sha384",
                policy_ids=["default"])
    args.update(kw)
    return build_request(**args)


# --------------------------------------------------------------------------
# REST bodies

def test_rest_body_is_the_current_layout():
    assert rest_body(sample_request()) == {
        "verification_requests": [{"tee": "sample", "evidence": EVIDENCE_B64URL,
                                   "runtime_data": {"structured": RUNTIME}, "init_data": None,
                                   "runtime_data_hash_algorithm": "sha384"}],
        "policy_ids": ["default"]}
    assert "=" not in EVIDENCE_B64URL or not EVIDENCE_B64URL.endswith("=")


def test_evidence_is_base64url_without_padding():
    for n in range(1, 5):
        ev = bytes([0xFB, 0xFF]) * n + b"x" * n  # bytes that need '-'/'_' and padding
        body = rest_body(sample_request(evidence=ev))
        text = body["verification_requests"][0]["evidence"]
        assert "=" not in text and "+" not in text and "/" not in text
        assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == ev


def test_rest_flat_body():
    assert rest_flat_body(sample_request(policy_ids=["a", "b"])) == {
        "tee": "sample", "evidence": EVIDENCE_B64URL, "runtime_data": {"structured": RUNTIME},
        "init_data": None, "runtime_data_hash_algorithm": "sha384", "policy_ids": ["a", "b"]}


def test_bad_hash_algorithm():
    with pytest.raises(ValueError, match="md5"):
        sample_request(hash_algo="md5")


def test_additional_evidence_becomes_more_requests():
    req = sample_request(additional_evidence=b'{"nvgpu": {"x": 1}}')
    assert [r.tee for r in req.requests] == ["sample", "nvgpu"]
    extra = req.requests[1]
    assert base64.urlsafe_b64decode(extra.evidence + "==") == b'{"x":1}'
    assert extra.runtime_data == RUNTIME
    for nothing in (None, b"", b"{}", b"not json", b"[1,2]"):
        assert len(sample_request(additional_evidence=nothing).requests) == 1


def test_parse_rest_body_both_layouts():
    req = sample_request()
    assert parse_rest_body(rest_body(req)) == req
    flat = parse_rest_body(rest_flat_body(req))
    assert flat.layout == "flat" and flat.requests == req.requests and flat.policy_ids == req.policy_ids
    raw = {"tee": "sample", "evidence": "e", "runtime_data": {"raw": "AAEC"}}
    parsed = parse_rest_body(raw)
    assert parsed.requests[0].raw_runtime_data == "AAEC" and parsed.requests[0].runtime_data is None
    assert parsed.requests[0].runtime_data_hash_algorithm == "sha384"  # the default


@pytest.mark.parametrize("body, msg", [
    ({}, "missing field `verification_requests`"),
    ([], "not a JSON object"),
    ({"verification_requests": [{"evidence": "e"}]}, "missing field `tee`"),
    ({"verification_requests": [{"tee": "sample"}]}, "missing field `evidence`"),
    ({"verification_requests": []}, "non-empty"),
    ({"tee": "sample", "evidence": "e", "runtime_data": {"both": 1}}, "runtime_data"),
    ({"tee": "sample", "evidence": "e", "runtime_data_hash_algorithm": "md5"}, "md5"),
    ({"tee": "sample", "evidence": "e", "policy_ids": "default"}, "policy_ids"),
])
def test_parse_rest_body_errors(body, msg):
    with pytest.raises(ValueError, match=msg):
        parse_rest_body(body)


# --------------------------------------------------------------------------
# gRPC layouts, checked against bytes written out by hand

def _ld(field: int, payload: bytes) -> bytes:
    assert len(payload) < 128 and field < 16
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_grpc_v16_layout_bytes():
    req = AttestationRequest((VerificationRequest(tee="sample", evidence="RVY", runtime_data={"k": "v"},
                                                  runtime_data_hash_algorithm="sha384"),),
                             ("default",))
    individual = (_ld(1, b"sample") + _ld(3, b"RVY") + _ld(5, b'{"k":"v"}') + _ld(8, b"sha384"))
    assert as_grpc.encode_request(req) == _ld(1, individual) + _ld(2, b"default")


def test_grpc_flat_layout_bytes():
    req = AttestationRequest((VerificationRequest(tee="sample", evidence="RVY", raw_runtime_data="AAEC",
                                                  init_data={"structured": {"i": 1}},
                                                  runtime_data_hash_algorithm="sha256"),),
                             ("a", "b"), "flat")
    assert as_grpc.encode_request(req) == (
        _ld(1, b"sample") + _ld(2, b"RVY") + _ld(3, b"AAEC") + _ld(6, b'{"i":1}') + _ld(7, b"sha256")
        + _ld(9, b"a") + _ld(9, b"b"))


def test_grpc_round_trips_and_layout_detection():
    req = sample_request(policy_ids=["p1", "p2"], additional_evidence=b'{"nvgpu": "zz"}')
    assert as_grpc.decode_request(as_grpc.encode_request(req)) == req
    flat = AttestationRequest(req.requests[:1], req.policy_ids, "flat")
    assert as_grpc.decode_request(as_grpc.encode_request(flat)) == flat
    for tee in ("sample", "tdx", "snp", "az-snp-vtpm", "cca", "se", "csv", "hygon-dcu"):
        vr = VerificationRequest(tee=tee, evidence="e", runtime_data=RUNTIME)
        for layout in ("current", "flat"):
            r = AttestationRequest((vr,), ("default",), layout)
            assert as_grpc.decode_request(as_grpc.encode_request(r)) == r, (tee, layout)
    raw = AttestationRequest((VerificationRequest(tee="sample", evidence="e", raw_runtime_data="AA==",
                                                  init_data={"raw": "BB"}),), ())
    assert as_grpc.decode_request(as_grpc.encode_request(raw)) == raw


def test_grpc_decode_errors():
    with pytest.raises(ProtobufError):
        as_grpc.decode_request(b"\x0a\x05abc")  # truncated
    with pytest.raises(ValueError, match="missing field `tee`"):
        as_grpc.decode_request(_ld(2, b"RVY"))
    with pytest.raises(ValueError, match="structured_runtime_data is not JSON"):
        as_grpc.decode_request(_ld(1, _ld(1, b"sample") + _ld(3, b"e") + _ld(5, b"{nope")))


def test_wire_fields():
    req = sample_request()
    assert as_grpc.wire_fields(as_grpc.encode_request(req)) == {"top": [1, 2], "field1": [[1, 3, 5, 8]]}
    flat = AttestationRequest(req.requests, req.policy_ids, "flat")
    assert as_grpc.wire_fields(as_grpc.encode_request(flat))["top"] == [1, 2, 4, 7, 9]
    assert "undecodable" in as_grpc.wire_fields(b"\x0a\x05ab")


def test_grpc_response():
    assert as_grpc.encode_response(TOKEN) == bytes([0x0a, len(TOKEN)]) + TOKEN.encode()
    assert as_grpc.decode_response(as_grpc.encode_response(TOKEN)) == TOKEN
    with pytest.raises(ValueError):
        as_grpc.decode_response(b"")
    with pytest.raises(ValueError):
        as_grpc.decode_response(as_grpc.encode_response("<html>"))


def test_grpc_call_error_wording():
    assert as_grpc.GrpcCallError("UNAVAILABLE", "failed to connect").describe(10) == \
        "unreachable: failed to connect"
    assert as_grpc.GrpcCallError("DEADLINE_EXCEEDED", "x").describe(2.5) == "timed out after 2.5s"
    assert as_grpc.GrpcCallError("INVALID_ARGUMENT", "bad\nthing").describe(1) == "gRPC INVALID_ARGUMENT: bad thing"
    assert as_grpc.GrpcCallError("INTERNAL", "failed to decode Protobuf message: x").looks_like_old_layout()
    assert not as_grpc.GrpcCallError("INVALID_ARGUMENT", "tee 'x' is not supported").looks_like_old_layout()


# --------------------------------------------------------------------------
# small helpers

def test_parse_token_text():
    assert parse_token_text(TOKEN.encode() + b"\n") == TOKEN
    assert parse_token_text(json.dumps(TOKEN).encode()) == TOKEN
    for bad in (b"", b"<html>error</html>", b'{"token": 1}', b"a.b", b"\xff\xfe", b'"a b"'):
        with pytest.raises(ValueError):
            parse_token_text(bad)


@pytest.mark.parametrize("addr, target", [
    ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
    ("http://127.0.0.1:5000", "127.0.0.1:5000"),
    ("https://as.example:8443/api/", "as.example:8443"),
    ("http://as.example/", "as.example:80"),
    ("https://as.example", "as.example:443"),
    ("http://[::1]:50004/", "[::1]:50004"),
    ("10.0.0.1:50004", "10.0.0.1:50004"),
])
def test_grpc_target(addr, target):
    assert grpc_target(addr) == target


# --------------------------------------------------------------------------
# client logic, network stubbed out

class Stub:
    """Replaces AttestationServiceClient._http: scripted answers, recorded requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, method, path, body):
        self.calls.append((method, path, json.loads(body) if body else None))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_with(monkeypatch, *answers, addr="http://127.0.0.1:5000/"):
    client = AttestationServiceClient(addr)
    stub = Stub(*answers)
    monkeypatch.setattr(client, "_http", stub)
    return client, stub


def attest(client):
    return client.attest(tee="sample", evidence=EVIDENCE, runtime_data=RUNTIME, policy_ids=["default"])


def test_client_posts_current_body(monkeypatch):
    client, stub = client_with(monkeypatch, (200, TOKEN.encode()))
    assert attest(client) == TOKEN
    assert stub.calls == [("POST", "/attestation", rest_body(sample_request()))]


def test_client_path_prefix(monkeypatch):
    client, stub = client_with(monkeypatch, (200, TOKEN.encode()), addr="http://as.example:8080/api/")
    attest(client)
    assert stub.calls[0][1] == "/api/attestation"


def test_client_retries_flat_on_missing_tee(monkeypatch):
    client, stub = client_with(monkeypatch,
                               (400, b"Json deserialize error: missing field `tee` at line 1 column 300"),
                               (200, TOKEN.encode()))
    assert attest(client) == TOKEN
    assert [c[2] for c in stub.calls] == [rest_body(sample_request()), rest_flat_body(sample_request())]


def test_client_retries_only_once(monkeypatch):
    client, stub = client_with(monkeypatch, (400, b"missing field `tee`"), (400, b"missing field `tee` again"))
    with pytest.raises(AttestationServiceError,
                       match=r"^attestation service http://127.0.0.1:5000/: HTTP 400: missing field `tee` again$"):
        attest(client)
    assert len(stub.calls) == 2


def test_client_http_error_is_one_line_and_bounded(monkeypatch):
    client, _ = client_with(monkeypatch, (500, b"policy engine\nexploded: " + b"x" * 500))
    with pytest.raises(AttestationServiceError) as info:
        attest(client)
    msg = str(info.value)
    assert msg.startswith("attestation service http://127.0.0.1:5000/: HTTP 500: policy engine exploded: xx")
    assert "\n" not in msg and len(msg) < 300


def test_client_not_a_token(monkeypatch):
    client, _ = client_with(monkeypatch, (200, b"<html>hello</html>"))
    with pytest.raises(AttestationServiceError, match="answered something that is not a token$"):
        attest(client)


def test_client_transport_errors_pass_through(monkeypatch):
    client, _ = client_with(monkeypatch, AttestationServiceError("attestation service x: timed out after 10s"))
    with pytest.raises(AttestationServiceError, match="timed out after 10s"):
        attest(client)


def test_certificate_chain(monkeypatch):
    from pathlib import Path

    pem = (Path(__file__).resolve().parent.parent / "data" / "attestation" / "trustee_ear_tdx.as-ca.pem").read_bytes()
    client, stub = client_with(monkeypatch, (200, pem + pem), (200, b"nope"), (404, b"not found"))
    assert len(client.certificate_chain()) == 2
    assert stub.calls[0][:2] == ("GET", "/certificate")
    with pytest.raises(AttestationServiceError, match="not a PEM certificate chain"):
        client.certificate_chain()
    with pytest.raises(AttestationServiceError, match="HTTP 404: not found"):
        client.certificate_chain()


def test_grpc_client_has_no_certificate_endpoint():
    with pytest.raises(AttestationServiceError, match="trusted_certs_paths"):
        AttestationServiceClient("http://127.0.0.1:5000/", grpc=True).certificate_chain()


def test_client_rejects_bad_addresses():
    for bad in ("ftp://x/", "http:///nohost"):
        with pytest.raises(ValueError):
            AttestationServiceClient(bad)


def test_grpc_client_falls_back_to_flat_layout_once(monkeypatch):
    layouts = []

    def fake_evaluate(channel, req, *, timeout):
        layouts.append(req.layout)
        if req.layout == "current":
            raise as_grpc.GrpcCallError("INTERNAL", "failed to decode Protobuf message: invalid wire type")
        return TOKEN

    client = AttestationServiceClient("http://127.0.0.1:5000/", grpc=True)
    monkeypatch.setattr(client, "_channel", lambda: None)
    monkeypatch.setattr(as_grpc, "evaluate", fake_evaluate)
    assert attest(client) == TOKEN
    assert layouts == ["current", "flat"]


def test_grpc_client_does_not_retry_other_errors(monkeypatch):
    calls = []

    def fake_evaluate(channel, req, *, timeout):
        calls.append(req.layout)
        raise as_grpc.GrpcCallError("INVALID_ARGUMENT", "sample evidence report_data does not match")

    client = AttestationServiceClient("http://127.0.0.1:5000/", grpc=True)
    monkeypatch.setattr(client, "_channel", lambda: None)
    monkeypatch.setattr(as_grpc, "evaluate", fake_evaluate)
    with pytest.raises(AttestationServiceError,
                       match=r"^attestation service http://127.0.0.1:5000/: gRPC INVALID_ARGUMENT: sample"):
        attest(client)
    assert calls == ["current"]
