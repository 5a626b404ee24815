"""tng_nfq.http.h1: HTTP/1.1 messages taken apart and put back together, fed
with bytes in arbitrary slices."""

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.h1 import (
    LAST_CHUNK,
    BodyDecoder,
    OriginHeadParser,
    ResponseHeadParser,
    chunk,
    end_to_end,
    request_head,
    response_head,
)
from tng_nfq.http.parser import ParseError


def feed_in_slices(parser, data: bytes, cuts: list[int]):
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    prev, got = 0, None
    for p in points:
        got = parser.feed(data[prev:p])
        prev = p
        if got is not None:
            return got, data[prev:]
    return got, b""


REQ = (b"POST /api/predict/m1?x=1 HTTP/1.1\r\nHost: svc.example:8080\r\nContent-Type: text/plain\r\n"
       b"Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n"
       b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET / HTTP/1.1\r\n")


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_origin_request_head_and_chunked_body_in_any_slices(cuts):
    p = OriginHeadParser()
    head, unfed = feed_in_slices(p, REQ, cuts)
    assert head is not None
    assert (head.method, head.path, head.authority) == ("POST", "/api/predict/m1?x=1", "svc.example:8080")
    assert [n for n, _ in end_to_end(head.headers)] == ["Host", "Content-Type"]
    body = head.body()
    rest = p.rest + unfed
    pieces = []
    for i in range(0, len(rest), 3):
        pieces += body.feed(rest[i:i + 3])
    assert b"".join(pieces) == b"hello world"
    assert body.done and body.trailers == [("X-Trailer", "t")]
    assert body.rest == b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("raw, status", [
    (b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 70000, 431),
    (b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
def test_bad_request_heads(raw, status):
    with pytest.raises(ParseError) as e:
        OriginHeadParser().feed(raw)
    assert e.value.status == status


def test_absolute_form_takes_authority_from_the_uri():
    head = OriginHeadParser().feed(b"GET http://Origin:81/p HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (head.authority, head.path) == ("Origin:81", "/p")


def test_request_bodies_both_framings_refused():
    head = OriginHeadParser().feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ParseError):
        head.body()


@pytest.mark.parametrize("raw, method, body_kind, length", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", "length", 5),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", "length", 0),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", "length", 0),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET", "length", 0),
    (b"HTTP/1.0 200 OK\r\n\r\n", "GET", "close", 0),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", "chunked", 0),
    (b"HTTP/1.1 200\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", "close", 0),
])
def test_response_body_framing(raw, method, body_kind, length):
    resp = ResponseHeadParser().feed(raw)
    body = resp.body(method)
    assert body.kind == body_kind and body.remaining == length


def test_response_head_and_until_close_body():
    p = ResponseHeadParser()
    resp = p.feed(b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nabc")
    assert (resp.status, resp.reason, resp.wants_close) == (404, "Not Found", True)
    body = resp.body("GET")
    assert body.feed(p.rest) == [b"abc"] and not body.done
    body.eof()
    assert body.done


@pytest.mark.parametrize("raw", [b"HTTP/1.1 2000 OK\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"])
def test_malformed_responses_are_502(raw):
    with pytest.raises(ParseError) as e:
        ResponseHeadParser().feed(raw)
    assert e.value.status == 502


def test_truncated_length_body_is_an_error_at_eof():
    body = BodyDecoder.length(10)
    assert body.feed(b"12345") == [b"12345"]
    with pytest.raises(ParseError):
        body.eof()


@pytest.mark.parametrize("raw", [b"zz\r\n", b"3\r\nabcd\r\n", b"5" * 5000])
def test_malformed_chunked(raw):
    with pytest.raises(ParseError):
        BodyDecoder.chunked().feed(raw)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=50))
def test_chunk_round_trip(pieces, step):
    wire = b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    body = BodyDecoder.chunked()
    out = []
    for i in range(0, len(wire), step):
        out += body.feed(wire[i:i + step])
    assert body.done and b"".join(out) == b"".join(pieces)


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_parse_error(data):
    for parser in (OriginHeadParser(), ResponseHeadParser()):
        try:
            parser.feed(data)
        except ParseError:
            pass
    try:
        BodyDecoder.chunked().feed(data)
    except ParseError:
        pass


def test_serialisation():
    assert request_head("POST", "/x", [("Host", "a")]) == b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n"
    assert response_head(200, "OK", []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert chunk(b"") == b"" and chunk(b"ab") == b"2\r\nab\r\n"
