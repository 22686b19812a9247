"""The HTTP file server (``-H``): GET and HEAD over the file store, bodies by ``os.sendfile``.

One listener greenlet accepts connections; each connection is served by its own greenlet,
at most ``max_connections`` at once and ``max_per_client`` per address (README, ``[httpd]``):

* when every slot is taken, the connection that has waited longest for a request (idle
  between keep-alive requests, or still sending its head) is closed to make room, as nginx
  reuses idle keep-alive connections; with none waiting, the newcomer gets ``503`` and is
  closed, counted (``http.refused``, reason ``connections``; ``per_client`` for the per-address
  bound; ``fds`` when the process is out of descriptors). 1,000 idle connections therefore
  never stop service;
* a connection may wait ``idle_timeout`` for a request, a request head must arrive within
  ``request_timeout`` once begun (else ``408``) and may be ``max_request_bytes`` long (else
  ``431``, or ``414`` for a request line alone that long); a client that reads nothing of a
  response for ``send_timeout`` is dropped.

What a request means is decided by :mod:`massboot.http.protocol` (sans I/O). The name goes to
the file store exactly as the TFTP server's does (``[filters]``, confinement, the shared mirror
cache: TFTP and HTTP clients of one remote file cause one upstream download between them); a
:class:`~massboot.sources.FileError` becomes 404 (not found), 403 (access) or 502 (the mirror
failed), with a body that never names the mirror. With ``check_ip``, an address the lease store
does not know as leased gets 401 (pybootd's answer; no credentials can help, so no
``WWW-Authenticate`` challenge is offered).

The body never passes through Python: ``os.sendfile`` from the source's descriptor (a local
file, a cached copy, or the ``.part`` file of a download still in flight, sent as it fills:
chunked when the mirror gave no length) to the socket, a chunk of at most
:data:`SENDFILE_CHUNK` at a time. The socket is non-blocking: a full send buffer makes the
greenlet wait for writability on the hub. A chunk whose first and last bytes are in the page
cache (probed with ``preadv(RWF_NOWAIT)``) is sent from the hub; any other goes through gevent's
threadpool, so a cold disk never stalls the hub.

Events (see :mod:`massboot.events`): ``http.start`` when a body begins, then one ``http.done``
or ``http.fail`` per request (the outcome log line); ``http.refused`` per connection turned away.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _stdsocket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, cast

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.pool import Group, Pool

from massboot.dhcp.leases import LeaseStoreUnavailable
from massboot.events import EventBus
from massboot.http.protocol import (
    FileMeta,
    HttpError,
    Plan,
    Request,
    chunk_header,
    etag_for,
    head_end,
    parse_request,
    plan_error,
    plan_file,
    render_head,
)
from massboot.sources import FdSource, FileError, FileReason, Source

__all__ = ["SENDFILE_CHUNK", "FileOpener", "HttpServer"]

log = logging.getLogger(__name__)

#: the most bytes one ``os.sendfile`` call sends (its first and last pages are probed)
SENDFILE_CHUNK = 1 << 20
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_MSG_MORE = getattr(_stdsocket, "MSG_MORE", 0)
_FATAL_ERRNOS = (errno.EBADF, errno.ENOTSOCK, errno.EINVAL)
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: seconds (and bytes) a connection closed after an error is read and discarded first, so the
#: client's unread request does not turn the close into a reset that destroys the error
#: response before the client reads it (RFC 9112 section 9.6; nginx's lingering close)
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
LINGER_MAX = 64        # refused connections lingering at once; beyond, closed at once
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nServer: massboot\r\nRetry-After: 1\r\n"
         b"Content-Length: 0\r\nConnection: close\r\n\r\n")

# The one place a file store's refusal becomes an HTTP status and an outcome reason.
_FILE_STATUS: dict[FileReason, tuple[int, str]] = {
    FileReason.NOT_FOUND: (404, "not_found"),
    FileReason.ACCESS: (403, "access"),
    FileReason.UPSTREAM: (502, "upstream"),
    FileReason.CLOSED: (500, "error"),
    FileReason.BUSY: (503, "busy"),
}


class FileOpener(Protocol):
    """Name to source (:class:`massboot.files.FileStore` or its ``for_root`` view)."""

    def open(self, name: str, client_ip: str) -> Source:
        """Open *name* for *client_ip*; raise FileError when it cannot be served."""
        ...


class _SendTimeout(Exception):
    """The client read nothing for ``send_timeout``."""


class _Conn:
    """One accepted connection."""

    __slots__ = ("sock", "ip", "port", "greenlet", "sent", "sending", "linger")

    def __init__(self, sock: gsocket.socket, ip: str, port: int) -> None:
        self.sock = sock
        self.ip = ip
        self.port = port
        self.greenlet: gevent.Greenlet | None = None
        self.sent = 0           # body bytes of the current response
        self.sending = False    # a body is being sent
        self.linger = False     # closed after an error: the client may still be sending


class HttpServer:
    """A read-only HTTP/1.1 file server on gevent.

    Args:
        address: IPv4 address to listen on.
        port: TCP port; 0 picks an ephemeral one (see :attr:`port`).
        files: opens the names clients ask for.
        events: the bus for ``http.*`` events.
        is_leased: ``check_ip``: True for an address massboot leased; None: everyone may
            download.
        max_connections: connections served at once.
        max_per_client: connections one address may hold.
        idle_timeout: seconds a connection may wait for a request.
        request_timeout: seconds a request head may take once begun.
        send_timeout: seconds a client may read nothing of a response.
        max_request_bytes: the largest request head.
        backlog: the listen queue.
    """

    def __init__(self, address: str, port: int, files: FileOpener, events: EventBus, *,
                 is_leased: Callable[[str], bool] | None = None, max_connections: int = 1024,
                 max_per_client: int = 32, idle_timeout: float = 30.0,
                 request_timeout: float = 10.0, send_timeout: float = 30.0,
                 max_request_bytes: int = 8192, backlog: int = 1024) -> None:
        if max_connections < 1 or max_per_client < 1:
            raise ValueError("max_connections and max_per_client must be at least 1")
        self._address = address
        self._requested_port = port
        self._files = files
        self._events = events
        self._is_leased = is_leased
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._send_timeout = send_timeout
        self._max_request_bytes = max_request_bytes
        self._backlog = backlog
        self._clock = time.monotonic
        self._socket: gsocket.socket | None = None
        self._acceptor: gevent.Greenlet | None = None
        self._group = Group()
        self._lingering = Pool(LINGER_MAX)
        self._conns: dict[_Conn, None] = {}
        self._idle: OrderedDict[_Conn, None] = OrderedDict()   # waiting for a request, oldest first
        self._per_ip: dict[str, int] = {}
        self._error: str | None = None
        self._stopped = Event()
        self._probe = bytearray(1)
        self._nowait = bool(_RWF_NOWAIT) and hasattr(os, "preadv")
        self.evicted = 0        # idle connections closed to make room

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen (synchronously), then accept in a greenlet."""
        if self._socket is not None:
            raise RuntimeError("HttpServer already started")
        sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        try:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
            sock.bind((self._address, self._requested_port))
            sock.listen(self._backlog)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._error = None
        self._stopped.clear()
        self._acceptor = gevent.spawn(self._accept_loop, sock)
        log.info("http listening on %s:%d max_connections=%d", self._address, self.port,
                 self._max_connections)

    @property
    def alive(self) -> bool:
        """True while the accept loop runs (for /healthz and the main loop)."""
        return self._acceptor is not None and not self._acceptor.dead

    @property
    def error(self) -> str | None:
        """Why the listener stopped on its own, else None."""
        if self._error is None and self._acceptor is not None and self._acceptor.dead:
            exc = self._acceptor.exception
            return f"{type(exc).__name__}: {exc}" if exc is not None else "listener ended"
        return self._error

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._socket is None:
            raise RuntimeError("HttpServer not started")
        return self._socket.getsockname()[1]

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    @property
    def sending(self) -> int:
        """Responses whose body is being sent now."""
        return sum(1 for c in self._conns if c.sending)

    def workers(self) -> tuple[int, int]:
        """``(busy, capacity)``: one greenlet per open connection, ``max_connections``."""
        return len(self._conns), self._max_connections

    def tune(self, *, idle_timeout: float, request_timeout: float, send_timeout: float,
             max_request_bytes: int, max_per_client: int) -> None:
        """New bounds for what comes next (SIGHUP); open connections keep going."""
        self._idle_timeout, self._request_timeout = idle_timeout, request_timeout
        self._send_timeout, self._max_request_bytes = send_timeout, max_request_bytes
        self._max_per_client = max_per_client

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`stop`."""
        if self._socket is None:
            self.start()
        self._stopped.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; let responses in progress finish for *timeout* seconds, then close."""
        if self._acceptor is not None:
            self._acceptor.kill()
            self._acceptor = None
        if self._socket is not None:
            self._socket.close()
        for conn in list(self._idle):      # nobody waits on an idle connection
            if conn.greenlet is not None:
                conn.greenlet.kill(block=False)
        self._group.join(timeout=timeout)
        if len(self._group):
            log.info("http stopping: closing %d connection(s)", len(self._group))
        self._group.kill(block=True, timeout=5)
        self._lingering.kill(block=True, timeout=1)
        self._stopped.set()

    def __enter__(self) -> HttpServer:
        if self._socket is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(timeout=0)

    # -- accepting -----------------------------------------------------------------------

    def _accept_loop(self, sock: gsocket.socket) -> None:
        errors = 0
        while True:
            try:
                conn, address = sock.accept()
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    # no descriptor for the newcomer: it waits in the backlog while an idle
                    # connection is closed (or one ends)
                    self._events.emit("http.refused", ip="-", port=0, reason="fds")
                    if not self._evict_idle():
                        gevent.sleep(0.1)
                    continue
                errors += 1
                if exc.errno in _FATAL_ERRNOS or sock.fileno() < 0 or errors >= 100:
                    self._error = f"accept failed: {exc}"
                    log.error("http listener stopped: %s", self._error)
                    return
                log.warning("http accept: %s", exc)
                continue
            errors = 0
            self._admit(conn, address[0], address[1])

    def _admit(self, sock: gsocket.socket, ip: str, port: int) -> None:
        if self._per_ip.get(ip, 0) >= self._max_per_client:
            self._turn_away(sock, ip, port, "per_client")
            return
        if len(self._conns) >= self._max_connections and not self._evict_idle():
            self._turn_away(sock, ip, port, "connections")
            return
        conn = _Conn(sock, ip, port)
        self._conns[conn] = None
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        conn.greenlet = self._group.spawn(self._serve, conn)

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest for a request; False when none waits."""
        while self._idle:
            conn, _ = self._idle.popitem(last=False)
            if conn.greenlet is None or conn.greenlet.dead:
                continue
            self.evicted += 1
            log.debug("http: closing idle connection client=%s:%d for a newcomer", conn.ip, conn.port)
            conn.greenlet.kill(block=True, timeout=1)
            return True
        return False

    def _turn_away(self, sock: gsocket.socket, ip: str, port: int, reason: str) -> None:
        self._events.emit("http.refused", ip=ip, port=port, reason=reason)
        try:
            sock.settimeout(0.0)
            sock.send(_BUSY)            # a fresh connection's send buffer is empty
        except OSError:
            sock.close()
            return
        if self._lingering.full():
            sock.close()
        else:
            self._lingering.spawn(_linger_close, sock)

    # -- one connection ------------------------------------------------------------------

    def _serve(self, conn: _Conn) -> None:
        sock = conn.sock
        buf = bytearray()
        try:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            while True:
                self._idle[conn] = None
                try:
                    head = self._read_head(conn, buf)
                finally:
                    self._idle.pop(conn, None)
                if head is None or not self._handle(conn, head):
                    break
            if conn.linger:
                _linger_close(sock)
        except OSError as exc:     # a reset between requests
            log.debug("http client=%s:%d: %s", conn.ip, conn.port, exc)
        except Exception:
            log.exception("http connection failed client=%s:%d", conn.ip, conn.port)
        finally:
            self._conns.pop(conn, None)
            self._idle.pop(conn, None)
            left = self._per_ip.pop(conn.ip, 1) - 1
            if left > 0:
                self._per_ip[conn.ip] = left
            sock.close()

    def _read_head(self, conn: _Conn, buf: bytearray) -> bytes | None:
        """The next request head, None when the client closed or stayed idle.

        A head that is too long or too slow is answered here (431/414/408) and ends the
        connection (None).
        """
        sock = conn.sock
        limit = self._max_request_bytes
        idle_until = self._clock() + self._idle_timeout
        started: float | None = None
        searched = 0
        while True:
            while buf[:2] == b"\r\n" or buf[:1] == b"\n":   # RFC 9112 section 2.2
                del buf[:2 if buf[:1] == b"\r" else 1]
            if buf:
                if started is None:
                    started = self._clock()
                end = head_end(buf, searched)
                if end >= 0:
                    head = bytes(buf[:end])
                    del buf[:end]
                    return head
                searched = len(buf)
                if len(buf) > limit:
                    status = 431 if b"\n" in buf[:limit] else 414
                    self._refuse_head(conn, status, "too_large", started)
                    return None
                wait = started + self._request_timeout - self._clock()
            else:
                wait = idle_until - self._clock()
            if wait <= 0:
                if started is not None:
                    self._refuse_head(conn, 408, "timeout", started)
                return None
            sock.settimeout(wait)
            try:
                data = sock.recv(limit + 1 - len(buf))
            except TimeoutError:
                continue            # the deadline check above answers it
            if not data:
                return None         # closed (an unfinished head is dropped)
            buf += data

    def _refuse_head(self, conn: _Conn, status: int, reason: str, started: float) -> None:
        plan = plan_error(status, None, keep_alive=False)
        self._reply_error(conn, plan)
        self._done(conn, "-", "", status, 0, started, False, reason)

    # -- one request -----------------------------------------------------------------------

    def _handle(self, conn: _Conn, head: bytes) -> bool:
        """Answer one request; True when the connection stays open for the next."""
        started = self._clock()
        try:
            request = parse_request(head)
        except HttpError as exc:
            plan = plan_error(exc.status, None, keep_alive=False, headers=exc.headers)
            self._reply_error(conn, plan)
            self._done(conn, "-", _request_target(head), exc.status, 0, started, False, exc.reason)
            return False
        refusal = self._check_ip(conn.ip)
        if refusal is not None:
            return self._error_reply(conn, request, refusal[0], refusal[1], started)
        try:
            try:
                source = self._files.open(request.name, conn.ip)
            except FileError as exc:
                # out of descriptors: an idle connection makes room for the file, as for a
                # newcomer in the accept loop; with none idle the client gets 503 Retry-After
                if exc.reason is not FileReason.BUSY or not self._evict_idle():
                    raise
                source = self._files.open(request.name, conn.ip)
        except FileError as exc:
            status, reason = _FILE_STATUS.get(exc.reason, (500, "error"))
            return self._error_reply(conn, request, status, reason, started)
        try:
            return self._respond(conn, request, source, started)
        finally:
            try:
                source.close()
            except Exception:
                log.exception("http: closing %r failed", request.name[:128])

    def _check_ip(self, ip: str) -> tuple[int, str] | None:
        if self._is_leased is None:
            return None
        try:
            if self._is_leased(ip):
                return None
        except LeaseStoreUnavailable:   # an unreachable database: its view says so once
            return 503, "lease_store"
        except Exception:   # a lease store that cannot answer: refuse, never serve blindly
            log.exception("http check_ip failed for %s", ip)
            return 503, "lease_store"
        return 401, "not_leased"

    def _error_reply(self, conn: _Conn, request: Request, status: int, reason: str, started: float) -> bool:
        # a 503 says when to come back (RFC 9110 section 10.2.3): our shortages are brief
        plan = plan_error(status, request, headers=(("Retry-After", "1"),) if status == 503 else ())
        self._reply_error(conn, plan)
        self._done(conn, request.method, request.name, status, 0, started, False, reason)
        return plan.keep_alive

    def _reply_error(self, conn: _Conn, plan: Plan) -> None:
        data = render_head(plan)
        if plan.send_body and plan.body:
            data += plan.body
        conn.linger = not plan.keep_alive
        try:
            self._sendall(conn, data)
        except (OSError, _SendTimeout) as exc:
            log.debug("http client=%s:%d: error reply not sent: %s", conn.ip, conn.port, exc)

    def _meta(self, source: FdSource, fd: int) -> FileMeta:
        available, complete = source.ready(0)
        if not complete:        # a download in flight: its length if the mirror gave one
            return FileMeta(source.size)
        st = os.fstat(fd)       # an open descriptor: no disk access
        return FileMeta(available, st.st_mtime, etag_for(st.st_ino, available, st.st_mtime_ns))

    def _respond(self, conn: _Conn, request: Request, opened: Source, started: float) -> bool:
        source = cast(FdSource, opened)     # the file store's sources are all FdSources
        try:
            fd = source.fileno()
            plan = plan_file(request, self._meta(source, fd))
        except FileError as exc:        # the download failed before anything was sent
            status, reason = _FILE_STATUS.get(exc.reason, (500, "error"))
            return self._error_reply(conn, request, status, reason, started)
        body = plan.send_body
        name, method = request.name, request.method
        conn.sent = 0
        if body:
            conn.sending = True
            self._events.emit("http.start", ip=conn.ip, port=conn.port, method=method, name=name,
                              status=plan.status, bytes=plan.length)
        try:
            self._sendall(conn, render_head(plan), _MSG_MORE if body else 0)
            if body:
                self._send_body(conn, source, fd, plan)
        except FileError as exc:    # the download failed or stalled mid-body: cut the response
            self._fail(conn, method, name, plan.status, started, body, "upstream", exc.message)
            return False
        except _SendTimeout:
            self._fail(conn, method, name, plan.status, started, body, "send_timeout",
                       f"nothing read for {self._send_timeout:g} s")
            return False
        except OSError as exc:
            self._fail(conn, method, name, plan.status, started, body, "client_gone",
                       exc.strerror or str(exc))
            return False
        finally:
            conn.sending = False
        self._done(conn, method, name, plan.status, conn.sent, started, body, None)
        return plan.keep_alive

    def _send_body(self, conn: _Conn, source: FdSource, fd: int, plan: Plan) -> None:
        out = conn.sock.fileno()
        pos = plan.start
        end = None if plan.length is None else plan.start + plan.length
        while end is None or pos < end:
            available, complete = source.ready(pos + 1)   # waits only for a download in flight
            limit = available if end is None else min(available, end)
            if limit <= pos:
                if not complete:
                    continue
                if end is not None:
                    raise FileError(FileReason.UPSTREAM, "file shorter than announced")
                break
            if plan.chunked:
                self._sendall(conn, chunk_header(limit - pos), _MSG_MORE)
            self._sendfile(conn, out, fd, pos, limit)
            pos = limit
            if plan.chunked:
                self._sendall(conn, b"\r\n", _MSG_MORE)
        if plan.chunked:
            self._sendall(conn, b"0\r\n\r\n")

    def _sendfile(self, conn: _Conn, out: int, fd: int, pos: int, limit: int) -> None:
        while pos < limit:
            count = min(limit - pos, SENDFILE_CHUNK)
            try:
                if self._cached(fd, pos, count):
                    sent = os.sendfile(out, fd, pos, count)
                else:
                    sent = _sendfile_in_thread(out, fd, pos, count)
            except BlockingIOError:
                gsocket.wait_write(out, timeout=self._send_timeout, timeout_exc=_SendTimeout())
                continue
            if sent == 0:       # the file shrank under us (a local file rewritten in place)
                raise FileError(FileReason.UPSTREAM, "file shorter than announced")
            pos += sent
            conn.sent += sent

    def _cached(self, fd: int, pos: int, count: int) -> bool:
        """Whether ``[pos, pos + count)`` can be read without waiting for the disk: its first
        and last bytes are in the page cache (readahead fills a run of pages in order)."""
        if not self._nowait:
            return False
        try:
            for at in (pos, pos + count - 1):
                if os.preadv(fd, [self._probe], at, _RWF_NOWAIT) <= 0:
                    return False
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait = False     # this kernel or file system cannot tell: threadpool
            return False
        return True

    def _sendall(self, conn: _Conn, data: bytes, flags: int = 0) -> None:
        sock = conn.sock
        sock.settimeout(self._send_timeout)
        try:
            sock.sendall(data, flags)
        except TimeoutError:
            raise _SendTimeout from None

    # -- outcomes ----------------------------------------------------------------------------

    def _done(self, conn: _Conn, method: str, name: str, status: int, sent: int, started: float,
              body: bool, reason: str | None) -> None:
        fields: dict[str, Any] = {"ip": conn.ip, "port": conn.port, "method": method, "name": name,
                                  "status": status, "bytes": sent,
                                  "duration": self._clock() - started, "body": body}
        if reason is not None:
            fields["reason"] = reason
        self._events.emit("http.done", **fields)

    def _fail(self, conn: _Conn, method: str, name: str, status: int, started: float, body: bool,
              reason: str, detail: str) -> None:
        self._events.emit("http.fail", ip=conn.ip, port=conn.port, method=method, name=name,
                          status=status, bytes=conn.sent, duration=self._clock() - started,
                          body=body, reason=reason, detail=detail)


def _linger_close(sock: gsocket.socket) -> None:
    """Close after an error: end our side, read what the client still sends (bounded), close."""
    try:
        sock.shutdown(gsocket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        left = LINGER_BYTES
        while left > 0:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            sock.settimeout(wait)
            data = sock.recv(min(left, 65536))
            if not data:
                break
            left -= len(data)
    except OSError:
        pass
    finally:
        sock.close()


def _request_target(head: bytes) -> str:
    """The target of a request line that did not parse, for the log (bounded there)."""
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ")
    return parts[1] if len(parts) >= 2 else ""


def _sendfile_nowait(out: int, fd: int, pos: int, count: int) -> int:
    try:
        return os.sendfile(out, fd, pos, count)
    except BlockingIOError:
        return -1


def _sendfile_in_thread(out: int, fd: int, pos: int, count: int) -> int:
    """``os.sendfile`` in gevent's threadpool (the pages may have to come from disk).

    The socket is non-blocking, so the thread waits for the disk only. If this greenlet is
    killed meanwhile, the call is still waited for before the exception goes on: the
    descriptors are closed afterwards, never while the thread uses them.
    """
    result = gevent.get_hub().threadpool.spawn(_sendfile_nowait, out, fd, pos, count)
    try:
        sent = result.get()
    except BaseException:
        while not result.ready():
            try:
                result.wait()
            except BaseException:   # killed again: keep waiting, the fds must outlive the call
                continue
        raise
    if sent < 0:
        raise BlockingIOError(errno.EAGAIN, "send buffer full")
    return sent
