"""Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp), as upstream's
`ohttp` crate (stream.rs, inclavare-containers fork of martinthomson/ohttp)
puts it on the wire.  Media types message/ohttp-chunked-req / -res.

Request:  header (7) || enc || chunk* || final chunk
Response: response_nonce (max(Nn, Nk)) || chunk* || final chunk
Chunk:        varint(len(ct)) || ct,   ct = Seal(aad="", piece), len(ct) > 0
Final chunk:  varint(0) || ct up to the end of the stream, ct = Seal(aad="final", piece)

The zero length marks the final chunk, whose ciphertext runs to the end of
the stream -- so a decoder can only open it at EOF (`finish`).  The "final"
AAD stops an attacker from cutting the stream after any chunk.  HPKE info is
"message/bhttp chunked request" || 0 || header; the response key comes from
exporting "message/bhttp chunked response" (see encap.py).  Sequence numbers
run on across all chunks of one direction, final chunk included.

Limits follow upstream so both sides accept what the other sends: a chunk
carries at most 2**14 plaintext bytes, and a decoder rejects any chunk
(the final one included) longer than 2**14 + Nt.

The draft says a receiver MUST treat a non-final chunk with empty plaintext
as a decryption error; upstream's crate skips such chunks instead, and so do
we (the encoder never sends one), so a peer that flushes an empty write does
not break the stream.
"""

from __future__ import annotations

import abc

from tng_nfq.http.ohttp import encap, hpke
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyConfig, SymmetricSuite
from tng_nfq.http.ohttp.varint import encode_varint, read_varint

REQUEST_LABEL = b"message/bhttp chunked request"
RESPONSE_LABEL = b"message/bhttp chunked response"
CHUNK_AAD = b""
FINAL_CHUNK_AAD = b"final"
MAX_CHUNK_PLAINTEXT = 1 << 14

REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res"


def _varint_size(value: int) -> int:
    return 1 if value < 1 << 6 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8


def sealed_size(n: int, n_t: int = 16) -> int:
    """Bytes of the non-final chunks that `n` plaintext bytes become (`write`)."""
    full, rest = divmod(n, MAX_CHUNK_PLAINTEXT)
    size = full * (_varint_size(MAX_CHUNK_PLAINTEXT + n_t) + MAX_CHUNK_PLAINTEXT + n_t)
    if rest:
        size += _varint_size(rest + n_t) + rest + n_t
    return size


class _ChunkWriter:
    """Seals plaintext into chunks behind a one-time prefix (header or nonce)."""

    def __init__(self, aead: hpke.AeadContext, prefix: bytes):
        self._aead = aead
        self._prefix = prefix
        self._finished = False

    def start(self) -> bytes:
        """The prefix, if not sent yet (lets a sender flush it early)."""
        prefix, self._prefix = self._prefix, b""
        return prefix

    def write(self, data: bytes) -> bytes:
        if self._finished:
            raise OhttpError("write after the final chunk")
        out = [self.start()]
        view = memoryview(data)
        seal = self._aead.seal
        for pos in range(0, len(view), MAX_CHUNK_PLAINTEXT):
            ct = seal(CHUNK_AAD, view[pos:pos + MAX_CHUNK_PLAINTEXT])
            out.append(encode_varint(len(ct)))
            out.append(ct)
        return b"".join(out)

    def write_into(self, buf: memoryview, pos: int, head: bytes, data) -> int:
        """Seal `head + data` as non-final chunks into `buf` from `pos` on;
        the position after them.  `buf` needs `sealed_size(len(head) + len(data))`
        bytes of room; the prefix must have gone out already (`start`).
        Same chunks as `write(head + data)`, without copying `data`."""
        if self._finished:
            raise OhttpError("write after the final chunk")
        if self._prefix:
            raise OhttpError("write_into before the prefix was taken")
        n_t = self._aead.aead.n_t
        seal_into = self._aead.seal_into
        view = memoryview(data)
        first = MAX_CHUNK_PLAINTEXT - len(head)
        if head:
            if first < 0:
                raise OhttpError("write_into: head longer than one chunk")
            pieces = [bytes(head) + bytes(view[:first])]
            view = view[first:]
        else:
            pieces = []
        for piece in pieces + [view[i:i + MAX_CHUNK_PLAINTEXT] for i in range(0, len(view), MAX_CHUNK_PLAINTEXT)]:
            n = len(piece)
            if not n:
                continue
            ct_len = n + n_t
            size = _varint_size(ct_len)
            buf[pos:pos + size] = encode_varint(ct_len)
            pos += size
            seal_into(CHUNK_AAD, piece, buf[pos:pos + ct_len])
            pos += ct_len
        return pos

    def finish(self, data: bytes = b"") -> bytes:
        """Everything left, ending with the final chunk.  Upstream always
        closes with an empty final chunk, which is what `finish()` sends."""
        data = bytes(data)
        split = max(0, len(data) - MAX_CHUNK_PLAINTEXT)
        out = self.write(data[:split])
        self._finished = True
        return out + b"\x00" + self._aead.seal(FINAL_CHUNK_AAD, data[split:])


class _ChunkReader:
    """Opens chunks fed in arbitrary slices; one chunk at most is buffered."""

    def __init__(self, aead: hpke.AeadContext):
        self._aead = aead
        self._buf = bytearray()
        self._final = False
        self._limit = MAX_CHUNK_PLAINTEXT + aead.aead.n_t

    def feed(self, data: bytes) -> bytes:
        parts = self.feed_parts(data)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def feed_parts(self, data) -> list[bytes]:
        """feed(), as the plaintext of each chunk completed (no join)."""
        if self._final:
            self._buf += data
            self._check_final_size()
            return []
        out: list[bytes] = []
        if self._buf:
            # complete the chunk begun in an earlier slice, then go on in `data`
            data = self._complete_pending(data, out)
            if data is None:
                return out
        view = memoryview(data)
        n = len(view)
        pos = 0
        limit = self._limit
        open_ = self._aead.open
        while pos < n:
            first = view[pos]
            size = 1 << (first >> 6)
            if pos + size > n:
                break
            length = first & 0x3F
            for i in range(pos + 1, pos + size):
                length = (length << 8) | view[i]
            after = pos + size
            if length == 0:
                self._final = True
                pos = after
                break
            if length > limit:
                raise OhttpError("OHTTP chunk too large")
            if n - after < length:
                break
            out.append(open_(CHUNK_AAD, view[after:after + length]))
            pos = after + length
        if pos < n:
            self._buf += view[pos:]
        if self._final:
            self._check_final_size()
        return out

    def _complete_pending(self, data, out: list[bytes]):
        """Top up the buffered partial chunk from `data`; the rest of `data`
        to parse (None when everything went into the buffer)."""
        view = memoryview(data)
        buf = self._buf
        got = read_varint(buf, 0)
        if got is None:
            # the length itself is split: borrow at most 8 bytes to finish it
            take = min(len(view), 8)
            probe = bytes(buf) + bytes(view[:take])
            got = read_varint(probe, 0)
            if got is None:
                buf += view
                return None
        length, after = got
        if length == 0:
            # only a length split across slices gets here (a whole one in the
            # buffer was seen by the loop): the final ciphertext follows it
            self._final = True
            rest = view[after - len(buf):]
            buf.clear()
            buf += rest
            self._check_final_size()
            return None
        if length > self._limit:
            raise OhttpError("OHTTP chunk too large")
        need = after + length - len(buf)
        if need > len(view):
            buf += view
            return None
        buf += view[:need]
        ct = bytes(buf[after:])
        buf.clear()
        out.append(self._aead.open(CHUNK_AAD, ct))
        return view[need:]

    def _check_final_size(self) -> None:
        if len(self._buf) > self._limit:
            raise OhttpError("final OHTTP chunk too large")

    def finish(self) -> bytes:
        if not self._final:
            raise OhttpError("OHTTP stream ended without its final chunk")
        ct, self._buf = bytes(self._buf), bytearray()
        return self._aead.open(FINAL_CHUNK_AAD, ct)


class _Decoder(abc.ABC):
    """feed()/finish() around a _ChunkReader that exists once the prefix is in;
    any failure sticks, so a tampered stream cannot be resumed."""

    def __init__(self, prefix_len: int):
        self._prefix_len = prefix_len
        self._pending = bytearray()
        self._reader: _ChunkReader | None = None
        self._failed = False
        self._done = False

    @abc.abstractmethod
    def _on_prefix(self, prefix: bytes) -> hpke.AeadContext:
        """The AEAD that opens the chunks, from the header (request) or nonce (response)."""

    def feed(self, data: bytes) -> bytes:
        """Plaintext of every chunk completed by `data` (maybe empty)."""
        if self._failed or self._done:
            raise OhttpError("decoder already failed" if self._failed else "data after finish")
        try:
            if self._reader is None:
                self._pending += data
                if len(self._pending) < self._prefix_len:
                    return b""
                prefix = bytes(self._pending[:self._prefix_len])
                data, self._pending = bytes(self._pending[self._prefix_len:]), bytearray()
                self._reader = _ChunkReader(self._on_prefix(prefix))
            return self._reader.feed(data)
        except OhttpError:
            self._failed = True
            raise

    def feed_parts(self, data) -> list[bytes]:
        """feed(), as the plaintext of each chunk completed (not joined)."""
        if self._reader is None:
            plain = self.feed(data)
            return [plain] if plain else []
        if self._failed or self._done:
            raise OhttpError("decoder already failed" if self._failed else "data after finish")
        try:
            return self._reader.feed_parts(data)
        except OhttpError:
            self._failed = True
            raise

    def finish(self) -> bytes:
        """At end of stream: the final chunk's plaintext; OhttpError if the
        stream is truncated or the final chunk does not authenticate."""
        if self._failed or self._done:
            raise OhttpError("decoder already failed" if self._failed else "finish called twice")
        try:
            if self._reader is None:
                raise OhttpError("OHTTP stream ended inside its header")
            out = self._reader.finish()
        except OhttpError:
            self._failed = True
            raise
        self._done = True
        return out


# --- client side --------------------------------------------------------------

class _Encoder:
    """What both encoders offer, around their _ChunkWriter (`self._writer`)."""

    _writer: _ChunkWriter

    def start(self) -> bytes:
        return self._writer.start()

    def write(self, data: bytes) -> bytes:
        return self._writer.write(data)

    def sealed_size(self, n: int) -> int:
        """Bytes that `write` makes of `n` plaintext bytes."""
        return sealed_size(n, self._writer._aead.aead.n_t)

    def write_into(self, buf: memoryview, pos: int, head: bytes, data) -> int:
        """`write(head + data)` into `buf` at `pos`, without copying `data`
        (after `start`); the position after the chunks."""
        return self._writer.write_into(buf, pos, head, data)

    def finish(self, data: bytes = b"") -> bytes:
        return self._writer.finish(data)


class ChunkedRequestEncoder(_Encoder):
    """Client: encapsulates a request body as it is produced.

    `start()` gives the header early if wanted; `write()` returns chunks,
    `finish()` the final chunk.  `response_decoder()` opens the answer.
    """

    def __init__(self, key_config: KeyConfig, *, suite: SymmetricSuite | None = None,
                 sender_private_key: bytes | None = None, _sk_e: bytes | None = None):
        prefix, self._enc, self._ctx = encap.setup_sender(
            key_config, REQUEST_LABEL, suite=suite, sender_private_key=sender_private_key, _sk_e=_sk_e)
        self._writer = _ChunkWriter(self._ctx, prefix)


    def response_decoder(self) -> "ChunkedResponseDecoder":
        return ChunkedResponseDecoder(self._ctx, self._enc)


class ChunkedResponseDecoder(_Decoder):
    """Client: opens a chunked response fed in arbitrary slices."""

    def __init__(self, ctx: hpke.HpkeContext, enc: bytes):
        super().__init__(encap.response_nonce_length(ctx.aead))
        self._ctx = ctx
        self._enc = enc

    def _on_prefix(self, prefix: bytes) -> hpke.AeadContext:
        return encap.response_aead(self._ctx, RESPONSE_LABEL, self._enc, prefix)


# --- gateway side ---------------------------------------------------------------

class ChunkedRequestDecoder(_Decoder):
    """Gateway: opens a chunked request fed in arbitrary slices.

    `keys` is one KeyPair, several, or a {key_id: KeyPair} mapping; the
    request header picks one.  With `sender_public_key` the request must be
    sealed in HPKE auth mode by that client key.
    """

    def __init__(self, keys: encap.Keys, *, sender_public_key: bytes | None = None):
        super().__init__(encap.REQUEST_HEADER_LEN + hpke.N_ENC)
        self._keys = keys
        self._sender_public_key = sender_public_key
        self.header: encap.RequestHeader | None = None
        self._ctx: hpke.HpkeContext | None = None
        self._enc = b""

    def _on_prefix(self, prefix: bytes) -> hpke.AeadContext:
        header = encap.RequestHeader.parse(prefix[:encap.REQUEST_HEADER_LEN])
        hpke.check_suite(header.kem_id, header.kdf_id, header.aead_id)
        enc = prefix[encap.REQUEST_HEADER_LEN:]
        self._ctx = encap.setup_recipient(self._keys, header, enc, REQUEST_LABEL,
                                          sender_public_key=self._sender_public_key)
        self.header, self._enc = header, enc
        return self._ctx

    @property
    def ready(self) -> bool:
        """Whether the header is in, so a response can be started."""
        return self._ctx is not None

    def response_encoder(self, *, _nonce: bytes | None = None) -> "ChunkedResponseEncoder":
        if self._ctx is None:
            raise OhttpError("request header not received yet")
        return ChunkedResponseEncoder(self._ctx, self._enc, _nonce=_nonce)


class ChunkedResponseEncoder(_Encoder):
    """Gateway: encapsulates a response body as it is produced; the random
    response nonce goes out in front of the first chunk."""

    def __init__(self, ctx: hpke.HpkeContext, enc: bytes, *, _nonce: bytes | None = None):
        nonce = encap.new_response_nonce(ctx) if _nonce is None else _nonce
        self._writer = _ChunkWriter(encap.response_aead(ctx, RESPONSE_LABEL, enc, nonce), nonce)
