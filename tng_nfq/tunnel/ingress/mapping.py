"""Ingress `mapping`: listen on `in`, carry every connection through TLS to `out`."""

from __future__ import annotations

import socket

from tng_nfq.config.model import Ingress, MappingIngress
from tng_nfq.tunnel.endpoint import Endpoint, TcpListener, format_addr
from tng_nfq.tunnel.security import TunnelSecurity


class MappingIngressEndpoint(Endpoint):
    kind = "ingress"

    def __init__(self, spec: Ingress, security: TunnelSecurity):
        super().__init__(spec.path, "mapping")
        assert isinstance(spec.mode, MappingIngress)
        self.spec = spec
        self.mode_spec: MappingIngress = spec.mode
        self.security = security

    def bind(self) -> None:
        listen = self.mode_spec.listen
        self.listen(listen.host, listen.port, f"{self.path}.mapping.in")

    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        stats = self.new_stats(peer, listener)
        upstream = self.mode_spec.upstream
        stats.upstream = format_addr((upstream.host, upstream.port))
        self.tunnel_out(sock, stats, (upstream.host, upstream.port))
