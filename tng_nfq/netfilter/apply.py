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
