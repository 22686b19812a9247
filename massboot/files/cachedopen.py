"""Opens the kernel answers from its caches alone, so the hub may make them itself.

Opening a local file is a path walk: on a cold disk it reads directories, so
:mod:`massboot.files.local` makes it in gevent's threadpool. That hop (a worker thread woken,
the GIL handed over and back, the hub woken) costs more CPU than a whole 16 KiB TFTP transfer
(README "Per-transfer cost"), and a rack's requests name the same few files, whose path walk
is always in the dentry cache. Linux's ``openat2(2)`` (5.12+) makes the walk without waiting:

* ``RESOLVE_CACHED``: only from the dentry cache; ``EAGAIN`` where it would have to read.
* ``RESOLVE_BENEATH``: never above the directory it starts from (``EXDEV``), so a path under
  the TFTP root cannot leave it, symlinks included (the threadpool's ``realpath`` check says
  the same of every path this accepts).
* ``RESOLVE_NO_XDEV``: never onto another mount, so the file is on the file system whose type
  was checked: a local one (its ``statfs`` magic). An NFS or FUSE open may wait on a server
  even when its walk is cached: those always take the threadpool.

Anything else (an error other than "no such file", a path this cannot prove confined, an old
kernel, another OS) answers None: the caller then opens through the threadpool as before, which
decides exactly as it always did. So this is a shortcut for the common case, never a second
set of rules.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys

from gevent.monkey import get_original

from massboot.sources import FileError, FileReason

__all__ = ["LOCAL_FILE_SYSTEMS", "CachedOpener", "close_fd"]

_SYS_OPENAT2 = 437  # one number on every Linux architecture (the syscall table is shared since 5.1)
_AT_FDCWD = -100
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0o200000)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_RESOLVE_CACHED = 0x20

#: statfs(2) magic numbers of local file systems: an open there never waits on a network
LOCAL_FILE_SYSTEMS = frozenset((
    0xEF53,      # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
    0x794C7630,  # overlayfs (containers)
    0xF2F52010,  # f2fs
    0x2FC12FC1,  # zfs
    0xCA451A4E,  # bcachefs
    0x73717368,  # squashfs
    0x00009660,  # iso9660
    0x00004D44,  # vfat, msdos
    0x2011BAB0,  # exfat
    0x3153464A,  # jfs
))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


#: the C library's close(2): gevent's ``os.close`` (under monkey-patching) checks each fd with
#: fcntl and fstat and closes anything but a regular file one loop iteration later, a guard for
#: descriptors its watchers may hold; the descriptors here (an ``O_PATH`` directory, a file) are
#: never watched
close_fd = get_original("os", "close")

_MISSING = object()
_NOT_FILE = object()


class CachedOpener:
    """``_lookup(paths, confine, open_it)`` of :mod:`massboot.files.local`, from the caches.

    Attributes:
        enabled: False when this system has no ``openat2`` with ``RESOLVE_CACHED`` (found at
            the first call that says so, or not Linux): every lookup then answers None.
    """

    def __init__(self) -> None:
        self.enabled = sys.platform.startswith("linux")
        self._syscall = None
        self._fstatfs = None
        if self.enabled:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self._syscall = libc.syscall
                self._fstatfs = libc.fstatfs
            except (OSError, AttributeError):
                self.enabled = False
        self._dir_how = _OpenHow(_O_PATH | _O_DIRECTORY | _O_CLOEXEC, 0, _RESOLVE_CACHED)
        self._statfs = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
        self._f_type = ctypes.c_long.from_buffer(self._statfs)

    def lookup(self, paths: tuple[str, ...], confine: str | tuple[str, ...] | None,
               open_it: bool) -> tuple[int | None, int] | None:
        """``(fd or None, size)`` of the first regular file among *paths*, or None.

        None: not answerable from the caches (the caller asks the threadpool). Raises FileError
        as the threadpool's lookup would when every path is missing or not a regular file.
        """
        if not self.enabled:
            return None
        confines = confine if isinstance(confine, tuple) else (confine,) * len(paths)
        not_file = False
        for path, base in zip(paths, confines, strict=True):
            if base is None:  # an operator's path: symlinks anywhere, but not onto another mount
                if not os.path.isabs(path):
                    return None
                base, rel = os.path.split(path)
                resolve = _RESOLVE_CACHED | _RESOLVE_NO_XDEV
            else:
                prefix = base if base.endswith("/") else base + "/"
                if not path.startswith(prefix):  # e.g. a root reached through a symlink
                    return None
                rel = path[len(prefix):]
                resolve = _RESOLVE_CACHED | _RESOLVE_BENEATH | _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS
            if not rel:
                return None
            got = self._open(base, rel, resolve, open_it)
            if got is None:
                return None
            if got is _MISSING:
                continue
            if got is _NOT_FILE:
                not_file = True
                continue
            return got  # type: ignore[return-value]
        # as local._lookup: a directory (or device, fifo...) is answered like a missing file
        raise FileError(FileReason.NOT_FOUND, "Not a regular file" if not_file else "File not found")

    def _openat2(self, dirfd: int, path: bytes, how: _OpenHow) -> int:
        """The descriptor, or -errno."""
        assert self._syscall is not None
        fd = self._syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        return fd if fd >= 0 else -ctypes.get_errno()

    def _disable(self, err: int) -> None:
        """Off for good when *err* says this kernel has no openat2 or no RESOLVE_CACHED."""
        if err in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM):  # EPERM: a seccomp filter
            self.enabled = False

    def _open(self, base: str, rel: str, resolve: int, open_it: bool) -> object:
        try:
            base_b, rel_b = os.fsencode(base), os.fsencode(rel)
        except (UnicodeError, ValueError):
            return None
        if b"\0" in base_b or b"\0" in rel_b:
            return None
        dirfd = self._openat2(_AT_FDCWD, base_b, self._dir_how)
        if dirfd < 0:
            self._disable(-dirfd)
            return None
        try:
            if not self._local(dirfd):
                return None
            # O_NONBLOCK: a FIFO's open would wait for a writer (cleared below for a file)
            flags = (os.O_RDONLY | os.O_NONBLOCK if open_it else _O_PATH) | _O_CLOEXEC
            fd = self._openat2(dirfd, rel_b, _OpenHow(flags, 0, resolve))
        finally:
            close_fd(dirfd)
        if fd < 0:
            if -fd in (errno.ENOENT, errno.ENOTDIR):
                return _MISSING
            return None  # EAGAIN (not cached), EXDEV (leaves the root or the mount), EACCES...
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _NOT_FILE
            if open_it:
                os.set_blocking(fd, True)
            keep = open_it
            return (fd if open_it else None), st.st_size
        except OSError:
            return None
        finally:
            if not keep:
                close_fd(fd)

    def _local(self, fd: int) -> bool:
        assert self._fstatfs is not None
        if self._fstatfs(fd, self._statfs) != 0:
            return False
        return (self._f_type.value & 0xFFFFFFFF) in LOCAL_FILE_SYSTEMS
