"""Binary HTTP (RFC 9292): the examples of RFC 9292 §5, round trips with the
input sliced at random, and garbage/mutations that must fail as OhttpError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.ohttp import OhttpError
from tng_nfq.http.ohttp import bhttp
from tng_nfq.http.ohttp.bhttp import (
    BhttpDecoder, Data, End, InformationalResponse, RequestHead, ResponseHead, Trailers,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 9292 §5.1, Known-Length Binary Encoding of Request
RFC_KNOWN_REQUEST = h("""
00034745 54056874 74707300 0a2f6865 6c6c6f2e 74787440 6c0a7573 65722d61
67656e74 34637572 6c2f372e 31362e33 206c6962 6375726c 2f372e31 362e3320
4f70656e 53534c2f 302e392e 376c207a 6c69622f 312e322e 3304686f 73740f77
77772e65 78616d70 6c652e63 6f6d0f61 63636570 742d6c61 6e677561 67650665
6e2c206d 690000""")
# RFC 9292 §5.1, Indeterminate-Length Binary Encoding of Request (10 bytes padding)
RFC_INDETERMINATE_REQUEST = h("""
02034745 54056874 74707300 0a2f6865 6c6c6f2e 7478740a 75736572 2d616765
6e743463 75726c2f 372e3136 2e33206c 69626375 726c2f37 2e31362e 33204f70
656e5353 4c2f302e 392e376c 207a6c69 622f312e 322e3304 686f7374 0f777777
2e657861 6d706c65 2e636f6d 0f616363 6570742d 6c616e67 75616765 06656e2c
206d6900 00000000 00000000 00000000""")
REQUEST_HEADERS = (
    (b"user-agent", b"curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
    (b"host", b"www.example.com"),
    (b"accept-language", b"en, mi"),
)
# RFC 9292 §5.2, Binary Response, including Informational Responses
RFC_RESPONSE = h("""
03406607 72756e6e 696e670a 22736c65 65702031 35220040 67046c69 6e6b233c
2f737479 6c652e63 73733e3b 2072656c 3d707265 6c6f6164 3b206173 3d737479
6c65046c 696e6b24 3c2f7363 72697074 2e6a733e 3b207265 6c3d7072 656c6f61
643b2061 733d7363 72697074 0040c804 64617465 1d4d6f6e 2c203237 204a756c
20323030 39203132 3a32383a 35332047 4d540673 65727665 72064170 61636865
0d6c6173 742d6d6f 64696669 65641d57 65642c20 3232204a 756c2032 30303920
31393a31 353a3536 20474d54 04657461 67142233 34616133 38372d64 2d313536
38656230 30220d61 63636570 742d7261 6e676573 05627974 65730e63 6f6e7465
6e742d6c 656e6774 68023531 04766172 790f4163 63657074 2d456e63 6f64696e
670c636f 6e74656e 742d7479 70650a74 6578742f 706c6169 6e003348 656c6c6f
20576f72 6c642120 4d792063 6f6e7465 6e742069 6e636c75 64657320 61207472
61696c69 6e672043 524c462e 0d0a0000""")
RESPONSE_INFORMATIONAL = (
    (102, ((b"running", b'"sleep 15"'),)),
    (103, ((b"link", b"</style.css>; rel=preload; as=style"),
           (b"link", b"</script.js>; rel=preload; as=script"))),
)
RESPONSE_HEADERS = (
    (b"date", b"Mon, 27 Jul 2009 12:28:53 GMT"),
    (b"server", b"Apache"),
    (b"last-modified", b"Wed, 22 Jul 2009 19:15:56 GMT"),
    (b"etag", b'"34aa387-d-1568eb00"'),
    (b"accept-ranges", b"bytes"),
    (b"content-length", b"51"),
    (b"vary", b"Accept-Encoding"),
    (b"content-type", b"text/plain"),
)
RESPONSE_CONTENT = b"Hello World! My content includes a trailing CRLF.\r\n"
# RFC 9292 §5.2, Known-Length Encoding of Response (from a chunked HTTP/1.1 one)
RFC_KNOWN_RESPONSE = h("""
0140c800 1d546869 7320636f 6e74656e 7420636f 6e746169 6e732043 524c462e
0d0a0d07 74726169 6c657204 74657874""")


def merged(events):
    """Events with adjacent Data joined, so slicing does not change the result."""
    out = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        elif not (isinstance(event, Data) and not event.data):
            out.append(event)
    return out


def decode_sliced(data: bytes, cuts, **kwargs):
    decoder = BhttpDecoder(**kwargs)
    events, last = [], 0
    for cut in sorted(cuts) + [len(data)]:
        events += decoder.feed(data[last:cut])
        last = cut
    return merged(events + decoder.finish())


EXPECTED_REQUEST = [RequestHead(b"GET", b"https", b"", b"/hello.txt", REQUEST_HEADERS, True), End()]


def test_rfc_known_length_request():
    assert merged(bhttp.decode(RFC_KNOWN_REQUEST, expect="request")) == EXPECTED_REQUEST
    assert bhttp.encode_request(b"GET", b"https", b"", b"/hello.txt", REQUEST_HEADERS) == RFC_KNOWN_REQUEST


def test_rfc_known_length_request_truncated_content_and_trailers():
    # RFC 9292 §5.1: the last two bytes can each be removed.
    assert merged(bhttp.decode(RFC_KNOWN_REQUEST[:-1])) == EXPECTED_REQUEST
    assert merged(bhttp.decode(RFC_KNOWN_REQUEST[:-2])) == EXPECTED_REQUEST
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_KNOWN_REQUEST[:-3])


def test_rfc_indeterminate_request_with_padding_and_truncation():
    expected = [RequestHead(b"GET", b"https", b"", b"/hello.txt", REQUEST_HEADERS, False), End()]
    for cut in range(0, 13):  # "anything up to 12 bytes can be removed"
        assert merged(bhttp.decode(RFC_INDETERMINATE_REQUEST[:len(RFC_INDETERMINATE_REQUEST) - cut])) == expected
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_INDETERMINATE_REQUEST[:-13])
    assert bhttp.encode_request(b"GET", b"https", b"", b"/hello.txt", REQUEST_HEADERS,
                                known_length=False) == RFC_INDETERMINATE_REQUEST[:-10]


def test_rfc_response_with_informational():
    expected = [
        InformationalResponse(102, RESPONSE_INFORMATIONAL[0][1]),
        InformationalResponse(103, RESPONSE_INFORMATIONAL[1][1]),
        ResponseHead(200, RESPONSE_HEADERS, False),
        Data(RESPONSE_CONTENT),
        End(),
    ]
    assert merged(bhttp.decode(RFC_RESPONSE, expect="response")) == expected
    assert bhttp.encode_response(200, RESPONSE_HEADERS, RESPONSE_CONTENT,
                                 informational=RESPONSE_INFORMATIONAL, known_length=False) == RFC_RESPONSE
    streamed = (bhttp.encode_response_head(200, RESPONSE_HEADERS, RESPONSE_INFORMATIONAL)
                + bhttp.encode_chunk(RESPONSE_CONTENT[:5]) + bhttp.encode_chunk(b"")
                + bhttp.encode_chunk(RESPONSE_CONTENT[5:]) + bhttp.encode_end())
    assert merged(bhttp.decode(streamed)) == expected


def test_rfc_known_length_response_with_trailer():
    expected = [ResponseHead(200, (), True), Data(b"This content contains CRLF.\r\n"),
                Trailers(((b"trailer", b"text"),)), End()]
    assert merged(bhttp.decode(RFC_KNOWN_RESPONSE)) == expected
    assert bhttp.encode_response(200, (), b"This content contains CRLF.\r\n",
                                 [(b"trailer", b"text")]) == RFC_KNOWN_RESPONSE


def test_byte_by_byte_streams_content_before_the_end():
    body = b"x" * 5000
    wire = bhttp.encode_request_head(b"POST", b"https", b"a", b"/", [(b"k", b"v")]) + bhttp.encode_chunk(body)
    decoder = BhttpDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i:i + 1])
    # Every body byte was handed out although the message has not ended.
    assert b"".join(e.data for e in got if isinstance(e, Data)) == body
    assert not any(isinstance(e, End) for e in got)
    assert decoder.feed(bhttp.encode_end([(b"t", b"1")])) == [Trailers(((b"t", b"1"),)), End()]
    assert decoder.finish() == []


@pytest.mark.parametrize("wire", [
    b"\x04",  # unknown framing indicator
    b"\x01\x40\x63\x00",  # status 99
    b"\x01\x42\x58\x00",  # status 600
    b"\x00\x03GET\x05https\x00\x01/\x03\x00\x01v\x00\x00",  # empty field name (known length)
    b"\x00\x03GET\x05https\x00\x01/\x05\x01a\x05vvvvv\x00\x00",  # field line overruns its section
    RFC_KNOWN_REQUEST + b"\x01",  # non-zero padding
    RFC_KNOWN_REQUEST[:10],  # truncated in control data
    RFC_RESPONSE[:-20],  # truncated inside content
    RFC_RESPONSE[:-3],  # truncated inside content (its last byte)
])
def test_malformed(wire):
    with pytest.raises(OhttpError):
        bhttp.decode(wire)


def test_indeterminate_truncation_only_of_empty_trailers():
    # Content terminated, trailer section left out: an allowed truncation.
    assert merged(bhttp.decode(RFC_RESPONSE[:-1]))[-2:] == [Data(RESPONSE_CONTENT), End()]
    # Content chunk complete but its zero-length terminator missing: not allowed.
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_RESPONSE[:-2])


def test_expect_kind_and_limits():
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_KNOWN_REQUEST, expect="response")
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_KNOWN_REQUEST, max_field_section=50)
    with pytest.raises(OhttpError):
        bhttp.decode(RFC_INDETERMINATE_REQUEST, max_field_section=50)
    decoder = BhttpDecoder()
    with pytest.raises(OhttpError):
        decoder.feed(b"\x09")
    with pytest.raises(OhttpError):
        decoder.feed(b"")  # a failed decoder stays failed


def test_encoder_rejects_bad_status_and_empty_names():
    with pytest.raises(OhttpError):
        bhttp.encode_response(101)
    with pytest.raises(OhttpError):
        bhttp.encode_response(200, informational=[(200, ())])
    with pytest.raises(OhttpError):
        bhttp.encode_request(b"GET", b"https", b"", b"/", [(b"", b"v")])


token = st.binary(min_size=1, max_size=12)
fields = st.lists(st.tuples(token, st.binary(max_size=20)), max_size=4).map(tuple)


@st.composite
def messages(draw):
    known = draw(st.booleans())
    content = draw(st.binary(max_size=300))
    trailers = draw(fields)
    if draw(st.booleans()):
        head = RequestHead(draw(token), draw(st.binary(max_size=8)), draw(st.binary(max_size=8)),
                           draw(st.binary(max_size=8)), draw(fields), known)
        wire = bhttp.encode_request(head.method, head.scheme, head.authority, head.path, head.headers,
                                    content, trailers, known_length=known)
        expected = [head]
    else:
        informational = draw(st.lists(st.tuples(st.integers(100, 199), fields), max_size=2))
        head = ResponseHead(draw(st.integers(200, 599)), draw(fields), known)
        wire = bhttp.encode_response(head.status, head.headers, content, trailers,
                                     informational=informational, known_length=known)
        expected = [InformationalResponse(s, f) for s, f in informational] + [head]
    if content:
        expected.append(Data(content))
    if trailers:
        expected.append(Trailers(trailers))
    expected.append(End())
    padding = b"\x00" * draw(st.integers(0, 3))
    return wire + padding, expected


@settings(max_examples=300, deadline=None)
@given(messages(), st.lists(st.integers(0, 400), max_size=8))
def test_roundtrip_random_slicing(message, cuts):
    wire, expected = message
    assert decode_sliced(wire, [c for c in cuts if c <= len(wire)]) == expected


def _only_ohttp_error(data: bytes, cuts=()):
    try:
        decode_sliced(data, [c for c in cuts if c <= len(data)])
    except OhttpError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4))
def test_random_bytes_only_ohttp_error(data, cuts):
    _only_ohttp_error(data, cuts)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([RFC_KNOWN_REQUEST, RFC_INDETERMINATE_REQUEST, RFC_RESPONSE, RFC_KNOWN_RESPONSE]),
       st.data())
def test_mutated_rfc_examples_only_ohttp_error(wire, data):
    mutated = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if kind == "flip" and mutated:
            mutated[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del mutated[at:]
        else:
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _only_ohttp_error(bytes(mutated), data.draw(st.lists(st.integers(0, 300), max_size=3)))


def test_header_section_left_out_as_in_rfc9458():
    # RFC 9458 Appendix A's request ends right after the path.
    wire = bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
    assert bhttp.decode(wire) == [RequestHead(b"GET", b"https", b"example.com", b"/", (), True), End()]
    assert bhttp.decode(b"\x01\x40\xc8") == [ResponseHead(200, (), True), End()]
    assert bhttp.decode(b"\x03\x40\xc8") == [ResponseHead(200, (), False), End()]
    with pytest.raises(OhttpError):  # an informational response needs a final one
        bhttp.decode(b"\x01\x40\x64")
    with pytest.raises(OhttpError):  # control data itself cannot be cut
        bhttp.decode(wire[:-1])
