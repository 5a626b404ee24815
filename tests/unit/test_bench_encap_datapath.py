"""The fast paths behind the encap suite's numbers produce exactly what the plain
ones do: sealed chunks written in place (`write_into`, `HttpStream.send_sealed_chunk`),
chunk reading straight from the fed slices, BHTTP content without a buffer trip."""

from __future__ import annotations

import os
import random
import socket

from tng_nfq.http import h1
from tng_nfq.http.ohttp import bhttp, chunked, hpke
from tng_nfq.http.ohttp.varint import encode_varint
from tng_nfq.tunnel.http_stream import HttpStream

KEY, NONCE = bytes(range(16)), bytes(range(12))


def _ctx(aead_id=hpke.AEAD_AES_128_GCM):
    return hpke.AeadContext(hpke.AEADS[aead_id], KEY if aead_id == hpke.AEAD_AES_128_GCM else KEY * 2, NONCE)


def test_write_into_matches_write():
    rng = random.Random(1)
    for aead_id in (hpke.AEAD_AES_128_GCM, hpke.AEAD_CHACHA20_POLY1305):
        for n in (1, 100, 16381, 16382, 16383, 16384, 16385, 40000, 65536, 262144):
            head = encode_varint(n)
            data = rng.randbytes(n)
            a, b = chunked._ChunkWriter(_ctx(aead_id), b""), chunked._ChunkWriter(_ctx(aead_id), b"")
            size = chunked.sealed_size(len(head) + n)
            buf = memoryview(bytearray(size + 10))
            assert b.write_into(buf, 3, head, data) == 3 + size
            assert bytes(buf[3:3 + size]) == a.write(head + data)
            assert a.finish() == b.finish()


def test_reader_any_slicing_gives_the_plaintext():
    rng = random.Random(2)
    for trial in range(60):
        w = chunked._ChunkWriter(_ctx(), b"")
        msgs = [rng.randbytes(rng.choice([0, 1, 63, 16384, 16385, 70000])) for _ in range(rng.randint(1, 4))]
        stream = b"".join(w.write(m) for m in msgs) + w.finish()
        r = chunked._ChunkReader(_ctx())
        out, i = [], 0
        while i < len(stream):
            k = rng.choice([1, 2, 3, 5, 17, 16401, 16404, 65536])
            out.append(r.feed(stream[i:i + k]))
            i += k
        out.append(r.finish())
        assert b"".join(out) == b"".join(msgs), trial


def test_bhttp_content_fast_path_same_events():
    msg = bhttp.encode_response_head(200, [(b"a", b"b")]) + bhttp.encode_chunk(b"x" * 5000) \
        + bhttp.encode_chunk(b"y" * 7) + bhttp.encode_end()
    whole = bhttp.decode(msg, expect="response")
    for step in (1, 2, 3, 10, 100, 4999, 5003):
        dec = bhttp.BhttpDecoder(expect="response")
        events = []
        for i in range(0, len(msg), step):
            events += dec.feed(msg[i:i + step])
        events += dec.finish()
        data = b"".join(e.data for e in events if isinstance(e, bhttp.Data))
        assert data == b"x" * 5000 + b"y" * 7
        assert all(isinstance(e.data, bytes) for e in events if isinstance(e, bhttp.Data))
        assert [type(e) for e in events if not isinstance(e, bhttp.Data)] == \
            [type(e) for e in whole if not isinstance(e, bhttp.Data)]


def test_send_sealed_chunk_is_one_http_chunk_of_write():
    a, b = socket.socketpair()
    try:
        stream = HttpStream(a)
        data = os.urandom(70000)
        enc_a, enc_b = chunked._ChunkWriter(_ctx(), b""), chunked._ChunkWriter(_ctx(), b"")

        class Enc:  # the encoder surface send_sealed_chunk uses
            sealed_size = staticmethod(chunked.sealed_size)
            write_into = staticmethod(enc_a.write_into)

        stream.send_sealed_chunk(Enc, encode_varint(len(data)), data)
        stream.send_sealed_chunk(Enc, b"", b"")  # nothing at all
        expected = h1.chunk(enc_b.write(encode_varint(len(data)) + data))
        got = b""
        while len(got) < len(expected):
            got += b.recv(1 << 20)
        assert got == expected and stream.bytes_out == len(expected)
    finally:
        a.close()
        b.close()
