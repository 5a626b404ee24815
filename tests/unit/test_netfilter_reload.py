"""Reload: the text that replaces one rule plan by another (RulePlan.replace_text
/ replacement) and the queue bank a reload picks (replan).

Exact snapshots of the replacement payload for the typical changes, and a
small model of `iptables-restore --noflush` that applies install + replacement
and checks the result is what installing the new plan alone gives, for every
pair of configurations below (so the transaction is valid: nothing deleted
while referenced, nothing declared twice, nothing left behind).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from tng_nfq.config import load_config
from tng_nfq.netfilter.plan import QUEUE_BANKS, QUEUE_BASE, RulePlan, replan

A = {"netfilter": {"capture_dst": {"port": 30001}, "listen_port": 40001}, "no_ra": True}
B = {"netfilter": {"capture_dst": {"port": 30002}, "listen_port": 40002}, "no_ra": True}
B_LOCAL = {"netfilter": {"capture_dst": {"port": 30002}, "listen_port": 40002,
                         "capture_local_traffic": True}, "no_ra": True}
GW = {"netfilter": {"capture_dst": [{"host": "10.0.0.0/8", "port": 80}], "listen_port": 40010}, "no_ra": True}
MAP = {"mapping": {"in": {"port": 10001}, "out": {"host": "198.18.0.2", "port": 20001}}, "no_ra": True}


def cfg(egress=(), ingress=()):
    return load_config(json.dumps({"add_egress": list(egress), "add_ingress": list(ingress)}))


def plan(egress=(), ingress=(), queues=1, previous=None) -> RulePlan:
    config = cfg(egress, ingress)
    ports = {}  # every listen_port in these configs is explicit
    return replan(config, ports, queues, previous)


# -- exact payloads -------------------------------------------------------------

def test_adding_an_egress_moves_the_classifier_to_the_other_bank():
    old = plan([A])
    new = plan([A, B], previous=old)
    assert old.queue_nums == (QUEUE_BASE,) and new.queue_nums == (QUEUE_BANKS[1],)
    assert old.replacement(new) == {
        "raw": "*raw\n"
               ":TNGNFQ_EGRESS1 - [0:0]\n"
               "-F TNGNFQ_PREROUTING\n"
               "-F TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_PREROUTING -m mark --mark 0x1000000/0x1000000 -j RETURN\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS1\n"
               "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 "
               "--tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 5714 --queue-bypass\n"
               "-A TNGNFQ_EGRESS1 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS1 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30002 "
               "--tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 5714 --queue-bypass\n"
               "COMMIT\n",
        # mangle: only the CONNMARK save, unchanged -> no transaction at all
        "nat": "*nat\n"
               ":TNGNFQ_EGRESS1 - [0:0]\n"
               "-F TNGNFQ_PREROUTING\n"
               "-F TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS1\n"
               "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 "
               "-j REDIRECT --to-ports 40001\n"
               "-A TNGNFQ_EGRESS1 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS1 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30002 "
               "-j REDIRECT --to-ports 40002\n"
               "COMMIT\n",
    }


def test_removing_the_first_egress_renames_the_second_and_drops_its_output_hook():
    old = plan([A, B_LOCAL], queues=0)
    new = plan([B], queues=0, previous=old)
    assert old.replacement(new) == {
        "nat": "*nat\n"
               "-F TNGNFQ_PREROUTING\n"
               "-F TNGNFQ_EGRESS0\n"
               "-F TNGNFQ_OUTPUT\n"
               "-F TNGNFQ_EGRESS1\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30002 "
               "-j REDIRECT --to-ports 40002\n"
               "-D OUTPUT -p tcp -j TNGNFQ_OUTPUT\n"
               "-X TNGNFQ_OUTPUT\n"
               "-X TNGNFQ_EGRESS1\n"
               "COMMIT\n",
    }
    # the jump at position 1 of nat PREROUTING is neither deleted nor re-inserted
    assert "PREROUTING -p tcp" not in old.replacement(new)["nat"]


def test_a_new_listen_port_keeps_the_queues_and_touches_nat_only():
    old = plan([A])
    moved = dict(A, netfilter=dict(A["netfilter"], listen_port=40099))
    new = plan([moved], previous=old)
    assert new.queue_nums == old.queue_nums == (QUEUE_BASE,)  # same endpoints named: workers stay
    assert old.replacement(new) == {
        "nat": "*nat\n"
               "-F TNGNFQ_PREROUTING\n"
               "-F TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0\n"
               "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
               "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 "
               "-j REDIRECT --to-ports 40099\n"
               "COMMIT\n",
    }


def test_dropping_the_gateway_ingress_removes_its_mangle_chain_and_routing():
    old = plan([A], [GW], queues=0)
    new = plan([A], [], queues=0, previous=old)
    assert old.policy_routes and not new.policy_routes
    assert old.replacement(new)["mangle"] == (
        "*mangle\n"
        "-F TNGNFQ_PREROUTING\n"
        "-F TNGNFQ_INGRESS0_GW\n"
        "-D PREROUTING -p tcp -j TNGNFQ_PREROUTING\n"
        "-X TNGNFQ_PREROUTING\n"
        "-X TNGNFQ_INGRESS0_GW\n"
        "COMMIT\n")


def test_the_same_plan_needs_no_transaction_and_keeps_its_bank():
    old = plan([A, B], previous=plan([A]))  # on the second bank
    again = plan([A, B], previous=old)
    assert again == old and again.queue_nums == (QUEUE_BANKS[1],)
    assert old.replacement(again) == {}
    # a change of a mapping endpoint in front shifts nothing netfilter: no rules change
    assert plan([A, B], [MAP], previous=old) == old


def test_banks_alternate():
    first = plan([A])
    second = plan([A, B], previous=first)
    third = plan([B], previous=second)
    assert [p.queue_nums for p in (first, second, third)] == [(5650,), (5714,), (5650,)]
    wide = replan(cfg([A]), {}, 4, plan([A, B], queues=4))
    assert wide.queue_nums == (5714, 5715, 5716, 5717)
    assert "--queue-balance 5714:5717" in wide.install_text()


# -- a model of iptables-restore --noflush --------------------------------------

class Kernel:
    """Tables of chains -> rule lists; enforces what the real tool refuses."""

    BUILTIN = ("PREROUTING", "OUTPUT")

    def __init__(self):
        self.tables: dict[str, dict[str, list[str]]] = {}

    def restore(self, text: str) -> None:
        table = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = self.tables.setdefault(line[1:], {b: [] for b in self.BUILTIN})
                work = {c: list(r) for c, r in table.items()}
            elif line == "COMMIT":
                self._check(work)
                table.clear()
                table.update(work)
            elif line.startswith(":"):
                name = line[1:].split()[0]
                assert name not in work, f"declared twice: {name}"
                work[name] = []
            else:
                op, chain, *rest = line.split(" ", 2)
                assert chain in work, f"{line}: no such chain"
                if op == "-A":
                    work[chain].append(rest[0])
                elif op == "-I":
                    pos, spec = rest[0].split(" ", 1)
                    work[chain].insert(int(pos) - 1, spec)
                elif op == "-D":
                    work[chain].remove(rest[0])
                elif op == "-F":
                    work[chain] = []
                elif op == "-X":
                    assert not work[chain], f"{line}: not empty"
                    assert not any(s.endswith(f"-j {chain}") for r in work.values() for s in r), \
                        f"{line}: still referenced"
                    del work[chain]

    @staticmethod
    def _check(work):
        for rules in work.values():
            for spec in rules:
                target = spec.rsplit("-j ", 1)[-1].split()[0]
                if target.startswith("TNGNFQ_"):
                    assert target in work, f"jump to a missing chain {target}"


CONFIGS = {
    "A": ([A], []), "B": ([B], []), "AB": ([A, B], []), "B_local": ([B_LOCAL], []),
    "A_B_local": ([A, B_LOCAL], []), "gw": ([], [GW]), "A_gw": ([A], [GW]),
}


@pytest.mark.parametrize("queues", [0, 2])
@pytest.mark.parametrize("old_name,new_name", list(itertools.permutations(CONFIGS, 2)))
def test_install_then_replace_equals_installing_the_new_plan(old_name, new_name, queues):
    foreign = "-p udp -j RETURN"
    old = plan(*CONFIGS[old_name], queues=queues)
    new = plan(*CONFIGS[new_name], queues=queues, previous=old)
    kernel = Kernel()
    for t in ("raw", "mangle", "nat"):
        kernel.restore(f"*{t}\n-A PREROUTING {foreign}\nCOMMIT\n")
    kernel.restore(old.install_text())
    for text in old.replacement(new).values():
        kernel.restore(text)
    expected = Kernel()
    for t in ("raw", "mangle", "nat"):
        expected.restore(f"*{t}\n-A PREROUTING {foreign}\nCOMMIT\n")
    expected.restore(new.install_text())
    assert kernel.tables == expected.tables
    # and back: what a rollback applies restores the old state exactly
    for table in reversed(list(old.replacement(new))):
        kernel.restore(new.replace_text(old, table))
    before = Kernel()
    for t in ("raw", "mangle", "nat"):
        before.restore(f"*{t}\n-A PREROUTING {foreign}\nCOMMIT\n")
    before.restore(old.install_text())
    assert kernel.tables == before.tables


# -- which changed endpoint keeps running ------------------------------------------

def _spec(entry, kind="egress", index=0):
    config = load_config(json.dumps({f"add_{kind}": [entry]}))
    spec = (config.egress if kind == "egress" else config.ingress)[0]
    return dataclasses.replace(spec, index=index)


def test_only_a_change_of_what_is_captured_keeps_the_endpoint():
    from tng_nfq.daemon import _capture_only_change

    def egress(**nf):
        return _spec({"netfilter": {**A["netfilter"], **nf}, "no_ra": True})

    def ingress(**nf):
        return _spec({"netfilter": {"capture_dst": [{"port": 80}], "listen_port": 40010, **nf},
                      "no_ra": True}, "ingress")

    assert _capture_only_change(egress(), egress(capture_dst={"port": 30009}))
    assert _capture_only_change(egress(), egress(capture_local_traffic=True))
    assert not _capture_only_change(egress(), egress(so_mark=7))
    assert not _capture_only_change(egress(), egress(listen_port=40003))
    assert _capture_only_change(ingress(), ingress(capture_dst=[{"port": 81}]))
    assert _capture_only_change(ingress(capture_cgroup=["/a"]), ingress(capture_cgroup=["/b"],
                                                                        nocapture_cgroup=["/c"]))
    # gateway role (transparent listener) on one side only: a new listener is needed
    assert not _capture_only_change(ingress(), ingress(capture_cgroup=["/a"]))
    assert not _capture_only_change(egress(), ingress())
    assert not _capture_only_change(_spec(MAP, "ingress"), _spec(MAP, "ingress"))
