"""Remote files through one single-flight cache shared by every client.

The first request for a URL starts the only upstream download and later requests read the
same partial file as it fills (:class:`~massboot.files.download.StreamSource`). A download
that fails or is cut short is never kept; everyone reading it gets
:class:`~massboot.sources.FileError` (``UPSTREAM``).
Complete files go into the :class:`~massboot.files.cache.CacheDir`, bounded in total size with
least-recently-used eviction, and are revalidated with a conditional GET (RFC 9110 section
13.1, ``If-None-Match`` / ``If-Modified-Since``) once older than ``revalidate_after``.

Bounds (README, "A mirror as root"): at most ``max_downloads`` upstream downloads run at once;
a request for a file that needs one more waits up to ``http_timeout`` for a slot, then is
refused (``cache.refused``, reason ``downloads``); a boot-file size prefetch never waits. Every
download reserves its bytes in the cache first (``Content-Length``, or chunk by chunk without
one); what cannot fit, after evicting unread files and waiting up to ``http_timeout`` for
readers to finish, is refused (reason ``space``). A download whose clients have all gone is
finished for the cache: it still holds its slot and its reservation, so it is bounded like any
other, and the next client finds the file.

One download (the GET, the ``.part`` file, how the body is stored) is a
:class:`~massboot.files.download.Download`; this module decides which URL downloads, and what
becomes of the file. Messages for clients never carry the mirror's URL; the log lines do.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable

import gevent
import gevent.event
import gevent.lock
import requests

from massboot.config import ConfigError
from massboot.events import EventBus
from massboot.files.cache import CacheDir, Entry, FlightLocks, Missing, SharedMissing, cache_key
from massboot.files.download import Download, StreamSource, upstream_error
from massboot.files.local import BufferedSource, Fd, LocalFiles, blocking, open_cloexec
from massboot.sources import FileError, FileReason, Source, client_text

__all__ = ["MAX_DOWNLOADS", "Mirror"]

log = logging.getLogger(__name__)

REVALIDATE_BACKOFF = 30.0  # seconds a stale copy is served without asking a mirror that failed
# seconds a 404 from the mirror is remembered: PXELINUX probes a dozen config names per client
# (UUID, 01-<mac>, hex IP prefixes) that usually do not exist; a rack would ask the mirror for
# each of them (1,640 GETs for 500 clients) instead of once per name and period
NEGATIVE_TTL = 30.0
MISSING_MAX = 4096        # names remembered as missing; the oldest go first (never a wipe)
MAX_DOWNLOADS = 8         # default upstream downloads at once ([tftpd] max_downloads)
FLIGHT_POLL = 0.05        # seconds between looks at another process's download of a file


def _open_part(directory: str, key: str) -> tuple[str, int] | None:
    """The token and a read descriptor of *key*'s newest ``.part`` file in *directory* (another
    process's download in flight), or None. Blocking."""
    import glob

    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"{key}.*.part")):
        try:
            found.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    for _mtime, path in sorted(found, reverse=True):
        try:
            return os.path.basename(path).split(".")[1], open_cloexec(path)
        except OSError:
            continue
    return None


def _announced(cache: CacheDir, key: str) -> int | None:
    """The length announced for *key*'s newest ``.part`` (another process's download in
    flight, :meth:`CacheDir.part_size`), or None. Blocking."""
    part = _open_part(cache.dir, key)
    if part is None:
        return None
    os.close(part[1])
    return cache.part_size(key, part[0])


class Mirror:
    """Single-flight downloads of URLs into a cache directory, and sources to read them.

    Args:
        cache: the cache directory's index.
        files: reads the downloaded files (see :class:`~massboot.files.local.LocalFiles`).
        session: the ``requests.Session`` for upstream GETs.
        http_timeout: seconds for the upstream connect, the response headers and each body read.
        revalidate_after: seconds a cached file is served without asking the mirror.
        events: the event bus for ``cache.*`` events.
        max_downloads: upstream downloads at once.
        clock: monotonic seconds (the negative entries' age).

    Attributes:
        hits: opens served from a cached copy (fresh, revalidated, or stale with the mirror down).
        misses: opens (and :meth:`size` prefetches) that started an upstream download.
        coalesced: opens that joined a download already in flight.
        upstream_bytes: body bytes received from mirrors.
        refused: requests refused by a bound, by reason (``downloads``, ``space``).
    """

    def __init__(self, cache: CacheDir, files: LocalFiles, session: requests.Session, *,
                 http_timeout: float, revalidate_after: float, events: EventBus,
                 max_downloads: int = MAX_DOWNLOADS,
                 clock: Callable[[], float] = time.monotonic, shared: bool = False) -> None:
        self.cache = cache
        # processes sharing the directory: one download per file among them all
        self._flight = FlightLocks(cache.dir) if shared else None
        cache.flight = self._flight
        self._flight_fds: dict[str, int] = {}       # url → the lock of our download of it
        self._flight_waits: dict[str, gevent.event.Event] = {}   # url → set when _lead ends
        self._files = files
        self._session = session
        self.http_timeout = http_timeout
        self._revalidate_after = revalidate_after
        self._events = events
        self._inflight: dict[str, Download] = {}    # url → download
        self._missing = Missing(min(revalidate_after, NEGATIVE_TTL), MISSING_MAX, clock)
        # processes sharing the directory share the 404s too: one GET per missing name for all
        self._shared_missing = SharedMissing(cache.dir, self._missing.ttl, MISSING_MAX) \
            if shared else None
        self._closed = False
        self.max_downloads = max_downloads
        self.active = 0                              # downloads holding a slot
        self._slot = gevent.event.Event()            # set (and replaced) when a slot frees
        self._loading = gevent.lock.Semaphore()
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.upstream_bytes = 0
        self.refused: dict[str, int] = {"downloads": 0, "space": 0}

    def open(self, url: str) -> Source:
        """A source for *url*: cached, joining a download in flight, or starting one.

        Raises:
            FileError: NOT_FOUND or ACCESS from the mirror's answer, UPSTREAM for a failure.
        """
        if self._closed:
            raise FileError(FileReason.UPSTREAM, "upstream failed: server stopping")
        if url in self._missing:
            self._count("hit", url, None)
            raise FileError(FileReason.NOT_FOUND, "File not found")
        attempts = 0
        while attempts < 3:
            attempts += 1
            if self._closed:        # closed while this request waited for a slot or space
                raise FileError(FileReason.UPSTREAM, "upstream failed: server stopping")
            dl = self._inflight.get(url)
            started = dl is None
            if dl is None:
                entry = self.cache.get(url)
                if entry is not None and entry.fresh_until > time.time():
                    source = self._serve_cached(entry)
                    if source is not None:
                        return source
                    continue
                if self.active >= self.max_downloads:
                    self._wait_slot(url)
                    attempts -= 1      # the file may have come meanwhile: look again
                    continue
                if self.cache.room() <= 0:
                    # full of files in use and downloads: no GET the body of which would be
                    # refused anyway
                    self._wait_room(url)
                    attempts -= 1
                    continue
                lock = None
                if self._flight is not None:
                    lock = self._lead(url)
                    if lock is None:    # another process filed it meanwhile: look again
                        if url in self._missing:     # or the mirror told it 404
                            self._count("hit", url, None)
                            raise FileError(FileReason.NOT_FOUND, "File not found")
                        continue
                dl = self._start(url, entry, lock)
            kind = "miss" if started else "coalesced"
            # a download waiting for cache space (up to http_timeout more) has its answer
            if not dl.headers.wait(self.http_timeout) and not (
                    dl.reserving and dl.headers.wait(self.http_timeout)):
                if dl.stale is not None and (source := self._serve_stale(dl.stale, "no answer")):
                    return source
                self._count(kind, url, None)
                raise FileError(FileReason.UPSTREAM,
                                f"upstream failed: no answer within {self.http_timeout:g} s")
            if dl.not_modified and dl.stale is not None:
                if (source := self._serve_cached(dl.stale)) is not None:
                    return source
                continue
            error = dl.error
            if error is not None:
                if error.reason is FileReason.UPSTREAM and dl.stale is not None and (
                        source := self._serve_stale(dl.stale, error.message)):
                    return source
                self._count(kind, url, None)
                raise FileError(error.reason, error.message)
            if dl.fd is not None and dl.fd.acquire():
                dl.readers += 1
                if dl.stored is not None:
                    self.cache.pin(dl.stored)
                self._count(kind, url, dl.size)
                return StreamSource(self._files, dl, dl.fd, 2 * self.http_timeout + 1.0,
                                    functools.partial(self._release_stream, dl))
            if dl.stored is not None and (source := self._serve_cached(dl.stored)) is not None:
                return source
        raise FileError(FileReason.UPSTREAM, "upstream failed: cache kept changing")

    def _wait_slot(self, url: str) -> None:
        """Wait up to ``http_timeout`` for a download slot; raise FileError (refused) after."""
        deadline = time.monotonic() + self.http_timeout
        while self.active >= self.max_downloads and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0 or not self._slot.wait(left):
                if self.active < self.max_downloads:
                    return
                self._refuse("downloads", url)
                raise FileError(FileReason.UPSTREAM, "upstream failed: too many downloads, retry")

    def _wait_room(self, url: str) -> None:
        """Wait up to ``http_timeout`` for cache space; raise FileError (refused) after."""
        deadline = time.monotonic() + self.http_timeout
        while self.cache.room() <= 0 and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0 or not self.cache.space.wait(left):
                if self.cache.room() > 0:
                    return
                self._refuse("space", url)
                raise FileError(FileReason.UPSTREAM, "upstream failed: cache full, retry")

    def _refuse(self, reason: str, url: str) -> None:
        self.refused[reason] += 1
        log.warning("cache refused url=%s: %s", client_text(url), "max_downloads downloads in flight"
                    if reason == "downloads" else "cache_size full (files in use or in flight)")
        self._events.emit("cache.refused", url=url, reason=reason)

    def size(self, url: str) -> int | None:
        """The size of *url* if known without waiting; else None, and a prefetch starts."""
        if self._closed or url in self._missing:
            return None
        dl = self._inflight.get(url)
        if dl is not None:
            return dl.stale.size if dl.not_modified and dl.stale is not None else dl.size
        entry = self.cache.get(url)
        # a prefetch never waits, for a slot or for space
        full = "downloads" if self.active >= self.max_downloads else (
            "space" if self.cache.room() <= 0 else None)
        if self._flight is not None and full is None and (entry is None or entry.fresh_until <= time.time()):
            return self._prefetch_shared(url, entry)
        if entry is not None:
            if entry.fresh_until <= time.time() and full is None:
                self._start(url, entry)
            return entry.size
        if full is not None:
            self._refuse(full, url)
            return None
        self._start(url, None)
        self.misses += 1
        self._events.emit("cache.miss", url=url, bytes=None, prefetch=True)
        return None

    def _prefetch_shared(self, url: str, entry: Entry | None) -> int | None:
        """:meth:`size` when processes share the cache: a prefetch only if no other process
        downloads the file; it never waits."""
        flight, key = self._flight, cache_key(url)
        assert flight is not None
        lock = blocking(flight.try_lock, key)
        if lock is None:        # another process downloads it: the length it announced, if any
            return entry.size if entry is not None else blocking(_announced, self.cache, key)
        try:
            adopted = blocking(self.cache.adopt, url)
        except BaseException:
            flight.unlock(key, lock)
            raise
        if adopted is not None:
            flight.unlock(key, lock)
            return adopted.size
        if self._known_missing(url, key):
            flight.unlock(key, lock)
            return None
        self._start(url, entry, lock)
        if entry is not None:
            return entry.size
        self.misses += 1
        self._events.emit("cache.miss", url=url, bytes=None, prefetch=True)
        return None

    def _lead(self, url: str) -> int | None:
        """Take the URL's flight lock to download it (its descriptor); None when, once the
        lock was ours, another process had filed a fresh copy meanwhile (now in the index), or
        when a greenlet of this process started the download meanwhile: look again.

        While another process holds the lock: once its ``.part`` file exists, follow it
        (:meth:`_follow`); until then wait cooperatively (``FLIGHT_POLL`` apart), at most
        ``2 × http_timeout + 1`` s.

        Raises:
            FileError: UPSTREAM when the other process's download stalled.
        """
        flight = self._flight
        assert flight is not None
        waiting = self._flight_waits.get(url)
        if waiting is not None:     # a greenlet of ours already watches the other process
            waiting.wait(2 * self.http_timeout + 1.0)
            return None
        self._flight_waits[url] = waiting = gevent.event.Event()
        try:
            return self._lead_or_wait(url, flight)
        finally:
            del self._flight_waits[url]
            waiting.set()

    def _lead_or_wait(self, url: str, flight: FlightLocks) -> int | None:
        key = cache_key(url)
        stall = 2 * self.http_timeout + 1.0
        since = time.monotonic()
        while True:
            if url in self._inflight:   # a greenlet of ours leads or follows: join it
                return None
            lock = blocking(flight.try_lock, key)
            if lock is not None and url in self._inflight:
                flight.unlock(key, lock)
                return None
            if lock is not None:
                try:
                    adopted = blocking(self.cache.adopt, url)
                except BaseException:
                    flight.unlock(key, lock)
                    raise
                if adopted is not None or self._known_missing(url, key):
                    flight.unlock(key, lock)
                    return None
                return lock
            # another process downloads it: read its .part file as it grows, once there is one
            part = blocking(_open_part, self.cache.dir, key)
            if part is not None:
                announced = blocking(self.cache.part_size, key, part[0])
                if url in self._inflight or self._closed:
                    os.close(part[1])
                else:
                    self._follow(url, *part, announced)
                return None
            if self._closed:
                raise FileError(FileReason.UPSTREAM, "upstream failed: server stopping")
            if time.monotonic() - since > stall:   # no answer, no body: the leader is stuck
                raise FileError(FileReason.UPSTREAM, "upstream failed: stalled")
            gevent.sleep(FLIGHT_POLL)

    def _known_missing(self, url: str, key: str) -> bool:
        """Whether another process got a 404 for *url* within the negative TTL (then it is
        remembered here too, for what is left of it)."""
        shared = self._shared_missing
        if shared is None:
            return False
        try:
            left = blocking(shared.remaining, key)
        except OSError:
            return False
        if left <= 0:
            return False
        self._missing.add(url, left)
        return True

    def _follow(self, url: str, token: str, fd: int, size: int | None = None) -> None:
        """Serve another process's download in flight from its ``.part`` file (*fd*): a
        :class:`Download` in :attr:`_inflight` that :meth:`_watch` moves along, so that this
        process's readers stream it as the downloader's own do. Its *size* is the length the
        downloader announced (the mirror's ``Content-Length``, :meth:`CacheDir.part_size`), so
        the clients get their ``tsize`` at once; without one, it is known once complete."""
        dl = Download(url, None)
        dl.token = token
        dl.size = size
        dl.fd = Fd(fd)
        dl.headers.set()
        self._inflight[url] = dl
        dl.greenlet = gevent.spawn(self._watch, dl)

    def _watch(self, dl: Download) -> None:
        """Follow another process's download: the bytes on disk every ``FLIGHT_POLL`` s; once
        its flight lock is free, the file it filed (complete) or nothing (failed)."""
        flight = self._flight
        assert flight is not None and dl.fd is not None
        stall = 2 * self.http_timeout + 1.0
        since = time.monotonic()
        try:
            while True:
                size = os.fstat(dl.fd.fd).st_size
                if dl.size is not None and size > dl.size:    # more than the mirror said
                    raise FileError(FileReason.UPSTREAM, "upstream failed: longer than announced")
                if size > dl.received:
                    dl.received, since = size, time.monotonic()
                    dl.notify()
                lock = blocking(flight.try_lock, dl.key)
                if lock is not None:
                    try:
                        entry = blocking(self.cache.adopt, dl.url)
                    finally:
                        flight.unlock(dl.key, lock)
                    final = os.fstat(dl.fd.fd).st_size
                    if entry is None or entry.token != dl.token or entry.size != final or (
                            dl.size is not None and final != dl.size):
                        raise FileError(FileReason.UPSTREAM, "upstream failed")
                    dl.received = dl.size = final
                    dl.complete = True
                    dl.stored = entry
                    self.cache.pin(entry, dl.readers)   # its readers now read a cached file
                    self._finish(dl)
                    return
                if time.monotonic() - since > stall:
                    raise FileError(FileReason.UPSTREAM, "upstream failed: stalled")
                gevent.sleep(FLIGHT_POLL)
        except FileError as exc:
            dl.error = exc
            self._finish(dl)
        except BaseException as exc:  # GreenletExit included: a reader must never hang
            dl.error = upstream_error(exc)
            self._finish(dl)
            if not isinstance(exc, Exception):
                raise

    def close(self) -> None:
        """Stop the downloads in flight; their readers get FileError."""
        self._closed = True
        greenlets = [dl.greenlet for dl in self._inflight.values() if dl.greenlet is not None]
        gevent.killall(greenlets, block=True, timeout=5)

    # ------------------------------------------------------------------ readers

    def _count(self, kind: str, url: str, size: int | None) -> None:
        if kind == "hit":
            self.hits += 1
        elif kind == "miss":
            self.misses += 1
        else:
            self.coalesced += 1
        self._events.emit(f"cache.{kind}", url=url, bytes=size)

    def _serve_stale(self, entry: Entry, why: str) -> Source | None:
        log.warning("serving cached %s: revalidation failed (%s)", client_text(entry.url), why)
        return self._serve_cached(entry)

    def _serve_cached(self, entry: Entry) -> Source | None:
        fd = self.cache.open(entry)
        if fd is None:
            return None
        self._count("hit", entry.url, entry.size)
        return BufferedSource(self._files, Fd(fd), entry.size,
                              functools.partial(self.cache.release, entry))

    def _release_stream(self, dl: Download) -> None:
        """A :class:`StreamSource` of *dl* is closed."""
        dl.readers -= 1
        if dl.stored is not None:
            self.cache.release(dl.stored)

    # ------------------------------------------------------------------ downloads

    def _start(self, url: str, stale: Entry | None, lock: int | None = None) -> Download:
        dl = Download(url, stale)
        if lock is not None:     # given back when the download greenlet ends (_run)
            self._flight_fds[url] = lock
        self._inflight[url] = dl
        self.active += 1
        dl.greenlet = gevent.spawn(self._run, dl)
        return dl

    def _end(self, dl: Download) -> None:
        """The download greenlet ends: its slot is free."""
        self.active -= 1
        event, self._slot = self._slot, gevent.event.Event()
        event.set()

    def _reserve(self, dl: Download, size: int) -> None:
        """Count *size* more bytes of *dl* against ``cache_size``, waiting up to
        ``http_timeout`` for readers to give some back; raise FileError (refused) after."""
        cache = self.cache
        if dl.reserved + size > cache.max_bytes:
            self._refuse("space", dl.url)
            raise FileError(FileReason.UPSTREAM, "upstream failed: larger than the cache")
        deadline = time.monotonic() + self.http_timeout
        dl.reserving = True
        try:
            while not cache.reserve(size):
                left = deadline - time.monotonic()
                if left <= 0 or not cache.space.wait(left):
                    if cache.reserve(size):
                        break
                    self._refuse("space", dl.url)
                    raise FileError(FileReason.UPSTREAM, "upstream failed: cache full, retry")
        finally:
            dl.reserving = False
        dl.reserved += size

    def _ensure_dir(self) -> None:
        """Check and index the cache directory once (a local root whose filters lead to URLs
        only at run time, through a ``[path]`` file)."""
        if self.cache.loaded:
            return
        with self._loading:
            if not self.cache.loaded:
                try:
                    blocking(self.cache.load)
                except ConfigError as exc:
                    log.error("cache directory unusable: %s", exc)
                    raise FileError(FileReason.UPSTREAM, "upstream failed: cache unusable") from None

    def _run(self, dl: Download) -> None:
        """The download greenlet: every way out resolves the download for its readers."""
        started = time.monotonic()
        try:
            self._ensure_dir()
            if dl.fetch(self._session, self.http_timeout, self.cache,
                        functools.partial(self._reserve, dl), self._received):
                self._store(dl)
            else:
                self._not_modified(dl)
        except FileError as exc:
            self._fail(dl, exc)
        except BaseException as exc:  # GreenletExit included: a reader must never hang
            self._fail(dl, upstream_error(exc), detail=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        else:
            if dl.complete:
                log.info("cached url=%s bytes=%d duration=%.3f", client_text(dl.url), dl.received,
                         time.monotonic() - started)
        finally:
            if not dl.done:
                self._fail(dl, FileError(FileReason.UPSTREAM, "upstream failed"))
            lock = self._flight_fds.pop(dl.url, None)
            try:
                if lock is not None and self._shared_missing is not None:
                    self._share_answer(dl)      # before the lock goes: who takes it next sees it
            finally:
                if lock is not None and self._flight is not None:
                    self._flight.unlock(dl.key, lock)   # filed (or failed), metadata written: others look
                self._end(dl)

    def _share_answer(self, dl: Download) -> None:
        """A 404 marks the URL missing for the other processes; a filed file clears it."""
        shared = self._shared_missing
        assert shared is not None
        try:
            if dl.error is not None and dl.error.reason is FileReason.NOT_FOUND:
                blocking(shared.mark, dl.key)
            elif dl.complete:
                blocking(shared.clear, dl.key)
        except OSError as exc:
            log.warning("cache: the answer for %s not shared with the other workers: %s",
                        client_text(dl.url), exc)

    def _received(self, size: int) -> None:
        self.upstream_bytes += size

    def _not_modified(self, dl: Download) -> None:
        entry = dl.stale
        assert entry is not None
        self.cache.revalidated(entry, dl.etag, dl.last_modified)
        dl.not_modified = True
        self._finish(dl)
        self._events.emit("cache.upstream", url=dl.url, bytes=0, status=304)
        log.debug("revalidated url=%s (304)", client_text(dl.url))
        self.cache.save(entry)

    def _store(self, dl: Download) -> None:
        """File a complete download into the cache (best effort: its readers are served anyway)."""
        entry = self.cache.add(dl.key, dl.token, dl.url, dl.received, dl.etag, dl.last_modified)
        reserved, dl.reserved = dl.reserved, 0
        if entry is not None:
            self.cache.pin(entry, dl.readers)   # the stream readers now read a cached file
            self.cache.unreserve(reserved)      # the bytes are the entry's now (its total)
        elif dl.fd is not None:                 # not filed, removed: freed at the last close
            dl.fd.on_close = functools.partial(self.cache.unreserve, reserved)
        dl.stored = entry
        self._events.emit("cache.upstream", url=dl.url, bytes=dl.received, status=200)
        self._finish(dl)
        if entry is not None:
            self.cache.evict()

    def _finish(self, dl: Download) -> None:
        if self._inflight.get(dl.url) is dl:
            del self._inflight[dl.url]
        dl.finish()

    def _fail(self, dl: Download, error: FileError, detail: str = "") -> None:
        if dl.done:
            return
        dl.error = error
        not_found = error.reason is FileReason.NOT_FOUND
        if not_found:
            self._missing.add(dl.url)
        if dl.stale is not None:
            if not_found:
                self.cache.drop(dl.stale)   # gone upstream: forget our copy
            else:
                self.cache.postpone(dl.stale, REVALIDATE_BACKOFF)
        if not_found:
            log.info("upstream %s: not found", client_text(dl.url))
        else:
            log.warning("upstream %s: %s%s", client_text(dl.url), error.message,
                        f" ({detail})" if detail else "")
        reserved, dl.reserved = dl.reserved, 0
        if dl.fd is not None:
            self.cache.discard_part(dl.key, dl.token)
            if dl.writing:
                dl.fd.acquire()   # killed mid-write: a thread may still use the fd, never close it
            # the unlinked part keeps its blocks until its last reader closes it
            dl.fd.on_close = functools.partial(self.cache.unreserve, reserved)
        elif reserved:
            self.cache.unreserve(reserved)
        self._events.emit("cache.upstream", url=dl.url, bytes=dl.received, status=None,
                          error=error.message, reason=error.reason.value)
        self._finish(dl)
