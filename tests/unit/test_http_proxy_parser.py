"""The sans-io request-head parser and body framing of the http_proxy ingress,
fed with bytes only (valid, malformed, split at every position, fuzzed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tng_nfq.http.parser import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    ChunkedBody,
    HeadParser,
    LengthBody,
    ParseError,
    error_response,
)


def parse(data: bytes):
    parser = HeadParser()
    head = parser.feed(data)
    return head, parser


def status_of(data: bytes) -> int:
    with pytest.raises(ParseError) as info:
        parser = HeadParser()
        if parser.feed(data) is None:
            pytest.fail("incomplete, no error")
    return info.value.status


GET = (b"GET http://Example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: wrong.example\r\n"
       b"Proxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\n")


def test_absolute_uri_request_is_parsed_and_rewritten_to_origin_form():
    head, parser = parse(GET + b"NEXT")
    assert (head.method, head.host, head.port, head.path) == ("GET", "Example.com", 8080, "/a/b?q=1")
    assert parser.rest == b"NEXT"
    assert head.raw_size == len(GET)
    out = head.rewritten()
    assert out.startswith(b"GET /a/b?q=1 HTTP/1.1\r\nHost: Example.com:8080\r\n")
    assert b"Proxy-Connection" not in out and b"wrong.example" not in out
    assert b"User-Agent: t\r\n" in out and out.endswith(b"\r\n\r\n")


def test_default_port_path_and_via_marker():
    head, _ = parse(b"POST http://h HTTP/1.0\r\n\r\n")
    assert (head.host, head.port, head.path) == ("h", 80, "/")
    assert head.wants_close  # HTTP/1.0 without keep-alive
    out = head.rewritten(via="tng-nfq-x")
    assert out == b"POST / HTTP/1.0\r\nHost: h\r\nVia: 1.0 tng-nfq-x\r\n\r\n"


def test_connect_authority_form_and_ipv6():
    head, parser = parse(b"CONNECT 127.0.0.1:9991 HTTP/1.1\r\nHost: 127.0.0.1:9991\r\n\r\nearly")
    assert head.is_connect and (head.host, head.port) == ("127.0.0.1", 9991)
    assert parser.rest == b"early"
    head, _ = parse(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n")
    assert (head.host, head.port) == ("::1", 443)
    head, _ = parse(b"GET http://[fe80::1]:81/x HTTP/1.1\r\n\r\n")
    assert (head.host, head.port) == ("fe80::1", 81)
    assert b"Host: [fe80::1]:81" in head.rewritten()


def test_bare_lf_line_ends_and_leading_empty_lines():
    head, parser = parse(b"\r\n\nGET http://h/ HTTP/1.1\nA: b\n\nrest")
    assert head.values("a") == ["b"] and parser.rest == b"rest"


def test_byte_by_byte_equals_at_once():
    whole, _ = parse(GET)
    parser = HeadParser()
    for i in range(len(GET)):
        got = parser.feed(GET[i:i + 1])
        assert (got is None) == (i < len(GET) - 1)
    assert got == whole


def test_connection_semantics():
    assert parse(b"GET http://h/ HTTP/1.1\r\nConnection: close\r\n\r\n")[0].wants_close
    assert not parse(b"GET http://h/ HTTP/1.1\r\n\r\n")[0].wants_close
    assert not parse(b"GET http://h/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")[0].wants_close


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET  http://h/ HTTP/1.1\r\n\r\n", 400),
    (b"G(T http://h/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTX/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/2.0\r\n\r\n", 505),
    (b"GET /local HTTP/1.1\r\nHost: proxy\r\n\r\n", 400),  # origin-form: addressed to the proxy itself
    (b"GET https://h/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://u:p@h/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h:0/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h:70000/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h:x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http:/// HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT h HTTP/1.1\r\n\r\n", 400),  # no port
    (b"CONNECT h:22:1 HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nNo colon\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nName : v\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),
    (b"GET http://h/\x01 HTTP/1.1\r\n\r\n", 400),
])
def test_malformed_heads(data, status):
    assert status_of(data) == status


def test_request_line_limit_is_414_even_before_the_line_ends():
    parser = HeadParser()
    assert parser.feed(b"GET http://h/" + b"a" * (MAX_REQUEST_LINE - 30)) is None
    with pytest.raises(ParseError) as info:
        parser.feed(b"a" * 100)
    assert info.value.status == 414
    ok = b"GET http://h/" + b"a" * (MAX_REQUEST_LINE - len(b"GET http://h/ HTTP/1.1")) + b" HTTP/1.1"
    assert len(ok) == MAX_REQUEST_LINE
    assert parse(ok + b"\r\n\r\n")[0] is not None
    assert status_of(ok[:-9] + b"b HTTP/1.1\r\n\r\n") == 414


def test_header_limits_are_431():
    parser = HeadParser()
    parser.feed(b"GET http://h/ HTTP/1.1\r\n")
    with pytest.raises(ParseError) as info:
        for _ in range(MAX_HEADER_BYTES // 1000 + 2):
            parser.feed(b"X-Big: " + b"v" * 1000 + b"\r\n")
    assert info.value.status == 431
    many = b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert status_of(b"GET http://h/ HTTP/1.1\r\n" + many + b"\r\n") == 431


@pytest.mark.parametrize("headers, status", [
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
    (b"Transfer-Encoding: gzip\r\n", 400),
    (b"Content-Length: 5, 6\r\n", 400),
    (b"Content-Length: -1\r\n", 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
])
def test_ambiguous_body_framing_is_400(headers, status):
    head, _ = parse(b"POST http://h/ HTTP/1.1\r\n" + headers + b"\r\n")
    with pytest.raises(ParseError) as info:
        head.body()
    assert info.value.status == status


def test_body_framing_choice():
    assert isinstance(parse(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")[0].body(),
                      ChunkedBody)
    body = parse(b"POST http://h/ HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")[0].body()
    assert isinstance(body, LengthBody) and body.remaining == 5
    assert parse(b"GET http://h/ HTTP/1.1\r\n\r\n")[0].body().done


def test_length_body():
    body = LengthBody(5)
    assert body.feed(b"abc") == 3 and not body.done
    assert body.feed(b"defgh") == 2 and body.done


CHUNKED = b"5;ext=1\r\nhello\r\n0A\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_body_finds_its_end_at_once_and_byte_by_byte():
    body = ChunkedBody()
    assert body.feed(CHUNKED + b"NEXT") == len(CHUNKED) and body.done
    body = ChunkedBody()
    consumed = 0
    for i in range(len(CHUNKED)):
        consumed += body.feed(CHUNKED[i:i + 1])
        assert body.done == (i == len(CHUNKED) - 1)
    assert consumed == len(CHUNKED)


@pytest.mark.parametrize("data", [b"zz\r\n", b"5\r\nhelloXX\r\n", b"\r\n", b"1" * 5000])
def test_chunked_body_errors(data):
    with pytest.raises(ParseError) as info:
        ChunkedBody().feed(data)
    assert info.value.status == 400


def test_error_response_is_complete_http():
    out = error_response(508, "loop")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 508 Loop Detected\r\n") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head and b"loop" in body


# ---- fuzzing: the parser never fails other than with ParseError --------------

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_fuzz_arbitrary_bytes_split_anywhere(data, cuts):
    parser = HeadParser()
    pos = 0
    try:
        for cut in cuts + [len(data)]:
            head = parser.feed(data[pos:pos + cut])
            pos += cut
            if head is not None:
                assert head.raw_size <= len(data)
                assert 0 < head.port < 65536
                head.rewritten() if not head.is_connect else None
                head.body()
                break
    except ParseError as exc:
        assert exc.status in (400, 414, 431, 505)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC-", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       host=st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z"),
       port=st.integers(min_value=1, max_value=65535),
       path=st.from_regex(r"\A(/[A-Za-z0-9._~%-]{0,10}){1,4}(\?[a-z=&0-9]{0,10})?\Z"),
       headers=st.lists(st.tuples(_token, st.text(alphabet="abc xyz/;=0123", max_size=20)), max_size=8),
       split=st.integers(min_value=1, max_value=200))
def test_fuzz_valid_requests_roundtrip(method, host, port, path, headers, split):
    lines = [f"{method} http://{host}:{port}{path} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    parser = HeadParser()
    head = parser.feed(raw[:split]) or parser.feed(raw[split:])
    assert head is not None and parser.rest == b""
    assert (head.method, head.host, head.port, head.path) == (method, host, port, path)
    assert head.headers == [(n, v.strip(" \t")) for n, v in headers]
    # the rewritten head is origin-form: sent back to a proxy it is refused, never proxied
    with pytest.raises(ParseError, match="not a proxy request"):
        HeadParser().feed(head.rewritten())
