"""Capture mode's pure parts: rule text, removal from iptables-save output, verdicts."""

from tng_nfq.capture import CHAIN, judge, removal_text, rules_text
from tng_nfq.config import load_config
from tng_nfq.capture import ports_of
from tng_nfq.lab.capture import FlowReport


def _flow(c2s: bytes, tls: bool) -> FlowReport:
    return FlowReport(client="a:1", server="b:2", c2s=c2s, s2c=b"", records_c2s=[22] if tls else [],
                      records_s2c=[], alpn_offered=["rats-tls"] if tls else [], tls_version_ok=tls)


def test_rules_queue_both_directions_with_bypass_and_skip_loopback_in_prerouting():
    text = rules_text([20001])
    assert f"-A {CHAIN} -p tcp -m tcp --dport 20001 -j NFQUEUE --queue-num 5600 --queue-bypass" in text
    assert f"-A {CHAIN} -p tcp -m tcp --sport 20001 -j NFQUEUE --queue-num 5600 --queue-bypass" in text
    assert f"-I PREROUTING 1 -p tcp ! -i lo -j {CHAIN}" in text and f"-I OUTPUT 1 -p tcp -j {CHAIN}" in text


def test_removal_deletes_exactly_our_jumps():
    save = (f"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{CHAIN} - [0:0]\n"
            f"-A PREROUTING -p tcp ! -i lo -j {CHAIN}\n-A PREROUTING -j OTHER\n-A OUTPUT -p tcp -j {CHAIN}\n"
            f"-A {CHAIN} -p tcp -m tcp --dport 1 -j NFQUEUE --queue-num 5600 --queue-bypass\nCOMMIT\n")
    text = removal_text(save)
    assert text.splitlines() == ["*raw", f"-D PREROUTING -p tcp ! -i lo -j {CHAIN}",
                                 f"-D OUTPUT -p tcp -j {CHAIN}", f"-F {CHAIN}", f"-X {CHAIN}", "COMMIT"]
    assert removal_text("*raw\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") == ""


def test_verdicts():
    plain = judge([_flow(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", tls=False)], [])[0]
    assert plain.leaks == ["HTTP request line on a tunnel port: GET /x"]
    encapsulated = judge([_flow(b"POST / HTTP/1.1\r\nHost: h\r\ntng: 1\r\n\r\n", tls=False)], [])[0]
    assert encapsulated.leaks == [] and encapsulated.encapsulated == 1
    # upstream 2.x marks its requests with x-tng-ohttp-api only; a plain
    # request on the same connection is still a leak
    mixed = judge([_flow(b"POST /a HTTP/1.1\r\nX-Tng-Ohttp-Api: /tng/tunnel\r\n\r\n6\r\nsealed\r\n0\r\n\r\n"
                         b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n", tls=False)], [])[0]
    assert mixed.encapsulated == 1 and mixed.leaks == ["HTTP request line on a tunnel port: GET /health"]
    tls = judge([_flow(b"\x16\x03\x01secret", tls=True)], [b"secret"])[0]
    assert tls.leaks == ["'secret' seen in clear (up)"]
    assert judge([_flow(b"\x16\x03\x01", tls=True)], [b"secret"])[0].leaks == []


def test_tunnel_ports_of_a_config():
    cfg = load_config('{"add_ingress": [{"mapping": {"in": {"port": 10001}, "out": {"host": "10.0.0.2", '
                      '"port": 20001}}, "no_ra": true}], "add_egress": [{"netfilter": {"capture_dst": '
                      '{"port": 30001}}, "no_ra": true}]}')
    assert ports_of(cfg) == [20001, 30001]
