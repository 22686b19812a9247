"""The TFTP server: one listener, one greenlet and one socket (TID) per read transfer.

The listener greenlet reads requests on ``address:port`` and decodes them itself, so junk,
write requests and duplicate read requests cost no pool slot:

* a malformed datagram is dropped and counted (``tftp.malformed``);
* WRQ gets ERROR 2 "Access violation": the server is read-only (``tftp.denied``, write);
* a first packet that is neither RRQ nor WRQ gets ERROR 4 (an ERROR is never answered);
* an RRQ from an (ip, port) whose transfer is still running is a retransmission and starts
  nothing;
* an RRQ from an address that already runs ``max_per_client`` transfers gets ERROR 0
  (``tftp.denied``, busy);
* any other RRQ runs in a greenlet from a bounded :class:`massboot.greenpool.WorkerPool` (kept
  for a later request when it ends: README "Per-transfer cost, second round"). While the pool
  is full, new RRQs are dropped unanswered and counted (``tftp.dropped``, pool_full): PXE ROMs
  abort on an ERROR but retransmit a lost RRQ. The listener never stops reading, so
  duplicates, junk and write requests are still handled and the kernel queue never fills with
  stale requests (README ``[tftpd]``).

Bounds on what one request can hold (issue #11; README ``[tftpd]``):

* time: until its first ACK a transfer's peer is unproven (the RRQ's source may be forged); it
  gets ``first_retries`` resends of its first answer, ``first_timeout`` apart (longer than the
  clients' own timers: a second OACK aborts atftp), and is then dropped without an ERROR; a
  repeated RRQ gets the first answer at once, within the same budget. A forged RRQ thus makes
  the server send at most ``1 + first_retries`` datagrams, each the OACK (a few dozen bytes) or
  DATA 1, to the victim.
  A client's RFC 2349 ``timeout`` can only shorten our timer (:func:`negotiate`);
* memory: a transfer's window (``windowsize × (blksize + 4)``) is negotiated down to
  ``transfer_memory`` and to what is left of ``memory_budget`` for all transfers; an RRQ that
  finds the budget spent is dropped (``tftp.dropped``, memory) and its client retries.

A transfer binds its own socket to ``(address, 0)`` (its TID, RFC 1350 section 4), opens the
file through the injected store (a :class:`massboot.sources.FileError` becomes an ERROR at
once, ``tftp.denied``: its reason maps to a TFTP error code in one table, ``_FILE_ERRORS``),
negotiates options (RFC 2347-2349, RFC 7440) and drives a
:class:`~massboot.tftp.transfer.ReadTransfer`. A datagram from any other (ip, port) on that
port gets ERROR 5 and the transfer goes on. Mode ``netascii`` is converted; any other mode
is served as ``octet``, as pybootd did.

The data path (README "Performance"): once negotiated, the transfer's socket is connected to
its client (no address per datagram; a second socket on the same port hears the others, see
:func:`_connect`), and the DATA/ACK exchange runs in event-loop callbacks, not in the
transfer's greenlet: one epoll set (:class:`_Dispatcher`) holds every running transfer's
sockets, so a wake-up serves all the ACKs that are ready, and each ACK that acknowledges the
whole window takes :meth:`ReadTransfer.on_ack_all`, reading the next block from the source's
buffer and sending it at once (:class:`_Pump`). Events are per transfer, never per packet.

The compiled data path (``[tftpd] fast_path``, README "Performance"): when the optional C
extension :mod:`massboot.tftp._fastpath` is built, its ``Dispatcher`` replaces
:class:`_Dispatcher`, and an octet transfer of a complete local file (windowsize up to 64)
runs as a ``Lane``: the C code receives the ACK of everything sent, reads the next full
block (lock-step, from a 16 KiB read-ahead) or window (RFC 7440, one ``preadv2`` into the
window's slots) with ``RWF_NOWAIT``, sends it (``sendmmsg`` for a window), keeps the running
state in C and moves the transfer's deadline in the dispatcher's one timer for all lanes (a
``timerfd`` in its epoll set): no Python call and no Python object per block. Before Python
can look at the transfer (a datagram handed over, the timer's callback, the lane leaving the
dispatcher, ``sync()``) the lane writes the state back into the :class:`ReadTransfer`
members, exactly what :meth:`ReadTransfer.on_ack_all` would have left. Anything else
(another datagram, a duplicate ACK or one inside the window, the last block, a read the page
cache cannot answer, a timeout) goes to the same Python code as without it. In a storm (16
or more sockets in the set) the compiled dispatcher busy polls the set for up to
``[tftpd] busy_poll`` µs after a wake-up before the hub may sleep, and when 16 or more
transfers are ready at once it takes their sockets out of the epoll set and serves them in
``poll()`` passes until they all fell silent for that long (a storm scan, README "TFTP busy
poll").

Events (see :mod:`massboot.events`): ``tftp.start``, then ``tftp.done`` or ``tftp.fail``, with
``duration`` measured from the RRQ's arrival and ``ttfb`` from the RRQ's arrival to the moment
DATA 1 was first sent (after the OACK round trip, when there is one). The one log line per
outcome is written by :mod:`massboot.eventlog` from those events; per-packet detail only at
DEBUG, here.
"""

from __future__ import annotations

import _socket
import errno
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.hub import Waiter
from gevent.monkey import get_original

from massboot.codec import BUILD_FIX
from massboot.events import EventBus
from massboot.greenpool import WorkerPool
from massboot.sources import FileError, FileReason, Source, WouldBlock
from massboot.tftp.packet import (
    BLKSIZE_DEFAULT,
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    Error,
    ErrorCode,
    Opcode,
    PacketError,
    Request,
    decode,
)
from massboot.tftp.transfer import Datagram, ReadTransfer, negotiate, window_memory

#: the glue contract with the compiled module (Lane's and Dispatcher's constructors and
#: methods): _fastpath.c's API constant; both change together
FAST_PATH_API = 4


def _fast_path_mismatch(module: Any) -> str | None:
    """Why a built :mod:`massboot.tftp._fastpath` cannot serve this massboot, or None.

    A checkout updated without rebuilding (``git pull`` in an editable install) keeps the old
    ``.so``: its Lane would fail every transfer. Its API number says so before it is used
    (a module without one is API 1); then its ``bind()`` checks :class:`ReadTransfer`'s members.
    """
    api = getattr(module, "API", 1)
    if api != FAST_PATH_API:
        return f"module API {api}, this massboot needs {FAST_PATH_API}"
    try:
        module.bind(ReadTransfer)
    except TypeError as exc:  # a module built from other sources than this transfer.py's
        return str(exc)
    return None


_FAST_PATH_BROKEN: str | None = None  # why a built module cannot serve this massboot
try:
    from massboot.tftp import _fastpath  # type: ignore[attr-defined]
except ImportError:  # built by `pip install` when gcc and python3-dev are there (setup.py)
    _fastpath = None
else:
    _FAST_PATH_BROKEN = _fast_path_mismatch(_fastpath)
    if _FAST_PATH_BROKEN is not None:
        _fastpath = None

__all__ = ["BUSY_POLL_MAX", "FAST_PATHS", "FAST_PATH_API", "FileStoreLike", "TftpServer",
           "busy_poll_counters", "fast_path_available", "fast_path_counters", "fast_path_problem",
           "scan_counters"]

FAST_PATHS = ("auto", "on", "off")  # [tftpd] fast_path
BUSY_POLL_MAX = 1000  # [tftpd] busy_poll's bound, µs (BUSY_POLL_MAX_US in _fastpath.c)

log = logging.getLogger(__name__)

_LISTEN_BUFSIZE = 65536  # a request with many options can exceed 512 bytes
_TRANSFER_BUFSIZE = 2048  # ACKs are 4 bytes; a long ERROR message may be cut, harmlessly
_FATAL_ERRNOS = (errno.EBADF, errno.ENOTSOCK, errno.EINVAL)
_ERRORS_MAX = 100  # receive errors in a row that make any error fatal (the service is dead)
_PERIOD_SHARE = 0.8  # a transfer's repeating timer period as a share of its RTO (see _Pump)
# a transfer's sockets are made non-blocking by socket(2) itself (no FIONBIO ioctl after it)
_SOCK_DGRAM_NONBLOCK = _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK
_DRAIN_MAX = 64  # datagrams read per callback: bounded work, the io watcher fires again
# the real epoll, also when gevent patched `select` (it removes epoll there)
_epoll, _EPOLLIN = get_original("select", ["epoll", "EPOLLIN"])
_READY_MAX = 256  # ready transfer sockets served per wake-up of the dispatcher (the rest next)
_LANE_WINDOW_MAX = 64  # the largest window the compiled path serves (MAX_WINDOW in _fastpath.c)
_MEMORY_MIN = window_memory(BLKSIZE_DEFAULT, 1)  # the smallest window: one 512-byte block

# The one place a file store's refusal becomes a TFTP error (RFC 1350 section 5) and a
# ``tftp.denied`` reason.
_FILE_ERRORS: dict[FileReason, tuple[ErrorCode, str]] = {
    FileReason.NOT_FOUND: (ErrorCode.FILE_NOT_FOUND, "not_found"),
    FileReason.ACCESS: (ErrorCode.ACCESS_VIOLATION, "access"),
    FileReason.UPSTREAM: (ErrorCode.NOT_DEFINED, "error"),
    FileReason.CLOSED: (ErrorCode.NOT_DEFINED, "error"),
    FileReason.BUSY: (ErrorCode.NOT_DEFINED, "busy"),
}


def fast_path_problem() -> str | None:
    """Why the compiled data path cannot run, with the fix; None when it can."""
    if _fastpath is not None:
        return None
    if _FAST_PATH_BROKEN is not None:
        return (f"the compiled TFTP data path (massboot.tftp._fastpath) does not match this "
                f"massboot ({_FAST_PATH_BROKEN}): reinstall massboot (pip install) to rebuild it")
    return f"the compiled TFTP data path (massboot.tftp._fastpath) is not built: {BUILD_FIX}"


def fast_path_available() -> bool:
    """True when the compiled data path (:mod:`massboot.tftp._fastpath`) can be imported."""
    return _fastpath is not None


def busy_poll_counters() -> tuple[int, int, int]:
    """The compiled data path's busy polls in this process: (those that found a datagram,
    those that ran out their window, nanoseconds spent); zeros without it."""
    return _fastpath.busy_poll_counters() if _fastpath is not None else (0, 0, 0)


def scan_counters() -> tuple[int, int, int]:
    """The compiled data path's storm scans in this process: (scans begun, ``poll()`` passes
    over the transfer sockets, sockets those passes found readable); zeros without it."""
    return _fastpath.scan_counters() if _fastpath is not None else (0, 0, 0)


def read_ahead_counters() -> tuple[int, int, int]:
    """The compiled data path's read-ahead chunks in this process (README "Performance", TFTP
    data path): (found already read by another transfer of the same file, read into the shared
    chunks, read into a transfer's own buffer); zeros without it."""
    return _fastpath.chunk_counters() if _fastpath is not None else (0, 0, 0)


def fast_path_counters() -> tuple[int, int, int]:
    """``(blocks sent by the compiled path, datagrams it handed to Python, block reads it left
    to Python because the page cache did not hold them)`` since the process started; zeros
    without it."""
    return _fastpath.counters() if _fastpath is not None else (0, 0, 0)


def _file_error(exc: BaseException) -> tuple[ErrorCode, str]:
    """The TFTP error code and ``tftp.denied`` reason for a :class:`FileError`."""
    return _FILE_ERRORS.get(getattr(exc, "reason", None), (ErrorCode.NOT_DEFINED, "error"))


def _error_code(exc: BaseException) -> int:
    """The TFTP error code that answers a :class:`FileError` (0 for anything unknown)."""
    return _file_error(exc)[0]


class FileStoreLike(Protocol):
    """Name to :class:`~massboot.sources.Source` (see :class:`massboot.files.FileStore`)."""

    def open(self, name: str, client_ip: str) -> Source:
        """Open *name* for *client_ip*; raise FileError when it cannot be served."""
        ...


class TftpServer:
    """A read-only TFTP server on gevent.

    Args:
        address: IPv4 address to listen on (transfer sockets bind to it too).
        port: UDP port; 0 picks an ephemeral one (see :attr:`port`).
        files: the store that opens requested names.
        events: the event bus for ``tftp.*`` events.
        pool_size: the most transfers running at once.
        max_blksize: the largest ``blksize`` agreed to (``None``: 65464, RFC 2348).
        max_windowsize: the largest ``windowsize`` agreed to (RFC 7440).
        timeout_min: lower bound of the adaptive retransmission timeout, seconds.
        timeout_max: upper bound of it, unless the client's ``timeout`` option sets another.
        backoff_max: upper bound of it as it doubles while nothing comes back (at least
            *timeout_max*); a client's accepted ``timeout`` option is used as it is instead.
        retries: consecutive timeouts without progress before a transfer is abandoned.
        rcvbuf: ``SO_RCVBUF`` of the listener, best effort.
        first_timeout: the resend timer before a transfer's first ACK, seconds; see the
            module docstring.
        first_retries: resends before the first ACK.
        max_per_client: transfers one IP address may run at once.
        transfer_memory: the most bytes one transfer's window may buffer.
        memory_budget: the most bytes all transfers' windows may buffer together.
        listener: a UDP socket already bound to the TFTP port, used instead of binding one
            (a TFTP worker process's share of the ``SO_REUSEPORT`` group, see
            :mod:`massboot.workers`); *address* still names the transfers' address.
        fast_path: ``auto`` (the compiled data path when it is built), ``on`` (it, or
            RuntimeError), ``off`` (pure Python); see the module docstring.
        busy_poll: microseconds the compiled data path polls its sockets again after a
            wake-up before it lets the event loop sleep, while 8 or more transfers run
            (``[tftpd] busy_poll``, README "TFTP busy poll"); 0: never.
    """

    def __init__(
        self,
        address: str,
        port: int,
        files: FileStoreLike,
        events: EventBus,
        *,
        pool_size: int = 1000,
        max_blksize: int | None = None,
        max_windowsize: int = 64,
        timeout_min: float = 0.02,
        timeout_max: float = 2.0,
        backoff_max: float = 6.0,
        retries: int = 5,
        rcvbuf: int = 4 * 1024 * 1024,
        first_timeout: float = 6.0,
        first_retries: int = 2,
        max_per_client: int = 8,
        transfer_memory: int = 1 << 20,
        memory_budget: int = 256 << 20,
        listener: gsocket.socket | None = None,
        fast_path: str = "auto",
        busy_poll: int = 20,
    ) -> None:
        if fast_path not in FAST_PATHS:
            raise ValueError(f"fast_path {fast_path!r} not one of {', '.join(FAST_PATHS)}")
        if not 0 <= busy_poll <= BUSY_POLL_MAX:
            raise ValueError(f"busy_poll {busy_poll} outside 0..{BUSY_POLL_MAX}")
        if fast_path == "on" and _fastpath is None:
            raise RuntimeError(fast_path_problem())
        if max_blksize is not None and not BLKSIZE_MIN <= max_blksize <= BLKSIZE_MAX:
            raise ValueError(f"max_blksize {max_blksize} outside {BLKSIZE_MIN}..{BLKSIZE_MAX}")
        if not 1 <= max_windowsize <= 65535:
            raise ValueError(f"max_windowsize {max_windowsize} outside 1..65535")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if max_per_client < 1:
            raise ValueError("max_per_client must be at least 1")
        if min(transfer_memory, memory_budget) < _MEMORY_MIN:
            raise ValueError(f"transfer_memory and memory_budget must be at least {_MEMORY_MIN}")
        self._address = address
        self._requested_port = port
        self._files = files
        self._events = events
        self._pool_size = pool_size
        self._max_blksize = max_blksize
        self._max_windowsize = max_windowsize
        self._timeout_min = timeout_min
        self._timeout_max = timeout_max
        self._backoff_max = backoff_max
        self._retries = retries
        self._rcvbuf = rcvbuf
        self._first_timeout = first_timeout
        self._first_retries = first_retries
        self._max_per_client = max_per_client
        self._transfer_memory = transfer_memory
        self._memory_budget = memory_budget
        self._reserved = 0  # window bytes promised to running transfers (<= memory_budget)
        self._per_ip: dict[str, int] = {}
        self._clock = time.monotonic
        self._socket: gsocket.socket | None = None
        self._pool: WorkerPool | None = None
        self._reader: gevent.Greenlet | None = None
        self._error: str | None = None
        self._stopped = Event()
        self._transfers: dict[tuple[str, int], ReadTransfer | None] = {}
        self._pumps: dict[tuple[str, int], _Pump] = {}
        self._listener = listener
        self._fast_path = fast_path
        self._compiled = fast_path != "off" and _fastpath is not None
        self._busy_poll = busy_poll
        self._dispatcher: _Dispatcher | _CompiledDispatcher | None = None

    def tune(self, *, max_blksize: int | None, max_windowsize: int, timeout_min: float,
             timeout_max: float, retries: int, backoff_max: float | None = None,
             first_timeout: float | None = None,
             first_retries: int | None = None, max_per_client: int | None = None,
             transfer_memory: int | None = None, memory_budget: int | None = None) -> None:
        """New limits for the next transfers (SIGHUP); running transfers keep theirs (and
        their reservations: a smaller ``memory_budget`` only refuses new windows). The
        bounds left ``None`` are kept."""
        self._max_blksize, self._max_windowsize = max_blksize, max_windowsize
        self._timeout_min, self._timeout_max, self._retries = timeout_min, timeout_max, retries
        if backoff_max is not None:
            self._backoff_max = backoff_max
        if first_timeout is not None:
            self._first_timeout = first_timeout
        if first_retries is not None:
            self._first_retries = first_retries
        if max_per_client is not None:
            self._max_per_client = max_per_client
        if transfer_memory is not None:
            self._transfer_memory = transfer_memory
        if memory_budget is not None:
            self._memory_budget = memory_budget

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind the listener (synchronously) and start reading in a greenlet."""
        if self._socket is not None:
            raise RuntimeError("TftpServer already started")
        if self._listener is not None:   # bound by the parent (massboot.workers)
            sock, self._listener = self._listener, None
        else:
            sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
            try:
                _set_rcvbuf(sock, self._rcvbuf)
                sock.bind((self._address, self._requested_port))
            except BaseException:
                sock.close()
                raise
        self._socket = sock
        if self._dispatcher is None:
            self._dispatcher = (_CompiledDispatcher(self._busy_poll) if self._compiled
                                else _Dispatcher())
        self._pool = WorkerPool(self._pool_size)
        self._error = None
        self._stopped.clear()
        self._reader = gevent.spawn(self._read_loop, sock, self._pool)
        log.info("tftp listening on %s:%d pool=%d data_path=%s", self._address, self.port,
                 self._pool_size, self.data_path)
        if self._fast_path == "auto" and _FAST_PATH_BROKEN is not None:
            log.warning("tftp: the compiled data path does not match this massboot (%s), Python "
                        "serves every block (rebuild it: pip install)", _FAST_PATH_BROKEN)
        elif self._fast_path == "auto" and _fastpath is None:
            log.info("tftp: the compiled data path is not built, Python serves every block "
                     "(for it: %s)", BUILD_FIX)

    @property
    def alive(self) -> bool:
        """True while the listener's read loop runs (for /healthz and the main loop).

        Once started, False before :meth:`stop` means the service died (see :attr:`error`).
        """
        return self._reader is not None and not self._reader.dead

    @property
    def error(self) -> str | None:
        """Why the listener stopped on its own (a fatal socket error), else None."""
        if self._error is None and self._reader is not None and self._reader.dead:
            exc = self._reader.exception
            return f"{type(exc).__name__}: {exc}" if exc is not None else "listener ended"
        return self._error

    @property
    def port(self) -> int:
        """The bound UDP port."""
        if self._socket is None:
            raise RuntimeError("TftpServer not started")
        return self._socket.getsockname()[1]

    @property
    def data_path(self) -> str:
        """``compiled`` or ``python``: which data path serves the DATA/ACK exchange."""
        return "compiled" if self._compiled else "python"

    @property
    def active(self) -> int:
        """Transfers running (including those still opening their file)."""
        return len(self._transfers)

    def workers(self) -> tuple[int, int]:
        """``(busy, capacity)`` of the transfer pool: one slot per running transfer."""
        return len(self._transfers), self._pool_size

    def memory(self) -> tuple[int, int]:
        """``(reserved, budget)``: window bytes promised to running transfers, and
        ``memory_budget``."""
        return self._reserved, self._memory_budget

    def buffered_bytes(self) -> int:
        """Bytes of window buffers the running transfers have allocated (at most
        :meth:`memory`'s reserved)."""
        return sum(t.buffered for t in self._transfers.values() if t is not None)

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`stop`."""
        if self._socket is None:
            self.start()
        self._stopped.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading requests, let transfers finish for *timeout* seconds, then kill them.

        Args:
            timeout: grace period in seconds; ``None`` waits until every transfer ends (each
                is bounded by its retry limit); 0 kills them at once.
        """
        if self._reader is not None:
            self._reader.kill()
            self._reader = None
        if self._socket is not None:
            self._socket.close()
        if self._pool is not None:
            self._pool.join(timeout=timeout)
            if len(self._pool):
                log.info("tftp stopping: aborting %d transfer(s)", len(self._pool))
            self._pool.kill(block=True)
        if self._dispatcher is not None and not self._transfers:
            self._dispatcher.close()
            self._dispatcher = None
        self._stopped.set()

    def __enter__(self) -> TftpServer:
        if self._socket is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(timeout=0)

    # -- listener ------------------------------------------------------------------------

    def _read_loop(self, sock: gsocket.socket, pool: WorkerPool) -> None:
        errors = 0  # receive errors in a row
        while True:
            try:
                data, address = sock.recvfrom(_LISTEN_BUFSIZE)
            except OSError as exc:
                errors += 1
                if exc.errno in _FATAL_ERRNOS or sock.fileno() < 0 or errors >= _ERRORS_MAX:
                    self._error = f"receive failed: {exc}" + (
                        f" ({errors} times in a row)" if errors > 1 else "")
                    log.error("tftp listener stopped: %s", self._error)
                    return
                log.warning("tftp listener: %s", exc)
                gevent.sleep(0)  # an error that comes back at once must not starve the hub
                continue
            errors = 0
            try:
                self._dispatch(sock, pool, data, address)
            except Exception:
                log.exception("tftp: failed to handle a datagram from %s:%d", *address[:2])

    def _dispatch(self, sock: gsocket.socket, pool: WorkerPool, data: bytes,
                  address: tuple[str, int]) -> None:
        received = self._clock()
        address = (address[0], address[1])
        try:
            packet = decode(data)
        except PacketError as exc:
            self._events.emit("tftp.malformed", reason=exc.reason, ip=address[0], port=address[1],
                              detail=str(exc))
            return
        if isinstance(packet, Request):
            if packet.opcode == Opcode.RRQ:
                if address in self._transfers:
                    # a repeat: the client lost our first answer (or it is late, or forged);
                    # the transfer resends it within its first_retries budget
                    pump = self._pumps.get(address)
                    if pump is not None:
                        pump.request_again()
                    log.debug("tftp duplicate RRQ from %s:%d for %r", *address, packet.filename[:128])
                    return
                ip = address[0]
                if self._per_ip.get(ip, 0) >= self._max_per_client:
                    message = "Too many transfers from this address"
                    self._events.emit("tftp.denied", ip=ip, port=address[1], name=packet.filename,
                                      reason="busy", code=ErrorCode.NOT_DEFINED, message=message)
                    _send(sock, Error(ErrorCode.NOT_DEFINED, message).encode(), address)
                    return
                if pool.full():  # dropped, not refused: a PXE ROM retries a lost RRQ
                    self._events.emit("tftp.dropped", ip=ip, port=address[1], name=packet.filename,
                                      reason="pool_full")
                    return
                self._transfers[address] = None
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
                pool.spawn(self._serve, packet, address, received)
                return
            self._events.emit("tftp.denied", ip=address[0], port=address[1], name=packet.filename,
                              reason="write", code=ErrorCode.ACCESS_VIOLATION, message="Access violation")
            _send(sock, Error(ErrorCode.ACCESS_VIOLATION, "Access violation").encode(), address)
            return
        if isinstance(packet, Error):
            log.debug("tftp stray ERROR from %s:%d ignored", *address)  # never answer an ERROR
            return
        log.debug("tftp %s as a first packet from %s:%d", type(packet).__name__, *address)
        _send(sock, Error(ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation").encode(), address)

    # -- one transfer --------------------------------------------------------------------

    def _serve(self, request: Request, client: tuple[str, int], received: float) -> None:
        ip, port = client
        name = request.filename
        sock: _socket.socket | None = None
        source: Source | None = None
        transfer: ReadTransfer | None = None
        reserved = 0
        try:
            # the raw socket, non-blocking: the transfer is driven from libev callbacks
            sock = _socket.socket(_socket.AF_INET, _SOCK_DGRAM_NONBLOCK)
            sock.bind((self._address, 0))
            try:
                source = self._files.open(name, ip)
            except FileError as exc:
                self._deny(sock, client, name, exc)
                return
            netascii = request.mode == "netascii"
            available = self._memory_budget - self._reserved
            if available < _MEMORY_MIN:  # dropped, not refused: the client retries its RRQ
                self._events.emit("tftp.dropped", ip=ip, port=port, name=name, reason="memory")
                return
            size = getattr(source, "size", None)
            deal = negotiate(
                request.options,
                size=size,
                max_blksize=self._max_blksize,
                max_windowsize=self._max_windowsize,
                netascii=netascii,
                max_timeout=max(self._timeout_max, self._backoff_max),
                memory=min(self._transfer_memory, available),
            )
            reserved = deal.memory
            if size is not None and not netascii:  # slots are allocated on use: a small file
                reserved = window_memory(deal.blksize, min(deal.windowsize, size // deal.blksize + 1))
            self._reserved += reserved
            reader = _Reader(source)
            transfer = ReadTransfer(
                reader.wait,
                blksize=deal.blksize,
                windowsize=deal.windowsize,
                options=deal.oack,
                netascii=netascii,
                timeout_min=self._timeout_min,
                timeout_max=float(deal.timeout) if deal.timeout else self._timeout_max,
                backoff_max=float(deal.timeout) if deal.timeout else self._backoff_max,
                retries=self._retries,
                first_timeout=self._first_timeout,
                first_retries=self._first_retries,
                read_errors=(FileError,),
                error_code=_error_code,
                clock=self._clock,
            )
            self._transfers[client] = transfer
            self._events.emit("tftp.start", ip=ip, port=port, name=name, blksize=deal.blksize,
                              windowsize=deal.windowsize, mode=request.mode, options=request.options,
                              oack=deal.oack)
            self._run(sock, client, transfer, reader)
        except gevent.GreenletExit:
            message = "Server shutting down"
            if transfer is not None:
                _send(sock, transfer.abort(ErrorCode.NOT_DEFINED, message, "shutdown"), client)
            elif sock is not None:
                _send(sock, Error(ErrorCode.NOT_DEFINED, message).encode(), client)
            raise
        except Exception:
            log.exception("tftp transfer failed client=%s:%d file=%r", ip, port, name[:128])
            if transfer is not None:
                _send(sock, transfer.abort(), client)
            elif sock is not None:
                _send(sock, Error(ErrorCode.NOT_DEFINED, "Internal error").encode(), client)
                self._events.emit("tftp.denied", ip=ip, port=port, name=name, reason="error",
                                  code=ErrorCode.NOT_DEFINED, message="Internal error")
        finally:
            self._transfers.pop(client, None)
            self._reserved -= reserved
            left = self._per_ip.pop(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            if transfer is not None:
                self._report(client, name, transfer, received)
            if source is not None:
                try:
                    source.close()
                except Exception:
                    log.exception("tftp: closing %r failed", name[:128])
            if sock is not None:
                sock.close()

    def _run(self, sock: _socket.socket, client: tuple[str, int], transfer: ReadTransfer,
             reader: _Reader) -> None:
        """Drive *transfer* until it finishes.

        The DATA/ACK exchange runs in libev callbacks (:class:`_Pump`) without a greenlet
        switch per packet; this greenlet sleeps meanwhile and is woken when the transfer is
        over, or when the next block cannot be read without waiting: it then reads it here,
        where waiting is allowed (a threadpool read, a download still on its way).
        """
        assert self._dispatcher is not None
        strangers = _connect(sock, client)
        try:
            pump = _Pump(self, self._dispatcher, sock, strangers, client, transfer, reader.fast)
        except BaseException:
            strangers.close()
            raise
        self._pumps[client] = pump
        try:
            transfer.read = reader.wait
            pump.send(transfer.start())
            while not transfer.finished:
                if transfer.stalled:
                    transfer.read = reader.wait
                    pump.send(transfer.resume())
                    continue
                transfer.read = reader.inline
                pump.wait()
        finally:
            self._pumps.pop(client, None)
            pump.close()
            strangers.close()

    def _datagram(self, transfer: ReadTransfer, client: tuple[str, int], data: bytes) -> None:
        """A datagram from the client that is not an ACK."""
        try:
            packet = decode(data)
        except PacketError as exc:
            self._events.emit("tftp.malformed", reason=exc.reason, ip=client[0], port=client[1],
                              detail=str(exc), transfer=True)
            return
        if isinstance(packet, Error):
            transfer.on_error(packet.code, packet.message)
        else:
            log.debug("tftp ignored %s from client=%s:%d", type(packet).__name__, *client)

    def _stranger(self, sock: _socket.socket, buf: bytearray, size: int, peer: tuple[str, int]) -> None:
        """RFC 1350 section 4: answer a wrong TID with ERROR 5; never answer an ERROR."""
        if size >= 2 and buf[0] == 0 and buf[1] == Opcode.ERROR:
            return
        log.debug("tftp datagram from unknown TID %s:%d", peer[0], peer[1])
        _send(sock, Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode(), peer)

    def _deny(self, sock: _socket.socket, client: tuple[str, int], name: str, exc: FileError) -> None:
        code, reason = _file_error(exc)
        self._events.emit("tftp.denied", ip=client[0], port=client[1], name=name, reason=reason,
                          code=code, message=exc.message)
        _send(sock, Error(code, exc.message).encode(), client)

    def _report(self, client: tuple[str, int], name: str, transfer: ReadTransfer,
                received: float) -> None:
        duration = self._clock() - received
        ip, port = client
        if transfer.done:
            first = transfer.first_data_at
            ttfb = first - received if first is not None else duration
            self._events.emit("tftp.done", ip=ip, port=port, name=name, bytes=transfer.bytes_acked,
                              duration=duration, ttfb=ttfb, retransmits=transfer.retransmits,
                              blocks=transfer.blocks_acked, blocks_sent=transfer.blocks_sent,
                              blksize=transfer.blksize, windowsize=transfer.windowsize)
        else:
            self._events.emit("tftp.fail", ip=ip, port=port, name=name,
                              reason=transfer.reason or "aborted", bytes=transfer.bytes_acked,
                              duration=duration, retransmits=transfer.retransmits,
                              blocks=transfer.blocks_acked, blocks_sent=transfer.blocks_sent,
                              detail=transfer.detail)


def _set_rcvbuf(sock: gsocket.socket, size: int) -> None:
    """Size the receive buffer: SO_RCVBUFFORCE (root, beyond rmem_max), else SO_RCVBUF."""
    if size <= 0:
        return
    force = getattr(gsocket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(gsocket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, size)
    except OSError as exc:
        log.warning("tftp: cannot set SO_RCVBUF to %d: %s", size, exc)


def _send(sock: gsocket.socket | _socket.socket | None, datagram: Datagram, address: tuple[str, int]) -> None:
    if sock is None:
        return
    try:
        sock.sendto(datagram, address)
    except OSError as exc:
        log.debug("tftp send to %s:%d failed: %s", address[0], address[1], exc)


def _connect(sock: _socket.socket, client: tuple[str, int]) -> _socket.socket:
    """Connect the transfer's socket to its client; return the socket that hears the others.

    A connected UDP socket receives only its peer's datagrams and sends without an address
    (no address to convert per datagram, the route cached), which is most of the cost of a
    block once the Python is lean. RFC 1350 section 4 still wants an ERROR 5 for a datagram
    from any other (ip, port) on the transfer's port: a second, unconnected socket bound to the
    same port hears those (the kernel prefers the connected socket for its peer's datagrams).
    Both sockets are in one ``SO_REUSEPORT`` group, which only this process's user can join;
    the port itself was picked before (an ephemeral bind never lands on a port in use).
    """
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
    strangers = _socket.socket(_socket.AF_INET, _SOCK_DGRAM_NONBLOCK)
    try:
        strangers.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        strangers.bind(sock.getsockname())
        sock.connect(client)
    except BaseException:
        strangers.close()
        raise
    return strangers


class _Reader:
    """The transfer's read functions: waiting in the greenlet, never waiting in a callback.

    While :class:`_Pump` drives the transfer from the event loop, the transfer reads with the
    source's ``read_nowait`` (:class:`WouldBlock` when the bytes are not at hand); a source
    without one always raises WouldBlock there, so all its reads happen in the greenlet.
    """

    __slots__ = ("fast", "inline", "wait")

    def __init__(self, source: Source) -> None:
        self.wait = source.read
        self.inline = getattr(source, "read_nowait", None) or _would_block
        # ``fast_file() -> (fd, size) | None``: the descriptor the compiled path may pread
        # and how far (massboot.files' local and complete cached files)
        self.fast: Callable[[], tuple[int, int] | None] | None = getattr(source, "fast_file", None)


def _would_block(offset: int, length: int) -> bytes:
    raise WouldBlock


class _Dispatcher:
    """One io watcher for every transfer socket: an ``epoll`` set the event loop watches.

    A transfer's sockets are in the set while its :class:`_Pump` drives it (:meth:`add`,
    :meth:`remove`). When any of them is readable the loop wakes this dispatcher once; it asks
    the set which sockets are ready (level-triggered, at most ``_READY_MAX`` at a time, the rest
    on the next wake-up) and calls their handlers in one pass. In a PXE storm hundreds of
    sockets are ready at each wake-up, so the loop's per-watcher work is paid once per wake-up
    instead of once per datagram.
    """

    __slots__ = ("_epoll", "_handlers", "_io", "_poll")
    compiled = False

    def __init__(self) -> None:
        self._epoll = _epoll()
        self._poll = self._epoll.poll
        self._handlers: dict[int, Callable[[], None]] = {}
        self._io = gevent.get_hub().loop.io(self._epoll.fileno(), 1)

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        """Call *handler* (which must not raise) whenever *fd* is readable."""
        if fd in self._handlers:
            return
        self._epoll.register(fd, _EPOLLIN)
        self._handlers[fd] = handler
        if len(self._handlers) == 1:
            self._io.start(self._on_ready)

    def remove(self, fd: int) -> None:
        """Stop watching *fd* (before it is closed); no-op when it is not in the set."""
        if self._handlers.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError:  # already closed
            pass
        if not self._handlers:
            self._io.stop()

    def close(self) -> None:
        self._io.stop()
        self._io.close()
        self._epoll.close()
        self._handlers.clear()

    def _on_ready(self) -> None:
        handlers = self._handlers
        try:
            ready = self._poll(0, _READY_MAX)
        except InterruptedError:
            return
        for fd, _ in ready:
            # a handler called before may have ended its transfer (and a new socket may reuse
            # the number): a stale or spurious wake-up finds nothing to read, harmlessly
            handler = handlers.get(fd)
            if handler is not None:
                handler()


class _CompiledDispatcher:
    """:class:`_Dispatcher`'s interface on the compiled ``Dispatcher``: the epoll set, the
    table and the wake-up loop are C; a handler may be a ``Lane`` (served in C) or a
    callable (called as by :class:`_Dispatcher`)."""

    __slots__ = ("_c", "_io")
    compiled = True

    def __init__(self, busy_poll: int = 0) -> None:
        assert _fastpath is not None
        # the storm scan's window is busy_poll's (README "TFTP busy poll"): 0 turns both off
        self._c = _fastpath.Dispatcher(busy_poll_us=busy_poll, storm_scan_us=busy_poll)
        self._io = gevent.get_hub().loop.io(self._c.fileno(), 1)

    def add(self, fd: int, handler: object) -> None:
        """Serve *fd* whenever readable: a ``Lane``, or a callable that must not raise."""
        self._c.add(fd, handler)
        if not self._io.active:
            self._io.start(self._c.on_ready)

    def remove(self, fd: int) -> None:
        """Stop watching *fd* (before it is closed); no-op when it is not in the set."""
        if self._c.remove(fd) == 0 and self._io.active:
            self._io.stop()

    def close(self) -> None:
        self._io.stop()
        self._io.close()
        self._c.close()


class _Pump:
    """Drives one transfer's DATA/ACK exchange from the event loop (no greenlet).

    :class:`_Dispatcher` calls :meth:`on_readable` when the socket has data: it drains every
    datagram queued on the transfer's socket (at most ``_DRAIN_MAX`` per call), hands the ACKs
    to the transfer as one batch and sends what it returns. The timer fires at the transfer's
    deadline; it drains the socket first (an ACK already queued is not a timeout), then calls
    ``on_timeout`` only if the deadline still passed, and re-arms itself for the next deadline.
    The transfer's greenlet is woken when the transfer is over, stalls on a read, or a callback
    raised.
    """

    __slots__ = ("_buf", "_client", "_clock", "_dispatcher", "_fast", "_fd", "_lane", "_loop",
                 "_on_timer_cb", "_period", "_recv", "_send", "_server", "_strangers",
                 "_strangers_fd", "_timer", "_transfer", "_waiter")

    def __init__(self, server: TftpServer, dispatcher: _Dispatcher | _CompiledDispatcher,
                 sock: _socket.socket, strangers: _socket.socket, client: tuple[str, int],
                 transfer: ReadTransfer,
                 fast: Callable[[], tuple[int, int] | None] | None = None) -> None:
        self._server = server
        self._dispatcher = dispatcher
        self._fd = sock.fileno()  # connected to the client: only its datagrams (see _connect)
        self._strangers = strangers  # the same port, everybody else's datagrams
        self._strangers_fd = strangers.fileno()
        self._client = client
        self._transfer = transfer
        self._clock = server._clock
        self._buf = bytearray(_TRANSFER_BUFSIZE)
        self._recv = sock.recv_into
        self._send = sock.send
        self._loop = gevent.get_hub().loop
        self._timer: object | None = None
        self._on_timer_cb = self._on_timer
        self._period = 0.0
        self._waiter: Waiter | None = None
        self._fast = fast if dispatcher.compiled else None
        self._lane: object | None = None

    def send(self, datagrams: Iterable[Datagram]) -> None:
        """Send a batch; a failed send counts as a lost packet (the timer will resend it)."""
        send = self._send
        try:
            for datagram in datagrams:
                send(datagram)
        except OSError as exc:  # EAGAIN with a full send buffer included
            log.debug("tftp send to %s:%d failed: %s", *self._client, exc)

    def request_again(self) -> None:
        """The client repeated its request (the listener saw it): resend the first answer if
        the transfer has not been ACKed yet (:meth:`ReadTransfer.on_request_again`)."""
        lane = self._lane
        try:
            if lane is not None:  # the running state back into the transfer first
                lane.sync()  # type: ignore[attr-defined]
            self.send(self._transfer.on_request_again())
            if lane is not None:  # the deadline moved
                lane.rearm()  # type: ignore[attr-defined]
        except BaseException:
            self._crash()

    def wait(self) -> None:
        """Run the exchange from callbacks until the greenlet is needed again."""
        self._waiter = waiter = Waiter()
        self._lane = lane = self._make_lane()
        self._dispatcher.add(self._fd, lane or self.on_readable)
        self._dispatcher.add(self._strangers_fd, self.on_stranger)
        self._arm(self._transfer.deadline - self._clock())
        try:
            waiter.get()
        finally:
            self._waiter = None
            self._dispatcher.remove(self._fd)
            self._dispatcher.remove(self._strangers_fd)
            self._disarm()

    def close(self) -> None:
        self._dispatcher.remove(self._fd)
        self._dispatcher.remove(self._strangers_fd)
        self._disarm()
        self._lane = None

    def _make_lane(self) -> object | None:
        """A compiled ``Lane`` for this transfer when it qualifies (octet, windowsize up to 64,
        a complete local file, the real clock), else None: the Python handler serves it."""
        fast, transfer = self._fast, self._transfer
        if fast is None or transfer.windowsize > _LANE_WINDOW_MAX or self._clock is not time.monotonic:
            return None
        try:
            found = fast()
            if found is None:
                return None
            return _fastpath.Lane(transfer, self._fd, self._buf, found[0], found[1],  # type: ignore[union-attr]
                                  self.on_readable, self._on_timer_cb)
        except (ValueError, TypeError, OSError) as exc:  # netascii, a closed file...
            log.debug("tftp client=%s:%d served in Python: %s", *self._client, exc)
            return None

    def _arm(self, delay: float) -> None:
        """A new timer: first after *delay*, then every RTO (see :meth:`_touch`).

        A lane has no timer of its own: its dispatcher's one timer (a timerfd, see
        _fastpath.c) calls :meth:`_on_timer` when the transfer's deadline passed; *delay* is
        always ``transfer.deadline - now`` here, which ``rearm()`` reads from the transfer.
        """
        lane = self._lane
        if lane is not None:
            lane.rearm()  # type: ignore[attr-defined]
            return
        self._disarm()
        period = self._period = _PERIOD_SHARE * self._transfer.timeout
        timer = self._loop.timer(max(delay, 0.0), period)
        self._timer = timer
        timer.start(self._on_timer_cb)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()  # type: ignore[attr-defined]
            timer.close()  # type: ignore[attr-defined]

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._dispatcher.remove(self._fd)
            self._dispatcher.remove(self._strangers_fd)
            self._disarm()
            waiter.switch(None)

    def _crash(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._dispatcher.remove(self._fd)
            self._dispatcher.remove(self._strangers_fd)
            self._disarm()
            waiter.throw(*sys.exc_info())

    def on_readable(self, size: int | None = None) -> None:
        """The client's datagrams are queued (called by :class:`_Dispatcher`); never raises.

        *size*: a datagram the compiled ``Lane`` already received into the buffer and did
        not take (-1: its receive failed); None: receive one here.
        """
        transfer = self._transfer
        try:
            # The common case first: one ACK that acknowledges all that was sent. Any other
            # datagram queued behind it is older or a duplicate, so acting at once is what a
            # full drain would do (and no second recv is spent to find the queue empty);
            # anything else takes the full drain.
            buf = self._buf
            if size is None:
                try:
                    size = self._recv(buf)
                except OSError:
                    size = -1
            if size == 4 and buf[1] == 4 and buf[0] == 0:
                out = transfer.on_ack_all(buf[2] << 8 | buf[3])
                if out is None:
                    self._drain(size)
                elif out:
                    if len(out) == 1:
                        try:
                            self._send(out[0])
                        except OSError as exc:  # a loss: the timer resends
                            log.debug("tftp send to %s:%d failed: %s", *self._client, exc)
                    else:
                        self.send(out)
                    if not (transfer.stalled or transfer.finished):  # finished: a read error's ERROR
                        self._touch()
                        return
            else:
                self._drain(size)
        except BaseException:
            self._crash()
            return
        if transfer.finished or transfer.stalled:
            self._wake()

    def on_stranger(self) -> None:
        """Datagrams on the transfer's port from others than the client (called by
        :class:`_Dispatcher`): each gets ERROR 5, a bounded number per call; never raises."""
        recv, buf, sock = self._strangers.recvfrom_into, self._buf, self._strangers
        stranger = self._server._stranger
        try:
            for _ in range(_DRAIN_MAX):
                try:
                    size, peer = recv(buf)
                except BlockingIOError:
                    return
                except OSError as exc:
                    log.debug("tftp recv error on the port of client=%s:%d: %s", *self._client, exc)
                    continue
                stranger(sock, buf, size, peer)
        except BaseException:
            self._crash()

    def _touch(self) -> None:
        """Progress moved the deadline to now + RTO: restart the timer (no new watcher).

        The timer repeats every ``_period``, a little less than the RTO when it was made;
        ``again()`` restarts it from now. While the RTO stays at or above the period, the timer
        fires early or not at all (an early firing re-arms for the rest in :meth:`_on_timer`),
        never late; a new watcher is made only when the RTO fell below the period.
        """
        timer = self._timer
        if timer is not None and self._transfer.timeout >= self._period:
            timer.again(self._on_timer_cb)  # type: ignore[attr-defined]
        else:
            self._arm(self._transfer.timeout)

    def _drain(self, size: int = -1) -> None:
        """Read what is queued (bounded); act on the ACKs as one batch.

        *size* describes a datagram already in the buffer (-1: none).
        """
        recv, buf, client, transfer = self._recv, self._buf, self._client, self._transfer
        acks: list[int] | None = None
        ack = -1
        for _ in range(_DRAIN_MAX):
            if size < 0:
                try:
                    size = recv(buf)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                except OSError as exc:  # e.g. an ICMP error reported late; treat as a loss
                    log.debug("tftp recv error client=%s:%d: %s", *client, exc)
                    continue
            if size >= 4 and buf[1] == 4 and buf[0] == 0:  # ACK
                block = buf[2] << 8 | buf[3]
                size = -1
                if ack < 0:
                    ack = block
                elif acks is None:
                    acks = [ack, block]
                else:
                    acks.append(block)
                continue
            if ack >= 0:  # act on the ACKs that came before it, in order
                self.send(transfer.on_acks(acks) if acks else transfer.on_ack(ack))
                acks, ack = None, -1
            self._server._datagram(transfer, client, bytes(buf[:size]))
            size = -1
        if ack >= 0:
            self.send(transfer.on_acks(acks) if acks else transfer.on_ack(ack))

    def _on_timer(self) -> None:
        transfer = self._transfer
        try:
            now = self._clock()
            if now < transfer.deadline:  # progress moved the deadline since the timer was set
                self._arm(transfer.deadline - now)
                return
            self._drain()  # an ACK already queued is not a timeout
            if not (transfer.finished or transfer.stalled):
                now = self._clock()
                if now >= transfer.deadline:
                    self.send(transfer.on_timeout())
                    now = self._clock()
                if not (transfer.finished or transfer.stalled):
                    self._arm(transfer.deadline - now)
                    return
        except BaseException:
            self._crash()
            return
        self._wake()
