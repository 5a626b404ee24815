"""How one endpoint secures its tunnel: which certificate it shows, what it
asks of the peer, and the checks that run after the handshake and before
any application byte moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from OpenSSL import SSL

from tng_nfq.config.model import RaConfig
from tng_nfq.tunnel.channel import TlsChannel, TlsError
from tng_nfq.tunnel.relay import ConnectionStats
from tng_nfq.tunnel.tls import ALPN_RATS_TLS, client_context, no_ra_identity, server_context

log = structlog.get_logger(component="security")


class UnsupportedFeature(Exception):
    """A valid configuration asks for something this build cannot run yet."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass
class TunnelSecurity:
    ra: RaConfig
    client_context: SSL.Context | None = None
    server_context: SSL.Context | None = None

    @classmethod
    def for_endpoint(cls, ra: RaConfig, path: str, server_side: bool) -> "TunnelSecurity":
        if ra.attest is not None:
            raise UnsupportedFeature(f"{path}.attest", "remote attestation (attest) is not implemented in this "
                                     "version of tng_nfq yet; use \"no_ra\": true for a debug tunnel")
        if ra.verify is not None:
            raise UnsupportedFeature(f"{path}.verify", "remote attestation (verify) is not implemented in this "
                                     "version of tng_nfq yet; use \"no_ra\": true for a debug tunnel")
        identity = no_ra_identity()
        sec = cls(ra)
        if server_side:
            sec.server_context = server_context(identity, request_client_cert=False)
        else:
            sec.client_context = client_context(None)
        return sec

    def check_peer(self, channel: TlsChannel, stats: ConnectionStats) -> None:
        """Runs after the handshake, before the relay starts; raises TlsError to refuse."""
        if channel.version != "TLSv1.3":
            raise TlsError(f"peer negotiated {channel.version}, only TLSv1.3 is accepted")
        if channel.alpn != ALPN_RATS_TLS:
            raise TlsError(f"peer did not negotiate ALPN rats-tls (got {channel.alpn!r})")
        stats.attested = False  # no_ra: encrypted, not attested


def warn_no_ra(path: str) -> None:
    log.warning("no_ra: this endpoint uses a fixed public certificate and no remote attestation; "
                "for debugging only, never in production", endpoint=path)
