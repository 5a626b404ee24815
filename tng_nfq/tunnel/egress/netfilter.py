"""Egress `netfilter`: tunnel connections to a captured port are REDIRECTed
by the kernel to our listener; we terminate rats-tls and connect to the
original destination with SO_MARK = so_mark (so our own connection is not
captured again - every chain of ours RETURNs on that mark).

The original destination comes from conntrack via
getsockopt(SOL_IP, SO_ORIGINAL_DST), a struct sockaddr_in.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable

from tng_nfq.config.model import Egress, NetfilterEgress
from tng_nfq.netfilter.plan import auto_port_candidates
from tng_nfq.tunnel.endpoint import Endpoint, StartError, TcpListener, format_addr
from tng_nfq.tunnel.security import TunnelSecurity

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SOCKADDR_IN_SIZE = 16


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """struct sockaddr_in -> (dotted IPv4, port). family is host order, port and address network order."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr_in too short ({len(raw)} bytes)")
    (family,) = struct.unpack_from("=H", raw, 0)
    if family != socket.AF_INET:
        raise ValueError(f"not an IPv4 address (family {family})")
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before the kernel redirected it to us."""
    return parse_sockaddr_in(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE))


def listen_redirect_port(endpoint: Endpoint, listen_port: int | None, reserved: Iterable[int]) -> TcpListener:
    """The listener netfilter steers to: `listen_port`, or the first free port from 40000 up."""
    path = f"{endpoint.path}.netfilter.listen_port"
    if listen_port is not None:
        return endpoint.listen("0.0.0.0", listen_port, path)
    for port in auto_port_candidates(reserved):
        try:
            return endpoint.listen("0.0.0.0", port, path)
        except StartError:
            continue
    raise StartError(f"{path}: no free port from 40000 up")


class NetfilterEgressEndpoint(Endpoint):
    kind = "egress"

    def __init__(self, spec: Egress, security: TunnelSecurity, reserved_ports: Iterable[int] = ()):
        super().__init__(spec.path, "netfilter")
        assert isinstance(spec.mode, NetfilterEgress)
        self.spec = spec
        self.mode_spec: NetfilterEgress = spec.mode
        self.security = security
        self.reserved_ports = frozenset(reserved_ports)

    @property
    def listen_port(self) -> int:
        return self.listeners[0].address[1]

    def bind(self) -> None:
        listen_redirect_port(self, self.mode_spec.listen_port, self.reserved_ports)

    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        stats = self.new_stats(peer, listener)
        try:
            target = original_destination(sock)
        except (OSError, ValueError) as exc:
            return self.failed(stats, f"no original destination (not a redirected connection?): {exc}", sock)
        stats.upstream = format_addr(target)
        if target[1] == self.listen_port:
            # Not redirected (a direct connection to the listener): forwarding
            # it to its "original destination" would connect to ourselves.
            return self.failed(stats, f"refused: original destination {stats.upstream} is this "
                                      "listener (loop)", sock)
        # the backend is dialled only once the peer has passed every check
        self.tunnel_in(sock, stats, target, so_mark=self.mode_spec.so_mark)
