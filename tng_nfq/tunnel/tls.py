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

from OpenSSL import SSL, crypto

ALPN_RATS_TLS = b"rats-tls"


@dataclass(frozen=True)
class Identity:
    """The certificate and key an endpoint presents (as pyOpenSSL objects, ready to use)."""

    cert: crypto.X509
    key: crypto.PKey
    attested: bool  # carries evidence (False: the fixed no_ra certificate)

    @classmethod
    def from_objects(cls, cert, key, attested: bool) -> "Identity":
        """From `cryptography` certificate and private key objects."""
        return cls(crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(key), attested)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, attested: bool) -> "Identity":
        return cls(crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem),
                   crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem), attested)


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


def _base_context() -> SSL.Context:
    # The certificate is set per connection (TlsChannel): an attester's
    # certificate changes when its evidence is refreshed.
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    return ctx


def client_context() -> SSL.Context:
    """Context for the ingress side (TLS client).

    A client that attests itself (reverse one-way or two-way) answers the
    server's certificate request with the identity set on its connection.
    """
    ctx = _base_context()
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    ctx.set_alpn_protos([ALPN_RATS_TLS])
    # A fresh session per connection: never offer resumption.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


class AlpnMismatch(SSL.Error):
    """The client offered ALPN protocols, none of them rats-tls."""


def _select_rats_tls(conn, offered: list[bytes]):
    if ALPN_RATS_TLS in offered:
        return ALPN_RATS_TLS
    # Raising (rather than returning NO_OVERLAPPING_PROTOCOLS, which only
    # means "no ALPN") makes OpenSSL abort with a fatal no_application_protocol
    # alert; pyOpenSSL re-raises this from do_handshake.
    raise AlpnMismatch(f"client offered ALPN {offered!r}, not rats-tls")


def server_context(request_client_cert: bool) -> SSL.Context:
    """Context for the egress side (TLS server)."""
    ctx = _base_context()
    if request_client_cert:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
    else:
        ctx.set_verify(SSL.VERIFY_NONE, None)
    ctx.set_alpn_select_callback(_select_rats_tls)
    # No session cache and no tickets: a resumed connection would skip attestation.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx
