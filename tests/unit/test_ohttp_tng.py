"""TNG's layer around chunked OHTTP (tng_nfq/http/ohttp/tng.py), fed with bytes:
metadata protobuf (against bytes captured from upstream tng 2.12,
docs/ohttp-wire.md §3.1), key-config JSON, and the tunnel body framing."""

import base64
import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.ohttp.chunked import ChunkedRequestEncoder
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyPair
from tng_nfq.http.ohttp.tng import (
    HpkeKeyConfig,
    KeyConfigRequest,
    KeyConfigResponse,
    Metadata,
    TunnelBodyDecoder,
    key_config_request,
    tunnel_body_prefix,
)

PK = bytes.fromhex("3a2273351bcba568f395c4debc20812bfe47ff8e4a2dd829edaa1e7880976968")
# what upstream 2.12's no_ra ingress sent (38 bytes): no_auth + key_config_hint
UPSTREAM_NO_AUTH = bytes.fromhex("0a00" "1a22" "0a20") + PK


def test_no_auth_metadata_is_byte_identical_to_upstreams():
    assert Metadata(key_hint=PK).encode() == UPSTREAM_NO_AUTH
    assert Metadata.decode(UPSTREAM_NO_AUTH) == Metadata(key_hint=PK)
    assert tunnel_body_prefix(Metadata(key_hint=PK)) == struct.pack(">I", 38) + UPSTREAM_NO_AUTH


def test_attested_metadata_round_trip():
    md = Metadata(attestation_result="eyJ.x.y", pk_s=b"k" * 32, key_hint=PK, as_provider="coco")
    assert Metadata.decode(md.encode()) == md


@pytest.mark.parametrize("raw", [b"", b"\x1a\x22\x0a\x20" + PK, b"\xff\xff", b"\x0a\x05ab"])
def test_bad_metadata(raw):
    with pytest.raises(OhttpError):
        Metadata.decode(raw)


def test_key_config_requests():
    assert key_config_request(None) == {"attestation_request": None}
    assert KeyConfigRequest.parse(json.dumps(key_config_request("passport")).encode()) == KeyConfigRequest("passport")
    bg = KeyConfigRequest.parse(json.dumps(key_config_request("background_check", "jwt")).encode())
    assert bg == KeyConfigRequest("background_check", "jwt")
    for bad in (b"[]", b"{", b'{"attestation_request": {"model": "x"}}',
                b'{"attestation_request": {"model": "background_check"}}'):
        with pytest.raises(OhttpError):
            KeyConfigRequest.parse(bad)


def test_key_config_response_as_upstream_writes_it():
    raw = (b'{"hpke_key_config":{"expire_timestamp":1795764064,"encoded_key_config_list":'
           b'"AC0AACA6InM1G8ulaPOVxN68IIEr/kf/jkot2Cntqh54gJdpaAAIAAEAAQABAAM="},"attestation_info":null}')
    resp = KeyConfigResponse.parse(raw)
    (config,) = resp.hpke_key_config.configs()
    assert (config.key_id, config.public_key) == (0, PK)
    assert [(s.kdf_id, s.aead_id) for s in config.suites] == [(1, 1), (1, 3)]
    assert resp.attestation_result is None and resp.evidence is None
    assert json.loads(json.dumps(resp.as_json())) == json.loads(raw)


def test_key_config_response_attestation_info():
    hkc = HpkeKeyConfig.for_keys([KeyPair.generate()], now=1000)
    assert hkc.expire_timestamp == 1300
    passport = KeyConfigResponse.parse(json.dumps(KeyConfigResponse(hkc, attestation_result="t").as_json()).encode())
    assert passport.attestation_result == "t"
    ev = {"aa_tee_type": "sample"}
    bg = KeyConfigResponse.parse(json.dumps({"hpke_key_config": hkc.as_json(),
                                             "attestation_info": {"model": "background_check", "evidence": ev,
                                                                  "aa_provider": "coco"}}).encode())
    assert bg.evidence == ev
    for info in ({"model": "passport"}, {"model": "background_check"}, {"model": "other"}, 5):
        with pytest.raises(OhttpError):
            KeyConfigResponse.parse(json.dumps({"hpke_key_config": hkc.as_json(), "attestation_info": info}).encode())
    with pytest.raises(OhttpError):
        HpkeKeyConfig(1, "not base64!").configs()
    with pytest.raises(OhttpError):
        HpkeKeyConfig(1, base64.b64encode(b"").decode()).configs()


def _tunnel_body(pair: KeyPair, plaintext: bytes, metadata: Metadata) -> bytes:
    enc = ChunkedRequestEncoder(pair.config)
    return tunnel_body_prefix(metadata) + enc.start() + enc.write(plaintext) + enc.finish()


@settings(max_examples=60)
@given(st.binary(max_size=40000), st.integers(min_value=1, max_value=5000))
def test_tunnel_body_in_any_slices(plaintext, step):
    pair = KeyPair.generate(key_id=3)
    body = _tunnel_body(pair, plaintext, Metadata(key_hint=pair.config.public_key))
    seen = []
    dec = TunnelBodyDecoder(lambda md: (seen.append(md) or [pair], None))
    out = b"".join(dec.feed(body[i:i + step]) for i in range(0, len(body), step)) + dec.finish()
    assert out == plaintext and seen == [Metadata(key_hint=pair.config.public_key)]


def test_tunnel_body_errors():
    pair = KeyPair.generate()
    with pytest.raises(OhttpError, match="limit"):
        TunnelBodyDecoder(lambda md: ([pair], None)).feed(struct.pack(">I", 1 << 20))
    dec = TunnelBodyDecoder(lambda md: ([pair], None))
    dec.feed(struct.pack(">I", 10) + b"\x0a")
    with pytest.raises(OhttpError, match="metadata"):
        dec.finish()
    other = KeyPair.generate()
    body = _tunnel_body(other, b"x", Metadata(key_hint=other.config.public_key))
    with pytest.raises(OhttpError):
        d = TunnelBodyDecoder(lambda md: ([pair], None))
        d.feed(body)
        d.finish()


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_ohttp_error(data):
    dec = TunnelBodyDecoder(lambda md: ([KeyPair.generate()], None))
    try:
        dec.feed(data)
        dec.finish()
    except OhttpError:
        pass
