"""A lean HTTP load generator: N concurrent downloads, one GET per connection, from a few
worker processes.

Each worker process (forked and collected by ``bench/loadgen.py``) runs one ``epoll`` loop over
its clients' sockets and no greenlets. Every client opens its own TCP connection (all at once:
the storm), sends one ``GET`` and reads the whole response with the shared sans-IO core
(``bench/httpcore.py``), then closes. Its time is from ``connect()`` to the last body byte; the
time to the first byte of the header is kept too (``ttfb``: the listen queue and the server's
accept loop show there).

Reading costs the generator as little as the kernel allows: a body framed by
``Content-Length`` that is not hashed is read with ``recv(..., MSG_TRUNC)``, which on a Linux
TCP socket drops the bytes without copying them to user space (tcp_recvmsg: the copy is
skipped when MSG_TRUNC is set), so the bytes are received, acknowledged and counted but not
copied. Every ``verify_every``-th client copies its body and checks its sha256; every client's
size is checked against the expected size (Content-Length and bytes received). ``--copy``
makes every client copy its body (what a real client does), for comparison.

A client that receives nothing for ``timeout`` seconds fails (``timeout``); a worker gives up
on everything left at ``deadline``. Counted: failures by reason (``connect errno``,
``status N``, the core's reasons), the sha256 checks done.

Used by ``bench/http_bench.py``; also runnable alone::

    python bench/http_client.py --url http://127.0.0.1:8080/bench-16M.bin --local /srv/bench-16M.bin \\
        --clients 500 --workers 2
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing.synchronize
import os
import select
import socket
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: F401

from bench import loadgen
from bench.httpcore import DONE, ResponseReader, request

_BUF = 4 << 20  # one receive buffer per worker; MSG_TRUNC reads never touch it
_TICK = 0.1  # seconds between timeout scans
_CONNECTING, _READING = 1, 2


@dataclass
class HttpLoadSpec:
    """What every client of one run does."""

    server: tuple[str, int]
    files: tuple[tuple[str, int, str], ...]  # (origin-form path, size, sha256); client i gets i % len
    verify_every: int = 10  # sha256 on client 0, N, 2N...; 0: never
    copy: bool = False  # copy every body to user space (no MSG_TRUNC)
    timeout: float = 30.0  # seconds without a byte before a client fails
    deadline: float = 300.0  # seconds for the whole run


@dataclass
class HttpWorkerResult(loadgen.WorkerTally):
    """What one worker measured; merged by :func:`merge`."""

    ttfb: list[float] = field(default_factory=list)
    bytes_in: int = 0  # every body byte received, failed downloads included


@dataclass
class HttpLoadResult:
    """The merged figures of one run."""

    clients: int
    ok: int
    failed: int
    failures: dict[str, int]
    bytes_ok: int
    bytes_in: int
    wall: float
    mbps: float  # 10^6 bytes per second, successful bytes over first connect .. last byte
    p50: float
    p95: float
    max: float
    ttfb_p95: float
    sha_checked: int
    gen_cpu: float  # CPU-seconds of all workers

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


class _Client:
    __slots__ = ("sock", "fd", "reader", "state", "start", "first", "end", "last", "reason", "hashed", "wire")

    def __init__(self, sock: socket.socket, reader: ResponseReader, hashed: bool, wire: bytes) -> None:
        self.sock = sock
        self.wire = wire
        self.fd = sock.fileno()
        self.reader = reader
        self.hashed = hashed
        self.state = _CONNECTING
        self.start = 0.0
        self.first = 0.0
        self.end = 0.0
        self.last = 0.0
        self.reason = ""


def run_worker(spec: HttpLoadSpec, count: int, first_index: int,
               ready: multiprocessing.synchronize.Barrier | None, cpu: int | None = None) -> HttpWorkerResult:
    """Run *count* downloads to completion in this process and return what was measured."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    buf = bytearray(_BUF)
    view = memoryview(buf)
    host = spec.server[0] if spec.server[1] == 80 else f"{spec.server[0]}:{spec.server[1]}"
    wires = [request("GET", path, host, headers=[("User-Agent", "massboot-http-bench")])
             for path, _size, _sha in spec.files]
    poller = select.epoll()
    clients: dict[int, _Client] = {}
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        index = first_index + i
        hashed = spec.verify_every > 0 and index % spec.verify_every == 0
        _path, size, sha = spec.files[index % len(spec.files)]
        reader = ResponseReader(size=size, sha256=sha if hashed and sha else None)
        c = _Client(sock, reader, hashed and bool(sha), wires[index % len(spec.files)])
        clients[c.fd] = c
    result = HttpWorkerResult()
    if ready is not None:
        ready.wait()
    times0 = os.times()
    clock = time.monotonic
    end_by = clock() + spec.deadline
    active = len(clients)

    def finish(c: _Client, reason: str = "") -> None:
        nonlocal active
        c.end = clock()
        c.reason = reason
        c.state = 0
        active -= 1
        poller.unregister(c.fd)
        c.sock.close()

    for c in clients.values():
        c.start = c.last = clock()
        rc = c.sock.connect_ex(spec.server)
        if rc not in (0, errno.EINPROGRESS):
            c.state = 0
            c.end = c.start
            c.reason = f"connect {errno.errorcode.get(rc, rc)}"
            active -= 1
            c.sock.close()
            continue
        poller.register(c.fd, select.EPOLLOUT)
    trunc = socket.MSG_TRUNC
    copy = spec.copy
    next_scan = clock() + _TICK
    while active:
        events = poller.poll(_TICK)
        now = clock()
        for fd, _ev in events:
            c = clients[fd]
            if c.state == _CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, f"connect {errno.errorcode.get(err, err)}")
                    continue
                try:
                    c.sock.send(c.wire)  # a few dozen bytes: an empty send buffer takes them whole
                except OSError as exc:
                    finish(c, f"send {errno.errorcode.get(exc.errno or 0, exc.errno)}")
                    continue
                c.state = _READING
                c.last = now
                poller.modify(fd, select.EPOLLIN)
                continue
            reader = c.reader
            try:
                skip = 0 if copy else reader.skippable()
                if skip:
                    n = c.sock.recv_into(buf, min(skip, _BUF), trunc)
                    if n:
                        reader.skipped(n)
                    else:
                        reader.eof()
                else:
                    n = c.sock.recv_into(buf)
                    if n:
                        if not c.first:
                            c.first = now
                        before = reader.received
                        reader.feed(view[:n])
                        n = reader.received - before
                    else:
                        reader.eof()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                finish(c, f"recv {errno.errorcode.get(exc.errno or 0, exc.errno)}")
                continue
            result.bytes_in += n
            c.last = now
            if reader.finished:
                if reader.state != DONE:
                    finish(c, f"closed: {reader.detail}" if reader.reason == "closed" else reader.reason)
                elif reader.status != 200:
                    finish(c, f"status {reader.status}")
                else:
                    finish(c)
        if now >= next_scan:
            next_scan = now + _TICK
            if now >= end_by:
                for c in list(clients.values()):
                    if c.state:
                        finish(c, "deadline")
                break
            for c in list(clients.values()):
                if c.state and now - c.last > spec.timeout:
                    finish(c, "timeout")
    result.cpu = loadgen.cpu_since(times0)
    poller.close()
    for c in clients.values():
        ok = c.reason == "" and c.reader.state == DONE
        result.count(ok=ok, size=c.reader.received, start=c.start, end=c.end, hashed=c.hashed,
                     reason=c.reason)
        if ok:
            result.ttfb.append((c.first or c.end) - c.start)
    return result


def merge(parts: list[HttpWorkerResult], clients: int) -> HttpLoadResult:
    """Merge the workers' results into one set of figures."""
    return HttpLoadResult(
        **loadgen.common_figures(parts, clients), bytes_in=sum(p.bytes_in for p in parts),
        max=max((d for p in parts for d in p.durations), default=float("nan")),
        ttfb_p95=loadgen.quantile([t for p in parts for t in p.ttfb], 0.95))


def run_load(spec: HttpLoadSpec, clients: int, workers: int, *, cpus: list[int] | None = None,
             before_start: Any = None) -> HttpLoadResult:
    """Run *clients* downloads split over *workers* forked processes; return merged figures.

    Args:
        spec: what every client does.
        clients: total number of downloads (all started at once).
        workers: worker processes (at most *clients*).
        cpus: pin worker i to ``cpus[i % len(cpus)]``; None: no pinning.
        before_start: called in the parent once every worker has its sockets, just before the
            first connect (e.g. to read the server's CPU counters).
    """
    parts = loadgen.run_workers(run_worker, spec, clients, workers, cpus=cpus, before_start=before_start)
    return merge(parts, clients)


def spec_from_url(url: str, size: int, sha256: str, **kwargs: Any) -> HttpLoadSpec:
    """An :class:`HttpLoadSpec` for ``http://HOST[:PORT]/PATH`` (one file)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return HttpLoadSpec((parts.hostname, parts.port or 80), ((path, size, sha256),), **kwargs)


def main() -> int:
    """Run the generator alone against a server that is already running."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://HOST:PORT/PATH to download")
    loadgen.add_file_arguments(parser)
    parser.add_argument("--verify-every", type=int, default=10, help="sha256 on every Nth client")
    parser.add_argument("--copy", action="store_true", help="copy every body to user space (no MSG_TRUNC)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without a byte before failing")
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    size, sha = loadgen.expected_file(parser, args)
    spec = spec_from_url(args.url, size, sha, verify_every=args.verify_every if sha else 0, copy=args.copy,
                         timeout=args.timeout, deadline=args.deadline)
    res = run_load(spec, args.clients, args.workers)
    print(f"{res.ok}/{res.clients} ok, {res.mbps:.1f} MB/s, p50 {res.p50 * 1000:.1f} ms, "
          f"p95 {res.p95 * 1000:.1f} ms, ttfb p95 {res.ttfb_p95 * 1000:.1f} ms, failures {res.failures}, "
          f"sha256 checked {res.sha_checked}, generator CPU {res.gen_cpu:.2f} s")
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
