"""Sans-io `web_page_inject`: a top bar with the origin's attestation result
in text/html responses that come back through an `encap_in_http` tunnel.

No sockets here. The ingress decodes the inner response (Binary HTTP) into a
status, a header list and body pieces, runs them through a ResponseInjector
and writes HTTP/1.1 to the client:

    injector = ResponseInjector(banner, method)
    if injector.start(status, headers) is Decision.PASS:
        ...forward head and body exactly as received (no further calls needed)
    else:
        for out in (*(injector.feed(p) for p in pieces), injector.finish()):
            if out.head is not None:
                write the head (out.head.injected: headers carry the
                Content-Length of the new body; otherwise the origin's
                headers, framed as the origin's response would be)
            write out.body

Rules (documented for the README, "web_page_inject"):
- Injected only into responses with status 2xx except 204/205/206, to a
  request method other than HEAD, with exactly one Content-Type whose media
  type is text/html (any case, parameters allowed), an ASCII-compatible
  charset, no `Content-Disposition: attachment` and (by default) no
  `Cache-Control: no-transform`.
- Content-Encoding identity, gzip, x-gzip and deflate (zlib-wrapped or raw)
  are decoded; anything else (br, zstd, several codings) passes untouched.
  `restrict_accept_encoding` keeps origins to codings we can decode.
- The decoded document is buffered up to `max_body` bytes (MAX_INJECT_BODY,
  8 MiB; the still-encoded bytes are held too, at most as many). Above the
  cap, on a corrupt or truncated encoding, on a UTF-16/32 byte order mark
  and for frameset documents the injector gives up and emits the origin's
  head and bytes unchanged: never a broken response, only a missing bar.
- An injected response is sent uncompressed: Content-Encoding,
  Transfer-Encoding, Content-Length, Accept-Ranges and body digests of the
  origin are dropped, a strong ETag becomes weak, and Content-Length is set
  to the new length.
- The bar goes right after the opening <body ...> tag; without one after
  </head>, else after <html ...>, else after the DOCTYPE, else at the
  start. Comments and raw-text elements (script, style, title, ...) are
  skipped while looking, so a "<body>" inside them does not count; the
  search ends at the first start tag that belongs in the body (the body
  has then begun implicitly) or after MAX_SCAN_TAGS tags.
- The bar is pure ASCII (every value HTML-escaped, non-ASCII as character
  references), uses inline styles only and needs no script or external
  resource. A page whose Content-Security-Policy forbids inline styles
  shows it unstyled (the text stays readable); the policy is not weakened.
"""

from __future__ import annotations

import codecs
import enum
import html
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

MAX_INJECT_BODY = 8 * 1024 * 1024
MAX_VALUE_CHARS = 200  # one value in the bar (a policy id, the AS address, ...)
MAX_POLICY_IDS = 16

DECODABLE_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})

# dropped from an injected response (framing, coding, validators of the old bytes)
_DROP_WHEN_INJECTED = frozenset({
    b"content-length", b"transfer-encoding", b"content-encoding", b"content-md5",
    b"content-digest", b"repr-digest", b"digest", b"accept-ranges",
})
_NO_BODY_STATUSES = frozenset({204, 205, 206})


class InjectError(RuntimeError):
    """Misuse of a ResponseInjector (calls out of order). Response bytes,
    however malformed, never raise: they are passed through instead."""


# ---- the bar ------------------------------------------------------------------


def _text(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """Untrusted value -> ASCII HTML text: controls removed, shortened, escaped,
    non-ASCII as numeric character references."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(value))
    s = " ".join(s.split())
    if len(s) > limit:
        s = s[:limit - 3] + "..."
    return html.escape(s, quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")


def _when(verified_at: datetime | float) -> str:
    if isinstance(verified_at, datetime):
        dt = verified_at if verified_at.tzinfo else verified_at.replace(tzinfo=timezone.utc)
    else:
        dt = datetime.fromtimestamp(float(verified_at), timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_GREEN, _RED = "#17692e", "#a61b1b"
_BAR_STYLE = (
    "all:initial;display:block;position:sticky;top:0;left:0;right:0;z-index:2147483647;"
    "box-sizing:border-box;width:100%;margin:0;padding:6px 12px;background:{bg};color:#fff;"
    "font:13px/1.5 system-ui,-apple-system,'Segoe UI',Arial,sans-serif;"
    "border-bottom:2px solid rgba(0,0,0,.35);box-shadow:0 1px 4px rgba(0,0,0,.3);text-align:left;"
)
_ITEM_STYLE = "all:initial;display:inline-block;margin:0 14px 0 0;color:#fff;font:inherit;white-space:nowrap;"
_KEY_STYLE = "all:initial;color:#fff;font:inherit;opacity:.8;"
_VAL_STYLE = "all:initial;color:#fff;font:inherit;font-weight:bold;"


@dataclass(frozen=True)
class AttestationBanner:
    """What the bar shows. Every value may come from a remote token: it is
    escaped when rendered, never trusted."""

    attested: bool
    tee_type: str | None = None
    policy_ids: tuple[str, ...] = ()
    as_address: str | None = None
    verified_at: datetime | float = field(default_factory=lambda: datetime.now(timezone.utc))
    detail: str | None = None  # e.g. why verification failed

    def text(self) -> str:
        """The bar as plain text (what a user reads; for logs and tests)."""
        parts = [f"TNG remote attestation: {'ATTESTED' if self.attested else 'NOT ATTESTED'}"]
        for key, val in self._items():
            parts.append(f"{key}: {val}")
        return " | ".join(parts)

    def _items(self) -> list[tuple[str, str]]:
        ids = [str(p) for p in self.policy_ids[:MAX_POLICY_IDS]]
        if len(self.policy_ids) > MAX_POLICY_IDS:
            ids.append(f"(+{len(self.policy_ids) - MAX_POLICY_IDS} more)")
        items = [
            ("TEE", self.tee_type if self.tee_type else "unknown"),
            ("Policy", ", ".join(ids) if ids else "none"),
            ("AS", self.as_address if self.as_address else "none"),
            ("Verified at" if self.attested else "Checked at", _when(self.verified_at)),
        ]
        if self.detail:
            items.append(("Detail", self.detail))
        return items

    def html(self) -> str:
        """A self-contained bar: custom elements (site CSS for div/span does not
        reach them), inline styles, ASCII only."""
        status = "ATTESTED" if self.attested else "NOT ATTESTED"
        mark = "&#10004;" if self.attested else "&#10008;"
        items = [
            f'<tng-attest-item style="{_ITEM_STYLE}"><tng-attest-key style="{_KEY_STYLE}">'
            f'{_text(key)}: </tng-attest-key><tng-attest-val style="{_VAL_STYLE}">'
            f'{_text(val, MAX_VALUE_CHARS if key != "Policy" else 4 * MAX_VALUE_CHARS)}'
            "</tng-attest-val></tng-attest-item>"
            for key, val in self._items()
        ]
        return (
            f'<tng-attestation-banner id="tng-attestation-banner" role="status" '
            f'data-attested="{"true" if self.attested else "false"}" '
            f'style="{_BAR_STYLE.format(bg=_GREEN if self.attested else _RED)}">'
            f'<tng-attest-item style="{_ITEM_STYLE}"><tng-attest-val style="{_VAL_STYLE}">'
            f"{mark} TNG remote attestation: {status}</tng-attest-val></tng-attest-item>"
            + "".join(items)
            + "</tng-attestation-banner>"
        )

    def html_bytes(self) -> bytes:
        return self.html().encode("ascii")


# ---- header helpers -------------------------------------------------------------


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.strip().lower() == name]


def _tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [t.strip().lower() for v in _values(headers, name)
            for t in v.decode("latin-1").split(",") if t.strip()]


def _media_type(value: bytes) -> tuple[str, dict[str, str]]:
    text = value.decode("latin-1")
    mtype, _, rest = text.partition(";")
    params = {}
    for part in rest.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            params[k.strip().lower()] = v.strip().strip('"').strip()
    return mtype.strip().lower(), params


def _ascii_compatible(charset: str) -> bool:
    try:
        codec = codecs.lookup(charset)
    except (LookupError, ValueError):
        return True  # browsers fall back to windows-1252/utf-8 for unknown labels
    try:
        return codec.encode("<body>")[0] == b"<body>"
    except Exception:  # noqa: BLE001 - any odd codec: do not inject
        return False


def restrict_accept_encoding(request_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The inner request's headers with Accept-Encoding limited to codings the
    injector can decode (gzip, x-gzip, deflate, identity; q-values kept, `*`
    and others dropped). Absent or nothing left acceptable -> `identity`.
    The field stays where the first Accept-Encoding was (else it is appended)."""
    kept: list[str] = []
    any_acceptable = False
    for token in _tokens(request_headers, b"accept-encoding"):
        coding, _, params = token.partition(";")
        coding = coding.strip()
        if coding not in DECODABLE_CODINGS and coding != "identity":
            continue
        q = 1.0
        for p in params.split(";"):
            k, sep, v = p.partition("=")
            if sep and k.strip() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            any_acceptable = True
        kept.append(f"{coding};{params.strip()}" if params.strip() else coding)
    value = (", ".join(kept) if any_acceptable else "identity").encode("latin-1")
    out: list[tuple[bytes, bytes]] = []
    placed = False
    for n, v in request_headers:
        if n.strip().lower() == b"accept-encoding":
            if not placed:
                out.append((n, value))
                placed = True
            continue
        out.append((n, v))
    if not placed:
        out.append((b"Accept-Encoding", value))
    return out


# ---- where the bar goes ---------------------------------------------------------

_WS = b"\t\n\f\r "
_NAME = re.compile(rb"[A-Za-z][^\t\n\f\r />]*")
_ATTR_NAME = re.compile(rb"[^\t\n\f\r />][^\t\n\f\r />=]*")
_SPACES = re.compile(rb"[\t\n\f\r ]*")
_SEPARATORS = re.compile(rb"[\t\n\f\r /]+")
_UNQUOTED = re.compile(rb"[^\t\n\f\r >]*")
_RAW_TEXT = (b"script", b"style", b"title", b"textarea", b"xmp", b"iframe", b"noembed",
             b"noframes", b"noscript")
_RAW_END = {name: re.compile(rb"</" + name + rb"[\t\n\f\r />]", re.IGNORECASE) for name in _RAW_TEXT}
_TAG_OPEN = re.compile(rb"<[!?/A-Za-z]")
# start tags that do not end the head (HTML "in head"/"before head" modes), and <body>/<frameset>
_HEAD_TAGS = frozenset({b"html", b"head", b"meta", b"link", b"title", b"style", b"script", b"base",
                        b"noscript", b"template", b"basefont", b"bgsound", b"noframes", b"body",
                        b"frameset"})
MAX_SCAN_TAGS = 10_000
_BOMS = (codecs.BOM_UTF8,)
_UTF16_32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _tag_end(doc: bytes, i: int) -> int:
    """Index just after the `>` closing a start/end tag whose name ends at i;
    -1 if the document ends first (or the tag has more than MAX_SCAN_TAGS
    attributes: give up). Quoted attribute values may hold `>`."""
    n = len(doc)
    for _ in range(2 * MAX_SCAN_TAGS):
        if i >= n:
            break
        c = doc[i]
        if c == 0x3E:  # >
            return i + 1
        if c in _WS or c == 0x2F:  # whitespace or /
            i = _SEPARATORS.match(doc, i).end()
            continue
        i = _ATTR_NAME.match(doc, i).end()
        j = _SPACES.match(doc, i).end()
        if j < n and doc[j] == 0x3D:  # =
            j = _SPACES.match(doc, j + 1).end()
            if j < n and doc[j] in (0x22, 0x27):  # " or '
                k = doc.find(doc[j:j + 1], j + 1)
                if k < 0:
                    return -1
                i = k + 1
            else:
                i = _UNQUOTED.match(doc, j).end()
        else:
            i = j
    return -1


def find_insertion_point(doc: bytes) -> int | None:
    """Byte offset for the bar in an HTML document (see the module rules);
    None when the bar must not go in (a frameset document).

    The scan stops at the first start tag that cannot be in <head> (the body
    has then begun implicitly: the bar goes before it, via the fallbacks) or
    after MAX_SCAN_TAGS tags, so it costs about the size of the head."""
    start = next((len(b) for b in _BOMS if doc.startswith(b)), 0)
    after_doctype = after_html = after_head = None
    pos = start
    for _ in range(MAX_SCAN_TAGS):
        m = _TAG_OPEN.search(doc, pos)
        if m is None:
            break
        lt = m.start()
        if doc.startswith(b"<!--", lt):
            if doc.startswith(b">", lt + 4):  # <!--> is an (empty) comment
                pos = lt + 5
                continue
            if doc.startswith(b"->", lt + 4):  # <!---> too
                pos = lt + 6
                continue
            end = doc.find(b"-->", lt + 4)
            if end < 0:
                break
            pos = end + 3
            continue
        c = doc[lt + 1]
        if c in (0x21, 0x3F):  # <!doctype ...>, <!bogus>, <?pi>
            end = doc.find(b">", lt + 2)
            if end < 0:
                break
            if (after_doctype is None and after_html is None
                    and doc[lt + 2:lt + 9].lower() == b"doctype"):
                after_doctype = end + 1
            pos = end + 1
            continue
        if c == 0x2F:  # end tag
            m = _NAME.match(doc, lt + 2)
            if m is None:  # </ followed by a non-letter: a bogus comment up to >
                end = doc.find(b">", lt + 2)
                if end < 0:
                    break
                pos = end + 1
                continue
            end = _tag_end(doc, m.end())
            if end < 0:
                break
            if after_head is None and m.group().lower() == b"head":
                after_head = end
            pos = end
            continue
        m = _NAME.match(doc, lt + 1)
        name = m.group().lower()
        end = _tag_end(doc, m.end())
        if end < 0:
            break
        if name == b"body":
            return end
        if name == b"frameset":
            return None
        if name == b"plaintext":  # everything after it is text
            break
        if name == b"html" and after_html is None:
            after_html = end
        if name not in _HEAD_TAGS:  # body content: <body> is implied before it
            break
        if name in _RAW_END:
            close = _RAW_END[name].search(doc, end)
            if close is None:
                break
            pos = close.start()
            continue
        pos = end
    for candidate in (after_head, after_html, after_doctype):
        if candidate is not None:
            return candidate
    return start


def inject_html(doc: bytes, bar: bytes) -> bytes | None:
    """`doc` with `bar` inserted (module rules); None if it must stay as it is."""
    if doc.startswith(_UTF16_32_BOMS):
        return None
    at = find_insertion_point(doc)
    if at is None:
        return None
    return doc[:at] + bar + doc[at:]


# ---- content decoding -----------------------------------------------------------


class _GiveUp(Exception):
    """Internal: stop trying to inject, pass the origin's bytes through."""


class _Decoder:
    """Incremental decoder for one Content-Encoding with an output cap."""

    def __init__(self, coding: str, cap: int):
        self.coding = coding
        self.cap = cap
        self.out = bytearray()
        self._z = zlib.decompressobj(31) if coding in ("gzip", "x-gzip") else None
        self._head = b""  # deflate: first bytes until zlib vs raw can be told apart

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.coding == "deflate" and self._z is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            cmf, flg = data[0], data[1]
            zlib_wrapped = (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and ((cmf << 8) | flg) % 31 == 0
            self._z = zlib.decompressobj(15 if zlib_wrapped else -15)
        assert self._z is not None
        if self._z.eof:
            raise _GiveUp("data after the end of the compressed stream")
        room = self.cap - len(self.out)
        try:
            chunk = self._z.decompress(data, room + 1)
        except zlib.error as exc:
            raise _GiveUp(f"corrupt {self.coding} data ({exc})") from None
        if len(chunk) > room:
            raise _GiveUp(f"decoded body larger than {self.cap} bytes")
        self.out += chunk
        if self._z.eof and self._z.unused_data:
            raise _GiveUp("data after the end of the compressed stream")

    def finish(self) -> bytes:
        if self._z is None or not self._z.eof:
            raise _GiveUp(f"truncated {self.coding} data")
        return bytes(self.out)


# ---- the injector ---------------------------------------------------------------


class Decision(enum.Enum):
    PASS = "pass"  # forward head and body exactly as received
    INJECT = "inject"  # feed the body; the head comes from feed() or finish()


@dataclass(frozen=True)
class Head:
    """A response head to send. injected=True: Content-Length is the new body
    length and the body is uncompressed; False: the origin's head unchanged
    (frame it as the origin's response)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    injected: bool

    @property
    def content_length(self) -> int | None:
        values = {v.strip() for v in _values(self.headers, b"content-length")}
        if len(values) == 1:
            (v,) = values
            if v.isdigit():
                return int(v)
        return None


@dataclass(frozen=True)
class Output:
    head: Head | None = None  # send this head now (exactly once per response)
    body: bytes = b""  # then these body bytes


class ResponseInjector:
    """One response. start() once, then feed() per body piece, then finish()."""

    def __init__(self, banner: AttestationBanner, method: str | bytes = "GET", *,
                 max_body: int = MAX_INJECT_BODY, honor_no_transform: bool = True):
        self.banner = banner
        self.method = (method.decode("latin-1") if isinstance(method, bytes) else method).upper()
        self.max_body = max_body
        self.honor_no_transform = honor_no_transform
        self.decision: Decision | None = None
        self.reason = ""  # why not injected (for the log), "" when injected
        self.injected = False  # after finish(): the bar went in
        self._state = "new"  # new, pass, buffer, gave-up, done
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._raw: list[bytes] = []
        self._raw_len = 0
        self._decoder: _Decoder | None = None

    # -- decision
    def _why_not(self, status: int, headers: list[tuple[bytes, bytes]]) -> str:
        if self.method == "HEAD":
            return "HEAD request"
        if not 200 <= status < 300 or status in _NO_BODY_STATUSES:
            return f"status {status}"
        types = _values(headers, b"content-type")
        if len(types) != 1:
            return "no Content-Type" if not types else "several Content-Type fields"
        mtype, params = _media_type(types[0])
        if mtype != "text/html":
            return f"content type {mtype or '(empty)'}"
        charset = params.get("charset")
        if charset and not _ascii_compatible(charset):
            return f"charset {charset} is not ASCII-compatible"
        disposition = b"".join(_values(headers, b"content-disposition")).strip().lower()
        if disposition.startswith(b"attachment"):
            return "Content-Disposition: attachment"
        if self.honor_no_transform and "no-transform" in _tokens(headers, b"cache-control"):
            return "Cache-Control: no-transform"
        codings = [c for c in _tokens(headers, b"content-encoding") if c != "identity"]
        if len(codings) > 1:
            return f"Content-Encoding {', '.join(codings)} (several codings)"
        if codings and codings[0] not in DECODABLE_CODINGS:
            return f"Content-Encoding {codings[0]} cannot be decoded"
        return ""

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> Decision:
        if self._state != "new":
            raise InjectError("start() called twice")
        self._status = status
        self._headers = list(headers)
        self.reason = self._why_not(status, self._headers)
        if self.reason:
            self._state = "pass"
            self.decision = Decision.PASS
            return Decision.PASS
        codings = [c for c in _tokens(self._headers, b"content-encoding") if c != "identity"]
        self._decoder = _Decoder(codings[0], self.max_body) if codings else None
        self._state = "buffer"
        self.decision = Decision.INJECT
        return Decision.INJECT

    # -- body
    def _original_head(self) -> Head:
        return Head(self._status, list(self._headers), False)

    def _give_up(self, reason: str) -> Output:
        self.reason = reason
        self._state = "gave-up"
        body = b"".join(self._raw)
        self._raw.clear()
        self._decoder = None
        return Output(self._original_head(), body)

    def feed(self, piece: bytes) -> Output:
        if self._state in ("pass", "gave-up"):
            return Output(None, bytes(piece))
        if self._state != "buffer":
            raise InjectError(f"feed() in state {self._state}")
        piece = bytes(piece)
        if not piece:
            return Output()
        self._raw.append(piece)
        self._raw_len += len(piece)
        if self._raw_len > self.max_body:
            return self._give_up(f"body larger than {self.max_body} bytes")
        if self._decoder is not None:
            try:
                self._decoder.feed(piece)
            except _GiveUp as exc:
                return self._give_up(str(exc))
        return Output()

    def finish(self) -> Output:
        state, self._state = self._state, "done"
        if state in ("pass", "gave-up"):
            return Output()
        if state != "buffer":
            self._state = state
            raise InjectError(f"finish() in state {state}")
        if self._decoder is not None:
            try:
                doc = self._decoder.finish()
            except _GiveUp as exc:
                out = self._give_up(str(exc))
                self._state = "done"
                return out
        else:
            doc = b"".join(self._raw)
        new = inject_html(doc, self.banner.html_bytes())
        if new is None:
            out = self._give_up("no place for the bar (frameset or UTF-16/32 document)")
            self._state = "done"
            return out
        self._raw.clear()
        self._decoder = None
        self.injected = True
        self.reason = ""
        return Output(Head(self._status, _injected_headers(self._headers, len(new)), True), new)


def _injected_headers(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    out = []
    for n, v in headers:
        key = n.strip().lower()
        if key in _DROP_WHEN_INJECTED:
            continue
        if key == b"etag" and not v.strip().startswith(b"W/"):
            v = b"W/" + v.strip()  # the bytes changed: no longer byte-for-byte the same
        out.append((n, v))
    out.append((b"Content-Length", str(length).encode("ascii")))
    return out


def inject_response(banner: AttestationBanner, method: str | bytes, status: int,
                    headers: list[tuple[bytes, bytes]], body_pieces: Iterable[bytes], **kw) -> tuple[Head, bytes]:
    """Convenience for whole responses (tests, small bodies): (head, body)."""
    injector = ResponseInjector(banner, method, **kw)
    if injector.start(status, headers) is Decision.PASS:
        return Head(status, list(headers), False), b"".join(bytes(p) for p in body_pieces)
    head: Head | None = None
    body = bytearray()
    for out in (*(injector.feed(p) for p in body_pieces), injector.finish()):
        if out.head is not None:
            head = out.head
        body += out.body
    assert head is not None
    return head, bytes(body)
