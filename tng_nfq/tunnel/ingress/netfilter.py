"""Ingress `netfilter`: connections of unmodified apps to a captured
destination are steered by the kernel to our listener - REDIRECT for
programs on this host (nat OUTPUT), TPROXY for traffic forwarded through it
(gateway role) - and we carry them through rats-tls to their original
destination, with SO_MARK = so_mark so our own connection is not captured
again.

SO_ORIGINAL_DST gives the original destination in both cases: REDIRECT
rewrote it and conntrack remembers it; TPROXY left the packet alone and
conntrack's original tuple is the destination itself.
"""

from __future__ import annotations

import errno
import socket
from typing import Iterable

from tng_nfq.config.model import Ingress, NetfilterIngress
from tng_nfq.tunnel.egress.netfilter import listen_redirect_port, original_destination
from tng_nfq.tunnel.endpoint import Endpoint, StartError, TcpListener, format_addr
from tng_nfq.tunnel.security import TunnelSecurity

IP_TRANSPARENT = 19  # linux/in.h


def is_local_address(host: str) -> bool:
    """Is `host` one of this namespace's addresses? (only those can be bound without IP_TRANSPARENT)"""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((host, 0))
        return True
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    finally:
        probe.close()


class NetfilterIngressEndpoint(Endpoint):
    kind = "ingress"

    def __init__(self, spec: Ingress, security: TunnelSecurity, reserved_ports: Iterable[int] = ()):
        super().__init__(spec.path, "netfilter")
        assert isinstance(spec.mode, NetfilterIngress)
        self.spec = spec
        self.mode_spec: NetfilterIngress = spec.mode
        self.security = security
        self.reserved_ports = frozenset(reserved_ports)
        # TPROXY (gateway role) is planned only when not limited to cgroups
        self.transparent = not self.mode_spec.capture_cgroup

    @property
    def listen_port(self) -> int:
        return self.listeners[0].address[1]

    def bind(self) -> None:
        path = f"{self.path}.netfilter.listen_port"
        listener = listen_redirect_port(self, self.mode_spec.listen_port, self.reserved_ports)
        if self.transparent:
            # TPROXY only hands packets to a transparent socket (checked at
            # lookup time, so setting it after bind is enough).
            try:
                listener.sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            except OSError as exc:
                listener.close()
                self.listeners.remove(listener)
                raise StartError(f"{path}: cannot make the listener transparent (IP_TRANSPARENT): "
                                 f"{(exc.strerror or str(exc)).lower()}") from None

    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        stats = self.new_stats(peer, listener)
        try:
            target = original_destination(sock)
        except (OSError, ValueError) as exc:
            return self.failed(stats, f"no original destination (not a captured connection?): {exc}", sock)
        stats.upstream = format_addr(target)
        if target[1] == self.listen_port and is_local_address(target[0]):
            return self.failed(stats, f"refused: original destination {stats.upstream} is this "
                                      "listener (loop)", sock)
        self.tunnel_out(sock, stats, target, so_mark=self.mode_spec.so_mark)
