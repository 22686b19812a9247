"""A bounded pool of greenlets kept for the next job (README "Per-transfer cost, second round").

:class:`gevent.pool.Pool` makes a new greenlet for every job: on CPython 3.11 that is a
greenlet, its C stack, the interpreter's frame stack (a 16 KiB ``mmap`` on the first call,
``munmap`` at the end) and the pool's links, about 15 µs of CPU per job on this project's
test machine, an eighth of a whole TFTP "File not found" exchange. :class:`WorkerPool` keeps a
greenlet whose job ended waiting for the next one (up to *keep* of them, 1,024 by default),
so a rack's second and later requests start on a warm greenlet: one callback and one switch.

The rest is :class:`~gevent.pool.Pool`'s contract as the TFTP server uses it: at most *size*
jobs at once (:meth:`full`), each in its own greenlet while it runs; :meth:`join` waits for the
running jobs; :meth:`kill` raises :class:`gevent.GreenletExit` in every worker, running or idle.
A job should catch its own exceptions: one that escapes is logged and the worker goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Greenlet
from gevent.event import Event
from gevent.hub import Waiter

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...]]


class WorkerPool:
    """At most *size* jobs at once, each in a greenlet kept for later jobs.

    Args:
        size: the most jobs running at once.
        keep: the most idle workers kept (never more than *size* exist); a worker whose job
            ends when *keep* are idle ends too. An idle worker holds its stacks, 4 to 9 KB measured.
    """

    def __init__(self, size: int, keep: int = 1024) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        self._keep = max(0, keep)
        self._busy = 0
        self._idle: list[Waiter] = []         # workers waiting for a job, the newest last
        self._workers: set[Greenlet] = set()  # every live worker, running or idle
        self._quiet = Event()                 # set while no job runs
        self._quiet.set()
        self._loop = gevent.get_hub().loop

    def __len__(self) -> int:
        """Jobs running."""
        return self._busy

    @property
    def idle(self) -> int:
        """Workers waiting for a job."""
        return len(self._idle)

    def full(self) -> bool:
        """True when *size* jobs run: :meth:`spawn` would exceed the bound."""
        return self._busy >= self._size

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a worker, from the event loop's next callbacks (as
        :func:`gevent.spawn` would); the caller checks :meth:`full` first."""
        self._busy += 1
        self._quiet.clear()
        job: _Job = (fn, args)
        if self._idle:
            self._loop.run_callback(self._hand, self._idle.pop(), job)
        else:
            self._start(job)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no job runs, at most *timeout* seconds; True when none does."""
        return self._quiet.wait(timeout)

    def kill(self, block: bool = True) -> None:
        """Raise GreenletExit in every worker (a running job sees it where it waits)."""
        gevent.killall(list(self._workers), block=block)

    def _start(self, job: _Job) -> None:
        worker = Greenlet(self._work, job)
        self._workers.add(worker)
        worker.start()

    def _hand(self, waiter: Waiter, job: _Job) -> None:
        """Give *job* to an idle worker (a loop callback: Waiter.switch runs in the hub)."""
        worker = waiter.greenlet
        if worker is None or worker.dead:  # killed meanwhile: a new worker takes the job
            self._start(job)
        else:
            waiter.switch(job)

    def _done(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._quiet.set()

    def _work(self, job: _Job) -> None:
        waiter: Waiter | None = None
        try:
            while True:
                fn, args = job
                try:
                    fn(*args)
                except Exception:
                    log.exception("worker job %r failed", getattr(fn, "__qualname__", fn))
                finally:
                    self._done()
                del fn, args, job  # nothing of the job outlives it while idle
                if len(self._idle) >= self._keep:
                    return
                waiter = Waiter()
                self._idle.append(waiter)
                job = waiter.get()
                waiter = None
        finally:
            if waiter is not None and waiter in self._idle:  # killed while idle
                self._idle.remove(waiter)
            self._workers.discard(gevent.getcurrent())  # type: ignore[arg-type]
