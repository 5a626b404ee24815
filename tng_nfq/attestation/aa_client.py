"""Client for the CoCo Attestation Agent over ttrpc on a unix socket.

The protocol work is in ``ttrpc``; this module only moves bytes over a
blocking socket.  Callers run it in a background thread.
"""

from __future__ import annotations

import socket
import time

from . import protobuf as pb
from .protobuf import ProtobufError
from .ttrpc import ClientConnection, Request, Response, TtrpcError

SERVICE = "attestation_agent.AttestationAgentService"
GET_EVIDENCE = "GetEvidence"
GET_TEE_TYPE = "GetTeeType"
GET_ADDITIONAL_EVIDENCE = "GetAdditionalEvidence"

DEFAULT_AA_ADDR = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"


class AttestationAgentError(Exception):
    pass


def socket_path_of(aa_addr: str) -> str:
    """The filesystem (or abstract, ``@name``) socket path named by aa_addr."""
    if aa_addr.startswith(("http://", "https://")):
        raise AttestationAgentError(
            f"attestation agent at {aa_addr}: REST attestation agent not supported "
            "(use the ttrpc unix socket, unix:///...)")
    if aa_addr.startswith("unix://"):
        path = aa_addr[len("unix://"):]
    elif aa_addr.startswith("/"):
        path = aa_addr
    else:
        raise AttestationAgentError(
            f"attestation agent address {aa_addr!r} is not unix:///absolute/path")
    if path.startswith("@") and len(path) > 1:
        return "\0" + path[1:]  # Linux abstract socket
    if not path.startswith("/"):
        raise AttestationAgentError(
            f"attestation agent address {aa_addr!r} is not unix:///absolute/path")
    return path


class AttestationAgentClient:
    def __init__(self, aa_addr: str, timeout: float = 50.0):
        self.aa_addr = aa_addr
        self.timeout = timeout
        self._path = socket_path_of(aa_addr)

    # -- public calls -------------------------------------------------------

    def get_evidence(self, runtime_data: bytes) -> bytes:
        with self._session() as s:
            return s.get_evidence(runtime_data)

    def get_tee_type(self) -> str:
        with self._session() as s:
            return s.get_tee_type()

    def get_additional_evidence(self, runtime_data: bytes) -> bytes | None:
        try:
            with self._session() as s:
                return s.get_additional_evidence(runtime_data)
        except AttestationAgentError:
            return None

    def collect(self, runtime_data: bytes) -> tuple[str, bytes, bytes | None]:
        """GetEvidence, GetTeeType, GetAdditionalEvidence on one connection,
        in upstream's order; returns (tee_type, evidence, additional)."""
        with self._session() as s:
            evidence = s.get_evidence(runtime_data)
            tee = s.get_tee_type()
            try:
                # upstream asks with empty runtime data and shrugs off failures
                additional = s.get_additional_evidence(b"")
            except AttestationAgentError:
                additional = None
        return tee, evidence, additional

    # -- plumbing -----------------------------------------------------------

    def _session(self) -> "_Session":
        return _Session(self)


class _Session:
    """One connection; several calls, one after the other."""

    def __init__(self, client: AttestationAgentClient):
        self.c = client
        self.sock: socket.socket | None = None
        self.conn = ClientConnection()
        self.deadline = 0.0

    def __enter__(self) -> "_Session":
        self.deadline = time.monotonic() + self.c.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.c.timeout)
            sock.connect(self.c._path)
        except OSError as exc:
            sock.close()
            raise AttestationAgentError(
                f"attestation agent at {self.c.aa_addr} unreachable: {_describe(exc)}") from exc
        self.sock = sock
        return self

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def call(self, method: str, payload: bytes) -> bytes:
        assert self.sock is not None
        remaining = self.deadline - time.monotonic()
        where = f"attestation agent at {self.c.aa_addr}: {method}"
        if remaining <= 0:
            raise AttestationAgentError(f"{where} failed: timed out")
        request = Request(SERVICE, method, payload, timeout_nano=int(remaining * 1e9))
        try:
            stream_id, data = self.conn.send_request(request)
            self.sock.settimeout(remaining)
            self.sock.sendall(data)
            response: Response | None = None
            while response is None:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("timed out")
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed by the attestation agent")
                for sid, resp in self.conn.receive_data(chunk):
                    if sid == stream_id:
                        response = resp
        except (OSError, TtrpcError) as exc:
            raise AttestationAgentError(f"{where} failed: {_describe(exc)}") from exc
        if not response.ok:
            raise AttestationAgentError(
                f"{where} failed: code {response.code}: {response.message}")
        return response.payload

    def get_evidence(self, runtime_data: bytes) -> bytes:
        payload = self.call(GET_EVIDENCE, pb.encode_message([(1, runtime_data or None)]))
        return self._field_bytes(GET_EVIDENCE, payload)

    def get_tee_type(self) -> str:
        payload = self.call(GET_TEE_TYPE, b"")
        try:
            return pb.get_string(pb.decode_message(payload), 1)
        except ProtobufError as exc:
            raise AttestationAgentError(
                f"attestation agent at {self.c.aa_addr}: {GET_TEE_TYPE} failed: "
                f"bad response: {exc}") from exc

    def get_additional_evidence(self, runtime_data: bytes) -> bytes | None:
        payload = self.call(GET_ADDITIONAL_EVIDENCE, pb.encode_message([(1, runtime_data or None)]))
        return self._field_bytes(GET_ADDITIONAL_EVIDENCE, payload) or None

    def _field_bytes(self, method: str, payload: bytes) -> bytes:
        try:
            return pb.get_bytes(pb.decode_message(payload), 1)
        except ProtobufError as exc:
            raise AttestationAgentError(
                f"attestation agent at {self.c.aa_addr}: {method} failed: "
                f"bad response: {exc}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
