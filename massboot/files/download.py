"""One upstream download: the HTTP GET, streamed into the cache's ``.part`` file as it comes.

A :class:`Download` is shared by every reader of its URL; :class:`StreamSource` reads one in
flight, waiting for the bytes it needs. Which URL downloads, when, and what becomes of the file
is :class:`~massboot.files.mirror.Mirror`'s policy (README, "A mirror as root").

The body is stored exactly as the mirror sent it, as ``curl`` without ``--compressed`` would:
massboot asks for ``Accept-Encoding: identity`` and never decodes a ``Content-Encoding`` (RFC
9110 section 8.4): a ``.gz`` file that a mirror labels ``Content-Encoding: gzip`` (Apache's
``AddEncoding``) is served byte for byte. Messages for clients never carry the mirror's URL;
the log lines do.
"""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Callable

import gevent
import gevent.event
import requests
import urllib3

from massboot.files.cache import CacheDir, Entry, cache_key
from massboot.files.local import BufferedSource, Fd, LocalFiles, blocking
from massboot.sources import FileError, FileReason, WouldBlock

__all__ = ["CHUNK", "Download", "StreamSource", "upstream_error"]

CHUNK = 128 << 10        # bytes asked of the upstream socket at a time


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _reason(exc: BaseException) -> str:
    """A short reason for an error message to the client; the log gets the full exception."""
    if isinstance(exc, gevent.GreenletExit):
        return "cancelled"
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return "connection broken"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}"
    return type(exc).__name__


def upstream_error(exc: BaseException) -> FileError:
    """The error a download's readers get for *exc*, an unexpected way out of :meth:`Download.fetch`."""
    return FileError(FileReason.UPSTREAM, f"upstream failed: {_reason(exc)}")


def _status_error(status: int) -> FileError:
    if status in (404, 410):
        return FileError(FileReason.NOT_FOUND, "File not found")
    if status in (401, 403):
        return FileError(FileReason.ACCESS, "Access violation")
    return FileError(FileReason.UPSTREAM, f"upstream failed: HTTP {status}")


class Download:
    """One upstream GET in flight, shared by every reader of its URL.

    :meth:`fetch` fills ``size``, ``etag``, ``last_modified``, ``fd``, ``received``,
    ``writing`` and ``complete``, and sets ``headers`` once the body starts; the
    :class:`~massboot.files.mirror.Mirror` that runs it keeps ``readers``, ``stored``,
    ``greenlet``, ``reserved`` (through the *reserve* it gives :meth:`fetch`), ``reserving``,
    ``not_modified`` and ``error``, and resolves it with :meth:`finish`.
    """

    __slots__ = ("url", "key", "token", "stale", "headers", "progress", "size", "etag",
                 "last_modified", "received", "complete", "done", "not_modified", "error", "fd",
                 "readers", "stored", "writing", "greenlet", "reserved", "reserving")

    def __init__(self, url: str, stale: Entry | None) -> None:
        self.url = url
        self.key = cache_key(url)
        self.token = _uuid.uuid4().hex[:12]
        self.stale = stale                      # the cached copy being revalidated, if any
        self.headers = gevent.event.Event()     # set once the outcome of the headers is known
        self.progress = gevent.event.Event()    # replaced (after being set) on every change
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.received = 0
        self.complete = False                   # every byte is in the file
        self.done = False                       # finished one way or the other
        self.not_modified = False               # 304: serve ``stale``
        self.error: FileError | None = None
        self.fd: Fd | None = None
        self.readers = 0                        # stream sources open on it (Mirror's count)
        self.stored: Entry | None = None
        self.writing = False
        self.greenlet: gevent.Greenlet | None = None
        self.reserved = 0                       # bytes counted in the cache's bound
        self.reserving = False                  # waiting for cache space

    def notify(self) -> None:
        """Wake the readers waiting for progress."""
        event, self.progress = self.progress, gevent.event.Event()
        event.set()

    def finish(self) -> None:
        """Resolved one way or the other: wake every reader and drop the download's own
        reference to the ``.part`` file (its readers keep theirs)."""
        self.done = True
        self.headers.set()
        self.notify()
        if self.fd is not None:
            self.fd.release()

    def fetch(self, session: requests.Session, timeout: float, cache: CacheDir,
              reserve: Callable[[int], None], count: Callable[[int], None]) -> bool:
        """GET the URL into a new ``.part`` file of *cache*, conditionally if ``stale``.

        Args:
            session: the ``requests.Session`` for the GET.
            timeout: seconds for the connect, the response headers and each body read.
            cache: where the ``.part`` file is created.
            reserve: counts that many more bytes against the cache's bound before they are
                written (``Content-Length`` up front, or chunk by chunk without one); raises
                FileError when they cannot fit.
            count: told the length of every chunk received.

        Returns:
            True once every byte is in the file (``complete``); False when the mirror answered
            304 Not Modified to the conditional GET (RFC 9110 section 15.4.5) and ``etag`` /
            ``last_modified`` hold the 304's validators.

        Raises:
            FileError: NOT_FOUND or ACCESS from the status, UPSTREAM for any other status or a
                body cut short; and whatever the session, the file or *reserve* raise.
        """
        headers = {"Accept-Encoding": "identity"}
        if self.stale is not None:
            if self.stale.etag:
                headers["If-None-Match"] = self.stale.etag
            if self.stale.last_modified:
                headers["If-Modified-Since"] = self.stale.last_modified
        # A mirror's redirect (deb.debian.org → a CDN) is followed, requests' default for GET;
        # the URL asked stays the cache key.
        resp = session.get(self.url, headers=headers, stream=True, timeout=(timeout, timeout))
        try:
            status = resp.status_code
            if status == 304 and self.stale is not None:
                self.etag = resp.headers.get("ETag")
                self.last_modified = resp.headers.get("Last-Modified")
                return False
            if status != 200:
                raise _status_error(status)
            # A Content-Encoding (RFC 9110 section 8.4) is kept as sent, never decoded: the bytes
            # stored are the bytes the mirror sent, as a download tool stores them (a .gz file
            # labelled "Content-Encoding: gzip" by Apache's AddEncoding is the .gz file).
            try:
                length: int | None = int(resp.headers["Content-Length"])
                if length < 0:
                    length = None
            except (KeyError, ValueError):
                length = None
            self.size = length
            self.etag = resp.headers.get("ETag")
            self.last_modified = resp.headers.get("Last-Modified")
            if length:
                reserve(length)
            fd = cache.create_part(self.key, self.token, length)
            self.fd = Fd(fd)
            self.headers.set()
            raw = resp.raw
            read = getattr(raw, "read1", None) or raw.read
            while True:
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    break
                if self.received + len(chunk) > self.reserved:     # no Content-Length: as it comes
                    reserve(self.received + len(chunk) - self.reserved)
                self.writing = True
                try:
                    blocking(_pwrite_all, fd, chunk, self.received)
                except OSError:     # the write failed (ENOSPC...): no thread holds the fd now
                    self.writing = False
                    raise
                self.writing = False
                self.received += len(chunk)
                count(len(chunk))
                self.notify()
            if length is not None and self.received != length:
                raise FileError(FileReason.UPSTREAM, f"upstream failed: cut short at "
                                                     f"{self.received} of {length} bytes")
        finally:
            resp.close()
        # Every byte is in the file: readers may finish while it is filed into the cache.
        if self.size is None:
            self.size = self.received
        self.complete = True
        self.notify()
        return True


class StreamSource(BufferedSource):
    """A file still downloading: reads wait for the bytes they need to arrive."""

    def __init__(self, files: LocalFiles, dl: Download, fd: Fd, stall: float,
                 on_close: Callable[[], None]) -> None:
        super().__init__(files, fd, dl.size, on_close)
        self._dl = dl
        self._stall = stall

    def _final_size(self) -> int | None:
        return self._dl.size     # set to the bytes received once complete

    def _limit(self, end: int, wait: bool = True) -> int | None:
        dl = self._dl
        while True:
            if dl.error is not None:
                raise FileError(dl.error.reason, dl.error.message)
            if dl.complete:
                return None
            if dl.received >= end:
                return dl.received
            if not wait:
                raise WouldBlock
            # A safety net only: the download itself times out reads after http_timeout.
            if not dl.progress.wait(self._stall):
                raise FileError(FileReason.UPSTREAM, "upstream failed: stalled")
