"""dst_filter matching: Envoy virtual-host domain wildcards x ports."""

from __future__ import annotations

import pytest

from tng_nfq.config.model import DstFilter
from tng_nfq.http.filters import domain_matches, filter_matches, should_tunnel


@pytest.mark.parametrize("pattern, host, expected", [
    ("*", "anything.example.com", True),
    ("*", "127.0.0.1", True),
    ("*", "[::1]", True),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "A.EXAMPLE.COM", True),
    ("*.example.com", "example.com", False),  # at least one character before the suffix
    ("*.example.com", ".example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*example.com", "example.com", False),
    ("*example.com", "myexample.com", True),
    ("example.*", "example.com", True),
    ("example.*", "example.org", True),
    ("example.*", "example.", False),  # at least one character after the prefix
    ("example.*", "www.example.com", False),
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.com", True),
    ("example.com", "example.com.", True),  # fully qualified form
    ("example.com", "www.example.com", False),
    ("Example.COM", "example.com", True),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.10", False),
    ("*.pai-eas.aliyuncs.com", "x.cn-hangzhou.pai-eas.aliyuncs.com", True),
])
def test_domain_wildcards(pattern, host, expected):
    assert domain_matches(pattern, host) is expected


@pytest.mark.parametrize("flt, host, port, expected", [
    (DstFilter(), "a.com", 80, True),
    (DstFilter(), "a.com", 9991, True),  # port None = any port
    (DstFilter("*", 9991), "a.com", 9991, True),
    (DstFilter("*", 9991), "a.com", 9992, False),
    (DstFilter("*.a.com", 80), "x.a.com", 80, True),
    (DstFilter("*.a.com", 80), "x.a.com", 443, False),
    (DstFilter("*.a.com", 80), "a.com", 80, False),
    (DstFilter("a.*", None), "a.net", 1, True),
    (DstFilter("a.*", None), "b.net", 1, False),
])
def test_filter_domain_times_port(flt, host, port, expected):
    assert filter_matches(flt, host, port) is expected


def test_any_filter_of_several_tunnels():
    filters = (DstFilter("*.internal", 443), DstFilter("10.0.0.5", 9991))
    assert should_tunnel(filters, "db.internal", 443)
    assert should_tunnel(filters, "10.0.0.5", 9991)
    assert not should_tunnel(filters, "db.internal", 80)
    assert not should_tunnel(filters, "10.0.0.5", 80)
    assert not should_tunnel(filters, "www.baidu.com", 443)
    assert not should_tunnel((), "anything", 80)
