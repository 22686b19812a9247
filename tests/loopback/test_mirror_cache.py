"""The remote-root cache against a real HTTP mirror on 127.0.0.1: single flight, failures,
revalidation, eviction, a dead mirror, prefetch; a misbehaving mirror (tests/mirror.py) and a
failing cache disk, seen by a TFTP client."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
import random
import socket
import stat
import subprocess
import time

import gevent
import gevent.event
import pytest
import requests
from prometheus_client import CollectorRegistry

from massboot.config import ConfigError, MetricsConfig
from massboot.events import EventBus, EventRecorder
from massboot.files import ClientInfo, FileError, FileReason, FileStore
from massboot.metrics import Metrics
from massboot.tftp.packet import Data, Error, OptionAck
from massboot.tftp.server import TftpServer
from tests.conftest import fast_path_option, require, require_root
from tests.loopback.test_tftp_server import Client
from tests.mirror import Mirror

IP = "127.0.0.5"


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
    """a (being read) and b do not fit together: b waits for a's reader, then is refused after
    http_timeout; once a's reader is done, b evicts it. Before issue #11, b was downloaded and
    kept beside a, 200 KB in a cache bounded at 150 KB."""
    for name in "ab":
        mirror.files[name] = random.Random(name).randbytes(100_000)
    store = make_store(mirror.root, cache_max_bytes=150_000, http_timeout=0.5)
    assert drain(store.open("a", IP)) == mirror.files["a"]
    wait_until(lambda: store.cached_files == 1)
    held = store.open("a", IP)                                  # pins a
    assert held.read(0, 1000) == mirror.files["a"][:1000]
    with pytest.raises(FileError) as err:
        store.open("b", IP)
    assert err.value.reason is FileReason.UPSTREAM and "cache full" in err.value.message
    assert store.refused == {"downloads": 0, "space": 1} and store.used_bytes == 100_000
    waiting = gevent.spawn(lambda: drain(store.open("b", IP)))
    wait_until(lambda: len(mirror.gets("b")) == 2)              # b's download waits for space
    assert drain(held) == mirror.files["a"]                      # still whole; closing frees a
    assert waiting.get(timeout=10) == mirror.files["b"]
    wait_until(lambda: store.cached_files == 1 and store.cached_bytes == 100_000)
    assert store.used_bytes == 100_000
    assert len(mirror.gets("a")) == 1


def test_file_larger_than_the_cache_is_refused(mirror, make_store):
    """A file that can never fit in cache_size is refused at its headers (counted), no longer
    streamed past the bound."""
    mirror.files["huge"] = random.Random(5).randbytes(300_000)
    store = make_store(mirror.root, cache_max_bytes=100_000)
    with pytest.raises(FileError) as err:
        store.open("huge", IP)
    assert err.value.message == "upstream failed: larger than the cache"
    assert store.refused["space"] == 1 and store.upstream_bytes == 0
    wait_until(lambda: store.downloads_active == 0)
    assert store.used_bytes == 0 and store.cached_files == 0


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


# ----------------------------------------------------------------------- a misbehaving mirror
#
# Each test fetches through massboot's TFTP server and checks what the client got (the sha256 of
# the file, or the TFTP error) and the reason the events and metrics give.


class Served:
    """massboot's TFTP side on a mirror root: the file store, the TFTP server, the metrics."""

    def __init__(self, root: str, cache_dir: str, http_timeout: float, fast_path: str = "auto",
                 **kw) -> None:
        self.bus = EventBus()
        self.events = EventRecorder()
        self.bus.subscribe(self.events)
        self.store = FileStore(root, cache_dir=cache_dir, http_timeout=http_timeout, events=self.bus,
                               session=requests.Session(), **kw)
        # every test client sends from 127.0.0.1: no per-address cap ([tftpd] max_per_client)
        self.tftp = TftpServer("127.0.0.1", 0, self.store, self.bus, timeout_min=0.5, timeout_max=2.0,
                               max_per_client=1000, fast_path=fast_path)
        self.tftp.start()
        self.metrics = Metrics(MetricsConfig(port=0), self.bus, registry=CollectorRegistry(),
                               tftp=self.tftp, cache=self.store)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def get(self, name: str) -> tuple[bytes, Error | None, int | None]:
        """A lock-step TFTP download (blksize 1428, tsize asked): (bytes, ERROR or None, tsize)."""
        client = Client(self.tftp.port)
        try:
            client.rrq(name, blksize=1428, tsize=0)
            packet = client.recv_from_tid()
            tsize = None
            if isinstance(packet, OptionAck):
                tsize = int(packet.options["tsize"]) if "tsize" in packet.options else None
                client.ack(0)
                packet = client.recv_from_tid()
            received = bytearray()
            expected = 1
            while True:
                if isinstance(packet, Error):
                    return bytes(received), packet, tsize
                assert isinstance(packet, Data), packet
                if packet.block == expected % 65536:
                    received += packet.payload
                    expected += 1
                    client.ack(packet.block)
                    if len(packet.payload) < 1428:
                        return bytes(received), None, tsize
                packet = client.recv_from_tid()
        finally:
            client.close()

    def close(self) -> None:
        self.tftp.stop(timeout=0)
        self.store.close()


@pytest.fixture
def serve(tmp_path, tftp_data_path):
    """massboot's TFTP side, once on each data path (tests/conftest.py ``tftp_data_path``)."""
    made = []

    def make(root: str, cache_dir: str | None = None, http_timeout: float = 5.0, **kw) -> Served:
        served = Served(root, cache_dir or str(tmp_path / "cache"), http_timeout,
                        fast_path_option(tftp_data_path), **kw)
        made.append(served)
        return served

    yield make
    for served in made:
        served.close()


BODY = random.Random(16).randbytes(700_000)


def release_when_started(mirror: Mirror, served: Served) -> None:
    """Hold the body after 64 KiB until the transfer has started: a failure further on then
    happens mid-transfer (ERROR after DATA, ``tftp.fail``), never before the file is open."""
    mirror.hold_at = 64 << 10

    def release() -> None:
        wait_until(lambda: served.events.of("tftp.start"))
        mirror.hold_at = None
        mirror.gate.set()

    gevent.spawn(release)


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_chunked_or_close_delimited_body_is_served_and_cached(mirror, serve, framing):
    """Transfer-Encoding: chunked, or no length at all (the body ends at the close): both are
    whole files (RFC 9112 section 6.3); the size is unknown until the end, so no tsize at first."""
    mirror.files["vmlinuz"] = BODY
    mirror.framing = framing
    served = serve(mirror.root)
    data, error, tsize = served.get("vmlinuz")
    assert error is None and sha(data) == sha(BODY) and tsize is None
    wait_until(lambda: served.store.cached_files == 1)
    data, error, tsize = served.get("vmlinuz")                  # from the cache: size known now
    assert error is None and sha(data) == sha(BODY) and tsize == len(BODY)
    assert len(mirror.gets("vmlinuz")) == 1
    assert served.value("massboot_cache_hits_total") == 1 and served.value("massboot_cache_misses_total") == 1
    wait_until(lambda: served.value("massboot_tftp_transfers_completed_total") == 2)   # the last ACK


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_content_encoding_is_stored_as_sent(mirror, serve, framing):
    """massboot asks for identity; a mirror that gzips anyway is stored and served exactly as
    sent, as curl would store it (before: refused with error 0)."""
    mirror.files["initrd.img"] = BODY
    mirror.gzip = True
    mirror.framing = framing
    served = serve(mirror.root)
    wire = gzip.compress(BODY, mtime=0)
    data, error, _ = served.get("initrd.img")
    assert error is None and sha(data) == sha(wire)
    assert mirror.gets("initrd.img")[0]["accept-encoding"] == "identity"
    wait_until(lambda: served.store.cached_files == 1 and served.store.cached_bytes == len(wire))
    data, error, tsize = served.get("initrd.img")              # from the cache: the same bytes
    assert error is None and sha(data) == sha(wire) and tsize == len(wire)


def test_gz_file_labelled_gzip_is_served_byte_exact(mirror, serve):
    """Apache's ``AddEncoding x-gzip .gz``: an initrd.gz sent as is, labelled
    ``Content-Encoding: gzip``. The TFTP client gets the .gz file, byte for byte."""
    initrd_gz = gzip.compress(BODY, mtime=0)
    mirror.files["initrd.gz"] = initrd_gz
    mirror.encoding = "gzip"
    served = serve(mirror.root)
    data, error, tsize = served.get("initrd.gz")
    assert error is None and hashlib.sha256(data).hexdigest() == hashlib.sha256(initrd_gz).hexdigest()
    assert tsize == len(initrd_gz)
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 0


@pytest.mark.parametrize(("status", "code", "text", "reason"), [
    (403, 2, "Access violation", "access"),
    (503, 0, "failed: HTTP 503", "error"),
])
def test_error_status_becomes_a_tftp_error(mirror, serve, status, code, text, reason):
    mirror.files["pxelinux.0"] = BODY
    mirror.status["pxelinux.0"] = status
    served = serve(mirror.root)
    data, error, _ = served.get("pxelinux.0")
    assert data == b"" and error is not None and error.code == code and text in error.message
    assert [e.get("reason") for e in served.events.of("tftp.denied")] == [reason]
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 1
    assert served.value("massboot_tftp_requests_denied_total", reason=reason) == 1
    assert served.store.cached_files == 0
    del mirror.status["pxelinux.0"]                              # an error is not remembered
    data, error, _ = served.get("pxelinux.0")
    assert error is None and sha(data) == sha(BODY)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_cut_short_fails_the_transfer_and_is_not_cached(mirror, serve, tmp_path, framing):
    """Content-Length says more, or the last chunk never comes: the client gets ERROR 0 after
    the bytes that did come, and nothing is kept."""
    mirror.files["vmlinuz"] = BODY
    mirror.framing = framing
    mirror.cut_at = 300_000
    served = serve(mirror.root)
    release_when_started(mirror, served)
    data, error, _ = served.get("vmlinuz")
    assert error is not None and error.code == 0 and "connection broken" in error.message
    assert len(data) < 300_000 and BODY.startswith(data)
    wait_until(lambda: served.events.of("tftp.fail"))             # reported after the ERROR is sent
    assert [e.get("reason") for e in served.events.of("tftp.fail")] == ["read_error"]
    assert served.value("massboot_tftp_transfers_failed_total", reason="read_error") == 1
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 1
    wait_until(lambda: cache_files(served.store, tmp_path) == [])
    mirror.cut_at = None
    data, error, _ = served.get("vmlinuz")
    assert error is None and sha(data) == sha(BODY) and len(mirror.gets("vmlinuz")) == 2


def test_stall_mid_body_fails_within_http_timeout(mirror, serve, tmp_path):
    """The mirror stops sending mid-body and keeps the connection open: an error after about
    http_timeout, never a hang, never a cached copy."""
    mirror.files["initrd.img"] = BODY
    mirror.hold_at = 300_000                   # the gate stays closed until the mirror is "fixed"
    served = serve(mirror.root, http_timeout=1.0)
    started = time.monotonic()
    data, error, tsize = served.get("initrd.img")
    elapsed = time.monotonic() - started
    assert error is not None and error.code == 0 and "timed out" in error.message
    assert tsize == len(BODY) and len(data) <= 300_000 and BODY.startswith(data)
    assert elapsed < 8, f"{elapsed:.1f} s for a 1 s http_timeout"  # about 1 s; a hang would be 5+
    wait_until(lambda: served.events.of("tftp.fail"))             # reported after the ERROR is sent
    assert [e.get("reason") for e in served.events.of("tftp.fail")] == ["read_error"]
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 1
    assert served.store.cached_files == 0
    wait_until(lambda: cache_files(served.store, tmp_path) == [])
    mirror.hold_at = None
    data, error, _ = served.get("initrd.img")
    assert error is None and sha(data) == sha(BODY)


def test_slow_but_steady_drip_succeeds(mirror, serve):
    """16 KiB every 0.1 s: the whole body takes longer than http_timeout, no gap does."""
    mirror.files["initrd.img"] = BODY[:400_000]
    mirror.drip = (16 << 10, 0.1)
    served = serve(mirror.root, http_timeout=1.0)
    started = time.monotonic()
    data, error, _ = served.get("initrd.img")
    assert error is None and sha(data) == sha(BODY[:400_000])
    assert time.monotonic() - started > 1.0          # longer than http_timeout in all
    wait_until(lambda: served.store.cached_files == 1)
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 0


# ----------------------------------------------------------------------- a failing cache disk


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs for the cache directory (root only: mount)."""
    require_root()
    path = tmp_path / "small"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def open_in(directory) -> list[str]:
    """This process's open file descriptors that point into *directory*."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_cache_disk_full_fails_cleanly_and_recovers(mirror, serve, small_disk):
    mirror.files["big"] = BODY                    # 700 KB into 256 KiB: ENOSPC mid-download
    mirror.files["small"] = BODY[:100_000]
    served = serve(mirror.root, cache_dir=str(small_disk / "cache"))
    release_when_started(mirror, served)
    data, error, _ = served.get("big")
    assert error is not None and error.code == 0 and "No space left on device" in error.message
    assert BODY.startswith(data)
    wait_until(lambda: served.events.of("tftp.fail"))             # reported after the ERROR is sent
    assert [e.get("reason") for e in served.events.of("tftp.fail")] == ["read_error"]
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 1
    wait_until(lambda: os.listdir(small_disk / "cache") == [])   # the partial file is removed
    assert open_in(small_disk) == []                               # and its descriptor closed
    data, error, _ = served.get("small")                           # what fits is still served
    assert error is None and sha(data) == sha(BODY[:100_000])
    wait_until(lambda: served.store.cached_files == 1)


def test_read_only_cache_dir_is_a_clear_error(mirror, serve, small_disk):
    mirror.files["vmlinuz"] = BODY
    (small_disk / "cache").mkdir()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    require(remount.returncode == 0, f"cannot remount read-only: {remount.stderr.strip()}")
    served = serve(mirror.root, cache_dir=str(small_disk / "cache"))
    data, error, _ = served.get("vmlinuz")
    assert data == b"" and error is not None and error.code == 0
    assert "Read-only file system" in error.message
    assert [e.get("reason") for e in served.events.of("tftp.denied")] == ["error"]
    assert served.value("massboot_cache_upstream_failures_total", reason="error") == 1
    assert served.store.cached_files == 0


# ----------------------------------------------------------------------- a corrupt cached copy


def cached_path(tmp_path, kind: str):
    (name,) = [n for n in os.listdir(tmp_path / "cache") if n.endswith("." + kind)]
    return tmp_path / "cache" / name


@pytest.mark.parametrize("damage", ["truncate data", "delete data"])
def test_damaged_copy_while_running_is_fetched_again(mirror, serve, tmp_path, damage):
    mirror.files["vmlinuz"] = BODY
    served = serve(mirror.root)
    assert sha(served.get("vmlinuz")[0]) == sha(BODY)
    wait_until(lambda: served.store.cached_files == 1)
    data_file = cached_path(tmp_path, "data")
    if damage == "truncate data":
        os.truncate(data_file, 123_456)
    else:
        data_file.unlink()
    data, error, tsize = served.get("vmlinuz")
    assert error is None and sha(data) == sha(BODY) and tsize == len(BODY)   # never the short copy
    assert len(mirror.gets("vmlinuz")) == 2
    assert served.value("massboot_cache_misses_total") == 2
    wait_until(lambda: served.store.cached_files == 1 and served.store.cached_bytes == len(BODY))


@pytest.mark.parametrize("damage", ["truncate data", "bad json", "empty json"])
def test_damaged_copy_at_restart_is_fetched_again(mirror, serve, tmp_path, damage):
    mirror.files["vmlinuz"] = BODY
    first = serve(mirror.root)
    assert sha(first.get("vmlinuz")[0]) == sha(BODY)
    wait_until(lambda: first.store.cached_files == 1)
    first.close()
    if damage == "truncate data":
        os.truncate(cached_path(tmp_path, "data"), 1000)
    else:
        cached_path(tmp_path, "json").write_text("{not json" if damage == "bad json" else "")
    restarted = serve(mirror.root)
    assert restarted.store.cached_files == 0                          # the damaged copy is dropped
    data, error, _ = restarted.get("vmlinuz")
    assert error is None and sha(data) == sha(BODY)
    assert len(mirror.gets("vmlinuz")) == 2 and restarted.value("massboot_cache_misses_total") == 1


# ----------------------------------------------------------------------- issue #11: the attacks


def dir_bytes(path) -> int:
    """Bytes of file contents in a cache directory: complete files and downloads (the metadata
    files, a few hundred bytes each, are not counted by cache_size)."""
    total = 0
    for entry in os.scandir(path):
        if entry.name.endswith((".data", ".part")):
            try:
                total += entry.stat().st_size
            except OSError:       # removed meanwhile
                pass
    return total


@pytest.mark.parametrize("names", [("x", "./x", "././x", ".//x", "x/", "./x//")])
def test_one_download_whatever_the_spelling(mirror, serve, names):
    """Before: each spelling was its own cache key, one full download and one copy each."""
    mirror.files["x"] = BODY
    served = serve(mirror.root)
    for name in names:
        data, error, _ = served.get(name)
        assert error is None and sha(data) == sha(BODY), name
        wait_until(lambda: served.store.downloads_active == 0)
    assert len(mirror.gets("x")) == 1 and len(mirror.requests) == 1
    assert served.store.cached_files == 1 and served.store.upstream_bytes == len(BODY)


def test_unacknowledged_requests_stay_within_the_bounds(mirror, serve, tmp_path):
    """20 RRQs (one datagram each, never acknowledged) for distinct 2 MiB files, a 16 MiB
    cache. Before issue #11: 40 MiB pulled from the mirror and 40 MiB on disk. Now: disk use
    (sampled at every event and every 5 ms) never over cache_size, at most max_downloads
    downloads at once, upstream bytes within cache_size; the rest is refused, counted."""
    size, count, bound, max_downloads = 2 << 20, 20, 16 << 20, 8
    for i in range(count):
        mirror.files[f"big{i}"] = random.Random(i).randbytes(size)
    served = serve(mirror.root, http_timeout=1.0, cache_max_bytes=bound, max_downloads=max_downloads)
    cache = tmp_path / "cache"
    peak = {"disk": 0, "used": 0, "downloads": 0}

    def sample(_event=None) -> None:
        peak["disk"] = max(peak["disk"], dir_bytes(cache))
        peak["used"] = max(peak["used"], served.store.used_bytes)
        peak["downloads"] = max(peak["downloads"], served.store.downloads_active)

    served.bus.subscribe(sample)
    sampler = gevent.spawn(lambda: [(sample(), gevent.sleep(0.005)) for _ in iter(int, 1)])
    clients = [Client(served.tftp.port) for _ in range(count)]
    try:
        for i, client in enumerate(clients):
            client.rrq(f"big{i}")                   # and never a word more
        answered = lambda: len(served.events.of("tftp.start")) + len(served.events.of("tftp.denied"))  # noqa: E731
        wait_until(lambda: answered() == count, timeout=60)
        wait_until(lambda: served.store.downloads_active == 0, timeout=60)
    finally:
        sampler.kill()
        for client in clients:
            client.close()
    sample()
    refused = served.store.refused
    print(f"\nupstream bytes {served.store.upstream_bytes} (mirror sent {mirror.sent}), "
          f"peak disk {peak['disk']}, peak used {peak['used']}, peak downloads "
          f"{peak['downloads']} (mirror saw {mirror.peak}), refused {refused}")
    assert peak["disk"] <= bound and peak["used"] <= bound
    assert peak["downloads"] <= max_downloads and mirror.peak <= max_downloads
    assert served.store.upstream_bytes <= bound and mirror.sent <= bound
    assert len(served.events.of("tftp.denied")) == refused["space"] + refused["downloads"] > 0
    assert served.value("massboot_cache_refused_total", reason="space") == refused["space"]
    assert served.value("massboot_cache_refused_total", reason="downloads") == refused["downloads"]


def test_future_metadata_is_revalidated(mirror, serve, tmp_path):
    """A ``fetched`` time in the future used to make a copy fresh for ever: now it is stale at
    once, and the mirror is asked before it is served."""
    mirror.files["vmlinuz"] = BODY
    first = serve(mirror.root)
    assert sha(first.get("vmlinuz")[0]) == sha(BODY)
    wait_until(lambda: first.store.cached_files == 1)
    first.close()
    meta_file = cached_path(tmp_path, "json")
    meta = json.loads(meta_file.read_text())
    meta["fetched"] = time.time() + 10 * 365 * 86400
    meta_file.write_text(json.dumps(meta))
    new = BODY[::-1]
    mirror.files["vmlinuz"] = new
    restarted = serve(mirror.root)
    data, error, _ = restarted.get("vmlinuz")
    assert error is None and sha(data) == sha(new)
    assert len(mirror.gets("vmlinuz")) == 2 and "if-none-match" in mirror.gets("vmlinuz")[1]


def test_group_writable_cache_dir_is_refused(mirror, tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(ConfigError) as err:
        FileStore(mirror.root, cache_dir=str(cache))
    assert (err.value.section, err.value.option, err.value.value) == ("tftpd", "cache_dir", str(cache))
    assert "chmod 0700" in str(err.value)


def test_cache_dir_of_another_user_is_refused(mirror, tmp_path):
    require_root()
    cache = tmp_path / "planted"
    cache.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError) as err:
        FileStore(mirror.root, cache_dir=str(cache))
    assert "owned by uid" in str(err.value) and "chown" in str(err.value)
    assert mirror.requests == []


def test_new_cache_dir_is_private_and_default_is_in_the_base_dir(mirror, tmp_path):
    store = FileStore(mirror.root, base_dir=str(tmp_path))
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    finally:
        store.close()


def test_local_root_with_url_filter_creates_its_cache(mirror, tmp_path):
    """Before: the cache directory was created for remote roots only, so a URL filter target
    of a local root failed (UPSTREAM) when cache_dir did not exist."""
    mirror.files["images/pxelinux.0"] = b"remote pxe"
    root = tmp_path / "root"
    root.mkdir()
    store = FileStore(str(root), [("pxelinux.0", mirror.root + "/images/{filename}")],
                      cache_dir=str(tmp_path / "new" / "cache"))
    try:
        assert drain(store.open("pxelinux.0", IP)) == b"remote pxe"
    finally:
        store.close()


@pytest.mark.parametrize("name", ["%2e%2e/%2e%2e/etc/passwd", "x?x=1", "a%3Fb=1", "x#y"])
def test_client_values_never_reach_the_mirror(mirror, serve, tmp_path, name):
    root = tmp_path / "root"
    root.mkdir()
    served = serve(str(root), filters=[("*", mirror.root + "/{filename}")])
    data, error, _ = served.get(name)
    assert data == b"" and error is not None and error.code == 2
    assert mirror.requests == []
    assert served.value("massboot_tftp_requests_denied_total", reason="access") == 1


def test_acl_file_value_is_refused(serve, tmp_path):
    """deploy/http-acl.ini's ``next.cfg = {file}`` and an ACL answer ``File: /etc/passwd``:
    before, /etc/passwd was served."""
    root = tmp_path / "root"
    root.mkdir()
    served = serve(str(root), filters=[("next.cfg", "{file}")],
                   client_lookup=lambda ip: ClientInfo(ip, file="/etc/passwd"))
    data, error, _ = served.get("next.cfg")
    assert data == b"" and error is not None and error.code == 2


def test_non_utf8_name_is_one_error_without_traceback(mirror, serve, caplog):
    """Before: a traceback per request (the name could not be quoted into a URL)."""
    mirror.files["%FF%FE.bin"] = b"latin"      # the mirror's name for those bytes
    served = serve(mirror.root)
    data, error, _ = served.get("\udcff\udcfe.bin")
    assert error is None and data == b"latin"
    data, error, _ = served.get("\udcff.missing")
    assert error is not None and error.code == 1
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("trouble", ["status", "stall", "cut"])
def test_client_error_text_has_no_url(mirror, serve, caplog, trouble):
    mirror.files["vmlinuz"] = BODY
    if trouble == "status":
        mirror.status["vmlinuz"] = 503
    elif trouble == "stall":
        mirror.hold_at = 100_000
    else:
        mirror.cut_at = 100_000
    served = serve(mirror.root, http_timeout=0.5)
    _, error, _ = served.get("vmlinuz")
    assert error is not None and error.message.startswith("upstream failed")
    port = str(mirror.server.server_port)
    assert "http" not in error.message and port not in error.message
    for event in served.events.of("tftp.denied"):
        assert port not in event.get("message")
    assert any(mirror.root in r.getMessage() for r in caplog.records)    # the log keeps it


def test_downloads_beyond_max_downloads_wait_then_are_refused(mirror, make_store):
    """Two slots, two slow but steady downloads: a third request waits http_timeout for a slot
    then is refused; a size() prefetch never waits; once the slots free, requests proceed."""
    for name in ("a", "b", "c"):
        mirror.files[name] = name.encode() * 100_000
    mirror.drip = (1000, 0.05)                       # 5 s each, never silent for 0.5 s
    store = make_store(mirror.root, max_downloads=2, http_timeout=0.5)
    assert store.size("a", IP) is None and store.size("b", IP) is None     # two prefetches
    assert store.downloads_active == 2
    assert store.size("c", IP) is None and store.refused["downloads"] == 1   # not started
    waiter = gevent.spawn(store.open, "c", IP)
    wait_until(lambda: waiter.dead)
    assert isinstance(waiter.exception, FileError) and "too many downloads" in waiter.exception.message
    assert store.refused["downloads"] == 2 and mirror.gets("c") == []
    mirror.drip = None
    wait_until(lambda: store.downloads_active == 0)
    assert drain(store.open("c", IP)) == b"c" * 100_000
    assert mirror.peak <= 2


def test_shared_cache_size_and_tsize_of_another_process_download(mirror, make_store):
    """Two stores sharing one cache directory, as two TFTP worker processes do (flight locks
    are per open file, so they exclude each other in one process too): while the first
    downloads a file held at 1 MiB, the second's size() (DHCP option 13, the parent's
    prefetch) and its stream source (tsize) give the mirror's Content-Length, and it reads
    the whole file; the mirror is asked once."""
    body = os.urandom(3 << 20)
    mirror.files["vmlinuz"] = body
    mirror.hold_at = 1 << 20
    first = make_store(mirror.root, shared=True)
    second = make_store(mirror.root, shared=True)
    src = first.open("vmlinuz", "10.0.0.1")
    try:
        assert src.size == len(body)
        deadline = time.monotonic() + 10
        while mirror.sent < 1 << 20:
            assert time.monotonic() < deadline
            gevent.sleep(0.05)
        assert second.size("vmlinuz", "10.0.0.2") == len(body)     # no prefetch of its own
        other = second.open("vmlinuz", "10.0.0.2")
        try:
            assert other.size == len(body)
            reader = gevent.spawn(drain, other)
            gevent.sleep(0.3)
            mirror.gate.set()
            assert reader.get(timeout=20) == body
        finally:
            other.close()
        assert drain(src) == body
    finally:
        src.close()
    assert len(mirror.gets("vmlinuz")) == 1, mirror.requests
