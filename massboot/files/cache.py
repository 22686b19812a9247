"""The mirror cache's directory: complete files, their metadata, LRU eviction.

Each complete file is ``<key>.<token>.data`` with its metadata in ``<key>.<token>.json``; a
download in progress is ``<key>.<token>.part`` (and, when worker processes share the directory,
its announced length in ``<key>.<token>.size``). The key is a hash of the URL, the token tells
two generations of one URL apart. The index is rebuilt from the directory at startup, so
complete files survive a restart; what a crash left behind is removed. One cache directory
belongs to one massboot; its TFTP worker processes share it (``[tftpd] processes``): each keeps
its own index, :class:`FlightLocks` makes one download per file among them, and a process
takes what another filed with :meth:`CacheDir.adopt`.

The directory is trusted only when it is private (README, "A mirror as root"): :meth:`CacheDir.load`
creates it ``0700`` and refuses one that belongs to another user or that group or others may
write (anyone who can write there can plant a ``.json``/``.data`` pair that is served as the
mirror's file). Metadata fetched "in the future" is clamped: stale now, revalidated first.

The bound ``cache_size`` covers everything on disk: complete files, files dropped from the index
that readers still hold open (their blocks are freed at the last close), and downloads in flight
(their ``Content-Length``, or what they received so far). A download :meth:`CacheDir.reserve`\ s
its bytes first; what cannot fit after evicting unread files is refused.

:class:`CacheDir` owns the reader counts of its entries: an entry being read is never evicted,
and every reader that :meth:`CacheDir.open` or :meth:`CacheDir.pin` counted gives it back with
:meth:`CacheDir.release`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from massboot.config import ConfigError, default_cache_dir
from massboot.files.cachedopen import CachedOpener
from massboot.files.local import blocking, open_cloexec
from massboot.sources import FileError, client_text

__all__ = ["CacheDir", "Entry", "FlightLocks", "Missing", "SharedMissing", "cache_key",
           "default_cache_dir"]

log = logging.getLogger(__name__)


def _open_sized(path: str, size: int) -> int:
    """Open a cached copy for reading; OSError unless it still has the size it was cached with
    (a copy truncated or replaced behind massboot's back is fetched again, never served)."""
    fd = open_cloexec(path)
    return _sized(fd, os.fstat(fd).st_size, size)


def _sized(fd: int, found: int, size: int) -> int:
    """*fd* when its file has the *size* it was cached with; else closed, and OSError."""
    if found != size:
        os.close(fd)
        raise OSError(errno.EIO, f"{found} bytes, cached with {size}")
    return fd


_CACHED = CachedOpener()


def _open_sized_cached(path: str, size: int) -> int | None:
    """:func:`_open_sized` from the kernel's caches alone, on the hub; None: use the threadpool."""
    try:
        found = _CACHED.lookup((path,), None, True)
    except FileError as exc:
        raise OSError(errno.ENOENT, exc.message) from None
    if found is None:
        return None
    fd, found_size = found
    assert fd is not None
    return _sized(fd, found_size, size)


_KEY = re.compile(r"[0-9a-f]{32}")
_CACHE_NAME = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{12})\.(data|json|part|jtmp|size|stmp)$")


def cache_key(url: str) -> str:
    """The file name stem of a URL in the cache directory."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _write_json(path: str, tmp: str, meta: dict[str, Any]) -> None:
    with os.fdopen(open_cloexec(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                   encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(tmp, path)


def _write_size(path: str, tmp: str, size: int) -> None:
    fd = open_cloexec(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"%d\n" % size)
    finally:
        os.close(fd)
    os.replace(tmp, path)       # readers see no file or the whole number, never a part of it


def _read_size(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read(32)


def check_private(path: str) -> None:
    """Create *path* ``0700`` if needed; raise ConfigError unless it belongs to this process's
    user and neither group nor others may write it. Blocking."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError("tftpd", "cache_dir", path, f"cannot create it: {exc.strerror}") from None
    uid = os.geteuid()
    if st.st_uid != uid:
        raise ConfigError("tftpd", "cache_dir", path,
                          f"owned by uid {st.st_uid}, not by massboot's user (uid {uid}): another "
                          f"user could plant files that would be served; chown it to uid {uid} "
                          "and chmod 0700, or choose another directory")
    if st.st_mode & 0o022:
        raise ConfigError("tftpd", "cache_dir", path,
                          f"writable by group or others (mode {st.st_mode & 0o777:04o}): they "
                          "could plant files that would be served; chmod 0700 it")


class FlightLocks:
    """One upstream download per file across the processes sharing a cache directory
    (``[tftpd] processes``, README "TFTP worker processes").

    A process downloads a URL only while it holds an exclusive ``flock`` on the URL key's lock
    file (``flight/<key>.lock``), until the file is filed (``.data`` and ``.json``) or the
    download failed; the others read the growing ``.part`` file meanwhile, or wait, and then
    take the file from the directory (:meth:`CacheDir.adopt`). The kernel releases the lock of a
    process that died. The holder removes the lock file before it lets go, so the directory
    holds one file per download in flight (a crash's leftover is removed by the next
    :meth:`CacheDir.load`); whoever locks a file that was removed meanwhile (it opened it just
    before) sees it by the inode and tries again. Every call is a few system calls on a local
    file; callers on the hub run them in the thread pool.
    """

    def __init__(self, directory: str) -> None:
        self.dir = os.path.join(directory, "flight")

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, f"{key}.lock")

    def try_lock(self, key: str) -> int | None:
        """The descriptor holding *key*'s lock, or None when another holder has it. Blocking."""
        import fcntl

        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = self._path(key)
        while True:
            fd = open_cloexec(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)       # its holder removed it as it let go: lock the new one

    def unlock(self, key: str, fd: int) -> None:
        """Give *key*'s lock back: remove the file, then close (which releases the lock)."""
        try:
            os.unlink(self._path(key))
        except OSError:
            pass
        os.close(fd)

    def held(self, key: str) -> bool:
        """Whether some holder has *key*'s lock now (a crash's leftover lock file is removed).
        Blocking."""
        if not os.path.exists(self._path(key)):
            return False
        try:
            fd = self.try_lock(key)
        except OSError:
            return False
        if fd is None:
            return True
        self.unlock(key, fd)
        return False


class Missing:
    """The names the mirror answered 404/410 for: a bounded LRU whose entries expire by age.

    PXELINUX probes a dozen config names per client that usually do not exist; each is asked of
    the mirror once per *ttl* seconds. Beyond *limit* names the oldest are forgotten first (all
    have the same *ttl*, so the oldest is the next to expire anyway); the table is never wiped.
    """

    def __init__(self, ttl: float, limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()   # oldest first

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, url: object) -> bool:
        """Whether *url* is known missing now (an expired entry is forgotten here)."""
        if not isinstance(url, str) or url not in self._until:
            return False
        if self._until[url] > self._clock():
            return True
        del self._until[url]
        return False

    def add(self, url: str, ttl: float | None = None) -> None:
        """Remember that *url* is missing for ``ttl`` seconds from now (or *ttl*, at most
        ``ttl``: what is left of another process's answer, :class:`SharedMissing`)."""
        now = self._clock()
        self._until.pop(url, None)
        self._until[url] = now + (self.ttl if ttl is None else min(ttl, self.ttl))
        while self._until:
            oldest, until = next(iter(self._until.items()))
            if until > now and len(self._until) <= self.limit:
                break
            del self._until[oldest]


class SharedMissing:
    """The mirror's 404/410 answers shared by the processes of one cache directory
    (``[tftpd] processes``, README "TFTP worker processes"): one empty file per URL key in
    ``missing/``, its modification time the moment of the answer, so each missing name is asked
    of the mirror once per *ttl* for all the workers, not once per worker.

    A process that gets a 404 marks the key before it lets go of the key's flight lock; one
    that takes the lock looks here before it downloads (:meth:`remaining`). A marker expires as
    :class:`Missing`'s entries do (*ttl* seconds; one "from the future" counts as expired), a
    successful download clears it, and every ``PRUNE_EVERY`` marks of one process remove the
    expired ones and, beyond *limit*, the oldest: the directory holds at most about
    ``limit + PRUNE_EVERY`` per process. Names are URL hashes, never client text. Every call is
    a few system calls on a local directory; callers on the hub run them in the thread pool.
    """

    PRUNE_EVERY = 64

    def __init__(self, directory: str, ttl: float, limit: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.dir = os.path.join(directory, "missing")
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._marks = 0

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key)

    def mark(self, key: str) -> None:
        """The mirror answered 404 for *key*'s URL now. Blocking."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        now = self._clock()
        os.close(open_cloexec(self._path(key), os.O_WRONLY | os.O_CREAT, 0o600))
        os.utime(self._path(key), (now, now))
        self._marks += 1
        if self._marks % self.PRUNE_EVERY == 0:
            self.prune()

    def remaining(self, key: str) -> float:
        """Seconds *key*'s URL is still known missing (0: not, or no longer). Blocking."""
        try:
            marked = os.stat(self._path(key)).st_mtime
        except OSError:
            return 0.0
        left = marked + self.ttl - self._clock()
        return left if 0 < left <= self.ttl else 0.0

    def clear(self, key: str) -> None:
        """*key*'s URL was downloaded: no longer missing. Blocking."""
        _unlink_quietly(self._path(key))

    def prune(self) -> None:
        """Remove the expired markers, then the oldest beyond ``limit``. Blocking."""
        try:
            names = [n for n in os.listdir(self.dir) if _KEY.fullmatch(n)]
        except OSError:
            return
        now = self._clock()
        alive: list[tuple[float, str]] = []
        for name in names:
            try:
                marked = os.stat(self._path(name)).st_mtime
            except OSError:
                continue
            if 0 < marked + self.ttl - now <= self.ttl:
                alive.append((marked, name))
            else:
                _unlink_quietly(self._path(name))
        alive.sort()
        for _marked, name in alive[:max(0, len(alive) - self.limit)]:
            _unlink_quietly(self._path(name))


def _unlink_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _discard(*paths: str) -> None:
    """Remove files in the background (an unlink of a big file can take a while)."""
    gevent.spawn(blocking, _unlink_quietly, *paths)


class Entry:
    """A complete file in the cache directory."""

    __slots__ = ("key", "token", "url", "size", "etag", "last_modified", "fetched", "fresh_until",
                 "readers", "dropped")

    def __init__(self, key: str, token: str, url: str, size: int, etag: str | None,
                 last_modified: str | None, fetched: float, fresh_until: float) -> None:
        self.key = key
        self.token = token
        self.url = url
        self.size = size
        self.etag = etag
        self.last_modified = last_modified
        self.fetched = fetched
        self.fresh_until = fresh_until
        self.readers = 0    # changed by CacheDir only
        self.dropped = False    # out of the index; its bytes count as orphaned until no reader

    def meta(self) -> dict[str, Any]:
        """What the ``.json`` file holds."""
        return {"url": self.url, "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified, "fetched": self.fetched}


class CacheDir:
    """The index of a cache directory, least recently used first.

    Args:
        path: the directory (created by :meth:`load`).
        max_bytes: the most kept on disk, downloads in flight and files being read included;
            entries being read are never evicted.
        revalidate_after: seconds an entry is fresh after it was fetched or revalidated.

    Attributes:
        total: bytes of the indexed (complete) files.
        reserved: bytes reserved by downloads in flight.
        orphaned: bytes of files dropped from the index that readers still hold open.
        loaded: :meth:`load` succeeded.
        space: set (and replaced) whenever bytes are given back.
    """

    def __init__(self, path: str, max_bytes: int, revalidate_after: float) -> None:
        self.dir = path
        self.max_bytes = max_bytes
        self._revalidate_after = revalidate_after
        self._index: OrderedDict[str, Entry] = OrderedDict()   # key → entry, LRU first
        self.total = 0
        self.reserved = 0
        self.orphaned = 0
        self.loaded = False
        self.space = gevent.event.Event()
        self.flight: FlightLocks | None = None   # set when processes share the directory

    def __len__(self) -> int:
        return len(self._index)

    @property
    def used(self) -> int:
        """Bytes counted against ``max_bytes``: complete, orphaned and reserved."""
        return self.total + self.orphaned + self.reserved

    def _freed(self) -> None:
        event, self.space = self.space, gevent.event.Event()
        event.set()

    def reserve(self, size: int) -> bool:
        """Count *size* bytes of a download in flight, evicting unread files to make room;
        False (nothing reserved) when they cannot fit."""
        if self.used + size > self.max_bytes:
            self.evict(extra=size)
            if self.used + size > self.max_bytes:
                return False
        self.reserved += size
        return True

    def room(self) -> int:
        """Bytes a download could reserve now, after evicting every file not being read."""
        unread = sum(e.size for e in self._index.values() if e.readers == 0)
        return self.max_bytes - self.used + unread

    def unreserve(self, size: int) -> None:
        """Give back bytes :meth:`reserve` counted."""
        self.reserved -= size
        self._freed()

    def path(self, key: str, token: str, kind: str) -> str:
        """The path of one file of an entry or a download: kind is data, json, part or jtmp."""
        return os.path.join(self.dir, f"{key}.{token}.{kind}")

    def get(self, url: str) -> Entry | None:
        """The entry of *url*, fresh or not."""
        return self._index.get(cache_key(url))

    def open(self, entry: Entry) -> int | None:
        """Open *entry*'s data and count a reader (give it back with :meth:`release`).

        Returns None when the entry is no longer indexed or its file is unreadable (then it
        is dropped).
        """
        if self._index.get(entry.key) is not entry:
            return None
        self._index.move_to_end(entry.key)
        entry.readers += 1
        try:
            path = self.path(entry.key, entry.token, "data")
            fd = _open_sized_cached(path, entry.size)
            return fd if fd is not None else blocking(_open_sized, path, entry.size)
        except OSError as exc:
            entry.readers -= 1
            log.warning("cached copy of %s unreadable, fetching again: %s", client_text(entry.url), exc)
            self.drop(entry)
            return None

    def pin(self, entry: Entry, readers: int = 1) -> None:
        """Count *readers* more readers of *entry*."""
        entry.readers += readers

    def release(self, entry: Entry) -> None:
        """A reader of *entry* is done; evict what no longer fits."""
        entry.readers -= 1
        if entry.readers == 0 and entry.dropped:
            entry.dropped = False
            self.orphaned -= entry.size     # its last descriptor is closed: the blocks are free
        self.evict()
        self._freed()

    def create_part(self, key: str, token: str, size: int | None = None) -> int:
        """Create the ``.part`` file of a download; its descriptor, read-write.

        When processes share the directory and the mirror said the length (*size*,
        ``Content-Length``), it is written first, atomically, next to the part
        (``<key>.<token>.size``): the other processes' clients that stream the part get their
        ``tsize`` from it (:meth:`part_size`). It goes when the part is filed or discarded.
        """
        if self.flight is not None and size is not None:
            blocking(_write_size, self.path(key, token, "size"), self.path(key, token, "stmp"), size)
        return blocking(open_cloexec, self.path(key, token, "part"),
                        os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def part_size(self, key: str, token: str) -> int | None:
        """The length another process's download in flight announced (see :meth:`create_part`),
        or None: none written (no ``Content-Length``), gone (filed or failed meanwhile), or not
        a number within ``max_bytes`` (never trusted beyond what fits the cache). Blocking."""
        try:
            text = _read_size(self.path(key, token, "size"))
        except (OSError, ValueError):
            return None
        text = text.strip()
        if not text.isdigit() or len(text) > 20:
            return None
        size = int(text)
        return size if size <= self.max_bytes else None

    def discard_part(self, key: str, token: str) -> None:
        """Remove a failed download's ``.part`` file and its announced size (in the background)."""
        _discard(self.path(key, token, "part"), self.path(key, token, "size"),
                 self.path(key, token, "stmp"))

    def add(self, key: str, token: str, url: str, size: int, etag: str | None,
            last_modified: str | None) -> Entry | None:
        """File a complete ``.part`` into the index, with no reader yet; None on failure.

        A failure leaves nothing behind: the download's readers are served from their
        descriptors anyway.
        """
        now = time.time()
        entry = Entry(key, token, url, size, etag, last_modified, now, now + self._revalidate_after)
        try:
            blocking(os.rename, self.path(key, token, "part"), self.path(key, token, "data"))
            blocking(_write_json, self.path(key, token, "json"), self.path(key, token, "jtmp"),
                     entry.meta())
        except OSError as exc:
            log.warning("download of %s not cached: %s", client_text(url), exc)
            _discard(self.path(key, token, "part"), self.path(key, token, "data"),
                     self.path(key, token, "jtmp"), self.path(key, token, "size"))
            return None
        if self.flight is not None:     # the announced length: filed, so no longer in flight
            blocking(_unlink_quietly, self.path(key, token, "size"))
        old = self._index.get(key)
        if old is not None:
            self.drop(old)
        self._index[key] = entry
        self.total += entry.size
        return entry

    def revalidated(self, entry: Entry, etag: str | None, last_modified: str | None) -> None:
        """The mirror answered 304: *entry* is fresh again (see :meth:`save`)."""
        entry.etag = etag or entry.etag
        entry.last_modified = last_modified or entry.last_modified
        entry.fetched = time.time()
        entry.fresh_until = entry.fetched + self._revalidate_after

    def save(self, entry: Entry) -> None:
        """Rewrite an indexed entry's metadata file (best effort)."""
        if self._index.get(entry.key) is entry:
            try:
                blocking(_write_json, self.path(entry.key, entry.token, "json"),
                         self.path(entry.key, entry.token, "jtmp"), entry.meta())
            except OSError as exc:
                log.warning("cache metadata for %s not written: %s", client_text(entry.url), exc)

    def postpone(self, entry: Entry, seconds: float) -> None:
        """Serve *entry* as fresh for *seconds* more (at most ``revalidate_after``)."""
        entry.fresh_until = time.time() + min(self._revalidate_after, seconds)

    def drop(self, entry: Entry) -> None:
        """Forget an entry and remove its files (open readers keep their descriptors)."""
        if self._index.get(entry.key) is not entry:
            return
        del self._index[entry.key]
        self.total -= entry.size
        if entry.readers > 0:
            entry.dropped = True
            self.orphaned += entry.size
        else:
            self._freed()
        _discard(self.path(entry.key, entry.token, "data"), self.path(entry.key, entry.token, "json"))

    def adopt(self, url: str) -> Entry | None:
        """Index the newest complete copy of *url* another process filed (or revalidated) in
        the directory; the entry when it is fresh, else None. Blocking."""
        key = cache_key(url)
        best: tuple[float, str, dict[str, Any]] | None = None
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith(key) and n.endswith(".json")]
        except OSError:
            return None
        for name in names:
            m = _CACHE_NAME.match(name)
            if not m:
                continue
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                    meta = json.load(f)
                fetched, size = float(meta["fetched"]), int(meta["size"])
                if str(meta["url"]) != url or os.stat(self.path(key, m.group(2), "data")).st_size != size:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if best is None or fetched > best[0]:
                best = (min(fetched, time.time()), m.group(2), meta)
        if best is None:
            return None
        fetched, token, meta = best
        old = self._index.get(key)
        if old is not None and old.token == token:
            entry = old
            entry.fetched = fetched
            entry.fresh_until = fetched + self._revalidate_after
            entry.etag, entry.last_modified = meta.get("etag"), meta.get("last_modified")
        else:
            entry = Entry(key, token, url, int(meta["size"]), meta.get("etag"),
                          meta.get("last_modified"), fetched, fetched + self._revalidate_after)
            if old is not None:
                if old.fetched >= fetched:
                    return old if old.fresh_until > time.time() else None
                self.drop(old)
            self._index[key] = entry
            self.total += entry.size
            self.evict()
        return entry if entry.fresh_until > time.time() else None

    def evict(self, extra: int = 0) -> None:
        """Evict least-recently-used entries not being read until *extra* more bytes fit."""
        if self.used + extra <= self.max_bytes:
            return
        for entry in list(self._index.values()):
            if self.used + extra <= self.max_bytes:
                break
            if entry.readers > 0:
                continue
            log.debug("evict url=%s bytes=%d", client_text(entry.url), entry.size)
            self.drop(entry)

    def load(self) -> None:
        """Check the directory is private (creating it ``0700``), re-index it and remove what a
        crash left behind. Blocking.

        Raises:
            ConfigError: the directory cannot be created, belongs to another user, or group or
                others may write it (``[tftpd] cache_dir``: exit code 2 at startup).
        """
        check_private(self.dir)
        now = time.time()
        found: dict[str, Entry] = {}
        keep: set[str] = set()
        names = os.listdir(self.dir)
        present = set(names)
        for name in names:
            m = _CACHE_NAME.match(name)
            if not m or m.group(3) != "json":
                continue
            key, token = m.group(1), m.group(2)
            data = f"{key}.{token}.data"
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                    meta = json.load(f)
                url, size, fetched = str(meta["url"]), int(meta["size"]), float(meta["fetched"])
                if cache_key(url) != key or data not in present:
                    continue
                if os.stat(os.path.join(self.dir, data)).st_size != size:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            fresh_until = fetched + self._revalidate_after
            if fetched > now:       # from the future (a wrong clock, a planted file): stale now
                fetched = fresh_until = now
            entry = Entry(key, token, url, size, meta.get("etag"), meta.get("last_modified"),
                          fetched, fresh_until)
            if key not in found or found[key].fetched < fetched:
                found[key] = entry
        for entry in sorted(found.values(), key=lambda e: e.fetched):
            self._index[entry.key] = entry
            self.total += entry.size
            keep.update({f"{entry.key}.{entry.token}.data", f"{entry.key}.{entry.token}.json"})
        busy: dict[str, bool] = {}
        for name in names:
            m = _CACHE_NAME.match(name)
            if m and name not in keep:
                # another process's download in flight (or being filed) is not a crash's leftover
                if self.flight is not None:
                    key = m.group(1)
                    if key not in busy:
                        busy[key] = self.flight.held(key)
                    if busy[key]:
                        continue
                _unlink_quietly(os.path.join(self.dir, name))
        if self.flight is not None:     # lock files a crashed process left (held() removes them)
            try:
                stale = [n[:-5] for n in os.listdir(self.flight.dir) if n.endswith(".lock")]
            except OSError:
                stale = []
            for key in stale:
                if _KEY.fullmatch(key):
                    self.flight.held(key)
        if self._index:
            log.info("cache %s: %d files, %d bytes", self.dir, len(self._index), self.total)
        self.loaded = True
        self.evict()
