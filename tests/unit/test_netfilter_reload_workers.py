"""ClassifierPool across a reload, with stand-in worker processes (no queue,
no root): workers on queues both plans use are kept, new queues get workers
before the rules change (prepare), old ones are stopped after (commit) or,
when the rules did not go in, the new ones are (abandon); the watchdog never
restarts a retired worker."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tng_nfq.config import load_config
from tng_nfq.netfilter import workers as workers_mod
from tng_nfq.netfilter.plan import replan
from tng_nfq.netfilter.workers import ClassifierPool

A = {"netfilter": {"capture_dst": {"port": 30001}, "listen_port": 40001}, "no_ra": True}
B = {"netfilter": {"capture_dst": {"port": 30002}, "listen_port": 40002}, "no_ra": True}


def plan(egress, previous=None, queues=2):
    return replan(load_config(json.dumps({"add_egress": egress})), {}, queues, previous)


@pytest.fixture
def fake_spawn(monkeypatch):
    spawned = []

    def spawn(self, worker):
        worker.bound.clear()
        worker.last_beat = time.monotonic() + 3600  # no heartbeats from a stand-in: never "stalled"
        worker.proc = subprocess.Popen(["sleep", "60"])
        worker.dead_since = None
        worker.bound.set()
        spawned.append((worker.queue, json.loads(worker.spec)))

    monkeypatch.setattr(workers_mod.ClassifierPool, "_spawn", spawn)
    return spawned


def test_new_bank_bound_before_old_retired_after(fake_spawn):
    old = plan([A])
    pool = ClassifierPool(old)
    pool.start(wait=1)
    first = {w.queue: w.proc for w in pool.workers}
    new = plan([A, B], previous=old)
    try:
        added = pool.prepare(new, wait=1)
        assert added == [5714, 5715]
        assert pool.queues() == [5650, 5651, 5714, 5715]  # both banks served while the rules switch
        assert [spec for q, spec in fake_spawn if q in added] == [new.classifier_spec()] * 2
        retired = pool.commit(new)
        assert retired == [5650, 5651] and pool.queues() == [5714, 5715]
        assert all(proc.poll() is not None for proc in first.values())  # old workers stopped
        assert pool.plan is new
        time.sleep(0.6)  # watchdog rounds: a retired worker is not brought back
        assert pool.queues() == [5714, 5715] and len(fake_spawn) == 4
    finally:
        pool.stop()


def test_same_names_keep_every_worker(fake_spawn):
    old = plan([A])
    pool = ClassifierPool(old)
    pool.start(wait=1)
    pids = pool.pids()
    moved = dict(A, netfilter=dict(A["netfilter"], listen_port=40099))
    new = plan([moved], previous=old)
    try:
        assert pool.prepare(new, wait=1) == []
        assert pool.commit(new) == []
        assert pool.pids() == pids and len(fake_spawn) == 2
    finally:
        pool.stop()


def test_abandon_stops_only_the_prepared_workers(fake_spawn):
    old = plan([A])
    pool = ClassifierPool(old)
    pool.start(wait=1)
    pids = pool.pids()
    try:
        added = pool.prepare(plan([A, B], previous=old), wait=1)
        pool.abandon(added)
        assert pool.queues() == [5650, 5651] and pool.pids() == pids
        assert pool.plan is old
    finally:
        pool.stop()
    assert pool.pids() == []
