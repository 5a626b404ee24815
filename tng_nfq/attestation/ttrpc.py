"""ttrpc, the lightweight RPC protocol of the CoCo Attestation Agent, as
sans-io objects: they are fed bytes and hand back bytes to send.

Wire format (PROTOCOLS.md section 3): each message is a 10-byte header
``u32 BE length | u32 BE stream id | u8 type | u8 flags`` followed by
``length`` bytes of protobuf.  A unary call is one request frame (type 1) on a
fresh odd stream id answered by one response frame (type 2) on the same id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from . import protobuf as pb
from .protobuf import ProtobufError

HEADER = struct.Struct(">IIBB")
HEADER_LEN = HEADER.size  # 10
MAX_DATA_LENGTH = 4 << 20  # 4 MiB, the limit of the reference implementations

TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3  # streaming only; a unary peer never sends it

# gRPC-style status codes used by ttrpc
CODE_OK = 0
CODE_INVALID_ARGUMENT = 3
CODE_NOT_FOUND = 5
CODE_RESOURCE_EXHAUSTED = 8
CODE_UNIMPLEMENTED = 12
CODE_INTERNAL = 13


class TtrpcError(Exception):
    """Malformed ttrpc traffic; the connection cannot be used any more."""


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode_frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_DATA_LENGTH:
        raise TtrpcError(f"message of {len(payload)} bytes exceeds the ttrpc limit of {MAX_DATA_LENGTH}")
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise TtrpcError(f"stream id {stream_id} out of range")
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


class FrameDecoder:
    """Reassembles frames from a byte stream.

    The length is checked as soon as a header is complete, so a peer that
    announces a huge message is refused before we buffer any of it.
    """

    def __init__(self, max_length: int = MAX_DATA_LENGTH):
        self.max_length = max_length
        self._buf = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise TtrpcError("decoder already failed")
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER_LEN:
            length, stream_id, frame_type, flags = HEADER.unpack_from(self._buf)
            if length > self.max_length:
                self._failed = True
                self._buf.clear()
                raise TtrpcError(
                    f"peer announced a {length}-byte message, over the limit of {self.max_length}")
            if len(self._buf) < HEADER_LEN + length:
                break
            payload = bytes(self._buf[HEADER_LEN:HEADER_LEN + length])
            del self._buf[:HEADER_LEN + length]
            frames.append(Frame(stream_id, frame_type, flags, payload))
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at EOF = truncated)."""
        return len(self._buf)


@dataclass(frozen=True)
class Request:
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        # proto3 leaves empty fields out; upstream's client does too, e.g. a
        # GetTeeType request has no payload field at all.
        fields: list = [(1, self.service), (2, self.method), (3, self.payload or None)]
        if self.timeout_nano:
            fields.append((4, self.timeout_nano))
        for key, value in self.metadata:
            fields.append((5, pb.encode_message([(1, key), (2, value)])))
        return pb.encode_message(fields)

    @classmethod
    def decode(cls, data: bytes) -> "Request":
        try:
            f = pb.decode_message(data)
            metadata = tuple((pb.get_string(kv, 1), pb.get_string(kv, 2))
                             for kv in pb.get_repeated_messages(f, 5))
            return cls(pb.get_string(f, 1), pb.get_string(f, 2), pb.get_bytes(f, 3),
                       pb.get_int(f, 4), metadata)
        except ProtobufError as exc:
            raise TtrpcError(f"malformed ttrpc request: {exc}") from exc


@dataclass(frozen=True)
class Response:
    payload: bytes = b""
    code: int = CODE_OK
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == CODE_OK

    def encode(self) -> bytes:
        fields: list = []
        # The reference servers always send a status; an OK one is empty.
        status = pb.encode_message([(1, self.code or None), (2, self.message or None)])
        fields.append((1, status))
        fields.append((2, self.payload or None))
        return pb.encode_message(fields)

    @classmethod
    def decode(cls, data: bytes) -> "Response":
        try:
            f = pb.decode_message(data)
            status = pb.get_message(f, 1) or {}
            return cls(pb.get_bytes(f, 2), pb.get_int(status, 1), pb.get_string(status, 2))
        except ProtobufError as exc:
            raise TtrpcError(f"malformed ttrpc response: {exc}") from exc


class ClientConnection:
    """Client side of one ttrpc connection: numbers calls with odd stream ids
    and matches responses to them."""

    def __init__(self) -> None:
        self._next_id = 1
        self._decoder = FrameDecoder()
        self._outstanding: set[int] = set()

    def send_request(self, request: Request) -> tuple[int, bytes]:
        """Returns (stream id, bytes to write)."""
        stream_id = self._next_id
        if stream_id > 0xFFFFFFFF:
            raise TtrpcError("stream ids exhausted; open a new connection")
        self._next_id += 2
        self._outstanding.add(stream_id)
        return stream_id, encode_frame(stream_id, TYPE_REQUEST, request.encode())

    def receive_data(self, data: bytes) -> list[tuple[int, Response]]:
        out = []
        for frame in self._decoder.feed(data):
            if frame.type != TYPE_RESPONSE:
                raise TtrpcError(f"server sent unexpected frame type {frame.type}")
            if frame.stream_id not in self._outstanding:
                raise TtrpcError(f"server answered unknown stream {frame.stream_id}")
            self._outstanding.discard(frame.stream_id)
            out.append((frame.stream_id, Response.decode(frame.payload)))
        return out


class ServerConnection:
    """Server side of one ttrpc connection.

    ``receive_data`` yields ``(stream_id, Request)`` for complete requests and
    ``(stream_id, Response)`` for requests that must be refused without calling
    a handler (a bad stream id or an undecodable request); the caller sends
    ``respond(stream_id, response)`` in both cases.
    """

    def __init__(self) -> None:
        self._decoder = FrameDecoder()

    def receive_data(self, data: bytes) -> Iterator[tuple[int, Request | Response]]:
        for frame in self._decoder.feed(data):
            if frame.type != TYPE_REQUEST:
                # Streaming data frames belong to calls we do not offer.
                continue
            if frame.stream_id % 2 != 1:
                yield frame.stream_id, Response(
                    code=CODE_INVALID_ARGUMENT,
                    message="stream id must be odd for client initiated streams")
                continue
            try:
                yield frame.stream_id, Request.decode(frame.payload)
            except TtrpcError as exc:
                yield frame.stream_id, Response(code=CODE_INVALID_ARGUMENT, message=str(exc))

    def respond(self, stream_id: int, response: Response) -> bytes:
        return encode_frame(stream_id, TYPE_RESPONSE, response.encode())

    @property
    def pending(self) -> int:
        return self._decoder.pending
