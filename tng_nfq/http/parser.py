"""Sans-io parsing of what an HTTP proxy client sends: request heads and the
framing of request bodies. Bytes in, parsed objects or a ParseError out; the
socket code lives in tng_nfq/tunnel/ingress/http_proxy.py.

Limits (documented in README.md, "http_proxy"):
- request line: MAX_REQUEST_LINE bytes, else 414;
- header section (all header lines): MAX_HEADER_BYTES bytes or MAX_HEADERS
  fields, else 431.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4 * 1024  # chunk size + extensions; real clients send a few bytes

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HOST = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._~!$&'()*+,;=%-]+))(?::(\d*))?$")

REASONS = {
    400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
    505: "HTTP Version Not Supported", 508: "Loop Detected",
}


class ParseError(Exception):
    """The request cannot be served; `status` is what to answer (then close)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> bytes:
    body = f"tng-nfq http_proxy: {message}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` (IPv6 in brackets) -> (host, port); ParseError(400) when malformed."""
    m = _HOST.match(authority)
    if m is None:
        raise ParseError(400, f"malformed destination {authority!r}")
    host = m.group(1) or m.group(2)
    port_text = m.group(3)
    if not port_text:
        if default_port is None:
            raise ParseError(400, f"destination {authority!r} has no port")
        return host, default_port
    port = int(port_text)
    if not 0 < port < 65536:
        raise ParseError(400, f"destination port {port} out of range")
    return host, port


@dataclass
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # as received (names keep their case), in order
    host: str  # destination
    port: int
    path: str = ""  # origin-form for absolute-URI requests; "" for CONNECT
    raw_size: int = 0  # bytes of the head as received

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated tokens of every field `name`, lowercased."""
        return [t.strip().lower() for v in self.values(name) for t in v.split(",") if t.strip()]

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def wants_close(self) -> bool:
        """After this request the client connection ends (RFC 9112 §9.3)."""
        connection = self.tokens("connection")
        if "close" in connection:
            return True
        return self.version < (1, 1) and "keep-alive" not in connection

    def body(self) -> "BodyFramer":
        """How the request body ends (RFC 9112 §6.3, request rules)."""
        te = self.tokens("transfer-encoding")
        cl = self.values("content-length")
        if te:
            if cl:  # both: a smuggling vector, refused outright (§6.3 item 3)
                raise ParseError(400, "both Transfer-Encoding and Content-Length")
            if self.version < (1, 1):
                raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te[-1] != "chunked":
                raise ParseError(400, "request Transfer-Encoding does not end with chunked")
            return ChunkedBody()
        if cl:
            values = {v.strip() for c in cl for v in c.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ParseError(400, f"invalid Content-Length {cl!r}")
            return LengthBody(int(next(iter(values))))
        return LengthBody(0)

    def rewritten(self, via: str | None = None) -> bytes:
        """The head to send to the origin: origin-form target, Host from the
        URI (a proxy must replace it, RFC 9112 §3.2.2), proxy-only fields
        dropped, optionally our Via marker appended."""
        assert not self.is_connect
        drop = {"proxy-connection", "keep-alive", "proxy-authorization", "host"}
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != 80:
            authority += f":{self.port}"
        lines = [f"{self.method} {self.path} HTTP/{self.version[0]}.{self.version[1]}", f"Host: {authority}"]
        lines += [f"{n}: {v}" for n, v in self.headers if n.lower() not in drop]
        if via is not None:
            lines.append(f"Via: {self.version[0]}.{self.version[1]} {via}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HeadParser:
    """Accumulates bytes until one request head is complete.

    `feed` returns the RequestHead once complete (bytes after it are in
    `rest`: body or the next request), None while more bytes are needed,
    and raises ParseError as soon as the bytes seen cannot become a valid head.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.rest = b""
        self.done = False

    @property
    def started(self) -> bool:
        return bool(self.buf)

    def feed(self, data: bytes) -> RequestHead | None:
        assert not self.done
        self.buf += data
        # RFC 9112 §2.2: ignore empty lines before the request line (left
        # over after a body by some clients).
        while self.buf[:2] == b"\r\n" or self.buf[:1] == b"\n":
            del self.buf[:2 if self.buf[:1] == b"\r" else 1]
        line_end = self.buf.find(b"\n")
        if line_end < 0:
            if len(self.buf) > MAX_REQUEST_LINE:
                raise ParseError(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
            return None
        if line_end + 1 > MAX_REQUEST_LINE + 2:  # the limit does not count the CRLF
            raise ParseError(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
        # Validate the request line early: garbage gets its 400 without
        # waiting for a head end that may never come.
        method, target, version = _request_line(bytes(self.buf[:line_end]).rstrip(b"\r"))
        m = _HEAD_END.search(self.buf, max(line_end - 1, 0))
        if m is None:
            if len(self.buf) - line_end > MAX_HEADER_BYTES:
                raise ParseError(431, f"header section larger than {MAX_HEADER_BYTES} bytes")
            return None
        header_bytes = bytes(self.buf[line_end + 1:m.start()])
        if len(header_bytes) > MAX_HEADER_BYTES:
            raise ParseError(431, f"header section larger than {MAX_HEADER_BYTES} bytes")
        headers = _headers(header_bytes)
        self.done = True
        self.rest = bytes(self.buf[m.end():])
        head = _request(method, target, version, headers)
        head.raw_size = m.end()
        return head


def _request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise ParseError(400, "malformed request method")
    vm = _VERSION.match(version)
    if vm is None:
        raise ParseError(400, "malformed HTTP version")
    if vm.group(1) != b"1":
        raise ParseError(505, f"{version.decode('latin-1')} is not supported (HTTP/1.x only)")
    if any(b < 0x21 or b == 0x7F for b in target):
        raise ParseError(400, "control characters in the request target")
    return method.decode("ascii"), target.decode("latin-1"), (1, int(vm.group(2)))


def _headers(raw: bytes) -> list[tuple[str, str]]:
    if not raw:
        return []
    lines = raw.split(b"\n")
    if len(lines) > MAX_HEADERS:
        raise ParseError(431, f"more than {MAX_HEADERS} header fields")
    headers = []
    for line in lines:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: RFC 9112 §5.2 allows a 400
            raise ParseError(400, "obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):  # also refuses "Name :" (§5.1)
            raise ParseError(400, "malformed header field")
        value = value.strip(b" \t")
        if any(b < 0x20 and b != 0x09 or b == 0x7F for b in value):
            raise ParseError(400, "control characters in a header value")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return headers


def _request(method: str, target: str, version: tuple[int, int], headers: list[tuple[str, str]]) -> RequestHead:
    if method == "CONNECT":
        host, port = parse_authority(target, None)  # authority-form: the port is required
        return RequestHead(method, target, version, headers, host, port)
    if target.startswith("/") or target == "*":
        raise ParseError(400, "not a proxy request: this is an HTTP proxy, send an absolute URI "
                              "(http://host:port/path) or CONNECT host:port")
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise ParseError(400, "malformed request target")
    if scheme.lower() != "http":
        raise ParseError(400, f"scheme {scheme!r} is not proxied as absolute URI; use CONNECT")
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:slash], rest[slash:]
    if "@" in authority:
        raise ParseError(400, "user information in the request URI")
    if "#" in path:
        path = path[:path.index("#")]
    if not path.startswith("/"):
        path = "/" + path
    host, port = parse_authority(authority, 80)
    return RequestHead(method, target, version, headers, host, port, path=path)


# ---- request bodies -------------------------------------------------------


class BodyFramer(abc.ABC):
    """Finds where a body ends in the byte stream; the bytes pass unchanged."""

    done: bool

    @abc.abstractmethod
    def feed(self, data: bytes) -> int:
        """How many leading bytes of `data` belong to the body (all, unless it ends inside)."""


@dataclass
class LengthBody(BodyFramer):
    remaining: int
    done: bool = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.remaining == 0

    def feed(self, data: bytes) -> int:
        n = min(len(data), self.remaining)
        self.remaining -= n
        self.done = self.remaining == 0
        return n


class ChunkedBody(BodyFramer):
    """RFC 9112 §7.1: size line, data, CRLF, ..., zero-size line, trailers,
    empty line. The chunk syntax is h1.BodyDecoder's (one parser for both
    the proxy, which only needs the boundary, and the encapsulation, which
    needs the data); the data comes back as views, so nothing is copied."""

    def __init__(self) -> None:
        from tng_nfq.http.h1 import BodyDecoder  # h1 builds on this module

        self._decoder = BodyDecoder(kind="chunked", views=True)
        self.done = False

    def feed(self, data: bytes) -> int:
        self._decoder.feed(data)
        self.done = self._decoder.done
        return len(data) - len(self._decoder.rest)
