"""A minimal protocol-buffers wire codec, enough for the handful of CoCo
messages we exchange (ttrpc envelopes, Attestation Agent and Attestation
Service requests).

Messages are described by the caller, not by generated classes: encoding takes
a list of ``(field_number, value)`` pairs, decoding returns
``{field_number: [raw values]}``.  A repeated field is simply the same number
given several times; for a singular field the last value wins (as protobuf
specifies), which is what the ``get_*`` helpers return.

Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.  Groups
(3/4) are deprecated and never used by these services, so they are rejected.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Union

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2
WIRE_FIXED32 = 5

MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_VARINT_BYTES = 10

Value = Union[int, bool, bytes, bytearray, memoryview, str]
Fields = Mapping[int, list]


class ProtobufError(ValueError):
    """Malformed or truncated protobuf input, or an unencodable value."""


def encode_varint(value: int) -> bytes:
    """Encode an int as a varint; negatives as 64-bit two's complement, as
    protobuf does for int32/int64 (10 bytes)."""
    if value < 0:
        if value < -(1 << 63):
            raise ProtobufError(f"integer {value} does not fit in int64")
        value += 1 << 64
    elif value >= 1 << 64:
        raise ProtobufError(f"integer {value} does not fit in uint64")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode one unsigned varint at ``pos``; returns (value, new position)."""
    result = 0
    shift = 0
    end = len(data)
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # A 10-byte varint may only carry the top bit of a 64-bit value.
            if result >= 1 << 64:
                raise ProtobufError("varint exceeds 64 bits")
            return result, pos
        shift += 7
    raise ProtobufError("varint longer than 10 bytes")


def to_signed64(value: int) -> int:
    """Reinterpret a decoded varint as int64/int32 (negative numbers are
    sent sign-extended to 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _key(field_number: int, wire_type: int) -> bytes:
    if not 1 <= field_number <= MAX_FIELD_NUMBER:
        raise ProtobufError(f"invalid field number {field_number}")
    return encode_varint((field_number << 3) | wire_type)


def encode_message(fields: Iterable[tuple[int, Value]]) -> bytes:
    """Encode ``(field_number, value)`` pairs in the given order.

    int/bool -> varint (int32/int64/uint64/bool/enum); bytes-like -> bytes
    (also a nested message, already encoded); str -> UTF-8 string.  ``None``
    values are skipped, so optional fields can be written inline.
    """
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, bool):
            out += _key(number, WIRE_VARINT) + encode_varint(int(value))
        elif isinstance(value, int):
            out += _key(number, WIRE_VARINT) + encode_varint(value)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
            out += _key(number, WIRE_LEN) + encode_varint(len(raw)) + raw
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            out += _key(number, WIRE_LEN) + encode_varint(len(raw)) + raw
        else:
            raise ProtobufError(f"field {number}: cannot encode {type(value).__name__}")
    return bytes(out)


def decode_message(data: bytes | bytearray | memoryview) -> dict[int, list]:
    """Decode a message into ``{field_number: [raw values in wire order]}``.

    Varints come back as non-negative ints (see ``to_signed64``), fixed32 /
    fixed64 as little-endian unsigned ints, length-delimited fields as bytes
    (string, bytes and nested messages look the same on the wire; the
    ``get_*`` helpers interpret them).
    """
    data = bytes(data)
    fields: dict[int, list] = {}
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = decode_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise ProtobufError(f"invalid field number {number}")
        if wire_type == WIRE_VARINT:
            value, pos = decode_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = decode_varint(data, pos)
            if length > end - pos:
                raise ProtobufError(
                    f"field {number}: length {length} runs past the end of the message")
            value = data[pos:pos + length]
            pos += length
        elif wire_type == WIRE_FIXED64:
            if end - pos < 8:
                raise ProtobufError(f"field {number}: truncated fixed64")
            value = int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire_type == WIRE_FIXED32:
            if end - pos < 4:
                raise ProtobufError(f"field {number}: truncated fixed32")
            value = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        else:
            raise ProtobufError(f"field {number}: unsupported wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields: Fields, number: int):
    values = fields.get(number)
    return values[-1] if values else None


def get_bytes(fields: Fields, number: int, default: bytes = b"") -> bytes:
    value = _last(fields, number)
    if value is None:
        return default
    if not isinstance(value, bytes):
        raise ProtobufError(f"field {number}: expected length-delimited, got varint/fixed")
    return value


def get_string(fields: Fields, number: int, default: str = "") -> str:
    value = _last(fields, number)
    if value is None:
        return default
    if not isinstance(value, bytes):
        raise ProtobufError(f"field {number}: expected string, got varint/fixed")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"field {number}: string is not valid UTF-8") from exc


def get_int(fields: Fields, number: int, default: int = 0, signed: bool = True) -> int:
    """The last value of an integer field; ``signed`` reads it as int32/int64."""
    value = _last(fields, number)
    if value is None:
        return default
    if not isinstance(value, int):
        raise ProtobufError(f"field {number}: expected integer, got length-delimited")
    return to_signed64(value) if signed else value


def get_bool(fields: Fields, number: int, default: bool = False) -> bool:
    return bool(get_int(fields, number, int(default), signed=False))


def get_message(fields: Fields, number: int) -> dict[int, list] | None:
    """The nested message in field ``number`` decoded, or None if absent.

    Protobuf merges repeated occurrences of a singular message field; the
    concatenation of the encodings decodes to exactly that merge.
    """
    values = fields.get(number)
    if not values:
        return None
    if not all(isinstance(v, bytes) for v in values):
        raise ProtobufError(f"field {number}: expected a message, got varint/fixed")
    return decode_message(b"".join(values))


def get_repeated_messages(fields: Fields, number: int) -> list[dict[int, list]]:
    out = []
    for value in fields.get(number, []):
        if not isinstance(value, bytes):
            raise ProtobufError(f"field {number}: expected a message, got varint/fixed")
        out.append(decode_message(value))
    return out


def get_repeated_strings(fields: Fields, number: int) -> list[str]:
    out = []
    for value in fields.get(number, []):
        if not isinstance(value, bytes):
            raise ProtobufError(f"field {number}: expected string, got varint/fixed")
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtobufError(f"field {number}: string is not valid UTF-8") from exc
    return out
