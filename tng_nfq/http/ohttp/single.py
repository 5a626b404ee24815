"""Single-shot Oblivious HTTP encapsulation (RFC 9458 §4.3-§4.4).

Request:  header (7) || enc || HPKE Seal(aad="", request)   (message/ohttp-req)
Response: response_nonce || AEAD Seal(aad="", response)     (message/ohttp-res)

Upstream streams with the chunked variant (chunked.py); this form is kept
because it shares every derivation with it and RFC 9458 Appendix A gives a
complete worked example to test those derivations against.
"""

from __future__ import annotations

from tng_nfq.http.ohttp import encap, hpke
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyConfig, SymmetricSuite

REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"


class ClientResponseContext:
    """Client state kept after sending a request, to open its response."""

    def __init__(self, ctx: hpke.HpkeContext, enc: bytes):
        self._ctx = ctx
        self._enc = enc

    def decapsulate_response(self, enc_response: bytes) -> bytes:
        n = encap.response_nonce_length(self._ctx.aead)
        if len(enc_response) < n + self._ctx.aead.n_t:
            raise OhttpError("truncated encapsulated response")
        aead = encap.response_aead(self._ctx, RESPONSE_LABEL, self._enc, bytes(enc_response[:n]))
        return aead.open(b"", bytes(enc_response[n:]))


class ServerResponseContext:
    """Gateway state kept after opening a request, to seal its response."""

    def __init__(self, ctx: hpke.HpkeContext, enc: bytes):
        self._ctx = ctx
        self._enc = enc

    def encapsulate_response(self, response: bytes, *, _nonce: bytes | None = None) -> bytes:
        nonce = encap.new_response_nonce(self._ctx) if _nonce is None else _nonce
        aead = encap.response_aead(self._ctx, RESPONSE_LABEL, self._enc, nonce)
        return nonce + aead.seal(b"", response)


def encapsulate_request(key_config: KeyConfig, request: bytes, *,
                        suite: SymmetricSuite | None = None,
                        sender_private_key: bytes | None = None,
                        _sk_e: bytes | None = None) -> tuple[bytes, ClientResponseContext]:
    prefix, enc, ctx = encap.setup_sender(key_config, REQUEST_LABEL, suite=suite,
                                          sender_private_key=sender_private_key, _sk_e=_sk_e)
    return prefix + ctx.seal(b"", request), ClientResponseContext(ctx, enc)


def decapsulate_request(keys: encap.Keys, enc_request: bytes, *,
                        sender_public_key: bytes | None = None) -> tuple[bytes, ServerResponseContext]:
    data = bytes(enc_request)
    header = encap.RequestHeader.parse(data[:encap.REQUEST_HEADER_LEN])
    hpke.check_suite(header.kem_id, header.kdf_id, header.aead_id)
    end_enc = encap.REQUEST_HEADER_LEN + hpke.N_ENC
    if len(data) < end_enc:
        raise OhttpError("truncated encapsulated request")
    enc = data[encap.REQUEST_HEADER_LEN:end_enc]
    ctx = encap.setup_recipient(keys, header, enc, REQUEST_LABEL, sender_public_key=sender_public_key)
    return ctx.open(b"", data[end_enc:]), ServerResponseContext(ctx, enc)
