"""The simulated iPXE's HTTP client: HTTP/1.1 GETs with keep-alive over gevent sockets, on the
shared sans-IO core (``bench/httpcore.py``).

Lean on purpose, so that the simulator measures the server and not itself: one request line
and a Host field per GET, no library per byte; a body that is neither kept nor hashed is read
with ``MSG_TRUNC`` (Linux TCP drops it in the kernel without a copy: counted, not copied)
into one buffer shared by every client, whose contents are never read. A kept-alive
connection carries the client's next GET to the same server (iPXE keeps its HTTP connections
in a pool); one that the server closed while idle is reopened once, as a client does.
"""

from __future__ import annotations

import socket as _stdsocket
import urllib.parse
from collections.abc import Callable

from gevent import socket

from ..httpcore import DONE, ResponseReader, request

__all__ = ["HttpConnection", "HttpFailure", "split_url"]

_BUF = bytearray(1 << 20)  # shared: bodies not kept land here (or nowhere, with MSG_TRUNC)
_VIEW = memoryview(_BUF)
_TRUNC = _stdsocket.MSG_TRUNC


class HttpFailure(Exception):
    """A download failed: ``reason`` is ``http_connect``, ``http_timeout``, ``http_status_N``,
    ``http_closed`` or the core's reason prefixed with ``http_``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port]/path?q`` → ``(host, port, "/path?q")`` (the request target as given).

    Raises:
        ValueError: not an ``http://`` URL with a host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, target


class HttpConnection:
    """One client's connection to one server, reused while the server keeps it alive.

    Args:
        server: ``(host, port)``.
        bind_ip: the client's own address (its lease: the server may check it, ``check_ip``).
        timeout: seconds without a byte (connecting included) before the GET fails.
    """

    def __init__(self, server: tuple[str, int], bind_ip: str, timeout: float) -> None:
        self.server = server
        self.bind_ip = bind_ip
        self.timeout = timeout
        self.host_header = server[0] if server[1] == 80 else f"{server[0]}:{server[1]}"
        self.sock: socket.socket | None = None
        self.connections = 0  # TCP connections opened
        self.requests = 0
        self._pending = b""  # bytes received past the end of the last response

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            if self.bind_ip not in ("0.0.0.0", ""):
                sock.bind((self.bind_ip, 0))
            sock.connect(self.server)
        except OSError as exc:
            sock.close()
            kind = "http_timeout" if isinstance(exc, TimeoutError) else "http_connect"
            raise HttpFailure(kind, f"{self.server[0]}:{self.server[1]}: {exc}") from exc
        self.connections += 1
        return sock

    def get(self, target: str, *, keep: int = 0, size: int | None = None,
            progress: Callable[[int], None] | None = None) -> ResponseReader:
        """GET *target*; returns the finished reader of a 2xx answer.

        Args:
            target: the origin-form request target (``/boot/vmlinuz``).
            keep: keep up to this many body bytes (the script); 0: count them only.
            size: the size a 200 must have, or None.
            progress: called with the number of body bytes of each read (the rack's counters).

        Raises:
            HttpFailure: no answer, a broken answer, or a status other than 2xx.
        """
        wire = request("GET", target, self.host_header, headers=[("User-Agent", "massboot-sim iPXE")])
        for attempt in (0, 1):
            reused = self.sock is not None
            if self.sock is None:
                self.sock = self._connect()
                self._pending = b""
            reader = ResponseReader(keep=keep, size=size)
            try:
                self._exchange(self.sock, wire, reader, progress)
            except OSError as exc:
                self.close()
                if reused and attempt == 0 and reader.head_bytes == 0 and reader.state != DONE:
                    continue  # the server closed the idle connection: open a new one, once
                kind = "http_timeout" if isinstance(exc, TimeoutError) else "http_closed"
                raise HttpFailure(kind, f"{target}: {exc}") from exc
            if reader.reason == "closed" and reused and attempt == 0 and not reader.status:
                self.close()
                continue
            break
        self.requests += 1
        if not reader.keep_alive:
            self.close()
        if reader.state != DONE:
            raise HttpFailure(f"http_{reader.reason}", f"{target}: {reader.detail}")
        if not 200 <= reader.status < 300:
            raise HttpFailure(f"http_status_{reader.status}",
                              f"{target}: {reader.status} {reader.status_text}")
        return reader

    def _exchange(self, sock: socket.socket, wire: bytes, reader: ResponseReader,
                  progress: Callable[[int], None] | None) -> None:
        sock.sendall(wire)
        if self._pending:
            data, self._pending = self._pending, b""
            used = reader.feed(data)
            self._pending = data[used:]
        while not reader.finished:
            skip = reader.skippable()
            if skip:
                n = sock.recv_into(_BUF, min(skip, len(_BUF)), _TRUNC)
                before = reader.received
                reader.skipped(n)
            else:
                n = sock.recv_into(_BUF)
                before = reader.received
                if n:
                    used = reader.feed(_VIEW[:n])
                    if used < n:
                        self._pending = bytes(_VIEW[used:n])
                else:
                    reader.eof()
            if progress is not None and reader.received > before:
                progress(reader.received - before)

    def close(self) -> None:
        """Close the connection (the next GET opens a new one)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
