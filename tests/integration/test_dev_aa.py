"""The development Attestation Agent is a real ttrpc server.

Without root: our AttestationAgentClient against the dev AA running as its own
process on a unix socket (the socket lives on the filesystem; no network).

With root (lab namespaces): upstream tng 2.12 as the attester uses our dev AA,
and upstream's own ingress with its builtin verifier accepts the evidence; a
negative control shows upstream's verifier really checks it. The certificate
upstream presents is parsed with our parse_peer_certificate.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import pytest
from cryptography import x509

from tng_nfq.attestation import protobuf as pb
from tng_nfq.attestation.aa_client import (
    SERVICE, AttestationAgentClient, AttestationAgentError,
)
from tng_nfq.attestation.dev_aa import handle, sample_evidence, serve
from tng_nfq.attestation.evidence import (
    COCO_EVIDENCE_TAG, OID_DICE_CMW, OID_DICE_EMPTY, build_attested_certificate,
    canonical_json, cmw_extension_value, new_key, parse_peer_certificate, pubkey_hash,
    runtime_data, runtime_data_hash, spki_der, CocoEvidence,
)
from tng_nfq.attestation.ttrpc import (
    CODE_INVALID_ARGUMENT, CODE_UNIMPLEMENTED, MAX_DATA_LENGTH, ClientConnection, Request,
    Response,
)

WAIT = 20.0


@pytest.fixture
def sock_dir():
    # unix socket paths are limited to 107 bytes: keep them short, not under tmp_path
    path = Path(tempfile.mkdtemp(prefix="tngaa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _wait_connectable(path: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"dev AA exited with {proc.returncode}: {proc.stderr.read()!r}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"dev AA not accepting on {path}")


class DevAA:
    def __init__(self, path: Path, proc: subprocess.Popen):
        self.path = path
        self.proc = proc
        self.addr = f"unix://{path}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT)


@pytest.fixture
def dev_aa(sock_dir):
    """The dev AA as its own process, the way `tng-nfq dev aa` runs it."""
    path = sock_dir / "aa.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"from tng_nfq.attestation.dev_aa import run_forever; run_forever({str(path)!r})"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_connectable(path, proc)
        yield DevAA(path, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class InProcessAA:
    """serve() in a thread of the test process, with a chosen handler."""

    def __init__(self, path: Path, handler=handle):
        self.path = path
        self.addr = f"unix://{path}"
        self.stop_event = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(target=serve, args=(str(path), self.stop_event, ready, handler),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(WAIT)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def _runtime_hash() -> tuple[str, bytes]:
    ph = pubkey_hash(spki_der(new_key().public_key()))
    return ph, runtime_data_hash(runtime_data(ph))


# -- our client against our dev AA -------------------------------------------

def test_collect_against_dev_aa(dev_aa):
    _, report = _runtime_hash()
    client = AttestationAgentClient(dev_aa.addr)
    tee, evidence, additional = client.collect(report)
    assert tee == "sample"
    assert additional is None  # the sample TEE has none: empty answer
    doc = json.loads(evidence)
    assert list(doc) == ["svn", "report_data", "measure_register", "cc_eventlog"]
    assert base64.b64decode(doc["report_data"]) == report
    assert doc["measure_register"] == "0" * 64 and doc["cc_eventlog"] is None
    assert evidence == sample_evidence(report)
    # the single calls, also with a bare absolute path as the address
    bare = AttestationAgentClient(str(dev_aa.path), timeout=5)
    assert bare.get_evidence(report) == evidence
    assert bare.get_tee_type() == "sample"
    assert bare.get_additional_evidence(b"") is None

    assert dev_aa.stop() == 0
    assert not dev_aa.path.exists()


def test_socket_mode_and_stale_socket_replaced(sock_dir):
    path = sock_dir / "aa.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # leaves the file behind, as a crashed server would
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"from tng_nfq.attestation.dev_aa import run_forever; run_forever({str(path)!r})"],
        stderr=subprocess.PIPE)
    try:
        _wait_connectable(path, proc)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert AttestationAgentClient(f"unix://{path}").get_tee_type() == "sample"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _raw_calls(path: Path, requests: list[Request]) -> list[Response]:
    """Several requests written at once on one connection."""
    conn = ClientConnection()
    ids, data = [], b""
    for req in requests:
        sid, frame = conn.send_request(req)
        ids.append(sid)
        data += frame
    got: dict[int, Response] = {}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(str(path))
        s.sendall(data)
        while len(got) < len(ids):
            chunk = s.recv(65536)
            assert chunk, "dev AA closed the connection early"
            got.update(conn.receive_data(chunk))
    return [got[sid] for sid in ids]


def test_several_requests_and_unknown_method_on_one_connection(dev_aa):
    _, report = _runtime_hash()
    r1, r2, r3, r4 = _raw_calls(dev_aa.path, [
        Request(SERVICE, "GetTeeType"),
        Request(SERVICE, "GetQuote"),
        Request(SERVICE, "GetEvidence", pb.encode_message([(1, report)])),
        Request(SERVICE, "GetEvidence", pb.encode_message([(1, b"x" * 65)])),
    ])
    assert r1.ok and pb.get_string(pb.decode_message(r1.payload), 1) == "sample"
    assert r2.code == CODE_UNIMPLEMENTED and "GetQuote" in r2.message
    assert pb.get_bytes(pb.decode_message(r3.payload), 1) == sample_evidence(report)
    assert r4.code == CODE_INVALID_ARGUMENT


def test_oversize_frame_closes_the_connection(dev_aa):
    header = (MAX_DATA_LENGTH + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([1, 0])
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(str(dev_aa.path))
        s.sendall(header)
        assert s.recv(100) == b""  # closed without an answer
    # the server itself is fine
    assert AttestationAgentClient(dev_aa.addr).get_tee_type() == "sample"


def test_client_errors(sock_dir):
    missing = f"unix://{sock_dir}/nothing.sock"
    with pytest.raises(AttestationAgentError,
                       match=rf"^attestation agent at {missing} unreachable: "):
        AttestationAgentClient(missing).collect(b"x")
    with pytest.raises(AttestationAgentError, match="REST attestation agent not supported"):
        AttestationAgentClient("http://127.0.0.1:8006")
    with pytest.raises(AttestationAgentError, match="not unix"):
        AttestationAgentClient("unix://relative/path")

    def refusing(req: Request) -> Response:
        if req.method == "GetEvidence":
            return Response(code=3, message="no TEE here")
        return handle(req)

    aa = InProcessAA(sock_dir / "refuse.sock", refusing)
    try:
        client = AttestationAgentClient(aa.addr)
        with pytest.raises(AttestationAgentError,
                           match=rf"^attestation agent at {aa.addr}: GetEvidence failed: "
                                 r"code 3: no TEE here$"):
            client.collect(b"x")
        assert client.get_tee_type() == "sample"
    finally:
        aa.close()
    assert not (sock_dir / "refuse.sock").exists()


def test_client_times_out_on_a_silent_agent(sock_dir):
    path = sock_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        start = time.monotonic()
        with pytest.raises(AttestationAgentError, match="GetEvidence failed: timed out"):
            AttestationAgentClient(f"unix://{path}", timeout=0.5).get_evidence(b"x")
        assert time.monotonic() - start < 5


def test_additional_evidence_errors_are_tolerated(sock_dir):
    def no_additional(req: Request) -> Response:
        if req.method == "GetAdditionalEvidence":
            return Response(code=CODE_UNIMPLEMENTED, message="not here")
        return handle(req)

    aa = InProcessAA(sock_dir / "aa.sock", no_additional)
    try:
        tee, evidence, additional = AttestationAgentClient(aa.addr).collect(b"r")
        assert (tee, additional) == ("sample", None)
        assert evidence == sample_evidence(b"r")
    finally:
        aa.close()


# -- upstream tng against our dev AA (root: lab namespaces) ------------------

INGRESS, TUNNEL, BACKEND = 10001, 20001, 30001


def _upstream_pair(lab, aa_addr: str):
    lab.start_backend(BACKEND)
    egress = lab.start_upstream(lab.server, {"add_egress": [{
        "mapping": {"in": {"host": lab.SERVER_ADDR, "port": TUNNEL},
                    "out": {"host": "127.0.0.1", "port": BACKEND}},
        "attest": {"aa_addr": aa_addr}}]}, "egress-attester")
    ingress = lab.start_upstream(lab.client, {"add_ingress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": INGRESS},
                    "out": {"host": lab.SERVER_ADDR, "port": TUNNEL}},
        "verify": {"as_type": "builtin", "attestation_policy": {"type": "trust_all"}}}]},
        "ingress-verifier")
    return egress, ingress


def _peer_certificate(lab) -> bytes:
    """The certificate upstream's egress presents, fetched from the client namespace."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["rats-tls"])
    raw = lab.connect(TUNNEL, host=lab.SERVER_ADDR)
    with ctx.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


@pytest.mark.root
@pytest.mark.interop
def test_upstream_attester_uses_dev_aa_and_upstream_verifier_accepts(lab, dev_aa):
    _upstream_pair(lab, dev_aa.addr)
    data = os.urandom(200_000)
    assert lab.echo(INGRESS, data) == data

    # our parser reads upstream's real certificate
    der = _peer_certificate(lab)
    cert = x509.load_der_x509_certificate(der)
    pe = parse_peer_certificate(der)
    assert pe.coco is not None and pe.passport_token is None
    assert pe.coco.tee_type == "sample"
    assert pe.pubkey_hash == pubkey_hash(spki_der(cert.public_key()))
    assert pe.coco.aa_runtime_data == canonical_json(runtime_data(pe.pubkey_hash))
    assert pe.coco.aa_runtime_data_hash_algo == 7
    evidence = json.loads(pe.coco.aa_evidence)
    assert base64.b64decode(evidence["report_data"]) == \
        runtime_data_hash(runtime_data(pe.pubkey_hash))
    assert pe.coco.aa_evidence == sample_evidence(base64.b64decode(evidence["report_data"]))

    # same extension bytes layout as ours: re-encoding upstream's evidence with
    # our encoder gives its bytes back, and our certificate has the same shape
    theirs = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_CMW)).value.value
    assert cmw_extension_value(coco=pe.coco) == theirs
    key = new_key()
    ph = pubkey_hash(spki_der(key.public_key()))
    ours_cert = build_attested_certificate(key, coco=CocoEvidence(
        "sample", sample_evidence(runtime_data_hash(runtime_data(ph))), None,
        canonical_json(runtime_data(ph)), 7))
    ours = ours_cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_DICE_CMW)).value.value
    t_obj, o_obj = cbor2.loads(theirs), cbor2.loads(ours)
    assert t_obj.tag == o_obj.tag == COCO_EVIDENCE_TAG
    assert [type(v) for v in t_obj.value] == [type(v) for v in o_obj.value] == [bytes, bytes]
    t_map, o_map = cbor2.loads(t_obj.value[0]), cbor2.loads(o_obj.value[0])
    assert list(t_map) == list(o_map)
    assert {k: type(v) for k, v in t_map.items()} == {k: type(v) for k, v in o_map.items()}
    assert [(e.oid, e.critical) for e in cert.extensions] == \
        [(e.oid, e.critical) for e in ours_cert.extensions]
    assert cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(OID_DICE_EMPTY)).value.value == b""
    assert cert.subject == ours_cert.subject


@pytest.mark.root
@pytest.mark.interop
def test_upstream_verifier_refuses_evidence_over_other_data(lab, sock_dir):
    """Negative control: the same setup with an AA whose evidence covers the
    wrong report data must fail, or the test above would prove nothing."""

    def wrong_report(req: Request) -> Response:
        if req.method == "GetEvidence":
            return Response(pb.encode_message([(1, sample_evidence(bytes(48)))]))
        return handle(req)

    aa = InProcessAA(sock_dir / "wrong.sock", wrong_report)
    try:
        _, ingress = _upstream_pair(lab, aa.addr)
        data = os.urandom(10_000)
        try:
            got = lab.echo(INGRESS, data)
        except OSError:
            got = b""
        assert got != data
        # refused for the right reason: its builtin attestation service said no
        lab.poll_until(lambda: "AttestationServiceVerifyFailed" in ingress.log_text(),
                       "upstream ingress logs the failed verification")
        # upstream's attester did present our (wrong) evidence; our parser
        # sees the binding is fine but the report data is not its hash
        pe = parse_peer_certificate(_peer_certificate(lab))
        report = base64.b64decode(json.loads(pe.coco.aa_evidence)["report_data"])
        assert report == bytes(48) != runtime_data_hash(runtime_data(pe.pubkey_hash))
    finally:
        aa.close()
