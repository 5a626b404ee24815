"""The sample-TEE dev Attestation Service speaks the real protocol.

1. Our client against our dev AS over REST and gRPC (both request layouts),
   tokens checked with `verify_token`; deny_all tokens are rejected; bad
   evidence is refused with HTTP 400 / INVALID_ARGUMENT.
2. Upstream `tng` 2.12 as the verifier (background check) against our dev AS,
   with upstream's attester fed by our dev AA.
3. Upstream's passport model: its attester asks our dev AS (REST and gRPC)
   for the token, its verifier checks it against our CA.

Every server, client and packet lives in a throw-away network namespace
(`tng_nfq.lab.netns`); the test process reaches it only through processes
started inside it. The first group of tests needs neither root nor network.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tng_nfq.attestation.as_client import VerificationRequest, build_request
from tng_nfq.attestation.dev_as import (
    DevAttestationService,
    Policy,
    RequestError,
    load_or_create_identity,
    parse_sample_evidence,
)
from tng_nfq.attestation.token import TokenRejected, load_trust_anchors, verify_token
from tng_nfq.lab.netns import Lab, Namespace, stop_process, wait_for_port

WAIT = 20.0  # bound for every wait (never a fixed sleep)
PUBKEY_HASH = "ggFYICt9XkEShl8N+39xOWvv9gEVAtyBxCIUh7EXbpLrSzw9"
RUNTIME = {"pubkey-hash": PUBKEY_HASH}


def canonical(obj) -> bytes:
    # RFC 8785 for the ASCII-only string maps used here
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sample_evidence(runtime: dict, algo: str = "sha384", *, encode=base64.b64encode,
                    measure_register: str = "0" * 64) -> bytes:
    """Sample-TEE evidence as the CoCo sample attester writes it (PROTOCOLS.md §3)."""
    digest = hashlib.new(algo, canonical(runtime)).digest()
    return json.dumps({"svn": "1", "report_data": encode(digest).decode() if encode else digest.hex(),
                       "measure_register": measure_register, "cc_eventlog": None},
                      separators=(",", ":")).encode()


# ==========================================================================
# the appraisal, in process (no network)

@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return load_or_create_identity(str(tmp_path_factory.mktemp("dev-as-state")))


def verify(token: str, anchors, **kw):
    args = dict(trust_anchors=anchors, policy_ids=["default"], expected_runtime_data=RUNTIME)
    args.update(kw)
    return verify_token(token, **args)


def test_identity_is_created_once_and_reused(tmp_path):
    first = load_or_create_identity(str(tmp_path))
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(files) == {"ca.pem", "ca-key.pem", "signer.pem", "signer-key.pem"}
    assert oct((tmp_path / "signer-key.pem").stat().st_mode & 0o777) == "0o600"
    again = load_or_create_identity(str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert again.ca == first.ca and again.signer == first.signer
    first.signer.verify_directly_issued_by(first.ca)
    assert again.chain_pem() == files["signer.pem"] + files["ca.pem"]


def test_trust_all_token_shape(identity):
    svc = DevAttestationService(identity, Policy.parse("trust_all"), clock=lambda: 1_800_000_000)
    token = svc.attest(build_request(tee="sample", evidence=sample_evidence(RUNTIME), runtime_data=RUNTIME,
                                     policy_ids=["default"]))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    jwk = header["jwk"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")
    assert all("=" not in e and "+" not in e and "/" not in e for e in jwk["x5c"])
    now = dt.datetime.fromtimestamp(1_800_000_010, dt.timezone.utc)
    verdict = verify(token, [identity.ca], now=now)
    assert (verdict.kind, verdict.tee_type, verdict.status, verdict.policy_ids) == (
        "ear", "sample", "affirming", ("default",))
    assert verdict.claims["exp"] - verdict.claims["iat"] == 300
    cpu0 = verdict.claims["submods"]["cpu0"]
    assert cpu0["ear.trustworthiness-vector"] == {"configuration": 2, "executables": 2,
                                                  "file-system": 2, "hardware": 2}
    annotated = cpu0["ear.veraison.annotated-evidence"]
    assert annotated["runtime_data_claims"] == RUNTIME
    assert annotated["sample"] == {"svn": "1", "measure_register": "0" * 64, "cc_eventlog": None}
    with pytest.raises(TokenRejected, match="expired"):
        verify(token, [identity.ca], now=now + dt.timedelta(seconds=300))


def test_deny_all_and_svn_policies(identity):
    req = build_request(tee="sample", evidence=sample_evidence(RUNTIME), runtime_data=RUNTIME,
                        policy_ids=["default"])
    deny = DevAttestationService(identity, Policy.parse("deny_all")).attest(req)
    with pytest.raises(TokenRejected, match="status 'contraindicated' in submod cpu0"):
        verify(deny, [identity.ca])
    assert verify(DevAttestationService(identity, Policy.parse("reject_svn_below:1")).attest(req),
                  [identity.ca]).status == "affirming"
    with pytest.raises(TokenRejected, match="contraindicated"):
        verify(DevAttestationService(identity, Policy.parse("reject_svn_below:2")).attest(req), [identity.ca])
    with pytest.raises(ValueError, match="unknown policy"):
        Policy.parse("allow_some")


def test_policy_ids(identity):
    svc = DevAttestationService(identity, Policy.parse("trust_all"))
    ev = sample_evidence(RUNTIME)
    token = svc.attest(build_request(tee="sample", evidence=ev, runtime_data=RUNTIME, policy_ids=[]))
    assert verify(token, [identity.ca]).policy_ids == ("default",)
    token = svc.attest(build_request(tee="sample", evidence=ev, runtime_data=RUNTIME, policy_ids=["p", "p"]))
    assert verify(token, [identity.ca], policy_ids=["p"]).policy_ids == ("p",)
    with pytest.raises(TokenRejected, match="policy 'default' not appraised"):
        verify(token, [identity.ca])
    with pytest.raises(RequestError, match="one policy per request"):
        svc.attest(build_request(tee="sample", evidence=ev, runtime_data=RUNTIME, policy_ids=["a", "b"]))


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode,
                                    lambda b: base64.b64encode(b).rstrip(b"="), None],
                         ids=["std", "url", "nopad", "hex"])
@pytest.mark.parametrize("algo", ["sha256", "sha384", "sha512"])
def test_sample_evidence_accepted_forms(encode, algo):
    ev = sample_evidence(RUNTIME, algo, encode=encode)
    for wire in (base64.urlsafe_b64encode(ev).rstrip(b"="), base64.b64encode(ev)):
        vr = VerificationRequest(tee="sample", evidence=wire.decode(), runtime_data=RUNTIME,
                                 runtime_data_hash_algorithm=algo)
        assert parse_sample_evidence(vr)["svn"] == "1"


def test_sample_evidence_zero_padded_report_data():
    digest = hashlib.sha256(canonical(RUNTIME)).digest().ljust(64, b"\0")
    ev = json.dumps({"svn": "1", "report_data": base64.b64encode(digest).decode(),
                     "measure_register": "ab" * 32}).encode()
    vr = VerificationRequest(tee="sample", evidence=base64.b64encode(ev).decode(), runtime_data=RUNTIME,
                             runtime_data_hash_algorithm="sha256")
    parse_sample_evidence(vr)


@pytest.mark.parametrize("change, msg", [
    (dict(tee="tdx"), "tee 'tdx' is not supported"),
    (dict(evidence="!!!"), "not base64url"),
    (dict(evidence=base64.b64encode(b"not json").decode()), "not JSON"),
    (dict(evidence=base64.b64encode(b'{"svn":"1","report_data":"x"}').decode()), "no measure_register"),
    (dict(evidence=base64.b64encode(sample_evidence(RUNTIME, measure_register="00")).decode()),
     "measure_register is not 64 hex"),
    (dict(evidence=base64.b64encode(sample_evidence({"pubkey-hash": "other"})).decode()),
     "report_data does not match the sha384 of the runtime data"),
    (dict(runtime_data_hash_algorithm="sha512"), "report_data does not match the sha512"),
])
def test_sample_evidence_refused(change, msg):
    vr = VerificationRequest(tee="sample", evidence=base64.b64encode(sample_evidence(RUNTIME)).decode(),
                             runtime_data=RUNTIME)
    fields = {**vr.__dict__, **change}
    with pytest.raises(RequestError, match=msg) as info:
        parse_sample_evidence(VerificationRequest(**fields))
    assert info.value.status == 400


def test_raw_runtime_data():
    raw = b"\x01\x02 raw bytes"
    ev = json.dumps({"svn": "1", "report_data": base64.b64encode(hashlib.sha384(raw).digest()).decode(),
                     "measure_register": "0" * 64}).encode()
    vr = VerificationRequest(tee="sample", evidence=base64.b64encode(ev).decode(),
                             raw_runtime_data=base64.b64encode(raw).decode())
    parse_sample_evidence(vr)


# ==========================================================================
# over the network, inside a namespace

REST, GRPC = 18080, 18081              # trust_all
DENY_REST, DENY_GRPC = 18090, 18091    # deny_all
SILENT = 18099                         # accepts TCP, never answers
CLOSED = 18098                         # nothing listens

# Runs inside the namespace: one client call, the outcome as one JSON line.
CLIENT_SCRIPT = r"""
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.serialization import Encoding
from tng_nfq.attestation.as_client import (AttestationServiceClient, AttestationServiceError,
                                           AttestationRequest, build_request, rest_flat_body)
a = json.loads(sys.argv[1])
client = AttestationServiceClient(a["as_addr"], grpc=a.get("grpc", False), timeout=a.get("timeout", 10.0))
out = {}
try:
    if a["op"] == "certificate":
        out["pem"] = "".join(c.public_bytes(Encoding.PEM).decode() for c in client.certificate_chain())
    else:
        ev = base64.b64decode(a["evidence"])
        if a["op"] == "attest":
            out["token"] = client.attest(tee=a.get("tee", "sample"), evidence=ev, runtime_data=a["runtime"],
                                         hash_algo=a.get("algo", "sha384"), policy_ids=a["policy_ids"])
        elif a["op"] == "flat_grpc":
            from tng_nfq.attestation import as_grpc
            req = build_request(tee="sample", evidence=ev, runtime_data=a["runtime"], policy_ids=a["policy_ids"])
            flat = AttestationRequest(req.requests, req.policy_ids, "flat")
            out["token"] = as_grpc.evaluate(client._channel(), flat, timeout=10)
        elif a["op"] == "flat_rest":
            req = build_request(tee="sample", evidence=ev, runtime_data=a["runtime"], policy_ids=a["policy_ids"])
            status, body = client._post_json("/attestation", rest_flat_body(req))
            out["status"], out["body"] = status, body.decode()
except AttestationServiceError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def run_client(ns: Namespace, **args) -> dict:
    if "evidence" in args:
        args["evidence"] = base64.b64encode(args["evidence"]).decode()
    proc = ns.run([sys.executable, "-c", CLIENT_SCRIPT, json.dumps(args)], check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


def print_tails(logdir: Path) -> None:
    for path in sorted(logdir.glob("*.log")):
        print(f"----- {path.name} -----\n{tail(path)}")


@contextlib.contextmanager
def logs_on_failure(logdir: Path):
    """Print the tail of every log in `logdir` if the block fails."""
    try:
        yield
    except BaseException:
        print_tails(logdir)
        raise


@contextlib.contextmanager
def tails_if_test_failed(request, logdir: Path):
    """For fixtures: a test's exception never reaches the fixture, so compare
    the session's failure count instead, and print past pytest's capture
    (teardown output of a failed test is not shown otherwise)."""
    before = request.session.testsfailed
    try:
        yield
    finally:
        if request.session.testsfailed > before:
            capman = request.config.pluginmanager.getplugin("capturemanager")
            ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
            with ctx:
                print(f"\n===== logs of {request.node.name} =====")
                print_tails(logdir)


def dev_as_argv(rest: int, grpc: int | None, policy: str, state_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "tng_nfq.attestation.dev_as", "--listen", f"127.0.0.1:{rest}",
            "--policy", policy, "--state-dir", str(state_dir)]
    if grpc is not None:
        argv += ["--grpc", f"127.0.0.1:{grpc}"]
    return argv


def start_dev_as(lab: Lab, ns: Namespace, logdir: Path, name: str, rest: int, grpc: int | None,
                 policy: str, state_dir: Path) -> subprocess.Popen:
    log = open(logdir / f"dev-as-{name}.log", "w")
    proc = lab.spawn(ns, dev_as_argv(rest, grpc, policy, state_dir), stdin=subprocess.DEVNULL,
                     stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own descriptor
    wait_for_port(ns, "127.0.0.1", rest, timeout=WAIT, proc=proc)
    if grpc is not None:
        wait_for_port(ns, "127.0.0.1", grpc, timeout=WAIT, proc=proc)
    return proc


def as_log_events(path: Path, event: str) -> list[dict]:
    out = []
    for line in tail(path, 10**7).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root and network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` is not installed")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """One namespace with a trust_all and a deny_all dev AS, plus a silent listener."""
    need_root()
    logdir = tmp_path_factory.mktemp("dev-as-net")
    state = logdir / "state"
    deny_state = logdir / "deny-state"
    with Lab("as") as lab:
        ns = lab.add("solo")
        with logs_on_failure(logdir):
            procs = {
                "trust": start_dev_as(lab, ns, logdir, "trust", REST, GRPC, "trust_all", state),
                "deny": start_dev_as(lab, ns, logdir, "deny", DENY_REST, DENY_GRPC, "deny_all", deny_state),
            }
            silent = lab.spawn(ns, [sys.executable, "-c",
                                    "import socket, time; s = socket.socket(); "
                                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                    f"s.bind(('127.0.0.1', {SILENT})); s.listen(16); time.sleep(600)"])
            wait_for_port(ns, "127.0.0.1", SILENT, timeout=WAIT, proc=silent)
        yield {"lab": lab, "ns": ns, "logdir": logdir, "state": state, "deny_state": deny_state, **procs}


@pytest.fixture
def logs(net, request):
    with tails_if_test_failed(request, net["logdir"]):
        yield net["logdir"]


def attest(net, *, port=REST, grpc=False, runtime=RUNTIME, evidence=None, **kw) -> dict:
    return run_client(net["ns"], op="attest", as_addr=f"http://127.0.0.1:{port}/", grpc=grpc,
                      runtime=runtime, evidence=evidence or sample_evidence(runtime),
                      policy_ids=kw.pop("policy_ids", ["default"]), **kw)


@pytest.mark.root
@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_client_and_dev_as_trust_all(net, logs, grpc):
    out = attest(net, port=GRPC if grpc else REST, grpc=grpc)
    assert "token" in out, out
    verdict = verify(out["token"], load_trust_anchors([str(net["state"] / "ca.pem")]))
    assert (verdict.kind, verdict.tee_type, verdict.status) == ("ear", "sample", "affirming")
    # the anchors may also come from the AS itself (no trusted_certs_paths)
    pem = run_client(net["ns"], op="certificate", as_addr=f"http://127.0.0.1:{REST}/")["pem"]
    chain = x509.load_pem_x509_certificates(pem.encode())
    assert chain[-1].public_bytes(serialization.Encoding.PEM) == (net["state"] / "ca.pem").read_bytes()
    assert verify(out["token"], chain).status == "affirming"
    events = as_log_events(net["logdir"] / "dev-as-trust.log", "attestation request")
    assert any(e["api"] == ("grpc" if grpc else "rest") and e["layout"] == "current" for e in events)


@pytest.mark.root
@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_client_and_dev_as_deny_all(net, logs, grpc):
    out = attest(net, port=DENY_GRPC if grpc else DENY_REST, grpc=grpc)
    assert "token" in out, out
    with pytest.raises(TokenRejected, match="status 'contraindicated' in submod cpu0"):
        verify(out["token"], load_trust_anchors([str(net["deny_state"] / "ca.pem")]))
    # and a deny_all token is no good against the trust_all AS's CA either
    with pytest.raises(TokenRejected, match="does not lead to a trusted CA"):
        verify(out["token"], load_trust_anchors([str(net["state"] / "ca.pem")]))


@pytest.mark.root
def test_bad_report_data_is_http_400(net, logs):
    out = attest(net, evidence=sample_evidence({"pubkey-hash": "someone else"}))
    assert out["error"] == (f"attestation service http://127.0.0.1:{REST}/: HTTP 400: sample evidence "
                            "report_data does not match the sha384 of the runtime data")
    out = attest(net, port=GRPC, grpc=True, evidence=sample_evidence({"pubkey-hash": "someone else"}))
    assert out["error"].startswith(f"attestation service http://127.0.0.1:{GRPC}/: gRPC INVALID_ARGUMENT: "
                                   "sample evidence report_data does not match")


@pytest.mark.root
def test_other_tee_is_refused(net, logs):
    out = attest(net, tee="tdx")
    assert "HTTP 400: tee 'tdx' is not supported" in out["error"]


@pytest.mark.root
@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_other_hash_algorithms(net, logs, algo):
    out = attest(net, algo=algo, evidence=sample_evidence(RUNTIME, algo))
    assert verify(out["token"], load_trust_anchors([str(net["state"] / "ca.pem")])).status == "affirming"


@pytest.mark.root
def test_flat_layouts_accepted(net, logs):
    ev = sample_evidence(RUNTIME)
    anchors = load_trust_anchors([str(net["state"] / "ca.pem")])
    rest = run_client(net["ns"], op="flat_rest", as_addr=f"http://127.0.0.1:{REST}/", runtime=RUNTIME,
                      evidence=ev, policy_ids=["default"])
    assert rest["status"] == 200, rest
    assert verify(rest["body"], anchors).status == "affirming"
    grpc = run_client(net["ns"], op="flat_grpc", as_addr=f"http://127.0.0.1:{GRPC}/", runtime=RUNTIME,
                      evidence=ev, policy_ids=["default"])
    assert verify(grpc["token"], anchors).status == "affirming"
    layouts = {(e["api"], e["layout"]) for e in as_log_events(net["logdir"] / "dev-as-trust.log",
                                                              "attestation request")}
    assert {("rest", "flat"), ("grpc", "flat")} <= layouts


@pytest.mark.root
@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_client_errors_are_one_line(net, logs, grpc):
    out = attest(net, port=CLOSED, grpc=grpc, timeout=5)
    assert out["error"].startswith(f"attestation service http://127.0.0.1:{CLOSED}/: unreachable: ")
    if not grpc:
        assert out["error"].endswith("unreachable: connection refused")
    out = attest(net, port=SILENT, grpc=grpc, timeout=0.5)
    assert out["error"] == f"attestation service http://127.0.0.1:{SILENT}/: timed out after 0.5s"


@pytest.mark.root
def test_challenge_and_unknown_paths(net, logs):
    script = ("import http.client, json\n"
              f"c = http.client.HTTPConnection('127.0.0.1', {REST}, timeout=10)\n"
              "out = []\n"
              "for method, path, body in [('POST', '/challenge', b'{}'), ('GET', '/nope', None),\n"
              "                           ('POST', '/attestation', b'{not json')]:\n"
              "    c.request(method, path, body=body)\n"
              "    r = c.getresponse()\n"
              "    out.append([r.status, r.read().decode()])\n"
              "print(json.dumps(out))\n")
    proc = net["ns"].run([sys.executable, "-c", script])
    (s1, challenge), (s2, _), (s3, err) = json.loads(proc.stdout)
    challenge = json.loads(challenge)  # Trustee's shape: nonce + extra_params.jwt carrying it
    assert s1 == 200 and len(base64.b64decode(challenge["nonce"], validate=True)) == 32
    claims = json.loads(base64.urlsafe_b64decode(challenge["extra_params"]["jwt"].split(".")[1] + "=="))
    assert claims["nonce"] == challenge["nonce"] and claims["exp"] > claims["iat"]
    assert s2 == 404
    assert s3 == 400 and err.startswith("invalid request body")


@pytest.mark.root
def test_restart_reuses_state_and_sigterm_exits_0(tmp_path):
    need_root()
    state = tmp_path / "state"
    with Lab("asrs") as lab, logs_on_failure(tmp_path):
        ns = lab.add("solo")
        proc = start_dev_as(lab, ns, tmp_path, "first", REST, GRPC, "trust_all", state)
        ca = (state / "ca.pem").read_bytes()
        assert stop_process(proc) == 0
        proc = start_dev_as(lab, ns, tmp_path, "second", REST, None, "trust_all", state)
        assert (state / "ca.pem").read_bytes() == ca
        out = run_client(ns, op="attest", as_addr=f"http://127.0.0.1:{REST}/", runtime=RUNTIME,
                         evidence=sample_evidence(RUNTIME), policy_ids=["default"])
        assert verify(out["token"], load_trust_anchors([str(state / "ca.pem")])).status == "affirming"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 0


# ==========================================================================
# upstream tng 2.12 against our dev AS (and our dev AA)

UP_IN, UP_HOP, BACKEND = 19000, 19001, 19002
CTL_EGRESS, CTL_INGRESS = 19010, 19011
AS_REST, AS_GRPC = 19020, 19021
PAGE = b"hello through an attested tunnel\n"


def upstream_tng() -> str:
    exe = Path(sys.executable).parent / "tng"
    if exe.exists():
        return str(exe)
    found = shutil.which("tng")
    if not found:
        pytest.skip("upstream tng (tng-sdk==2.12.0) is not installed")
    return found


class UpstreamPair:
    """Dev AA + dev AS + backend + upstream egress/ingress in one namespace."""

    def __init__(self, lab: Lab, ns: Namespace, workdir: Path):
        self.lab, self.ns, self.workdir = lab, ns, workdir
        self.aa_sock = workdir / "aa.sock"
        self.state = workdir / "as-state"

    def log(self, name: str):
        return open(self.workdir / f"{name}.log", "w")

    def start_aa(self) -> None:
        with self.log("dev-aa") as log:
            proc = self.lab.spawn(self.ns, [sys.executable, "-c",
                                            "import sys; from tng_nfq.attestation.dev_aa import run_forever; "
                                            "run_forever(sys.argv[1])", str(self.aa_sock)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while not self.aa_sock.exists():
            assert proc.poll() is None, f"dev AA exited with {proc.returncode}"
            assert time.monotonic() < deadline, "dev AA socket did not appear"
            time.sleep(0.05)

    def start_as(self, policy: str) -> None:
        start_dev_as(self.lab, self.ns, self.workdir, "as", AS_REST, AS_GRPC, policy, self.state)

    def start_backend(self) -> None:
        site = self.workdir / "site"
        site.mkdir()
        (site / "page.txt").write_bytes(PAGE)
        with self.log("backend") as log:
            proc = self.lab.spawn(self.ns, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                            "--directory", str(site), str(BACKEND)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.ns, "127.0.0.1", BACKEND, timeout=WAIT, proc=proc)

    def start_upstream(self, name: str, config: dict, control_port: int) -> subprocess.Popen:
        config = {**config, "control_interface": {"restful": {"host": "127.0.0.1", "port": control_port}}}
        (self.workdir / f"upstream-{name}.json").write_text(json.dumps(config, indent=1))
        with self.log(f"upstream-{name}") as log:
            proc = self.lab.spawn(self.ns, [upstream_tng(), "launch", "--config-content", json.dumps(config)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        probe = ("import sys, urllib.request\n"
                 "try:\n"
                 f"    ok = urllib.request.urlopen('http://127.0.0.1:{control_port}/readyz', timeout=1).status == 200\n"
                 "except Exception:\n"
                 "    ok = False\n"
                 "sys.exit(0 if ok else 1)\n")
        deadline = time.monotonic() + WAIT
        while self.ns.run([sys.executable, "-c", probe], check=False).returncode != 0:
            assert proc.poll() is None, f"upstream {name} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"upstream {name}: /readyz not 200 after {WAIT}s"
            time.sleep(0.1)
        return proc

    def start_pair(self, attest: dict, verify: dict) -> None:
        self.start_upstream("egress", {"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": UP_HOP},
                        "out": {"host": "127.0.0.1", "port": BACKEND}},
            "attest": attest}]}, CTL_EGRESS)
        self.start_upstream("ingress", {"add_ingress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": UP_IN},
                        "out": {"host": "127.0.0.1", "port": UP_HOP}},
            "verify": verify}]}, CTL_INGRESS)

    def get(self) -> subprocess.CompletedProcess:
        script = ("import sys, urllib.request\n"
                  f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{UP_IN}/page.txt', timeout=30)"
                  ".read().decode())\n")
        return self.ns.run([sys.executable, "-c", script], check=False, timeout=60)

    def as_events(self, event: str = "attestation request") -> list[dict]:
        return as_log_events(self.workdir / "dev-as-as.log", event)


@pytest.fixture
def upstream(tmp_path, request):
    need_root()
    upstream_tng()
    with Lab("asup") as lab:
        ns = lab.add("solo")
        pair = UpstreamPair(lab, ns, tmp_path)
        with tails_if_test_failed(request, tmp_path):
            yield pair


def start_background_check(pair: UpstreamPair, policy: str, anchors_from_as: bool = False) -> None:
    pair.start_aa()
    pair.start_as(policy)
    pair.start_backend()
    verify = {"as_addr": f"http://127.0.0.1:{AS_REST}/", "policy_ids": ["default"]}
    if not anchors_from_as:
        verify["trusted_certs_paths"] = [str(pair.state / "ca.pem")]
    pair.start_pair(attest={"aa_addr": f"unix://{pair.aa_sock}"}, verify=verify)


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.parametrize("anchors_from_as", [False, True], ids=["trusted_certs_paths", "get-certificate"])
def test_upstream_background_check_trust_all(upstream, anchors_from_as):
    start_background_check(upstream, "trust_all", anchors_from_as)
    res = upstream.get()
    assert res.returncode == 0 and res.stdout.encode() == PAGE, res.stderr[-2000:]
    # upstream's verifier really asked our AS, with the current request layout
    events = upstream.as_events()
    assert events, "upstream never called the dev AS"
    body = json.loads(events[0]["body"])
    print("upstream -> dev AS request body:", json.dumps(body, indent=1))
    (vr,) = body["verification_requests"]
    assert vr["tee"] == "sample" and body["policy_ids"] == ["default"]
    assert set(vr["runtime_data"]["structured"]) == {"pubkey-hash"}
    assert vr["runtime_data_hash_algorithm"] == "sha384"
    # without trusted_certs_paths upstream takes its anchors from GET /certificate
    assert bool(upstream.as_events("certificate served")) == anchors_from_as


@pytest.mark.root
@pytest.mark.interop
def test_upstream_background_check_deny_all(upstream):
    start_background_check(upstream, "deny_all")
    res = upstream.get()
    assert res.returncode != 0, f"request got through a deny_all AS: {res.stdout!r}"
    assert upstream.as_events(), "upstream never called the dev AS"
    # refused for the right reason: upstream read our token's EAR status (it
    # logs that just after closing the client's connection: poll, bounded)
    deadline = time.monotonic() + WAIT
    while True:
        text = tail(upstream.workdir / "upstream-ingress.log", 10**6)
        if "EarStatusNotAffirming" in text and "contraindicated" in text:
            break
        assert time.monotonic() < deadline, "upstream ingress never logged EarStatusNotAffirming"
        time.sleep(0.1)


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.parametrize("as_type", ["restful", "grpc"])
def test_upstream_passport(upstream, as_type):
    upstream.start_aa()
    upstream.start_as("trust_all")
    upstream.start_backend()
    attest = {"model": "passport", "aa_addr": f"unix://{upstream.aa_sock}",
              "as_addr": f"http://127.0.0.1:{AS_GRPC if as_type == 'grpc' else AS_REST}/",
              "policy_ids": ["default"]}
    if as_type == "grpc":
        attest["as_type"] = "grpc"
    upstream.start_pair(attest=attest, verify={"model": "passport", "policy_ids": ["default"],
                                               "trusted_certs_paths": [str(upstream.state / "ca.pem")]})
    res = upstream.get()
    assert res.returncode == 0 and res.stdout.encode() == PAGE, res.stderr[-2000:]
    events = upstream.as_events()
    assert events and events[0]["api"] == ("grpc" if as_type == "grpc" else "rest")
    assert events[0]["layout"] == "current"
    print("upstream passport attester -> dev AS:", json.dumps(events[0], indent=1))
    if as_type == "grpc":
        (raw,) = upstream.as_events("grpc request received")[:1]
        print("upstream gRPC request fields:", raw["wire_fields"])
        # v1.6: verification_requests (1) and policy_ids (2); inside: tee 1, evidence 3,
        # structured_runtime_data 5, runtime_data_hash_algorithm 8
        assert raw["wire_fields"]["top"] == [1, 2]
        assert {1, 3, 5, 8} <= set(raw["wire_fields"]["field1"][0])
