"""What RFC 9458 encapsulation and its chunked variant share.

Request: a 7-byte header (key_id u8, kem_id u16, kdf_id u16, aead_id u16)
then HPKE `enc`; the HPKE info is `label || 0x00 || header`, so the header is
authenticated.  The label is "message/bhttp request" (RFC 9458 §4.3) or
"message/bhttp chunked request" (chunked draft).

Response (RFC 9458 §4.4, reused by the chunked draft with its own label):
    secret   = context.Export(label, max(Nn, Nk))
    salt     = enc || response_nonce        (response_nonce: max(Nn, Nk) random bytes)
    prk      = HKDF-Extract(salt, secret)
    key      = HKDF-Expand(prk, "key", Nk);  nonce = HKDF-Expand(prk, "nonce", Nn)
The response AEAD then counts messages like an HPKE context (nonce XOR seq),
which is how upstream's crate seals successive response chunks.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

from tng_nfq.http.ohttp import hpke
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyConfig, KeyPair, SymmetricSuite

REQUEST_HEADER_LEN = 7

Keys = Union[KeyPair, Iterable[KeyPair], Mapping[int, KeyPair]]


@dataclass(frozen=True)
class RequestHeader:
    key_id: int
    kem_id: int
    kdf_id: int
    aead_id: int

    def encode(self) -> bytes:
        return struct.pack("!BHHH", self.key_id, self.kem_id, self.kdf_id, self.aead_id)

    @classmethod
    def parse(cls, data: bytes) -> "RequestHeader":
        if len(data) != REQUEST_HEADER_LEN:
            raise OhttpError("truncated OHTTP request header")
        return cls(*struct.unpack("!BHHH", bytes(data)))


def build_info(label: bytes, header: RequestHeader) -> bytes:
    return label + b"\x00" + header.encode()


def response_nonce_length(aead: hpke.AeadAlgorithm) -> int:
    return max(aead.n_n, aead.n_k)


def setup_sender(key_config: KeyConfig, label: bytes, *, suite: SymmetricSuite | None = None,
                 sender_private_key: bytes | None = None,
                 _sk_e: bytes | None = None) -> tuple[bytes, bytes, hpke.HpkeContext]:
    """(header||enc, enc, sender context) for a request to `key_config`.

    With `sender_private_key`, HPKE auth mode binds the client's static key
    (upstream's ohttp fork offers this); without it, base mode.
    """
    if suite is None:
        suite = key_config.select()
    elif not key_config.supports(suite.kdf_id, suite.aead_id):
        raise OhttpError("suite not offered by the key configuration or not supported")
    hpke.check_suite(key_config.kem_id, suite.kdf_id, suite.aead_id)
    header = RequestHeader(key_config.key_id, key_config.kem_id, suite.kdf_id, suite.aead_id)
    info = build_info(label, header)
    if sender_private_key is None:
        enc, ctx = hpke.setup_base_sender(key_config.public_key, info, suite.aead_id, sk_e=_sk_e)
    else:
        enc, ctx = hpke.setup_auth_sender(key_config.public_key, info, sender_private_key,
                                          suite.aead_id, sk_e=_sk_e)
    return header.encode() + enc, enc, ctx


def find_key(keys: Keys, header: RequestHeader) -> KeyPair:
    """The gateway key the header names, checked to offer the header's suite."""
    if isinstance(keys, KeyPair):
        candidates: Iterable[KeyPair] = (keys,)
    elif isinstance(keys, Mapping):
        found = keys.get(header.key_id)
        candidates = (found,) if found is not None else ()
    else:
        candidates = keys
    for pair in candidates:
        if pair.config.key_id != header.key_id:
            continue
        if pair.config.kem_id != header.kem_id:
            raise OhttpError("request KEM does not match the key configuration")
        if not pair.config.supports(header.kdf_id, header.aead_id):
            raise OhttpError("request suite not offered by the key configuration")
        return pair
    raise OhttpError(f"unknown OHTTP key id {header.key_id}")


def setup_recipient(keys: Keys, header: RequestHeader, enc: bytes, label: bytes, *,
                    sender_public_key: bytes | None = None) -> hpke.HpkeContext:
    pair = find_key(keys, header)
    info = build_info(label, header)
    if sender_public_key is None:
        return hpke.setup_base_recipient(enc, pair.private_key, info, header.aead_id)
    return hpke.setup_auth_recipient(enc, pair.private_key, info, sender_public_key,
                                     header.aead_id)


def response_aead(ctx: hpke.HpkeContext, label: bytes, enc: bytes,
                  response_nonce: bytes) -> hpke.AeadContext:
    """The AEAD protecting the response, from the request's HPKE context."""
    aead = ctx.aead
    if len(response_nonce) != response_nonce_length(aead):
        raise OhttpError("response nonce has the wrong length")
    secret = ctx.export(label, response_nonce_length(aead))
    prk = hpke.hkdf_extract(enc + response_nonce, secret)
    key = hpke.hkdf_expand(prk, b"key", aead.n_k)
    nonce = hpke.hkdf_expand(prk, b"nonce", aead.n_n)
    return hpke.AeadContext(aead, key, nonce)


def new_response_nonce(ctx: hpke.HpkeContext) -> bytes:
    return os.urandom(response_nonce_length(ctx.aead))
