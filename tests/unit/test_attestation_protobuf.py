import pytest
from hypothesis import given, strategies as st

from tng_nfq.attestation.protobuf import (
    ProtobufError, decode_message, decode_varint, encode_message, encode_varint,
    get_bool, get_bytes, get_int, get_message, get_repeated_messages,
    get_repeated_strings, get_string,
)

field_numbers = st.integers(min_value=1, max_value=(1 << 29) - 1)
values = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.binary(max_size=64),
    st.text(max_size=32),
)


def _raw(value):
    """What decode_message returns for an encoded value."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and value < 0:
        return value + (1 << 64)
    return value


@given(st.lists(st.tuples(field_numbers, values), max_size=20))
def test_round_trip(pairs):
    decoded = decode_message(encode_message(pairs))
    expected: dict = {}
    for number, value in pairs:
        expected.setdefault(number, []).append(_raw(value))
    assert decoded == expected


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varint_round_trip(n):
    enc = encode_varint(n)
    assert len(enc) <= 10
    assert decode_varint(enc) == (n, len(enc))


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_signed_int_round_trip(n):
    assert get_int(decode_message(encode_message([(4, n)])), 4) == n


@given(st.binary(max_size=200))
def test_decoder_never_crashes_unexpectedly(data):
    try:
        decode_message(data)
    except ProtobufError:
        pass


def test_known_encodings():
    # protobuf documentation's example: field 1 varint 150 -> 08 96 01
    assert encode_message([(1, 150)]) == bytes.fromhex("089601")
    assert encode_message([(2, "testing")]) == bytes.fromhex("120774657374696e67")
    assert encode_message([(1, -1)]) == bytes.fromhex("08ffffffffffffffffff01")
    assert encode_message([(3, True), (4, None)]) == bytes.fromhex("1801")


def test_nested_and_repeated():
    kv1 = encode_message([(1, "k1"), (2, "v1")])
    kv2 = encode_message([(1, "k2"), (2, "v2")])
    msg = decode_message(encode_message([(5, kv1), (5, kv2), (1, "svc")]))
    assert [get_string(m, 1) for m in get_repeated_messages(msg, 5)] == ["k1", "k2"]
    assert get_string(msg, 1) == "svc"
    assert get_repeated_strings(msg, 1) == ["svc"]
    # a singular message field given twice is merged
    merged = get_message(msg, 5)
    assert get_string(merged, 1) == "k2"
    assert get_message(msg, 9) is None


def test_defaults_and_last_wins():
    msg = decode_message(encode_message([(1, 1), (1, 2), (2, b"a")]))
    assert get_int(msg, 1) == 2
    assert get_int(msg, 7, default=42) == 42
    assert get_string(msg, 7) == ""
    assert get_bytes(msg, 7) == b""
    assert get_bytes(msg, 2) == b"a"
    assert get_bool(msg, 1) is True


def test_fixed_widths_decode_as_ints():
    # field 1 fixed64 = 1, field 2 fixed32 = 0x01020304
    data = bytes([0x09]) + (1).to_bytes(8, "little") + bytes([0x15]) + bytes([4, 3, 2, 1])
    msg = decode_message(data)
    assert msg == {1: [1], 2: [0x01020304]}


@pytest.mark.parametrize("data, fragment", [
    (bytes([0x08]), "truncated varint"),
    (bytes([0x08]) + b"\xff" * 11, "longer than 10"),
    (bytes([0x08]) + b"\xff" * 9 + b"\x02", "exceeds 64 bits"),
    (bytes([0x0a, 0x05, 0x61]), "runs past the end"),
    (bytes([0x0b]), "unsupported wire type 3"),
    (bytes([0x0c]), "unsupported wire type 4"),
    (bytes([0x0e]), "unsupported wire type 6"),
    (bytes([0x09, 0, 0]), "truncated fixed64"),
    (bytes([0x0d, 0]), "truncated fixed32"),
    (bytes([0x00, 0x01]), "invalid field number 0"),
])
def test_malformed(data, fragment):
    with pytest.raises(ProtobufError, match=fragment):
        decode_message(data)


def test_type_mismatch_in_getters():
    msg = decode_message(encode_message([(1, 5), (2, b"\xff")]))
    with pytest.raises(ProtobufError):
        get_string(msg, 1)
    with pytest.raises(ProtobufError):
        get_int(msg, 2)
    with pytest.raises(ProtobufError, match="UTF-8"):
        get_string(msg, 2)
    with pytest.raises(ProtobufError):
        get_message(msg, 1)


def test_unencodable():
    with pytest.raises(ProtobufError):
        encode_message([(1, 1.5)])
    with pytest.raises(ProtobufError):
        encode_message([(0, 1)])
    with pytest.raises(ProtobufError):
        encode_message([(1, 1 << 64)])
