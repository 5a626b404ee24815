"""Egress `mapping`: accept tunnel connections on `in`, decrypt, forward to `out`."""

from __future__ import annotations

import socket

from tng_nfq.config.model import Egress, MappingEgress
from tng_nfq.tunnel.endpoint import Endpoint, TcpListener, format_addr
from tng_nfq.tunnel.security import TunnelSecurity


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
        self.tunnel_in(sock, stats, (backend.host, backend.port))
