"""The rule plan: config -> exact iptables-restore text and policy routing.

Snapshots: tests/data/rules/<case>.rules holds what `tng-nfq rules show`
prints (install, then removal) for each case; the comparison is exact. To
regenerate after an intended change: TNG_NFQ_UPDATE_RULE_SNAPSHOTS=1 pytest
tests/unit/test_netfilter_plan.py, then review the diff.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from tng_nfq.config import load_config
from tng_nfq.netfilter.plan import (
    CHAIN_PREFIX,
    PlanError,
    build_plan,
    resolve_listen_ports,
)

DATA = Path(__file__).parent.parent / "data"
RULES_DATA = DATA / "rules"
MANUAL = DATA / "manual"
TEMPLATES = Path(__file__).parent.parent.parent / "rules"

# case -> (config file, ports the "is it free" probe refuses, classifier queues)
# Two queues is what a start on a 2-CPU machine uses; 0 and 1 cover the
# no-classifier and single-queue forms.
CASES = {
    "manual_egress_netfilter": (MANUAL / "example_04_egress_netfilter.json", set(), 2),
    "manual_ref_egress_netfilter": (MANUAL / "ref_egress_netfilter.jsonc", set(), 2),
    "manual_ref_egress_netfilter_no_classifier": (MANUAL / "ref_egress_netfilter.jsonc", set(), 0),
    "manual_encap_egress_netfilter": (MANUAL / "example_07_encap_egress_netfilter.json", set(), 2),
    "usecase2_server": (MANUAL / "usecase2_server_netfilter_egress.json", set(), 2),
    "usecase2_client": (MANUAL / "usecase2_client_netfilter_ingress.json", {40000}, 2),
    "manual_mapping_only": (MANUAL / "example_05_no_ra.json", set(), 2),
    "ingress_cgroups": (RULES_DATA / "ingress_cgroups.json", set(), 1),
    "ingress_cgroup_only": (RULES_DATA / "ingress_cgroup_only.json", set(), 2),
    "ingress_gateway": (RULES_DATA / "ingress_gateway.json", set(), 2),
    "ingress_gateway_no_classifier": (RULES_DATA / "ingress_gateway.json", set(), 0),
    "two_egress_auto_ports": (RULES_DATA / "two_egress_auto_ports.json", {40001}, 2),
    "mixed_ingress_egress": (RULES_DATA / "mixed_ingress_egress.json", set(), 2),
}


def config_for(case: str):
    path = CASES[case][0]
    # use case 2's client names its AS with a placeholder; fill it in
    return load_config(path.read_text().replace("<attestation-service-url>", "http://127.0.0.1:8080/"))


def plan_for(case: str, config=None):
    _, busy, queues = CASES[case]
    config = config or config_for(case)
    return build_plan(config, resolve_listen_ports(config, lambda port: port not in busy), queues=queues)


def plan_of(doc: str, busy=(), queues: int = 0):
    config = load_config(doc)
    return build_plan(config, resolve_listen_ports(config, lambda port: port not in busy), queues=queues)


@pytest.mark.parametrize("case", sorted(CASES))
def test_snapshot(case):
    plan = plan_for(case)
    text = plan.render() + plan.render(removal=True)
    expected = RULES_DATA / f"{case}.rules"
    if os.environ.get("TNG_NFQ_UPDATE_RULE_SNAPSHOTS"):
        expected.write_text(text)
    assert text == expected.read_text()


def test_manual_egress_example_rules():
    """The manual's egress example, in full: what upstream generates (TNG_ENGRESS
    with REDIRECT --to-ports) with our names, our port default and our hooks,
    plus the classifier's queue rules (raw) and its conntrack mark (mangle)."""
    plan = plan_for("manual_egress_netfilter")
    queue = "-j NFQUEUE --queue-balance 5650:5651 --queue-bypass"
    decided = "-m mark --mark 0x1000000/0x1000000"
    assert plan.install_text() == (
        "*raw\n"
        ":TNGNFQ_PREROUTING - [0:0]\n"
        ":TNGNFQ_OUTPUT - [0:0]\n"
        ":TNGNFQ_EGRESS0 - [0:0]\n"
        f"-A TNGNFQ_PREROUTING {decided} -j RETURN\n"
        "-A TNGNFQ_PREROUTING -j TNGNFQ_EGRESS0\n"
        f"-A TNGNFQ_OUTPUT {decided} -j RETURN\n"
        "-A TNGNFQ_OUTPUT -j TNGNFQ_EGRESS0\n"
        "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
        "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 "
        f"--tcp-flags FIN,SYN,RST,ACK SYN {queue}\n"
        "-I PREROUTING 1 -p tcp -j TNGNFQ_PREROUTING\n"
        "-I OUTPUT 1 -p tcp -j TNGNFQ_OUTPUT\n"
        "COMMIT\n"
        "*mangle\n"
        ":TNGNFQ_PREROUTING - [0:0]\n"
        ":TNGNFQ_OUTPUT - [0:0]\n"
        f"-A TNGNFQ_PREROUTING {decided} -j CONNMARK --save-mark --nfmask 0x1ff0000 --ctmask 0x1ff0000\n"
        f"-A TNGNFQ_OUTPUT {decided} -j CONNMARK --save-mark --nfmask 0x1ff0000 --ctmask 0x1ff0000\n"
        "-I PREROUTING 1 -p tcp -j TNGNFQ_PREROUTING\n"
        "-I OUTPUT 1 -p tcp -j TNGNFQ_OUTPUT\n"
        "COMMIT\n"
        "*nat\n"
        ":TNGNFQ_PREROUTING - [0:0]\n"
        ":TNGNFQ_OUTPUT - [0:0]\n"
        ":TNGNFQ_EGRESS0 - [0:0]\n"
        "-A TNGNFQ_PREROUTING -j TNGNFQ_EGRESS0\n"
        "-A TNGNFQ_OUTPUT -j TNGNFQ_EGRESS0\n"
        "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
        "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 -j REDIRECT --to-ports 40000\n"
        "-I PREROUTING 1 -p tcp -j TNGNFQ_PREROUTING\n"
        "-I OUTPUT 1 -p tcp -j TNGNFQ_OUTPUT\n"
        "COMMIT\n")
    nat_removal = (
        "*nat\n"
        "-D PREROUTING -p tcp -j TNGNFQ_PREROUTING\n"
        "-D OUTPUT -p tcp -j TNGNFQ_OUTPUT\n"
        "-F TNGNFQ_PREROUTING\n"
        "-F TNGNFQ_OUTPUT\n"
        "-F TNGNFQ_EGRESS0\n"
        "-X TNGNFQ_PREROUTING\n"
        "-X TNGNFQ_OUTPUT\n"
        "-X TNGNFQ_EGRESS0\n"
        "COMMIT\n")
    assert plan.remove_text().endswith(nat_removal)
    assert plan.policy_routes == ()
    (endpoint,) = plan.endpoints
    assert (endpoint.path, endpoint.listen_port, endpoint.so_mark) == ("add_egress[0]", 40000, 565)
    assert endpoint.queue_nums == (5650, 5651)


def test_without_classifier_only_the_nat_steering_remains():
    plan = plan_for("manual_ref_egress_netfilter_no_classifier")
    assert plan.tables() == ["nat"] and plan.queue_nums == ()


def test_every_queue_rule_mirrors_a_steering_rule():
    """The classifier queues exactly what the steering captures, first packet only."""
    for case in CASES:
        plan = plan_for(case)
        if not plan.queue_nums:
            continue
        steer = {(r.chain, r.spec.rsplit(" -j ", 1)[0]) for t in ("nat", "mangle") for r in plan.rules(t)
                 if "-j REDIRECT" in r.spec or "-j TPROXY" in r.spec}
        queued = {(r.chain, r.spec.rsplit(" -j ", 1)[0].replace(" --tcp-flags FIN,SYN,RST,ACK SYN", "")
                   .replace(" -m tcp -m cgroup", " -m cgroup"))
                  for r in plan.rules("raw") if "NFQUEUE" in r.spec}
        queued = {(c, s[:-len(" -m tcp")] if s.endswith(" -m tcp") else s) for c, s in queued}
        assert queued == steer, case


# -- properties every plan has ---------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_every_chain_is_ours_and_hooked_at_position_one(case):
    plan = plan_for(case)
    for table in plan.tables():
        for chain in plan.chains(table):
            assert chain.startswith(CHAIN_PREFIX)
            assert len(chain) <= 28  # xtables chain name limit
    for line in plan.install_text().splitlines():
        if line.startswith("-I "):
            assert re.fullmatch(r"-I (PREROUTING|OUTPUT) 1 -p tcp -j TNGNFQ_\1", line)
        elif line.startswith("-A "):
            assert line.split()[1].startswith(CHAIN_PREFIX)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_endpoint_chain_returns_on_so_mark_first(case):
    plan = plan_for(case)
    for endpoint in plan.endpoints:
        for table, chain in endpoint.chains:
            first = next(r for r in endpoint.rules if r.chain == chain and r.table == table)
            assert first.spec == f"-m mark --mark {endpoint.so_mark:#x} -j RETURN"


@pytest.mark.parametrize("case", sorted(CASES))
def test_removal_is_the_inverse_of_install(case):
    plan = plan_for(case)
    install = plan.install_text().splitlines()
    removal = plan.remove_text().splitlines()
    assert [l for l in install if l.startswith("*")] == [l for l in removal if l.startswith("*")]
    declared = {(l[1:].split()[0]) for l in install if l.startswith(":")}
    assert {l.split()[1] for l in removal if l.startswith("-X ")} == declared
    assert {l.split()[1] for l in removal if l.startswith("-F ")} == declared
    hooks = {l.replace("-I ", "", 1).replace(" 1 ", " ", 1) for l in install if l.startswith("-I ")}
    assert {l.replace("-D ", "", 1) for l in removal if l.startswith("-D ")} == hooks


def test_egress_captures_only_local_destinations_also_with_a_host():
    for host in ("127.0.0.1", "198.18.0.0/16"):
        plan = plan_of('{"add_egress": [{"netfilter": {"capture_dst": {"host": "%s", "port": 80}}, '
                       '"no_ra": true}]}' % host)
        (capture,) = [r for r in plan.rules("nat") if "REDIRECT" in r.spec]
        assert "-m addrtype --dst-type LOCAL" in capture.spec
        assert capture.spec.startswith("-d " + (host if "/" in host else host + "/32") + " ")


def test_egress_without_capture_local_traffic_leaves_output_alone():
    plan = plan_of('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}}, "no_ra": true}]}')
    assert [(j.table, j.builtin) for j in plan.jumps] == [("nat", "PREROUTING")]
    assert [r.line() for r in plan.dispatch_rules] == [
        "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0"]


def test_egress_with_capture_local_traffic_hooks_output_too():
    plan = plan_of('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}, '
                   '"capture_local_traffic": true}, "no_ra": true}]}')
    assert [(j.table, j.builtin) for j in plan.jumps] == [("nat", "PREROUTING"), ("nat", "OUTPUT")]
    assert [r.line() for r in plan.rules("nat")][:2] == [
        "-A TNGNFQ_PREROUTING -j TNGNFQ_EGRESS0", "-A TNGNFQ_OUTPUT -j TNGNFQ_EGRESS0"]


def test_so_mark_is_written_in_hex_as_iptables_save_does():
    plan = plan_of('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}, "so_mark": 4294967295}, '
                   '"no_ra": true}]}')
    assert "-A TNGNFQ_EGRESS0 -m mark --mark 0xffffffff -j RETURN" in plan.install_text()


def test_ingress_limited_to_cgroups_has_no_gateway_part():
    plan = plan_for("ingress_cgroups")
    assert "TPROXY" not in plan.install_text()
    assert not any(c.endswith("_GW") for t in plan.tables() for c in plan.chains(t))
    assert plan.policy_routes == ()
    (endpoint,) = plan.endpoints
    assert endpoint.steering == ("redirect",) and not endpoint.transparent
    captures = [r.spec for r in endpoint.rules if "REDIRECT" in r.spec]
    assert len(captures) == 3 * 2  # capture_dst x capture_cgroup
    assert all("-m cgroup --path " in spec for spec in captures)


def test_ingress_gateway_has_tproxy_and_policy_routing():
    plan = plan_for("ingress_gateway")
    (endpoint,) = plan.endpoints
    assert endpoint.transparent
    (route,) = plan.policy_routes
    assert (route.fwmark, route.fwmask, route.table, route.priority) == (0x2000000, 0x2000000, 5650, 5650)
    assert plan.tables() == ["raw", "mangle", "nat"]
    assert plan_for("ingress_gateway_no_classifier").tables() == ["mangle", "nat"]


# -- listen ports ------------------------------------------------------------------

def test_auto_listen_port_is_first_free_from_40000_skipping_configured_ports():
    plan = plan_for("two_egress_auto_ports")
    # 40000: a mapping listens there; 40001: busy; 40002: a captured port
    assert [e.listen_port for e in plan.endpoints] == [40003, 40004]


def test_configured_listen_port_is_used_even_if_probe_says_busy():
    plan = plan_of('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}, "listen_port": 40000}, '
                   '"no_ra": true}]}', busy={40000})
    assert plan.endpoints[0].listen_port == 40000


def test_unresolved_listen_port_is_an_error():
    config = load_config('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}}, "no_ra": true}]}')
    with pytest.raises(PlanError, match=r"add_egress\[0\]\.netfilter\.listen_port"):
        build_plan(config, {})


def test_no_free_port_is_an_error():
    config = load_config('{"add_egress": [{"netfilter": {"capture_dst": {"port": 80}}, "no_ra": true}]}')
    with pytest.raises(PlanError, match="no free port"):
        resolve_listen_ports(config, lambda port: False)


def test_cgroup_path_that_cannot_be_quoted_is_refused():
    config = load_config('{"add_ingress": [{"netfilter": {"capture_cgroup": "/a\\"b"}, "no_ra": true}]}')
    with pytest.raises(PlanError, match=r"add_ingress\[0\]\.netfilter\.capture_cgroup\[0\]"):
        build_plan(config, {"add_ingress[0]": 40000})


def test_plan_is_deterministic():
    assert plan_for("ingress_cgroups") == plan_for("ingress_cgroups")
    assert plan_for("ingress_cgroups").install_text() == plan_for("ingress_cgroups").install_text()


# -- templates in rules/ stay in step with the generator ------------------------

_ABSTRACT = [
    (re.compile(r"TNGNFQ_(EGRESS|INGRESS)\d+"), r"TNGNFQ_\1{i}"),
    (re.compile(r"--mark 0x[0-9a-f]+ -j RETURN"), "--mark {so_mark} -j RETURN"),
    (re.compile(r"--to-ports \d+"), "--to-ports {listen_port}"),
    (re.compile(r"--on-port \d+"), "--on-port {listen_port}"),
    (re.compile(r"--dport \d+"), "--dport {port}"),
    (re.compile(r"-d \S+"), "-d {host}"),
    (re.compile(r'--path "[^"]*"'), '--path "{cgroup}"'),
    (re.compile(r"-j NFQUEUE --queue-(num|balance) \S+ --queue-bypass"), "{queue}"),
]


def _shape(line: str) -> str:
    if "0x1000000/0x1000000" in line:
        return line  # the classifier's fixed marks are written as they are
    for pattern, repl in _ABSTRACT:
        line = pattern.sub(repl, line)
    return line


def _template_lines(name: str) -> set[str]:
    return {l for l in (TEMPLATES / name).read_text().splitlines() if l and not l.startswith("#")}


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_templates_cover_the_generated_rules_and_nothing_else(direction):
    """Every line a plan with only `direction` endpoints writes has a shape in
    rules/<direction>-netfilter.rules, and every template line is written by
    some test case."""
    template = _template_lines(f"{direction}-netfilter.rules")
    shapes: set[str] = set()
    for case in CASES:
        config = config_for(case)
        only = dataclasses.replace(config, egress=()) if direction == "ingress" else \
            dataclasses.replace(config, ingress=())
        shapes |= {_shape(line) for line in plan_for(case, only).install_text().splitlines()}
    assert shapes - template == set(), "generated lines without a template shape"
    assert template - shapes == set(), "template lines no test case produces"
