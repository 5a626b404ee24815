"""A test Attestation Agent, run inside a lab namespace: the dev AA's service
logic behind `dev_aa.serve`, plus one JSON line per ttrpc request on stdout so
a test can count GetEvidence calls, and a few deliberately broken modes.

  --mode sample        the dev AA, unchanged (evidence over the runtime data asked for)
  --mode wrong-report  GetEvidence answers sample evidence over 48 zero bytes
  --mode oversize      not ttrpc-correct at all: every request is answered with a
                       frame header announcing 4 MiB + 1 bytes (then a little junk)

stdout: {"event": "listening", ...} once the socket accepts, then
{"event": "aa request", "method": ..., "runtime_data_len": ...} per request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading

from tng_nfq.attestation import protobuf as pb
from tng_nfq.attestation.dev_aa import handle, sample_evidence, serve
from tng_nfq.attestation.ttrpc import MAX_DATA_LENGTH, Request, Response

_lock = threading.Lock()


def emit(**fields) -> None:
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def logged(handler):
    def wrapper(req: Request) -> Response:
        try:
            runtime = pb.get_bytes(pb.decode_message(req.payload), 1)
        except Exception:  # noqa: BLE001 - only for the log line
            runtime = b""
        emit(event="aa request", method=req.method, runtime_data_len=len(runtime))
        return handler(req)
    return wrapper


def wrong_report(req: Request) -> Response:
    if req.method == "GetEvidence":
        return Response(pb.encode_message([(1, sample_evidence(bytes(48)))]))
    return handle(req)


def serve_oversize(path: str, stop: threading.Event) -> None:
    """Answer any bytes with a frame header one byte over the ttrpc limit."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(0.2)
    emit(event="listening", path=path, mode="oversize")
    header = (MAX_DATA_LENGTH + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([2, 0])
    try:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(65536)
                    emit(event="aa request", method="?", raw_bytes=len(data))
                    conn.sendall(header + b"\x00" * 1024)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--mode", choices=["sample", "wrong-report", "oversize"], default="sample")
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.mode == "oversize":
        serve_oversize(args.socket, stop)
        return
    ready = threading.Event()
    handler = logged(wrong_report if args.mode == "wrong-report" else handle)
    thread = threading.Thread(target=serve, args=(args.socket, stop, ready, handler), daemon=True)
    thread.start()
    while not ready.wait(0.2):
        if not thread.is_alive():
            sys.exit("dev AA failed to start")
    emit(event="listening", path=args.socket, mode=args.mode)
    while not stop.wait(0.5):
        if not thread.is_alive():
            sys.exit("dev AA stopped")
    thread.join(10)


if __name__ == "__main__":
    main()
