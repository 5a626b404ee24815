"""Policy routing for TPROXY, with pyroute2: `ip rule fwmark ... lookup T`
and `ip route add local 0.0.0.0/0 dev lo table T`.

Ours is recognised by the table number and rule priority of the plan
(ROUTE_TABLE / RULE_PRIORITY), which is how leftovers are found.
"""

from __future__ import annotations

import socket

from tng_nfq.netfilter.plan import ROUTE_TABLE, RULE_PRIORITY, PolicyRoute


class RoutingError(RuntimeError):
    pass


def _iproute():
    from pyroute2 import IPRoute

    return IPRoute()


def install(routes: tuple[PolicyRoute, ...]) -> None:
    if not routes:
        return
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with _iproute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for route in routes:
                ipr.route("add", family=socket.AF_INET, dst="0.0.0.0/0", type="local", scope="host",
                          oif=lo, table=route.table)
                ipr.rule("add", family=socket.AF_INET, fwmark=route.fwmark, fwmask=route.fwmask,
                         table=route.table, priority=route.priority)
    except NetlinkError as exc:
        raise RoutingError(f"policy routing: {exc.args[-1] if exc.args else exc}") from None


def _our_rules(ipr, tables: set[int], priorities: set[int]):
    for rule in ipr.get_rules(family=socket.AF_INET):
        table = rule.get_attr("FRA_TABLE") or rule["table"]
        if table in tables or rule.get_attr("FRA_PRIORITY") in priorities:
            yield rule


def _our_routes(ipr, tables: set[int]):
    for table in tables:
        for route in ipr.get_routes(family=socket.AF_INET, table=table):
            if (route.get_attr("RTA_TABLE") or route["table"]) == table:
                yield route


def found(tables: set[int] | None = None, priorities: set[int] | None = None) -> list[str]:
    """Our rules and routes, described (for tests and `rules flush`)."""
    tables = tables or {ROUTE_TABLE}
    priorities = priorities or {RULE_PRIORITY}
    with _iproute() as ipr:
        out = [f"rule priority {r.get_attr('FRA_PRIORITY')} table {r.get_attr('FRA_TABLE') or r['table']}"
               for r in _our_rules(ipr, tables, priorities)]
        out += [f"route table {r.get_attr('RTA_TABLE')} type {r['type']} dst_len {r['dst_len']}"
                for r in _our_routes(ipr, tables)]
    return out


def sweep(tables: set[int] | None = None, priorities: set[int] | None = None) -> list[str]:
    """Delete every rule pointing at our table or sitting at our priority, and
    every route in our table. Returns what was removed."""
    from pyroute2.netlink.exceptions import NetlinkError

    tables = tables or {ROUTE_TABLE}
    priorities = priorities or {RULE_PRIORITY}
    removed: list[str] = []
    with _iproute() as ipr:
        for rule in list(_our_rules(ipr, tables, priorities)):
            table = rule.get_attr("FRA_TABLE") or rule["table"]
            prio = rule.get_attr("FRA_PRIORITY")
            kw = dict(family=socket.AF_INET, table=table, priority=prio)
            if rule.get_attr("FRA_FWMARK") is not None:
                kw.update(fwmark=rule.get_attr("FRA_FWMARK"), fwmask=rule.get_attr("FRA_FWMASK"))
            try:
                ipr.rule("del", **kw)
                removed.append(f"ip rule priority {prio} lookup {table}")
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: gone already
                    raise RoutingError(f"cannot delete ip rule priority {prio}: {exc}") from None
        for route in list(_our_routes(ipr, tables)):
            table = route.get_attr("RTA_TABLE") or route["table"]
            kw = dict(family=socket.AF_INET, table=table, type=route["type"], scope=route["scope"],
                      dst_len=route["dst_len"])
            if route.get_attr("RTA_DST") is not None:
                kw["dst"] = route.get_attr("RTA_DST")
            if route.get_attr("RTA_OIF") is not None:
                kw["oif"] = route.get_attr("RTA_OIF")
            try:
                ipr.route("del", **kw)
                removed.append(f"ip route table {table}")
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: gone already
                    raise RoutingError(f"cannot delete route in table {table}: {exc}") from None
    return removed
