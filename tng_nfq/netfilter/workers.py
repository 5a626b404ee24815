"""The daemon's side of the classifier: one worker process per queue,
supervised.

Each worker's stdout is read by a thread (flow records go into a bounded
flow table, heartbeats feed the watchdog). A worker that dies is restarted
after a delay; one whose heartbeat stops (stalled, SIGSTOPped) is killed and
restarted. While a queue has no worker the kernel bypasses it
(--queue-bypass) and the static steering rules still capture the flow.

Knobs (environment, for operators and tests):
  TNG_NFQ_QUEUES                 number of queues/workers (default: CPU count; 0 = no classifier)
  TNG_NFQ_QUEUE_MAXLEN           kernel queue length per queue (default 4096)
  TNG_NFQ_WORKER_RESTART_DELAY   seconds before a dead worker is restarted (default 0.5)
  TNG_NFQ_WORKER_STALL_TIMEOUT   seconds without heartbeat before a worker is killed (default 3)
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import structlog

from tng_nfq.netfilter.plan import MAX_QUEUES, RulePlan

log = structlog.get_logger(component="classifier")

FLOW_TABLE_SIZE = 4096


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def default_queue_count() -> int:
    value = os.environ.get("TNG_NFQ_QUEUES")
    if value is not None and value.strip().isdigit():
        return min(int(value), MAX_QUEUES)
    return min(os.cpu_count() or 1, MAX_QUEUES)


class _Worker:
    def __init__(self, queue: int, spec: str):
        self.queue = queue
        self.spec = spec  # classifier_spec() JSON it was started with
        self.retired = False  # stopped by a reload: never restarted
        self.proc: subprocess.Popen | None = None
        self.last_beat = 0.0
        self.bound = threading.Event()
        self.flags_ack: int | None = None
        self.restarts = 0
        self.failures = 0  # consecutive exits without binding: restart backoff
        self.dead_since: float | None = None


class ClassifierPool:
    def __init__(self, plan: RulePlan):
        self.plan = plan
        self.spec = json.dumps(plan.classifier_spec())
        self.workers = [_Worker(q, self.spec) for q in plan.queue_nums]
        self.flows: collections.OrderedDict[tuple[str, str], dict] = collections.OrderedDict()
        self.flow_count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.maxlen = int(_env_float("TNG_NFQ_QUEUE_MAXLEN", 4096))
        self.restart_delay = _env_float("TNG_NFQ_WORKER_RESTART_DELAY", 0.5)
        self.stall_timeout = _env_float("TNG_NFQ_WORKER_STALL_TIMEOUT", 3.0)

    # -- lifecycle ----------------------------------------------------------------

    def start(self, wait: float = 5.0) -> None:
        """Start every worker and wait (bounded) until they are bound. A worker
        that cannot bind is logged, not fatal: its queue is bypassed."""
        for worker in self.workers:
            self._spawn(worker)
        self._wait_bound(self.workers, wait)
        log.info("classifier started", queues=[w.queue for w in self.workers], pids=self.pids(),
                 fail_open_ack={str(w.queue): w.flags_ack for w in self.workers})
        self._watchdog = threading.Thread(target=self._watch, name="classifier-watchdog", daemon=True)
        self._watchdog.start()

    def _wait_bound(self, workers: list[_Worker], wait: float) -> None:
        deadline = time.monotonic() + wait
        for worker in workers:
            worker.bound.wait(max(0.0, deadline - time.monotonic()))
        unbound = [w.queue for w in workers if not w.bound.is_set()]
        if unbound:
            log.error("classifier queues not bound; the kernel bypasses them (captured traffic is "
                      "still steered into the tunnel)", queues=unbound)

    # -- reload: add the new plan's queues before its rules, retire the old after --

    def prepare(self, plan: RulePlan, wait: float = 5.0) -> list[int]:
        """Before the rules of `plan` go in: start (and wait for) workers on
        the queues of `plan` that have none yet, with `plan`'s endpoint list.
        Workers on queues both plans use keep running. Returns the queues
        started here (what `abandon` undoes if the rules do not go in)."""
        spec = json.dumps(plan.classifier_spec())
        with self._lock:
            held = {w.queue for w in self.workers}
        added = [_Worker(q, spec) for q in plan.queue_nums if q not in held]
        for worker in added:
            self._spawn(worker)
        with self._lock:
            self.workers += added
        self._wait_bound(added, wait)
        if added:
            log.info("classifier queues added", queues=[w.queue for w in added],
                     pids=[w.proc.pid for w in added if w.proc is not None])
        return [w.queue for w in added]

    def commit(self, plan: RulePlan) -> list[int]:
        """After the rules of `plan` went in: stop the workers on queues it no
        longer references. Returns those queues."""
        keep = set(plan.queue_nums)
        self.plan = plan
        self.spec = json.dumps(plan.classifier_spec())
        return self.retire([q for q in self.queues() if q not in keep])

    def abandon(self, queues: list[int]) -> None:
        """The rules did not go in: stop the workers `prepare` started."""
        self.retire(queues)

    def retire(self, queues: list[int]) -> list[int]:
        with self._lock:
            gone = [w for w in self.workers if w.queue in queues]
            for worker in gone:
                worker.retired = True
            self.workers = [w for w in self.workers if w not in gone]
        self._terminate(gone)
        if gone:
            log.info("classifier queues retired", queues=[w.queue for w in gone])
        return [w.queue for w in gone]

    def queues(self) -> list[int]:
        with self._lock:
            return [w.queue for w in self.workers]

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            workers = list(self.workers)
        self._terminate(workers)
        log.info("classifier stopped", flows_classified=self.flow_count,
                 restarts={str(w.queue): w.restarts for w in workers})

    @staticmethod
    def _terminate(workers: list[_Worker]) -> None:
        for worker in workers:
            proc = worker.proc
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for worker in workers:
            proc = worker.proc
            if proc is not None:
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def pids(self) -> list[int]:
        with self._lock:
            workers = list(self.workers)
        return [w.proc.pid for w in workers if w.proc is not None and w.proc.poll() is None]

    def status(self) -> dict:
        with self._lock:
            return {"queues": [{"queue": w.queue, "pid": w.proc.pid if w.proc else None,
                                "alive": bool(w.proc and w.proc.poll() is None),
                                "bound": w.bound.is_set(), "fail_open_ack": w.flags_ack,
                                "restarts": w.restarts} for w in self.workers],
                    "flows_classified": self.flow_count}

    def recent_flows(self) -> list[dict]:
        with self._lock:
            return list(self.flows.values())

    # -- workers ------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.bound.clear()
        worker.last_beat = time.monotonic()
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "tng_nfq.netfilter.worker", "--queue", str(worker.queue),
             "--spec", worker.spec, "--maxlen", str(self.maxlen)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True)
        worker.dead_since = None
        threading.Thread(target=self._read, args=(worker, worker.proc), name=f"classifier-{worker.queue}",
                         daemon=True).start()

    def _read(self, worker: _Worker, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            worker.last_beat = time.monotonic()
            if kind == "bound":
                worker.failures = 0
                worker.flags_ack = event.get("flags_ack")
                worker.bound.set()
                if worker.flags_ack != 0:
                    log.warning("could not confirm the fail-open flags on a classifier queue",
                                queue=worker.queue, ack=worker.flags_ack)
            elif kind == "flow":
                with self._lock:
                    self.flow_count += 1
                    self.flows[(event["src"], event["dst"])] = event
                    while len(self.flows) > FLOW_TABLE_SIZE:
                        self.flows.popitem(last=False)
                log.debug("flow classified", src=event.get("src"), dst=event.get("dst"),
                          endpoint=event.get("endpoint"), queue=worker.queue)
            elif kind == "bind_failed":
                log.error("classifier worker cannot bind its queue", queue=worker.queue, error=event.get("error"))
            elif kind == "error":
                log.error("classifier callback error (packet accepted)", queue=worker.queue,
                          error=event.get("error"))

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                workers = list(self.workers)
            for worker in workers:
                proc = worker.proc
                if proc is None or self._stop.is_set() or worker.retired:  # exits are expected
                    continue
                if proc.poll() is None:
                    if now - worker.last_beat > self.stall_timeout:
                        log.error("classifier worker stalled; killing it (its queue is bypassed "
                                  "until a new worker binds)", queue=worker.queue, pid=proc.pid)
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                    else:
                        continue
                if worker.dead_since is None:
                    worker.dead_since = now
                    if not worker.bound.is_set():
                        worker.failures += 1
                    log.warning("classifier worker exited; its queue is bypassed until it is restarted",
                                queue=worker.queue, code=proc.returncode)
                delay = min(self.restart_delay * 2 ** min(worker.failures, 6), 30.0)
                if now - worker.dead_since >= delay and not self._stop.is_set() and not worker.retired:
                    worker.restarts += 1
                    self._spawn(worker)
