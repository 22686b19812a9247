"""Opens made on the hub from the kernel's caches (massboot.files.cachedopen).

The shortcut must never decide differently from the threadpool's lookup: for every kind of
path it answers the same file, the same error, or None (then the threadpool decides).
"""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from massboot.files import FileStore, cachedopen, local
from massboot.files.cachedopen import CachedOpener
from massboot.sources import FileError, FileReason

pytestmark = pytest.mark.skipif(not CachedOpener().enabled, reason="openat2 needs Linux")


@pytest.fixture
def tree(tmp_path):
    """A root with every kind of entry, and a secret outside it."""
    root = tmp_path / "root"
    (root / "boot" / "deep").mkdir(parents=True)
    (root / "boot" / "vmlinuz").write_bytes(b"k" * 3000)
    (root / "boot" / "deep" / "initrd").write_bytes(b"i" * 10)
    (root / "empty").write_bytes(b"")
    (tmp_path / "secret").write_bytes(b"s" * 7)
    os.symlink("boot/vmlinuz", root / "rel-link")                 # relative, inside
    os.symlink(root / "boot" / "vmlinuz", root / "abs-link")      # absolute, inside
    os.symlink(tmp_path / "secret", root / "abs-out")              # absolute, outside
    os.symlink("../secret", root / "rel-out")                      # relative, outside
    os.symlink("boot/../boot/vmlinuz", root / "dotdot-in")         # '..' that stays inside
    os.symlink("../root/boot/vmlinuz", root / "up-and-back")       # leaves, comes back
    os.symlink("nowhere", root / "dangling")
    os.symlink("boot", root / "dir-link")
    os.symlink(tmp_path, root / "dir-out")
    os.mkfifo(root / "fifo")
    return root


NAMES = ["boot/vmlinuz", "boot/deep/initrd", "empty", "boot", "missing", "boot/missing",
         "empty/below", "rel-link", "abs-link", "abs-out", "rel-out", "dotdot-in", "up-and-back",
         "dangling", "dir-link/vmlinuz", "dir-out/secret", "fifo"]


def _outcome(func, *args):
    """A comparable outcome: ("file", inode, size) or ("error", reason, message)."""
    try:
        got = func(*args)
    except FileError as exc:
        return ("error", exc.reason, exc.message)
    if got is None:
        return None
    fd, size = got
    if fd is None:
        return ("size", size)
    try:
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode)
        assert os.get_blocking(fd)     # made blocking again: reads are plain reads
        return ("file", st.st_ino, size)
    finally:
        os.close(fd)


def _slow(paths, confine, open_it):
    got = _outcome(local._lookup, paths, confine, open_it)
    if got is not None and got[0] == "file" and not open_it:
        raise AssertionError("no descriptor without open_it")
    return got


@pytest.mark.parametrize("open_it", [True, False])
@pytest.mark.parametrize("confined", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_same_answer_as_the_threadpool_or_none(tree, name, confined, open_it):
    opener = CachedOpener()
    path = str(tree / name)
    paths, confine = (path,), (str(tree) if confined else None)
    slow = _slow(paths, confine, open_it)       # warms the dentry cache, as a rack's first request
    fast = _outcome(opener.lookup, paths, confine, open_it)
    if fast is not None:
        assert fast == slow
    assert opener.enabled


@pytest.mark.parametrize("name", ["boot/vmlinuz", "boot/deep/initrd", "empty", "rel-link",
                                  "dotdot-in", "dir-link/vmlinuz", "missing", "boot", "fifo"])
def test_common_cases_answered_on_the_hub(tree, name):
    """Files, missing names and directories under the root need no threadpool once cached."""
    opener = CachedOpener()
    path = str(tree / name)
    _slow((path,), str(tree), True)
    assert _outcome(opener.lookup, (path,), str(tree), True) is not None


@pytest.mark.parametrize("name", ["abs-out", "rel-out", "dir-out/secret", "up-and-back", "abs-link"])
def test_paths_leaving_the_root_are_left_to_the_threadpool(tree, name):
    """An escape (or a symlink this cannot prove confined) never yields a descriptor here."""
    opener = CachedOpener()
    path = str(tree / name)
    _slow((path,), str(tree), True)
    assert opener.lookup((path,), str(tree), True) is None


def test_first_existing_of_several_paths(tree):
    opener = CachedOpener()
    root = str(tree)
    paths = (f"{root}/missing", f"{root}/boot", f"{root}/boot/deep/initrd", f"{root}/boot/vmlinuz")
    _slow(paths, root, True)
    assert _outcome(opener.lookup, paths, root, True) == _slow(paths, root, True)
    assert _outcome(opener.lookup, paths, root, True)[2] == 10
    # an escaping path after a missing one: the threadpool decides (ACCESS), never a file
    paths = (f"{root}/missing", f"{root}/abs-out", f"{root}/boot/vmlinuz")
    assert _slow(paths, root, True)[:2] == ("error", FileReason.ACCESS)
    assert opener.lookup(paths, root, True) is None
    # one confinement per path, as a filter's template gives
    both = (f"{root}/boot/missing", f"{root}/boot/vmlinuz")
    _slow(both, (f"{root}/boot", f"{root}/boot"), True)
    assert _outcome(opener.lookup, both, (f"{root}/boot", f"{root}/boot"), True)[2] == 3000


def test_missing_everywhere_and_not_a_file_messages(tree):
    opener = CachedOpener()
    root = str(tree)
    for paths, message in (((f"{root}/missing",), "File not found"),
                           ((f"{root}/boot", f"{root}/missing"), "Not a regular file"),
                           ((f"{root}/fifo",), "Not a regular file")):
        _slow(paths, root, True)
        assert _outcome(opener.lookup, paths, root, True) == ("error", FileReason.NOT_FOUND, message)


def test_unconfirmable_paths_answer_none(tree, tmp_path):
    opener = CachedOpener()
    os.symlink(tree, tmp_path / "root-link")
    # a root reached through a symlink: the path does not start with the real root
    assert opener.lookup((str(tmp_path / "root-link" / "boot" / "vmlinuz"),), str(tree), True) is None
    assert opener.lookup(("relative/name",), None, True) is None
    assert opener.lookup((str(tree) + "/",), str(tree), True) is None   # the root itself


def test_a_network_file_system_takes_the_threadpool(tree, monkeypatch):
    """Only local file systems: an NFS or FUSE open may wait on a server even when cached."""
    monkeypatch.setattr(cachedopen, "LOCAL_FILE_SYSTEMS", frozenset())
    opener = CachedOpener()
    path = str(tree / "boot" / "vmlinuz")
    _slow((path,), str(tree), True)
    assert opener.lookup((path,), str(tree), True) is None
    assert opener.enabled


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL])
def test_an_old_kernel_switches_it_off(tree, monkeypatch, err):
    opener = CachedOpener()
    monkeypatch.setattr(opener, "_openat2", lambda *a: -err)
    assert opener.lookup((str(tree / "boot" / "vmlinuz"),), str(tree), True) is None
    assert not opener.enabled
    files = FileStore(str(tree), base_dir=str(tree))
    files._local.cached = opener
    source = files.open("boot/vmlinuz", "10.0.0.1")   # the threadpool still serves
    assert source.read(0, 5) == b"kkkkk"
    source.close()


def test_file_store_opens_without_the_threadpool(tree, monkeypatch):
    """A cached file and a cached miss are answered on the hub; an escape goes to the pool."""
    files = FileStore(str(tree), base_dir=str(tree))
    files.open("boot/vmlinuz", "10.0.0.1").close()
    with pytest.raises(FileError):
        files.open("missing", "10.0.0.1")
    calls = []

    def no_pool(func, *args):
        if func is local._lookup:   # (reads by source.read() take the pool: not opens)
            calls.append(func)
        return func(*args)

    monkeypatch.setattr(local, "blocking", no_pool)
    source = files.open("boot/vmlinuz", "10.0.0.1")
    assert source.size == 3000 and source.read(2990, 100) == b"k" * 10
    source.close()
    with pytest.raises(FileError) as err:
        files.open("missing", "10.0.0.1")
    assert err.value.reason == FileReason.NOT_FOUND
    assert calls == []
    with pytest.raises(FileError) as err:
        files.open("abs-out", "10.0.0.1")
    assert err.value.reason == FileReason.ACCESS
    assert calls == [local._lookup]


def test_a_fifo_never_hangs_the_lookup(tree):
    """Opening a FIFO for reading waits for a writer: both paths open it non-blocking."""
    results = []

    def both():
        results.append(_outcome(local._lookup, (str(tree / "fifo"),), str(tree), True))
        results.append(_outcome(CachedOpener().lookup, (str(tree / "fifo"),), str(tree), True))

    worker = threading.Thread(target=both, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a FIFO's open waited for a writer"
    assert results == [("error", FileReason.NOT_FOUND, "Not a regular file")] * 2


def test_mirror_cache_copies_open_on_the_hub_and_keep_their_size_check(tmp_path):
    """A cached copy opens on the hub; a copy of another size or a vanished one is an OSError,
    as in the threadpool (the mirror then fetches the file again)."""
    from massboot.files import cache

    data = tmp_path / "0123.abcd.data"
    data.write_bytes(b"d" * 500)
    cache._open_sized(str(data), 500)                  # warm, as the download that filed it did
    fd = cache._open_sized_cached(str(data), 500)
    assert fd is not None and os.pread(fd, 10, 490) == b"d" * 10
    os.close(fd)
    for path, size, code in ((data, 501, errno.EIO), (tmp_path / "gone.data", 500, errno.ENOENT)):
        for opener in (cache._open_sized, cache._open_sized_cached):
            with pytest.raises(OSError) as err:
                opener(str(path), size)
            assert err.value.errno == code


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EACCES])
def test_a_shortage_or_refusal_is_never_a_missing_file(tree, monkeypatch, err):
    """Out of descriptors (or memory, or not cached, or denied): None, so the threadpool's
    lookup names it (BUSY, ACCESS...), never "File not found"."""
    opener = CachedOpener()
    real = opener._openat2
    calls = []

    def failing(dirfd, path, how):
        calls.append(path)
        return -err if len(calls) > 1 else real(dirfd, path, how)   # the root opens, the file fails

    monkeypatch.setattr(opener, "_openat2", failing)
    assert opener.lookup((str(tree / "boot" / "vmlinuz"),), str(tree), True) is None
    assert opener.enabled


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_no_lookup_leaves_a_descriptor_open(tree):
    """A server runs for months: every outcome closes the root's O_PATH descriptor and any file
    it did not hand out, at once (not one loop iteration later, as gevent's patched os.close
    does for anything but a regular file)."""
    opener = CachedOpener()
    before = _open_fds()
    for name in NAMES:
        for confine in (str(tree), None):
            for open_it in (True, False):
                _outcome(opener.lookup, (str(tree / name),), confine, open_it)
        assert _open_fds() == before, name


def _holding(path) -> int:
    """How many of this process's descriptors are open on *path*."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except FileNotFoundError:
            continue
    return count


def test_a_released_file_is_closed_at_once(tree):
    files = FileStore(str(tree), base_dir=str(tree))
    path = tree / "boot" / "vmlinuz"
    source = files.open("boot/vmlinuz", "10.0.0.1")
    assert source.read(0, 3) == b"kkk"
    assert _holding(path) == 1
    source.close()
    assert _holding(path) == 0
