"""massboot.greenpool.WorkerPool: the bound, the kept greenlets, join and kill."""

from __future__ import annotations

import logging

import gevent
import pytest
from gevent.event import Event

from massboot.greenpool import WorkerPool


def test_jobs_run_in_their_own_greenlets_within_the_bound():
    pool = WorkerPool(2)
    gate = Event()
    seen = []

    def job(n):
        seen.append((n, gevent.getcurrent()))
        gate.wait()

    pool.spawn(job, 1)
    assert len(pool) == 1 and not pool.full()
    pool.spawn(job, 2)
    assert len(pool) == 2 and pool.full()
    gevent.sleep(0)
    assert [n for n, _ in seen] == [1, 2]
    assert seen[0][1] is not seen[1][1]
    assert all(g is not gevent.getcurrent() for _, g in seen)
    gate.set()
    assert pool.join(timeout=1)
    assert len(pool) == 0 and not pool.full()


def test_a_worker_is_kept_for_the_next_job():
    pool = WorkerPool(4)
    ran = []
    pool.spawn(lambda: ran.append(gevent.getcurrent()))
    assert pool.join(timeout=1)
    gevent.sleep(0)
    assert pool.idle == 1
    pool.spawn(lambda: ran.append(gevent.getcurrent()))
    assert pool.join(timeout=1)
    assert len(ran) == 2 and ran[0] is ran[1]   # the same greenlet, not a new one
    assert not ran[0].dead


def test_keep_bounds_the_idle_workers():
    pool = WorkerPool(8, keep=1)
    gate = Event()
    workers = []

    def job():
        workers.append(gevent.getcurrent())
        gate.wait()

    for _ in range(3):
        pool.spawn(job)
    gevent.sleep(0)
    gate.set()
    assert pool.join(timeout=1)
    gevent.sleep(0)
    assert pool.idle == 1
    assert sum(not g.dead for g in workers) == 1   # the other two ended with their jobs


def test_join_times_out_while_a_job_runs():
    pool = WorkerPool(1)
    gate = Event()
    pool.spawn(gate.wait)
    assert pool.join(timeout=0.01) is False
    gate.set()
    assert pool.join(timeout=1) is True


def test_kill_reaches_running_jobs_and_ends_idle_workers():
    pool = WorkerPool(4)
    exits = []

    def blocked():
        try:
            gevent.sleep(30)
        except gevent.GreenletExit:
            exits.append("running")
            raise

    pool.spawn(lambda: None)
    gevent.sleep(0)
    idle_worker = pool._idle[0].greenlet
    pool.spawn(blocked)
    gevent.sleep(0)   # the kept worker took it: spawn a second to have one idle again
    pool.spawn(lambda: None)
    gevent.sleep(0)
    assert len(pool) == 1 and pool.idle == 1
    pool.kill(block=True)
    assert exits == ["running"]
    assert len(pool) == 0 and pool.idle == 0
    assert idle_worker.dead
    assert not pool._workers


def test_a_failing_job_is_logged_and_the_worker_goes_on(caplog):
    pool = WorkerPool(1)

    def boom():
        raise RuntimeError("job failed")

    with caplog.at_level(logging.ERROR, logger="massboot.greenpool"):
        pool.spawn(boom)
        assert pool.join(timeout=1)
    assert "job failed" in caplog.text
    assert not pool.full()
    done = []
    pool.spawn(done.append, 1)
    assert pool.join(timeout=1)
    assert done == [1] and pool.idle == 1


def test_a_job_handed_to_a_worker_killed_meanwhile_still_runs():
    pool = WorkerPool(2)
    pool.spawn(lambda: None)
    gevent.sleep(0)
    worker = pool._idle[0].greenlet
    done = []
    worker.kill(block=False)              # the kill is a loop callback, due first...
    pool.spawn(done.append, "ran")        # ...then the hand-over to that (still idle) worker
    assert pool.join(timeout=1)
    assert worker.dead
    assert done == ["ran"]                # a new worker took the job
    assert len(pool) == 0


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        WorkerPool(0)
