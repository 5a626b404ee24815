"""Egress netfilter pieces that need no root: sockaddr_in parsing, marked sockets."""

from __future__ import annotations

import socket
import struct

import pytest

from tng_nfq.tunnel.egress.netfilter import parse_sockaddr_in


def sockaddr_in(host: str, port: int, family: int = socket.AF_INET) -> bytes:
    return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


@pytest.mark.parametrize("host, port", [("198.18.0.2", 30001), ("127.0.0.1", 1), ("10.255.0.9", 65535)])
def test_parse_sockaddr_in(host, port):
    assert parse_sockaddr_in(sockaddr_in(host, port)) == (host, port)


def test_parse_sockaddr_in_rejects_other_families_and_short_input():
    with pytest.raises(ValueError, match="not an IPv4"):
        parse_sockaddr_in(sockaddr_in("1.2.3.4", 5, family=socket.AF_INET6))
    with pytest.raises(ValueError, match="too short"):
        parse_sockaddr_in(b"\x02\x00\x00")
