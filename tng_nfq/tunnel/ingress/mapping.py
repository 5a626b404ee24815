"""Ingress `mapping`: listen on `in`, carry every connection through TLS to `out`."""

from __future__ import annotations

import socket

from tng_nfq.config.model import Ingress, MappingIngress
from tng_nfq.tunnel.channel import TlsError
from tng_nfq.tunnel.endpoint import CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, Endpoint, TcpListener, format_addr
from tng_nfq.tunnel.relay import Relay, set_nodelay
from tng_nfq.tunnel.security import NotReady, TunnelSecurity


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
        set_nodelay(sock)
        try:
            up = socket.create_connection((upstream.host, upstream.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            return self.failed(stats, f"cannot reach tunnel peer {stats.upstream}: "
                                      f"{(exc.strerror or str(exc)).lower()}", sock)
        up.settimeout(None)
        set_nodelay(up)
        try:
            channel = self.security.new_channel(up, HANDSHAKE_TIMEOUT)
        except NotReady as exc:
            return self.failed(stats, str(exc), sock, up)
        try:
            channel.handshake(HANDSHAKE_TIMEOUT)
            self.security.check_peer(channel, stats)
        except (TlsError, OSError) as exc:
            return self.failed(stats, str(exc), sock, up)
        self.relay(Relay(sock, channel, stats, plain_is_downstream=True))
