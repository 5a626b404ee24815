import pytest
from hypothesis import given, strategies as st

from tng_nfq.attestation import protobuf as pb
from tng_nfq.attestation.dev_aa import handle, sample_evidence
from tng_nfq.attestation.ttrpc import (
    CODE_INVALID_ARGUMENT, CODE_UNIMPLEMENTED, HEADER_LEN, MAX_DATA_LENGTH, TYPE_REQUEST,
    TYPE_RESPONSE, ClientConnection, Frame, FrameDecoder, Request, Response,
    ServerConnection, TtrpcError, encode_frame,
)

SERVICE = "attestation_agent.AttestationAgentService"
FIFTY_SECONDS = 50_000_000_000

# Frames upstream tng 2.12 sent to our AA for one fresh certificate, captured
# on the unix socket (GetEvidence, GetTeeType, GetAdditionalEvidence, one
# connection; stream ids 1, 3, 5).
UPSTREAM_GET_EVIDENCE = bytes.fromhex(
    "000000730000000101000a296174746573746174696f6e5f6167656e742e4174746573746174696f6e"
    "4167656e7453657276696365120b47657445766964656e63651a320a309aebac28087febb3dac46193"
    "6f5a6b30a058c51ed0e70b4c5c86a3071daf149850c906c35555ff01dfc5e8b438f659da2080e8eda1ba01")
UPSTREAM_GET_TEE_TYPE = bytes.fromhex(
    "0000003e000000030100"  # header, written separately by upstream
    "0a296174746573746174696f6e5f6167656e742e4174746573746174696f6e4167656e745365727669"
    "6365120a476574546565547970652080e8eda1ba01")
UPSTREAM_GET_ADDITIONAL = bytes.fromhex(
    "000000490000000501000a296174746573746174696f6e5f6167656e742e4174746573746174696f6e"
    "4167656e745365727669636512154765744164646974696f6e616c45766964656e63652080e8eda1ba01")


def test_decode_upstream_requests():
    server = ServerConnection()
    got = []
    # feed in awkward pieces: the decoder must reassemble
    stream = UPSTREAM_GET_EVIDENCE + UPSTREAM_GET_TEE_TYPE + UPSTREAM_GET_ADDITIONAL
    for i in range(0, len(stream), 7):
        got += list(server.receive_data(stream[i:i + 7]))
    assert [sid for sid, _ in got] == [1, 3, 5]
    ev, tee, add = (r for _, r in got)
    assert (ev.service, ev.method, ev.timeout_nano) == (SERVICE, "GetEvidence", FIFTY_SECONDS)
    runtime_hash = pb.get_bytes(pb.decode_message(ev.payload), 1)
    assert len(runtime_hash) == 48  # SHA-384 of the runtime data
    assert (tee.method, tee.payload) == ("GetTeeType", b"")
    assert (add.method, add.payload) == ("GetAdditionalEvidence", b"")  # empty runtime data
    assert server.pending == 0


def test_our_client_encodes_like_upstream():
    client = ClientConnection()
    runtime_hash = pb.get_bytes(pb.decode_message(
        Request.decode(UPSTREAM_GET_EVIDENCE[HEADER_LEN:]).payload), 1)
    reqs = [
        Request(SERVICE, "GetEvidence", pb.encode_message([(1, runtime_hash)]), FIFTY_SECONDS),
        Request(SERVICE, "GetTeeType", b"", FIFTY_SECONDS),
        Request(SERVICE, "GetAdditionalEvidence", b"", FIFTY_SECONDS),
    ]
    out = [client.send_request(r) for r in reqs]
    assert [sid for sid, _ in out] == [1, 3, 5]
    assert [data for _, data in out] == [UPSTREAM_GET_EVIDENCE, UPSTREAM_GET_TEE_TYPE,
                                         UPSTREAM_GET_ADDITIONAL]


def test_dev_aa_answers_upstream_requests():
    server = ServerConnection()
    replies = {}
    for data in (UPSTREAM_GET_EVIDENCE, UPSTREAM_GET_TEE_TYPE, UPSTREAM_GET_ADDITIONAL):
        for sid, req in server.receive_data(data):
            replies[sid] = handle(req)
    assert all(r.ok for r in replies.values())
    runtime_hash = pb.get_bytes(pb.decode_message(
        Request.decode(UPSTREAM_GET_EVIDENCE[HEADER_LEN:]).payload), 1)
    assert pb.get_bytes(pb.decode_message(replies[1].payload), 1) == sample_evidence(runtime_hash)
    assert pb.get_string(pb.decode_message(replies[3].payload), 1) == "sample"
    assert pb.get_bytes(pb.decode_message(replies[5].payload), 1) == b""


def test_sample_evidence_layout():
    assert sample_evidence(b"\x01\x02") == (
        b'{"svn":"1","report_data":"AQI=","measure_register":"' + b"0" * 64
        + b'","cc_eventlog":null}')


def test_dev_aa_refusals():
    assert handle(Request(SERVICE, "Nope")).code == CODE_UNIMPLEMENTED
    assert handle(Request("other.Service", "GetEvidence")).code == CODE_UNIMPLEMENTED
    too_long = pb.encode_message([(1, b"x" * 65)])
    assert handle(Request(SERVICE, "GetEvidence", too_long)).code == CODE_INVALID_ARGUMENT
    assert handle(Request(SERVICE, "GetEvidence", b"\x0b")).code == CODE_INVALID_ARGUMENT


def test_request_response_round_trip():
    req = Request("svc", "M", b"\x00\x01", 123, (("a", "1"), ("b", "2")))
    assert Request.decode(req.encode()) == req
    for resp in (Response(b"p"), Response(b"", 3, "bad"), Response()):
        assert Response.decode(resp.encode()) == resp


def test_response_without_status_is_ok():
    resp = Response.decode(pb.encode_message([(2, b"x")]))
    assert resp.ok and resp.payload == b"x"
    err = Response.decode(pb.encode_message([(1, pb.encode_message([(1, 5), (2, "nf")]))]))
    assert (err.ok, err.code, err.message) == (False, 5, "nf")


def test_client_matches_responses():
    client = ClientConnection()
    sid, _ = client.send_request(Request("s", "m"))
    server = ServerConnection()
    data = server.respond(sid, Response(b"ok"))
    got = client.receive_data(data[:4]) + client.receive_data(data[4:])
    assert got == [(1, Response(b"ok"))]
    with pytest.raises(TtrpcError, match="unknown stream"):
        client.receive_data(server.respond(7, Response()))


def test_client_rejects_request_frames():
    client = ClientConnection()
    client.send_request(Request("s", "m"))
    with pytest.raises(TtrpcError, match="unexpected frame type"):
        client.receive_data(encode_frame(1, TYPE_REQUEST, b""))


def test_even_stream_id_refused():
    server = ServerConnection()
    [(sid, item)] = list(server.receive_data(encode_frame(2, TYPE_REQUEST, Request("s", "m").encode())))
    assert sid == 2 and isinstance(item, Response) and item.code == CODE_INVALID_ARGUMENT


def test_garbled_request_gets_error_response():
    server = ServerConnection()
    [(sid, item)] = list(server.receive_data(encode_frame(1, TYPE_REQUEST, b"\xff")))
    assert isinstance(item, Response) and item.code == CODE_INVALID_ARGUMENT


def test_oversize_refused_from_the_header_alone():
    dec = FrameDecoder()
    header = (MAX_DATA_LENGTH + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([1, 0])
    with pytest.raises(TtrpcError, match="over the limit"):
        dec.feed(header)
    with pytest.raises(TtrpcError):
        dec.feed(b"more")
    huge = (0xFFFFFFFF).to_bytes(4, "big") + bytes(6)
    with pytest.raises(TtrpcError):
        FrameDecoder().feed(huge)


def test_max_size_frame_accepted():
    payload = bytes(MAX_DATA_LENGTH)
    [frame] = FrameDecoder().feed(encode_frame(1, TYPE_RESPONSE, payload))
    assert frame == Frame(1, TYPE_RESPONSE, 0, payload)
    with pytest.raises(TtrpcError):
        encode_frame(1, TYPE_RESPONSE, payload + b"x")


def test_truncated_frame_is_pending():
    dec = FrameDecoder()
    data = encode_frame(3, TYPE_RESPONSE, b"abcdef")
    assert dec.feed(data[:-1]) == []
    assert dec.pending == len(data) - 1
    assert dec.feed(data[-1:]) == [Frame(3, TYPE_RESPONSE, 0, b"abcdef")]


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255),
                          st.binary(max_size=300)), max_size=8),
       st.integers(1, 50))
def test_frames_survive_any_chunking(frames, chunk):
    stream = b"".join(encode_frame(sid, t, p, f) for sid, t, f, p in frames)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(stream), chunk):
        got += dec.feed(stream[i:i + chunk])
    assert got == [Frame(sid, t, f, p) for sid, t, f, p in frames]
    assert dec.pending == 0
