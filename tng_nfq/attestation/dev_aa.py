"""A development Attestation Agent for the *sample* TEE.

No TEE exists on development machines; this is a real ttrpc server on a real
unix socket that answers like the CoCo Attestation Agent does with its sample
attester, so that our attester and upstream ``tng`` can both be exercised end
to end.  The evidence it returns proves nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import stat
import threading
from typing import Callable

from . import protobuf as pb
from .aa_client import GET_ADDITIONAL_EVIDENCE, GET_EVIDENCE, GET_TEE_TYPE, SERVICE
from .protobuf import ProtobufError
from .ttrpc import (
    CODE_INVALID_ARGUMENT, CODE_UNIMPLEMENTED, Request, Response, ServerConnection,
    TtrpcError,
)

TEE_TYPE = "sample"
# The CoCo sample attester refuses more report data than a TDX/SNP report holds.
MAX_REPORT_DATA = 64
SOCKET_MODE = 0o660


def sample_evidence(report_data: bytes) -> bytes:
    """Sample-TEE evidence over ``report_data`` (PROTOCOLS.md section 3).

    Key order and compact separators match what the CoCo sample attester
    emits; ``measure_register`` is required by newer Attestation Services.
    """
    doc = {
        "svn": "1",
        "report_data": base64.b64encode(report_data).decode("ascii"),
        "measure_register": "0" * 64,
        "cc_eventlog": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def handle(request: Request) -> Response:
    """The service logic: one ttrpc request in, one response out."""
    if request.service != SERVICE:
        return Response(code=CODE_UNIMPLEMENTED,
                        message=f"{request.service}/{request.method} is not implemented")
    try:
        fields = pb.decode_message(request.payload)
        if request.method == GET_EVIDENCE:
            runtime_data = pb.get_bytes(fields, 1)
            if len(runtime_data) > MAX_REPORT_DATA:
                return Response(code=CODE_INVALID_ARGUMENT,
                                message=f"runtime data of {len(runtime_data)} bytes exceeds "
                                        f"the {MAX_REPORT_DATA}-byte report data")
            return Response(pb.encode_message([(1, sample_evidence(runtime_data))]))
        if request.method == GET_TEE_TYPE:
            return Response(pb.encode_message([(1, TEE_TYPE)]))
        if request.method == GET_ADDITIONAL_EVIDENCE:
            # The sample TEE has no additional evidence: an empty answer.
            return Response(b"")  # proto3: an empty Evidence field is simply absent
    except ProtobufError as exc:
        return Response(code=CODE_INVALID_ARGUMENT, message=f"bad {request.method} request: {exc}")
    return Response(code=CODE_UNIMPLEMENTED,
                    message=f"{request.service}/{request.method} is not implemented")


def _serve_connection(conn: socket.socket, handler: Callable[[Request], Response]) -> None:
    proto = ServerConnection()
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                out = bytearray()
                for stream_id, item in proto.receive_data(data):
                    response = handler(item) if isinstance(item, Request) else item
                    out += proto.respond(stream_id, response)
                if out:
                    conn.sendall(out)
        except (TtrpcError, OSError):
            # Oversize or garbled framing: the stream cannot be resynchronised.
            return


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def serve(socket_path: str, stop: threading.Event | None = None,
          ready: threading.Event | None = None,
          handler: Callable[[Request], Response] = handle) -> None:
    """Serve until ``stop`` is set (forever if None).

    ``ready`` is set once the socket accepts connections; ``handler`` lets
    tests serve deliberately wrong evidence.
    """
    stop = stop or threading.Event()
    _remove_stale(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conns: set[socket.socket] = set()
    bound_inode = None
    lock = threading.Lock()

    def run(conn: socket.socket) -> None:
        try:
            _serve_connection(conn, handler)
        finally:
            with lock:
                conns.discard(conn)

    try:
        # No umask juggling: umask is process-wide and serve() may run in a
        # thread of a bigger process. Under the usual umask the fresh socket
        # is not group/world-writable, so nobody else can connect before chmod.
        listener.bind(socket_path)
        os.chmod(socket_path, SOCKET_MODE)
        bound_inode = os.lstat(socket_path).st_ino
        listener.listen(64)
        # Waking up now and then is how the loop notices ``stop``.
        listener.settimeout(0.2)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            with lock:
                conns.add(conn)
            threading.Thread(target=run, args=(conn,), daemon=True,
                             name="dev-aa-conn").start()
    finally:
        listener.close()
        with lock:
            for conn in list(conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        # Remove the socket only if it is still ours (a successor may have
        # replaced it already).
        with contextlib.suppress(FileNotFoundError):
            if bound_inode is not None and os.lstat(socket_path).st_ino == bound_inode:
                os.unlink(socket_path)


def run_forever(socket_path: str) -> None:
    """Serve until SIGTERM or SIGINT, then clean up and return (exit 0).

    Call it from the main thread (Python only installs signal handlers there).
    """
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(socket_path, stop)
