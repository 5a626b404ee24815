"""The daemon: turns a loaded Config into running endpoints and supervises them.

`build` refuses, before anything is bound or changed on the host, every
part of a valid configuration this version cannot run yet, naming its JSON
path. `start` binds every listener before any accepts, so a port conflict
in the third endpoint leaves nothing running from the first two.
"""

from __future__ import annotations

import dataclasses
import signal
import threading

import structlog

from tng_nfq import systemd
from tng_nfq.config.model import (
    Config,
    Egress,
    HttpProxyIngress,
    Ingress,
    MappingEgress,
    MappingIngress,
    NetfilterEgress,
    NetfilterIngress,
)
from tng_nfq.tunnel.egress.mapping import MappingEgressEndpoint
from tng_nfq.tunnel.egress.netfilter import NetfilterEgressEndpoint
from tng_nfq.tunnel.endpoint import Endpoint, StartError
from tng_nfq.tunnel.ingress.http_proxy import HttpProxyIngressEndpoint
from tng_nfq.tunnel.ingress.mapping import MappingIngressEndpoint
from tng_nfq.tunnel.ingress.netfilter import NetfilterIngressEndpoint
from tng_nfq.tunnel.security import SetupRefused, TunnelSecurity, UnsupportedFeature

log = structlog.get_logger(component="daemon")


def _not_yet(path: str, what: str) -> UnsupportedFeature:
    return UnsupportedFeature(path, f"{what} is not implemented in this version of tng_nfq yet")


def build_ingress(spec: Ingress, reserved_ports: frozenset[int] = frozenset()) -> Endpoint:
    endpoint = _build_ingress(spec, reserved_ports)
    if spec.encap_in_http is not None:
        from tng_nfq.tunnel.ingress.http_encap import HttpEncap


        endpoint.http_layer = HttpEncap(spec.encap_in_http, endpoint.security, spec.path,
                                        inject=spec.web_page_inject)
        if endpoint.security.attester is not None:
            endpoint.security.attester.make_certificates = False
    return endpoint


def _build_ingress(spec: Ingress, reserved_ports: frozenset[int]) -> Endpoint:
    if isinstance(spec.mode, NetfilterIngress):
        security = TunnelSecurity.for_endpoint(spec.ra, spec.path, server_side=False)
        return NetfilterIngressEndpoint(spec, security, reserved_ports)
    if isinstance(spec.mode, HttpProxyIngress):
        security = TunnelSecurity.for_endpoint(spec.ra, spec.path, server_side=False)
        return HttpProxyIngressEndpoint(spec, security)
    if not isinstance(spec.mode, MappingIngress):
        raise _not_yet(f"{spec.path}.{spec.mode.kind}", f"ingress mode {spec.mode.kind!r}")
    security = TunnelSecurity.for_endpoint(spec.ra, spec.path, server_side=False)
    return MappingIngressEndpoint(spec, security)


def build_egress(spec: Egress, reserved_ports: frozenset[int] = frozenset()) -> Endpoint:
    endpoint = _build_egress(spec, reserved_ports)
    if spec.decap_from_http is not None:
        from tng_nfq.tunnel.egress.http_decap import HttpDecap


        endpoint.http_layer = HttpDecap(spec.decap_from_http, endpoint.security, spec.path)
        if endpoint.security.attester is not None:
            endpoint.security.attester.make_certificates = False
    return endpoint


def _build_egress(spec: Egress, reserved_ports: frozenset[int]) -> Endpoint:
    if isinstance(spec.mode, NetfilterEgress):
        security = TunnelSecurity.for_endpoint(spec.ra, spec.path, server_side=True)
        return NetfilterEgressEndpoint(spec, security, reserved_ports)
    if not isinstance(spec.mode, MappingEgress):
        raise _not_yet(f"{spec.path}.{spec.mode.kind}", f"egress mode {spec.mode.kind!r}")
    security = TunnelSecurity.for_endpoint(spec.ra, spec.path, server_side=True)
    return MappingEgressEndpoint(spec, security)


def endpoint_specs(config: Config) -> list:
    """Ingress then egress specs, in the order `build` makes their endpoints."""
    return [*config.ingress, *config.egress]


def spec_key(spec) -> tuple:
    """What makes two endpoint specs the same endpoint, wherever they sit in the lists."""
    return (type(spec).__name__, dataclasses.replace(spec, index=0))


def build(config: Config) -> list[Endpoint]:
    """Everything that can be decided without touching the host."""
    from tng_nfq.netfilter.plan import PlanError, build_plan, netfilter_paths, reserved_ports

    try:  # rules that cannot be written are refused now, not at start
        build_plan(config, {path: 0 for path in netfilter_paths(config)})
    except PlanError as exc:
        raise SetupRefused(exc.path, exc.problem) from None
    reserved = frozenset(reserved_ports(config))  # what an automatic listen_port must avoid
    endpoints: list[Endpoint] = []
    endpoints += [build_ingress(spec, reserved) for spec in config.ingress]
    endpoints += [build_egress(spec, reserved) for spec in config.egress]
    return endpoints


# what only the rules use: an endpoint changed in nothing else keeps running
_CAPTURE_FIELDS = {NetfilterEgress: ("capture_dst", "capture_local_traffic"),
                   NetfilterIngress: ("capture_dst", "capture_cgroup", "nocapture_cgroup")}


def _capture_only_change(old, new) -> bool:
    """`old` and `new` (specs of one kind) differ only in what they capture.

    An ingress must keep its gateway role (capture_cgroup empty or not): that
    decides whether its listener is transparent."""
    if type(old) is not type(new) or type(old.mode) is not type(new.mode):
        return False
    fields = _CAPTURE_FIELDS.get(type(old.mode))
    if fields is None:
        return False
    if isinstance(old.mode, NetfilterIngress) and bool(old.mode.capture_cgroup) != bool(new.mode.capture_cgroup):
        return False
    moved = dataclasses.replace(old.mode, **{f: getattr(new.mode, f) for f in fields})
    return dataclasses.replace(old, mode=moved, index=0) == dataclasses.replace(new, index=0)


def _captured_ports(config: Config) -> set[int]:
    """The ports the netfilter endpoints of `config` capture."""
    ports: set[int] = set()
    for spec in endpoint_specs(config):
        if isinstance(spec.mode, NetfilterIngress):
            ports |= {d.port for d in spec.mode.capture_dst if d.port is not None}
        elif isinstance(spec.mode, NetfilterEgress) and spec.mode.capture_dst.port is not None:
            ports.add(spec.mode.capture_dst.port)
    return ports


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.endpoints = build(config)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._draining: list[Endpoint] = []  # removed by a reload, connections still open
        self.config_path: str | None = None  # set by `launch --config-file`: SIGHUP reloads it
        self.ready = threading.Event()
        self.netfilter = None  # NetfilterRules once installed
        self.admin = None
        if config.admin is not None:
            from tng_nfq.admin import AdminServer

            self.admin = AdminServer(config.admin, self.endpoints, self.ready,
                                     extra_status=self._netfilter_status,
                                     classified_flows=self.classified_flows)

    def start(self) -> None:
        started: list[Endpoint] = []
        try:
            for endpoint in self.endpoints:
                started.append(endpoint)
                endpoint.bind()
            if self.admin is not None:
                self.admin.bind()
        except StartError:
            for endpoint in started:
                endpoint.stop(grace=0)
            raise
        self._install_rules()
        for endpoint in self.endpoints:
            endpoint.security.start()
            endpoint.start()
        if self.admin is not None:
            self.admin.start()
        self._ready_thread = threading.Thread(target=self._announce_ready, name="ready", daemon=True)
        self._ready_thread.start()

    def _install_rules(self) -> None:
        """Netfilter rules go in once every listener is bound (they name the
        listen ports) and before "ready"; a failure unbinds everything."""
        from tng_nfq.netfilter.apply import ApplyError, rules_for
        from tng_nfq.netfilter.plan import PlanError

        try:
            self.netfilter = rules_for(self.config, self.endpoints)
            if self.netfilter is not None:
                self.netfilter.install()
        except (ApplyError, PlanError) as exc:
            self.netfilter = None
            for endpoint in self.endpoints:
                endpoint.stop(grace=0)
            raise StartError(str(exc)) from None

    def _netfilter_status(self) -> dict:
        rules = self.netfilter
        return {"netfilter": rules.status() if rules is not None else {"installed": False}}

    def classified_flows(self) -> list[dict]:
        """Flows the NFQUEUE classifier decided (most recent first), for /flows."""
        rules = self.netfilter
        if rules is None or rules.classifier is None:
            return []
        return list(reversed(rules.classifier.recent_flows()))

    def _remove_rules(self) -> None:
        if self.netfilter is not None:
            self.netfilter.remove()
            self.netfilter = None

    def _announce_ready(self) -> None:
        # Listeners are up; attesters may still be fetching their first
        # evidence. "ready" is logged once every endpoint can serve.
        for endpoint in self.endpoints:
            while not endpoint.security.wait_ready(1.0):
                if self._stop.is_set():
                    return
        if not self._stop.is_set():
            self.ready.set()
            log.info("ready", ingress=len(self.config.ingress), egress=len(self.config.egress))
            systemd.ready(f"serving: {len(self.config.ingress)} ingress, {len(self.config.egress)} egress")

    def reload(self) -> None:
        """SIGHUP: apply the configuration file again, or refuse it and keep running.

        Endpoints whose spec is unchanged keep running untouched (listeners,
        connections, redirect ports); new ones are bound first, all or none.
        Then the netfilter rules are replaced: classifier workers for new
        queues bind, policy routing the new rules need is added, one
        iptables-restore --noflush transaction per table swaps our chains
        (the jumps at position 1 stay), then routing and workers only the old
        rules used go (NetfilterRules.replace). Only then do the new
        endpoints accept and the removed ones drain (stop accepting, their
        connections run to their end). A failure anywhere (a port taken, a
        rule the kernel refuses) leaves the old rules and endpoints as they
        were, with one log line. Admin API changes need a restart.
        """
        from tng_nfq.config import ConfigError, load_config_file
        from tng_nfq.netfilter.apply import ApplyError, NetfilterRules, plan_for_reload
        from tng_nfq.netfilter.plan import PlanError

        def refuse(error: str) -> None:
            log.error("reload refused; the running configuration stays", error=error)

        if self.config_path is None:
            log.error("reload refused", error="SIGHUP reloads --config-file only; this instance was "
                                              "started with --config-content")
            return
        try:
            new_config = load_config_file(self.config_path)
            built = build(new_config)
        except (ConfigError, SetupRefused) as exc:
            refuse(str(exc))
            return
        if new_config.admin != self.config.admin:
            refuse("admin_bind/control_interface changed: that needs a restart")
            return
        new_specs = endpoint_specs(new_config)
        old_by_key = {spec_key(spec): ep for spec, ep in zip(endpoint_specs(self.config), self.endpoints)}
        new_pairs = [(spec_key(spec), ep) for spec, ep in zip(new_specs, built)]
        # A netfilter endpoint whose change is only in what it captures keeps
        # its listener and connections; its rules are replaced below.
        retarget: dict[tuple, tuple[Endpoint, object]] = {}  # new key -> (running endpoint, new spec)
        new_keys = {key for key, _ in new_pairs}
        vacated = [(key, ep) for key, ep in old_by_key.items() if key not in new_keys]
        for spec in new_specs:
            key = spec_key(spec)
            if key in old_by_key or not isinstance(spec.mode, (NetfilterIngress, NetfilterEgress)):
                continue
            for old_key, endpoint in vacated:
                if _capture_only_change(old_key[1], key[1]):
                    retarget[key] = (endpoint, spec)
                    vacated.remove((old_key, endpoint))
                    old_by_key[key] = endpoint
                    break
        added = [ep for key, ep in new_pairs if key not in old_by_key]
        captured = _captured_ports(new_config)
        for key, endpoint in old_by_key.items():
            port = getattr(endpoint, "listen_port", None) if endpoint.mode == "netfilter" else None
            if key in new_keys and port in captured:
                # chosen automatically at start; the new configuration captures it
                refuse(f"{endpoint.path}.netfilter.listen_port: the port it listens on ({port}, chosen "
                       "automatically) is captured by the new configuration: set listen_port or restart")
                return
        try:
            for endpoint in added:
                endpoint.bind()
        except StartError as exc:
            for endpoint in added:
                endpoint.stop(grace=0)
            held = [ep.path for _key, ep in vacated
                    if any(f":{listener.address[1]}:" in str(exc) for listener in ep.listeners)]
            hint = (f" (held by {', '.join(held)}, which this reload replaces: a netfilter endpoint "
                    "keeps its listener only when just what it captures changes; otherwise use "
                    "another listen_port or restart)") if held else ""
            refuse(f"{exc}{hint}")
            return
        endpoints = [old_by_key.get(key, ep) for key, ep in new_pairs]
        removed = [ep for _key, ep in vacated]

        # the rules: replaced in place, installed afresh, or removed
        current = self.netfilter
        remove_rules = False
        try:
            plan = plan_for_reload(new_config, zip(new_specs, endpoints),
                                   current.plan if current is not None else None)
            if current is not None and not plan.empty:
                current.replace(plan)
            elif current is None and not plan.empty:
                fresh = NetfilterRules(plan)
                fresh.install()
                self.netfilter = fresh
            elif current is not None:
                remove_rules = True  # after the switch below: cannot fail
        except (ApplyError, PlanError) as exc:
            for endpoint in added:
                endpoint.stop(grace=0)
            refuse(str(exc))
            return
        if remove_rules:
            self._remove_rules()
        for endpoint, spec in retarget.values():  # its rules are the new ones already
            endpoint.spec, endpoint.mode_spec = spec, spec.mode

        for endpoint in added:
            endpoint.security.start()
            endpoint.start()
        self.endpoints[:] = endpoints  # admin sees the same list
        self.config = new_config
        for endpoint in removed:
            self._draining.append(endpoint)
            threading.Thread(target=self._drain, args=(endpoint,), name="drain", daemon=True).start()
        log.info("reloaded", added=[e.path for e in added], removed=[e.path for e in removed],
                 kept=len(self.endpoints) - len(added),
                 recaptured=[f"{e.path} -> {spec.path}" for e, spec in retarget.values()])
        if added and any(e.security.attester is not None for e in added):
            self.ready.clear()
            threading.Thread(target=self._announce_ready, name="ready", daemon=True).start()

    def _drain(self, endpoint: Endpoint) -> None:
        endpoint.drain()
        endpoint.security.stop()
        if endpoint in self._draining:
            self._draining.remove(endpoint)
        log.info("drained", endpoint=endpoint.path)

    def request_stop(self, *_):
        self._stop.set()

    def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop cleanly."""
        # handlers first: a signal during start still ends in the cleanup below
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        try:
            self.start()
        except BaseException:
            self._remove_rules()
            if self.admin is not None:
                self.admin.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise
        try:
            # Short waits: a signal the kernel hands to another thread only
            # sets a flag that the main thread sees when it next runs Python.
            while not self._stop.wait(0.25):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
            log.info("stopping", reason="signal")
        finally:
            self._stop.set()
            systemd.stopping()
            self._remove_rules()  # first: no new connection is steered to a closing listener
            for endpoint in [*self.endpoints, *self._draining]:
                endpoint.stop()
                endpoint.security.stop()
            if self.admin is not None:
                self.admin.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("stopped")
