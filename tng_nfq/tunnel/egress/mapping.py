"""Egress `mapping`: accept tunnel connections on `in`, decrypt, forward to `out`."""

from __future__ import annotations

import socket

from tng_nfq.config.model import Egress, MappingEgress
from tng_nfq.tunnel.channel import TlsError
from tng_nfq.tunnel.endpoint import CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, Endpoint, TcpListener, format_addr
from tng_nfq.tunnel.relay import Relay, set_nodelay
from tng_nfq.tunnel.security import NotReady, TunnelSecurity


class MappingEgressEndpoint(Endpoint):
    kind = "egress"

    def __init__(self, spec: Egress, security: TunnelSecurity):
        super().__init__(spec.path, "mapping")
        assert isinstance(spec.mode, MappingEgress)
        self.spec = spec
        self.mode_spec: MappingEgress = spec.mode
        self.security = security

    def bind(self) -> None:
        listen = self.mode_spec.listen
        self.listen(listen.host, listen.port, f"{self.path}.mapping.in")

    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        stats = self.new_stats(peer, listener)
        backend = self.mode_spec.upstream
        stats.upstream = format_addr((backend.host, backend.port))
        set_nodelay(sock)
        try:
            channel = self.security.new_channel(sock, HANDSHAKE_TIMEOUT)
        except NotReady as exc:
            return self.failed(stats, str(exc), sock)
        try:
            channel.handshake(HANDSHAKE_TIMEOUT)
            self.security.check_peer(channel, stats)
        except (TlsError, OSError) as exc:
            return self.failed(stats, str(exc), sock)
        # The backend is dialled only once the peer has passed every check.
        try:
            up = socket.create_connection((backend.host, backend.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            try:
                channel.close_write()
            except OSError:
                pass
            return self.failed(stats, f"cannot reach backend {stats.upstream}: "
                                      f"{(exc.strerror or str(exc)).lower()}", sock)
        up.settimeout(None)
        set_nodelay(up)
        self.relay(Relay(up, channel, stats, plain_is_downstream=False))
