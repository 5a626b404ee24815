"""Issue #3, the refusals: every way attestation can fail is refused before a
single application byte moves, logged as one clear access-log line, and the
daemon goes on serving.

The rig (per test): in the server namespace a dev AA, a connection-logging
echo backend and a tng_nfq egress whose mapping TUN_GOOD attests; in the
client namespace a dev AS and a tng_nfq ingress whose mapping IN_GOOD
verifies it. A test adds the faulty piece (a second mapping IN_BAD, a rogue
TLS peer, a broken AA/AS) and checks that

- the refused connection gets no reply and its access-log line says why,
- the backend (or the rogue server standing in for the egress) saw no
  connection / no application byte,
- a good connection through the same daemon afterwards still works.

Expired tokens and `alg: none` are covered by tests/unit/test_attestation_token.py
(test_clock_after_exp, test_simple_token_expired, test_alg_none_forged,
test_hs256_forged); an expired passport token is also refused end to end here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading

import pytest

from helpers.attestation import (  # noqa: F401  (att is a fixture)
    OK_SAMPLE,
    att,
    attest,
    attest_passport,
    egress,
    ingress,
    verify_bg,
    verify_passport,
)
from tng_nfq.attestation.as_client import build_request
from tng_nfq.attestation.dev_aa import sample_evidence
from tng_nfq.attestation.dev_as import DevAttestationService, Policy, load_or_create_identity
from tng_nfq.attestation.evidence import (
    CocoEvidence,
    build_attested_certificate,
    canonical_json,
    new_key,
    pubkey_hash,
    runtime_data,
    runtime_data_hash,
    spki_der,
)
from tng_nfq.attestation.ttrpc import MAX_DATA_LENGTH
from tng_nfq.lab.netns import stop_process

pytestmark = pytest.mark.root
interop = pytest.mark.interop

IN_GOOD, IN_BAD = 10001, 10002
TUN_GOOD, TUN_BAD = 20001, 20002
BACK = 30001
AS_PORT, AS_SERVER_PORT, DENY_PORT, FAKE_PORT, CLOSED_PORT = 18080, 18081, 18090, 18091, 18099
SECRET = b"SECRET-APPLICATION-BYTES " + os.urandom(16).hex().encode() + b"\n"


class Rig:
    """The good path plus room for one faulty mapping on each side."""

    def __init__(self, lab, att):
        self.lab, self.att = lab, att
        self.aa = att.start_aa(lab.server)
        self.svc = att.start_as(lab.client, port=AS_PORT)
        self.backend = att.start_backend(BACK)
        self.egress = self.ingress = None

    def start_egress(self, bad_ra: dict | None = None, wait_ready: bool = True):
        entries = [egress(TUN_GOOD, BACK, {"attest": attest(self.aa)})]
        if bad_ra is not None:
            entries.append(egress(TUN_BAD, BACK, bad_ra))
        self.egress = self.lab.start_nfq(self.lab.server, {"add_egress": entries}, "egress",
                                         wait_ready=wait_ready)
        return self.egress

    def start_ingress(self, bad_ra: dict | None = None, bad_tunnel: int = TUN_GOOD):
        entries = [ingress(IN_GOOD, TUN_GOOD, {"verify": verify_bg(self.svc)})]
        if bad_ra is not None:
            entries.append(ingress(IN_BAD, bad_tunnel, bad_ra))
        self.ingress = self.lab.start_nfq(self.lab.client, {"add_ingress": entries}, "ingress")
        return self.ingress

    def start(self, bad_ingress: dict | None = None, bad_egress: dict | None = None,
              bad_tunnel: int = TUN_GOOD):
        self.start_egress(bad_egress)
        self.start_ingress(bad_ingress, bad_tunnel)
        return self

    # -- checks ---------------------------------------------------------------

    def refused(self, gw, error: str, port: int = IN_BAD, listener: str | None = None) -> dict:
        """A connection to `port` gets nothing back; `gw` logs one error line containing `error`."""
        reply, _end = self.att.exchange(port, SECRET)
        assert reply == b"", reply
        return self.error_line(gw, error, listener or f"127.0.0.1:{port}")

    def error_line(self, gw, error: str, listener: str) -> dict:
        (line,) = gw.wait_access(1, where=lambda e: e.get("listener") == listener)
        assert line["outcome"] == "error", line
        assert error in line["error"], line
        assert line["bytes_up"] == line["bytes_down"] == 0, line
        assert "peer_attestation" not in line, line
        return line

    def still_serving(self, expected_connections: int = 1) -> None:
        """A good connection through the same daemons works, and it is the only
        connection the backend ever saw (accept order is log order, so nothing
        refused earlier can appear later)."""
        data = self.att.roundtrip(IN_GOOD)
        closed = self.backend.wait_event("closed", expected_connections)
        assert closed[-1]["bytes_in"] == len(data)
        assert len(self.backend.accepted()) == expected_connections, self.backend.accepted()
        assert all(c["bytes_in"] in (0, len(data)) for c in closed)
        for gw in (self.ingress, self.egress):
            if gw is not None:
                assert gw.alive, gw.name

    def no_backend_connection(self) -> None:
        assert self.backend.accepted() == [], self.backend.accepted()


def _other_ca_path(lab) -> str:
    """A CA that signed none of the tokens in the test (another dev AS's, never started)."""
    state = lab.workdir / "other-as-state"
    load_or_create_identity(str(state))
    return str(state / "ca.pem")


# ==========================================================================
# the verifier refuses (tng_nfq ingress verifies)

def test_wrong_policy_id(lab, att):
    """Passport token appraised under "default"; the verifier demands "strict"."""
    rig = Rig(lab, att)
    server_as = att.start_as(lab.server, "server-as", port=AS_SERVER_PORT)
    rig.start(bad_egress={"attest": attest_passport(rig.aa, server_as)},
              bad_ingress={"verify": verify_passport(server_as.ca, policy_ids=["strict"])},
              bad_tunnel=TUN_BAD)
    rig.refused(rig.ingress, "peer attestation failed: attestation token rejected: "
                             "policy 'strict' not appraised (token has 'default')")
    rig.no_backend_connection()
    rig.still_serving()


def test_as_answers_contraindicated(lab, att):
    rig = Rig(lab, att)
    deny = att.start_as(lab.client, "deny-as", policy="deny_all", port=DENY_PORT)
    rig.start(bad_ingress={"verify": verify_bg(deny)})
    rig.refused(rig.ingress, "peer attestation failed: attestation token rejected: "
                             "status 'contraindicated' in submod cpu0")
    assert len(deny.appraisals()) == 1
    rig.no_backend_connection()
    rig.still_serving()


def test_token_signed_by_untrusted_ca(lab, att):
    rig = Rig(lab, att)
    rig.start(bad_ingress={"verify": {**verify_bg(rig.svc), "trusted_certs_paths": [_other_ca_path(lab)]}})
    rig.refused(rig.ingress, "peer attestation failed: attestation token rejected: "
                             "signer chain does not lead to a trusted CA")
    rig.no_backend_connection()
    rig.still_serving()


def test_evidence_report_data_mismatch(lab, att):
    """The AA signs evidence over data that is not the hash of the certificate's runtime data."""
    rig = Rig(lab, att)
    wrong_aa = att.start_aa(lab.server, "wrong-aa", mode="wrong-report")
    rig.start(bad_egress={"attest": attest(wrong_aa)}, bad_ingress={"verify": verify_bg(rig.svc)},
              bad_tunnel=TUN_BAD)
    rig.refused(rig.ingress, f"peer attestation failed: attestation service {rig.svc.rest_addr}: HTTP 400: "
                             "sample evidence report_data does not match the sha384 of the runtime data")
    assert len(rig.svc.refusals()) == 1
    rig.no_backend_connection()
    rig.still_serving()


def test_as_unreachable(lab, att):
    rig = Rig(lab, att)
    rig.start(bad_ingress={"verify": {"as_addr": f"http://127.0.0.1:{CLOSED_PORT}/", "policy_ids": ["default"],
                                      "trusted_certs_paths": [rig.svc.ca]}})
    rig.refused(rig.ingress, f"peer attestation failed: attestation service http://127.0.0.1:{CLOSED_PORT}/: "
                             "unreachable: connection refused")
    rig.no_backend_connection()
    rig.still_serving()


@pytest.mark.parametrize("mode, error", [
    ("garbage", "answered something that is not a token"),
    ("5xx", "HTTP 503: upstream attestation backend unavailable"),
    ("raw", "is not an HTTP server ("),
])
def test_as_answers_badly(lab, att, mode, error):
    rig = Rig(lab, att)
    fake = att.start_fake_as(lab.client, FAKE_PORT, mode)
    rig.start(bad_ingress={"verify": {"as_addr": f"http://127.0.0.1:{FAKE_PORT}/", "policy_ids": ["default"],
                                      "trusted_certs_paths": [rig.svc.ca]}})
    rig.refused(rig.ingress, f"peer attestation failed: attestation service http://127.0.0.1:{FAKE_PORT}/: "
                             f"{error}")
    assert len(fake.events("as request")) == 1
    rig.no_backend_connection()
    rig.still_serving()


def test_as_answers_slowly(lab, att):
    """An AS that never answers in time: the verification is bounded by the AS
    client's timeout, and other connections are served meanwhile."""
    rig = Rig(lab, att)
    fake = att.start_fake_as(lab.client, FAKE_PORT, "slow")
    rig.start(bad_ingress={"verify": {"as_addr": f"http://127.0.0.1:{FAKE_PORT}/", "policy_ids": ["default"],
                                      "trusted_certs_paths": [rig.svc.ca]}})
    result = {}
    slow = threading.Thread(target=lambda: result.update(reply=att.exchange(IN_BAD, SECRET)), daemon=True)
    slow.start()
    fake.wait_event("as request")  # the slow verification is now pending ...
    rig.still_serving()  # ... and a good connection goes through meanwhile
    rig.error_line(rig.ingress, f"attestation service http://127.0.0.1:{FAKE_PORT}/: timed out after 10s",
                   f"127.0.0.1:{IN_BAD}")
    slow.join(lab.WAIT)
    assert result["reply"][0] == b""
    assert len(rig.backend.accepted()) == 1


# ==========================================================================
# rogue certificates (a tiny TLS server standing in for the egress)

def _rogue_material(lab, kind: str):
    """(cert, key, verify config or None for the default AS) for one kind of rogue certificate."""
    key_a, key_b = new_key(), new_key()
    rd_a = runtime_data(pubkey_hash(spki_der(key_a.public_key())))
    rd_b = runtime_data(pubkey_hash(spki_der(key_b.public_key())))
    ev_a = sample_evidence(runtime_data_hash(rd_a))
    coco_a = CocoEvidence("sample", ev_a, None, canonical_json(rd_a), 7)
    if kind == "control":  # correctly bound: must be accepted, or the rig proves nothing
        return build_attested_certificate(key_a, coco=coco_a), key_a, None
    if kind == "copied-evidence":  # key A's whole evidence in key B's certificate
        return build_attested_certificate(key_b, coco=coco_a), key_b, None
    if kind == "repointed-runtime-data":  # runtime data names key B, the evidence covers key A
        coco = CocoEvidence("sample", ev_a, None, canonical_json(rd_b), 7)
        return build_attested_certificate(key_b, coco=coco), key_b, None
    state = lab.workdir / "rogue-as-state"
    identity = load_or_create_identity(str(state))
    if kind == "passport-other-key":  # a valid token, for key A, in key B's certificate
        svc = DevAttestationService(identity, Policy.parse("trust_all"))
        token = svc.attest(build_request(tee="sample", evidence=ev_a, runtime_data=rd_a, policy_ids=["default"]))
        return build_attested_certificate(key_b, passport_token=token), key_b, verify_passport(str(state / "ca.pem"))
    if kind == "passport-expired":  # correctly bound, but the token expired an hour ago
        old = DevAttestationService(identity, Policy.parse("trust_all"),
                                    clock=lambda: dt.datetime.now(dt.timezone.utc).timestamp() - 3600)
        token = old.attest(build_request(tee="sample", evidence=ev_a, runtime_data=rd_a, policy_ids=["default"]))
        return build_attested_certificate(key_a, passport_token=token), key_a, verify_passport(str(state / "ca.pem"))
    raise ValueError(kind)


@pytest.mark.parametrize("kind, error, as_calls", [
    ("control", None, 1),
    ("copied-evidence", "peer attestation failed: evidence is bound to a different key (aa_runtime_data "
                        "pubkey-hash does not match the certificate's key)", 0),
    ("repointed-runtime-data", "HTTP 400: sample evidence report_data does not match", 0),
    ("passport-other-key", "peer attestation failed: attestation token rejected: runtime data does not match: "
                           "pubkey-hash", 0),
    ("passport-expired", "peer attestation failed: attestation token rejected: token expired at", 0),
])
def test_rogue_certificate(lab, att, kind, error, as_calls):
    rig = Rig(lab, att)
    cert, key, verify_cfg = _rogue_material(lab, kind)
    rogue = att.start_rogue_server(lab.server, lab.SERVER_ADDR, TUN_BAD, *att.write_identity(kind, cert, key))
    rig.start(bad_ingress={"verify": verify_cfg or verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    if error is None:
        reply, end = att.exchange(IN_BAD, SECRET)
        assert (reply, end) == (b"", "eof")  # the rogue server reads, never answers
        (line,) = rig.ingress.wait_access(1, where=lambda e: e["listener"] == f"127.0.0.1:{IN_BAD}")
        assert line["outcome"] == "ok" and line["peer_attestation"] == {**OK_SAMPLE, "model": "background_check"}
        assert rogue.wait_event("closed")[0]["app_bytes_in"] == len(SECRET)
    else:
        rig.refused(rig.ingress, error)
        (closed,) = rogue.wait_event("closed")
        assert closed["app_bytes_in"] == 0
    # the good path's one appraisal, plus the rogue's when it reached the AS
    rig.still_serving()
    appraised = len(rig.svc.appraisals()) + len(rig.svc.refusals())
    assert appraised == 1 + (1 if kind in ("control", "repointed-runtime-data") else 0)


# ==========================================================================
# certificates without evidence (a no_ra peer where verify is set)

def test_no_ra_egress_to_verifying_ingress(lab, att):
    rig = Rig(lab, att)
    rig.start(bad_egress={"no_ra": True}, bad_ingress={"verify": verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    rig.refused(rig.ingress, "peer attestation failed: certificate carries no attestation evidence "
                             "(extension 2.23.133.5.4.9 missing)")
    rig.no_backend_connection()
    rig.still_serving()


@interop
def test_upstream_no_ra_egress_to_verifying_ingress(lab, att):
    rig = Rig(lab, att)
    rig.start_egress()
    lab.start_upstream(lab.server, {"add_egress": [egress(TUN_BAD, BACK, {"no_ra": True})]}, "up-no-ra")
    rig.start_ingress({"verify": verify_bg(rig.svc)}, TUN_BAD)
    rig.refused(rig.ingress, "peer attestation failed: certificate carries no attestation evidence")
    rig.no_backend_connection()
    rig.still_serving()


@pytest.mark.parametrize("impl", ["tng_nfq", pytest.param("upstream", marks=interop)])
def test_no_ra_ingress_to_verifying_egress(lab, att, impl):
    """The server verifies; a no_ra client has no evidence to show."""
    rig = Rig(lab, att)
    server_as = att.start_as(lab.server, "server-as", port=AS_SERVER_PORT)
    rig.start(bad_egress={"verify": verify_bg(server_as)})
    cfg = {"add_ingress": [ingress(IN_BAD, TUN_BAD, {"no_ra": True})]}
    if impl == "tng_nfq":
        client = lab.start_nfq(lab.client, cfg, "no-ra-ingress")
    else:
        lab.start_upstream(lab.client, cfg, "up-no-ra-ingress")
    reply, _ = att.exchange(IN_BAD, SECRET)
    assert reply == b""
    if impl == "tng_nfq":
        # the client finished its side of the TLS 1.3 handshake before the
        # server judged it, so it learns why only from the server's alert --
        # unless the reset that our first data record provokes arrives before
        # the alert was read (Linux drops unread data on a reset)
        (mine,) = client.wait_access(1)
        assert mine["error"] in ("peer refused the session: tlsv13 alert certificate required",
                                 "connection reset by peer"), mine
    (line,) = rig.egress.wait_access(1, where=lambda e: e["listener"] == f"{lab.SERVER_ADDR}:{TUN_BAD}")
    assert line["outcome"] == "error" and line["bytes_up"] == line["bytes_down"] == 0, line
    # neither ours nor upstream's no_ra client answers the certificate request
    assert line["error"] == "handshake failed: peer did not return a certificate", line
    assert server_as.appraisals() == []
    rig.no_backend_connection()
    rig.still_serving()


# ==========================================================================
# TLS version and ALPN

@pytest.mark.parametrize("client, error", [
    (dict(tls_min="1.2", tls_max="1.2"), "handshake failed: "),
    (dict(alpn="h2,http/1.1"), "handshake failed: "),
    (dict(alpn="none"), "peer did not negotiate ALPN rats-tls (got b'')"),
], ids=["tls1.2-only", "alpn-h2", "no-alpn"])
def test_rogue_client_refused_by_egress(lab, att, client, error):
    rig = Rig(lab, att).start()
    out = att.rogue_client(lab.client, lab.SERVER_ADDR, TUN_GOOD, send=SECRET.decode(), **client)
    assert out.get("received", 0) == 0, out
    line = rig.error_line(rig.egress, error, f"{lab.SERVER_ADDR}:{TUN_GOOD}")
    if "tls_max" in client:
        assert out["handshake"] == "failed" and "protocol version" in out["error"], out
        assert line["error"] == "handshake failed: unsupported protocol", line
    rig.no_backend_connection()
    rig.still_serving()


@pytest.mark.parametrize("server, error", [
    (dict(tls_min="1.2", tls_max="1.2"), "handshake failed: "),
    (dict(alpn="none"), "peer did not negotiate ALPN rats-tls (got b'')"),
], ids=["tls1.2-only", "no-alpn"])
def test_rogue_server_refused_by_ingress(lab, att, server, error):
    rig = Rig(lab, att)
    cert, key, _ = _rogue_material(lab, "control")  # well-attested: only TLS/ALPN is wrong
    rogue = att.start_rogue_server(lab.server, lab.SERVER_ADDR, TUN_BAD, *att.write_identity("rogue", cert, key),
                                   **server)
    rig.start(bad_ingress={"verify": verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    rig.refused(rig.ingress, error)
    assert [c["app_bytes_in"] for c in rogue.wait_event("closed")] == [0]
    rig.still_serving()


# ==========================================================================
# the attester's side: AA missing, AA answering oversize frames, AA gone

def _retry_lines(gw) -> list[dict]:
    return gw.events("cannot obtain attested certificate; retrying")


def test_aa_missing_at_start(lab, att):
    rig = Rig(lab, att)
    late = att.aa_path("late")
    eg = rig.start_egress({"attest": {"aa_addr": f"unix://{late}"}}, wait_ready=False)
    lab.poll_until(lambda: len(_retry_lines(eg)) >= 2, "egress retries the missing AA twice", proc=eg.proc)
    first = _retry_lines(eg)[0]
    assert first["error"] == f"attestation agent at unix://{late} unreachable: No such file or directory", first
    assert first["level"] == "warning" and first["retry_in_s"] == 1.0, first
    assert eg.events("ready") == [] and eg.alive
    att.start_aa(lab.server, "late")
    lab.poll_until(lambda: eg.events("ready"), "egress ready once the AA appears", proc=eg.proc)
    assert eg.events("attested certificate ready")
    rig.start_ingress({"verify": verify_bg(rig.svc)}, TUN_BAD)
    data = att.roundtrip(IN_BAD)
    (line,) = rig.egress.wait_access(1)
    assert line["outcome"] == "ok" and line["attested"] is True and line["bytes_up"] == len(data), line


def test_aa_answers_oversize_ttrpc_frames(lab, att):
    rig = Rig(lab, att)
    odd = att.start_aa(lab.server, "odd", mode="oversize")
    eg = rig.start_egress({"attest": attest(odd)}, wait_ready=False)
    lab.poll_until(lambda: _retry_lines(eg), "egress refuses the oversize answer", proc=eg.proc)
    error = _retry_lines(eg)[0]["error"]
    assert error.startswith(f"attestation agent at {odd.addr}: GetEvidence failed: "), error
    assert f"peer announced a {MAX_DATA_LENGTH + 1}-byte message, over the limit of {MAX_DATA_LENGTH}" in error
    assert eg.events("ready") == [] and eg.alive
    # the misbehaving AA is replaced by a good one on the same socket: the egress recovers
    stop_process(odd.proc)
    att.start_aa(lab.server, "odd")
    lab.poll_until(lambda: eg.events("ready"), "egress ready once the AA answers properly", proc=eg.proc)
    rig.start_ingress({"verify": verify_bg(rig.svc)}, TUN_BAD)
    att.roundtrip(IN_BAD)


def test_oversize_frame_sent_to_the_aa(lab, att):
    """A client that sends the AA an oversize frame only loses its own connection:
    the AA keeps serving the gateway (fresh evidence per handshake)."""
    rig = Rig(lab, att)
    rig.start(bad_egress={"attest": attest(rig.aa, refresh_interval=0)},
              bad_ingress={"verify": verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(sys.argv[1])\n"
              f"s.sendall(({MAX_DATA_LENGTH + 1}).to_bytes(4, 'big') + (1).to_bytes(4, 'big') + bytes([1, 0]))\n"
              "print(repr(s.recv(100)))\n")
    res = lab.server.run([sys.executable, "-c", script, str(rig.aa.path)], check=False, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "b''", res  # closed without an answer
    assert rig.aa.alive
    before = len(rig.aa.requests("GetEvidence"))
    att.roundtrip(IN_BAD)
    assert len(rig.aa.requests("GetEvidence")) == before + 1


def test_aa_gone_with_fresh_evidence_per_handshake(lab, att):
    """refresh_interval 0 and the AA stops after start: a connection is refused
    with a clear line (not a crashed handler), and the daemon serves on."""
    rig = Rig(lab, att)
    fresh_aa = att.start_aa(lab.server, "fresh")
    rig.start(bad_egress={"attest": attest(fresh_aa, refresh_interval=0)},
              bad_ingress={"verify": verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    stop_process(fresh_aa.proc)
    reply, _ = att.exchange(IN_BAD, SECRET)
    assert reply == b""
    line = rig.error_line(rig.egress, f"attestation agent at {fresh_aa.addr} unreachable",
                          f"{lab.SERVER_ADDR}:{TUN_BAD}")
    assert line["attested"] is False
    assert rig.egress.events("connection handler failed") == []
    rig.no_backend_connection()
    rig.still_serving()


# ==========================================================================
# evidence freshness and caching

def _appraised_keys(svc) -> list[str]:
    return [json.loads(a["body"])["verification_requests"][0]["runtime_data"]["structured"]["pubkey-hash"]
            for a in svc.appraisals()]


def test_refresh_interval_0_fresh_evidence_per_handshake(lab, att):
    rig = Rig(lab, att)
    fresh_aa = att.start_aa(lab.server, "fresh")
    rig.start(bad_egress={"attest": attest(fresh_aa, refresh_interval=0)},
              bad_ingress={"verify": verify_bg(rig.svc)}, bad_tunnel=TUN_BAD)
    at_start = len(fresh_aa.requests("GetEvidence"))
    assert at_start == 1  # the start-up proof that the AA answers
    for n in range(1, 4):
        att.roundtrip(IN_BAD, 10_000)
        assert len(fresh_aa.requests("GetEvidence")) == at_start + n
    keys = _appraised_keys(rig.svc)
    assert len(keys) == 3 and len(set(keys)) == 3  # a new key and certificate every time
    lines = rig.ingress.wait_access(3, where=lambda e: e["listener"] == f"127.0.0.1:{IN_BAD}")
    assert all(e["outcome"] == "ok" and e["peer_attestation"]["status"] == "affirming" for e in lines)


def test_default_caching_one_evidence_one_appraisal(lab, att):
    rig = Rig(lab, att).start()
    for _ in range(4):
        att.roundtrip(IN_GOOD, 10_000)
    assert len(rig.aa.requests("GetEvidence")) == 1  # one certificate for every connection
    assert len(rig.svc.appraisals()) == 1  # the verifier's verdict cache: one appraisal
    lines = rig.ingress.wait_access(4)
    assert all(e["outcome"] == "ok" and e["peer_attestation"]["status"] == "affirming" for e in lines)
    assert len(rig.backend.accepted()) == 4
