"""Name → file source: filters, root confinement, local files and a shared remote cache.

The TFTP server asks :meth:`FileStore.open` for the name a client sent and gets a
:class:`Source` it reads by offset; the DHCP server asks :meth:`FileStore.size` for option 13.

How a name becomes a file (contract C6/C7 of the pybootd compatibility spec):

1. The client's name is checked first: a ``..`` component (``/`` or ``\\`` separated), an
   absolute name (leading ``/`` or ``\\``, or a drive letter), or a NUL is refused with TFTP
   error 2. With a remote root a percent-encoded form (``%2e%2e``, ``%2f``...) is decoded once
   and checked again. Because this happens before filtering, ``{filename}`` in a filter target
   can never smuggle a traversal in.
2. ``[filters]`` patterns are tried in ini order against the whole name; the first match wins.
   ``*`` is any run of characters including ``/``, ``?`` exactly one character, everything else
   literal. Matching is case-sensitive; note that the ini parser lower-cases the patterns, so
   a pattern never matches upper-case letters (as in pybootd). One leading ``./`` in the
   requested name is tolerated, as pybootd did.
3. A match replaces the whole name by its target after substituting ``{filename}`` (the name as
   requested), ``{ip}`` (the client's address) and ``{mac}``, ``{uuid}``, ``{arch}``, ``{file}``
   from the :data:`ClientLookup` (empty when unknown). A target written ``[path]`` names a local
   file whose first non-empty line is the name to serve. Filter targets are written by the
   administrator and are trusted: an absolute target is a local file, an ``http(s)://`` target
   is fetched through the cache, a relative one is looked up under the root first and then, for
   local roots, under ``base_dir``.
4. Without a match, the name is joined to the root. For a local root the result is resolved
   with :func:`os.path.realpath` and refused (error 2) unless it stays inside the real root, so
   a symlink may point anywhere inside the root but never out of it. A missing file, and a
   directory, are error 1.

Local files are opened, stat-ed and read in gevent's threadpool, a chunk at a time, so a slow
disk never stalls the hub. Remote files go through one cache shared by every client: the first
request for a URL starts the only upstream download and later requests read the same partial
file as it fills. A download that fails or is cut short is never kept; everyone reading it gets
:class:`FileError` with code 0. Complete files are kept on disk (surviving a restart), bounded
in total size with least-recently-used eviction, and revalidated with a conditional GET once
older than ``revalidate_after``. One cache directory belongs to one process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import string
import tempfile
import time
import urllib.parse
import uuid as _uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import gevent
import gevent.event
import requests
import urllib3

from massboot.events import EventBus
from massboot.tftp.transfer import WouldBlock

log = logging.getLogger(__name__)

ERR_UNDEFINED = 0        # TFTP error 0 "Not defined": here, an upstream failure - RFC 1350.
ERR_NOT_FOUND = 1        # TFTP error 1 "File not found" - RFC 1350.
ERR_ACCESS = 2           # TFTP error 2 "Access violation" - RFC 1350.

CHUNK = 128 << 10        # bytes read from disk (or asked of the upstream socket) at a time
KEEP_BEHIND = 32 << 10   # bytes a source keeps before its read point for retransmitted blocks
# bytes a local source reads at a time: with hundreds of transfers at once this is most of the
# server's memory (500 x (32 + 32) KiB), and one preadv per ~22 blocks of 1428 costs little
LOCAL_CHUNK = 32 << 10
SIZE_TTL = 5.0            # seconds a local file size answered for DHCP option 13 is reused
SIZE_CACHE_MAX = 1024
INDIRECT_MAX = 64 << 10  # bytes read from a ``[path]`` file to find its first line
REVALIDATE_BACKOFF = 30.0  # seconds a stale copy is served without asking a mirror that failed
# seconds a 404 from the mirror is remembered: PXELINUX probes a dozen config names per client
# (UUID, 01-<mac>, hex IP prefixes) that usually do not exist; a rack would ask the mirror for
# each of them (1,640 GETs for 500 clients) instead of once per name and period
NEGATIVE_TTL = 30.0
MISSING_MAX = 4096

VARIABLES = frozenset({"filename", "ip", "mac", "uuid", "arch", "file"})

_CACHE_NAME = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{12})\.(data|json|part|jtmp)$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# Whether preadv(RWF_NOWAIT) works here (Linux >= 4.14); cleared at the first refusal.
_NOWAIT = [bool(_RWF_NOWAIT) and hasattr(os, "preadv")]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the DHCP side knows of a client, looked up by its IP address."""

    ip: str
    mac: str | None = None      # "AA:BB:CC:DD:EE:FF"
    uuid: str | None = None
    arch: int | None = None
    file: str | None = None     # the HTTP ACL reply's "File:" line


ClientLookup = Callable[[str], ClientInfo | None]


class FileError(Exception):
    """A name that cannot be served, with the TFTP error code to answer.

    Attributes:
        code: 1 not found, 2 access violation, 0 anything else (an upstream failure).
        message: the text for the TFTP ERROR packet.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Source(Protocol):
    """An open file, read by offset.

    ``size`` is the total size when it is known before reading (TFTP ``tsize``), else None.
    """

    size: int | None

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``, fewer only at the end of the file (b"" past it).

        May wait cooperatively while a remote download fills.

        Raises:
            FileError: the download behind the source failed or was cut short.
        """
        ...

    def close(self) -> None:
        """Release the file; idempotent."""
        ...


def _capture(func: Callable[..., _T], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, func(*args)
    except Exception as exc:  # handed back to the caller, not to the hub's error printer
        return False, exc


def _blocking(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in gevent's threadpool so the hub keeps serving; re-raise here."""
    ok, value = gevent.get_hub().threadpool.apply(_capture, (func, args))
    if not ok:
        raise value
    return value


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _unlink_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _discard(*paths: str) -> None:
    """Remove files in the background (an unlink of a big file can take a while)."""
    gevent.spawn(_blocking, _unlink_quietly, *paths)


# --------------------------------------------------------------------------------- names


def _traversal(name: str) -> str | None:
    """Why a client-supplied name may not be served, or None."""
    if "\0" in name:
        return "NUL in name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute name"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in name"
    return None


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """``*`` → any characters (``/`` included), ``?`` → one character, the rest literal."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _check_template(pattern: str, template: str) -> None:
    """Raise ValueError unless every ``{var}`` in a filter target is one we substitute."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"[filters] {pattern} = {template}: {exc}") from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in VARIABLES:
            known = ", ".join(f"{{{v}}}" for v in sorted(VARIABLES))
            raise ValueError(f"[filters] {pattern} = {template}: unknown variable {{{name}}} "
                             f"(known: {known})")
        if spec or conversion:
            raise ValueError(f"[filters] {pattern} = {template}: {{{name}}} takes no format "
                             "spec or conversion")


@dataclass(frozen=True, slots=True)
class _Filter:
    pattern: str
    regex: re.Pattern[str]
    template: str           # the target, or the path inside ``[...]`` when indirect
    indirect: bool

    def matches(self, name: str) -> bool:
        if self.regex.fullmatch(name):
            return True
        return name.startswith("./") and self.regex.fullmatch(name[2:]) is not None


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a name leads: local candidate paths (the first existing wins) or a URL."""

    paths: tuple[str, ...] = ()
    confine: str | None = None  # the real root a client-supplied path must stay inside
    url: str | None = None


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _local_lookup(paths: tuple[str, ...], confine: str | None, open_it: bool) -> tuple[int | None, int]:
    """Find the first regular file among *paths*; return ``(fd or None, size)``. Blocking."""
    not_file = False
    for path in paths:
        if confine is not None:
            path = os.path.realpath(path)
            if not _inside(path, confine):
                raise FileError(ERR_ACCESS, "Access violation")
        try:
            if open_it:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
                try:
                    st = os.fstat(fd)
                except OSError:
                    os.close(fd)
                    raise
            else:
                fd = None
                st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            raise FileError(ERR_ACCESS, "Access violation") from None
        except OSError as exc:
            raise FileError(ERR_NOT_FOUND, f"Cannot open file: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return fd, st.st_size
        if fd is not None:
            os.close(fd)
        not_file = True
    # A directory (or device, fifo...) is answered like a missing file: error 1.
    raise FileError(ERR_NOT_FOUND, "Not a regular file" if not_file else "File not found")


def _first_line(paths: tuple[str, ...]) -> str | None:
    """First non-empty stripped line of the first existing file among *paths*. Blocking."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(INDIRECT_MAX)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            log.warning("filter file %s unreadable: %s", path, exc)
            return None
        for line in head.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip()
        log.warning("filter file %s has no non-empty line", path)
        return None
    log.warning("filter file not found: %s", " or ".join(paths))
    return None


# --------------------------------------------------------------------------------- sources


class _Fd:
    """A file descriptor shared by a download and its readers; closed with the last user."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    def acquire(self) -> bool:
        if self.refs <= 0:
            return False
        self.refs += 1
        return True

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            try:
                os.close(self.fd)
            except OSError:
                pass


class _BufferedSource:
    """Reads a file descriptor a chunk at a time into a small buffer; reads slice it.

    The buffer keeps up to ``KEEP_BEHIND`` bytes before the latest read so retransmitted
    blocks come from memory, and at most one chunk ahead: memory stays O(chunk).

    :meth:`read_nowait` is the event-loop path (the TFTP server calls it from a socket
    callback): it answers from the buffer without a copy (a ``memoryview`` slice), refills the
    buffer inline with ``preadv(RWF_NOWAIT)`` when the bytes are in the page cache, and raises
    :class:`~massboot.tftp.transfer.WouldBlock` when they are not (or a download has not
    brought them yet); :meth:`read` may then wait for them (the threadpool, the download).
    A buffer is never changed once filled (a refill makes a new one), so slices handed out
    stay valid.
    """

    def __init__(self, fd: _Fd, size: int | None) -> None:
        self.size = size
        self._fd: _Fd | None = fd
        self._start = 0
        self._buf: bytes | bytearray = b""
        self._view = memoryview(self._buf)
        self._eof: int | None = None  # where a read found the end of the file

    def _limit(self, end: int, wait: bool = True) -> int | None:
        """Wait until bytes up to *end* can be read; return how far, or None for "all".

        With *wait* false, raise WouldBlock instead of waiting.
        """
        return None

    def _fill(self, buf: bytearray, at: int, offset: int, nowait: bool) -> int:
        """Read into ``buf[at:]`` from file *offset*; the count of bytes read."""
        assert self._fd is not None
        fd = self._fd.fd
        # no `with`: a threadpool read may still hold the view when this greenlet is killed;
        # the views die with this frame, before the caller trims *buf*
        part = memoryview(buf)[at:]
        if nowait:
            if not _NOWAIT[0]:
                raise WouldBlock
            try:
                return os.preadv(fd, [part], offset, _RWF_NOWAIT)
            except BlockingIOError:
                raise WouldBlock from None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                _NOWAIT[0] = False  # this kernel or file system cannot: threadpool only
                raise WouldBlock from None
        return _blocking(_preadv, fd, part, offset)

    def read(self, offset: int, length: int) -> bytes:
        """See :meth:`Source.read`."""
        return bytes(self._read(offset, length, False))

    def read_nowait(self, offset: int, length: int) -> bytes | memoryview:
        """Like :meth:`read` without ever waiting: raise WouldBlock instead; may be a view."""
        rel = offset - self._start
        if rel >= 0 and rel + length <= len(self._view) and length > 0:
            return self._view[rel:rel + length]
        return self._read(offset, length, True)

    def _read(self, offset: int, length: int, nowait: bool) -> bytes | memoryview:
        if self._fd is None:
            raise FileError(ERR_UNDEFINED, "Source closed")
        if length <= 0 or offset < 0:
            return b""
        end = offset + length
        start = self._start
        buf_end = start + len(self._view)
        if start <= offset and (end <= buf_end or buf_end == self._eof):
            return self._view[offset - start:end - start]
        limit = self._limit(end, not nowait)
        if self._fd is None:
            raise FileError(ERR_UNDEFINED, "Source closed")
        start = self._start
        buf_end = start + len(self._view)
        if buf_end > start and start <= offset <= buf_end:
            want = max(LOCAL_CHUNK, end - buf_end)
            if limit is not None:
                want = min(want, limit - buf_end)
            if want <= 0:
                return self._view[offset - start:end - start]
            keep = max(start, offset - KEEP_BEHIND)
            tail = buf_end - keep
            new = bytearray(tail + want)
            new[:tail] = self._view[keep - start:]
            got = self._fill(new, tail, buf_end, nowait)
            start = keep
        else:
            want = max(LOCAL_CHUNK, length)
            if limit is not None:
                want = min(want, limit - offset)
            if want <= 0:
                return b""
            new = bytearray(want)
            tail = 0
            got = self._fill(new, 0, offset, nowait)
            start = offset
        if self._fd is None:  # closed while the threadpool read
            raise FileError(ERR_UNDEFINED, "Source closed")
        view = memoryview(new)
        if got < want:  # trimmed by the view: a threadpool thread may still hold *new*
            view = view[:tail + got]
            if limit is None and (got == 0 or not nowait):  # a blocking read stops only there
                self._eof = start + tail + got
        self._start, self._buf, self._view = start, new, view
        return self._view[offset - start:end - start]

    def close(self) -> None:
        """See :meth:`Source.close`."""
        fd, self._fd = self._fd, None
        self._buf = b""
        self._view = memoryview(self._buf)
        if fd is not None:
            fd.release()


def _preadv(fd: int, view: memoryview, offset: int) -> int:
    """``preadv`` until *view* is full or the end of the file: a short read means the end."""
    total = 0
    size = len(view)
    while total < size:
        got = os.preadv(fd, [view[total:]], offset + total)
        if got == 0:
            break
        total += got
    return total


class _LocalSource(_BufferedSource):
    """A local file: the size comes from ``fstat`` at open."""


class _CachedSource(_BufferedSource):
    """A complete file in the cache; pins its entry against eviction while open."""

    def __init__(self, store: FileStore, entry: _Entry, fd: _Fd) -> None:
        super().__init__(fd, entry.size)
        self._store: FileStore | None = store
        self._entry = entry

    def close(self) -> None:
        store, self._store = self._store, None
        super().close()
        if store is not None:
            self._entry.readers -= 1
            store._evict()


class _StreamSource(_BufferedSource):
    """A file still downloading: reads wait for the bytes they need to arrive."""

    def __init__(self, store: FileStore, dl: _Download, fd: _Fd) -> None:
        super().__init__(fd, dl.size)
        self._store: FileStore | None = store
        self._dl = dl
        self._stall = 2 * store.http_timeout + 1.0

    def _limit(self, end: int, wait: bool = True) -> int | None:
        dl = self._dl
        while True:
            if dl.error is not None:
                raise FileError(dl.error.code, dl.error.message)
            if dl.complete:
                return None
            if dl.received >= end:
                return dl.received
            if not wait:
                raise WouldBlock
            # A safety net only: the download itself times out reads after http_timeout.
            if not dl.progress.wait(self._stall):
                raise FileError(ERR_UNDEFINED, f"upstream {dl.url} failed: stalled")

    def close(self) -> None:
        store, self._store = self._store, None
        super().close()
        if store is not None:
            self._dl.readers -= 1
            if self._dl.stored is not None:
                self._dl.stored.readers -= 1
                store._evict()


# --------------------------------------------------------------------------------- cache


class _Entry:
    """A complete file in the cache directory."""

    __slots__ = ("key", "token", "url", "size", "etag", "last_modified", "fetched", "fresh_until",
                 "readers")

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
        self.readers = 0

    def meta(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified, "fetched": self.fetched}


class _Download:
    """One upstream GET in flight, shared by every reader of its URL."""

    __slots__ = ("url", "key", "token", "stale", "headers", "progress", "size", "etag",
                 "last_modified", "received", "complete", "done", "not_modified", "error", "fd",
                 "readers", "stored", "writing", "greenlet")

    def __init__(self, url: str, key: str, stale: _Entry | None) -> None:
        self.url = url
        self.key = key
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
        self.fd: _Fd | None = None
        self.readers = 0
        self.stored: _Entry | None = None
        self.writing = False
        self.greenlet: gevent.Greenlet | None = None

    def notify(self) -> None:
        event, self.progress = self.progress, gevent.event.Event()
        event.set()


def _open_sized(path: str, size: int) -> int:
    """Open a cached copy for reading; OSError unless it still has the size it was cached with
    (a copy truncated or replaced behind massboot's back is fetched again, never served)."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    found = os.fstat(fd).st_size
    if found != size:
        os.close(fd)
        raise OSError(errno.EIO, f"{found} bytes, cached with {size}")
    return fd


def _write_json(path: str, tmp: str, meta: dict[str, Any]) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(tmp, path)


def _reason(exc: BaseException) -> str:
    """A short reason for a TFTP error message; the log gets the full exception."""
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


def _status_error(url: str, status: int) -> FileError:
    if status in (404, 410):
        return FileError(ERR_NOT_FOUND, "File not found")
    if status in (401, 403):
        return FileError(ERR_ACCESS, "Access violation")
    return FileError(ERR_UNDEFINED, f"upstream {url} failed: HTTP {status}")


class FileStore:
    """Resolve client names to sources under one root, local or remote.

    Args:
        root: a local directory (relative to ``base_dir``) or an ``http://``/``https://`` prefix.
        filters: ``[filters]`` entries ``(pattern, target)`` in ini order.
        base_dir: the config file's directory; relative paths start there.
        cache_dir: where remote files are kept; None → ``massboot-cache`` in the temp dir.
        cache_max_bytes: the most the cache keeps on disk (files being read are never evicted).
        revalidate_after: seconds a cached file is served without asking the mirror.
        http_timeout: seconds for the upstream connect, the response headers and each body read.
        client_lookup: the DHCP side's knowledge of a client, for filter variables.
        events: the event bus for ``cache.*`` events.
        session: the ``requests.Session`` for upstream GETs.

    Raises:
        ValueError: a filter target uses an unknown ``{variable}``.

    Attributes:
        hits: opens served from a cached copy (fresh, revalidated, or stale with the mirror down).
        misses: opens (and :meth:`size` prefetches) that started an upstream download.
        coalesced: opens that joined a download already in flight.
        upstream_bytes: body bytes received from mirrors.
    """

    def __init__(self, root: str, filters: Sequence[tuple[str, str]] = (), *, base_dir: str = ".",
                 cache_dir: str | None = None, cache_max_bytes: int = 2 << 30,
                 revalidate_after: float = 300.0, http_timeout: float = 10.0,
                 client_lookup: ClientLookup | None = None, events: EventBus | None = None,
                 session: requests.Session | None = None) -> None:
        self._filters = tuple(self._make_filter(p, t) for p, t in filters)
        self._base_dir = os.path.abspath(base_dir)
        self._remote = root.startswith(("http://", "https://"))
        if self._remote:
            self._root = root.rstrip("/")
            self._real_root = ""
        else:
            self._root = os.path.join(self._base_dir, root)
            self._real_root = os.path.realpath(self._root)
        self._lookup = client_lookup
        self._events = events if events is not None else EventBus()
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self.http_timeout = http_timeout
        self._revalidate_after = revalidate_after
        self._max_bytes = cache_max_bytes
        self._cache_dir = cache_dir if cache_dir is not None else os.path.join(
            tempfile.gettempdir(), "massboot-cache")
        self._index: OrderedDict[str, _Entry] = OrderedDict()   # key → entry, LRU first
        self._inflight: dict[str, _Download] = {}                # url → download
        self._sizes: dict[tuple[Any, ...], tuple[int | None, float]] = {}   # local sizes for option 13
        self._missing: dict[str, float] = {}     # url → until when the mirror's 404 is believed
        self._total = 0
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.upstream_bytes = 0
        if self._remote:
            self._load_index()

    @property
    def remote(self) -> bool:
        """True when the root is an ``http(s)://`` URL."""
        return self._remote

    @property
    def root(self) -> str:
        """The root: an absolute local directory or a URL prefix without trailing ``/``."""
        return self._root

    @property
    def cached_bytes(self) -> int:
        """Bytes of complete files held in the cache."""
        return self._total

    @property
    def cached_files(self) -> int:
        """Number of complete files held in the cache."""
        return len(self._index)

    # ------------------------------------------------------------------ public API

    def open(self, name: str, client_ip: str) -> Source:
        """Open the file a client asked for.

        Args:
            name: the name from the RRQ, as sent.
            client_ip: the client's address (for filter variables).

        Returns:
            A source to read by offset; close it when done.

        Raises:
            FileError: code 2 for a refused name, 1 for a missing file, 0 for a mirror failure.
        """
        target = self._resolve(name, client_ip)
        if target.url is not None:
            return self._open_url(target.url)
        fd, size = _blocking(_local_lookup, target.paths, target.confine, True)
        assert fd is not None
        return _LocalSource(_Fd(fd), size)

    def size(self, name: str, client_ip: str) -> int | None:
        """The size of a file if it is known without waiting on the network (DHCP option 13).

        A remote file neither cached nor in flight is fetched in the background (a prefetch),
        so the transfer that usually follows finds it.

        Returns:
            The size in bytes, or None when unknown, missing or refused.
        """
        try:
            target = self._resolve(name, client_ip)
            if target.url is None:
                # every OFFER and ACK of a rack asks for the same boot file: one stat through the
                # threadpool per SIZE_TTL seconds, not one per reply
                key = (target.paths, target.confine)
                now = time.monotonic()
                known = self._sizes.get(key)
                if known is not None and known[1] > now:
                    return known[0]
                size = _blocking(_local_lookup, target.paths, target.confine, False)[1]
                if len(self._sizes) >= SIZE_CACHE_MAX:
                    self._sizes.clear()
                self._sizes[key] = (size, now + SIZE_TTL)
                return size
        except FileError:
            return None
        url = target.url
        if self._closed or self._missing.get(url, 0.0) > time.monotonic():
            return None
        dl = self._inflight.get(url)
        if dl is not None:
            return dl.stale.size if dl.not_modified and dl.stale is not None else dl.size
        entry = self._index.get(_key(url))
        if entry is not None:
            if entry.fresh_until <= time.time():
                self._start(url, entry)
            return entry.size
        self._start(url, None)
        self.misses += 1
        self._events.emit("cache.miss", url=url, bytes=None, prefetch=True)
        return None

    def close(self) -> None:
        """Stop background downloads; their readers get FileError."""
        self._closed = True
        greenlets = [dl.greenlet for dl in self._inflight.values() if dl.greenlet is not None]
        gevent.killall(greenlets, block=True, timeout=5)
        if self._own_session:
            self._session.close()

    # ------------------------------------------------------------------ names

    @staticmethod
    def _make_filter(pattern: str, target: str) -> _Filter:
        target = target.strip()
        indirect = len(target) > 2 and target.startswith("[") and target.endswith("]")
        template = target[1:-1].strip() if indirect else target
        _check_template(pattern, template)
        return _Filter(pattern, _compile_pattern(pattern), template, indirect)

    def _values(self, name: str, client_ip: str) -> dict[str, str]:
        info = None
        if self._lookup is not None:
            try:
                info = self._lookup(client_ip)
            except Exception:  # the lookup is the DHCP side's; a bug there must not kill a transfer
                log.exception("client lookup failed for %s", client_ip)
        values = {"filename": name, "ip": client_ip, "mac": "", "uuid": "", "arch": "", "file": ""}
        if info is not None:
            values["mac"] = info.mac or ""
            values["uuid"] = info.uuid or ""
            values["arch"] = "" if info.arch is None else str(info.arch)
            values["file"] = info.file or ""
        return values

    def _url(self, name: str) -> str:
        return self._root + "/" + urllib.parse.quote(name, safe="/")

    def _resolve(self, name: str, client_ip: str) -> _Target:
        if not name:
            raise FileError(ERR_NOT_FOUND, "File not found")
        reason = _traversal(name)
        if reason is None and self._remote:
            decoded = urllib.parse.unquote(name)
            if decoded != name:
                reason = _traversal(decoded)
        if reason is not None:
            raise FileError(ERR_ACCESS, f"Access violation: {reason}")
        for flt in self._filters:
            if flt.matches(name):
                break
        else:
            if self._remote:
                return _Target(url=self._url(name))
            return _Target(paths=(os.path.join(self._root, name),), confine=self._real_root)
        target = flt.template.format_map(self._values(name, client_ip)).strip()
        if flt.indirect:
            line = _blocking(_first_line, self._admin_paths(target))
            if line is None:
                raise FileError(ERR_NOT_FOUND, "File not found")
            target = line
        log.debug("filter %s: %r -> %r", flt.pattern, name, target)
        if not target:
            raise FileError(ERR_NOT_FOUND, "File not found")
        if target.startswith(("http://", "https://")):
            return _Target(url=target)
        if os.path.isabs(target):
            return _Target(paths=(target,))
        if self._remote:
            return _Target(url=self._url(target))
        return _Target(paths=self._admin_paths(target))

    def _admin_paths(self, path: str) -> tuple[str, ...]:
        """Where a trusted relative path may be: under a local root, then under base_dir."""
        if os.path.isabs(path):
            return (path,)
        if self._remote:
            return (os.path.join(self._base_dir, path),)
        return (os.path.join(self._root, path), os.path.join(self._base_dir, path))

    # ------------------------------------------------------------------ remote files

    def _count(self, kind: str, url: str, size: int | None) -> None:
        if kind == "hit":
            self.hits += 1
        elif kind == "miss":
            self.misses += 1
        else:
            self.coalesced += 1
        self._events.emit(f"cache.{kind}", url=url, bytes=size)

    def _open_url(self, url: str) -> Source:
        if self._closed:
            raise FileError(ERR_UNDEFINED, f"upstream {url} failed: server stopping")
        missing_until = self._missing.get(url)
        if missing_until is not None:
            if missing_until > time.monotonic():
                self._count("hit", url, None)
                raise FileError(ERR_NOT_FOUND, "File not found")
            del self._missing[url]
        for _attempt in range(3):
            dl = self._inflight.get(url)
            started = dl is None
            if dl is None:
                entry = self._index.get(_key(url))
                if entry is not None and entry.fresh_until > time.time():
                    source = self._serve_cached(entry)
                    if source is not None:
                        return source
                    continue
                dl = self._start(url, entry)
            kind = "miss" if started else "coalesced"
            if not dl.headers.wait(self.http_timeout):
                if dl.stale is not None and (source := self._serve_stale(dl.stale, "no answer")):
                    return source
                self._count(kind, url, None)
                raise FileError(ERR_UNDEFINED,
                                f"upstream {url} failed: no answer within {self.http_timeout:g} s")
            if dl.not_modified and dl.stale is not None:
                if (source := self._serve_cached(dl.stale)) is not None:
                    return source
                continue
            error = dl.error
            if error is not None:
                if error.code == ERR_UNDEFINED and dl.stale is not None and (
                        source := self._serve_stale(dl.stale, error.message)):
                    return source
                self._count(kind, url, None)
                raise FileError(error.code, error.message)
            if dl.fd is not None and dl.fd.acquire():
                dl.readers += 1
                if dl.stored is not None:
                    dl.stored.readers += 1
                self._count(kind, url, dl.size)
                return _StreamSource(self, dl, dl.fd)
            if dl.stored is not None and (source := self._serve_cached(dl.stored)) is not None:
                return source
        raise FileError(ERR_UNDEFINED, f"upstream {url} failed: cache kept changing")

    def _serve_stale(self, entry: _Entry, why: str) -> Source | None:
        log.warning("serving cached %s: revalidation failed (%s)", entry.url, why)
        return self._serve_cached(entry)

    def _serve_cached(self, entry: _Entry) -> Source | None:
        if self._index.get(entry.key) is not entry:
            return None
        self._index.move_to_end(entry.key)
        entry.readers += 1
        try:
            fd = _blocking(_open_sized, self._path(entry.key, entry.token, "data"), entry.size)
        except OSError as exc:
            entry.readers -= 1
            log.warning("cached copy of %s unreadable, fetching again: %s", entry.url, exc)
            self._drop(entry)
            return None
        self._count("hit", entry.url, entry.size)
        return _CachedSource(self, entry, _Fd(fd))

    def _start(self, url: str, stale: _Entry | None) -> _Download:
        dl = _Download(url, _key(url), stale)
        self._inflight[url] = dl
        dl.greenlet = gevent.spawn(self._run, dl)
        return dl

    def _path(self, key: str, token: str, kind: str) -> str:
        return os.path.join(self._cache_dir, f"{key}.{token}.{kind}")

    def _run(self, dl: _Download) -> None:
        """The download greenlet: every way out resolves the download for its readers."""
        started = time.monotonic()
        try:
            self._fetch(dl)
        except FileError as exc:
            self._fail(dl, exc)
        except BaseException as exc:  # GreenletExit included: a reader must never hang
            self._fail(dl, FileError(ERR_UNDEFINED, f"upstream {dl.url} failed: {_reason(exc)}"),
                       detail=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        else:
            if dl.complete:
                log.info("cached url=%s bytes=%d duration=%.3f", dl.url, dl.received,
                         time.monotonic() - started)
        finally:
            if not dl.done:
                self._fail(dl, FileError(ERR_UNDEFINED, f"upstream {dl.url} failed"))

    def _fetch(self, dl: _Download) -> None:
        headers = {"Accept-Encoding": "identity"}
        if dl.stale is not None:
            if dl.stale.etag:
                headers["If-None-Match"] = dl.stale.etag
            if dl.stale.last_modified:
                headers["If-Modified-Since"] = dl.stale.last_modified
        timeout = self.http_timeout
        resp = self._session.get(dl.url, headers=headers, stream=True, timeout=(timeout, timeout))
        try:
            status = resp.status_code
            if status == 304 and dl.stale is not None:
                self._not_modified(dl, resp)
                return
            if status != 200:
                raise _status_error(dl.url, status)
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # Asked for identity, got a content coding (RFC 9110 section 8.4): either the file
                # compressed in transit, or a compressed file labelled with its coding (Apache's
                # "AddEncoding x-gzip .gz"). Which file is meant cannot be told, and a close-
                # delimited encoded body cut short would decode without error: refuse, never
                # guess (README, [tftpd] root).
                raise FileError(ERR_UNDEFINED, f"upstream {dl.url} failed: the mirror sent "
                                               f"Content-Encoding {encoding}, asked for identity")
            try:
                length: int | None = int(resp.headers["Content-Length"])
                if length < 0:
                    length = None
            except (KeyError, ValueError):
                length = None
            dl.size = length
            dl.etag = resp.headers.get("ETag")
            dl.last_modified = resp.headers.get("Last-Modified")
            if length:
                self._evict(extra=length)
            part = self._path(dl.key, dl.token, "part")
            fd = _blocking(os.open, part, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
            dl.fd = _Fd(fd)
            dl.headers.set()
            raw = resp.raw
            read = getattr(raw, "read1", None) or raw.read
            while True:
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    break
                dl.writing = True
                try:
                    _blocking(_pwrite_all, fd, chunk, dl.received)
                except OSError:     # the write failed (ENOSPC...): no thread holds the fd now
                    dl.writing = False
                    raise
                dl.writing = False
                dl.received += len(chunk)
                self.upstream_bytes += len(chunk)
                dl.notify()
            if length is not None and dl.received != length:
                raise FileError(ERR_UNDEFINED, f"upstream {dl.url} failed: cut short at "
                                               f"{dl.received} of {length} bytes")
        finally:
            resp.close()
        # Every byte is in the file: readers may finish while it is filed into the cache.
        if dl.size is None:
            dl.size = dl.received
        dl.complete = True
        dl.notify()
        self._store(dl)

    def _not_modified(self, dl: _Download, resp: requests.Response) -> None:
        entry = dl.stale
        assert entry is not None
        entry.etag = resp.headers.get("ETag") or entry.etag
        entry.last_modified = resp.headers.get("Last-Modified") or entry.last_modified
        entry.fetched = time.time()
        entry.fresh_until = entry.fetched + self._revalidate_after
        dl.not_modified = True
        self._finish(dl)
        self._events.emit("cache.upstream", url=dl.url, bytes=0, status=304)
        log.debug("revalidated url=%s (304)", dl.url)
        if self._index.get(entry.key) is entry:
            try:
                _blocking(_write_json, self._path(entry.key, entry.token, "json"),
                          self._path(entry.key, entry.token, "jtmp"), entry.meta())
            except OSError as exc:
                log.warning("cache metadata for %s not written: %s", entry.url, exc)

    def _store(self, dl: _Download) -> None:
        """File a complete download into the cache (best effort: its readers are served anyway)."""
        now = time.time()
        entry = _Entry(dl.key, dl.token, dl.url, dl.received, dl.etag, dl.last_modified, now,
                       now + self._revalidate_after)
        try:
            _blocking(os.rename, self._path(dl.key, dl.token, "part"), self._path(dl.key, dl.token, "data"))
            _blocking(_write_json, self._path(dl.key, dl.token, "json"),
                      self._path(dl.key, dl.token, "jtmp"), entry.meta())
        except OSError as exc:
            log.warning("download of %s not cached: %s", dl.url, exc)
            _discard(self._path(dl.key, dl.token, "part"), self._path(dl.key, dl.token, "data"),
                     self._path(dl.key, dl.token, "jtmp"))
            self._events.emit("cache.upstream", url=dl.url, bytes=dl.received, status=200)
            self._finish(dl)
            return
        old = self._index.get(dl.key)
        if old is not None:
            self._drop(old)
        entry.readers = dl.readers
        self._index[dl.key] = entry
        self._total += entry.size
        dl.stored = entry
        self._events.emit("cache.upstream", url=dl.url, bytes=dl.received, status=200)
        self._finish(dl)
        self._evict()

    def _finish(self, dl: _Download) -> None:
        dl.done = True
        if self._inflight.get(dl.url) is dl:
            del self._inflight[dl.url]
        dl.headers.set()
        dl.notify()
        if dl.fd is not None:
            dl.fd.release()

    def _fail(self, dl: _Download, error: FileError, detail: str = "") -> None:
        if dl.done:
            return
        dl.error = error
        if error.code == ERR_NOT_FOUND:
            if len(self._missing) >= MISSING_MAX:
                self._missing.clear()
            self._missing[dl.url] = time.monotonic() + min(self._revalidate_after, NEGATIVE_TTL)
        if dl.stale is not None:
            if error.code == ERR_NOT_FOUND:
                self._drop(dl.stale)   # gone upstream: forget our copy
            else:
                dl.stale.fresh_until = time.time() + min(self._revalidate_after, REVALIDATE_BACKOFF)
        if error.code == ERR_NOT_FOUND:
            log.info("upstream %s: not found", dl.url)
        else:
            log.warning("%s%s", error.message, f" ({detail})" if detail else "")
        if dl.fd is not None:
            _discard(self._path(dl.key, dl.token, "part"))
            if dl.writing:
                dl.fd.acquire()   # killed mid-write: a thread may still use the fd, never close it
        self._events.emit("cache.upstream", url=dl.url, bytes=dl.received, status=None,
                          error=error.message, code=error.code)
        self._finish(dl)

    def _drop(self, entry: _Entry) -> None:
        """Forget a cache entry and remove its files (open readers keep their descriptors)."""
        if self._index.get(entry.key) is not entry:
            return
        del self._index[entry.key]
        self._total -= entry.size
        _discard(self._path(entry.key, entry.token, "data"), self._path(entry.key, entry.token, "json"))

    def _evict(self, extra: int = 0) -> None:
        """Evict least-recently-used entries not being read until *extra* more bytes fit."""
        if self._total + extra <= self._max_bytes:
            return
        for entry in list(self._index.values()):
            if self._total + extra <= self._max_bytes:
                break
            if entry.readers > 0:
                continue
            log.debug("evict url=%s bytes=%d", entry.url, entry.size)
            self._drop(entry)

    def _load_index(self) -> None:
        """Re-index the cache directory (at startup) and remove what a crash left behind."""
        os.makedirs(self._cache_dir, exist_ok=True)
        found: dict[str, _Entry] = {}
        keep: set[str] = set()
        names = os.listdir(self._cache_dir)
        present = set(names)
        for name in names:
            m = _CACHE_NAME.match(name)
            if not m or m.group(3) != "json":
                continue
            key, token = m.group(1), m.group(2)
            data = f"{key}.{token}.data"
            try:
                with open(os.path.join(self._cache_dir, name), encoding="utf-8") as f:
                    meta = json.load(f)
                url, size, fetched = str(meta["url"]), int(meta["size"]), float(meta["fetched"])
                if _key(url) != key or data not in present:
                    continue
                if os.stat(os.path.join(self._cache_dir, data)).st_size != size:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            entry = _Entry(key, token, url, size, meta.get("etag"), meta.get("last_modified"),
                           fetched, fetched + self._revalidate_after)
            if key not in found or found[key].fetched < fetched:
                found[key] = entry
        for entry in sorted(found.values(), key=lambda e: e.fetched):
            self._index[entry.key] = entry
            self._total += entry.size
            keep.update({f"{entry.key}.{entry.token}.data", f"{entry.key}.{entry.token}.json"})
        for name in names:
            if _CACHE_NAME.match(name) and name not in keep:
                _unlink_quietly(os.path.join(self._cache_dir, name))
        if self._index:
            log.info("cache %s: %d files, %d bytes", self._cache_dir, len(self._index), self._total)
        self._evict()


def _key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]
