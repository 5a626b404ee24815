"""Sans-io HTTP/1.1 pieces for the HTTP encapsulation endpoints: they take
whole messages apart (head, decoded body pieces) and put them back together,
where the http_proxy ingress only finds message boundaries.

- `OriginHeadParser`: a request head in origin form (`GET /path HTTP/1.1`,
  destination from Host), as an application sends it to a mapping or
  netfilter listener, and as an HTTP client sends it to the egress;
- `ResponseHeadParser`: a status line and header section;
- `BodyDecoder`: Content-Length / chunked / until-close bodies, decoded into
  data pieces (chunk framing removed, trailers collected);
- `request_head` / `response_head` / `chunk` / `LAST_CHUNK`: serialisation.

Limits are the ones of tng_nfq/http/parser.py (request line, header bytes,
header count), reported as ParseError with the status to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tng_nfq.http.parser import (
    MAX_CHUNK_LINE,
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    ParseError,
    _headers,
    _request_line,
)

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(rb"^HTTP/1\.(\d) (\d{3})(?: (.*))?$")

# Connection-scoped fields (RFC 9110 §7.6.1): never copied between hops.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})

Headers = list[tuple[str, str]]


def header_values(headers: Headers, name: str) -> list[str]:
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def header_tokens(headers: Headers, name: str) -> list[str]:
    return [t.strip().lower() for v in header_values(headers, name) for t in v.split(",") if t.strip()]


def end_to_end(headers: Headers) -> Headers:
    """`headers` without hop-by-hop fields nor those named in Connection."""
    named = set(header_tokens(headers, "connection"))
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


@dataclass
class Request:
    method: str
    target: str  # as sent: origin form "/p?q", or absolute "http://h/p"
    version: tuple[int, int]
    headers: Headers
    authority: str = ""  # Host (or the absolute URI's authority)
    path: str = "/"  # origin form: path and query

    @property
    def wants_close(self) -> bool:
        tokens = header_tokens(self.headers, "connection")
        return "close" in tokens or (self.version < (1, 1) and "keep-alive" not in tokens)

    def body(self) -> "BodyDecoder":
        te = header_tokens(self.headers, "transfer-encoding")
        cl = header_values(self.headers, "content-length")
        if te:
            if cl:
                raise ParseError(400, "both Transfer-Encoding and Content-Length")
            if te[-1] != "chunked":
                raise ParseError(400, "request Transfer-Encoding does not end with chunked")
            return BodyDecoder.chunked()
        if cl:
            return BodyDecoder.length(_content_length(cl))
        return BodyDecoder.length(0)


@dataclass
class Response:
    status: int
    reason: str
    version: tuple[int, int]
    headers: Headers

    def body(self, request_method: str) -> "BodyDecoder":
        """RFC 9112 §6.3, response rules."""
        if request_method == "HEAD" or self.status < 200 or self.status in (204, 304):
            return BodyDecoder.length(0)
        te = header_tokens(self.headers, "transfer-encoding")
        if te:
            if te[-1] == "chunked":
                return BodyDecoder.chunked()
            return BodyDecoder.until_close()
        cl = header_values(self.headers, "content-length")
        if cl:
            try:
                return BodyDecoder.length(_content_length(cl))
            except ParseError as exc:
                raise ParseError(502, f"origin sent {exc.message}") from None
        return BodyDecoder.until_close()

    @property
    def wants_close(self) -> bool:
        tokens = header_tokens(self.headers, "connection")
        return "close" in tokens or (self.version < (1, 1) and "keep-alive" not in tokens)


def _content_length(values: list[str]) -> int:
    distinct = {v.strip() for c in values for v in c.split(",")}
    if len(distinct) != 1 or not next(iter(distinct)).isdigit():
        raise ParseError(400, f"invalid Content-Length {values!r}")
    return int(next(iter(distinct)))


class _HeadBuffer:
    """Collects bytes until an empty line ends a head; `rest` keeps what follows."""

    def __init__(self, first_line_limit: int) -> None:
        self.buf = bytearray()
        self.rest = b""
        self.done = False
        self._limit = first_line_limit

    @property
    def started(self) -> bool:
        return bool(self.buf)

    def _feed(self, data: bytes) -> tuple[bytes, Headers] | None:
        assert not self.done
        self.buf += data
        while self.buf[:2] == b"\r\n" or self.buf[:1] == b"\n":
            del self.buf[:2 if self.buf[:1] == b"\r" else 1]
        line_end = self.buf.find(b"\n")
        if line_end < 0 or line_end > self._limit + 1:
            if len(self.buf) > self._limit + 2:
                raise ParseError(414, f"first line longer than {self._limit} bytes")
            return None
        m = _HEAD_END.search(self.buf, max(line_end - 1, 0))
        if m is None:
            if len(self.buf) - line_end > MAX_HEADER_BYTES:
                raise ParseError(431, f"header section larger than {MAX_HEADER_BYTES} bytes")
            return None
        first = bytes(self.buf[:line_end]).rstrip(b"\r")
        raw = bytes(self.buf[line_end + 1:m.start()])
        if len(raw) > MAX_HEADER_BYTES:
            raise ParseError(431, f"header section larger than {MAX_HEADER_BYTES} bytes")
        headers = _headers(raw)
        self.rest = bytes(self.buf[m.end():])
        self.done = True
        return first, headers


class OriginHeadParser(_HeadBuffer):
    """A request head sent to a server (origin form, or absolute form as a
    proxy would receive it; CONNECT is refused: only HTTP can be encapsulated)."""

    def __init__(self) -> None:
        super().__init__(MAX_REQUEST_LINE)

    def feed(self, data: bytes) -> Request | None:
        got = self._feed(data)
        if got is None:
            return None
        line, headers = got
        method, target, version = _request_line(line)
        if method == "CONNECT":
            raise ParseError(400, "CONNECT cannot be carried by HTTP encapsulation (HTTP requests only)")
        hosts = header_values(headers, "host")
        if target.startswith("/"):
            path, authority = target, (hosts[0].strip() if hosts else "")
        elif target == "*":
            path, authority = "*", (hosts[0].strip() if hosts else "")
        else:
            scheme, sep, rest = target.partition("://")
            if not sep or scheme.lower() != "http":
                raise ParseError(400, "malformed request target")
            slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            authority, path = rest[:slash], rest[slash:] or "/"
            if not path.startswith("/"):
                path = "/" + path
        if len(hosts) > 1:
            raise ParseError(400, "more than one Host field")
        if version >= (1, 1) and not hosts and target.startswith("/"):
            raise ParseError(400, "HTTP/1.1 request without Host")
        return Request(method, target, version, headers, authority=authority, path=path)


class ResponseHeadParser(_HeadBuffer):
    def __init__(self) -> None:
        super().__init__(MAX_REQUEST_LINE)

    def feed(self, data: bytes) -> Response | None:
        try:
            got = self._feed(data)
        except ParseError as exc:
            raise ParseError(502, f"malformed response from the origin: {exc.message}") from None
        if got is None:
            return None
        line, headers = got
        m = _STATUS_LINE.match(line)
        if m is None:
            raise ParseError(502, "malformed status line from the origin")
        reason = (m.group(3) or b"").decode("latin-1")
        return Response(int(m.group(2)), reason, (1, int(m.group(1))), headers)


# ---- bodies -----------------------------------------------------------------


@dataclass
class BodyDecoder:
    """Feed raw bytes; get the decoded body pieces. `rest` holds bytes after
    the body (the next message), `trailers` the chunked trailer fields."""

    kind: str  # "length", "chunked", "close"
    remaining: int = 0
    done: bool = False
    rest: bytes = b""
    trailers: Headers = field(default_factory=list)
    _state: str = "size"
    _line: bytearray = field(default_factory=bytearray)
    # chunked data as memoryview slices of the fed bytes instead of copies,
    # for consumers that take any bytes-like piece (HttpStream.body(views=True))
    views: bool = False

    @classmethod
    def length(cls, n: int) -> "BodyDecoder":
        return cls("length", remaining=n, done=n == 0)

    @classmethod
    def chunked(cls) -> "BodyDecoder":
        return cls("chunked")

    @classmethod
    def until_close(cls) -> "BodyDecoder":
        return cls("close")

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.rest += data
            return []
        if self.kind == "close":
            return [data] if data else []
        if self.kind == "length":
            piece = data[:self.remaining]
            self.remaining -= len(piece)
            if self.remaining == 0:
                self.done = True
                self.rest += data[len(piece):]
            return [piece] if piece else []
        return self._feed_chunked(data)

    def eof(self) -> None:
        """The connection ended: fine for until-close bodies, truncation otherwise."""
        if self.kind == "close":
            self.done = True
        elif not self.done:
            raise ParseError(400, "connection closed inside a message body")

    def _feed_chunked(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, n = 0, len(data)
        src = memoryview(data) if self.views else data
        while pos < n and not self.done:
            if self._state == "data":
                k = min(self.remaining, n - pos)
                out.append(src[pos:pos + k])
                pos += k
                self.remaining -= k
                if self.remaining == 0:
                    self._state = "data-end"
                continue
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            self._line += data[pos:end]
            pos = end
            if len(self._line) > MAX_CHUNK_LINE:
                raise ParseError(400, "chunk line too long")
            if nl < 0:
                break
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            if self._state == "size":
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
                    raise ParseError(400, "malformed chunk size")
                self.remaining = int(size_text, 16)
                self._state = "data" if self.remaining else "trailer"
            elif self._state == "data-end":
                if line:
                    raise ParseError(400, "chunk data longer than its size")
                self._state = "size"
            elif line:
                self.trailers.extend(_headers(line))
            else:
                self.done = True
        if self.done:
            self.rest += data[pos:]
        return out


# ---- serialisation ------------------------------------------------------------


def request_head(method: str, target: str, headers: Headers) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_head(status: int, reason: str, headers: Headers) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}".rstrip(), *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
