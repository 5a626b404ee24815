"""What `tng-nfq rules show` and `tng-nfq rules flush` do (the click layer
in tng_nfq/cli.py only parses options and prints)."""

from __future__ import annotations

import socket

from tng_nfq.config.model import Config, NetfilterEgress, NetfilterIngress
from tng_nfq.netfilter.plan import FIRST_AUTO_PORT, RulePlan, build_plan, resolve_listen_ports


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Could a listener bind host:port right now (the way endpoints bind)?"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def show_plan(config: Config) -> RulePlan:
    """The plan, with listen ports resolved the way a start here and now would."""
    from tng_nfq.netfilter.workers import default_queue_count

    ports = resolve_listen_ports(config, port_is_free)
    plan = build_plan(config, ports, queues=default_queue_count())
    auto = [s.path for s in [*config.ingress, *config.egress]
            if isinstance(s.mode, (NetfilterIngress, NetfilterEgress)) and s.mode.listen_port is None]
    notes = tuple(f"{path}: no listen_port configured; a start now would take {ports[path]} "
                  f"(the first free port from {FIRST_AUTO_PORT} up)" for path in auto)
    return RulePlan(endpoints=plan.endpoints, jumps=plan.jumps, dispatch_rules=plan.dispatch_rules,
                    policy_routes=plan.policy_routes, notes=notes)
