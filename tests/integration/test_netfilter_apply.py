"""The apply layer against the real kernel, inside a lab namespace only.

Every test drives `NetfilterRules` (or `tng-nfq rules flush`) in a process
started inside the lab's server namespace and reads the result back with
iptables-save / ip rule / ip route there: what gets installed is exactly the
plan, hooked at position 1 ahead of other software's rules; removal restores
the state from before; a SIGKILLed holder's leftovers are swept at the next
start and by `rules flush`; a second instance in the namespace is refused.
Both iptables backends (nft and legacy) are exercised.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from tng_nfq.config import load_config
from tng_nfq.netfilter.iptables import ours, parse_save
from tng_nfq.netfilter.plan import build_plan, resolve_listen_ports

pytestmark = pytest.mark.root

EGRESS = {"add_egress": [
    {"netfilter": {"capture_dst": {"port": 30001}, "capture_local_traffic": True}, "no_ra": True},
    {"netfilter": {"capture_dst": {"host": "198.18.0.2", "port": 30002}, "so_mark": 7}, "no_ra": True}]}
GATEWAY = {"add_ingress": [
    {"netfilter": {"capture_dst": [{"host": "198.18.9.0/24", "port": 8080}, {"port": 9090}]}, "no_ra": True}]}

APPLY = r"""
import os, signal, sys
from tng_nfq.config import load_config
from tng_nfq.netfilter.apply import ApplyError, NetfilterRules
from tng_nfq.netfilter.iptables import Iptables
from tng_nfq.netfilter.plan import build_plan, resolve_listen_ports
from tng_nfq.logs import configure

configure(fmt="json")  # logs to stderr; stdout carries the markers the test reads
config = load_config(sys.argv[1])
action, backend = sys.argv[2], sys.argv[3]
plan = build_plan(config, resolve_listen_ports(config, lambda port: True))
rules = NetfilterRules(plan, Iptables.for_backend(backend))
try:
    rules.install()
except ApplyError as exc:
    print("APPLY-ERROR", exc, flush=True)
    sys.exit(3)
print("INSTALLED", os.getpid(), flush=True)
if action == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "hold":
    sys.stdin.read()  # until the test closes our stdin
rules.remove()
print("REMOVED", flush=True)
"""

# rules of "other software", present before we start
FOREIGN = """\
*nat
-A PREROUTING -p tcp --dport 5555 -j RETURN
-A OUTPUT -p tcp --dport 5555 -j RETURN
COMMIT
*mangle
-A PREROUTING -p udp -j RETURN
COMMIT
"""


def plan_of(config: dict):
    cfg = load_config(json.dumps(config))
    return build_plan(cfg, resolve_listen_ports(cfg, lambda port: True))


def save(ns, backend: str) -> str:
    text = ns.run([f"iptables-{backend}-save"]).stdout
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def kernel_state(ns, backend: str) -> dict:
    return {"iptables": save(ns, backend),
            "rules": ns.run(["ip", "-4", "rule"]).stdout,
            "routes": ns.run(["ip", "-4", "route", "show", "table", "all"]).stdout}


def apply_script(lab, ns, config: dict, action: str, backend: str, **kw):
    return ns.run([sys.executable, "-c", APPLY, json.dumps(config), action, backend], check=False, **kw)


class Holder:
    """The APPLY script in "hold" mode: rules installed until we close its stdin."""

    def __init__(self, lab, ns, config: dict, backend: str, name: str = "holder"):
        self.out = lab.workdir / f"{name}.out"
        self.err = lab.workdir / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = lab.lab.spawn(ns, [sys.executable, "-c", APPLY, json.dumps(config), "hold", backend],
                                      stdin=subprocess.PIPE, stdout=out, stderr=err, text=True)
        self.pid = int(lab.poll_until(lambda: re.search(r"INSTALLED (\d+)", self.out.read_text()),
                                      f"{name}: rules installed", proc=self.proc).group(1))

    def release(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=20)

    def output(self) -> str:
        return self.out.read_text()


def expected_lines(plan) -> dict[str, Counter]:
    out = {}
    for table in plan.tables():
        lines = [f"-A {j.builtin} {j.spec}" for j in plan.jumps if j.table == table]
        lines += [r.line() for r in plan.rules(table)]
        lines += [f":{c}" for c in plan.chains(table)]
        out[table] = Counter(lines)
    return out


@pytest.fixture
def ns(lab):
    return lab.server


@pytest.fixture(params=["nft", "legacy"])
def backend(request, ns):
    ns.run([f"iptables-{request.param}-restore", "--noflush"], input=FOREIGN)
    return request.param


def test_install_is_exactly_the_plan_ahead_of_other_rules_and_removal_restores(lab, ns, backend):
    before = kernel_state(ns, backend)
    holder = Holder(lab, ns, EGRESS, backend)
    try:
        plan = plan_of(EGRESS)
        tables = parse_save(save(ns, backend))
        assert {t: Counter(lines) for t, lines in ours(tables).items()} == expected_lines(plan)
        for jump in plan.jumps:  # our hook comes before the foreign rule
            first = next(spec for chain, spec in tables[jump.table].rules if chain == jump.builtin)
            assert first == jump.spec
    finally:
        code = holder.release()
    assert code == 0 and holder.output().split()[-1] == "REMOVED"
    assert kernel_state(ns, backend) == before


def test_gateway_plan_installs_policy_routing_and_removes_it(lab, ns, backend):
    before = kernel_state(ns, backend)
    holder = Holder(lab, ns, GATEWAY, backend)
    try:
        plan = plan_of(GATEWAY)
        assert {t: Counter(lines) for t, lines in ours(parse_save(save(ns, backend))).items()} == \
            expected_lines(plan)
        assert "from all fwmark 0x2000000/0x2000000 lookup 5650" in ns.run(["ip", "-4", "rule"]).stdout
        assert ns.run(["ip", "route", "show", "table", "5650"]).stdout.split() == \
            "local default dev lo proto static scope host".split()
    finally:
        code = holder.release()
    assert code == 0
    assert kernel_state(ns, backend) == before


def test_leftovers_of_a_killed_instance_are_swept_at_the_next_start(lab, ns, backend):
    before = kernel_state(ns, backend)
    crashed = apply_script(lab, ns, GATEWAY, "crash", backend)
    assert crashed.returncode == -9 and "INSTALLED" in crashed.stdout
    assert ours(parse_save(save(ns, backend)))  # left behind
    assert "lookup 5650" in ns.run(["ip", "-4", "rule"]).stdout

    again = apply_script(lab, ns, GATEWAY, "once", backend)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed leftovers of an earlier tng-nfq" in again.stderr
    assert kernel_state(ns, backend) == before


def test_rules_flush_removes_everything_of_ours(lab, ns, backend):
    before = kernel_state(ns, backend)
    apply_script(lab, ns, GATEWAY, "crash", backend)
    apply_script(lab, ns, EGRESS, "crash", backend)  # its start swept the first one's rules
    assert ours(parse_save(save(ns, backend)))

    flushed = ns.run([sys.executable, "-m", "tng_nfq.cli", "rules", "flush"], check=False,
                     env={"TNG_NFQ_IPTABLES": backend, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    assert flushed.returncode == 0, flushed.stderr
    assert "removed: -X TNGNFQ_EGRESS0" in flushed.stdout
    assert kernel_state(ns, backend) == before
    again = ns.run([sys.executable, "-m", "tng_nfq.cli", "rules", "flush"],
                   env={"TNG_NFQ_IPTABLES": backend, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert again.stdout.strip() == "nothing of tng-nfq found in this network namespace"


def test_second_instance_in_the_namespace_is_refused_and_flush_waits_for_force(lab, ns):
    backend = "nft"
    holding = Holder(lab, ns, EGRESS, backend)
    holder = holding.pid
    try:
        state = save(ns, backend)
        second = apply_script(lab, ns, GATEWAY, "once", backend)
        assert second.returncode == 3
        assert f"another tng-nfq (pid {holder}) already manages netfilter rules" in second.stdout
        assert save(ns, backend) == state  # the refused one changed nothing

        refused = ns.run([sys.executable, "-m", "tng_nfq.cli", "rules", "flush"], check=False)
        assert refused.returncode == 1
        assert f"pid {holder}" in refused.stderr and "--force" in refused.stderr
        assert save(ns, backend) == state
    finally:
        code = holding.release()
    assert code == 0
    # another namespace is another world: the client namespace is free
    elsewhere = apply_script(lab, lab.client, EGRESS, "once", backend)
    assert elsewhere.returncode == 0, elsewhere.stdout


def test_flush_force_while_held(lab, ns):
    holder = Holder(lab, ns, EGRESS, "nft")
    try:
        forced = ns.run([sys.executable, "-m", "tng_nfq.cli", "rules", "flush", "--force"])
        assert "removed: -X TNGNFQ_EGRESS0" in forced.stdout
        assert ours(parse_save(save(ns, "nft"))) == {}
    finally:
        code = holder.release()
    # the holder's exact removal no longer applies; it falls back to the sweep and exits 0
    assert code == 0 and holder.output().split()[-1] == "REMOVED"
    assert "exact rule removal failed; sweeping by prefix" in holder.err.read_text()
