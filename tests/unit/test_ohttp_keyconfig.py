"""OHTTP key configurations (RFC 9458 §3), with the RFC 9458 Appendix A config."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.ohttp import OhttpError, hpke
from tng_nfq.http.ohttp.keyconfig import (
    KeyConfig, KeyPair, SymmetricSuite, encode_key_config_list, parse_key_config_list,
)

h = bytes.fromhex
# RFC 9458 Appendix A: key id 1, X25519, suites (HKDF-SHA256, AES-128-GCM) and
# (HKDF-SHA256, ChaCha20Poly1305), and the gateway's private key.
RFC_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003")
RFC_SKR = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")


def test_parse_rfc9458_example():
    config = KeyConfig.parse(RFC_CONFIG)
    assert config.key_id == 1
    assert config.kem_id == 0x0020
    assert config.public_key == h("31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155")
    assert config.suites == (SymmetricSuite(1, 1), SymmetricSuite(1, 3))
    assert config.encode() == RFC_CONFIG
    assert config.select() == SymmetricSuite(1, 1)
    assert config.supports(1, 3) and not config.supports(1, 2)


def test_keypair_from_rfc_private_key_reproduces_config():
    pair = KeyPair.from_private_key(RFC_SKR, 1, [SymmetricSuite(1, 1), SymmetricSuite(1, 3)])
    assert pair.config.encode() == RFC_CONFIG
    assert pair.key_id == 1
    assert "3c1689" not in repr(pair)  # the private key stays out of logs


def test_generate_and_list_roundtrip():
    a, b = KeyPair.generate(7), KeyPair.generate(8, [SymmetricSuite(1, 2)])
    data = encode_key_config_list([a.config, b.config])
    assert data[:2] == struct.pack("!H", len(a.config.encode()))
    assert parse_key_config_list(data) == [a.config, b.config]
    assert hpke.public_key_of(a.private_key) == a.config.public_key


def test_list_skips_unknown_kem_but_keeps_the_rest():
    unknown = b"\x05\x99\x99" + b"\x00" * 10
    data = struct.pack("!H", len(unknown)) + unknown + encode_key_config_list([KeyConfig.parse(RFC_CONFIG)])
    assert parse_key_config_list(data) == [KeyConfig.parse(RFC_CONFIG)]


def test_select_skips_unsupported_suites():
    config = KeyConfig(3, 0x0020, b"\x09" * 32, (SymmetricSuite(2, 1), SymmetricSuite(1, 9), SymmetricSuite(1, 2)))
    assert config.select() == SymmetricSuite(1, 2)
    with pytest.raises(OhttpError):
        KeyConfig(3, 0x0020, b"\x09" * 32, (SymmetricSuite(2, 1),)).select()
    with pytest.raises(OhttpError):
        KeyConfig(3, 0x0010, b"\x04" * 65, (SymmetricSuite(1, 1),)).select()


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"\x01\x00\x20", RFC_CONFIG[:-1], RFC_CONFIG + b"\x00",
    RFC_CONFIG[:35] + b"\x00\x00",  # empty suite list
    RFC_CONFIG[:35] + b"\x00\x03\x00\x01\x00",  # suite list not a multiple of 4
    b"\x01\x12\x34" + b"\x00" * 40,  # unknown KEM
])
def test_malformed_single_config(data):
    with pytest.raises(OhttpError):
        KeyConfig.parse(data)


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x05\x01", struct.pack("!H", len(RFC_CONFIG) + 1) + RFC_CONFIG + b"\x00"])
def test_malformed_list(data):
    with pytest.raises(OhttpError):
        parse_key_config_list(data)


def test_bad_construction():
    with pytest.raises(OhttpError):
        KeyConfig(256, 0x20, b"\x00" * 32, (SymmetricSuite(1, 1),))
    with pytest.raises(OhttpError):
        KeyConfig(1, 0x20, b"\x00" * 31, (SymmetricSuite(1, 1),))
    with pytest.raises(OhttpError):
        KeyConfig(1, 0x20, b"\x00" * 32, ())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_only_ohttp_error(data):
    for parse in (KeyConfig.parse, parse_key_config_list):
        try:
            parse(data)
        except OhttpError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(RFC_CONFIG) - 1), st.integers(0, 255))
def test_mutated_rfc_config_only_ohttp_error(index, value):
    data = bytearray(RFC_CONFIG)
    data[index] = value
    try:
        KeyConfig.parse(bytes(data))
    except OhttpError:
        pass
