"""Binary HTTP messages (RFC 9292), encoder and incremental decoder.

A message is a framing indicator (varint: 0/1 known-length request/response,
2/3 indeterminate-length request/response), control data (method, scheme,
authority, path -- or a status code, after any number of 1xx informational
responses), a header section, content and a trailer section, then optional
zero padding.  Every length is a QUIC varint.

Known-length form prefixes each field section and the content with its byte
count; indeterminate form ends each field section with a zero-length name and
sends content as length-prefixed chunks ending with a zero-length chunk.  The
indeterminate form is what a streaming sender uses, as it knows no lengths up
front: `encode_request_head` / `encode_response_head`, then `encode_chunk`
per body piece, then `encode_end`.

`BhttpDecoder` is fed arbitrary slices and returns events as soon as they are
complete; content is passed on as it arrives (never buffered whole), so large
bodies stream.  Field sections are buffered, bounded by `max_field_section`.
Names, values and control data are bytes, exactly as on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.varint import encode_varint, read_varint

KNOWN_LENGTH_REQUEST = 0
KNOWN_LENGTH_RESPONSE = 1
INDETERMINATE_LENGTH_REQUEST = 2
INDETERMINATE_LENGTH_RESPONSE = 3

Field = tuple[bytes, bytes]
Fields = Sequence[Field]

DEFAULT_MAX_FIELD_SECTION = 64 * 1024


# --- events -----------------------------------------------------------------

@dataclass(frozen=True)
class RequestHead:
    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: tuple[Field, ...]
    known_length: bool


@dataclass(frozen=True)
class InformationalResponse:
    status: int
    headers: tuple[Field, ...]


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: tuple[Field, ...]
    known_length: bool


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Trailers:
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class End:
    """The message is complete (possibly by allowed truncation at EOF)."""


Event = Union[RequestHead, InformationalResponse, ResponseHead, Data, Trailers, End]


# --- encoding ---------------------------------------------------------------

def _lp(value: bytes) -> bytes:
    return encode_varint(len(value)) + bytes(value)


def _field_lines(fields: Iterable[Field]) -> bytes:
    out = bytearray()
    for name, value in fields:
        if not name:
            # An empty name would read as the end of an indeterminate section.
            raise OhttpError("empty field name")
        out += _lp(name) + _lp(value)
    return bytes(out)


def _known_fields(fields: Iterable[Field]) -> bytes:
    return _lp(_field_lines(fields))


def _indeterminate_fields(fields: Iterable[Field]) -> bytes:
    return _field_lines(fields) + b"\x00"


def _control(method: bytes, scheme: bytes, authority: bytes, path: bytes) -> bytes:
    return _lp(method) + _lp(scheme) + _lp(authority) + _lp(path)


def _check_status(status: int, informational: bool) -> None:
    lo, hi = (100, 199) if informational else (200, 599)
    if not lo <= status <= hi:
        raise OhttpError(f"status {status} outside {lo}..{hi}")


def encode_request(method: bytes, scheme: bytes, authority: bytes, path: bytes,
                   headers: Fields = (), content: bytes = b"", trailers: Fields = (),
                   *, known_length: bool = True) -> bytes:
    """A whole request in one piece."""
    if known_length:
        return (encode_varint(KNOWN_LENGTH_REQUEST) + _control(method, scheme, authority, path)
                + _known_fields(headers) + _lp(content) + _known_fields(trailers))
    return (encode_request_head(method, scheme, authority, path, headers)
            + encode_chunk(content) + encode_end(trailers))


def encode_response(status: int, headers: Fields = (), content: bytes = b"",
                    trailers: Fields = (), *,
                    informational: Sequence[tuple[int, Fields]] = (),
                    known_length: bool = True) -> bytes:
    """A whole response in one piece, after any 1xx `informational` responses."""
    if known_length:
        out = bytearray(encode_varint(KNOWN_LENGTH_RESPONSE))
        for info_status, info_headers in informational:
            _check_status(info_status, True)
            out += encode_varint(info_status) + _known_fields(info_headers)
        _check_status(status, False)
        out += encode_varint(status) + _known_fields(headers) + _lp(content) + _known_fields(trailers)
        return bytes(out)
    return encode_response_head(status, headers, informational) + encode_chunk(content) + encode_end(trailers)


def encode_request_head(method: bytes, scheme: bytes, authority: bytes, path: bytes,
                        headers: Fields = ()) -> bytes:
    """Start of an indeterminate-length request; body via encode_chunk/encode_end."""
    return (encode_varint(INDETERMINATE_LENGTH_REQUEST) + _control(method, scheme, authority, path)
            + _indeterminate_fields(headers))


def encode_response_head(status: int, headers: Fields = (),
                         informational: Sequence[tuple[int, Fields]] = ()) -> bytes:
    """Start of an indeterminate-length response; body via encode_chunk/encode_end."""
    out = bytearray(encode_varint(INDETERMINATE_LENGTH_RESPONSE))
    for info_status, info_headers in informational:
        _check_status(info_status, True)
        out += encode_varint(info_status) + _indeterminate_fields(info_headers)
    _check_status(status, False)
    out += encode_varint(status) + _indeterminate_fields(headers)
    return bytes(out)


def encode_chunk(data: bytes) -> bytes:
    """One content chunk of an indeterminate-length message.  Empty data gives
    nothing: a zero-length chunk would end the content."""
    return _lp(data) if data else b""


def encode_end(trailers: Fields = ()) -> bytes:
    """End of indeterminate-length content, then the trailer section."""
    return b"\x00" + _indeterminate_fields(trailers)


# --- decoding ---------------------------------------------------------------

class _NeedMore(Exception):
    """The buffer ends inside the item being parsed; wait for more bytes."""


(_FRAMING, _CONTROL, _STATUS, _FIELDS, _CONTENT_LEN, _CONTENT, _CHUNK_LEN, _CHUNK,
 _PADDING, _DONE) = range(10)

# What a field section being parsed is for.
_HEADERS, _INFORMATIONAL, _TRAILERS = range(3)


class BhttpDecoder:
    """Incremental decoder: `feed` slices, get events; `finish` at end of input.

    `expect` ("request"/"response") rejects the other kind up front.
    """

    def __init__(self, *, expect: str | None = None,
                 max_field_section: int = DEFAULT_MAX_FIELD_SECTION):
        if expect not in (None, "request", "response"):
            raise ValueError("expect must be None, 'request' or 'response'")
        self._expect = expect
        self._max = max_field_section
        self._buf = bytearray()
        self._pos = 0
        self._state = _FRAMING
        self._known = False
        self._is_request = False
        self._control: list[bytes] = []
        self._status = 0
        self._section = _HEADERS
        self._fields: list[Field] = []
        self._section_size = 0
        self._remaining = 0
        self._chunks_seen = False
        self._failed = False

    @property
    def done(self) -> bool:
        return self._state in (_PADDING, _DONE)

    def feed(self, data: bytes) -> list[Event]:
        if self._failed:
            raise OhttpError("decoder already failed")
        events: list[Event] = []
        if self._pos == len(self._buf) and isinstance(data, bytes):
            data = self._content_fast(data, events)
        self._buf += data
        try:
            while True:
                try:
                    if not self._step(events):
                        break
                except _NeedMore:
                    break
        except OhttpError:
            self._failed = True
            raise
        # Drop consumed bytes so a long stream does not grow the buffer.
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return events

    def _content_fast(self, data: bytes, events: list[Event]):
        """With nothing buffered: content (and chunk lengths between content)
        straight from `data`, no trip through the buffer, no copy when a
        whole slice is content.  What is left for the state machine."""
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state in (_CHUNK, _CONTENT) and self._remaining:
                take = min(n - pos, self._remaining)
                events.append(Data(data if take == n else data[pos:pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                if state == _CONTENT:
                    self._start_fields(_TRAILERS)
                    break
                self._state = _CHUNK_LEN
            elif state == _CHUNK_LEN:
                got = read_varint(data, pos)
                if got is None or got[0] == 0:
                    break  # split length, or the end of the content: the state machine's
                self._chunks_seen = True
                self._remaining, pos = got
                self._state = _CHUNK
            else:
                break
        return memoryview(data)[pos:] if pos else data

    def finish(self) -> list[Event]:
        """End of input: the message must be complete, or truncated only where
        RFC 9292 §3.8 allows: empty trailers, then empty content, then (as
        RFC 9458 Appendix A does) an empty header section left out."""
        if self._failed:
            raise OhttpError("decoder already failed")
        events: list[Event] = []
        pending = len(self._buf) - self._pos
        at_section_start = (self._state == _FIELDS and pending == 0 and not self._fields
                            and self._section_size == 0)
        if at_section_start and self._section == _HEADERS:
            # RFC 9458's own example request ends right after the path: an
            # empty header section left out along with content and trailers.
            self._field_section_done(events, ())
        truncatable = (
            (self._state == _CONTENT_LEN and pending == 0)
            or (self._state == _CHUNK_LEN and not self._chunks_seen and pending == 0)
            or (at_section_start and self._section == _TRAILERS)
        )
        if truncatable:
            events.append(End())
            self._state = _DONE
        elif self._state not in (_PADDING, _DONE):
            self._failed = True
            raise OhttpError("truncated binary HTTP message")
        self._state = _DONE
        return events

    # -- parsing primitives: read at self._pos, raise _NeedMore if short --

    def _varint(self) -> int:
        got = read_varint(self._buf, self._pos)
        if got is None:
            raise _NeedMore
        value, self._pos = got
        return value

    def _length_prefixed(self, what: str) -> bytes:
        start = self._pos
        length = self._varint()
        if length > self._max:
            raise OhttpError(f"{what} longer than {self._max} bytes")
        if len(self._buf) - self._pos < length:
            self._pos = start
            raise _NeedMore
        value = bytes(self._buf[self._pos:self._pos + length])
        self._pos += length
        return value

    # -- the state machine; returns False when nothing more can be done --

    def _step(self, events: list[Event]) -> bool:
        state = self._state
        if state == _FRAMING:
            self._framing()
        elif state == _CONTROL:
            self._control.append(self._length_prefixed("control data"))
            if len(self._control) == 4:
                self._start_fields(_HEADERS)
        elif state == _STATUS:
            start = self._pos
            status = self._varint()
            if 100 <= status <= 199:
                self._status, section = status, _INFORMATIONAL
            elif 200 <= status <= 599:
                self._status, section = status, _HEADERS
            else:
                self._pos = start
                raise OhttpError(f"invalid status code {status}")
            self._start_fields(section)
        elif state == _FIELDS:
            self._field_section(events)
        elif state == _CONTENT_LEN:
            self._remaining = self._varint()
            self._state = _CONTENT
        elif state == _CONTENT:
            self._content(events, _FIELDS)
        elif state == _CHUNK_LEN:
            length = self._varint()
            if length == 0:
                self._start_fields(_TRAILERS)
            else:
                self._chunks_seen = True
                self._remaining = length
                self._state = _CHUNK
        elif state == _CHUNK:
            self._content(events, _CHUNK_LEN)
        elif state == _PADDING:
            rest = self._buf[self._pos:]
            if rest.count(0) != len(rest):
                raise OhttpError("non-zero bytes after the binary HTTP message")
            self._pos = len(self._buf)
            return False
        else:  # _DONE
            if len(self._buf) > self._pos:
                raise OhttpError("data after the end of input")
            return False
        return True

    def _framing(self) -> None:
        indicator = self._varint()
        if indicator > INDETERMINATE_LENGTH_RESPONSE:
            raise OhttpError(f"unknown binary HTTP framing indicator {indicator}")
        self._is_request = indicator in (KNOWN_LENGTH_REQUEST, INDETERMINATE_LENGTH_REQUEST)
        self._known = indicator in (KNOWN_LENGTH_REQUEST, KNOWN_LENGTH_RESPONSE)
        kind = "request" if self._is_request else "response"
        if self._expect and self._expect != kind:
            raise OhttpError(f"expected a binary HTTP {self._expect}, got a {kind}")
        self._state = _CONTROL if self._is_request else _STATUS

    def _start_fields(self, section: int) -> None:
        self._state = _FIELDS
        self._section = section
        self._fields = []
        self._section_size = 0

    def _field_section(self, events: list[Event]) -> None:
        if self._known:
            body = self._length_prefixed("field section")
            self._fields = _parse_field_lines(body)
        else:
            # One line at a time, committing each, so a section arriving byte
            # by byte is not re-parsed from its start on every feed.
            while True:
                start = self._pos
                name = self._length_prefixed("field name")
                if not name:
                    break
                try:
                    value = self._length_prefixed("field value")
                except _NeedMore:
                    self._pos = start
                    raise
                self._section_size += self._pos - start
                if self._section_size > self._max:
                    raise OhttpError(f"field section longer than {self._max} bytes")
                self._fields.append((name, value))
        fields = tuple(self._fields)
        self._fields = []
        self._section_size = 0
        self._field_section_done(events, fields)

    def _field_section_done(self, events: list[Event], fields: tuple[Field, ...]) -> None:
        if self._section == _INFORMATIONAL:
            events.append(InformationalResponse(self._status, fields))
            self._state = _STATUS
        elif self._section == _HEADERS:
            if self._is_request:
                method, scheme, authority, path = self._control
                events.append(RequestHead(method, scheme, authority, path, fields, self._known))
            else:
                events.append(ResponseHead(self._status, fields, self._known))
            self._state = _CONTENT_LEN if self._known else _CHUNK_LEN
        else:
            if fields:
                events.append(Trailers(fields))
            events.append(End())
            self._state = _PADDING

    def _content(self, events: list[Event], next_state: int) -> None:
        available = len(self._buf) - self._pos
        if self._remaining and not available:
            raise _NeedMore
        take = min(available, self._remaining)
        if take:
            piece = bytes(self._buf[self._pos:self._pos + take])
            self._pos += take
            self._remaining -= take
            events.append(Data(piece))
        if self._remaining:
            raise _NeedMore
        if next_state == _FIELDS:
            self._start_fields(_TRAILERS)
        else:
            self._state = next_state


def _parse_field_lines(body: bytes) -> list[Field]:
    fields, pos = [], 0
    while pos < len(body):
        parts = []
        for _ in range(2):
            got = read_varint(body, pos)
            if got is None:
                raise OhttpError("field line overruns its section")
            length, pos = got
            if pos + length > len(body):
                raise OhttpError("field line overruns its section")
            parts.append(body[pos:pos + length])
            pos += length
        if not parts[0]:
            raise OhttpError("empty field name")
        fields.append((parts[0], parts[1]))
    return fields


def decode(data: bytes, *, expect: str | None = None,
           max_field_section: int = DEFAULT_MAX_FIELD_SECTION) -> list[Event]:
    """All events of one complete message (convenience for small messages)."""
    decoder = BhttpDecoder(expect=expect, max_field_section=max_field_section)
    return decoder.feed(data) + decoder.finish()
