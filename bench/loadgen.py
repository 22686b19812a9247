"""What the epoll load generators share (``bench/tftp_client.py``, ``bench/http_client.py``).

Each generator brings its own protocol loop, ``run_worker(spec, count, first_index, ready,
cpu)``, which drives *count* clients in one process and returns a :class:`WorkerTally` (or a
subclass with its protocol's own counters). This module forks the worker processes, lines them
up behind one barrier so that every client starts at once, collects their results through
pipes, and turns the common counters into figures (:func:`common_figures`).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

__all__ = ["WorkerTally", "add_file_arguments", "common_figures", "cpu_since", "expected_file", "file_digest",
           "parse_size", "quantile", "run_workers", "switches"]


class _Spec(Protocol):
    deadline: float  # seconds for the whole run


SpecT = TypeVar("SpecT", bound=_Spec)
ResultT = TypeVar("ResultT", bound="WorkerTally")


@dataclass
class WorkerTally:
    """What every worker counts; a generator's result class adds its protocol's counters."""

    durations: list[float] = field(default_factory=list)  # successful transfers, seconds
    failures: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    bytes_ok: int = 0
    first_start: float = float("inf")
    last_end: float = 0.0
    sha_checked: int = 0
    cpu: float = 0.0  # CPU-seconds of this worker during the run

    def count(self, *, ok: bool, size: int, start: float, end: float, hashed: bool, reason: str) -> None:
        """Count one finished client: a success (*size* bytes) or a failure for *reason*."""
        if ok:
            self.ok += 1
            self.bytes_ok += size
            self.durations.append(end - start)
            if hashed:
                self.sha_checked += 1
        else:
            reason = reason or "unknown"
            self.failures[reason] = self.failures.get(reason, 0) + 1
        self.first_start = min(self.first_start, start)
        self.last_end = max(self.last_end, end)


def cpu_since(times0: os.times_result) -> float:
    """CPU-seconds (user + system) this process used since ``os.times()`` returned *times0*."""
    times1 = os.times()
    return (times1.user - times0.user) + (times1.system - times0.system)


def switches(status: str = "/proc/self/status") -> tuple[int, int]:
    """The context switches so far of this process (or of the task whose ``status`` file is
    given, e.g. ``/proc/PID/task/TID/status``): voluntary (it waited, e.g. in ``epoll`` with
    nothing ready) and involuntary (it was preempted); (0, 0) when the file cannot be read (no
    ``/proc``, a thread that ended). A load generator that sleeps often against one server and
    seldom against another is paced differently by them (README "The storm's last percent")."""
    counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    try:
        with open(status) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in counts:
                    counts[key] = int(value)
    except OSError:
        pass
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def common_figures(parts: Sequence[WorkerTally], clients: int) -> dict[str, Any]:
    """The figures every generator reports, merged over its workers' tallies: clients, ok,
    failed, failures, bytes_ok, wall, mbps (10^6 bytes per second, successful bytes over the
    first start .. the last end), p50, p95, sha_checked, gen_cpu (CPU-seconds of all workers)."""
    durations = [d for p in parts for d in p.durations]
    failures: Counter[str] = Counter()
    for p in parts:
        failures.update(p.failures)
    ok = sum(p.ok for p in parts)
    bytes_ok = sum(p.bytes_ok for p in parts)
    wall = max(max(p.last_end for p in parts) - min(p.first_start for p in parts), 1e-9)
    return {"clients": clients, "ok": ok, "failed": clients - ok, "failures": dict(failures),
            "bytes_ok": bytes_ok, "wall": wall, "mbps": bytes_ok / wall / 1e6,
            "p50": quantile(durations, 0.50), "p95": quantile(durations, 0.95),
            "sha_checked": sum(p.sha_checked for p in parts), "gen_cpu": sum(p.cpu for p in parts)}


def _worker_main(run_worker: Callable[..., WorkerTally], spec: Any, count: int, first_index: int,
                 ready: multiprocessing.synchronize.Barrier, conn: multiprocessing.connection.Connection,
                 cpu: int | None) -> None:
    try:
        conn.send(run_worker(spec, count, first_index, ready, cpu))
    except BaseException as exc:  # reported to the parent, which decides
        try:
            ready.abort()
        except Exception:
            pass
        conn.send(exc)
    finally:
        conn.close()


def run_workers(run_worker: Callable[..., ResultT], spec: SpecT, clients: int, workers: int, *,
                cpus: list[int] | None = None, before_start: Any = None) -> list[ResultT]:
    """Run *clients* clients split over *workers* forked processes; return each worker's result.

    Args:
        run_worker: the generator's loop, run in each worker with (spec, count, first_index,
            ready, cpu); it waits on *ready* once its sockets exist, before its first packet.
        spec: what every client does (its ``deadline`` bounds the wait for the results).
        clients: total number of clients.
        workers: worker processes (at most *clients*).
        cpus: pin worker i to ``cpus[i % len(cpus)]``; None: no pinning.
        before_start: called in the parent once every worker has its sockets, just before the
            first packet leaves (e.g. to read the server's CPU counters).

    Raises:
        RuntimeError: a worker did not start, did not report in time, or failed.
    """
    workers = max(1, min(workers, clients))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(workers + 1)
    procs = []
    conns = []
    index = 0
    for w in range(workers):
        count = clients // workers + (1 if w < clients % workers else 0)
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        cpu = cpus[w % len(cpus)] if cpus else None
        proc = ctx.Process(target=_worker_main, args=(run_worker, spec, count, index, ready, child_conn, cpu),
                           daemon=True)
        proc.start()
        child_conn.close()
        procs.append(proc)
        conns.append(parent_conn)
        index += count
    try:
        try:
            ready.wait(timeout=60)
        except Exception as exc:
            raise RuntimeError("load generator workers did not start") from exc
        if before_start is not None:
            before_start()
        parts: list[ResultT] = []
        for conn in conns:
            if not conn.poll(spec.deadline + 30):
                raise RuntimeError("a load generator worker did not report")
            item = conn.recv()
            if isinstance(item, BaseException):
                raise RuntimeError(f"load generator worker failed: {item!r}") from item
            parts.append(item)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return parts


def parse_size(text: str) -> int:
    """``1M`` -> 1048576 (K, M, G are powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def file_digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of the file at *path*, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options every generator run alone takes: what to expect, how many clients
    in how many workers."""
    parser.add_argument("--local", help="local copy of the file (size and sha256 taken from it)")
    parser.add_argument("--size", help="expected size (with K/M/G), when --local is not given")
    parser.add_argument("--sha256", default="", help="expected sha256, when --local is not given")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)


def expected_file(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, str]:
    """(size, sha256) from ``--local`` or ``--size``/``--sha256`` (sha256 may be ""); exits with a
    usage error when neither is given."""
    if args.local:
        return file_digest(args.local)
    if args.size:
        return parse_size(args.size), args.sha256
    parser.error("give --local or --size")
