"""TLS contexts for the rats-tls tunnel (TNG 2.x wire format).

TLS 1.3 only, ALPN `rats-tls`, no hostname checks. Certificates are never
validated by OpenSSL: every peer certificate is accepted during the
handshake and judged afterwards by the attestation layer (or not at all
under `no_ra`). That is also why this is pyOpenSSL and not the stdlib `ssl`
module: only a verify callback lets a server request an unknown self-signed
client certificate without rejecting it.

Servers keep no session state (no cache, no tickets usable for resumption),
so every connection runs a full handshake and is attested afresh.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL._util import ffi, lib

ALPN_RATS_TLS = b"rats-tls"


@dataclass(frozen=True)
class Identity:
    """The certificate and key an endpoint presents."""

    cert: x509.Certificate
    key: PrivateKeyTypes
    attested: bool  # carries evidence (False: the fixed no_ra certificate)

    @classmethod
    def from_objects(cls, cert: x509.Certificate, key: PrivateKeyTypes, attested: bool) -> "Identity":
        return cls(cert, key, attested)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, attested: bool) -> "Identity":
        return cls(x509.load_pem_x509_certificate(cert_pem),
                   serialization.load_pem_private_key(key_pem, password=None), attested)


@functools.cache
def no_ra_identity() -> Identity:
    """The fixed, public P-256 certificate used under `no_ra` (debug only).

    Also presented by a server that verifies but does not attest (reverse
    one-way attestation), as upstream does with its embedded dummy cert.
    """
    data = resources.files("tng_nfq") / "data"
    return Identity.from_pem((data / "no_ra_cert.pem").read_bytes(),
                             (data / "no_ra_key.pem").read_bytes(), attested=False)


def _accept_any_certificate(conn, cert, errnum, depth, ok) -> bool:
    # Attestation, not PKI, decides trust; it runs right after the handshake.
    return True


def _base_context(identity: Identity | None) -> SSL.Context:
    # One context per identity: an attester gets a new context when its
    # evidence is refreshed (loading a key into OpenSSL per connection would
    # cost more than the handshake's own crypto).
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    if identity is not None:
        ctx.use_certificate(identity.cert)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
    return ctx


def client_context(identity: Identity | None = None) -> SSL.Context:
    """Context for the ingress side (TLS client).

    `identity` is given when the client attests itself (reverse one-way or
    two-way): it answers the server's certificate request with it.
    """
    ctx = _base_context(identity)
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    ctx.set_alpn_protos([ALPN_RATS_TLS])
    # A fresh session per connection: never offer resumption.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


# The ALPN choice is made by a raw OpenSSL callback, not pyOpenSSL's
# set_alpn_select_callback: to refuse, pyOpenSSL's wrapper needs the
# callback to raise, and it keeps that exception on the *context*, where a
# concurrent handshake of another connection can pick it up and fail.
_RATS_TLS_C = ffi.new("unsigned char[]", ALPN_RATS_TLS)


def _offers_rats_tls(offer: bytes) -> bool:
    pos = 0
    while pos < len(offer):
        length = offer[pos]
        if offer[pos + 1:pos + 1 + length] == ALPN_RATS_TLS:
            return True
        pos += 1 + length
    return False


@ffi.callback("int (*)(SSL *, unsigned char **, unsigned char *, const unsigned char *, unsigned int, void *)",
              error=lib.SSL_TLSEXT_ERR_ALERT_FATAL)
def _select_rats_tls(ssl, out, outlen, offer, offer_len, arg):
    if _offers_rats_tls(ffi.buffer(offer, offer_len)[:]):
        out[0] = _RATS_TLS_C
        outlen[0] = len(ALPN_RATS_TLS)
        return lib.SSL_TLSEXT_ERR_OK
    # fatal no_application_protocol alert: the client learns why at once
    return lib.SSL_TLSEXT_ERR_ALERT_FATAL


def server_context(identity: Identity, request_client_cert: bool) -> SSL.Context:
    """Context for the egress side (TLS server)."""
    ctx = _base_context(identity)
    if request_client_cert:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
    else:
        ctx.set_verify(SSL.VERIFY_NONE, None)
    lib.SSL_CTX_set_alpn_select_cb(ctx._context, _select_rats_tls, ffi.NULL)
    # No session cache and no tickets: a resumed connection would skip attestation.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx
