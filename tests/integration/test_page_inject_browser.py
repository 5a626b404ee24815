"""web_page_inject seen by a real browser: a gzip-compressed origin page is
run through the ResponseInjector, the injected response (its head and body
exactly as the injector emitted them) is served on 127.0.0.1 inside a
throw-away namespace, and headless Chromium (Debian package) loads it there.
The DOM must hold the bar and the whole page (Content-Length right), and the
screenshot's top rows must be the bar's colour.

Screenshots are kept under the test's tmp_path and, when TNG_NFQ_ARTIFACTS
is set, copied there (page_inject_attested.png, page_inject_not_attested.png).
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers.browser import copy_artifact, dom, needs_chromium, png_rows, png_size, screenshot

from tng_nfq.http.page_inject import AttestationBanner, inject_response
from tng_nfq.lab.netns import single_namespace, stop_process, wait_for_port


PORT = 8080
WIDTH, HEIGHT = 1200, 800

# Serves the response in DIR/head.json + DIR/body.bin for every GET path
# (HEAD: the head only), bytes exactly as given: no framing of its own.
SERVER = r"""
import http.server, json, sys
d = sys.argv[1]
head = json.load(open(d + "/head.json"))
body = open(d + "/body.bin", "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _head(self):
        self.send_response_only(head["status"])
        for n, v in head["headers"]:
            self.send_header(n, v)
        self.end_headers()
    def do_GET(self):
        self._head(); self.wfile.write(body)
    def do_HEAD(self):
        self._head()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"""

ORIGIN_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Confidential app</title>
<style>body { font-family: sans-serif; background: #f4f4f8; } h1 { color: #223; }</style>
</head>
<BODY class="app">
<h1>Confidential application</h1>
<p>Hello from the origin inside the TEE. \xc3\xa9t\xc3\xa9 \xe2\x9c\x93</p>
""" + b"<p>filler paragraph</p>\n" * 200 + b"""<p id="end">END-OF-PAGE</p>
</BODY>
</html>
"""


def _origin_response() -> tuple[list[tuple[bytes, bytes]], bytes]:
    wire = gzip.compress(ORIGIN_PAGE)
    headers = [(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Encoding", b"gzip"),
               (b"Content-Length", str(len(wire)).encode()), (b"ETag", b'"v1"'),
               (b"Cache-Control", b"no-cache")]
    return headers, wire


def _serve_and_load(tmp_path: Path, banner: AttestationBanner, png_name: str):
    headers, wire = _origin_response()
    # the origin's body arrives in pieces, as out of a Binary HTTP decoder
    pieces = [wire[i:i + 97] for i in range(0, len(wire), 97)]
    head, body = inject_response(banner, "GET", 200, headers, pieces)
    assert head.injected and head.content_length == len(body)
    site = tmp_path / "site"
    site.mkdir()
    (site / "head.json").write_text(json.dumps({
        "status": head.status,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in head.headers]}))
    (site / "body.bin").write_bytes(body)
    url = f"http://127.0.0.1:{PORT}/index.html"
    png = tmp_path / png_name
    with single_namespace("inject") as ns:
        server = ns.popen([sys.executable, "-c", SERVER, str(site), str(PORT)])
        try:
            wait_for_port(ns, "127.0.0.1", PORT, proc=server)
            text = dom(url, ns_name=ns.name)
            screenshot(url, png, ns_name=ns.name, width=WIDTH, height=HEIGHT)
        finally:
            stop_process(server)
    copy_artifact(png)
    return text, png


def _share(rows, colour, tolerance=12) -> float:
    hits = total = 0
    for row in rows:
        for px in row:
            total += 1
            hits += all(abs(a - b) <= tolerance for a, b in zip(px, colour))
    return hits / total


@pytest.mark.root
@needs_chromium
@pytest.mark.timeout(180)
def test_attested_bar_in_chromium(tmp_path):
    banner = AttestationBanner(
        attested=True, tee_type="tdx", policy_ids=("default", "prod-policy-7"),
        as_address="http://198.18.0.2:8080/",
        verified_at=datetime(2026, 11, 27, 7, 0, 0, tzinfo=timezone.utc),
        detail="<script>document.title='pwned'</script>",
    )
    text, png = _serve_and_load(tmp_path, banner, "page_inject_attested.png")
    assert 'id="tng-attestation-banner"' in text
    assert 'data-attested="true"' in text
    for needle in ("TNG remote attestation: ATTESTED", "tdx", "default, prod-policy-7",
                   "http://198.18.0.2:8080/", "2026-11-27 07:00:00 UTC"):
        assert needle in text, needle
    # the hostile detail is text, not a script; the page title is intact
    assert "&lt;script&gt;document.title" in text and "<title>Confidential app</title>" in text
    # the whole page arrived (Content-Length right), in the right charset
    assert "END-OF-PAGE" in text and "\u00e9t\u00e9 \u2713" in text
    # the bar comes first inside <body>
    body_at = text.lower().index("<body")
    assert text.index("<tng-attestation-banner", body_at) < text.index("<h1>", body_at)

    assert png_size(png) == (WIDTH, HEIGHT)
    top = png_rows(png, 150)
    green = (0x17, 0x69, 0x2E)
    band = [i for i, row in enumerate(top) if _share([row], green) > 0.5]
    assert len(band) >= 15, "no green bar at the top of the screenshot"
    assert band[0] < 20 and band[-1] < 100  # a bar at the top, not a green page
    band = [top[i] for i in band]
    # text is drawn on the bar: some light pixels inside the green band
    assert any(min(px) > 200 for row in band for px in row)


@pytest.mark.root
@needs_chromium
@pytest.mark.timeout(180)
def test_not_attested_bar_is_red(tmp_path):
    banner = AttestationBanner(attested=False, tee_type=None, policy_ids=("default",),
                               as_address="http://as.example:8080", verified_at=0.0,
                               detail="policy default rejected the evidence")
    text, png = _serve_and_load(tmp_path, banner, "page_inject_not_attested.png")
    assert "TNG remote attestation: NOT ATTESTED" in text and "policy default rejected" in text
    assert 'data-attested="false"' in text and "END-OF-PAGE" in text
    red = (0xA6, 0x1B, 0x1B)
    assert len([row for row in png_rows(png, 60) if _share([row], red) > 0.5]) >= 15


def _png(rows: list[list[tuple[int, int, int]]], filters: list[int]) -> bytes:
    """An RGB PNG whose row i is written with filter filters[i] (encoder side)."""
    width = len(rows[0])
    raw = bytearray()
    prev = bytes(3 * width)
    for row, f in zip(rows, filters):
        cur = bytes(c for px in row for c in px)
        out = bytearray()
        for i, x in enumerate(cur):
            a = cur[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) >> 1
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((x - pred) & 0xFF)
        raw += bytes([f]) + out
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


def test_png_reader_all_filter_types(tmp_path):
    import random
    rnd = random.Random(7)
    rows = [[(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(9)] for _ in range(10)]
    filters = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    path = tmp_path / "t.png"
    path.write_bytes(_png(rows, filters))
    assert png_size(path) == (9, 10)
    assert png_rows(path) == rows
    assert png_rows(path, 3) == rows[:3]
