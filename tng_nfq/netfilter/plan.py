"""Config -> RulePlan: the exact netfilter rules and policy routing of a
configuration. Pure functions, no I/O: the same input always gives the same
text, which `tng-nfq rules show` prints and the snapshot tests pin down.

Layout (rules/README.md explains every piece):

* one dispatcher chain per built-in chain we hook (`TNGNFQ_PREROUTING`,
  `TNGNFQ_OUTPUT` in nat; `TNGNFQ_PREROUTING` in mangle), entered by a single
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
    queue_nums: tuple[int, ...] = ()  # NFQUEUE numbers (none yet)

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
            out.append(f"# {e.path}: {e.direction} netfilter, listen_port {e.listen_port}, "
                       f"so_mark {e.so_mark}, steering {'+'.join(e.steering)}\n")
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


def _mark_return(table: str, chain: str, so_mark: int) -> Rule:
    return Rule(table, chain, f"-m mark --mark {so_mark:#x} -j RETURN")


def _egress(path: str, index: int, mode: NetfilterEgress, port: int) -> tuple[EndpointPlan, list[Rule]]:
    chain = f"{CHAIN_PREFIX}EGRESS{index}"
    d = mode.capture_dst
    rules = [
        _mark_return("nat", chain, mode.so_mark),
        # --dst-type LOCAL always, also with a host: a host given as a CIDR
        # must not turn into capturing forwarded traffic.
        Rule("nat", chain, f"{_dst(d.host)}-p tcp -m addrtype --dst-type LOCAL -m tcp --dport {d.port} "
                           f"-j REDIRECT --to-ports {port}"),
    ]
    if mode.capture_local_traffic:
        dispatch = [Rule("nat", f"{CHAIN_PREFIX}PREROUTING", f"-j {chain}"),
                    Rule("nat", f"{CHAIN_PREFIX}OUTPUT", f"-j {chain}")]
    else:
        # nat OUTPUT is not hooked at all; a packet arriving from outside
        # with one of our own addresses as source is skipped too.
        dispatch = [Rule("nat", f"{CHAIN_PREFIX}PREROUTING", f"-m addrtype ! --src-type LOCAL -j {chain}")]
    plan = EndpointPlan(path=path, direction="egress", listen_port=port, so_mark=mode.so_mark,
                        chains=(("nat", chain),), rules=tuple(rules), steering=("redirect",))
    return plan, dispatch


def _ingress(path: str, index: int, mode: NetfilterIngress, port: int) -> tuple[EndpointPlan, list[Rule]]:
    base = f"{path}.netfilter"
    chain = f"{CHAIN_PREFIX}INGRESS{index}"
    rules = [_mark_return("nat", chain, mode.so_mark)]
    for i, cg in enumerate(mode.nocapture_cgroup):
        if cg in mode.nocapture_cgroup[:i]:
            continue
        rules.append(Rule("nat", chain, f"-m cgroup --path {_cgroup_arg(cg, f'{base}.nocapture_cgroup[{i}]')} "
                                        f"-j RETURN"))
    dsts = mode.capture_dst or (None,)
    cgroups: list[str | None] = list(dict.fromkeys(
        _cgroup_arg(cg, f"{base}.capture_cgroup[{i}]") for i, cg in enumerate(mode.capture_cgroup))) or [None]
    for d in dsts:
        for cg in cgroups:
            spec = _dst(d.host if d else None) + "-p tcp "
            if d is not None and d.port is not None:
                spec += f"-m tcp --dport {d.port} "
            if cg is not None:
                spec += f"-m cgroup --path {cg} "
            rules.append(Rule("nat", chain, spec + f"-j REDIRECT --to-ports {port}"))
    chains = [("nat", chain)]
    dispatch = [Rule("nat", f"{CHAIN_PREFIX}OUTPUT", f"-j {chain}")]
    steering = ["redirect"]
    if not mode.capture_cgroup:
        # Gateway role: forwarded packets (not from and not to this host).
        gw = f"{CHAIN_PREFIX}INGRESS{index}_GW"
        chains.append(("mangle", gw))
        rules.append(_mark_return("mangle", gw, mode.so_mark))
        for d in mode.capture_dst:
            spec = _dst(d.host) + "-p tcp "
            if d.port is not None:
                spec += f"-m tcp --dport {d.port} "
            rules.append(Rule("mangle", gw, spec + f"-j TPROXY --on-port {port} --on-ip 0.0.0.0 "
                                                   f"--tproxy-mark {TPROXY_MARK:#x}/{TPROXY_MASK:#x}"))
        dispatch.append(Rule("mangle", f"{CHAIN_PREFIX}PREROUTING",
                             f"-m addrtype ! --src-type LOCAL ! --dst-type LOCAL -j {gw}"))
        steering.append("tproxy")
    plan = EndpointPlan(path=path, direction="ingress", listen_port=port, so_mark=mode.so_mark,
                        chains=tuple(chains), rules=tuple(rules), steering=tuple(steering))
    return plan, dispatch


def build_plan(config: Config, listen_ports: Mapping[str, int]) -> RulePlan:
    """The rules for `config`, given the listen port of every netfilter endpoint
    (configured or chosen at start, see resolve_listen_ports)."""
    endpoints: list[EndpointPlan] = []
    dispatch: list[Rule] = []

    def port_of(path: str, configured: int | None) -> int:
        port = listen_ports.get(path, configured)
        if port is None:
            raise PlanError(f"{path}.netfilter.listen_port", "not resolved")
        return port

    for spec in config.ingress:
        if isinstance(spec.mode, NetfilterIngress):
            ep, d = _ingress(spec.path, spec.index, spec.mode, port_of(spec.path, spec.mode.listen_port))
            endpoints.append(ep)
            dispatch += d
    for spec in config.egress:
        if isinstance(spec.mode, NetfilterEgress):
            ep, d = _egress(spec.path, spec.index, spec.mode, port_of(spec.path, spec.mode.listen_port))
            endpoints.append(ep)
            dispatch += d

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
