"""TFTP servers side by side: massboot against dnsmasq, tftpd-hpa, atftpd, tftpy (issue 3).

One run measures every server the same way, one after the other and round after round, each
server taking each slot in turn (so a noisy neighbour hurts them all alike), on 127.0.0.1 with
the same files:

* **PXE storm**: ``--clients`` concurrent clients each fetch the ``--size`` file with
  ``blksize 1428`` and ``tsize`` (the PXE ROM shape), lock-step. Figures: aggregate MB/s
  (10^6 bytes/s, first RRQ to last block), failures, p50/p95 transfer time, the server's
  CPU-seconds per 100 MB (10^8 bytes) and the load generator's. No pinning by default;
  ``--pin-storm`` puts the server on CPU 0 and the generator on the others.
* **Single stream**: one client, ``blksize 1428`` and ``windowsize 16``, fetching the
  ``--stream-size`` file, server pinned to CPU 0 and client to CPU 1; the client busy-polls, so
  that waking it for every datagram across CPUs does not set the pace.

Server CPU is utime+stime from ``/proc/PID/stat`` (every thread) before and after the load,
plus the exited children's from the kernel's taskstats records: tftpd-hpa forks a process per
transfer and ignores SIGCHLD, so its children never reach its ``cutime``. Each storm round
also counts how often the server process slept (its threads' voluntary context switches) and
the machine's context switches and wake-up interrupts (RES and CAL in ``/proc/interrupts``):
``sched_counters()``, per round and per 100 MB in the table.

dnsmasq 2.90's TFTP port is fixed at 69, so by default the whole run (servers and load
generator) happens inside a private network namespace this script creates and removes: every
server then listens on port 69 of the namespace's own 127.0.0.1 and nothing touches the host's
port 69. ``--no-netns`` runs on the host's loopback with a free unprivileged port, without
dnsmasq. ``--extra-server NAME=COMMAND`` adds any other server (a prototype);
``--massboot-tree NAME=PATH`` adds massboot from another checkout with the same config (a
before/after pair: ``git worktree add ../main main``, then ``--massboot-tree main=../main``).
``massboot`` runs the compiled data path (``[tftpd] fast_path = on``), ``massboot-python``
the same checkout with ``fast_path = off``. ``massboot-pN`` in ``--servers`` is massboot (compiled
data path) with ``[tftpd] processes = N`` (its CPU counts its worker processes'); give
``--sources N`` too, so that the clients send from 127.0.0.1 .. 127.0.0.N and the source-address
steering spreads them over the workers (every server of the run gets the same clients).

The load generator (``bench/tftp_client.py``) is a few forked processes, each one epoll loop
over its clients' sockets: no greenlets. ``--gen-check`` re-runs the storm against the fastest
server with 1, 2, 3 and 4 worker processes to show whether the generator limits the figures.

``--profile FILE`` runs one extra storm against massboot under cProfile (clock: the main
thread's CPU time) and prints the top functions by self time; ``--py-spy FILE`` samples massboot
with py-spy (``pip install py-spy``) during one extra storm, without cProfile's slowdown, and
prints the top frames by self and inclusive samples.

    python bench/tftp_bench.py --clients 500 --size 1M --servers massboot,dnsmasq,tftpd-hpa --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import pstats
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: F401

from bench import loadgen, paired  # noqa: E402
from bench.proctree import stop_process  # noqa: E402
from bench.tftp_client import LoadResult, LoadSpec, compile_generator, parse_size, run_load  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # servers run from here

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000
ALL_SERVERS = ("massboot", "massboot-python", "dnsmasq", "tftpd-hpa", "atftpd", "tftpy")
# massboot-python: this checkout with [tftpd] fast_path = off (the pure-Python data path), to
# compare with massboot's compiled one (fast_path = on) in the same run (README, Performance)
FAST_PATH = {"massboot": "on", "massboot-python": "off"}

# Every load-generator client sends from 127.0.0.1: the per-address cap ([tftpd]
# max_per_client, 8 by default, README) is lifted, as the other servers have none.
MASSBOOT_CONFIG = """\
[logger]
level = warning
[tftpd]
address = 127.0.0.1
port = {port}
root = {root}
max_per_client = 100000
processes = {processes}
"""

# massboot from another checkout, first on sys.path (before this checkout and PYTHONPATH)
TREE_MASSBOOT = """\
import runpy, sys
sys.path.insert(0, sys.argv.pop(1))
runpy.run_module("massboot", run_name="__main__", alter_sys=True)
"""

# massboot under cProfile with a chosen clock: "cpu" (the main thread's CPU time, where the hub
# and every transfer greenlet run) shows where the CPU goes; "wall" (cProfile's default) also
# charges a function for the time the process was preempted inside it, e.g. in sendto() when
# waking the receiver hands the CPU over to it.
PROFILED_MASSBOOT = """\
import cProfile, runpy, sys, time
out, clock = sys.argv[1], sys.argv[2]
sys.argv = ["massboot", *sys.argv[3:]]
prof = cProfile.Profile(time.thread_time) if clock == "cpu" else cProfile.Profile()
prof.enable()
try:
    runpy.run_module("massboot", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""

TFTPY_SERVER = """\
import logging, sys, tftpy
logging.getLogger("tftpy").setLevel(logging.ERROR)
tftpy.TftpServer(sys.argv[1]).listen(sys.argv[2], int(sys.argv[3]))
"""


def size_label(size: int) -> str:
    """1048576 -> ``1M``."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def proc_cpu(pid: int, children: bool = True) -> tuple[float, float]:
    """(user, system) CPU-seconds of *pid* (all its threads), plus its reaped children's when *children*."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return float("nan"), float("nan")
    fields = [int(x) for x in stat[stat.rindex(")") + 2:].split()[11:15]]
    # fields[0] above is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    user, system = fields[0], fields[1]
    if children:
        user, system = user + fields[2], system + fields[3]
    return user / CLK_TCK, system / CLK_TCK


def sched_counters(pid: int) -> dict[str, int]:
    """Scheduling counters around a run (a storm's round): ``sleeps``, the voluntary context
    switches of *pid*'s threads (each a wait for work, e.g. an event loop with nothing ready);
    ``ctxt``, the machine's context switches (``/proc/stat``); ``ipi``, the machine's
    rescheduling and function-call interrupts (``/proc/interrupts`` RES and CAL, every CPU:
    most are one CPU waking a task that sleeps on another). The machine's figures count every
    process: read them on a quiet machine."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    # a thread that ended meanwhile counts 0
    sleeps = sum(loadgen.switches(f"/proc/{pid}/task/{tid}/status")[0] for tid in tasks)
    ctxt = ipi = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("ctxt "):
                ctxt = int(line.split()[1])
    with open("/proc/interrupts") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in ("RES:", "CAL:"):
                ipi += sum(int(x) for x in fields[1:] if x.isdigit())
    return {"sleeps": sleeps, "ctxt": ctxt, "ipi": ipi}


class ExitAccounting:
    """CPU time of exited processes, by parent pid, from the kernel's taskstats (genetlink).

    tftpd-hpa forks a process per transfer and ignores SIGCHLD, so its children are reaped
    by the kernel and their CPU never reaches its ``cutime``: the kernel's per-exit taskstats
    record (exact utime+stime, in microseconds) is the way to count them. Taskstats answers
    only in the initial network namespace: create this before entering another one.
    """

    _GENL_ID_CTRL, _CTRL_CMD_GETFAMILY, _CTRL_ATTR_FAMILY_ID, _CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
    _TASKSTATS_CMD_GET, _ATTR_REGISTER_CPUMASK = 1, 3
    _TYPE_STATS, _TYPE_AGGR_PID = 3, 4

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind((0, 0))
            family = self._family()
            ncpu = os.cpu_count() or 1
            mask = self._attr(self._ATTR_REGISTER_CPUMASK, f"0-{ncpu - 1}\0".encode())
            self._sock.send(self._message(family, self._TASKSTATS_CMD_GET, mask))
        except BaseException:
            self._sock.close()
            raise
        self._lock = threading.Lock()
        self._user: collections.Counter[int] = collections.Counter()
        self._system: collections.Counter[int] = collections.Counter()
        self.lost = False
        threading.Thread(target=self._read, name="taskstats", daemon=True).start()

    @staticmethod
    def _attr(kind: int, data: bytes) -> bytes:
        length = 4 + len(data)
        return struct.pack("HH", length, kind) + data + b"\0" * (-length % 4)

    @staticmethod
    def _message(family: int, cmd: int, attrs: bytes) -> bytes:
        payload = struct.pack("BBH", cmd, 1, 0) + attrs
        return struct.pack("IHHII", 16 + len(payload), family, 1, 1, 0) + payload  # NLM_F_REQUEST

    @staticmethod
    def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
        while offset + 4 <= end:
            length, kind = struct.unpack_from("HH", data, offset)
            if length < 4:
                return
            yield kind & 0x3FFF, offset + 4, offset + length
            offset += (length + 3) & ~3

    def _family(self) -> int:
        self._sock.settimeout(2)
        self._sock.send(self._message(self._GENL_ID_CTRL, self._CTRL_CMD_GETFAMILY,
                                      self._attr(self._CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")))
        data = self._sock.recv(65536)
        self._sock.settimeout(None)
        for kind, start, _end in self._attrs(data, 20, len(data)):
            if kind == self._CTRL_ATTR_FAMILY_ID:
                return struct.unpack_from("H", data, start)[0]
        raise OSError("no TASKSTATS genetlink family")

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS: records were dropped
                    self.lost = True
                    continue
                return
            offset = 0
            while offset + 16 <= len(data):
                length = struct.unpack_from("I", data, offset)[0]
                if length < 16:
                    break
                for kind, start, end in self._attrs(data, offset + 20, offset + length):
                    if kind != self._TYPE_AGGR_PID:
                        continue
                    for inner, istart, _iend in self._attrs(data, start, end):
                        if inner == self._TYPE_STATS:
                            # struct taskstats: ac_ppid at 132, ac_utime and ac_stime (µs) at 152.
                            ppid = struct.unpack_from("I", data, istart + 132)[0]
                            utime, stime = struct.unpack_from("QQ", data, istart + 152)
                            with self._lock:
                                self._user[ppid] += utime
                                self._system[ppid] += stime
                offset += (length + 3) & ~3

    def children(self, pid: int) -> tuple[float, float]:
        """(user, system) CPU-seconds of the exited children of *pid* seen so far."""
        with self._lock:
            return self._user[pid] / 1e6, self._system[pid] / 1e6


def live_children(pid: int) -> list[int]:
    """The running children of *pid* (``/proc/PID/task/*/children``)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def server_cpu(pid: int, exits: ExitAccounting | None, live: bool = False) -> tuple[float, float]:
    """The server's (user, system) CPU-seconds: its threads, plus its exited children, plus
    with *live* its running children's own (massboot's TFTP worker processes)."""
    if exits is None:
        user, system = proc_cpu(pid)
    else:
        user, system = proc_cpu(pid, children=False)
        child_user, child_system = exits.children(pid)
        user, system = user + child_user, system + child_system
    if live:
        for child in live_children(pid):
            child_user, child_system = proc_cpu(child, children=False)
            if child_user == child_user:     # not NaN: still there
                user, system = user + child_user, system + child_system
    return user, system


def free_port() -> int:
    """An unprivileged UDP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of *pid* (children forked later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server process."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def pid(self) -> int:
        """The process whose CPU counters are read."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (massboot stops gracefully, which also writes a cProfile), then SIGKILL."""
        stop_process(self.proc)


@dataclass
class Env:
    """Paths and settings shared by every server start."""

    root: str
    work: str
    port: int
    atftpd: str | None
    dnsmasq: str | None
    tftpd_hpa: str | None
    exits: ExitAccounting | None
    extra: dict[str, str] = field(default_factory=dict)  # name -> command with {root} and {port}
    trees: dict[str, str] = field(default_factory=dict)  # name -> another massboot checkout
    generator: str = ""  # the compiled storm generator (--generator c), "": the Python one


def massboot_processes(name: str) -> int | None:
    """``massboot-pN``: massboot with ``[tftpd] processes = N`` (README, "TFTP worker
    processes"); give ``--sources`` so that the clients reach every worker."""
    m = re.fullmatch(r"massboot-p(\d+)", name)
    return int(m.group(1)) if m else None


def server_command(name: str, env: Env, profile: str | None = None, clock: str = "cpu") -> list[str]:
    """The command line that runs *name* in the foreground on 127.0.0.1:env.port."""
    processes = massboot_processes(name)
    if processes:
        name = "massboot"
    if name in FAST_PATH or name in env.trees:
        config = os.path.join(env.work, "massboot.ini")
        with open(config, "w") as f:
            f.write(MASSBOOT_CONFIG.format(port=env.port, root=env.root, processes=processes or 1))
            if name in FAST_PATH:
                f.write(f"fast_path = {FAST_PATH[name]}\n")
        if name in env.trees:  # the same server and config from another checkout (before/after)
            return [sys.executable, "-c", TREE_MASSBOOT, env.trees[name], "-t", "-c", config]
        if profile:
            return [sys.executable, "-c", PROFILED_MASSBOOT, profile, clock, "-t", "-c", config]
        return [sys.executable, "-m", "massboot", "-t", "-c", config]
    if name == "dnsmasq":
        assert env.dnsmasq
        return [env.dnsmasq, "-k", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={env.root}", "--tftp-max=1000", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--pid-file=", "--quiet-tftp", "--log-facility=-", "--user=root"]
    if name == "tftpd-hpa":
        assert env.tftpd_hpa
        return [env.tftpd_hpa, "-L", "-s", env.root, "-a", f"127.0.0.1:{env.port}"]
    if name == "atftpd":
        assert env.atftpd
        return [env.atftpd, "--daemon", "--no-fork", "--port", str(env.port), "--bind-address",
                "127.0.0.1", "--user", "root", "--group", "root", "--logfile", "/dev/null",
                "--maxthread", "1000", env.root]
    if name == "tftpy":
        return [sys.executable, "-c", TFTPY_SERVER, env.root, "127.0.0.1", str(env.port)]
    if name in env.extra:
        return [part.format(root=env.root, port=env.port) for part in shlex.split(env.extra[name])]
    raise ValueError(f"unknown server {name}")


def available(name: str, env: Env, netns: bool) -> str | None:
    """Why *name* cannot run here, or None."""
    if name in env.extra or massboot_processes(name):
        return None
    if name in env.trees:
        tree = env.trees[name]
        return None if os.path.isfile(os.path.join(tree, "massboot", "__main__.py")) else \
            f"{tree} is not a massboot checkout"
    if name == "massboot":
        try:
            from massboot.tftp.server import fast_path_problem
        except ImportError:
            return None
        problem = fast_path_problem()   # not built, or built from older sources: which one
        if problem is not None:
            return (f"{problem} (in a checkout: python setup.py build_ext --inplace); "
                    "massboot-python still runs")
    if name == "dnsmasq":
        if not env.dnsmasq:
            return "dnsmasq not installed"
        if not netns and env.port != 69:
            return "dnsmasq 2.90 serves TFTP on port 69 only: needs the network namespace"
    if name == "tftpd-hpa" and not env.tftpd_hpa:
        return "in.tftpd not installed (apt-get install tftpd-hpa)"
    if name == "atftpd" and not env.atftpd:
        return "atftpd not found (--atftpd PATH)"
    if name == "tftpy":
        try:
            import tftpy  # noqa: F401
        except ImportError:
            return "tftpy not installed"
    return None


def probe(port: int, timeout: float) -> bool:
    """True once something answers an RRQ on 127.0.0.1:port (an ERROR for a missing file)."""
    rrq = b"\0\1no-such-file-probe\0octet\0"
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        while time.monotonic() < end:
            try:
                s.sendto(rrq, ("127.0.0.1", port))
                s.recvfrom(2048)
                return True
            except OSError:
                time.sleep(0.05)
    return False


def start_server(name: str, env: Env, profile: str | None = None, clock: str = "cpu") -> Server:
    """Start *name* and wait until it answers."""
    log_path = os.path.join(env.work, f"{name}.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen(server_command(name, env, profile, clock), cwd=REPO, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    log.close()
    server = Server(name, proc, env.port, log_path)
    if not probe(env.port, 20.0) or proc.poll() is not None:
        server.stop()
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{name} did not start:\n{tail}")
    return server


# ----------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One measured run against one server."""

    server: str
    kind: str  # "storm" or "stream"
    size: int
    round: int
    load: LoadResult
    server_cpu: float
    server_user: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def per_100mb(self, cpu: float) -> float:
        """CPU-seconds per 10^8 bytes served successfully."""
        return cpu / (self.load.bytes_ok / 1e8) if self.load.bytes_ok else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"server": self.server, "kind": self.kind, "size": self.size, "round": self.round,
                "server_cpu": self.server_cpu, "server_user": self.server_user,
                "server_cpu_per_100mb": self.per_100mb(self.server_cpu),
                "gen_cpu_per_100mb": self.per_100mb(self.load.gen_cpu),
                **self.load.as_dict(), **self.extra}


def measure(server: Server, spec: LoadSpec, clients: int, workers: int, exits: ExitAccounting | None,
            cpus: list[int] | None = None, sched: dict[str, int] | None = None,
            ) -> tuple[LoadResult, float, float]:
    """Run one load against *server*; return the figures and the server's CPU-seconds (all, user).
    With *sched*, fill it with what sched_counters() counted during the load."""
    before: list[tuple[float, float]] = []
    counted: list[dict[str, int]] = []
    live = server.name.startswith("massboot")   # its TFTP worker processes, while they run

    def start() -> None:
        before.append(server_cpu(server.pid, exits, live))
        if sched is not None:
            counted.append(sched_counters(server.pid))

    result = run_load(spec, clients, workers, cpus=cpus, before_start=start)
    if sched is not None:   # at the load's end, before the pause below
        after = sched_counters(server.pid)
        sched.update({key: after[key] - counted[0][key] for key in after})
    time.sleep(0.2)  # the server's last bookkeeping, its children's exits and their records
    user, system = server_cpu(server.pid, exits, live)
    return result, user + system - sum(before[0]), user - before[0][0]


def make_file(root: str, size: int, seed: int) -> tuple[str, str]:
    """Write a file of *size* pseudo-random bytes; return its name and sha256."""
    name = f"bench-{size_label(size)}.bin"
    rng = random.Random(seed)
    data = rng.randbytes(size)
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)
    os.chmod(os.path.join(root, name), 0o644)
    return name, hashlib.sha256(data).hexdigest()


def median(values: list[float]) -> float:
    """Median, NaN for no values."""
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- report


def storm_table(samples: list[Sample], sizes: list[int], names: list[str], clients: int, pinned: bool) -> str:
    """The PXE-storm table: medians over rounds."""
    lines = []
    head = (f"{'server':<10} {'size':>5} {'MB/s':>7} {'x mb':>6} {'ok':>9} {'fail':>5} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'srv CPU-s':>9} {'usr%':>5} {'gen CPU-s':>9} {'srv cores':>9} {'gen cores':>9} "
            f"{'resend':>6} {'dupDATA':>7} {'sleeps':>7} {'ipi':>7} {'gsleeps':>7} {'gpreempt':>8}")
    where = "server on CPU 0, generator on the others" if pinned else "no pinning"
    lines.append(f"PXE storm: {clients} clients, blksize 1428 + tsize, lock-step, {where}; "
                 "medians of rounds. "
                 "CPU-s per 100 MB (usr% = user share of the server's); x mb = MB/s / massboot's; "
                 "cores = CPU-s / wall; resend = client timeouts, dupDATA = server resends seen; "
                 "ok, resend and dupDATA summed over rounds; per 100 MB: sleeps = the server "
                 "process's voluntary context switches (not its children's), ipi = the machine's "
                 "wake-up interrupts (RES + CAL), gsleeps and gpreempt = the generator's voluntary "
                 "and involuntary context switches")
    lines.append(head)
    lines.append("-" * len(head))
    for size in sizes:
        base = median([s.load.mbps for s in samples if s.server == "massboot" and s.size == size
                       and s.kind == "storm"])
        for name in names:
            rows = [s for s in samples if s.server == name and s.size == size and s.kind == "storm"]
            if not rows:
                continue
            mbps = median([s.load.mbps for s in rows])
            ratio = mbps / base if base == base else float("nan")
            ok = sum(s.load.ok for s in rows)
            total = sum(s.load.clients for s in rows)
            lines.append(
                f"{name:<10} {size_label(size):>5} {mbps:7.1f} {ratio:6.2f} "
                f"{f'{ok}/{total}':>9} {total - ok:5d} {median([s.load.p50 for s in rows]) * 1e3:8.0f} "
                f"{median([s.load.p95 for s in rows]) * 1e3:8.0f} "
                f"{median([s.per_100mb(s.server_cpu) for s in rows]):9.2f} "
                f"{100 * median([s.server_user / s.server_cpu for s in rows if s.server_cpu]):5.0f} "
                f"{median([s.per_100mb(s.load.gen_cpu) for s in rows]):9.2f} "
                f"{median([s.server_cpu / s.load.wall for s in rows]):9.2f} "
                f"{median([s.load.gen_cpu / s.load.wall for s in rows]):9.2f} "
                f"{sum(s.load.client_resends for s in rows):6d} {sum(s.load.dup_data for s in rows):7d} "
                f"{median([s.per_100mb(s.extra.get('sleeps', math.nan)) for s in rows]):7.0f} "
                f"{median([s.per_100mb(s.extra.get('ipi', math.nan)) for s in rows]):7.0f} "
                f"{median([s.per_100mb(s.load.gen_sleeps) for s in rows]):7.0f} "
                f"{median([s.per_100mb(s.load.gen_preempted) for s in rows]):8.0f}")
    return "\n".join(lines)


def paired_table(samples: list[Sample], sizes: list[int], names: list[str]) -> str:
    """The storm round by round: each server's MB/s and server CPU per byte divided by the base
    server's in the same round (massboot, else the first of ``--servers``), summed up by
    :mod:`bench.paired` (median, geometric mean, rounds at or above 1, sign-flip p)."""
    base = "massboot" if "massboot" in names else names[0]
    lines = [f"PXE storm round by round against {base}: per round, a server's figure / {base}'s "
             "in the same round; median (geomean, rounds >= 1, two-sided sign-flip p of the mean "
             "log ratio); CPU = server CPU-s per 100 MB"]
    for size in sizes:
        storm = [s for s in samples if s.kind == "storm" and s.size == size]
        mbps = {n: {s.round: s.load.mbps for s in storm if s.server == n} for n in names}
        cpu = {n: {s.round: s.per_100mb(s.server_cpu) for s in storm if s.server == n} for n in names}
        for name in names:
            if name == base:
                continue
            speed, cost = paired.by_round(mbps, name, base), paired.by_round(cpu, name, base)
            lines.append(f"{name:<10} {size_label(size):>5}  MB/s {speed.describe()}; CPU {cost.describe()}")
    return "\n".join(lines)


def stream_table(samples: list[Sample], names: list[str], size: int, window: int) -> str:
    """The single-stream table: medians over rounds and repeats."""
    lines = []
    head = (f"{'server':<10} {'window':>6} {'MB/s':>7} {'x mb':>6} {'min':>7} {'max':>7} {'ok':>7} "
            f"{'srv CPU-s':>9} {'resend':>6} {'dupDATA':>7}")
    lines.append(f"Single stream: 1 client, {size_label(size)}, blksize 1428, windowsize {window} asked; "
                 "server on CPU 0, client on CPU 1; medians")
    lines.append(head)
    lines.append("-" * len(head))
    base = median([s.load.mbps for s in samples if s.server == "massboot" and s.kind == "stream"])
    for name in names:
        rows = [s for s in samples if s.server == name and s.kind == "stream"]
        if not rows:
            continue
        rates = [s.load.mbps for s in rows if s.load.ok]
        mbps = median(rates)
        windows = collections.Counter(s.load.windowsize for s in rows).most_common(1)[0][0]
        ok = sum(s.load.ok for s in rows)
        lines.append(
            f"{name:<10} {windows:6d} {mbps:7.1f} {mbps / base if base == base else float('nan'):6.2f} "
            f"{min(rates, default=float('nan')):7.1f} {max(rates, default=float('nan')):7.1f} "
            f"{f'{ok}/{len(rows)}':>7} {median([s.per_100mb(s.server_cpu) for s in rows]):9.2f} "
            f"{sum(s.load.client_resends for s in rows):6d} {sum(s.load.dup_data for s in rows):7d}")
    return "\n".join(lines)


def machine(atftpd: str | None = None) -> dict[str, Any]:
    """What ran the benchmark."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name, cmd in (("dnsmasq", ["dnsmasq", "--version"]), ("tftpd-hpa", ["in.tftpd", "-V"]),
                      ("atftpd", [atftpd or "atftpd", "--version"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            versions[name] = (out.stdout or out.stderr).splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return {"cpus": os.cpu_count(), "model": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "versions": versions}


# ----------------------------------------------------------------------------- profiles


def cprofile_summary(path: str, top: int) -> str:
    """Top functions by self time.

    Cumulative times are left out: under gevent a call that waits (a socket read, a threadpool
    job) is charged with everything the other greenlets did meanwhile; py-spy's inclusive
    samples are the meaningful "cumulative" view.
    """
    stats = pstats.Stats(path)
    stats.sort_stats("tottime")
    rows = []
    total = stats.total_tt  # type: ignore[attr-defined]
    for func in stats.fcn_list[:top]:  # type: ignore[attr-defined]
        _cc, nc, tt, _ct, _callers = stats.stats[func]  # type: ignore[attr-defined]
        filename, line, fname = func
        short = os.path.relpath(filename, REPO) if filename.startswith(REPO) else os.path.basename(filename)
        share = 100 * tt / total if total else 0.0
        per_call = tt / nc * 1e6 if nc else 0.0
        rows.append(f"{tt:8.2f} {share:5.1f}% {nc:9d} {per_call:7.2f}  {fname} ({short}:{line})")
    return (f"cProfile, top {top} by self time (total {total:.2f} s):\n"
            f"{'self s':>8} {'share':>6} {'calls':>9} {'us/call':>7}  function\n" + "\n".join(rows))


def pyspy_summary(path: str, top: int) -> str:
    """py-spy ``--format raw`` (collapsed stacks) to top frames by self and inclusive samples."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [fr.split(" (")[0] + " (" + fr.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                      if " (" in fr else fr for fr in stack.split(";")]
            self_count[frames[-1]] += n
            for frame in set(frames):
                incl_count[frame] += n
    if not total:
        return "py-spy: no samples"
    out = [f"py-spy, {total} samples; top {top} by self samples:"]
    out += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in self_count.most_common(top)]
    out.append(f"\npy-spy, top {top} by inclusive samples:")
    out += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in incl_count.most_common(top)]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def storm_spec(args: argparse.Namespace, env: Env, file: tuple[str, str], size: int) -> LoadSpec:
    """What every client of a storm does (the storm's rounds and the generator check alike):
    *file* is (name under env.root, sha256)."""
    return LoadSpec(("127.0.0.1", env.port), file[0], size, file[1], blksize=args.blksize,
                    verify_every=args.verify_every, timeout=args.timeout, retries=args.retries,
                    deadline=args.deadline, sources=args.sources, generator=env.generator,
                    local=os.path.join(env.root, file[0]), spin=args.spin_generator)


def run(args: argparse.Namespace, netns: bool, exits: ExitAccounting | None) -> int:
    """The measurements (inside the namespace when there is one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    stream_names = [n.strip() for n in args.stream_servers.split(",") if n.strip()]
    sizes = [parse_size(s) for s in args.size.split(",")]
    stream_size = parse_size(args.stream_size)
    out: dict[str, Any] = {"machine": machine(args.atftpd), "args": vars(args), "netns": netns,
                           "children_cpu": "taskstats" if exits else "cutime", "samples": []}
    with tempfile.TemporaryDirectory(prefix="tftp-bench-") as work:
        root = os.path.join(work, "root")
        os.mkdir(root)
        for path in (work, root):
            os.chmod(path, 0o755)
        env = Env(root=root, work=work, port=args.port or (69 if netns else free_port()),
                  atftpd=args.atftpd or shutil.which("atftpd"), dnsmasq=shutil.which("dnsmasq"),
                  tftpd_hpa=shutil.which("in.tftpd"), exits=exits,
                  extra=dict(item.split("=", 1) for item in args.extra_server),
                  trees={name: os.path.abspath(path) for name, path in
                         (item.split("=", 1) for item in args.massboot_tree)})
        files = {size: make_file(root, size, seed=size) for size in set(sizes + [stream_size])}
        env.generator = compile_generator(work) if args.generator == "c" else ""
        order: list[str] = []
        for name in names + (stream_names if args.stream_rounds else []):
            if name in order:
                continue
            why = available(name, env, netns)
            if why:
                print(f"skipping {name}: {why}", flush=True)
                continue
            order.append(name)
        samples: list[Sample] = []
        ncpu = os.cpu_count() or 1
        all_cpus = set(range(ncpu))
        print(f"machine: {out['machine']['cpus']} CPUs, {out['machine']['model']}, {out['machine']['date']}; "
              f"{'netns' if netns else 'host loopback'}, port {env.port}; storm generator: "
              f"{'compiled (bench/tftp_gen.c)' if env.generator else 'Python (bench/tftp_client.py)'}",
              flush=True)
        for rnd in range(max(args.rounds, args.stream_rounds)):
            shift = rnd % len(order) if order else 0
            for name in order[shift:] + order[:shift]:  # each server takes each slot in turn
                server = start_server(name, env)
                try:
                    warm_name, warm_sha = files[sizes[0]]
                    run_load(LoadSpec(("127.0.0.1", env.port), warm_name, sizes[0], warm_sha,
                                      deadline=30, sources=args.sources), 4, 1)
                    if name in names and rnd < args.rounds:
                        for size in sizes:
                            spec = storm_spec(args, env, files[size], size)
                            sched: dict[str, int] = {}
                            if args.pin_storm and ncpu >= 2:
                                set_affinity(server.pid, {0})
                                try:
                                    load, cpu, user = measure(server, spec, args.clients, args.workers,
                                                              env.exits, cpus=list(range(1, ncpu)),
                                                              sched=sched)
                                finally:
                                    set_affinity(server.pid, all_cpus)
                            else:
                                load, cpu, user = measure(server, spec, args.clients, args.workers, env.exits,
                                                          sched=sched)
                            sample = Sample(name, "storm", size, rnd, load, cpu, user, extra=sched)
                            samples.append(sample)
                            print(f"round {rnd + 1} {name:<10} storm {size_label(size):>4}: "
                                  f"{load.mbps:7.1f} MB/s {load.ok}/{load.clients} ok "
                                  f"p50 {load.p50 * 1e3:.0f} ms p95 {load.p95 * 1e3:.0f} ms "
                                  f"srv {sample.per_100mb(cpu):.2f} gen {sample.per_100mb(load.gen_cpu):.2f} "
                                  f"CPU-s/100MB; sleeps {sched['sleeps']} ctxt {sched['ctxt']} "
                                  f"ipi {sched['ipi']}; generator sleeps {load.gen_sleeps} preempted "
                                  f"{load.gen_preempted} {load.failures or ''}", flush=True)
                    if name in stream_names and rnd < args.stream_rounds and ncpu >= 2:
                        fname, sha = files[stream_size]
                        spec = LoadSpec(("127.0.0.1", env.port), fname, stream_size, sha,
                                        blksize=args.blksize, windowsize=args.windowsize, verify_every=1,
                                        timeout=args.timeout, retries=args.retries, deadline=args.deadline,
                                        spin=True)
                        set_affinity(server.pid, {0})
                        try:
                            for _ in range(args.stream_repeat):
                                load, cpu, user = measure(server, spec, 1, 1, env.exits, cpus=[1])
                                sample = Sample(name, "stream", stream_size, rnd, load, cpu, user)
                                samples.append(sample)
                                print(f"round {rnd + 1} {name:<10} stream {size_label(stream_size)} "
                                      f"window {load.windowsize}: {load.mbps:7.1f} MB/s "
                                      f"{'ok' if load.ok else load.failures}", flush=True)
                        finally:
                            set_affinity(server.pid, all_cpus)
                finally:
                    server.stop()
        storm_names = [n for n in order if n in names]
        report = [storm_table(samples, sizes, storm_names, args.clients, args.pin_storm and ncpu >= 2)]
        if len(storm_names) > 1 and args.rounds:
            report.append(paired_table(samples, sizes, storm_names))
        if args.stream_rounds:
            report.append(stream_table(samples, [n for n in order if n in stream_names], stream_size,
                                       args.windowsize))
        storm = [s for s in samples if s.kind == "storm" and s.size == sizes[0]]
        if args.gen_check and storm:
            best = max({s.server for s in storm},
                       key=lambda n: median([s.load.mbps for s in storm if s.server == n]))
            report.append(gen_check(args, env, best, files[sizes[0]], sizes[0], samples))
        if args.profile or args.py_spy:
            report.append(profile_massboot(args, env, files[sizes[0]], sizes[0]))
        print()
        print("\n\n".join(report))
        if exits is not None and exits.lost:
            print("warning: taskstats records were dropped: children's CPU is undercounted", file=sys.stderr)
        out["taskstats_lost"] = bool(exits and exits.lost)
        out["samples"] = [s.as_dict() for s in samples]
        out["report"] = report
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)
    return 0


def gen_check(args: argparse.Namespace, env: Env, name: str, file: tuple[str, str], size: int,
              samples: list[Sample]) -> str:
    """The storm against *name* with several numbers of generator processes: does it limit it?"""
    ncpu = os.cpu_count() or 1
    pinned = args.pin_storm and ncpu >= 2
    lines = [f"Generator check: {args.clients} clients x {size_label(size)} against {name} "
             "(the fastest here), "
             f"by generator processes{', server on CPU 0, generator on the others' if pinned else ''}; "
             f"{args.rounds} rounds each, medians",
             f"{'workers':>7} {'MB/s':>7} {'p95 ms':>8} {'srv CPU-s':>9} {'gen CPU-s':>9} {'srv cores':>9} "
             f"{'gen cores':>9}"]
    results: dict[int, list[Sample]] = collections.defaultdict(list)
    spec = storm_spec(args, env, file, size)
    for rnd in range(args.rounds):
        for workers in [int(n) for n in args.gen_check.split(",")]:
            server = start_server(name, env)
            try:
                if pinned:
                    set_affinity(server.pid, {0})
                load, cpu, user = measure(server, spec, args.clients, workers, env.exits,
                                          cpus=list(range(1, ncpu)) if pinned else None)
            finally:
                server.stop()
            sample = Sample(name, f"gen-check-{workers}", size, rnd, load, cpu, user)
            samples.append(sample)
            results[workers].append(sample)
    for workers, rows in sorted(results.items()):
        lines.append(f"{workers:7d} {median([s.load.mbps for s in rows]):7.1f} "
                     f"{median([s.load.p95 for s in rows]) * 1e3:8.0f} "
                     f"{median([s.per_100mb(s.server_cpu) for s in rows]):9.2f} "
                     f"{median([s.per_100mb(s.load.gen_cpu) for s in rows]):9.2f} "
                     f"{median([s.server_cpu / s.load.wall for s in rows]):9.2f} "
                     f"{median([s.load.gen_cpu / s.load.wall for s in rows]):9.2f}")
    return "\n".join(lines)


def profile_massboot(args: argparse.Namespace, env: Env, file: tuple[str, str], size: int) -> str:
    """One extra storm against massboot under cProfile and/or py-spy; the summaries.

    The clients wait longer here (3 s, 10 resends): a profiled server is slower, and clients
    giving up would change what is profiled.
    """
    spec = LoadSpec(("127.0.0.1", env.port), file[0], size, file[1], blksize=args.blksize,
                    verify_every=args.verify_every, timeout=3.0, retries=10, deadline=args.deadline * 2)
    report = []
    if args.profile:
        server = start_server("massboot", env, profile=args.profile, clock=args.profile_clock)
        try:
            load, cpu, user = measure(server, spec, args.clients, args.workers, env.exits)
        finally:
            server.stop()
        per = cpu / (load.bytes_ok / 1e8) if load.bytes_ok else float("nan")
        report.append(f"massboot under cProfile ({args.profile_clock} clock): {load.mbps:.1f} MB/s, "
                      f"{load.ok}/{load.clients} ok, server {cpu:.2f} CPU-s ({per:.2f} per 100 MB; "
                      "cProfile slows it)\n" + cprofile_summary(args.profile, args.top))
    if args.py_spy:
        pyspy = shutil.which("py-spy")
        if not pyspy:
            report.append("py-spy not installed (pip install py-spy)")
        else:
            server = start_server("massboot", env)
            try:
                sampler = subprocess.Popen([pyspy, "record", "--pid", str(server.pid), "--rate", "250",
                                            "--format", "raw", "--nonblocking", "--output",
                                            os.path.abspath(args.py_spy)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)  # let it attach
                load, cpu, user = measure(server, spec, args.clients, args.workers, env.exits)
                sampler.send_signal(signal.SIGINT)
                try:
                    _, err = sampler.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    sampler.kill()
                    _, err = sampler.communicate()
            finally:
                server.stop()
            head = (f"massboot under py-spy: {load.mbps:.1f} MB/s, {load.ok}/{load.clients} ok, "
                    f"server {cpu / (load.bytes_ok / 1e8) if load.bytes_ok else 0:.2f} CPU-s per 100 MB")
            if os.path.exists(args.py_spy):
                report.append(head + "\n" + pyspy_summary(args.py_spy, args.top))
            else:
                report.append(head + "\npy-spy wrote nothing: " + err.decode(errors="replace")[-500:])
    return "\n\n".join(report)


@contextlib.contextmanager
def netns() -> Iterator[str]:
    """Create a network namespace, move this process into it, and back out and remove it at the end.

    Sockets keep the namespace they were created in, so one made before (the taskstats socket)
    stays in the initial namespace; processes started inside inherit the new one.
    """
    name = f"tftp-bench-{os.getpid()}"
    libc = ctypes.CDLL(None, use_errno=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        in_ns = ["ip", "netns", "exec", name]
        subprocess.run([*in_ns, "ip", "link", "set", "lo", "up"], check=True)
        # tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails while loopback is
        # the only configured interface: give the namespace one non-loopback address (a veth
        # pair with both ends inside; no dummy driver here). No traffic goes through it.
        subprocess.run([*in_ns, "ip", "link", "add", "tbench0", "type", "veth", "peer", "name", "tbench1"],
                       check=True)
        subprocess.run([*in_ns, "ip", "addr", "add", "10.254.254.1/30", "dev", "tbench0"], check=True)
        for dev in ("tbench0", "tbench1"):
            subprocess.run([*in_ns, "ip", "link", "set", dev, "up"], check=True)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the benchmark namespace")
        finally:
            os.close(target)
        try:
            yield name
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                print("warning: could not return to the initial network namespace", file=sys.stderr)
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    """Parse arguments; run in a fresh network namespace unless told otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500, help="concurrent clients in the storm")
    parser.add_argument("--size", default="1M", help="file size(s) for the storm, comma-separated (1M,4M)")
    parser.add_argument("--servers", default="massboot,dnsmasq,tftpd-hpa",
                        help=f"storm servers, in order, from {','.join(ALL_SERVERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="storm rounds (medians are quoted)")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--generator", choices=("python", "c"), default="python",
                        help="the storm's load generator: bench/tftp_client.py's Python loop (default) or "
                             "the same clients compiled (bench/tftp_gen.c, built with cc; checks every "
                             "byte of every --verify-every-th client against the file)")
    parser.add_argument("--spin-generator", action="store_true",
                        help="the storm's generator processes poll without sleeping (each keeps a CPU "
                             "busy: with --pin-storm and --workers 1)")
    parser.add_argument("--pin-storm", action="store_true",
                        help="storm with the server pinned to CPU 0 and the generator to the other CPUs")
    parser.add_argument("--sources", type=int, default=1, metavar="N",
                        help="storm clients send from 127.0.0.1..127.0.0.N in turn (default 1); "
                             "massboot-pN (processes = N) steers each source address to one worker")
    parser.add_argument("--blksize", type=int, default=1428)
    parser.add_argument("--verify-every", type=int, default=10, help="sha256 on every Nth client")
    parser.add_argument("--timeout", type=float, default=1.0, help="client resend timeout, seconds")
    parser.add_argument("--retries", type=int, default=5, help="client resends before giving up")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds for one storm at most")
    parser.add_argument("--stream-servers", default="massboot,atftpd,dnsmasq",
                        help="single-stream servers (those missing are skipped)")
    parser.add_argument("--stream-size", default="64M", help="file size for the single stream")
    parser.add_argument("--windowsize", type=int, default=16, help="windowsize asked in the single stream")
    parser.add_argument("--stream-rounds", type=int, default=None,
                        help="single-stream rounds (default: --rounds; 0: none)")
    parser.add_argument("--stream-repeat", type=int, default=3, help="single streams per round")
    parser.add_argument("--gen-check", metavar="N,N,...", nargs="?", const="1,2,3,4", default="",
                        help="also run the storm against the fastest server with these numbers of generator "
                             "processes (default 1,2,3,4)")
    parser.add_argument("--profile", metavar="FILE", help="extra storm with massboot under cProfile")
    parser.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu",
                        help="cProfile's clock: the main thread's CPU time (default) or wall time")
    parser.add_argument("--py-spy", metavar="FILE", help="extra storm with massboot sampled by py-spy")
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile table")
    parser.add_argument("--json", metavar="FILE", help="write every sample and the tables as JSON")
    parser.add_argument("--port", type=int, default=0,
                        help="server port (default: 69 in the netns, else a free one)")
    parser.add_argument("--atftpd", help="path of atftpd (default: from PATH)")
    parser.add_argument("--extra-server", metavar="NAME=COMMAND", action="append", default=[],
                        help="another server to measure (name it in --servers): a command that serves "
                             "{root} on 127.0.0.1:{port} in the foreground, e.g. a massboot branch")
    parser.add_argument("--massboot-tree", metavar="NAME=PATH", action="append", default=[],
                        help="massboot from another checkout (e.g. main=../main, a git worktree), "
                             "with the same config as massboot; name it in --servers")
    parser.add_argument("--no-netns", action="store_true",
                        help="run on the host's loopback (no root needed; no dnsmasq)")
    args = parser.parse_args()
    if args.stream_rounds is None:
        args.stream_rounds = args.rounds
    for path in ("json", "profile", "py_spy"):
        if getattr(args, path):
            setattr(args, path, os.path.abspath(getattr(args, path)))
    try:
        exits: ExitAccounting | None = ExitAccounting()
    except OSError as exc:
        print(f"taskstats unavailable ({exc}): children's CPU only from cutime (tftpd-hpa's is lost)",
              file=sys.stderr)
        exits = None
    if args.no_netns:
        return run(args, netns=False, exits=exits)
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("the network namespace needs root and iproute2: use --no-netns", file=sys.stderr)
        return 2
    with netns():
        return run(args, netns=True, exits=exits)

if __name__ == "__main__":
    sys.exit(main())
