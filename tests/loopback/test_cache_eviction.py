"""The remote-root cache keeps to ``cache_size`` (README ``[tftpd]``: "least recently used files
go first"), seen from outside: files fetched over TFTP from massboot built by ``Services``, the
cache directory on disk, the exporter's cache gauges and the GETs a real HTTP mirror receives.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
import tftpy
from prometheus_client import CollectorRegistry

from massboot import config as cfg
from massboot.cli import Services
from tests.loopback.test_metrics import Mirror as MetricsMirror

HOST = "127.0.0.1"
SIZE = 100_000
BOUND = 250 << 10          # cache_size = 250K: two files fit, three do not
FILES = {name: random.Random(name).randbytes(SIZE) for name in ("a.img", "b.img", "c.img")}

CONFIG = """
[logger]
type = none

[tftpd]
cache_size = 250K
cache_dir = {cache}
root = {mirror}
address = 127.0.0.1
port = 0
timeout = 0.3

[metrics]
address = 127.0.0.1
port = 0
"""


class Mirror(MetricsMirror):
    """The HTTP mirror behind ``[tftpd] root``, counting the GETs per file."""

    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()
        super().__init__(FILES)

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        self.gets[environ["PATH_INFO"].removeprefix("/netboot/")] += 1
        return super()._app(environ, start_response)


class Cache:
    def __init__(self, tmp_path: Path) -> None:
        self.mirror = Mirror()
        self.dir = tmp_path / "cache"
        self.registry = CollectorRegistry()
        config = cfg.loads(CONFIG.format(mirror=self.mirror.root, cache=self.dir),
                           path=str(tmp_path / "massboot.ini"))
        self.services = Services(config, run_dhcp=False, registry=self.registry)
        self.services.start()
        assert self.services.tftp is not None

    def close(self) -> None:
        self.services.stop(grace=1)
        self.mirror.close()

    def get(self, name: str) -> bytes:
        out = io.BytesIO()
        client = tftpy.TftpClient(HOST, self.services.tftp.port,  # type: ignore[union-attr]
                                  options={"blksize": 1024})
        client.download(name, out, timeout=2, retries=3)
        return out.getvalue()

    def gauge(self, name: str) -> float:
        value = self.registry.get_sample_value(name)
        assert value is not None, name
        return value

    def on_disk(self) -> list[bytes]:
        """The contents of every regular file in the cache directory that holds a whole file."""
        found = []
        for entry in os.scandir(self.dir):
            if entry.is_file() and entry.stat().st_size >= SIZE:
                found.append(Path(entry.path).read_bytes())
        return found

    def disk_bytes(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.dir) if e.is_file())

    def settle(self, files: int) -> None:
        """Wait until the cache holds *files* complete files (filing follows the transfer)."""
        deadline = time.monotonic() + 10
        while self.gauge("massboot_cache_stored_files") != files:
            assert time.monotonic() < deadline, f"cache never settled at {files} files"
            gevent.sleep(0.01)

    def within_bound(self) -> None:
        assert self.gauge("massboot_cache_stored_bytes") <= BOUND
        assert self.disk_bytes() <= BOUND           # the data files and their small metadata


@pytest.fixture
def cache(tmp_path) -> Iterator[Cache]:
    c = Cache(tmp_path)
    yield c
    c.close()


def test_least_recently_used_file_leaves_the_disk_and_comes_back_from_the_mirror(cache: Cache) -> None:
    for name in ("a.img", "b.img"):
        assert cache.get(name) == FILES[name]
    cache.settle(2)
    assert cache.gauge("massboot_cache_stored_bytes") == 2 * SIZE
    assert sorted(cache.on_disk()) == sorted([FILES["a.img"], FILES["b.img"]])
    cache.within_bound()

    assert cache.get("a.img") == FILES["a.img"]      # a hit: a is now more recent than b
    assert cache.mirror.gets["a.img"] == 1
    assert cache.get("c.img") == FILES["c.img"]      # does not fit: b, the least recent, goes
    cache.settle(2)
    cache.within_bound()
    assert cache.gauge("massboot_cache_stored_bytes") == 2 * SIZE
    on_disk = cache.on_disk()
    assert FILES["b.img"] not in on_disk
    assert sorted(on_disk) == sorted([FILES["a.img"], FILES["c.img"]])
    assert cache.mirror.gets == {"a.img": 1, "b.img": 1, "c.img": 1}

    # b again: downloaded anew, and now a is the least recently used
    assert cache.get("b.img") == FILES["b.img"]
    assert cache.mirror.gets["b.img"] == 2
    cache.settle(2)
    cache.within_bound()
    on_disk = cache.on_disk()
    assert FILES["a.img"] not in on_disk
    assert sorted(on_disk) == sorted([FILES["b.img"], FILES["c.img"]])
    # the files still cached are served without asking the mirror
    assert cache.get("c.img") == FILES["c.img"]
    assert cache.get("b.img") == FILES["b.img"]
    assert cache.mirror.gets == {"a.img": 1, "b.img": 2, "c.img": 1}
