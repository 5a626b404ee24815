"""The sans-io web_page_inject injector: which responses get the attestation
bar, where it goes, content codings, piecewise bodies split everywhere, the
buffering cap, header fix-up, escaping of hostile values, fuzzing."""

from __future__ import annotations

import gzip
import html.parser
import zlib
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tng_nfq.http.page_inject import (
    MAX_INJECT_BODY,
    AttestationBanner,
    Decision,
    Head,
    InjectError,
    ResponseInjector,
    find_insertion_point,
    inject_html,
    inject_response,
    restrict_accept_encoding,
)

BANNER = AttestationBanner(
    attested=True, tee_type="tdx", policy_ids=("default", "prod-policy"),
    as_address="http://198.18.0.2:8080/",
    verified_at=datetime(2026, 11, 27, 7, 0, 0, tzinfo=timezone.utc),
)
BAR = BANNER.html_bytes()
HTML = [(b"Content-Type", b"text/html; charset=utf-8")]
PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body class='x'><p>hello</p></body></html>"


def run(pieces, headers=HTML, status=200, method="GET", banner=BANNER, **kw) -> tuple[Head, bytes]:
    return inject_response(banner, method, status, headers, pieces, **kw)


def header(head: Head, name: bytes) -> list[bytes]:
    return [v for n, v in head.headers if n.lower() == name]


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


# ---- which responses ----------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    b"text/html", b"text/html; charset=utf-8", b"TEXT/HTML", b"Text/Html;charset=\"ISO-8859-1\"",
    b"  text/html  ; charset=windows-1252", b"text/html; charset=unknown-label",
])
def test_html_content_types_are_injected(content_type):
    head, body = run([PAGE], headers=[(b"Content-Type", content_type)])
    assert head.injected and BAR in body


@pytest.mark.parametrize("content_type", [
    b"text/plain", b"application/json", b"application/xhtml+xml", b"text/htmlx", b"text/css",
    b"image/png", b"", b"text/html; charset=utf-16", b"text/html; charset=UTF-32LE",
])
def test_other_content_types_pass_byte_for_byte(content_type):
    headers = [(b"Content-Type", content_type), (b"Content-Length", str(len(PAGE)).encode())]
    injector = ResponseInjector(BANNER)
    assert injector.start(200, headers) is Decision.PASS
    assert injector.reason
    outs = [injector.feed(PAGE[:10]), injector.feed(PAGE[10:]), injector.finish()]
    assert all(o.head is None for o in outs)
    assert b"".join(o.body for o in outs) == PAGE


@pytest.mark.parametrize("status,method", [
    (204, "GET"), (304, "GET"), (206, "GET"), (205, "GET"), (404, "GET"), (500, "GET"),
    (301, "GET"), (101, "GET"), (200, "HEAD"), (200, b"head"),
])
def test_statuses_and_head_requests_pass(status, method):
    injector = ResponseInjector(BANNER, method)
    assert injector.start(status, HTML) is Decision.PASS


@pytest.mark.parametrize("status", [200, 201, 203])
def test_2xx_with_body_injected(status):
    head, body = run([PAGE], status=status)
    assert head.injected and head.status == status


@pytest.mark.parametrize("headers,reason", [
    ([], "no Content-Type"),
    ([(b"Content-Type", b"text/html"), (b"Content-Type", b"text/html")], "several"),
    (HTML + [(b"Content-Disposition", b"attachment; filename=a.html")], "attachment"),
    (HTML + [(b"Cache-Control", b"public, No-Transform")], "no-transform"),
    (HTML + [(b"Content-Encoding", b"br")], "br"),
    (HTML + [(b"Content-Encoding", b"zstd")], "zstd"),
    (HTML + [(b"Content-Encoding", b"gzip, gzip")], "several codings"),
    (HTML + [(b"Content-Encoding", b"gzip"), (b"Content-Encoding", b"br")], "several codings"),
])
def test_pass_reasons(headers, reason):
    injector = ResponseInjector(BANNER)
    assert injector.start(200, headers) is Decision.PASS
    assert reason in injector.reason


def test_no_transform_can_be_ignored():
    head, body = run([PAGE], headers=HTML + [(b"Cache-Control", b"no-transform")], honor_no_transform=False)
    assert head.injected


# ---- where the bar goes ---------------------------------------------------------

@pytest.mark.parametrize("doc,before", [
    (b"<html><head></head><body><p>x</p></body></html>", b"<html><head></head><body>"),
    (b"<HTML><HEAD></HEAD><BODY BGCOLOR=white><P>x", b"<HTML><HEAD></HEAD><BODY BGCOLOR=white>"),
    (b"<body\n  class=\"a > b\" data-x='>'>x", b"<body\n  class=\"a > b\" data-x='>'>"),
    (b"<body/>x", b"<body/>"),
    (b"<!-- <body> --><body>x", b"<!-- <body> --><body>"),
    (b"<!--><body>x", b"<!--><body>"),
    (b"<head><script>var s='<body>';</script></head><body>x",
     b"<head><script>var s='<body>';</script></head><body>"),
    (b"<head><SCRIPT>a='</scriptx><body>'</Script ></head><body>x",
     b"<head><SCRIPT>a='</scriptx><body>'</Script ></head><body>"),
    (b"<title><body></title><style>b{x:'<body>'}</style><body>x",
     b"<title><body></title><style>b{x:'<body>'}</style><body>"),
    (b"<html><head><title>t</title></head><p>no body tag", b"<html><head><title>t</title></head>"),
    (b"<html lang=en><p>no head, no body", b"<html lang=en>"),
    (b"<!DOCTYPE html><p>just a fragment", b"<!DOCTYPE html>"),
    (b"just text", b""),
    (b"", b""),
    (b"<html><bodyx><body>x", b"<html>"),
    (b"<html><head><meta " + b"a " * 30_000 + b"><body>x", b"<html>"),  # attribute bound
    (b"<html><head></head><div>implied body</div><body>x", b"<html><head></head>"),
    (b"<html><p>implied body<body>x", b"<html>"),
    (b"<html><head>" + b"<meta name=a>" * 20_000 + b"<body>x", b"<html>"),  # MAX_SCAN_TAGS
    (b"a < b <body>x", b"a < b <body>"),
    (b"</ 3><body>x", b"</ 3><body>"),
    (b"\xef\xbb\xbfplain", b"\xef\xbb\xbf"),
])
def test_insertion_point(doc, before):
    assert find_insertion_point(doc) == len(before)
    assert inject_html(doc, b"[BAR]") == before + b"[BAR]" + doc[len(before):]


def test_frameset_and_utf16_documents_are_left_alone():
    assert find_insertion_point(b"<html><head></head><frameset cols=50%></frameset>") is None
    head, body = run([b"<html><head></head><frameset></frameset></html>"])
    assert not head.injected and body == b"<html><head></head><frameset></frameset></html>"
    doc = "\ufeff<html><body>x</body></html>".encode("utf-16")
    head, body = run([doc])
    assert not head.injected and body == doc


def test_unterminated_constructs_fall_back():
    assert find_insertion_point(b"<html><body class='x") == len(b"<html>")
    assert find_insertion_point(b"<html><!-- <body>") == len(b"<html>")
    assert find_insertion_point(b"<html><script><body>") == len(b"<html>")


# ---- codings, headers -------------------------------------------------------------

CODINGS = {
    b"gzip": gzip.compress,
    b"x-gzip": gzip.compress,
    b"deflate": zlib.compress,  # zlib-wrapped, what RFC 9110 means
    b"DEFLATE": raw_deflate,  # raw, what some servers send
    b"identity": lambda d: d,
}


@pytest.mark.parametrize("coding", list(CODINGS))
def test_codings_are_decoded_and_response_sent_uncompressed(coding):
    wire = CODINGS[coding](PAGE)
    headers = [(b"content-type", b"text/html"), (b"Content-Encoding", coding),
               (b"Content-Length", str(len(wire)).encode()), (b"Transfer-Encoding", b"chunked"),
               (b"ETag", b'"abc"'), (b"Accept-Ranges", b"bytes"), (b"Vary", b"Accept-Encoding"),
               (b"Content-MD5", b"xx"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    head, body = run([wire], headers=headers)
    assert head.injected
    assert body == inject_html(PAGE, BAR)
    assert head.content_length == len(body)
    assert header(head, b"content-length") == [str(len(body)).encode()]
    for gone in (b"content-encoding", b"transfer-encoding", b"accept-ranges", b"content-md5"):
        assert header(head, gone) == []
    assert header(head, b"etag") == [b'W/"abc"']
    assert header(head, b"set-cookie") == [b"a=1", b"b=2"]
    assert header(head, b"vary") == [b"Accept-Encoding"]


def test_weak_etag_stays():
    head, _ = run([PAGE], headers=HTML + [(b"ETag", b'W/"x"')])
    assert header(head, b"etag") == [b'W/"x"']


@pytest.mark.parametrize("wire,why", [
    (gzip.compress(PAGE)[:-5], "truncated"),
    (gzip.compress(PAGE) + b"garbage", "after the end"),
    (b"\x1f\x8b\x08\x00garbage-not-gzip", "corrupt"),
    (b"", "truncated"),
])
def test_corrupt_or_truncated_encoding_passes_original(wire, why):
    headers = HTML + [(b"Content-Encoding", b"gzip")]
    injector = ResponseInjector(BANNER)
    assert injector.start(200, headers) is Decision.INJECT
    outs = [injector.feed(wire[i:i + 7]) for i in range(0, len(wire), 7)] + [injector.finish()]
    heads = [o.head for o in outs if o.head is not None]
    assert len(heads) == 1 and not heads[0].injected and heads[0].headers == headers
    assert b"".join(o.body for o in outs) == wire
    assert why in injector.reason and not injector.injected


# ---- pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"DEFLATE", b"identity"])
def test_split_at_every_byte_boundary(coding):
    doc = b"<html><HEAD><title>t</title></HEAD><BODY data-x='>'>" + b"<p>text</p>" * 20 + b"</BODY></html>"
    wire = CODINGS[coding](doc)
    headers = HTML + [(b"Content-Encoding", coding)]
    expected = run([wire], headers=headers)
    assert expected[0].injected
    for i in range(len(wire) + 1):
        assert run([wire[:i], wire[i:]], headers=headers) == expected
    assert run([wire[i:i + 1] for i in range(len(wire))], headers=headers) == expected


def test_empty_pieces_and_memoryview():
    head, body = run([b"", memoryview(PAGE[:5]), b"", bytearray(PAGE[5:]), b""])
    assert head.injected and body == inject_html(PAGE, BAR)


def test_head_is_emitted_exactly_once_at_finish():
    injector = ResponseInjector(BANNER)
    assert injector.start(200, HTML) is Decision.INJECT
    assert injector.feed(PAGE[:20]).head is None
    assert injector.feed(PAGE[20:]).body == b""
    out = injector.finish()
    assert out.head is not None and out.head.injected and injector.injected
    with pytest.raises(InjectError):
        injector.feed(b"x")
    with pytest.raises(InjectError):
        injector.finish()


def test_misuse_raises_inject_error():
    injector = ResponseInjector(BANNER)
    with pytest.raises(InjectError):
        injector.feed(b"x")
    injector.start(200, HTML)
    with pytest.raises(InjectError):
        injector.start(200, HTML)


# ---- the cap --------------------------------------------------------------------------

def test_overflow_passes_original_bytes_and_streams_the_rest():
    cap = 1000
    doc = b"<html><body>" + b"x" * 3000 + b"</body></html>"
    headers = HTML + [(b"Content-Length", str(len(doc)).encode())]
    injector = ResponseInjector(BANNER, max_body=cap)
    injector.start(200, headers)
    outs = [injector.feed(doc[i:i + 300]) for i in range(0, len(doc), 300)] + [injector.finish()]
    first = next(i for i, o in enumerate(outs) if o.head is not None)
    assert outs[first].head.headers == headers and not outs[first].head.injected
    assert outs[first].head.content_length == len(doc)
    assert len(outs[first].body) > cap  # everything held so far, at once
    assert all(o.head is None for o in outs[first + 1:])
    assert b"".join(o.body for o in outs) == doc
    assert "larger than 1000" in injector.reason


def test_exactly_at_cap_is_injected():
    doc = b"<body>" + b"y" * 94
    assert run([doc], max_body=100)[0].injected
    assert not run([doc + b"z"], max_body=101 - 1)[0].injected


def test_decompression_bomb_hits_the_cap():
    bomb = gzip.compress(b"<html><body>" + b"\0" * (MAX_INJECT_BODY + 1))
    assert len(bomb) < 100_000
    head, body = run([bomb], headers=HTML + [(b"Content-Encoding", b"gzip")])
    assert not head.injected and body == bomb


# ---- escaping, the bar ------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>'


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_values_are_escaped():
    banner = AttestationBanner(
        attested=False, tee_type=HOSTILE, policy_ids=(HOSTILE, "a\"b'c&d"),
        as_address="http://x/\"><img src=x onerror=alert(1)>", verified_at=0.0,
        detail="</tng-attestation-banner><script>evil()</script>\r\nX-Injected: 1 \u202e\u00e9\U0001f600",
    )
    bar = banner.html()
    assert bar.isascii()
    assert "<script" not in bar and "<img" not in bar and "\r" not in bar and "\n" not in bar
    p = _Collect()
    p.feed(bar)
    assert set(p.tags) <= {"tng-attestation-banner", "tng-attest-item", "tng-attest-key", "tng-attest-val"}
    text = "".join(p.text)
    assert HOSTILE in text and "a\"b'c&d" in text and "\u00e9\U0001f600" in text
    assert "NOT ATTESTED" in text and "1970-01-01 00:00:00 UTC" in text
    assert 'data-attested="false"' in bar and "#a61b1b" in bar


def test_attested_bar_contents():
    p = _Collect()
    p.feed(BANNER.html())
    text = " ".join(p.text)
    for needle in ("ATTESTED", "tdx", "default, prod-policy", "http://198.18.0.2:8080/",
                   "2026-11-27 07:00:00 UTC"):
        assert needle in text
    assert "NOT ATTESTED" not in text
    assert "#17692e" in BANNER.html() and "z-index:2147483647" in BANNER.html()
    assert "http" not in BANNER.html().replace("http://198.18.0.2:8080/", "")  # no external resources
    assert BANNER.text().startswith("TNG remote attestation: ATTESTED | TEE: tdx")


def test_bar_defaults_and_limits():
    b = AttestationBanner(attested=False, verified_at=datetime(2026, 1, 1))  # naive: taken as UTC
    assert "TEE: unknown" in b.text() and "Policy: none" in b.text() and "AS: none" in b.text()
    assert "2026-01-01 00:00:00 UTC" in b.html()
    long = AttestationBanner(True, "x" * 10_000, tuple(f"p{i}" for i in range(100)), "a" * 5000, 1.0)
    assert len(long.html()) < 8000 and "(+84 more)" in long.html()


# ---- Accept-Encoding ---------------------------------------------------------------------

@pytest.mark.parametrize("given_,expected", [
    ([(b"Accept-Encoding", b"gzip, deflate, br, zstd")], [(b"Accept-Encoding", b"gzip, deflate")]),
    ([(b"accept-encoding", b"br;q=1.0, gzip;q=0.8, *;q=0.1")], [(b"accept-encoding", b"gzip;q=0.8")]),
    ([(b"Accept-Encoding", b"br")], [(b"Accept-Encoding", b"identity")]),
    ([(b"Accept-Encoding", b"gzip;q=0")], [(b"Accept-Encoding", b"identity")]),
    ([(b"Accept-Encoding", b"")], [(b"Accept-Encoding", b"identity")]),
    ([(b"Host", b"h")], [(b"Host", b"h"), (b"Accept-Encoding", b"identity")]),
    ([(b"A", b"1"), (b"Accept-Encoding", b"br"), (b"B", b"2"), (b"Accept-Encoding", b"x-gzip")],
     [(b"A", b"1"), (b"Accept-Encoding", b"x-gzip"), (b"B", b"2")]),
    ([(b"Accept-Encoding", b"GZIP, Identity;q=0.5")], [(b"Accept-Encoding", b"gzip, identity;q=0.5")]),
])
def test_restrict_accept_encoding(given_, expected):
    assert restrict_accept_encoding(given_) == expected


# ---- properties -------------------------------------------------------------------------------

html_docs = st.lists(
    st.sampled_from([b"<html>", b"<HEAD>", b"</head>", b"<body>", b"<BODY class='a>b'>", b"</body>",
                     b"<!--", b"-->", b"<script>", b"</script>", b"<p>", b"text", b"<", b">", b"'",
                     b'"', b"<title>", b"</title>", b"<!DOCTYPE html>", b"\xc3\xa9", b"\n"]),
    max_size=40,
).map(b"".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(doc=html_docs, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
       coding=st.sampled_from(list(CODINGS)))
def test_random_splits_equal_one_piece(doc, cuts, coding):
    wire = CODINGS[coding](doc)
    headers = HTML + [(b"Content-Encoding", coding)]
    whole = run([wire], headers=headers)
    assert run(_split(wire, cuts), headers=headers) == whole
    assert whole[0].injected
    assert whole[1].replace(BAR, b"", 1) == doc  # the bar is the only change


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=6),
       coding=st.sampled_from([b"gzip", b"deflate", b"identity", b"br"]),
       cap=st.integers(min_value=0, max_value=700))
def test_random_bytes_never_crash(body, cuts, coding, cap):
    headers = HTML + [(b"Content-Encoding", coding)]
    head, out = run(_split(body, cuts), headers=headers, max_body=cap)
    if head.injected:
        assert head.content_length == len(out)
        assert BAR in out
    else:
        assert head.headers == headers and out == body


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=6),
       status=st.integers(min_value=0, max_value=999), method=st.binary(max_size=8))
def test_random_heads_never_crash(headers, status, method):
    injector = ResponseInjector(BANNER, method)
    decision = injector.start(status, headers)
    outs = [injector.feed(PAGE), injector.finish()]
    if decision is Decision.PASS:
        assert b"".join(o.body for o in outs) == PAGE
