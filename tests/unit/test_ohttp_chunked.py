"""OHTTP encapsulation: RFC 9458 Appendix A (single-shot, which pins the
labels, info, header and response-key derivation shared with the chunked
form) and chunked OHTTP (draft-ietf-ohai-chunked-ohttp as upstream's crate
frames it), re-derived by hand from HPKE primitives and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.ohttp import OhttpError, bhttp, hpke
from tng_nfq.http.ohttp import chunked, encap, single
from tng_nfq.http.ohttp.keyconfig import KeyConfig, KeyPair, SymmetricSuite
from tng_nfq.http.ohttp.varint import encode_varint, read_varint

h = bytes.fromhex

# RFC 9458 Appendix A
RFC_SKR = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
RFC_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003")
RFC_REQUEST = h("00034745540568747470730b6578616d706c652e636f6d012f")  # GET https://example.com/
RFC_SKE = h("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
RFC_PKE = h("4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472")
RFC_INFO = h("6d6573736167652f626874747020726571756573740001002000010001")
RFC_ENC_REQUEST = h("010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472"
                    "6374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525")
RFC_RESPONSE = h("0140c8")  # 200, known length, nothing else
RFC_EXPORT_SECRET = h("62d87a6ba569ee81014c2641f52bea36")
RFC_RESPONSE_NONCE = h("c789e7151fcba46158ca84b04464910d")
RFC_PRK = h("979aaeae066cf211ab407b31ae49767f344e1501e475c84e8aff547cc5a683db")
RFC_AEAD_KEY = h("5d0172a080e428b16d298c4ea0db620d")
RFC_AEAD_NONCE = h("f6bf1aeb88d6df87007fa263")
RFC_ENC_RESPONSE = h("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd")

RFC_KEYS = KeyPair.from_private_key(RFC_SKR, 1, [SymmetricSuite(1, 1), SymmetricSuite(1, 3)])


def test_rfc9458_request():
    config = KeyConfig.parse(RFC_CONFIG)
    assert encap.build_info(single.REQUEST_LABEL, encap.RequestHeader(1, 0x20, 1, 1)) == RFC_INFO
    enc_request, _ = single.encapsulate_request(config, RFC_REQUEST, _sk_e=RFC_SKE)
    assert enc_request == RFC_ENC_REQUEST
    request, _ = single.decapsulate_request(RFC_KEYS, RFC_ENC_REQUEST)
    assert request == RFC_REQUEST
    assert bhttp.decode(request) == [bhttp.RequestHead(b"GET", b"https", b"example.com", b"/", (), True),
                                     bhttp.End()]


def test_rfc9458_response_derivation_and_bytes():
    ctx = hpke.setup_base_recipient(RFC_PKE, RFC_SKR, RFC_INFO, hpke.AEAD_AES_128_GCM)
    assert ctx.export(single.RESPONSE_LABEL, 16) == RFC_EXPORT_SECRET
    assert hpke.hkdf_extract(RFC_PKE + RFC_RESPONSE_NONCE, RFC_EXPORT_SECRET) == RFC_PRK
    aead = encap.response_aead(ctx, single.RESPONSE_LABEL, RFC_PKE, RFC_RESPONSE_NONCE)
    assert (aead.key, aead.base_nonce) == (RFC_AEAD_KEY, RFC_AEAD_NONCE)

    _, server = single.decapsulate_request(RFC_KEYS, RFC_ENC_REQUEST)
    assert server.encapsulate_response(RFC_RESPONSE, _nonce=RFC_RESPONSE_NONCE) == RFC_ENC_RESPONSE

    _, client = single.encapsulate_request(KeyConfig.parse(RFC_CONFIG), RFC_REQUEST, _sk_e=RFC_SKE)
    assert client.decapsulate_response(RFC_ENC_RESPONSE) == RFC_RESPONSE


def test_single_shot_rejects_tampering_and_wrong_keys():
    _, client = single.encapsulate_request(KeyConfig.parse(RFC_CONFIG), RFC_REQUEST, _sk_e=RFC_SKE)
    for i in range(len(RFC_ENC_REQUEST)):
        bad = bytearray(RFC_ENC_REQUEST)
        bad[i] ^= 0x01
        with pytest.raises(OhttpError):
            single.decapsulate_request(RFC_KEYS, bytes(bad))
    for i in range(len(RFC_ENC_RESPONSE)):
        bad = bytearray(RFC_ENC_RESPONSE)
        bad[i] ^= 0x80
        with pytest.raises(OhttpError):
            client.decapsulate_response(bytes(bad))
    with pytest.raises(OhttpError):
        single.decapsulate_request(KeyPair.generate(1), RFC_ENC_REQUEST)
    with pytest.raises(OhttpError):
        client.decapsulate_response(RFC_ENC_RESPONSE[:20])


def test_single_shot_auth_mode():
    client_sk, client_pk = hpke.generate_key_pair()
    keys = KeyPair.generate(4)
    enc_request, client = single.encapsulate_request(keys.config, b"req", sender_private_key=client_sk)
    request, server = single.decapsulate_request(keys, enc_request, sender_public_key=client_pk)
    assert request == b"req"
    assert client.decapsulate_response(server.encapsulate_response(b"res")) == b"res"
    with pytest.raises(OhttpError):  # base mode does not open an auth-mode request
        single.decapsulate_request(keys, enc_request)
    with pytest.raises(OhttpError):
        single.decapsulate_request(keys, enc_request, sender_public_key=hpke.generate_key_pair()[1])


# --- chunked ----------------------------------------------------------------

def split_chunks(body: bytes):
    """(non-final chunk ciphertexts, final ciphertext) by the draft's framing."""
    chunks, pos = [], 0
    while True:
        length, pos = read_varint(body, pos)
        if length == 0:
            return chunks, body[pos:]
        chunks.append(body[pos:pos + length])
        pos += length


def test_chunked_request_wire_format_rederived():
    # Same keys and ephemeral key as RFC 9458 Appendix A, chunked labels.
    config = KeyConfig.parse(RFC_CONFIG)
    encoder = chunked.ChunkedRequestEncoder(config, _sk_e=RFC_SKE)
    wire = encoder.start() + encoder.write(b"hello") + encoder.write(b"") + encoder.write(b"world!") + encoder.finish()
    assert wire[:7] == h("01002000010001")
    assert wire[7:39] == RFC_PKE
    info = b"message/bhttp chunked request\x00" + h("01002000010001")
    ctx = hpke.setup_base_recipient(RFC_PKE, RFC_SKR, info, hpke.AEAD_AES_128_GCM)
    chunks, final = split_chunks(wire[39:])
    assert [len(c) for c in chunks] == [5 + 16, 6 + 16]  # an empty write sends nothing
    assert ctx.open(b"", chunks[0]) == b"hello"
    assert ctx.open(b"", chunks[1]) == b"world!"
    assert ctx.open(b"final", final) == b""

    # And the response: nonce, then chunks under the exported response key.
    decoder = chunked.ChunkedRequestDecoder(RFC_KEYS)
    assert decoder.feed(wire) == b"helloworld!"
    assert decoder.finish() == b""
    assert decoder.header == encap.RequestHeader(1, 0x20, 1, 1)
    nonce = bytes(range(16))
    response = decoder.response_encoder(_nonce=nonce)
    rwire = response.write(b"abc") + response.finish(b"xyz")
    assert rwire[:16] == nonce
    secret = ctx.export(b"message/bhttp chunked response", 16)
    prk = hpke.hkdf_extract(RFC_PKE + nonce, secret)
    aead = hpke.AeadContext(hpke.AEADS[1], hpke.hkdf_expand(prk, b"key", 16), hpke.hkdf_expand(prk, b"nonce", 12))
    chunks, final = split_chunks(rwire[16:])
    assert aead.open(b"", chunks[0]) == b"abc"
    assert aead.open(b"final", final) == b"xyz"

    client = encoder.response_decoder()
    assert client.feed(rwire) == b"abc"
    assert client.finish() == b"xyz"


def test_chunk_size_limit_and_splitting():
    keys = KeyPair.generate(9)
    encoder = chunked.ChunkedRequestEncoder(keys.config)
    body = bytes(range(256)) * 200  # 51200 bytes -> 4 chunks
    wire = encoder.write(body) + encoder.finish()
    chunks, _ = split_chunks(wire[39:])
    assert [len(c) - 16 for c in chunks] == [16384, 16384, 16384, 51200 - 3 * 16384]
    decoder = chunked.ChunkedRequestDecoder([KeyPair.generate(3), keys])
    assert decoder.feed(wire) + decoder.finish() == body
    # A chunk longer than 2**14 + Nt is refused before it is buffered.
    too_big = wire[:39] + encode_varint(16384 + 17)
    with pytest.raises(OhttpError):
        chunked.ChunkedRequestDecoder(keys).feed(too_big)
    # So is an oversized final chunk.
    with pytest.raises(OhttpError):
        chunked.ChunkedRequestDecoder(keys).feed(wire[:39] + b"\x00" + bytes(16384 + 17))


def test_finish_with_large_data_splits_before_final():
    keys = KeyPair.generate(1)
    encoder = chunked.ChunkedRequestEncoder(keys.config)
    wire = encoder.finish(b"z" * 20000)
    chunks, final = split_chunks(wire[39:])
    assert len(chunks) == 1 and len(final) == 16384 + 16
    decoder = chunked.ChunkedRequestDecoder(keys)
    assert decoder.feed(wire) + decoder.finish() == b"z" * 20000
    with pytest.raises(OhttpError):
        encoder.write(b"late")


@pytest.mark.parametrize("aead_id", [1, 2, 3])
def test_every_aead_and_auth_mode(aead_id):
    client_sk, client_pk = hpke.generate_key_pair()
    keys = KeyPair.generate(5)
    encoder = chunked.ChunkedRequestEncoder(keys.config, suite=SymmetricSuite(1, aead_id),
                                            sender_private_key=client_sk)
    wire = encoder.write(b"a" * 100) + encoder.finish()
    decoder = chunked.ChunkedRequestDecoder({5: keys}, sender_public_key=client_pk)
    assert decoder.feed(wire) + decoder.finish() == b"a" * 100
    response = decoder.response_encoder()
    rwire = response.start() + response.write(b"b" * 50) + response.finish()
    assert len(rwire) >= encap.response_nonce_length(hpke.AEADS[aead_id])
    client = encoder.response_decoder()
    assert client.feed(rwire) + client.finish() == b"b" * 50
    wrong = chunked.ChunkedRequestDecoder(keys, sender_public_key=hpke.generate_key_pair()[1])
    with pytest.raises(OhttpError):
        wrong.feed(wire)


def test_unknown_key_suite_and_truncation():
    keys = KeyPair.generate(1, [SymmetricSuite(1, 1)])
    encoder = chunked.ChunkedRequestEncoder(keys.config)
    wire = encoder.write(b"data") + encoder.finish()
    with pytest.raises(OhttpError):
        chunked.ChunkedRequestDecoder(KeyPair.generate(2)).feed(wire)
    with pytest.raises(OhttpError):  # suite not offered by the key configuration
        chunked.ChunkedRequestDecoder(keys).feed(wire[:5] + b"\x03" + wire[6:])
    with pytest.raises(OhttpError):
        chunked.ChunkedRequestEncoder(keys.config, suite=SymmetricSuite(1, 3))
    for cut in (0, 5, 39, 40, len(wire) - 17, len(wire) - 1):
        decoder = chunked.ChunkedRequestDecoder(keys)
        decoder.feed(wire[:cut])
        with pytest.raises(OhttpError):
            decoder.finish()
    # Dropping the final chunk and ending after a normal chunk is caught.
    chunks_only = wire[:39 + 1 + 4 + 16]
    decoder = chunked.ChunkedRequestDecoder(keys)
    assert decoder.feed(chunks_only) == b"data"
    with pytest.raises(OhttpError):
        decoder.finish()
    with pytest.raises(OhttpError):
        decoder.feed(b"")  # failed for good
    with pytest.raises(OhttpError):
        chunked.ChunkedRequestDecoder(keys).response_encoder()


def test_reordered_or_replayed_chunks_fail():
    keys = KeyPair.generate(1)
    encoder = chunked.ChunkedRequestEncoder(keys.config)
    head = encoder.start()
    c1, c2 = encoder.write(b"one"), encoder.write(b"two")
    final = encoder.finish()
    for body in (c2 + c1 + final, c1 + c1 + final, c1 + final[:1] + c2[1:]):
        decoder = chunked.ChunkedRequestDecoder(keys)
        with pytest.raises(OhttpError):
            decoder.feed(head + body)
            decoder.finish()
    # A normal chunk presented as the final one (AAD differs) fails too.
    decoder = chunked.ChunkedRequestDecoder(keys)
    decoder.feed(head + c1 + b"\x00" + c2[1:])
    with pytest.raises(OhttpError):
        decoder.finish()


# --- streaming with random slicing, and fuzzing -----------------------------

FUZZ_KEYS = KeyPair.generate(7)


def feed_sliced(decoder, wire, cuts):
    out, last = b"", 0
    for cut in sorted(c for c in cuts if c <= len(wire)) + [len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    return out + decoder.finish()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=5), st.lists(st.binary(max_size=3000), max_size=5),
       st.lists(st.integers(0, 16000), max_size=10), st.lists(st.integers(0, 16000), max_size=10))
def test_roundtrip_random_slicing(pieces, response_pieces, cuts, rcuts):
    encoder = chunked.ChunkedRequestEncoder(FUZZ_KEYS.config)
    wire = encoder.start() + b"".join(encoder.write(p) for p in pieces) + encoder.finish()
    decoder = chunked.ChunkedRequestDecoder(FUZZ_KEYS)
    assert feed_sliced(decoder, wire, cuts) == b"".join(pieces)
    response = decoder.response_encoder()
    rwire = b"".join(response.write(p) for p in response_pieces) + response.finish()
    assert feed_sliced(encoder.response_decoder(), rwire, rcuts) == b"".join(response_pieces)


VALID_ENCODER = chunked.ChunkedRequestEncoder(FUZZ_KEYS.config)
VALID_REQUEST = VALID_ENCODER.start() + VALID_ENCODER.write(b"abc" * 20) + VALID_ENCODER.write(b"x") + VALID_ENCODER.finish()
VALID_SERVER = chunked.ChunkedRequestDecoder(FUZZ_KEYS)
VALID_SERVER.feed(VALID_REQUEST)
VALID_SERVER.finish()
_resp = VALID_SERVER.response_encoder()
VALID_RESPONSE = _resp.write(b"response body") + _resp.finish()


def _only_ohttp_error(make_decoder, data, cuts):
    try:
        return feed_sliced(make_decoder(), data, cuts)
    except OhttpError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4))
def test_random_bytes_only_ohttp_error(data, cuts):
    _only_ohttp_error(lambda: chunked.ChunkedRequestDecoder(FUZZ_KEYS), data, cuts)
    _only_ohttp_error(VALID_ENCODER.response_decoder, data, cuts)
    try:
        single.decapsulate_request(FUZZ_KEYS, data)
    except OhttpError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["request", "response"]), st.data())
def test_mutations_never_pass_and_only_ohttp_error(which, data):
    wire = VALID_REQUEST if which == "request" else VALID_RESPONSE
    mutated = bytearray(wire)
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    at = data.draw(st.integers(0, len(mutated) - 1))
    if kind == "flip":
        mutated[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del mutated[at:]
    else:
        mutated[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    make = ((lambda: chunked.ChunkedRequestDecoder(FUZZ_KEYS)) if which == "request"
            else VALID_ENCODER.response_decoder)
    # Every byte is authenticated or framing, so a change is refused -- unless
    # it merely re-encodes a length varint (e.g. 0x15 -> 0x40 0x15), which the
    # draft leaves unauthenticated; then the plaintext must be unchanged.
    original = b"abc" * 20 + b"x" if which == "request" else b"response body"
    got = _only_ohttp_error(make, bytes(mutated), data.draw(st.lists(st.integers(0, 200), max_size=3)))
    assert got is None or got == original


def test_empty_non_final_chunk_is_skipped_like_upstream():
    keys = KeyPair.generate(1)
    config = keys.config
    prefix, enc, ctx = encap.setup_sender(config, chunked.REQUEST_LABEL)
    empty = ctx.seal(b"", b"")
    data = ctx.seal(b"", b"data")
    final = ctx.seal(b"final", b"")
    wire = prefix + encode_varint(len(empty)) + empty + encode_varint(len(data)) + data + b"\x00" + final
    decoder = chunked.ChunkedRequestDecoder(keys)
    assert decoder.feed(wire) + decoder.finish() == b"data"


def test_non_minimal_varint_lengths_are_accepted():
    # The draft leaves the length encoding unauthenticated; any valid varint goes.
    keys = KeyPair.generate(1)
    prefix, enc, ctx = encap.setup_sender(keys.config, chunked.REQUEST_LABEL)
    ct = ctx.seal(b"", b"abc")
    final = ctx.seal(b"final", b"")
    wire = prefix + (0x80000000 | len(ct)).to_bytes(4, "big") + ct + b"\x40\x00" + final
    decoder = chunked.ChunkedRequestDecoder(keys)
    assert decoder.feed(wire) + decoder.finish() == b"abc"
