"""Config -> RulePlan: the exact netfilter rules and policy routing of a
configuration. Pure functions, no I/O: the same input always gives the same
text, which `tng-nfq rules show` prints and the snapshot tests pin down.

Layout (rules/README.md explains every piece):

* one dispatcher chain per built-in chain we hook (`TNGNFQ_PREROUTING`,
  `TNGNFQ_OUTPUT`, in raw, mangle and nat as needed), entered by a single
  jump inserted at position 1 of the built-in chain, so our decisions come
  before any other software's rules;
* one chain per endpoint (`TNGNFQ_EGRESS<i>`, `TNGNFQ_INGRESS<i>`,
  `TNGNFQ_INGRESS<i>_GW`), listed in the dispatcher in configuration order,
  each starting with `-m mark --mark <so_mark> -j RETURN` so the endpoint's
  own upstream connections are never captured again.

Steering:

* egress netfilter: nat REDIRECT to the listener, original destination from
  SO_ORIGINAL_DST. Only traffic to local addresses (`--dst-type LOCAL`), so
  forwarded traffic is never touched. Locally originated connections are
  captured (nat OUTPUT hooked) only with capture_local_traffic; without it,
  PREROUTING also skips packets whose source is a local address.
* ingress netfilter, locally originated traffic: nat OUTPUT REDIRECT (cgroup
  matches work there because the packet still has its socket), original
  destination from SO_ORIGINAL_DST.
* ingress netfilter, forwarded traffic (gateway role, only when the ingress is
  not limited to cgroups - forwarded packets have no cgroup): mangle
  PREROUTING TPROXY with a fwmark, `ip rule fwmark` -> table with
  `local default dev lo`; the listener is IP_TRANSPARENT and SO_ORIGINAL_DST
  still returns the original destination (conntrack's original tuple).

Classifier (queues > 0): raw chains with the same names mirror every capture
rule, first packet only, into NFQUEUE with --queue-bypass. raw runs before
mangle and nat at each hook, so whatever the worker does (or if there is
none) the packet still meets the steering above; the worker only adds a mark
(DECIDED + endpoint tag), which mangle saves into conntrack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping

from tng_nfq.config.model import (
    Config,
    HttpProxyIngress,
    MappingEgress,
    MappingIngress,
    NetfilterEgress,
    NetfilterIngress,
)

CHAIN_PREFIX = "TNGNFQ_"
# TPROXY marks the packets it diverts with this bit; `ip rule fwmark` sends
# them to ROUTE_TABLE, whose only route declares every address local (lo).
# A single high bit, clear of the low bits Kubernetes, Docker, Calico,
# Tailscale and Cilium are known to use.
TPROXY_MARK = 0x02000000
TPROXY_MASK = 0x02000000
ROUTE_TABLE = 5650
RULE_PRIORITY = 5650
# The NFQUEUE classifier: queues QUEUE_BASE.. (one per worker), its verdict
# sets DECIDED_MARK plus the endpoint's tag (1-based position in the plan)
# in TAG_MASK; mangle saves both into the connection's conntrack mark.
QUEUE_BASE = 5650
MAX_QUEUES = 64
# Two banks of queue numbers: a reload that changes what the classifier
# names moves to the other bank, so the new workers (started with the new
# endpoint list) bind before the rules that use them, and the old ones stop
# after the rules no longer reference them.
QUEUE_BANKS = (QUEUE_BASE, QUEUE_BASE + MAX_QUEUES)
DECIDED_MARK = 0x01000000
TAG_MASK = 0x00FF0000
TAG_SHIFT = 16
CLASSIFIER_MASK = DECIDED_MARK | TAG_MASK
FIRST_AUTO_PORT = 40000
LAST_PORT = 65535

# tables in the order their blocks are written (packets meet raw, then
# mangle, then nat at the same hook)
TABLE_ORDER = ("raw", "mangle", "nat")


class PlanError(ValueError):
    """The configuration cannot be turned into rules (one line, with the config path)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Rule:
    """One rule appended to one of our chains."""

    table: str
    chain: str
    spec: str  # everything after `-A <chain>`, in iptables-save's canonical form

    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


@dataclass(frozen=True)
class Jump:
    """The one rule we put into a built-in chain: at position 1, into our dispatcher."""

    table: str
    builtin: str
    target: str
    match: str = "-p tcp"

    @property
    def spec(self) -> str:
        return f"{self.match} -j {self.target}"

    def insert_line(self) -> str:
        return f"-I {self.builtin} 1 {self.spec}"

    def delete_line(self) -> str:
        return f"-D {self.builtin} {self.spec}"


@dataclass(frozen=True)
class PolicyRoute:
    """`ip rule add fwmark M/MASK lookup TABLE priority P` and
    `ip route add local 0.0.0.0/0 dev lo table TABLE`."""

    fwmark: int
    fwmask: int
    table: int
    priority: int

    def commands(self) -> list[str]:
        return [f"ip rule add fwmark {self.fwmark:#x}/{self.fwmask:#x} lookup {self.table} "
                f"priority {self.priority}",
                f"ip route add local 0.0.0.0/0 dev lo table {self.table}"]

    def removal_commands(self) -> list[str]:
        return [f"ip rule del fwmark {self.fwmark:#x}/{self.fwmask:#x} lookup {self.table} "
                f"priority {self.priority}",
                f"ip route del local 0.0.0.0/0 dev lo table {self.table}"]


@dataclass(frozen=True)
class EndpointPlan:
    path: str  # "add_egress[0]"
    direction: Literal["ingress", "egress"]
    listen_port: int
    so_mark: int
    chains: tuple[tuple[str, str], ...]  # (table, chain) owned by this endpoint
    rules: tuple[Rule, ...]
    steering: tuple[str, ...]  # e.g. ("redirect",) or ("redirect", "tproxy")
    queue_nums: tuple[int, ...] = ()  # NFQUEUE numbers of the classifier (empty: none)
    # what the classifier matches to name this endpoint: (built-in chain, host, port)
    matches: tuple[tuple[str, str | None, int | None], ...] = ()

    @property
    def transparent(self) -> bool:
        """The listener needs IP_TRANSPARENT (TPROXY delivers to it)."""
        return "tproxy" in self.steering


@dataclass(frozen=True)
class RulePlan:
    endpoints: tuple[EndpointPlan, ...] = ()
    jumps: tuple[Jump, ...] = ()
    dispatch_rules: tuple[Rule, ...] = ()
    policy_routes: tuple[PolicyRoute, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not self.endpoints

    @property
    def queue_nums(self) -> tuple[int, ...]:
        return tuple(sorted({q for e in self.endpoints for q in e.queue_nums}))

    def classifier_spec(self) -> list[dict]:
        """What a classifier worker needs: per endpoint its tag and matches (JSON-able)."""
        return [{"path": e.path, "direction": e.direction, "tag": i + 1,
                 "matches": [list(m) for m in e.matches]}
                for i, e in enumerate(self.endpoints)]

    def tables(self) -> list[str]:
        used = {j.table for j in self.jumps} | {t for e in self.endpoints for t, _ in e.chains}
        return [t for t in TABLE_ORDER if t in used]

    def chains(self, table: str) -> list[str]:
        """Our chains in `table`: dispatchers first, then endpoint chains in config order."""
        names = [j.target for j in self.jumps if j.table == table]
        names += [c for e in self.endpoints for t, c in e.chains if t == table]
        return names

    def rules(self, table: str) -> list[Rule]:
        # dispatcher rules grouped by chain (PREROUTING's, then OUTPUT's), each
        # group in configuration order
        out = [r for j in self.jumps if j.table == table
               for r in self.dispatch_rules if r.table == table and r.chain == j.target]
        out += [r for e in self.endpoints for r in e.rules if r.table == table]
        return out

    def install_text(self) -> str:
        """iptables-restore --noflush input creating and filling our chains in one
        transaction per table, then hooking them in at position 1."""
        lines: list[str] = []
        for table in self.tables():
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in self.chains(table)]
            lines += [r.line() for r in self.rules(table)]
            lines += [j.insert_line() for j in self.jumps if j.table == table]
            lines.append("COMMIT")
        return "".join(f"{line}\n" for line in lines)

    def remove_text(self) -> str:
        """The exact inverse of install_text (unhook, flush, delete)."""
        lines: list[str] = []
        for table in self.tables():
            chains = self.chains(table)
            lines.append(f"*{table}")
            lines += [j.delete_line() for j in self.jumps if j.table == table]
            lines += [f"-F {chain}" for chain in chains]
            lines += [f"-X {chain}" for chain in chains]
            lines.append("COMMIT")
        return "".join(f"{line}\n" for line in lines)

    def queue_base(self) -> int:
        return self.queue_nums[0] if self.queue_nums else QUEUE_BASE

    def replace_text(self, new: "RulePlan", table: str) -> str:
        """iptables-restore --noflush input turning this plan's rules in `table`
        into `new`'s in one transaction; empty when nothing changes there.

        Kept chains (dispatchers included) are flushed and refilled, new ones
        declared, the jump at position 1 of a built-in chain is left alone
        when both plans have it (so an unchanged endpoint is steered at every
        instant), added or dropped otherwise; chains only the old plan has
        are flushed, then deleted once nothing refers to them."""
        old_chains = self.chains(table) if table in self.tables() else []
        new_chains = new.chains(table) if table in new.tables() else []
        old_jumps = [j for j in self.jumps if j.table == table]
        new_jumps = [j for j in new.jumps if j.table == table]
        if (old_chains == new_chains and old_jumps == new_jumps
                and self.rules(table) == new.rules(table)):
            return ""
        gone = [c for c in old_chains if c not in new_chains]
        lines = [f"*{table}"]
        lines += [f":{c} - [0:0]" for c in new_chains if c not in old_chains]
        lines += [f"-F {c}" for c in new_chains if c in old_chains]
        lines += [f"-F {c}" for c in gone]
        lines += [r.line() for r in new.rules(table)]
        lines += [j.delete_line() for j in old_jumps if j not in new_jumps]
        lines += [j.insert_line() for j in new_jumps if j not in old_jumps]
        lines += [f"-X {c}" for c in gone]
        lines.append("COMMIT")
        return "".join(f"{line}\n" for line in lines)

    def replacement(self, new: "RulePlan") -> dict[str, str]:
        """{table: replace_text} for every table either plan uses and whose
        rules change, in TABLE_ORDER (one transaction each)."""
        used = set(self.tables()) | set(new.tables())
        out = {t: self.replace_text(new, t) for t in TABLE_ORDER if t in used}
        return {t: text for t, text in out.items() if text}

    def routing_commands(self) -> list[str]:
        return [c for route in self.policy_routes for c in route.commands()]

    def render(self, removal: bool = False) -> str:
        """What `tng-nfq rules show` prints: comments, iptables-restore text, routing."""
        out = []
        for note in self.notes:
            out.append(f"# {note}\n")
        if self.empty:
            out.append("# no netfilter endpoint in this configuration: no rules\n")
            return "".join(out)
        for e in self.endpoints:
            queues = (f", classifier queues {e.queue_nums[0]}..{e.queue_nums[-1]}" if e.queue_nums
                      else ", no classifier")
            out.append(f"# {e.path}: {e.direction} netfilter, listen_port {e.listen_port}, "
                       f"so_mark {e.so_mark}, steering {'+'.join(e.steering)}{queues}\n")
        if removal:
            out.append("# removal (iptables-restore --noflush)\n")
            out.append(self.remove_text())
            cmds = [c for route in self.policy_routes for c in route.removal_commands()]
        else:
            out.append("# install (iptables-restore --noflush)\n")
            out.append(self.install_text())
            cmds = self.routing_commands()
        if cmds:
            out.append("# policy routing (applied with pyroute2)\n")
            out += [f"{c}\n" for c in cmds]
        return "".join(out)


# ---- listen ports ----------------------------------------------------------


def netfilter_paths(config: Config) -> list[str]:
    """Config paths of the netfilter endpoints, in plan order (ingress, then egress)."""
    paths = [s.path for s in config.ingress if isinstance(s.mode, NetfilterIngress)]
    paths += [s.path for s in config.egress if isinstance(s.mode, NetfilterEgress)]
    return paths


def reserved_ports(config: Config) -> set[int]:
    """Ports an automatically chosen listen_port must avoid: every listener the
    configuration names and every port a netfilter endpoint captures (a
    listener on a captured port would capture its own traffic)."""
    ports: set[int] = set()
    for spec in config.ingress:
        mode = spec.mode
        if isinstance(mode, MappingIngress):
            ports.add(mode.listen.port)
        elif isinstance(mode, HttpProxyIngress):
            ports.add(mode.proxy_listen.port)
        else:
            if mode.listen_port is not None:
                ports.add(mode.listen_port)
            ports |= {d.port for d in mode.capture_dst if d.port is not None}
    for spec in config.egress:
        mode = spec.mode
        if isinstance(mode, MappingEgress):
            ports.add(mode.listen.port)
        else:
            if mode.listen_port is not None:
                ports.add(mode.listen_port)
            if mode.capture_dst.port is not None:
                ports.add(mode.capture_dst.port)
    if config.admin is not None:
        ports.add(config.admin.port)
    return ports


def auto_port_candidates(reserved: Iterable[int], start: int = FIRST_AUTO_PORT) -> Iterable[int]:
    """Ports to try, in order, for a netfilter endpoint without listen_port."""
    skip = set(reserved)
    return (p for p in range(start, LAST_PORT + 1) if p not in skip)


def resolve_listen_ports(config: Config, is_free: Callable[[int], bool]) -> dict[str, int]:
    """listen_port of every netfilter endpoint: the configured one, else the
    first port from 40000 up that `is_free` accepts (and no other endpoint took)."""
    taken = reserved_ports(config)
    ports: dict[str, int] = {}
    for spec in [*config.ingress, *config.egress]:
        mode = spec.mode
        if not isinstance(mode, (NetfilterIngress, NetfilterEgress)):
            continue
        if mode.listen_port is not None:
            ports[spec.path] = mode.listen_port
            continue
        for port in auto_port_candidates(taken):
            if is_free(port):
                ports[spec.path] = port
                taken.add(port)
                break
        else:
            raise PlanError(f"{spec.path}.netfilter.listen_port", f"no free port from {FIRST_AUTO_PORT} up")
    return ports


# ---- rule text ----------------------------------------------------------------

def _cgroup_arg(cgroup: str, path: str) -> str:
    """A cgroup v2 path as iptables-save writes it (always double-quoted)."""
    if '"' in cgroup or "\\" in cgroup:
        raise PlanError(path, f"{cgroup!r} cannot be written as an iptables argument")
    return f'"{cgroup}"'


def _dst(host: str | None) -> str:
    if host is None:
        return ""
    return f"-d {host if '/' in host else host + '/32'} "


SYN_ONLY = "--tcp-flags FIN,SYN,RST,ACK SYN"


@dataclass(frozen=True)
class _Capture:
    """What one capture rule matches (the same for steering and queueing)."""

    host: str | None = None
    port: int | None = None
    local_dst: bool = False
    cgroup: str | None = None  # already quoted

    def spec(self, target: str, syn: bool = False) -> str:
        s = _dst(self.host) + "-p tcp "
        if self.local_dst:
            s += "-m addrtype --dst-type LOCAL "
        if self.port is not None or syn:
            s += "-m tcp "
            if self.port is not None:
                s += f"--dport {self.port} "
            if syn:
                s += SYN_ONLY + " "
        if self.cgroup is not None:
            s += f"-m cgroup --path {self.cgroup} "
        return s + target


@dataclass(frozen=True)
class _Steering:
    """One endpoint chain: early RETURNs, capture rules, and where it is hooked."""

    table: str  # nat (REDIRECT) or mangle (TPROXY)
    chain: str
    returns: tuple[str, ...]  # specs of the RETURN rules, in order
    captures: tuple[_Capture, ...]
    target: str
    hooks: tuple[tuple[str, str], ...]  # (built-in chain, condition before "-j")

    def rules(self) -> list[Rule]:
        out = [Rule(self.table, self.chain, spec) for spec in self.returns]
        return out + [Rule(self.table, self.chain, c.spec(self.target)) for c in self.captures]

    def queue_rules(self, target: str) -> list[Rule]:
        """The same matches in the raw table, first packet only, into NFQUEUE."""
        out = [Rule("raw", self.chain, spec) for spec in self.returns]
        return out + [Rule("raw", self.chain, c.spec(target, syn=True)) for c in self.captures]

    def dispatch(self, table: str) -> list[Rule]:
        return [Rule(table, f"{CHAIN_PREFIX}{builtin}", f"{cond}-j {self.chain}") for builtin, cond in self.hooks]


def _queue_target(queues: int, base: int = QUEUE_BASE) -> str:
    if queues == 1:
        return f"-j NFQUEUE --queue-num {base} --queue-bypass"
    return f"-j NFQUEUE --queue-balance {base}:{base + queues - 1} --queue-bypass"


def _mark_return(so_mark: int) -> str:
    return f"-m mark --mark {so_mark:#x} -j RETURN"


def _egress_steering(index: int, mode: NetfilterEgress, port: int) -> list[_Steering]:
    d = mode.capture_dst
    if mode.capture_local_traffic:
        hooks = (("PREROUTING", ""), ("OUTPUT", ""))
    else:
        # nat OUTPUT is not hooked at all; a packet arriving from outside
        # with one of our own addresses as source is skipped too.
        hooks = (("PREROUTING", "-m addrtype ! --src-type LOCAL "),)
    # --dst-type LOCAL always, also with a host: a host given as a CIDR must
    # not turn into capturing forwarded traffic.
    return [_Steering("nat", f"{CHAIN_PREFIX}EGRESS{index}", (_mark_return(mode.so_mark),),
                      (_Capture(d.host, d.port, local_dst=True),), f"-j REDIRECT --to-ports {port}", hooks)]


def _ingress_steering(path: str, index: int, mode: NetfilterIngress, port: int) -> list[_Steering]:
    base = f"{path}.netfilter"
    returns = [_mark_return(mode.so_mark)]
    nocapture = [_cgroup_arg(cg, f"{base}.nocapture_cgroup[{i}]") for i, cg in enumerate(mode.nocapture_cgroup)]
    returns += [f"-m cgroup --path {cg} -j RETURN" for cg in dict.fromkeys(nocapture)]
    cgroups: list[str | None] = list(dict.fromkeys(
        _cgroup_arg(cg, f"{base}.capture_cgroup[{i}]") for i, cg in enumerate(mode.capture_cgroup))) or [None]
    captures = [_Capture(d.host if d else None, d.port if d else None, cgroup=cg)
                for d in (mode.capture_dst or (None,)) for cg in cgroups]
    out = [_Steering("nat", f"{CHAIN_PREFIX}INGRESS{index}", tuple(returns), tuple(captures),
                     f"-j REDIRECT --to-ports {port}", (("OUTPUT", ""),))]
    if not mode.capture_cgroup:
        # Gateway role: forwarded packets (not from and not to this host).
        out.append(_Steering(
            "mangle", f"{CHAIN_PREFIX}INGRESS{index}_GW", (_mark_return(mode.so_mark),),
            tuple(_Capture(d.host, d.port) for d in mode.capture_dst),
            f"-j TPROXY --on-port {port} --on-ip 0.0.0.0 --tproxy-mark {TPROXY_MARK:#x}/{TPROXY_MASK:#x}",
            (("PREROUTING", "-m addrtype ! --src-type LOCAL ! --dst-type LOCAL "),)))
    return out


def _endpoint(path: str, direction: str, mode, port: int, steerings: list[_Steering],
              queues: int, queue_base: int = QUEUE_BASE) -> tuple[EndpointPlan, list[Rule], list[Rule]]:
    """The endpoint's plan, its steering dispatch rules, its queue dispatch rules."""
    chains = [(s.table, s.chain) for s in steerings]
    rules = [r for s in steerings for r in s.rules()]
    dispatch = [r for s in steerings for r in s.dispatch(s.table)]
    queue_dispatch: list[Rule] = []
    if queues:
        target = _queue_target(queues, queue_base)
        chains += [("raw", s.chain) for s in steerings]
        rules += [r for s in steerings for r in s.queue_rules(target)]
        queue_dispatch = [r for s in steerings for r in s.dispatch("raw")]
    steering = tuple("tproxy" if s.table == "mangle" else "redirect" for s in steerings)
    matches = tuple((builtin, c.host, c.port) for s in steerings for builtin, _ in s.hooks for c in s.captures)
    plan = EndpointPlan(path=path, direction=direction, listen_port=port, so_mark=mode.so_mark,
                        chains=tuple(chains), rules=tuple(rules), steering=steering,
                        queue_nums=tuple(range(queue_base, queue_base + queues)), matches=matches)
    return plan, dispatch, queue_dispatch


def build_plan(config: Config, listen_ports: Mapping[str, int], queues: int = 0,
               queue_base: int = QUEUE_BASE) -> RulePlan:
    """The rules for `config`, given the listen port of every netfilter endpoint
    (configured or chosen at start, see resolve_listen_ports) and the number of
    classifier queues (0: no NFQUEUE classifier). `queue_base` is QUEUE_BASE or,
    after a reload that changed what the classifier names (see
    next_queue_base), the other bank of queue numbers."""
    if not 0 <= queues <= MAX_QUEUES:
        raise PlanError("queues", f"must be 0..{MAX_QUEUES}, not {queues}")
    if queue_base not in QUEUE_BANKS:
        raise PlanError("queues", f"queue base must be one of {QUEUE_BANKS}, not {queue_base}")
    endpoints: list[EndpointPlan] = []
    dispatch: list[Rule] = []
    queue_dispatch: list[Rule] = []

    def port_of(path: str, configured: int | None) -> int:
        port = listen_ports.get(path, configured)
        if port is None:
            raise PlanError(f"{path}.netfilter.listen_port", "not resolved")
        return port

    for spec in config.ingress:
        if isinstance(spec.mode, NetfilterIngress):
            port = port_of(spec.path, spec.mode.listen_port)
            ep, d, q = _endpoint(spec.path, "ingress", spec.mode, port,
                                 _ingress_steering(spec.path, spec.index, spec.mode, port), queues, queue_base)
            endpoints.append(ep)
            dispatch += d
            queue_dispatch += q
    for spec in config.egress:
        if isinstance(spec.mode, NetfilterEgress):
            port = port_of(spec.path, spec.mode.listen_port)
            ep, d, q = _endpoint(spec.path, "egress", spec.mode, port,
                                 _egress_steering(spec.index, spec.mode, port), queues, queue_base)
            endpoints.append(ep)
            dispatch += d
            queue_dispatch += q

    # Queue dispatchers skip what the classifier already decided (its verdict
    # is `repeat`, which re-runs the raw chain with the new mark); mangle saves
    # the decision in conntrack so it lives on for the whole flow.
    heads: list[Rule] = []
    for builtin in ("PREROUTING", "OUTPUT"):
        if any(r.chain == f"{CHAIN_PREFIX}{builtin}" for r in queue_dispatch):
            heads.append(Rule("raw", f"{CHAIN_PREFIX}{builtin}",
                              f"-m mark --mark {DECIDED_MARK:#x}/{DECIDED_MARK:#x} -j RETURN"))
            heads.append(Rule("mangle", f"{CHAIN_PREFIX}{builtin}",
                              f"-m mark --mark {DECIDED_MARK:#x}/{DECIDED_MARK:#x} -j CONNMARK --save-mark "
                              f"--nfmask {CLASSIFIER_MASK:#x} --ctmask {CLASSIFIER_MASK:#x}"))
    dispatch = heads + queue_dispatch + dispatch

    jumps: list[Jump] = []
    for table in TABLE_ORDER:
        for builtin in ("PREROUTING", "OUTPUT"):
            target = f"{CHAIN_PREFIX}{builtin}"
            if any(r.table == table and r.chain == target for r in dispatch):
                jumps.append(Jump(table, builtin, target))
    routes: tuple[PolicyRoute, ...] = ()
    if any(e.transparent for e in endpoints):
        routes = (PolicyRoute(TPROXY_MARK, TPROXY_MASK, ROUTE_TABLE, RULE_PRIORITY),)
    return RulePlan(endpoints=tuple(endpoints), jumps=tuple(jumps), dispatch_rules=tuple(dispatch),
                    policy_routes=routes)


def replan(config: Config, listen_ports: Mapping[str, int], queues: int,
           previous: RulePlan | None) -> RulePlan:
    """The plan a reload installs in place of `previous`: the same queue
    numbers while the classifier names the same endpoints (its workers keep
    running), the other bank when what it names changed (new workers with the
    new endpoint list bind there before the rules switch to them)."""
    base = previous.queue_base() if previous is not None else QUEUE_BASE
    plan = build_plan(config, listen_ports, queues=queues, queue_base=base)
    if (previous is not None and previous.queue_nums and plan.queue_nums
            and plan.classifier_spec() != previous.classifier_spec()):
        other = QUEUE_BANKS[1] if base == QUEUE_BANKS[0] else QUEUE_BANKS[0]
        plan = build_plan(config, listen_ports, queues=queues, queue_base=other)
    return plan
