"""TFTP worker processes: ``[tftpd] processes = N`` (README, "TFTP worker processes").

The parent (the ``massboot`` process: DHCP, HTTP, metrics, the admin socket) binds N UDP
sockets to the TFTP port in one ``SO_REUSEPORT`` group before the privilege drop, and attaches
a classic BPF program to the group that returns the datagram's IPv4 source address modulo N as
the index of the socket that gets it (``SO_ATTACH_REUSEPORT_CBPF``): every datagram of one
client address reaches the same worker, so the per-address caps (``max_per_client``) hold for
the whole server exactly. After the privilege drop it starts one worker per socket: a fresh
interpreter (``python -m massboot.workers``, its own gevent hub, nothing of the parent's
greenlets) that receives its socket and one end of a ``SOCK_SEQPACKET`` socketpair, loads the
config itself and runs a :class:`~massboot.tftp.server.TftpServer` on that socket with its
share of ``pool_size`` and ``memory_budget`` (the shares add up to the configured values).
Before the first one it runs the same command once with ``--probe`` (imports, config, exit):
a worker that cannot run as massboot's user (an unreadable checkout) stops the startup with a
message naming the path, the user and the fix, instead of a restart loop.

The parent keeps its copy of every socket: a dead worker's socket keeps its index in the
group (its clients' datagrams wait in its queue instead of being steered to another worker),
and the worker started in its place (after 1 s, doubling to 30 s while it keeps dying within
a minute) receives the same socket. Restarts are counted and logged with the exit status.

The socketpair carries JSON messages (a worker is never trusted with a pickle):

worker → parent
    ``{"t": "evs", "e": [[kind, fields], ...]}``: the worker's events (``tftp.*``,
    ``cache.*``), emitted again on the parent's bus, so that the event log, the metrics
    counters and histograms and the boot-progress tracker (``/clients``) see every worker's
    transfers as their own. A worker queues at most ``EVENT_QUEUE`` events; beyond that, or
    for an event too large for one message, it drops and counts them (reported in its status).
    ``{"t": "status", ...}``: every ``STATUS_PERIOD`` seconds its gauges (transfers, pool,
    window memory, cache) and its dropped-events count; the parent sums them for ``/metrics``.
    ``{"t": "ask", "id": n, "ip": ip}``: what the DHCP side knows of a client (the filters'
    ``{mac}``, ``{uuid}``, ``{arch}``, ``{file}``): leases are decided in the parent only.
parent → worker
    ``{"t": "client", "id": n, "info": {...} | null}``: the answer (at most
    ``ASK_TIMEOUT`` seconds are waited for it; then the variables resolve as for an unknown
    client).

SIGTERM stops a worker gracefully (its transfers get the grace period), SIGHUP makes it read
the config again (README, "Reload"). A worker whose socketpair closes (the parent died)
stops. Workers run in their own session: a Ctrl-C in the terminal reaches the parent only,
which stops them.

The mirror cache is one directory for all processes; one upstream download per file across
processes is :class:`massboot.files.cache.FlightLocks`'s job.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):   # run as ``python -m massboot.workers``
    monkey.patch_all()

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

from massboot import config as cfg  # noqa: E402
from massboot.events import EventBus  # noqa: E402
from massboot.sources import ClientInfo, ClientLookup  # noqa: E402

__all__ = ["TftpWorkers", "reuseport_group", "share", "single_collector", "steer_by_source",
           "worker_main"]

log = logging.getLogger("massboot.workers")

EVENT_QUEUE = 10000         # events a worker holds for the parent; more are dropped and counted
MESSAGE_MAX = 60000         # bytes of one message (events are batched up to it)
RECV_MAX = 1 << 18          # the receive buffer for one message
STATUS_PERIOD = 0.5         # seconds between a worker's status messages
ASK_TIMEOUT = 2.0           # seconds a worker waits for the parent's answer about a client
RESTART_MIN, RESTART_MAX = 1.0, 30.0   # seconds before a dead worker is started again
STABLE_AFTER = 60.0         # a worker that lived this long restarts after RESTART_MIN again
STOP_EXTRA = 3.0            # seconds beyond the grace period before a worker is killed
# the compiled data path's counters a worker reports in its status, summed over the workers
# (and over a worker's earlier processes) for /metrics
COUNTERS = ("compiled_blocks", "busy_poll_ns", "storm_scans", "read_ahead_shared",
            "read_ahead_read", "read_ahead_own")

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)   # <asm/socket.h>
_SKF_NET_OFF = -0x100000    # <linux/filter.h>: offsets from the network header
# classic BPF opcodes (<linux/bpf_common.h>)
_LD_W_ABS = 0x00 | 0x00 | 0x20     # BPF_LD | BPF_W | BPF_ABS
_ALU_MOD_K = 0x04 | 0x90 | 0x00    # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x06 | 0x10               # BPF_RET | BPF_A


# ---------------------------------------------------------------------------- sockets
def share(total: int, index: int, count: int) -> int:
    """Worker *index*'s share of *total* split among *count* workers (the shares sum to it)."""
    return total // count + (1 if index < total % count else 0)


def steering_program(count: int) -> bytes:
    """The classic BPF program ``ld [SKF_NET_OFF + 12]; mod #count; ret a``: the IPv4 source
    address (RFC 791: bytes 12-15 of the header) modulo *count*, the socket index."""
    def insn(code: int, k: int) -> bytes:
        return struct.pack("=HBBI", code, 0, 0, k & 0xFFFFFFFF)     # struct sock_filter

    return insn(_LD_W_ABS, _SKF_NET_OFF + 12) + insn(_ALU_MOD_K, count) + insn(_RET_A, 0)


def steer_by_source(sock: socket.socket, count: int) -> None:
    """Attach :func:`steering_program` to *sock*'s ``SO_REUSEPORT`` group (Linux 4.5+).

    Raises:
        OSError: the kernel refused it.
    """
    program = steering_program(count)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))   # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def reuseport_group(address: str, port: int, count: int, rcvbuf: int = 0) -> list[socket.socket]:
    """*count* UDP sockets bound to ``address:port`` in one ``SO_REUSEPORT`` group, in index
    order, steered by source address (:func:`steer_by_source`). Port 0: the first one's port.

    Raises:
        OSError: a bind failed (every socket made is closed), or the steering was refused.
    """
    from massboot.tftp.server import _set_rcvbuf

    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _set_rcvbuf(sock, rcvbuf)   # type: ignore[arg-type]
            sock.bind((address, port))
            port = sock.getsockname()[1]
        try:
            steer_by_source(socks[0], count)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}: the kernel refused the steering by source "
                          "address (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+); set [tftpd] processes = 1"
                          ) from exc
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


# ---------------------------------------------------------------------------- parent side
_TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # what holds massboot/


def _first_unreadable(paths: Sequence[str]) -> str | None:
    """The first of *paths*, or of the directories above one, that this process cannot use,
    or None: every directory above must be searchable; the path itself and its own directory
    readable too (the import system lists the directories it imports from), and so must
    every directory from massboot's top down."""
    for path in paths:
        parts = os.path.abspath(path).split(os.sep)
        for n in range(2, len(parts) + 1):
            step = os.sep.join(parts[:n])
            if not os.path.isdir(step):
                mode = os.R_OK
            elif n >= len(parts) - 1 or step.startswith(_TOP):
                mode = os.R_OK | os.X_OK
            else:
                mode = os.X_OK
            if not os.access(step, mode):
                return step
    return None


class _Worker:
    """The parent's record of one worker."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock                  # the parent's copy of the worker's socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.started = 0.0
        self.delay = RESTART_MIN
        self.restarts = 0
        self.status: dict[str, Any] = {}
        self.events = 0                   # events received from it
        self.invalid = 0                  # messages or events from it that made no sense
        self.dropped_before = 0           # events its earlier processes dropped (a counter)
        self.before: dict[str, int] = {}  # its earlier processes' COUNTERS, summed
        self.up = False                   # ready message received, process running
        self.last_exit: str | None = None


class TftpWorkers:
    """The parent's side of ``[tftpd] processes = N``: the sockets, the workers, their views.

    It stands where a :class:`~massboot.tftp.server.TftpServer` stands in
    :class:`massboot.cli.Services` (``start``, ``alive``, ``error``, ``port``, ``stop``,
    ``tune`` and the status read by :mod:`massboot.metrics`); :meth:`launch` starts the
    processes, after the privilege drop.

    Args:
        config: the loaded config (``config.path``, ``config.state_dir``, ``[tftpd]``).
        address: the TFTP address.
        events: the parent's bus; the workers' events are emitted on it.
        client_info: the DHCP side's client lookup, answered to the workers.
        debug: ``-d`` for the workers.
        python: the interpreter that runs the workers.
    """

    def __init__(self, config: cfg.Config, address: str, events: EventBus,
                 client_info: ClientLookup, *, debug: bool = False,
                 python: str = sys.executable) -> None:
        self._config = config
        self._address = address
        self._events = events
        self._client_info = client_info
        self._debug = debug
        self._python = python
        self.count = config.tftp.processes
        self._workers: list[_Worker] = []
        self._supervisors: list[gevent.Greenlet] = []
        self._stopping = False
        self._launched = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the sockets (before the privilege drop); :meth:`launch` starts the workers."""
        # what launch() imports, imported now: after the drop, massboot's user may not be able
        # to read the checkout, which probe() reports (README, "TFTP worker processes")
        import pwd  # noqa: F401

        import gevent.fileobject  # noqa: F401  (the probe's pipes)

        t = self._config.tftp
        socks = reuseport_group(self._address, t.port, self.count, t.rcvbuf)
        self._workers = [_Worker(i, sock) for i, sock in enumerate(socks)]
        log.info("tftp listening on %s:%d pool=%d processes=%d (steered by source address)",
                 self._address, self.port, t.pool_size, self.count)

    def launch(self) -> None:
        """Start every worker and watch it (after the privilege drop: they run as this user).

        Raises:
            massboot.cli.StartupError: a worker could not start as this user (see :meth:`probe`).
        """
        if self._launched:
            return
        self.probe()
        self._launched = True
        for worker in self._workers:
            self._supervisors.append(gevent.spawn(self._supervise, worker))

    @property
    def alive(self) -> bool:
        """True while the workers are supervised (a dead worker is restarted: the service is
        degraded, not dead; see :meth:`states`)."""
        return bool(self._workers) and not self._stopping and all(
            not g.dead for g in self._supervisors)

    @property
    def error(self) -> str | None:
        for g in self._supervisors:
            if g.dead and g.exception is not None:
                return f"worker supervisor: {type(g.exception).__name__}: {g.exception}"
        return None

    @property
    def port(self) -> int:
        return self._workers[0].sock.getsockname()[1]

    def states(self) -> list[bool]:
        """Per worker: up (started, said ready, running) or not."""
        return [w.up for w in self._workers]

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker (they let transfers finish for *timeout* seconds), wait, then
        SIGKILL what is left; close the sockets."""
        self._stopping = True
        grace = 5.0 if timeout is None else timeout
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_EXTRA
        for worker in self._workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tftp worker %d (pid %d) did not stop: killed", worker.index, proc.pid)
                proc.kill()
                proc.wait()
        gevent.killall(self._supervisors, block=True, timeout=2)
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.close()
            worker.sock.close()

    def tune(self, **_limits: Any) -> None:
        """SIGHUP (README, "Reload"): every worker reads the config again and applies it."""
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)

    def probe(self) -> None:
        """Run ``python -m massboot.workers --probe`` once, as the workers will run (this user,
        after the privilege drop): it imports what a worker imports and loads the config.

        A worker is a new interpreter that reads massboot, its packages and the config file
        again as massboot's user: started as root with ``[massboot] user`` from a checkout or a
        virtualenv that user cannot read (a home directory), every worker would die at once
        and be restarted forever. This says so at startup instead (README, "TFTP worker
        processes"): which path, which user, the fix.

        Raises:
            massboot.cli.StartupError: the probe could not run or failed.
        """
        from massboot.cli import StartupError

        uid = os.geteuid()
        try:
            import pwd

            user = f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            user = f"uid {uid}"
        argv = self._argv(0) + ["--probe"]
        try:
            done = subprocess.run(argv, env=self._env(), capture_output=True, timeout=60,
                                  start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            said = getattr(exc, "strerror", None) or str(exc)
        else:
            if done.returncode == 0:
                return
            lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            said = lines[-1].strip() if lines else f"exit status {done.returncode}"
        said = said if len(said) <= 300 else said[:297] + "..."
        unreadable = _first_unreadable(self._needs())
        where = f"{unreadable} is not readable by it" if unreadable else "it cannot run"
        raise StartupError(
            f"tftp: the worker processes ([tftpd] processes = {self.count}) cannot start as "
            f"user {user}: {where} ({self._python} -m massboot.workers: {said}). Each worker "
            f"is a new interpreter that reads massboot, its packages and {self._config.path} "
            "as that user: install massboot where that user can read it (e.g. a virtualenv "
            "under /opt, not a private home directory), make the path readable, or set "
            "[tftpd] processes = 1")

    def _needs(self) -> list[str]:
        """What a worker reads as massboot's user: the interpreter, massboot, its packages,
        the config file."""
        import gevent as _gevent
        import prometheus_client

        paths = [self._python, os.path.join(_TOP, "massboot", "workers.py"),
                 os.path.dirname(os.path.abspath(_gevent.__file__)),
                 os.path.dirname(os.path.abspath(prometheus_client.__file__))]
        return paths + [os.path.abspath(self._config.path)]

    # -- one worker ---------------------------------------------------------------------
    def _argv(self, index: int) -> list[str]:
        argv = [self._python, "-m", "massboot.workers", "--config", self._config.path,
                "--state-dir", self._config.state_dir, "--index", str(index),
                "--count", str(self.count), "--address", self._address]
        return argv + (["--debug"] if self._debug else [])

    def _command(self, worker: _Worker) -> list[str]:
        return self._argv(worker.index)

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = _TOP + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = self._env()
        env["MASSBOOT_WORKER_FDS"] = f"{worker.sock.fileno()},{theirs.fileno()}"
        try:
            worker.proc = subprocess.Popen(self._command(worker), env=env, close_fds=True,
                                           pass_fds=(worker.sock.fileno(), theirs.fileno()),
                                           start_new_session=True)
        finally:
            theirs.close()
        worker.channel = ours
        worker.started = time.monotonic()
        log.info("tftp worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _supervise(self, worker: _Worker) -> None:
        while not self._stopping:
            try:
                self._spawn(worker)
            except OSError as exc:
                log.error("tftp worker %d cannot start: %s; retrying in %.0f s", worker.index, exc,
                          worker.delay)
                gevent.sleep(worker.delay)
                worker.delay = min(worker.delay * 2, RESTART_MAX)
                continue
            assert worker.proc is not None and worker.channel is not None
            reader = gevent.spawn(self._read, worker, worker.channel)
            status = worker.proc.wait()
            worker.up = False
            reader.join(timeout=1)
            reader.kill()
            worker.channel.close()
            worker.channel = None
            worker.dropped_before += int(worker.status.get("dropped", 0))
            for name in COUNTERS:
                worker.before[name] = worker.before.get(name, 0) + int(worker.status.get(name, 0))
            worker.status = {}
            if self._stopping:
                return
            worker.last_exit = _exit_text(status)
            worker.restarts += 1
            if time.monotonic() - worker.started >= STABLE_AFTER:
                worker.delay = RESTART_MIN
            log.error("tftp worker %d (pid %d) %s; restarting it in %.0f s (restart %d)",
                      worker.index, worker.proc.pid, worker.last_exit, worker.delay, worker.restarts)
            gevent.sleep(worker.delay)
            worker.delay = min(worker.delay * 2, RESTART_MAX)

    def _read(self, worker: _Worker, channel: socket.socket) -> None:
        """The worker's messages, until its end of the socketpair closes."""
        while True:
            try:
                data = channel.recv(RECV_MAX)
            except OSError:
                return
            if not data:
                return
            try:
                message = json.loads(data)
                kind = message["t"]
            except (ValueError, KeyError, TypeError):
                worker.invalid += 1
                continue
            if kind == "evs":
                self._emit(worker, message.get("e", ()))
            elif kind == "status":
                worker.status = message
            elif kind == "ready":
                worker.up = True
                worker.status = message
            elif kind == "ask":
                self._answer(channel, message)

    def _emit(self, worker: _Worker, events: Sequence[Any]) -> None:
        for item in events:
            try:
                kind, fields = item
                self._events.emit(kind, **fields)
                worker.events += 1
            except (TypeError, ValueError):     # not [kind, {fields}], or not an event's fields
                worker.invalid += 1

    def _answer(self, channel: socket.socket, message: dict[str, Any]) -> None:
        info = None
        ip = message.get("ip")
        if isinstance(ip, str):
            try:
                found = self._client_info(ip)
            except Exception:
                log.exception("client lookup for a tftp worker failed")
                found = None
            if found is not None:
                info = {"ip": found.ip, "mac": found.mac, "uuid": found.uuid, "arch": found.arch,
                        "file": found.file}
        try:
            channel.send(json.dumps({"t": "client", "id": message.get("id"), "info": info}).encode())
        except OSError:
            pass

    # -- status (metrics.TftpStatus, summed over the workers) -----------------------------
    def _sum(self, name: str) -> int:
        return sum(int(w.status.get(name, 0)) for w in self._workers)

    @property
    def active(self) -> int:
        return self._sum("active")

    def workers(self) -> tuple[int, int]:
        return self._sum("busy"), self._config.tftp.pool_size

    def memory(self) -> tuple[int, int]:
        return self._sum("reserved"), self._config.tftp.memory_budget

    def buffered_bytes(self) -> int:
        return self._sum("buffered")

    @property
    def data_path(self) -> str | None:
        """The TFTP data path the workers run (``[tftpd] fast_path``; one config, one answer),
        None before any reported."""
        for w in self._workers:
            path = w.status.get("data_path")
            if path in ("compiled", "python"):
                return path
        return None

    def _counter(self, name: str) -> int:
        """One of COUNTERS, summed over the workers, earlier processes included."""
        return sum(w.before.get(name, 0) + int(w.status.get(name, 0)) for w in self._workers)

    def compiled_blocks(self) -> int:
        """DATA blocks the workers' compiled data path sent, earlier processes included."""
        return self._counter("compiled_blocks")

    def busy_poll_seconds(self) -> float:
        """Seconds the workers' compiled data path spent busy polling, earlier processes
        included (``[tftpd] busy_poll``)."""
        return self._counter("busy_poll_ns") / 1e9

    def storm_scans(self) -> int:
        """Storm scans the workers' compiled data path began, earlier processes included."""
        return self._counter("storm_scans")

    def read_ahead_chunks(self) -> tuple[int, int, int]:
        """The workers' read-ahead chunks, earlier processes included, as
        :func:`massboot.tftp.server.read_ahead_counters` counts them in one."""
        return (self._counter("read_ahead_shared"), self._counter("read_ahead_read"),
                self._counter("read_ahead_own"))

    def cache_view(self, files: Any) -> _CacheView:
        """The parent's file store as :mod:`massboot.metrics` reads it, with the workers' cache
        figures: downloads summed, the directory's contents as the process knowing most."""
        return _CacheView(self, files)

    def collector(self) -> Collector:
        """The workers' own families, for the metrics registry."""
        return _WorkersCollector(self)


class _CacheView:
    """``metrics.CacheStatus`` over the parent's store and the workers' reports."""

    def __init__(self, pool: TftpWorkers, files: Any) -> None:
        self._pool = pool
        self._files = files

    @property
    def remote(self) -> bool:
        return bool(self._files.remote)

    def _most(self, name: str, own: int) -> int:
        return max([own, *(int(w.status.get(name, 0)) for w in self._pool._workers)])

    @property
    def cached_bytes(self) -> int:
        return self._most("cached_bytes", self._files.cached_bytes)

    @property
    def cached_files(self) -> int:
        return self._most("cached_files", self._files.cached_files)

    @property
    def used_bytes(self) -> int:
        return self._most("used_bytes", self._files.used_bytes)

    @property
    def downloads_active(self) -> int:
        return self._files.downloads_active + self._pool._sum("downloads")


class _WorkersCollector(Collector):
    def __init__(self, pool: TftpWorkers) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Any]:
        pool = self._pool
        up = GaugeMetricFamily("massboot_tftp_worker_up", "1 while a TFTP worker process runs "
                               "(README, TFTP worker processes).", labels=("worker",))
        restarts = CounterMetricFamily("massboot_tftp_worker_restarts", "TFTP worker processes "
                                       "started again after they died.", labels=("worker",))
        events = CounterMetricFamily("massboot_tftp_worker_events", "Events a TFTP worker "
                                     "forwarded to the parent.", labels=("worker",))
        dropped = CounterMetricFamily("massboot_tftp_worker_events_dropped", "Events a TFTP worker "
                                      "dropped (its queue to the parent was full, or one was too "
                                      "large), or the parent could not read.", labels=("worker",))
        for w in pool._workers:
            label = (str(w.index),)
            up.add_metric(label, 1 if w.up else 0)
            restarts.add_metric(label, w.restarts)
            events.add_metric(label, w.events)
            dropped.add_metric(label, w.dropped_before + int(w.status.get("dropped", 0)) + w.invalid)
        yield from (up, restarts, events, dropped)


class _SingleCollector(Collector):
    """``processes = 1``: the TFTP server in the massboot process is worker 0 (up while it
    serves, never restarted: a dead TFTP server stops massboot), so the alerts and the
    dashboard panel on the worker families work whatever ``processes`` is."""

    def __init__(self, tftp: Any) -> None:
        self._tftp = tftp

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("massboot_tftp_worker_up", "1 while a TFTP worker process runs "
                               "(README, TFTP worker processes).", labels=("worker",))
        restarts = CounterMetricFamily("massboot_tftp_worker_restarts", "TFTP worker processes "
                                       "started again after they died.", labels=("worker",))
        up.add_metric(("0",), 1 if self._tftp.alive else 0)
        restarts.add_metric(("0",), 0)
        yield from (up, restarts)


def single_collector(tftp: Any) -> Collector:
    """The worker families of ``processes = 1`` (worker 0: the TFTP server of this process)."""
    return _SingleCollector(tftp)


def _counters() -> dict[str, int]:
    """This process's COUNTERS (a worker's status)."""
    from massboot.tftp.server import (
        busy_poll_counters,
        fast_path_counters,
        read_ahead_counters,
        scan_counters,
    )

    shared, read, own = read_ahead_counters()
    return {"compiled_blocks": fast_path_counters()[0], "busy_poll_ns": busy_poll_counters()[2],
            "storm_scans": scan_counters()[0], "read_ahead_shared": shared,
            "read_ahead_read": read, "read_ahead_own": own}


def _exit_text(status: int) -> str:
    if status < 0:
        try:
            return f"killed by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


# ---------------------------------------------------------------------------- worker side
class Worker:
    """One worker process: a TFTP server on its share of the group, talking to the parent."""

    def __init__(self, config: cfg.Config, index: int, count: int, address: str,
                 listener: socket.socket, channel: socket.socket, debug: bool = False) -> None:
        from massboot.files import FileStore

        self.config = config
        self.index, self.count = index, count
        self._channel = channel
        self._debug = debug
        self._queue: deque[list[Any]] = deque()
        self._asks: deque[bytes] = deque()
        self._wake = gevent.event.Event()
        self._pending: dict[int, gevent.event.AsyncResult] = {}
        self._next_id = 0
        self.dropped = 0
        self._stop = gevent.event.Event()
        self.events = EventBus()
        self.events.subscribe(self._forward)
        t = config.tftp
        self.files = FileStore(t.root, t.filters, base_dir=config.base_dir, cache_dir=t.cache_dir,
                               cache_max_bytes=t.cache_size, revalidate_after=t.cache_revalidate,
                               http_timeout=t.http_timeout, max_downloads=t.max_downloads,
                               client_lookup=self.client_info, events=self.events, shared=True)
        from massboot.cli import tftp_server

        self.tftp = tftp_server(config, address, self.files, self.events, listener=listener,
                                pool_size=share(t.pool_size, index, count),
                                memory_budget=share(t.memory_budget, index, count))

    # -- the channel ----------------------------------------------------------------------
    def _forward(self, event: Any) -> None:
        if len(self._queue) >= EVENT_QUEUE:
            self.dropped += 1
            return
        self._queue.append([str(event.kind), event.fields])
        self._wake.set()

    def client_info(self, ip: str) -> ClientInfo | None:
        """Ask the parent what its DHCP side knows of *ip* (filter variables)."""
        self._next_id += 1
        ident = self._next_id
        result = gevent.event.AsyncResult()
        self._pending[ident] = result
        self._asks.append(json.dumps({"t": "ask", "id": ident, "ip": ip}).encode())
        self._wake.set()
        try:
            info = result.get(timeout=ASK_TIMEOUT)
        except gevent.Timeout:
            log.warning("tftp worker %d: no answer from the parent about %s", self.index, ip)
            return None
        finally:
            self._pending.pop(ident, None)
        if not isinstance(info, dict):
            return None
        return ClientInfo(ip=ip, mac=info.get("mac"), uuid=info.get("uuid"), arch=info.get("arch"),
                          file=info.get("file"))

    def _status(self, kind: str = "status") -> bytes:
        tftp, files = self.tftp, self.files
        busy, capacity = tftp.workers()
        reserved, budget = tftp.memory()
        return json.dumps({"t": kind, "pid": os.getpid(), "active": tftp.active, "busy": busy,
                           "data_path": tftp.data_path, **_counters(), "capacity": capacity,
                           "reserved": reserved, "budget": budget,
                           "buffered": tftp.buffered_bytes(), "dropped": self.dropped,
                           "downloads": files.downloads_active, "cached_bytes": files.cached_bytes,
                           "cached_files": files.cached_files, "used_bytes": files.used_bytes}).encode()

    def _send_loop(self) -> None:
        send = self._channel.send
        next_status = 0.0
        while True:
            self._wake.wait(STATUS_PERIOD)
            self._wake.clear()
            while self._asks:
                send(self._asks.popleft())
            while self._queue:
                batch: list[bytes] = []
                size = 0
                while self._queue and size < MESSAGE_MAX:
                    item = json.dumps(self._queue.popleft(), default=str).encode()
                    if len(item) > MESSAGE_MAX:     # a hostile request's options: never sent
                        self.dropped += 1
                        continue
                    batch.append(item)
                    size += len(item) + 1
                if batch:
                    send(b'{"t":"evs","e":[' + b",".join(batch) + b"]}")
                while self._asks:
                    send(self._asks.popleft())
            now = time.monotonic()
            if now >= next_status:
                send(self._status())
                next_status = now + STATUS_PERIOD

    def _recv_loop(self) -> None:
        while True:
            try:
                data = self._channel.recv(RECV_MAX)
            except OSError:
                data = b""
            if not data:
                log.warning("tftp worker %d: the parent is gone, stopping", self.index)
                self._stop.set()
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if message.get("t") == "client":
                pending = self._pending.get(message.get("id"))
                if pending is not None:
                    pending.set(message.get("info"))

    # -- run ------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: the config again; what it can change is applied (README, "Reload")."""
        from massboot.cli import setup_logging

        try:
            new = cfg.load(self.config.path, state_dir=self.config.state_dir)
        except (cfg.ConfigError, OSError) as exc:
            log.error("tftp worker %d reload: %s; the running configuration is kept", self.index, exc)
            return
        setup_logging(new.logger, self._debug)
        t = new.tftp
        try:
            if t.filters != self.config.tftp.filters:
                self.files.set_filters(t.filters)
        except ValueError as exc:
            log.error("tftp worker %d reload: [filters]: %s", self.index, exc)
            return
        self.tftp.tune(max_blksize=t.blocksize, max_windowsize=t.windowsize,
                       timeout_min=t.timeout_min, timeout_max=t.timeout, backoff_max=t.backoff_max,
                       retries=t.retries, first_timeout=t.first_timeout,
                       first_retries=t.first_retries, max_per_client=t.max_per_client,
                       transfer_memory=t.transfer_memory,
                       memory_budget=share(t.memory_budget, self.index, self.count))
        self.config = new
        log.info("tftp worker %d: reload applied", self.index)

    def run(self) -> int:
        """Serve until SIGTERM or the parent goes; the exit code."""
        gevent.signal_handler(signal.SIGTERM, self._stop.set)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        self.tftp.start()
        self._channel.send(self._status("ready"))
        sender = gevent.spawn(self._send_loop)
        receiver = gevent.spawn(self._recv_loop)
        code = 0
        while not self._stop.wait(0.5):
            if not self.tftp.alive or sender.dead:
                log.error("tftp worker %d: %s", self.index,
                          self.tftp.error or f"channel to the parent: {sender.exception}")
                code = 1
                break
        self.tftp.stop(5.0)
        self.files.close()
        self._wake.set()
        gevent.sleep(0.05)       # the last events go out
        sender.kill()
        receiver.kill()
        return code


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m massboot.workers``: started by :class:`TftpWorkers` only."""
    from massboot.cli import setup_logging, tune_gc

    parser = argparse.ArgumentParser(prog="massboot.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--probe", action="store_true",
                        help="import what a worker imports, load the config, exit (TftpWorkers.probe)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        config = cfg.load(args.config, state_dir=args.state_dir)
    except (cfg.ConfigError, OSError) as exc:
        print(f"massboot tftp worker {args.index}: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.probe:
        import massboot.cli  # noqa: F401
        import massboot.files  # noqa: F401
        import massboot.files.mirror  # noqa: F401
        import massboot.tftp.server  # noqa: F401
        return 0
    listener_fd, channel_fd = (int(x) for x in os.environ["MASSBOOT_WORKER_FDS"].split(","))
    setup_logging(config.logger, args.debug)
    listener = socket.socket(fileno=listener_fd)
    channel = socket.socket(fileno=channel_fd)
    try:
        worker = Worker(config, args.index, args.count, args.address, listener, channel, args.debug)
    except (cfg.ConfigError, ValueError) as exc:
        log.error("tftp worker %d cannot start: %s", args.index, exc)
        return 2
    tune_gc()       # as the parent does once it is up: rare collector pauses (issue #14)
    return worker.run()


if __name__ == "__main__":
    sys.exit(worker_main())
