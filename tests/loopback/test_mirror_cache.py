"""The remote-root cache against a real HTTP mirror on 127.0.0.1: single flight, failures,
revalidation, eviction, a dead mirror, prefetch."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time

import gevent
import gevent.event
import pytest
import requests
from gevent.server import StreamServer

from massboot.events import EventBus, EventRecorder
from massboot.files import FileError, FileReason, FileStore

IP = "127.0.0.5"


class Mirror:
    """A tiny HTTP/1.1 server (one request per connection) with knobs for misbehaving.

    Attributes:
        files: path → body.
        requests: (path, lower-cased headers) of every request seen.
        hold_headers: when set to an unset Event, the answer waits for it before any byte.
        hold_at / gate: after sending ``hold_at`` body bytes, wait for ``gate``.
        cut_at: close the connection after this many body bytes (Content-Length says more).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hold_headers: gevent.event.Event | None = None
        self.hold_at: int | None = None
        self.gate = gevent.event.Event()
        self.cut_at: int | None = None
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.root = f"http://127.0.0.1:{self.server.server_port}/netboot"

    def gets(self, name: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == "/netboot/" + name]

    @staticmethod
    def etag(body: bytes) -> str:
        return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def _handle(self, sock: socket.socket, _addr) -> None:
        f = sock.makefile("rb")
        line = f.readline().decode("latin-1")
        if not line:
            return
        path = line.split()[1]
        headers = {}
        while (h := f.readline().decode("latin-1").strip()):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.requests.append((path, headers))
        if self.hold_headers is not None:
            self.hold_headers.wait()
        body = self.files.get(path.removeprefix("/netboot/"))
        if body is None:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        etag = self.etag(body)
        if headers.get("if-none-match") == etag:
            sock.sendall(f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n".encode())
            return
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nETag: {etag}\r\n"
                     "Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: close\r\n\r\n".encode())
        sent = 0
        step = 64 << 10
        while sent < len(body):
            if self.hold_at is not None and sent >= self.hold_at:
                self.gate.wait()
            if self.cut_at is not None and sent >= self.cut_at:
                return                      # StreamServer closes the connection: cut short
            piece = body[sent:sent + step]
            try:
                sock.sendall(piece)
            except OSError:                 # the client went away
                return
            sent += len(piece)

    def stop(self) -> None:
        self.gate.set()
        self.server.stop(timeout=1)


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.stop()


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(root: str, **kw) -> FileStore:
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        kw.setdefault("http_timeout", 5.0)
        kw.setdefault("session", requests.Session())
        store = FileStore(root, **kw)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def drain(src, block: int = 65464, reread_every: int = 0) -> bytes:
    out = bytearray()
    n = 0
    try:
        while True:
            chunk = src.read(len(out), block)
            out += chunk
            n += 1
            if reread_every and n % reread_every == 0 and len(out) >= 2 * block:
                back = len(out) - 2 * block
                assert src.read(back, block) == bytes(out[back:back + block])
            if len(chunk) < block:
                return bytes(out)
    finally:
        src.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.01)


def cache_files(store: FileStore, tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path / "cache"))


# ----------------------------------------------------------------------- single flight


def test_fifty_clients_one_upstream_get(mirror, make_store, tmp_path):
    body = random.Random(1).randbytes(8 << 20)
    mirror.files["big.img"] = body
    mirror.hold_at = 1 << 20          # everyone opens while the download is in flight
    events = EventBus()
    rec = EventRecorder()
    events.subscribe(rec)
    store = make_store(mirror.root, events=events)
    opened = []
    all_open = gevent.event.Event()

    def client(i: int) -> str:
        src = store.open("big.img", f"127.0.0.{10 + i}")
        assert src.size == len(body)
        opened.append(src)
        if len(opened) == 50:
            all_open.set()
        all_open.wait()
        return sha(drain(src, block=[1468, 8192, 65464][i % 3], reread_every=7))

    greenlets = [gevent.spawn(client, i) for i in range(50)]
    all_open.wait(30)
    mirror.gate.set()
    gevent.joinall(greenlets, timeout=120, raise_error=True)
    assert [g.value for g in greenlets] == [sha(body)] * 50
    assert len(mirror.gets("big.img")) == 1
    assert (store.misses, store.coalesced, store.hits) == (1, 49, 0)
    assert store.upstream_bytes == len(body)
    assert len(rec.of("cache.miss")) == 1 and len(rec.of("cache.coalesced")) == 49
    wait_until(lambda: store.cached_files == 1)
    upstream = rec.of("cache.upstream")
    assert len(upstream) == 1 and upstream[0].get("bytes") == len(body)
    # A later client is a plain hit: no new request.
    assert sha(drain(store.open("big.img", IP))) == sha(body)
    assert len(mirror.gets("big.img")) == 1
    assert store.hits == 1 and len(rec.of("cache.hit")) == 1
    wait_until(lambda: len(cache_files(store, tmp_path)) == 2)   # data + metadata, no temp file


def test_cut_mid_download_fails_every_reader_and_keeps_nothing(mirror, make_store, tmp_path):
    body = random.Random(2).randbytes(2 << 20)
    mirror.files["vmlinuz"] = body
    mirror.hold_at = 256 << 10
    mirror.cut_at = 1 << 20
    store = make_store(mirror.root)
    sources = [store.open("vmlinuz", IP) for _ in range(5)]
    assert all(s.size == len(body) for s in sources)

    def reader(src) -> int:
        with pytest.raises(FileError) as err:
            drain(src, block=1468)
        return err.value.reason

    greenlets = [gevent.spawn(reader, s) for s in sources]
    mirror.gate.set()
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    assert [g.value for g in greenlets] == [FileReason.UPSTREAM] * 5
    assert len(mirror.gets("vmlinuz")) == 1
    assert store.cached_files == 0
    wait_until(lambda: cache_files(store, tmp_path) == [])
    # The mirror is fixed: the next request downloads again, completely.
    mirror.cut_at = None
    mirror.hold_at = None
    assert sha(drain(store.open("vmlinuz", IP))) == sha(body)
    assert len(mirror.gets("vmlinuz")) == 2
    wait_until(lambda: store.cached_files == 1)


def test_open_after_cut_before_anyone_reads(mirror, make_store):
    body = random.Random(3).randbytes(300_000)
    mirror.files["f"] = body
    mirror.cut_at = 100_000
    store = make_store(mirror.root)
    src = store.open("f", IP)
    with pytest.raises(FileError) as err:
        src.read(200_000, 512)
    assert err.value.reason is FileReason.UPSTREAM
    src.close()


def test_404_is_not_found(mirror, make_store):
    store = make_store(mirror.root)
    with pytest.raises(FileError) as err:
        store.open("missing.efi", IP)
    assert err.value.reason is FileReason.NOT_FOUND
    assert len(mirror.gets("missing.efi")) == 1
    assert store.size("missing.efi", IP) is None


def test_names_are_quoted_into_the_url(mirror, make_store):
    mirror.files["dir/a%20b"] = b"quoted"
    store = make_store(mirror.root)
    assert drain(store.open("dir/a b", IP)) == b"quoted"


def test_filter_targets_on_a_remote_root(mirror, make_store, tmp_path):
    mirror.files["images/pxelinux.0"] = b"remote pxe"
    (tmp_path / "local.cfg").write_bytes(b"local menu")
    store = make_store(mirror.root, filters=[("pxelinux.0", "images/{filename}"),
                                             ("pxelinux.cfg/*", str(tmp_path / "local.cfg")),
                                             ("other", mirror.root + "/images/pxelinux.0")])
    assert drain(store.open("pxelinux.0", IP)) == b"remote pxe"
    assert drain(store.open("pxelinux.cfg/default", IP)) == b"local menu"
    assert drain(store.open("other", IP)) == b"remote pxe"
    assert len(mirror.gets("images/pxelinux.0")) == 1


# ----------------------------------------------------------------------- revalidation


def test_revalidation_304_serves_cached_copy(mirror, make_store):
    body = b"kernel v1" * 1000
    mirror.files["vmlinuz"] = body
    store = make_store(mirror.root, revalidate_after=0)
    assert drain(store.open("vmlinuz", IP)) == body
    wait_until(lambda: store.cached_files == 1)
    assert drain(store.open("vmlinuz", IP)) == body
    gets = mirror.gets("vmlinuz")
    assert len(gets) == 2
    assert "if-none-match" not in gets[0]
    assert gets[1]["if-none-match"] == Mirror.etag(body)
    assert gets[1]["if-modified-since"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert store.hits == 1 and store.misses == 1
    assert store.upstream_bytes == len(body)

    # Changed upstream: 200 replaces the cached copy.
    new = b"kernel v2" * 2000
    mirror.files["vmlinuz"] = new
    assert drain(store.open("vmlinuz", IP)) == new
    wait_until(lambda: store.cached_files == 1 and store.cached_bytes == len(new))
    assert drain(store.open("vmlinuz", IP)) == new

    # Mirror down: the stale copy is served anyway.
    mirror.stop()
    assert drain(store.open("vmlinuz", IP)) == new


def test_fresh_copy_needs_no_request_and_survives_restart(mirror, make_store, tmp_path):
    mirror.files["initrd"] = b"initrd" * 5000
    store = make_store(mirror.root)
    assert drain(store.open("initrd", IP)) == mirror.files["initrd"]
    wait_until(lambda: store.cached_files == 1)
    assert drain(store.open("initrd", IP)) == mirror.files["initrd"]
    assert len(mirror.gets("initrd")) == 1
    (tmp_path / "cache" / "0123456789abcdef0123456789abcdef.0123456789ab.part").write_bytes(b"junk")
    (tmp_path / "cache" / "unrelated.txt").write_bytes(b"not ours")
    restarted = make_store(mirror.root)
    assert restarted.cached_files == 1
    assert restarted.size("initrd", IP) == 30000
    assert drain(restarted.open("initrd", IP)) == mirror.files["initrd"]
    assert len(mirror.gets("initrd")) == 1
    assert restarted.hits == 1
    names = cache_files(restarted, tmp_path)
    assert "unrelated.txt" in names and not any(n.endswith(".part") for n in names)


def test_upstream_404_on_revalidation_forgets_the_copy(mirror, make_store):
    mirror.files["gone"] = b"soon gone"
    store = make_store(mirror.root, revalidate_after=0)
    assert drain(store.open("gone", IP)) == b"soon gone"
    wait_until(lambda: store.cached_files == 1)
    del mirror.files["gone"]
    with pytest.raises(FileError) as err:
        store.open("gone", IP)
    assert err.value.reason is FileReason.NOT_FOUND
    assert store.cached_files == 0


# ----------------------------------------------------------------------- eviction


def test_lru_eviction(mirror, make_store):
    for name in "abc":
        mirror.files[name] = name.encode() * 100_000
    store = make_store(mirror.root, cache_max_bytes=250_000)
    for name in ("a", "b"):
        assert drain(store.open(name, IP)) == mirror.files[name]
        wait_until(lambda: store.cached_bytes == {"a": 100_000, "b": 200_000}[name])  # noqa: B023
    assert drain(store.open("a", IP)) == mirror.files["a"]      # a is now more recent than b
    assert drain(store.open("c", IP)) == mirror.files["c"]
    wait_until(lambda: store.misses == 3 and store.cached_files == 2)
    assert store.cached_bytes == 200_000
    assert drain(store.open("a", IP)) == mirror.files["a"]
    assert drain(store.open("c", IP)) == mirror.files["c"]
    assert [len(mirror.gets(n)) for n in "abc"] == [1, 1, 1]
    assert drain(store.open("b", IP)) == mirror.files["b"]      # b was evicted: fetched again
    assert len(mirror.gets("b")) == 2


def test_file_being_read_is_never_evicted(mirror, make_store):
    for name in "ab":
        mirror.files[name] = random.Random(name).randbytes(100_000)
    store = make_store(mirror.root, cache_max_bytes=150_000)
    assert drain(store.open("a", IP)) == mirror.files["a"]
    wait_until(lambda: store.cached_files == 1)
    held = store.open("a", IP)                                  # pins a
    assert held.read(0, 1000) == mirror.files["a"][:1000]
    assert drain(store.open("b", IP)) == mirror.files["b"]
    wait_until(lambda: store.misses == 2 and store.cached_files == 1)
    assert drain(held) == mirror.files["a"]                      # still whole
    assert drain(store.open("a", IP)) == mirror.files["a"]
    assert len(mirror.gets("a")) == 1 and len(mirror.gets("b")) == 1


def test_file_larger_than_the_cache_is_served(mirror, make_store):
    mirror.files["huge"] = random.Random(5).randbytes(300_000)
    store = make_store(mirror.root, cache_max_bytes=100_000)
    assert drain(store.open("huge", IP)) == mirror.files["huge"]
    wait_until(lambda: store.cached_files == 0)


# ----------------------------------------------------------------------- dead mirror, prefetch


def test_dead_mirror_fails_within_the_timeout(make_store):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)                   # accepts connections in the kernel, never answers
    try:
        root = f"http://127.0.0.1:{listener.getsockname()[1]}/netboot"
        store = make_store(root, http_timeout=0.5)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(FileError) as err:
                store.open("pxelinux.0", IP)
            assert err.value.reason is FileReason.UPSTREAM
            assert time.monotonic() - started < 5        # about http_timeout, never a hang
        assert store.size("pxelinux.0", IP) is None
    finally:
        listener.close()


def test_refused_connection_fails_fast(make_store):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                        # nothing listens there now
    store = make_store(f"http://127.0.0.1:{port}/x", http_timeout=5)
    with pytest.raises(FileError) as err:
        store.open("a", IP)
    assert err.value.reason is FileReason.UPSTREAM


def test_size_prefetch_never_waits(mirror, make_store):
    body = random.Random(6).randbytes(500_000)
    mirror.files["grubx64.efi"] = body
    mirror.hold_headers = gevent.event.Event()
    store = make_store(mirror.root)
    assert store.size("grubx64.efi", IP) is None            # returns while the mirror is silent
    assert store.size("grubx64.efi", IP) is None            # still in flight: no second request
    wait_until(lambda: len(mirror.gets("grubx64.efi")) == 1)
    mirror.hold_headers.set()
    wait_until(lambda: store.size("grubx64.efi", IP) == len(body))
    assert drain(store.open("grubx64.efi", IP)) == body
    assert len(mirror.gets("grubx64.efi")) == 1
    assert store.misses == 1 and store.coalesced + store.hits == 1


def test_close_releases_waiting_readers(mirror, make_store):
    mirror.files["slow"] = random.Random(8).randbytes(1 << 20)
    mirror.hold_at = 64 << 10
    store = make_store(mirror.root)
    src = store.open("slow", IP)
    reader = gevent.spawn(lambda: drain(src))
    wait_until(lambda: store.upstream_bytes > 0)
    store.close()
    with pytest.raises(FileError):
        reader.get(timeout=10)
    with pytest.raises(FileError):
        store.open("slow", IP)


def test_upstream_404_is_remembered_for_a_while(mirror, make_store):
    """PXELINUX's config probes mostly miss: the mirror is asked once per name and period."""
    store = make_store(mirror.root, revalidate_after=0.5)
    for _ in range(20):
        with pytest.raises(FileError) as err:
            store.open("pxelinux.cfg/01-52-54-00-12-34-56", IP)
        assert err.value.reason is FileReason.NOT_FOUND
    assert len(mirror.gets("pxelinux.cfg/01-52-54-00-12-34-56")) == 1
    assert store.size("pxelinux.cfg/01-52-54-00-12-34-56", IP) is None     # no prefetch either
    mirror.files["pxelinux.cfg/01-52-54-00-12-34-56"] = b"default local\n"
    time.sleep(0.6)                                    # the 404 is believed for revalidate_after
    assert drain(store.open("pxelinux.cfg/01-52-54-00-12-34-56", IP)) == b"default local\n"
