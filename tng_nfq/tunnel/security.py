"""How one endpoint secures its tunnel: which certificate it shows, what it
asks of the peer, and the checks that run before any application byte moves
or the upstream connection is opened: a verifying client judges the server
inside the handshake (so a refused server never completes it), a verifying
server judges the client right after it.

The four trust models of the TNG manual fall out of two independent
switches per side: `attest` (show an attested certificate, else the fixed
dummy one) and `verify` (demand and check the peer's evidence).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from tng_nfq.config.model import RaConfig
from tng_nfq.tunnel.channel import TlsChannel, TlsError
from tng_nfq.tunnel.relay import ConnectionStats
from tng_nfq.tunnel.tls import ALPN_RATS_TLS, Identity, client_context, no_ra_identity, server_context

log = structlog.get_logger(component="security")


class SetupRefused(Exception):
    """An endpoint cannot be set up as configured (checked before anything starts)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class UnsupportedFeature(SetupRefused):
    """A valid configuration asks for something this build cannot run yet."""


class NotReady(Exception):
    """No certificate to present yet (the attester has no evidence so far)."""


class PeerRejected(TlsError):
    """The peer finished the handshake but failed attestation."""


class TunnelSecurity:
    def __init__(self, ra: RaConfig, path: str, server_side: bool):
        self.ra = ra
        self.path = path
        self.server_side = server_side
        self.attester = None
        self.verifier = None
        if ra.attest is not None:
            from tng_nfq.attestation.attester import Attester

            self.attester = Attester(ra.attest, f"{path}.attest")
        if ra.verify is not None:
            if ra.verify.as_type == "builtin":
                raise UnsupportedFeature(f"{path}.verify.as_type", "the builtin attestation service of "
                                         "upstream tng is not available in tng_nfq; point as_addr at an "
                                         "Attestation Service (e.g. `tng-nfq dev as`)")
            from tng_nfq.attestation.verifier import Verifier

            try:
                self.verifier = Verifier(ra.verify, f"{path}.verify")
            except (OSError, ValueError) as exc:
                raise SetupRefused(f"{path}.verify.trusted_certs_paths",
                                   f"cannot load trust anchors: {exc}") from None
        self._context: SSL.Context | None = None
        self._context_identity: Identity | None = None
        self._context_lock = threading.Lock()

    @classmethod
    def for_endpoint(cls, ra: RaConfig, path: str, server_side: bool) -> "TunnelSecurity":
        return cls(ra, path, server_side)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self.ra.no_ra:
            log.warning("no_ra: this endpoint uses a fixed public certificate and no remote attestation; "
                        "for debugging only, never in production", endpoint=self.path)
        if self.attester is not None:
            self.attester.start()

    def stop(self) -> None:
        if self.attester is not None:
            self.attester.stop()

    def wait_ready(self, timeout: float) -> bool:
        return self.attester is None or self.attester.wait_ready(timeout)

    # -- per connection -----------------------------------------------------------

    def identity(self, timeout: float) -> Identity | None:
        """The certificate to present on a new connection."""
        if self.attester is not None:
            return self.attester.identity(timeout)
        # A server must show something: the fixed dummy certificate (no_ra,
        # or reverse one-way attestation where only the client attests).
        return no_ra_identity() if self.server_side else None

    def context_for(self, identity: Identity | None) -> SSL.Context:
        """The context presenting `identity`, made once per identity (not per connection)."""
        with self._context_lock:
            if self._context is None or self._context_identity is not identity:
                if self.server_side:
                    self._context = server_context(identity, request_client_cert=self.verifier is not None)
                else:
                    self._context = client_context(identity)
                    if self.verifier is not None:
                        # A client judges the server inside the handshake, before
                        # its Finished: a refused server never completes the
                        # handshake, so it never opens its backend connection.
                        self._context.set_verify(SSL.VERIFY_PEER, self._verify_in_handshake)
                self._context_identity = identity
            return self._context

    def new_channel(self, sock, timeout: float) -> TlsChannel:
        ctx = self.context_for(self.identity(timeout))
        if not self.server_side and self.verifier is not None:
            return _VerifyingClientChannel(ctx, sock, server_side=False)
        return TlsChannel(ctx, sock, server_side=self.server_side)

    def _verify_in_handshake(self, conn: SSL.Connection, cert, errnum, depth, ok) -> bool:
        """OpenSSL verify callback (client side): attestation decides, once per connection.

        Never raises: pyOpenSSL keeps callback exceptions on the context, which
        all connections share. The outcome travels on the connection instead.
        """
        if depth != 0:
            return True
        outcome = conn.get_app_data()
        if isinstance(outcome, _HandshakeOutcome):  # called again for the same certificate
            return outcome.verdict is not None
        try:
            refusal = _tls_refusal(conn.get_protocol_version_name(), conn.get_alpn_proto_negotiated() or b"")
            if refusal is not None:
                conn.set_app_data(_HandshakeOutcome(None, refusal))
                return False
            from tng_nfq.attestation.verifier import AttestationFailed

            der = cert.to_cryptography().public_bytes(Encoding.DER)
            try:
                verdict = self.verifier.verify(der)
            except AttestationFailed as exc:
                conn.set_app_data(_HandshakeOutcome(None, f"peer attestation failed: {exc}"))
                return False
        except Exception as exc:  # a bug must refuse this connection, not leak into others
            log.exception("verification during the handshake failed", endpoint=self.path)
            conn.set_app_data(_HandshakeOutcome(None, f"peer attestation failed: internal error: {exc}"))
            return False
        conn.set_app_data(_HandshakeOutcome(verdict, None))
        return True

    def check_peer(self, channel: TlsChannel, stats: ConnectionStats) -> None:
        """Runs after the handshake, before the relay starts; raises TlsError to refuse."""
        refusal = _tls_refusal(channel.version, channel.alpn)
        if refusal is not None:
            raise TlsError(refusal)
        # "attested": remote attestation protects this connection, whichever
        # side proved itself; peer_attestation says what we checked of the peer.
        stats.attested = self.attester is not None
        if self.verifier is None:
            return
        outcome = channel.conn.get_app_data()
        if isinstance(outcome, _HandshakeOutcome) and outcome.verdict is not None:
            verdict = outcome.verdict  # judged during the handshake (client side)
        else:
            from tng_nfq.attestation.verifier import AttestationFailed

            try:
                verdict = self.verifier.verify(channel.peer_certificate_der())
            except AttestationFailed as exc:
                raise PeerRejected(f"peer attestation failed: {exc}") from None
        stats.attested = True
        stats.attestation = verdict.as_log_fields()


def _tls_refusal(version: str, alpn: bytes) -> str | None:
    if version != "TLSv1.3":
        return f"peer negotiated {version}, only TLSv1.3 is accepted"
    if alpn != ALPN_RATS_TLS:
        return f"peer did not negotiate ALPN rats-tls (got {alpn!r})"
    return None


@dataclass(frozen=True)
class _HandshakeOutcome:
    """What the client's verify callback decided, kept on the SSL connection."""

    verdict: object | None  # attestation.verifier.Verdict when accepted
    refusal: str | None


class _VerifyingClientChannel(TlsChannel):
    """A client channel whose handshake failure names the attestation refusal."""

    def handshake(self, timeout: float) -> None:
        try:
            super().handshake(timeout)
        except TlsError:
            outcome = self.conn.get_app_data()
            if isinstance(outcome, _HandshakeOutcome) and outcome.refusal is not None:
                raise PeerRejected(outcome.refusal) from None
            raise
