"""A lean TFTP load generator: N concurrent read transfers from a few worker processes.

Each worker process (forked and collected by ``bench/loadgen.py``) runs one ``epoll`` loop over
its clients' sockets (one UDP socket, so one TID, per client) and no greenlets: per DATA block
the cost is one ``recv_into``, one call of the shared sans-IO client (``bench/tftpcore.py``,
which holds the protocol) and, when an ACK is due, one ``send``. Once the server's first answer
has told a client the server's TID its socket is ``connect``-ed, so the kernel filters strangers
and no address tuple is built per packet.

Every client: RRQ (octet, ``blksize``, ``tsize 0``, optionally ``windowsize``), ACK 0 of the
OACK, DATA received in order and acknowledged (every block in lock-step, the last block of
each window with RFC 7440), the size checked against the expected size and the OACK's
``tsize``, the sha256 checked on every ``verify_every``-th client. A client that hears nothing
new for ``timeout`` seconds resends its RRQ or the ACK of its last block in order, ``retries``
times at most, then counts as failed; a worker also gives up on everything left at
``deadline``. With ``spin`` the loop busy-polls instead of sleeping, so that a single stream
measured across two CPUs is not limited by the cost of waking the client for every datagram.
A finished client keeps its socket until its worker ends and re-ACKs a retransmitted last block (dallying).

Counted: failures (by reason), the client's own resends, and duplicate DATA received (the
server's retransmissions as the client sees them).

The same clients compiled (``bench/tftp_gen.c``, lock-step only): :func:`compile_generator`
builds it with the system's ``cc``, ``LoadSpec.generator`` names the executable, and each worker
process then runs one of it (:func:`run_worker_compiled`) instead of the loop above, for a
fraction of the CPU per block: on a small machine a storm then measures the server, not the
generator (README "The storm's last percent"). It compares every byte of every
``verify_every``-th client with ``LoadSpec.local`` instead of hashing it.

Used by ``bench/tftp_bench.py``; also runnable alone::

    python bench/tftp_client.py --server 127.0.0.1:6969 --file 1M.bin --size 1048576 \\
        --clients 500 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing.synchronize
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: F401

from bench import loadgen
from bench.tftpcore import DONE, FAILED, ReadClient

parse_size = loadgen.parse_size  # bench/tftp_bench.py imports it from here

_RECV_BUF = 65536 + 4
_TICK = 0.05  # seconds between timeout scans


@dataclass
class LoadSpec:
    """What every client of one run does."""

    server: tuple[str, int]
    filename: str
    size: int
    sha256: str
    blksize: int = 1428
    windowsize: int = 1  # 1: no windowsize option sent
    tsize: bool = True
    verify_every: int = 10  # sha256 on client 0, N, 2N...; 0: never
    timeout: float = 1.0
    retries: int = 5
    deadline: float = 120.0  # seconds for the whole run
    spin: bool = False  # busy-poll instead of sleeping in epoll (one pinned client on its own CPU)
    sources: int = 1  # clients send from 127.0.0.1 .. 127.0.0.N in turn (server on 127.x only)
    generator: str = ""  # the compiled generator (compile_generator()); "": this module's loop
    local: str = ""  # a local copy of the file: the compiled generator compares blocks with it


@dataclass
class WorkerResult(loadgen.WorkerTally):
    """What one worker measured; merged by :func:`merge`."""

    client_resends: int = 0
    dup_data: int = 0
    windowsize_agreed: list[int] = field(default_factory=list)
    sleeps: int = 0  # voluntary context switches during the run (waits with nothing to read)
    preempted: int = 0  # involuntary ones (another task took its CPU)


@dataclass
class LoadResult:
    """The merged figures of one run."""

    clients: int
    ok: int
    failed: int
    failures: dict[str, int]
    bytes_ok: int
    wall: float
    mbps: float  # 10^6 bytes per second, successful bytes over first RRQ .. last block
    p50: float
    p95: float
    client_resends: int
    dup_data: int
    sha_checked: int
    windowsize: int  # the most common window the server agreed to
    gen_cpu: float  # CPU-seconds of all workers
    gen_sleeps: int = 0  # the workers' voluntary context switches (waits for a datagram)
    gen_preempted: int = 0  # their involuntary ones (preempted)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


class _Client:
    __slots__ = ("sock", "recv_into", "send", "core", "hashed", "ended", "start", "end", "reason")

    def __init__(self, sock: socket.socket, core: ReadClient, hashed: bool) -> None:
        self.sock = sock
        self.recv_into = sock.recv_into
        self.send = sock.send
        self.core = core
        self.hashed = hashed
        self.ended = False  # counted as finished by this worker (the core may still dally)
        self.start = 0.0
        self.end = 0.0
        self.reason = ""


def request_options(spec: LoadSpec) -> dict[str, str]:
    """The RRQ options every client sends, in order."""
    options = {"blksize": str(spec.blksize)}
    if spec.tsize:
        options["tsize"] = "0"
    if spec.windowsize > 1:
        options["windowsize"] = str(spec.windowsize)
    return options


def failure(core: ReadClient) -> str:
    """The failure of a transfer as this generator counts it (``timeout``, ``error <message>``...)."""
    reason = core.reason or "unknown"
    if reason == "error":
        return "error " + core.error_message
    if reason in ("blksize", "tsize", "opcode"):
        return f"{reason} {core.detail}"
    return {"no_oack": "no OACK", "bad_oack": "bad OACK"}.get(reason, reason)


def run_worker(spec: LoadSpec, count: int, first_index: int,
               ready: multiprocessing.synchronize.Barrier | None, cpu: int | None = None) -> WorkerResult:
    """Run *count* clients to completion in this process and return what was measured.

    Args:
        spec: what every client does.
        count: clients in this worker.
        first_index: global index of this worker's first client (picks the sha256 sample).
        ready: barrier shared with the parent; passed once the sockets exist, before any RRQ.
        cpu: pin this process to that CPU, or None.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    buf = bytearray(_RECV_BUF)
    view = memoryview(buf)
    options = request_options(spec)
    waits = (spec.timeout,) * (spec.retries + 1)  # the first wait, then one per resend
    poller = select.epoll()
    clients: dict[int, _Client] = {}
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        index = first_index + i
        local = spec.server[0].startswith("127.")
        if local and spec.sources > 1:   # several source addresses: the steering of SO_REUSEPORT
            sock.bind((f"127.0.0.{1 + index % spec.sources}", 0))   # workers (massboot processes)
        else:
            sock.bind((spec.server[0] if local else "0.0.0.0", 0))
        sock.setblocking(False)
        hashed = spec.verify_every > 0 and index % spec.verify_every == 0
        core = ReadClient(spec.filename, options, waits=waits, size=spec.size,
                          sha256=spec.sha256 if hashed else None, require_oack=True)
        clients[sock.fileno()] = _Client(sock, core, hashed)
        poller.register(sock.fileno(), select.EPOLLIN)
    result = WorkerResult()
    if ready is not None:
        ready.wait()
    times0 = os.times()
    switches0 = loadgen.switches()
    clock = time.monotonic
    now = clock()
    end_by = now + spec.deadline
    for c in clients.values():
        c.start = clock()
        c.sock.sendto(c.core.start(c.start), spec.server)
    active = len(clients)
    next_scan = now + _TICK
    wait = 0 if spec.spin else _TICK

    def finish(c: _Client, reason: str = "") -> None:
        nonlocal active
        c.ended = True
        c.end = clock()
        c.reason = reason
        active -= 1

    while active:
        events = poller.poll(wait)
        now = clock()
        for fd, _ev in events:
            c = clients[fd]
            core = c.core
            if not core.answered:  # the server's first answer: learn its TID
                try:
                    n, peer = c.sock.recvfrom_into(buf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # ICMP port unreachable: no server
                    finish(c, f"socket error {exc.errno}")
                    continue
                reply = core.on_packet(view, n, now)
                if core.state == FAILED:
                    finish(c, failure(core))
                elif core.answered:
                    c.sock.connect(peer)
                    result.windowsize_agreed.append(core.windowsize)
                    if reply is not None:
                        c.send(reply)
                continue
            recv_into = c.recv_into
            # Lock-step: one datagram per event (the next cannot be there before our ACK, and
            # epoll is level-triggered), so no EAGAIN round trip; windows: drain up to a window.
            for _ in range(core.windowsize):
                try:
                    n = recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if not c.ended:
                        finish(c, f"socket error {exc.errno}")
                    break
                reply = core.on_packet(view, n, now)
                if reply is not None:
                    c.send(reply)
                if core.state >= DONE and not c.ended:
                    finish(c, "" if core.state == DONE else failure(core))
                    break
        if now >= next_scan:
            next_scan = now + _TICK
            if now >= end_by:
                for c in clients.values():
                    if not c.ended:
                        finish(c, "deadline")
                break
            for c in clients.values():
                core = c.core
                if not c.ended and now >= core.deadline:
                    again = core.on_timeout(now)
                    if again is None:
                        finish(c, failure(core))
                        continue
                    try:
                        if core.answered:
                            c.send(again)
                        else:
                            c.sock.sendto(again, spec.server)
                    except OSError:
                        pass
    # Dally briefly so that a final ACK lost on the way gets resent by the server and answered.
    linger_until = clock() + 0.02
    while clock() < linger_until:
        for fd, _ev in poller.poll(0.01):
            c = clients[fd]
            try:
                while True:
                    n = c.recv_into(buf)
                    reply = c.core.on_packet(view, n, clock())
                    if reply is not None and c.core.state == DONE:
                        c.send(reply)
            except OSError:
                pass
    result.cpu = loadgen.cpu_since(times0)
    voluntary, involuntary = loadgen.switches()
    result.sleeps, result.preempted = voluntary - switches0[0], involuntary - switches0[1]
    for c in clients.values():
        core = c.core
        result.client_resends += core.resends
        result.dup_data += core.duplicates + core.oack_repeats
        result.count(ok=core.state == DONE and c.reason == "", size=core.received, start=c.start, end=c.end,
                     hashed=c.hashed, reason=c.reason)
        poller.unregister(c.sock.fileno())
        c.sock.close()
    poller.close()
    return result


GENERATOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tftp_gen.c")


def compile_generator(directory: str) -> str:
    """Build ``bench/tftp_gen.c`` (the same clients as :func:`run_worker`, compiled) into
    *directory* with the system's C compiler (``$CC``, else ``cc``); the executable's path.

    Raises:
        RuntimeError: no compiler, or it failed (its output in the message).
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler for the compiled generator (apt-get install gcc)")
    path = os.path.join(directory, "tftp_gen")
    done = subprocess.run([cc, "-O2", "-Wall", "-o", path, GENERATOR_SOURCE], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cc} could not build {GENERATOR_SOURCE}:\n{done.stderr[-2000:]}")
    return path


def generator_command(spec: LoadSpec, count: int, first_index: int) -> list[str]:
    """The compiled generator's command line for *count* clients from *first_index*."""
    if spec.windowsize > 1:
        raise ValueError("the compiled generator runs lock-step transfers only (windowsize 1)")
    command = [spec.generator, "-s", spec.server[0], "-p", str(spec.server[1]), "-f", spec.filename,
               "-z", str(spec.size), "-n", str(count), "-i", str(first_index), "-b", str(spec.blksize),
               "-t", repr(spec.timeout), "-r", str(spec.retries), "-d", repr(spec.deadline),
               "-S", str(spec.sources)]
    if not spec.tsize:
        command.append("-T")
    if spec.spin:
        command.append("-P")
    if spec.verify_every > 0 and spec.local:
        command += ["-v", str(spec.verify_every), "-l", spec.local]
    return command


def parse_generator_output(text: str) -> WorkerResult:
    """The compiled generator's report (see ``bench/tftp_gen.c``) as a :class:`WorkerResult`.

    Raises:
        RuntimeError: the report is incomplete (no ``end`` line, or no ``cpu`` line).
    """
    result = WorkerResult()
    cpu_seen = False
    lines = text.splitlines()
    if not lines or lines[-1] != "end":
        raise RuntimeError(f"the compiled generator's report is incomplete: {text[-500:]!r}")
    for line in lines[:-1]:
        kind, _, rest = line.partition(" ")
        if kind == "c":
            fields = rest.split(" ", 8)
            _index, ok, start, end, received, resends, dups, checked = fields[:8]
            reason = fields[8] if len(fields) > 8 else ""
            result.client_resends += int(resends)
            result.dup_data += int(dups)
            if ok == "1":
                result.windowsize_agreed.append(1)   # lock-step: no windowsize option is sent
            result.count(ok=ok == "1" and not reason, size=int(received), start=float(start), end=float(end),
                         hashed=checked == "1", reason=reason)
        elif kind == "cpu":
            cpu, sleeps, preempted = rest.split()
            result.cpu, result.sleeps, result.preempted = float(cpu), int(sleeps), int(preempted)
            cpu_seen = True
    if not cpu_seen:
        raise RuntimeError("the compiled generator's report has no cpu line")
    return result


def run_worker_compiled(spec: LoadSpec, count: int, first_index: int,
                        ready: multiprocessing.synchronize.Barrier | None,
                        cpu: int | None = None) -> WorkerResult:
    """:func:`run_worker`'s clients run by the compiled generator (``spec.generator``): started
    here (pinned to *cpu* with this process), released by *ready* with the other workers."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    proc = subprocess.Popen(generator_command(spec, count, first_index), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line != "ready\n":
            raise RuntimeError(f"the compiled generator did not start (exit {proc.wait()}): {line!r}")
        if ready is not None:
            ready.wait()
        proc.stdin.write("go\n")
        proc.stdin.close()
        out = proc.stdout.read()
        if proc.wait() != 0:
            raise RuntimeError(f"the compiled generator exited with {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse_generator_output(out)


def merge(parts: list[WorkerResult], clients: int) -> LoadResult:
    """Merge the workers' results into one set of figures."""
    windows = Counter(w for p in parts for w in p.windowsize_agreed)
    return LoadResult(
        **loadgen.common_figures(parts, clients),
        client_resends=sum(p.client_resends for p in parts),
        dup_data=sum(p.dup_data for p in parts),
        windowsize=windows.most_common(1)[0][0] if windows else 0,
        gen_sleeps=sum(p.sleeps for p in parts),
        gen_preempted=sum(p.preempted for p in parts),
    )


def run_load(spec: LoadSpec, clients: int, workers: int, *, cpus: list[int] | None = None,
             before_start: Any = None) -> LoadResult:
    """Run *clients* transfers split over *workers* forked processes; return merged figures.

    Args:
        spec: what every client does.
        clients: total number of clients.
        workers: worker processes (at most *clients*).
        cpus: pin worker i to ``cpus[i % len(cpus)]``; None: no pinning.
        before_start: called in the parent once every worker has its sockets, just before the
            first RRQ leaves (e.g. to read the server's CPU counters).
    """
    worker = run_worker_compiled if spec.generator else run_worker
    parts = loadgen.run_workers(worker, spec, clients, workers, cpus=cpus, before_start=before_start)
    return merge(parts, clients)


def main() -> int:
    """Run the generator alone against a server that is already running."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:69", help="HOST:PORT of the TFTP server")
    parser.add_argument("--file", required=True, help="name to request")
    loadgen.add_file_arguments(parser)
    parser.add_argument("--blksize", type=int, default=1428)
    parser.add_argument("--windowsize", type=int, default=1)
    parser.add_argument("--verify-every", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--spin", action="store_true",
                        help="poll without sleeping (each worker keeps its CPU busy; pin it with taskset)")
    parser.add_argument("--compiled", action="store_true",
                        help="run the clients compiled (bench/tftp_gen.c, built with cc; lock-step only); "
                             "with --local, every --verify-every-th client's bytes are compared with it")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    size, sha = loadgen.expected_file(parser, args)
    spec = LoadSpec((host, int(port)), args.file, size, sha, blksize=args.blksize,
                    windowsize=args.windowsize, verify_every=args.verify_every if sha else 0,
                    timeout=args.timeout, retries=args.retries, deadline=args.deadline,
                    local=args.local or "", spin=args.spin)
    with tempfile.TemporaryDirectory(prefix="tftp-gen-") as build:
        if args.compiled:
            if args.windowsize > 1:
                parser.error("--compiled runs lock-step transfers only (no --windowsize)")
            try:
                spec.generator = compile_generator(build)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
        res = run_load(spec, args.clients, args.workers)
    checked = "bytes compared" if args.compiled else "sha256 checked"
    print(f"{res.ok}/{res.clients} ok, {res.mbps:.1f} MB/s, p50 {res.p50 * 1000:.1f} ms, "
          f"p95 {res.p95 * 1000:.1f} ms, failures {res.failures}, client resends {res.client_resends}, "
          f"dup DATA {res.dup_data}, {checked} {res.sha_checked}, window {res.windowsize}, "
          f"generator CPU {res.gen_cpu:.2f} s, sleeps {res.gen_sleeps}, preempted {res.gen_preempted}")
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
