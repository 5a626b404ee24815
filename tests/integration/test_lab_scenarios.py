"""The Vagrant lab's scenarios, run in the namespace mirror; `vagrant validate`.

vagrant/Vagrantfile describes client, gateway and server machines; no VM can
boot in CI, so the same scenario scripts (vagrant/scenarios/<n>-<name>/) run
here in three network namespaces with the same addresses - which is what
proves the scenarios. Each one uses sample attestation, real traffic (curl
to an HTTP backend, nc for the cachefs case) and checks the response, the
attestation (access log, admin API, the AS's appraisals) and a tcpdump of
the wire toward the server (TLS only, the run's secret never in clear).
The lab is removed afterwards, also when a scenario fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tng_nfq.lab.netns import existing_namespaces
from tng_nfq.lab.scenarios import LINKS, ROLES, NetnsLab, list_scenarios, scenarios_dir

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
SCENARIOS = list_scenarios(VAGRANT / "scenarios")
SCENARIO_BUDGET = 60.0  # seconds; a scenario takes ~15 s on 2 cores


def ns_pids(name: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()


def assert_gone(mirror: NetnsLab) -> None:
    present = [n for n in existing_namespaces() if n.startswith(mirror.prefix + "-")]
    assert present == [], present
    assert not mirror.state.exists()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces (CI runs these as root)")
    for tool in ("ip", "tcpdump", "curl", "nc", "ss", "setsid"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (scripts/install-system-deps.sh)")
    # tngnfq-<pid>-...: the lab's sweep removes these if this run crashes
    lab = NetnsLab(prefix=f"tngnfq-{os.getpid()}-vlab", state_dir=tmp_path_factory.mktemp("vlab"),
                   root=VAGRANT / "scenarios")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        assert_gone(lab)


def test_the_mirror_has_the_vagrantfile_addresses(mirror):
    vagrantfile = (VAGRANT / "Vagrantfile").read_text()
    lib = (VAGRANT / "scenarios" / "lib.sh").read_text()
    for a, _, addr_a, b, _, addr_b in LINKS:
        for role, cidr in ((a, addr_a), (b, addr_b)):
            ip = cidr.split("/")[0]
            assert re.search(rf'"{role}"\s*=>.*"{re.escape(ip)}"', vagrantfile), (role, ip)
            assert f"={ip}\n" in lib, ip
            assert ip in mirror.exec(role, ["ip", "-4", "-o", "addr"]).stdout
    # the client reaches the server network only through the gateway
    route = mirror.exec("client", ["ip", "route", "get", "192.168.57.30"]).stdout
    assert "via 192.168.56.20" in route, route


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(mirror, scenario):
    mirror.leftovers.clear()
    result = mirror.run(scenario)

    report = "\n".join([result.output, result.logs])
    assert result.ok, report
    assert [s.step for s in result.steps] == scenario.steps()
    assert "verdict: no plaintext on the wire" in result.output, report
    assert "status affirming" in result.output, report
    assert result.seconds < SCENARIO_BUDGET, f"{scenario.name} took {result.seconds:.1f}s"
    # afterwards nothing of the scenario runs any more (tng-nfq removed its rules)
    if mirror.leftovers:  # stop.sh did not end them within 5 s; the lab killed them
        warnings.warn(f"{scenario.name}: processes left after stop.sh: {mirror.leftovers}")
    for role in ROLES:
        assert ns_pids(mirror.ns(role)) == [], role
        assert "TNGNFQ" not in mirror.exec(role, ["iptables-save"]).stdout, role
        assert "lookup 5650" not in mirror.exec(role, ["ip", "-4", "rule"]).stdout, role


def _toy_root(tmp_path: Path) -> Path:
    """A copy of the shared scripts plus a scenario that starts a process and then fails."""
    root = tmp_path / "scenarios"
    root.mkdir()
    for name in ("step", "lib.sh", "stop.sh"):
        shutil.copy2(VAGRANT / "scenarios" / name, root / name)
    toy = root / "9-fails"
    toy.mkdir()
    (toy / "steps").write_text("# a scenario that fails halfway\nserver start.sh\nclient boom.sh\ngateway never.sh\n")
    (toy / "start.sh").write_text('start_bg sleeper sleep 300\nsay "sleeping"\n')
    (toy / "boom.sh").write_text('fail "on purpose"\n')
    (toy / "never.sh").write_text('touch "$LAB_STATE/never-ran"\n')
    clear = root / "8-plaintext"  # no tng-nfq at all: the wire check must say so
    clear.mkdir()
    (clear / "steps").write_text("server server.sh\ngateway gateway.sh\nclient client.sh\ngateway check.sh\n")
    (clear / "server.sh").write_text("http_backend 8080\n")
    (clear / "gateway.sh").write_text("capture_start 8080\n")
    (clear / "client.sh").write_text('curl -sS --fail "http://$SERVER_IP:8080/$LAB_MARKER.txt"\n')
    (clear / "check.sh").write_text("capture_check\n")
    return root


def test_a_failing_scenario_stops_everything_and_reports(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = NetnsLab(prefix=f"tngnfq-{os.getpid()}-vfail", state_dir=tmp_path / "state", root=_toy_root(tmp_path))
    try:
        lab.up()
        result = lab.run(lab.find("9"))
        assert not result.ok
        assert [s.step.script for s in result.steps] == ["start.sh", "boom.sh"]  # stopped at the failure
        assert "FAILED: on purpose" in result.output
        assert "server/sleeper.log" in result.logs  # the logs are kept for the report
        assert not (lab.state / "never-ran").exists()
        assert ns_pids(lab.ns("server")) == []  # the sleeper was stopped

        # `down` also removes what a kept run left running
        kept = lab.run(lab.find("9"), keep=True)
        assert not kept.ok and len(ns_pids(lab.ns("server"))) == 1
    finally:
        lab.down()
    assert_gone(lab)


def test_the_wire_check_catches_plaintext(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = NetnsLab(prefix=f"tngnfq-{os.getpid()}-vclear", state_dir=tmp_path / "state", root=_toy_root(tmp_path))
    try:
        lab.up()
        result = lab.run(lab.find("8"), marker="TNGLAB-SECRET-in-clear")
    finally:
        lab.down()
    assert [s.returncode for s in result.steps] == [0, 0, 0, 1], result.output
    assert "hello from the server backend, TNGLAB-SECRET-in-clear" in result.steps[2].output
    assert "[NOT TLS]" in result.output and "PLAINTEXT" in result.output
    assert "verdict: PLAINTEXT found on a tunnel port" in result.output
    assert "FAILED: the capture shows something other than a clean rats-tls tunnel" in result.output
    assert_gone(lab)


def test_netns_lab_script_needs_the_lab_up_and_lists_scenarios(tmp_path):
    script = VAGRANT / "netns-lab"
    assert os.access(script, os.X_OK)
    listed = subprocess.run([str(script), "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    for s in SCENARIOS:
        assert s.name in listed.stdout
    if os.geteuid() == 0:
        res = subprocess.run([str(script), "run", "--prefix", f"tngnfq-{os.getpid()}-absent", "1"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "is not up" in res.stderr, res.stderr


def test_scenarios_dir_is_the_checkout():
    assert scenarios_dir() == VAGRANT / "scenarios"
    assert [s.number for s in SCENARIOS][:3] == ["1", "2", "3"]
    for s in SCENARIOS:
        for step in s.steps():
            assert (s.path / step.script).is_file()


def test_vagrant_validate():
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("`vagrant` is not installed (scripts/install-system-deps.sh)")
    started = time.monotonic()
    # --ignore-provider: no VirtualBox/libvirt here; everything else is validated
    res = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=VAGRANT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    assert time.monotonic() - started < 300


def test_demo_runs_scenario_1_prints_the_results_and_cleans_up():
    """`make demo` == `tng-nfq demo`: scenario 1 in the mirror, then nothing left."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    exe = Path(sys.executable).with_name("tng-nfq")
    proc = subprocess.Popen([str(exe), "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)

    assert proc.returncode == 0, out
    summary = out[out.index("==> summary"):]
    assert re.search(r"response: +hello from the server backend, TNGLAB-SECRET-", summary), out
    assert re.search(r"attestation: +TEE type sample, policy default, status affirming", summary), out
    assert re.search(r"/flows \(client\): +1 live connection\(s\): 192\.168\.56\.10:\d+ -> 192\.168\.57\.30:8080 "
                     r"\(open, attested=True, peer affirming\)", summary), out
    assert re.search(r"capture verdict: +no plaintext on the wire", summary), out
    assert '"classified": [' in out  # the admin API's /flows view itself
    assert "demo OK" in out
    assert [n for n in existing_namespaces() if n.startswith(f"tngnfq-{proc.pid}-")] == []
