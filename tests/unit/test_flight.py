"""FlightLocks: one download per file across processes (README, "TFTP worker processes")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from massboot.files.cache import FlightLocks, cache_key

KEY = cache_key("http://mirror.example/vmlinuz")


def test_one_holder_and_the_file_goes_with_it(tmp_path):
    locks = FlightLocks(str(tmp_path))
    fd = locks.try_lock(KEY)
    assert fd is not None
    assert locks.try_lock(KEY) is None            # another open file description: refused
    assert locks.held(KEY)
    assert os.listdir(locks.dir) == [f"{KEY}.lock"]
    locks.unlock(KEY, fd)
    assert os.listdir(locks.dir) == []            # one lock file per download in flight
    assert not locks.held(KEY)
    other = locks.try_lock(cache_key("http://mirror.example/initrd"))
    assert other is not None and locks.try_lock(KEY) is not None   # keys are independent


def test_a_file_removed_while_it_was_opened_is_not_a_lock(tmp_path):
    """The holder removes the file, then lets go: whoever opened it before must not hold a lock
    on the removed inode (two holders) but lock the new file."""
    import fcntl

    locks = FlightLocks(str(tmp_path))
    fd = locks.try_lock(KEY)
    assert fd is not None
    stale = os.open(os.path.join(locks.dir, f"{KEY}.lock"), os.O_RDWR)   # opened before the unlink
    locks.unlock(KEY, fd)
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)   # the old inode: lockable, and meaningless
    mine = locks.try_lock(KEY)                           # the path's new file
    assert mine is not None and locks.try_lock(KEY) is None
    os.close(stale)
    locks.unlock(KEY, mine)


def test_a_dead_holders_lock_is_released_and_its_leftover_removed(tmp_path):
    locks = FlightLocks(str(tmp_path))
    code = (f"import sys, time; sys.path.insert(0, {os.getcwd()!r}); "
            "from massboot.files.cache import FlightLocks; "
            f"fd = FlightLocks({str(tmp_path)!r}).try_lock({KEY!r}); print(fd, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip().isdigit()
        assert locks.try_lock(KEY) is None and locks.held(KEY)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.listdir(locks.dir) == [f"{KEY}.lock"]      # the crash left the file...
    assert not locks.held(KEY)                           # ...unlocked; held() removes it
    assert os.listdir(locks.dir) == []


def test_load_keeps_another_processs_download_in_flight(tmp_path):
    """A worker (re)starting indexes the shared directory: the .part of a download whose flight
    lock is held is another process's, not a crash's leftover."""
    from massboot.files.cache import CacheDir

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    part = cache_dir / f"{KEY}.0123456789ab.part"
    part.write_bytes(b"half a kernel")
    locks = FlightLocks(str(cache_dir))
    fd = locks.try_lock(KEY)
    assert fd is not None
    cache = CacheDir(str(cache_dir), 1 << 20, 60.0)
    cache.flight = FlightLocks(str(cache_dir))
    cache.load()
    assert part.exists()
    locks.unlock(KEY, fd)
    again = CacheDir(str(cache_dir), 1 << 20, 60.0)
    again.flight = FlightLocks(str(cache_dir))
    again.load()
    assert not part.exists()          # nobody downloads it any more: a leftover


def test_the_announced_length_of_a_part_bounded_and_gone_once_filed(tmp_path):
    """create_part writes the download's Content-Length next to its .part (processes sharing
    the directory): another process reads it for its clients' tsize, never more than the cache
    holds, never garbage; filing or discarding the part removes it, load() removes a leftover."""
    from massboot.files.cache import CacheDir

    cache = CacheDir(str(tmp_path / "cache"), max_bytes=10 << 20, revalidate_after=60)
    cache.flight = FlightLocks(cache.dir)
    cache.load()
    fd = cache.create_part(KEY, "a" * 12, 5 << 20)
    os.close(fd)
    assert cache.part_size(KEY, "a" * 12) == 5 << 20
    assert cache.part_size(KEY, "b" * 12) is None                 # another generation: none
    sidecar = cache.path(KEY, "a" * 12, "size")
    for planted in (b"11534336\n", b"-1\n", b"12abc\n", b"", b"9" * 40):   # > max_bytes, garbage
        with open(sidecar, "wb") as f:
            f.write(planted)
        assert cache.part_size(KEY, "a" * 12) is None, planted
    with open(sidecar, "wb") as f:
        f.write(b"3\n")
    with open(cache.path(KEY, "a" * 12, "part"), "wb") as f:
        f.write(b"abc")
    assert cache.add(KEY, "a" * 12, "http://mirror.example/vmlinuz", 3, None, None) is not None
    assert not os.path.exists(sidecar)                            # filed: no longer in flight
    os.close(cache.create_part(KEY, "c" * 12, 7))
    cache.discard_part(KEY, "c" * 12)
    import gevent
    gevent.sleep(0.1)                                             # discarded in the background
    assert not os.path.exists(cache.path(KEY, "c" * 12, "size"))
    os.close(cache.create_part(KEY, "d" * 12, 7))                 # a crash's leftover: removed
    again = CacheDir(cache.dir, max_bytes=10 << 20, revalidate_after=60)
    again.flight = FlightLocks(cache.dir)
    again.load()
    assert sorted(os.listdir(cache.dir)) == sorted(
        [f"{KEY}.{'a' * 12}.data", f"{KEY}.{'a' * 12}.json"])
    plain = CacheDir(str(tmp_path / "plain"), max_bytes=10 << 20, revalidate_after=60)
    plain.load()
    os.close(plain.create_part(KEY, "e" * 12, 7))                 # one process: nothing written
    assert os.listdir(plain.dir) == [f"{KEY}.{'e' * 12}.part"]


def test_shared_missing_expires_clears_and_stays_bounded(tmp_path):
    """The 404s shared by the workers: a marker holds for ttl seconds from its answer (a
    "future" one not at all), a download clears it, and pruning keeps the newest `limit`."""
    from massboot.files.cache import SharedMissing

    now = [1_000_000.0]
    shared = SharedMissing(str(tmp_path), ttl=30.0, limit=5, clock=lambda: now[0])
    assert shared.remaining(KEY) == 0
    shared.mark(KEY)
    now[0] += 10
    assert shared.remaining(KEY) == 20.0
    other = SharedMissing(str(tmp_path), ttl=30.0, limit=5, clock=lambda: now[0])
    assert other.remaining(KEY) == 20.0                      # another process sees it
    now[0] += 20
    assert other.remaining(KEY) == 0                         # expired, as Missing's entries
    shared.mark(KEY)
    other.clear(KEY)                                         # downloaded meanwhile
    assert shared.remaining(KEY) == 0
    shared.mark(KEY)
    os.utime(os.path.join(shared.dir, KEY), (now[0] + 3600, now[0] + 3600))
    assert shared.remaining(KEY) == 0                        # from the future: not trusted
    keys = [cache_key(f"http://mirror.example/{n}") for n in range(SharedMissing.PRUNE_EVERY)]
    fresh = SharedMissing(str(tmp_path), ttl=30.0, limit=5, clock=lambda: now[0])
    for key in keys:
        now[0] += 0.01
        fresh.mark(key)                                     # the 64th mark prunes
    left = set(os.listdir(fresh.dir))
    assert left == set(keys[-5:]), len(left)                 # the newest 5; the future one gone
