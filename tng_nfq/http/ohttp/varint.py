"""QUIC variable-length integers (RFC 9000 §16), used by BHTTP and chunk framing.

The two high bits of the first byte give the length (1, 2, 4 or 8 bytes); the
rest is the value, big-endian.  Decoding is incremental: `read_varint` answers
None when the buffer does not yet hold the whole integer, so a streaming
decoder can simply wait for more bytes.
"""

from __future__ import annotations

from tng_nfq.http.ohttp.errors import OhttpError

MAX_VARINT = (1 << 62) - 1


def encode_varint(value: int) -> bytes:
    """Shortest encoding of `value` (0 <= value < 2**62)."""
    if value < 0 or value > MAX_VARINT:
        raise OhttpError(f"varint out of range: {value}")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if `buf` ends inside the integer.

    Non-minimal encodings are accepted, as RFC 9000 allows them.
    """
    if pos >= len(buf):
        return None
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size
