"""`dst_filter(s)` of the http_proxy ingress: which destinations go through
the tunnel. Pure functions, no I/O.

Domain patterns follow Envoy's VirtualHost `domains` (the TNG manual points
there): `*` matches everything, `*.example.com` is a suffix match that needs
at least one character before the suffix (so it does not match
`example.com` itself, nor `.example.com`), `example.*` is a prefix match
(again at least one character after), anything else is exact. Matching is
case-insensitive and ignores one trailing dot of a fully qualified name.
A filter's port None means any port.
"""

from __future__ import annotations

from typing import Iterable

from tng_nfq.config.model import DstFilter


def _normalize(host: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):  # IPv6 literal as written in a URI
        host = host[1:-1]
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    return host


def domain_matches(pattern: str, host: str) -> bool:
    pattern = _normalize(pattern)
    host = _normalize(host)
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return len(host) > len(suffix) and host.endswith(suffix)
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return len(host) > len(prefix) and host.startswith(prefix)
    return host == pattern


def filter_matches(flt: DstFilter, host: str, port: int) -> bool:
    if flt.port is not None and flt.port != port:
        return False
    return domain_matches(flt.domain, host)


def should_tunnel(filters: Iterable[DstFilter], host: str, port: int) -> bool:
    """True: carry host:port through the rats-tls tunnel; False: forward in clear."""
    return any(filter_matches(flt, host, port) for flt in filters)
