"""Wire compatibility with upstream TNG 2.12 (`tng` from the tng-sdk wheel).

Each pair is one no_ra mapping tunnel across the two lab namespaces, with
the ingress in the client namespace and the egress in the server namespace:

  upstream ingress -> tng_nfq egress
  tng_nfq ingress  -> upstream egress
  tng_nfq ingress  -> tng_nfq egress     (reference: same tests, our own pair)

Two mapping entries per instance: 10001 -> 20001 -> HTTP backend :30001,
10002 -> 20002 -> bulk backend :30002.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.root, pytest.mark.interop]

HTTP_IN, HTTP_TUNNEL, HTTP_BACKEND = 10001, 20001, 30001
BULK_IN, BULK_TUNNEL, BULK_BACKEND = 10002, 20002, 30002

PAIRS = [("upstream", "tng_nfq"), ("tng_nfq", "upstream"), ("tng_nfq", "tng_nfq")]


def _pair_id(pair) -> str:
    return f"{pair[0]}-ingress__{pair[1]}-egress"


@pytest.fixture(params=PAIRS, ids=[_pair_id(p) for p in PAIRS])
def pair(request, lab, blob, tmp_path):
    ingress_impl, egress_impl = request.param
    site = tmp_path / "site"
    site.mkdir()
    marker = b"TNGNFQ-INTEROP-" + os.urandom(8).hex().encode()
    body = b"hello across implementations " + marker + b"\n" + os.urandom(3000).hex().encode()
    (site / "index.txt").write_bytes(body)
    lab.start_http_backend(HTTP_BACKEND, site)
    bulk = lab.start_backend(BULK_BACKEND, blob=blob)
    egress = lab.start_gateway(egress_impl, lab.server,
                               lab.egress_config((HTTP_TUNNEL, HTTP_BACKEND), (BULK_TUNNEL, BULK_BACKEND)),
                               "egress")
    ingress = lab.start_gateway(ingress_impl, lab.client,
                                lab.ingress_config((HTTP_IN, HTTP_TUNNEL), (BULK_IN, BULK_TUNNEL)),
                                "ingress")
    return SimpleNamespace(ingress=ingress, egress=egress, bulk=bulk, body=body, marker=marker,
                           ours=[gw for gw in (ingress, egress) if gw.impl == "tng_nfq"])


def test_http_request_with_curl(lab, pair):
    result = lab.curl(f"http://127.0.0.1:{HTTP_IN}/index.txt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == pair.body
    for gw in pair.ours:
        entry = gw.wait_access()[0]
        assert entry["outcome"] == "ok", entry
        assert entry["bytes_down"] > len(pair.body)
    assert pair.ingress.alive and pair.egress.alive


def test_bulk_10mb_upload_and_download_sha256(lab, pair, blob_bytes):
    digest = lab.sha256(blob_bytes)

    reply = lab.upload(BULK_IN, blob_bytes)
    data = lab.download(BULK_IN)

    assert reply == f"OK {len(blob_bytes)} {digest}\n".encode()
    assert len(data) == len(blob_bytes) and lab.sha256(data) == digest
    upload, download = pair.bulk.wait_reports(2)
    assert (upload["cmd"], upload["bytes_in"], upload["sha256_in"]) == ("UPLOAD", len(blob_bytes), digest)
    assert (download["cmd"], download["bytes_out"]) == ("DOWNLOAD", len(blob_bytes))
    # our end of the tunnel counted the same bytes
    for gw in pair.ours:
        lines = gw.wait_access(2)
        assert [e["outcome"] for e in lines] == ["ok", "ok"], lines
        counts = sorted((e["bytes_up"], e["bytes_down"]) for e in lines)
        assert counts == sorted([(len(b"UPLOAD\n") + len(blob_bytes), len(reply)),
                                 (len(b"DOWNLOAD\n"), len(blob_bytes))])
    assert pair.ingress.alive and pair.egress.alive


def test_full_duplex_echo_10mb(lab, pair, blob_bytes):
    echoed = lab.echo(BULK_IN, blob_bytes)

    assert len(echoed) == len(blob_bytes) and lab.sha256(echoed) == lab.sha256(blob_bytes)


def test_wire_is_tls13_with_alpn_rats_tls(lab, pair):
    """Both tunnel ports captured in the client namespace while HTTP and binary
    traffic carrying a marker cross: every flow is TLS 1.3 (offered and chosen),
    ALPN rats-tls is offered, and the marker never appears in clear."""
    payload = (os.urandom(2048) + pair.marker) * 64

    def traffic():
        return (lab.curl(f"http://127.0.0.1:{HTTP_IN}/index.txt?{pair.marker.decode()}"),
                lab.echo_paced(BULK_IN, payload))

    def no_marker_on_the_wire(port, report):
        assert not report.contains(pair.marker), [f.summary() for f in report.flows]

    (result, echoed), reports = lab.capture_complete({HTTP_TUNNEL: "any", BULK_TUNNEL: "any"},
                                                     traffic, no_marker_on_the_wire)

    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == pair.body  # the marker is in the response body too
    assert echoed == payload
    for port, report in reports.items():
        summary = [f.summary() for f in report.flows]
        assert len(report.flows) == 1, summary
        assert report.all_tls, summary
        flow = report.flows[0]
        assert "rats-tls" in flow.alpn_offered, summary
        assert flow.tls_version_ok, summary  # the ClientHello offers TLS 1.3
        assert lab.server_hello_version(flow.s2c) == 0x0304, summary  # and the server chose it
        assert 23 in flow.records_c2s and 23 in flow.records_s2c, summary
        assert flow.server == f"{lab.SERVER_ADDR}:{port}"
    bulk_flow = reports[BULK_TUNNEL].flows[0]
    assert len(bulk_flow.c2s) > len(payload) and len(bulk_flow.s2c) > len(payload)


def test_no_session_resumption(lab, pair):
    """Every tunnel connection runs a full handshake (a resumed one would skip
    attestation): our client never offers a pre-shared key, our server never
    accepts one, also when the upstream peer offers or issues tickets."""
    def traffic():
        return [lab.curl(f"http://127.0.0.1:{HTTP_IN}/index.txt") for _ in range(3)]

    results, reports = lab.capture_complete({HTTP_TUNNEL: "any"}, traffic, lambda port, report: None)

    assert all(r.returncode == 0 and r.stdout.encode() == pair.body for r in results), results
    flows = reports[HTTP_TUNNEL].flows
    assert len(flows) == 3, [f.summary() for f in flows]
    for flow in flows:
        client_hello = lab.hello_extensions(flow.c2s)
        server_hello = lab.hello_extensions(flow.s2c)
        assert client_hello is not None and server_hello is not None, flow.summary()
        if pair.ingress.impl == "tng_nfq":
            assert lab.EXT_PRE_SHARED_KEY not in client_hello, "our ingress offered session resumption"
        if pair.egress.impl == "tng_nfq":
            assert lab.EXT_PRE_SHARED_KEY not in server_hello, "our egress resumed a session"
