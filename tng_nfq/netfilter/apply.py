"""RulePlan -> kernel, and back.

`NetfilterRules.install` takes the per-namespace lock, removes whatever a
crashed instance left behind, then installs the plan (iptables-restore
--noflush, one transaction per table; policy routing with pyroute2).
`remove` undoes exactly that and releases the lock; it never raises, and
falls back to the prefix sweep when the exact inverse does not apply (e.g.
someone deleted one of our rules by hand). `flush` is `tng-nfq rules flush`.
"""

from __future__ import annotations

import structlog

from tng_nfq.netfilter import routing
from tng_nfq.netfilter.iptables import Iptables, IptablesError, marker_text
from tng_nfq.netfilter.lock import AlreadyRunning, NamespaceLock
from tng_nfq.netfilter.plan import RulePlan

log = structlog.get_logger(component="netfilter")


class ApplyError(RuntimeError):
    """The rules could not be installed (nothing of ours is left in the kernel)."""


class NetfilterRules:
    """The kernel side of one plan, and the classifier workers serving its queues."""

    def __init__(self, plan: RulePlan, iptables: Iptables | None = None):
        self.plan = plan
        self.iptables = iptables
        self.lock = NamespaceLock()
        self.installed = False
        self.classifier = None  # ClassifierPool once started
        self.new_tables: list[str] = []  # tables that did not exist before us

    def install(self) -> None:
        if self.plan.empty:
            return
        try:
            self.lock.acquire()
        except AlreadyRunning as exc:
            raise ApplyError(str(exc)) from None
        try:
            if self.iptables is None:
                self.iptables = Iptables.detect()
            stale = self.iptables.sweep()
            stale_routes = routing.sweep()
            existing = self.iptables.state()  # after the sweep, which may drop a crashed run's tables
            self.new_tables = [t for t in self.plan.tables() if t not in existing]
            if stale or stale_routes:
                log.warning("removed leftovers of an earlier tng-nfq in this network namespace",
                            iptables=stale.splitlines(), routing=stale_routes)
            self.installed = True  # from here on, remove() has something to undo
            self.iptables.apply(marker_text(self.new_tables) + self.plan.install_text())
            routing.install(self.plan.policy_routes)
        except (IptablesError, routing.RoutingError, OSError) as exc:
            self.remove(exact=False)  # the transaction may not have gone in: sweep
            hint = ""
            if "Invalid argument" in str(exc) and "--path" in self.plan.install_text():
                hint = (" (a capture_cgroup/nocapture_cgroup path that is not an existing cgroup v2 "
                        "group, relative to the cgroup2 mount, gives this error)")
            raise ApplyError(f"cannot install netfilter rules: {exc}{hint}") from None
        log.info("netfilter rules installed", backend=self.iptables.backend,
                 endpoints=[e.path for e in self.plan.endpoints],
                 chains={t: self.plan.chains(t) for t in self.plan.tables()},
                 policy_routing=self.plan.routing_commands(), queues=list(self.plan.queue_nums))
        if self.plan.queue_nums:
            # After the rules: until a worker binds, its queue is bypassed and
            # the steering rules capture on their own.
            from tng_nfq.netfilter.workers import ClassifierPool

            self.classifier = ClassifierPool(self.plan)
            self.classifier.start()

    def replace(self, new: RulePlan) -> None:
        """Reload: turn the installed rules into `new`'s, or raise ApplyError
        with the old rules, routing and classifier workers exactly as they were.

        Order: classifier workers for queues only `new` uses are bound, policy
        routing only `new` needs is added, then one iptables-restore --noflush
        transaction per table replaces our chains (see RulePlan.replace_text:
        the jumps at position 1 stay where both plans have them); after all
        tables went in, routing and workers only the old plan used go."""
        old = self.plan
        if not self.installed or new.empty:
            raise ApplyError("internal: replace() needs installed rules and a non-empty plan")
        if new == old:
            return
        assert self.iptables is not None
        pool = self.classifier
        started: list[int] = []
        if new.queue_nums and pool is None:
            from tng_nfq.netfilter.workers import ClassifierPool

            pool = ClassifierPool(new)
            pool.start()
            started = list(new.queue_nums)
        elif pool is not None:
            started = pool.prepare(new)
        routes_added = bool(new.policy_routes) and not old.policy_routes
        done: list[str] = []
        try:
            if routes_added:
                routing.install(new.policy_routes)
            existing = self.iptables.state()
            made = [t for t in new.tables() if t not in existing]
            for table, text in old.replacement(new).items():
                self.iptables.apply((marker_text([table]) if table in made else "") + text)
                done.append(table)
        except (IptablesError, routing.RoutingError, OSError) as exc:
            problems = self._roll_back(old, new, done, routes_added)
            if pool is not None and pool is not self.classifier:
                pool.stop()
            elif pool is not None:
                pool.abandon(started)
            detail = f" (and rolling back failed: {'; '.join(problems)})" if problems else ""
            raise ApplyError(f"cannot replace netfilter rules: {exc}{detail}") from None
        self.new_tables += [t for t in made if t not in self.new_tables]
        self.plan = new
        if old.policy_routes and not new.policy_routes:
            try:
                routing.sweep()
            except (routing.RoutingError, OSError) as exc:
                log.warning("could not remove the policy routing the new rules no longer need",
                            error=str(exc))
        retired: list[int] = []
        if pool is not None:
            if new.queue_nums:
                retired = pool.commit(new)
                self.classifier = pool
            else:
                pool.stop()
                retired = list(old.queue_nums)
                self.classifier = None
        log.info("netfilter rules replaced", endpoints=[e.path for e in new.endpoints],
                 tables=done, chains={t: new.chains(t) for t in new.tables()},
                 queues_added=started, queues_retired=retired,
                 policy_routing=new.routing_commands())

    def _roll_back(self, old: RulePlan, new: RulePlan, done: list[str], routes_added: bool) -> list[str]:
        """Undo the tables of a replacement that went in (newest first) and the
        routing it added; what could not be undone, one line each."""
        assert self.iptables is not None
        problems = []
        for table in reversed(done):
            try:
                self.iptables.apply(new.replace_text(old, table))
            except IptablesError as exc:
                problems.append(f"{table}: {exc}")
        if routes_added:
            try:
                routing.sweep()
            except (routing.RoutingError, OSError) as exc:
                problems.append(f"policy routing: {exc}")
        return problems

    def status(self) -> dict:
        """For the admin API: what is installed and how the classifier fares."""
        return {"installed": self.installed, "chains": {t: self.plan.chains(t) for t in self.plan.tables()},
                "classifier": self.classifier.status() if self.classifier is not None else None}

    def remove(self, exact: bool = True) -> None:
        """Remove everything install() put in; safe to call more than once."""
        if not self.installed:
            self.lock.release()
            return
        try:
            assert self.iptables is not None
            try:
                if exact:
                    self.iptables.apply(self.plan.remove_text())
            except IptablesError as exc:
                # not exactly as installed any more: remove by prefix instead
                log.warning("exact rule removal failed; sweeping by prefix", error=str(exc))
            # whatever is left (the table markers, or everything after a
            # failed exact removal), and the tables we made if empty now
            self.iptables.sweep()
            if self.plan.policy_routes:
                routing.sweep()
            log.info("netfilter rules removed")
        except Exception as exc:  # noqa: BLE001 - shutdown must go on; the next start sweeps
            log.error("could not remove all netfilter rules; the next start (or `tng-nfq rules "
                      "flush`) removes them", error=str(exc))
        finally:
            self.installed = False
            if self.classifier is not None:  # after the rules: nothing is queued any more
                self.classifier.stop()
                self.classifier = None
            self.lock.release()


def flush(force: bool = False, iptables: Iptables | None = None) -> list[str]:
    """Remove every rule, chain, ip rule and route of ours from this network
    namespace. Refused while a running instance holds the namespace, unless
    `force`. Returns what was removed, one line each."""
    lock = NamespaceLock()
    try:
        lock.acquire()
    except AlreadyRunning:
        if not force:
            raise
        lock = None
    try:
        iptables = iptables or Iptables.detect()
        removed = [line for line in iptables.sweep().splitlines() if line.startswith(("-D", "-X"))]
        removed += routing.sweep()
        return removed
    finally:
        if lock is not None:
            lock.release()


def rules_for(config, endpoints) -> NetfilterRules | None:
    """The rules of a started daemon: the plan for `config` with the listen
    ports its netfilter endpoints actually bound. None without netfilter endpoints."""
    from tng_nfq.netfilter.plan import build_plan

    from tng_nfq.netfilter.workers import default_queue_count

    ports = {e.path: e.listen_port for e in endpoints if getattr(e, "mode", None) == "netfilter"}
    plan = build_plan(config, ports, queues=default_queue_count())
    return None if plan.empty else NetfilterRules(plan)


def plan_for_reload(config, specs_and_endpoints, previous: RulePlan | None) -> RulePlan:
    """The plan a reload installs: `config` with the listen ports of the
    endpoints it will run, given as (spec of the new config, endpoint) pairs -
    an endpoint kept from before still carries its old path and port."""
    from tng_nfq.netfilter.plan import replan

    from tng_nfq.netfilter.workers import default_queue_count

    ports = {spec.path: ep.listen_port for spec, ep in specs_and_endpoints
             if getattr(ep, "mode", None) == "netfilter"}
    return replan(config, ports, default_queue_count(), previous)
