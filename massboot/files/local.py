"""Local files: lookup and confinement, reads that never stall the gevent hub.

Opening, ``stat`` and reading a local file happen in gevent's threadpool, so a slow disk never
stalls the hub; an open or ``stat`` whose path walk the kernel can answer from its caches alone
is made on the hub (:mod:`massboot.files.cachedopen`), without the threadpool's hop. Reads
from the event loop itself (the TFTP server's socket callbacks) try
``preadv(RWF_NOWAIT)`` first: it answers from the page cache without blocking, or refuses.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent

from massboot.files.cachedopen import CachedOpener, close_fd
from massboot.sources import FileError, FileReason, WouldBlock

__all__ = ["LOCAL_CHUNK", "BufferedSource", "Fd", "LocalFiles", "blocking"]

log = logging.getLogger(__name__)

# bytes a local source reads at a time: with hundreds of transfers at once this is most of the
# server's memory (500 x 32 KiB), and one preadv per ~22 blocks of 1428 costs little
LOCAL_CHUNK = 32 << 10
SIZE_TTL = 5.0            # seconds a local file size answered for DHCP option 13 is reused
SIZE_CACHE_MAX = 1024
INDIRECT_MAX = 64 << 10  # bytes read from a ``[path]`` file to find its first line

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)

_T = TypeVar("_T")


def _capture(func: Callable[..., _T], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, func(*args)
    except Exception as exc:  # handed back to the caller, not to the hub's error printer
        return False, exc


def blocking(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in gevent's threadpool so the hub keeps serving; re-raise here."""
    ok, value = gevent.get_hub().threadpool.apply(_capture, (func, args))
    if not ok:
        raise value
    return value


def open_cloexec(path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` with ``O_CLOEXEC``. Blocking."""
    return os.open(path, flags | _O_CLOEXEC, mode)


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


Confine = str | tuple[str, ...] | None

# open() failing for one of these says the process (or system) is out of descriptors or memory
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))


def _lookup(paths: tuple[str, ...], confine: Confine, open_it: bool) -> tuple[int | None, int]:
    """Find the first regular file among *paths*; return ``(fd or None, size)``. Blocking.

    With *confine* (one directory, or one per path), a path whose real path leaves that
    directory is refused (ACCESS): a symlink may point anywhere inside the root but never out.
    """
    not_file = False
    confines = confine if isinstance(confine, tuple) else (confine,) * len(paths)
    for path, confine in zip(paths, confines, strict=True):
        if confine is not None:
            path = os.path.realpath(path)
            if not _inside(path, confine):
                raise FileError(FileReason.ACCESS, "Access violation")
        try:
            if open_it:
                # O_NONBLOCK: a FIFO's open would wait for a writer, for ever; a file's
                # descriptor is made blocking again below
                fd = open_cloexec(path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode):
                        os.set_blocking(fd, True)
                except OSError:
                    os.close(fd)
                    raise
            else:
                fd = None
                st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            raise FileError(FileReason.ACCESS, "Access violation") from None
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:  # the server's shortage, not the file's absence
                raise FileError(FileReason.BUSY, "Server busy, try again") from None
            raise FileError(FileReason.NOT_FOUND, f"Cannot open file: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return fd, st.st_size
        if fd is not None:
            os.close(fd)
        not_file = True
    # A directory (or device, fifo...) is answered like a missing file.
    raise FileError(FileReason.NOT_FOUND, "Not a regular file" if not_file else "File not found")


def _first_line(paths: tuple[str, ...]) -> str | None:
    """First non-empty stripped line of the first existing file among *paths*. Blocking."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(INDIRECT_MAX)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            log.warning("filter file %r unreadable: %s", path[-128:], exc)
            return None
        for line in head.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip()
        log.warning("filter file %r has no non-empty line", path[-128:])
        return None
    log.warning("filter file not found: %s", " or ".join(repr(p[-128:]) for p in paths))
    return None


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


class Fd:
    """A file descriptor shared by a download and its readers; closed with the last user.

    Attributes:
        on_close: called once after the descriptor is closed (the cache gives back the bytes of
            an unlinked file then: they are freed on disk only at the last close).
    """

    __slots__ = ("fd", "refs", "on_close")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1
        self.on_close: Callable[[], None] | None = None

    def acquire(self) -> bool:
        """Take one more reference; False once the descriptor is closed."""
        if self.refs <= 0:
            return False
        self.refs += 1
        return True

    def release(self) -> None:
        """Drop one reference; the last one closes the descriptor."""
        self.refs -= 1
        if self.refs == 0:
            try:
                close_fd(self.fd)  # a regular file's: never watched by the event loop
            except OSError:
                pass
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()


class LocalFiles:
    """Local lookups and reads for one file store.

    Attributes:
        nowait: whether ``preadv(RWF_NOWAIT)`` works here (Linux >= 4.14); cleared at the
            first refusal by the kernel or the file system, after which reads from the event
            loop always raise WouldBlock and go through the threadpool.
    """

    def __init__(self) -> None:
        self.nowait = bool(_RWF_NOWAIT) and hasattr(os, "preadv")
        self.cached = CachedOpener()
        self._sizes: dict[tuple[Any, ...], tuple[int, float]] = {}   # sizes for option 13

    def open(self, paths: tuple[str, ...], confine: Confine) -> BufferedSource:
        """Open the first regular file among *paths*; raise FileError."""
        fd, size = self._find(paths, confine, True)
        assert fd is not None
        return BufferedSource(self, Fd(fd), size)

    def size(self, paths: tuple[str, ...], confine: Confine) -> int:
        """The size of the file :meth:`open` would open; raise FileError.

        Every OFFER and ACK of a rack asks for the same boot file: one ``stat`` through the
        threadpool per ``SIZE_TTL`` seconds, not one per reply.
        """
        key = (paths, confine)
        now = time.monotonic()
        known = self._sizes.get(key)
        if known is not None and known[1] > now:
            return known[0]
        size = self._find(paths, confine, False)[1]
        if len(self._sizes) >= SIZE_CACHE_MAX:
            self._sizes.clear()
        self._sizes[key] = (size, now + SIZE_TTL)
        return size

    def _find(self, paths: tuple[str, ...], confine: Confine, open_it: bool) -> tuple[int | None, int]:
        """:func:`_lookup`: on the hub when the kernel's caches answer, else in the threadpool."""
        found = self.cached.lookup(paths, confine, open_it)
        return found if found is not None else blocking(_lookup, paths, confine, open_it)

    def first_line(self, paths: tuple[str, ...]) -> str | None:
        """The first non-empty line of the first existing file among *paths* (a ``[path]`` filter)."""
        return blocking(_first_line, paths)

    def read_into(self, fd: int, part: memoryview, offset: int, nowait: bool) -> int:
        """Read into *part* from file *offset*; the count of bytes read.

        With *nowait*, only what the page cache holds: raise WouldBlock otherwise.
        """
        if nowait:
            if not self.nowait:
                raise WouldBlock
            try:
                return os.preadv(fd, [part], offset, _RWF_NOWAIT)
            except BlockingIOError:
                raise WouldBlock from None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self.nowait = False  # this kernel or file system cannot: threadpool only
                raise WouldBlock from None
        return blocking(_preadv, fd, part, offset)


class BufferedSource:
    """Reads a file descriptor a chunk at a time into a small buffer; reads slice it.

    The buffer holds at most one chunk ahead of the reader: memory stays O(chunk). It is
    allocated once and refilled in place: a refill moves the unread rest of the chunk to its
    front and reads the next chunk behind it, with no allocation and no zeroing per chunk.
    Nothing is kept behind the read point: a TFTP transfer resends from its own window slots,
    and a read before the buffer reads the file again.

    :meth:`read_nowait` is the event-loop path (the TFTP server calls it from a socket
    callback): it answers from the buffer without a copy (a ``memoryview`` slice), refills the
    buffer inline with ``preadv(RWF_NOWAIT)`` when the bytes are in the page cache, and raises
    :class:`~massboot.sources.WouldBlock` when they are not (or a download has not brought them
    yet); :meth:`read` may then wait for them (the threadpool, the download). A slice from
    :meth:`read_nowait` is valid until the next read: copy it before reading again (the
    transfer copies it into its window slot at once); :meth:`read` returns a copy.

    Args:
        files: whose :meth:`LocalFiles.read_into` fills the buffer.
        fd: the descriptor, released at :meth:`close`.
        size: the file's size when known.
        on_close: called once at :meth:`close`, after the descriptor is released.
    """

    def __init__(self, files: LocalFiles, fd: Fd, size: int | None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.size = size
        self._files = files
        self._fd: Fd | None = fd
        self._on_close = on_close
        self._start = 0
        self._buf: bytes | bytearray = b""
        self._view = memoryview(self._buf)
        self._eof: int | None = None  # where a read found the end of the file

    def _limit(self, end: int, wait: bool = True) -> int | None:
        """Wait until bytes up to *end* can be read; return how far, or None for "all".

        With *wait* false, raise WouldBlock instead of waiting.
        """
        return None

    def _fill(self, buf: bytearray, at: int, length: int, offset: int, nowait: bool) -> int:
        """Read into ``buf[at:at + length]`` from file *offset*; the count of bytes read."""
        assert self._fd is not None
        # no `with`: a threadpool read may still hold the view when this greenlet is killed;
        # the views die with this frame, before the caller trims *buf*
        part = memoryview(buf)[at:at + length]
        return self._files.read_into(self._fd.fd, part, offset, nowait)

    def read(self, offset: int, length: int) -> bytes:
        """See :meth:`massboot.sources.Source.read`."""
        return bytes(self._read(offset, length, False))

    def read_nowait(self, offset: int, length: int) -> bytes | memoryview:
        """Like :meth:`read` without ever waiting: raise WouldBlock instead; may be a view."""
        rel = offset - self._start
        if rel >= 0 and rel + length <= len(self._view) and length > 0:
            return self._view[rel:rel + length]
        return self._read(offset, length, True)

    def _read(self, offset: int, length: int, nowait: bool) -> bytes | memoryview:
        if self._fd is None:
            raise FileError(FileReason.CLOSED, "Source closed")
        if length <= 0 or offset < 0:
            return b""
        end = offset + length
        start = self._start
        buf_end = start + len(self._view)
        if start <= offset and (end <= buf_end or buf_end == self._eof):
            return self._view[offset - start:end - start]
        limit = self._limit(end, not nowait)
        if self._fd is None:
            raise FileError(FileReason.CLOSED, "Source closed")
        start = self._start
        buf_end = start + len(self._view)
        if buf_end > start and start <= offset <= buf_end:  # sequential: read on from buf_end
            tail = buf_end - offset  # the unread rest, moved to the front
            want = max(LOCAL_CHUNK - tail, end - buf_end)  # the buffer stays one chunk
            if limit is not None:
                want = min(want, limit - buf_end)
            if want <= 0:
                return self._view[offset - start:end - start]
            at = buf_end
        else:
            want = max(LOCAL_CHUNK, length)
            if limit is not None:
                want = min(want, limit - offset)
            if want <= 0:
                return b""
            tail = 0
            at = offset
        buf = self._buf
        if isinstance(buf, bytearray) and len(buf) >= tail + want:
            if tail:  # a copy first: the rest may overlap the front
                buf[:tail] = bytes(self._view[offset - start:])
        else:  # the first read, or a longer one than ever
            rest = self._view[offset - start:] if tail else b""
            buf = bytearray(tail + want)
            buf[:tail] = rest
        self._start, self._buf, self._view = offset, buf, memoryview(buf)[:tail]  # valid meanwhile
        got = self._fill(buf, tail, want, at, nowait)
        if self._fd is None:  # closed while the threadpool read
            raise FileError(FileReason.CLOSED, "Source closed")
        if got < want and limit is None and (got == 0 or not nowait):  # a blocking read stops only there
            self._eof = at + got
        self._view = memoryview(buf)[:tail + got]
        return self._view[0:length]

    def fast_file(self) -> tuple[int, int] | None:
        """``(descriptor, size)`` for the compiled TFTP data path (README "Performance"), which
        reads blocks with ``preadv2(RWF_NOWAIT)`` itself (never ``mmap``: a file truncated
        meanwhile reads short, where a mapping would SIGBUS); None while a download still
        brings the bytes, once closed, or where ``RWF_NOWAIT`` is refused.

        A read past the file's real end (truncated since) is short, and the TFTP server
        then reads through :meth:`read_nowait` as without this.
        """
        if self._fd is None or not self._files.nowait:
            return None
        try:
            if self._limit(0, False) is not None:   # a download in progress
                return None
        except (WouldBlock, FileError):
            return None
        size = self._final_size()
        return None if size is None else (self._fd.fd, size)

    def fileno(self) -> int:
        """The descriptor to ``os.sendfile`` from (see :class:`massboot.sources.FdSource`).

        Raises:
            FileError: CLOSED once the source is closed.
        """
        if self._fd is None:
            raise FileError(FileReason.CLOSED, "Source closed")
        return self._fd.fd

    def ready(self, end: int) -> tuple[int, bool]:
        """Wait until the file's first *end* bytes can be read, or it is complete.

        Returns:
            ``(bytes readable now, complete)``; once complete, the first is the file's size.

        Raises:
            FileError: the download behind the source failed, or stalled.
        """
        if self._fd is None:
            raise FileError(FileReason.CLOSED, "Source closed")
        limit = self._limit(end)
        if limit is None:
            size = self._final_size()
            assert size is not None
            return size, True
        return limit, False

    def _final_size(self) -> int | None:
        """The size once the file is complete."""
        return self.size

    def close(self) -> None:
        """See :meth:`massboot.sources.Source.close`."""
        fd, self._fd = self._fd, None
        on_close, self._on_close = self._on_close, None
        self._buf = b""
        self._view = memoryview(self._buf)
        if fd is not None:
            fd.release()
        if on_close is not None:
            on_close()
