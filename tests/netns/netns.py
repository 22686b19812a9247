"""Network namespaces for real-client tests: a "server" and a "client" joined by a veth pair.

:func:`namespace_pair` creates two namespaces with names unique to the test, a veth pair
created directly inside them (nothing ever appears on the host's interfaces), the server
address, ``rp_filter=0``, IPv6 off, ``lo`` up and ``net.core.rmem_max`` raised, and removes
everything on exit, failure included: every process it started is killed by pid, then any
other process still living in one of its namespaces (a daemonized client, say) is killed by
pid too, then the namespaces go (which removes the veth pair).

:meth:`NetnsPair.popen` runs a command inside a namespace (``ip netns exec`` execs it, so the
pid is the command's own); :meth:`NetnsPair.socket` opens a socket *inside* a namespace from
this very process (``setns(2)`` around the socket creation only), so a test can play a
hand-written client without a helper process (both come from :class:`NamespaceProcesses`,
which ``tests/netns/sitelab.py`` shares). :class:`Massboot` runs the server as a subprocess in
the server namespace and waits for its readiness line in its log. :func:`add_namespace`,
:func:`wait_carrier` and :func:`delete_namespace` are the steps every layout here is built and
removed with; :class:`NamespaceLayout` makes a hand-built layout (``tests/netns/sitelab.py``, the
QEMU labs of ``tests/e2e``) a context manager that removes what it built, failure included.

Everything here needs root; tests call ``require_root()`` first.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
#: What we ask for ``net.core.rmem_max`` inside the namespaces. A child namespace may not exceed
#: the host's value (the kernel answers EINVAL), so the host's value caps it.
WANTED_RMEM_MAX = 8 * 1024 * 1024
_counter = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll *condition* until it returns something truthy; return it.

    Raises:
        TimeoutError: still falsy after *timeout* seconds (the message says *what* was awaited).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` (iproute2); with *check*, a failure raises RuntimeError with its stderr."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _sysctl(ns: str, *settings: str) -> None:
    for setting in settings:
        run_ip("netns", "exec", ns, "sysctl", "-q", "-w", setting)


def add_namespace(ns: str, rmem_max: int = 0) -> None:
    """Create namespace *ns*: ``rp_filter`` off and IPv6 off (set before any interface exists,
    so that every later one inherits "default"), ``net.core.rmem_max`` when given, ``lo`` up."""
    run_ip("netns", "add", ns)
    _sysctl(ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    if rmem_max:
        _sysctl(ns, f"net.core.rmem_max={rmem_max}")
    run_ip("-n", ns, "link", "set", "lo", "up")


def wait_carrier(ns: str, ifname: str, timeout: float = 10) -> None:
    """Wait until *ifname* in *ns* has its carrier (``LOWER_UP``)."""
    wait_until(lambda: "LOWER_UP" in run_ip("-n", ns, "link", "show", ifname).stdout, timeout,
               f"{ifname} up in {ns}")


def delete_namespace(ns: str) -> None:
    """Kill by pid every process still living in *ns* (a daemonized client, say), then delete
    it; nothing when it does not exist."""
    for pid in _netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run_ip("netns", "del", ns, check=False)


def _host_rmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().strip())
    except (OSError, ValueError):
        return 0


def random_mac() -> str:
    """A locally administered unicast MAC, upper case as massboot logs it."""
    return "02:" + ":".join(f"{random.randrange(256):02X}" for _ in range(5))


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body with this thread in namespace *ns*, then come back.

    Keep the body free of anything that yields to the gevent hub (socket creation, setsockopt
    and bind do not): another greenlet would run in the wrong namespace. Sockets created here
    stay in *ns* for their whole life.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


class NamespaceLayout(ABC):
    """Namespaces a test builds in :meth:`_create` and removes in :meth:`close`; as a context
    manager it removes whatever was built when the building fails half-way."""

    @abstractmethod
    def _create(self) -> None:
        """Create the namespaces, their links and addresses."""

    @abstractmethod
    def close(self) -> None:
        """Kill every process started here by pid, then delete the namespaces."""

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamespaceProcesses:
    """Processes and sockets inside a test's namespaces: every process started is kept in
    ``procs``, for the teardown to kill by pid."""

    procs: list[subprocess.Popen]
    run_timeout: float = 20  # seconds :meth:`run` waits by default

    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start *argv* inside namespace *ns*; it is killed by pid at teardown."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(self, ns: str, argv: Sequence[str], timeout: float | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside *ns* to completion (killed by pid if it outlives *timeout*, by
        default :attr:`run_timeout`)."""
        timeout = self.run_timeout if timeout is None else timeout
        proc = self.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            out, err = proc.communicate()
            raise TimeoutError(f"{' '.join(argv)} did not finish in {timeout} s\n{out}\n{err}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def socket(self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0,
               setup: Callable[[socket.socket], None] | None = None) -> socket.socket:
        """A socket living in namespace *ns*; *setup* (setsockopt, bind...) runs in *ns* too,
        which matters for anything that names an interface."""
        with inside(ns):
            sock = socket.socket(family, kind, proto)
            try:
                if setup is not None:
                    setup(sock)
            except BaseException:
                sock.close()
                raise
        return sock


@dataclass
class NetnsPair(NamespaceProcesses):
    """Two namespaces joined by a veth pair; see :func:`namespace_pair`."""

    server: str
    client: str
    server_if: str
    client_if: str
    server_mac: str
    client_mac: str
    server_addr: str                        # "10.77.0.1/24"
    client_addr: str | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def server_ip(self) -> str:
        return self.server_addr.split("/")[0]

    def close(self) -> None:
        for proc in self.procs:
            kill(proc)
        for ns in (self.client, self.server):
            delete_namespace(ns)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 10) -> int | None:
    """Send *sig* to *proc* by pid if it still runs; reap it. Returns its exit status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def _netns_pids(ns: str) -> list[int]:
    if not os.path.exists(os.path.join(NETNS_DIR, ns)):
        return []
    result = run_ip("netns", "pids", ns, check=False)
    me = os.getpid()
    return [int(p) for p in result.stdout.split() if p.isdigit() and int(p) != me]


@contextmanager
def namespace_pair(tag: str = "t", server_addr: str = "10.77.0.1/24", client_addr: str | None = None,
                   server_if: str = "mbs0", client_if: str = "mbc0",
                   client_mac: str | None = None) -> Iterator[NetnsPair]:
    """Create the "server" and "client" namespaces and their veth pair; remove all on exit.

    Args:
        tag: a short word put into the namespace names (the names are unique per call).
        server_addr: the server end's address and prefix.
        client_addr: the client end's, or None to leave it unnumbered (a DHCP client's case).
        client_mac: the client end's MAC (a random locally administered one by default).
    """
    n = next(_counter)
    base = f"mb-{re.sub(r'[^A-Za-z0-9]', '', tag)[:16]}-{os.getpid()}-{n}"
    pair = NetnsPair(server=f"{base}-srv", client=f"{base}-cli", server_if=server_if, client_if=client_if,
                     server_mac=random_mac(), client_mac=client_mac or random_mac(),
                     server_addr=server_addr, client_addr=client_addr)
    try:
        rmem_max = min(WANTED_RMEM_MAX, _host_rmem_max())
        for ns in (pair.server, pair.client):
            add_namespace(ns, rmem_max)
        run_ip("link", "add", server_if, "netns", pair.server, "address", pair.server_mac, "type", "veth",
            "peer", "name", client_if, "netns", pair.client, "address", pair.client_mac)
        ends = ((pair.server, server_if, server_addr), (pair.client, client_if, client_addr))
        for ns, ifname, addr in ends:
            _sysctl(ns, f"net.ipv4.conf.{ifname}.rp_filter=0")
            if addr:
                run_ip("-n", ns, "addr", "add", addr, "dev", ifname)
            run_ip("-n", ns, "link", "set", ifname, "up")
        for ns, ifname, _addr in ends:
            wait_carrier(ns, ifname)
        yield pair
    finally:
        pair.close()


class Massboot:
    """``python -m massboot`` as a subprocess in the server namespace of *pair*.

    Each :meth:`start` writes a new log file (``<log_dir>/massboot-N.log``, stdout and stderr)
    and returns once the log has the line ``ready`` (by default the DHCP server's
    ``dhcp listening on``).
    """

    def __init__(self, pair: NetnsPair, config: Path, log_dir: Path, args: Sequence[str] = ("-p",),
                 ready: str = "dhcp listening on") -> None:
        self.pair = pair
        self.config = config
        self.log_dir = log_dir
        self.args = list(args)
        self.ready = ready
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def log(self) -> Path:
        """The current (last) run's log."""
        return self.logs[-1]

    def log_text(self, run: int = -1, until: str | Callable[[str], object] | None = None,
                 timeout: float = 10) -> str:
        """The log of run *run*; with *until* (a regex, or a test of the text), once it holds
        or *timeout* seconds have passed: massboot writes its lines from a thread of its own
        (massboot.logwriter), a moment after the event, so a test waits for the line it wants."""
        text = self.logs[run].read_text(errors="replace")
        if until is None:
            return text
        check = (lambda t: re.search(until, t, re.M)) if isinstance(until, str) else until
        deadline = time.monotonic() + timeout
        while not check(text) and time.monotonic() < deadline:
            time.sleep(0.02)
            text = self.logs[run].read_text(errors="replace")
        return text

    def start(self, timeout: float = 20) -> Massboot:
        assert self.proc is None or self.proc.poll() is not None, "massboot is already running"
        log = self.log_dir / f"massboot-{len(self.logs) + 1}.log"
        self.logs.append(log)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "massboot", "-c", str(self.config), *self.args]
        with open(log, "wb") as out:
            self.proc = self.pair.popen(self.pair.server, argv, cwd=str(REPO), env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = self.proc

        def ready() -> bool:
            if self.ready in self.log_text():
                return True
            if proc.poll() is not None:
                raise RuntimeError(f"massboot exited with {proc.returncode} before it was ready:\n"
                                   f"{self.log_text()}")
            return False

        try:
            wait_until(ready, timeout, f"{self.ready!r} in {log}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_text()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Send *sig* by pid and wait for the exit; returns the exit status."""
        assert self.proc is not None
        return kill(self.proc, sig, timeout)
