"""The HTTP file server (-H) on 127.0.0.1: GET/HEAD/Range/keep-alive, 403/404/401, traversal,
one upstream download for TFTP and HTTP clients, streaming, a client leaving mid-body, idle
connections, bounds (README, "HTTP boot")."""

from __future__ import annotations

import hashlib
import http.client
import os
import resource
import socket
import time

import gevent
import gevent.event
import pytest
import requests
from prometheus_client import CollectorRegistry

from massboot.config import MetricsConfig
from massboot.dhcp.leases import LeaseStoreUnavailable, MemoryLeaseStore, SqliteLeaseStore
from massboot.events import EventBus, EventRecorder
from massboot.files import FileStore
from massboot.http.leased import SqliteLeases, StoreLeases
from massboot.http.server import HttpServer
from massboot.metrics import Metrics
from massboot.tftp.server import TftpServer
from tests.loopback.test_tftp_server import Client
from tests.mirror import Mirror

DATA = bytes(range(256)) * 4096 + b"tail"      # 1 MiB + 4


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    (base / "vmlinuz").write_bytes(DATA)
    (base / "sub").mkdir()
    (base / "sub" / "initrd.img").write_bytes(b"initrd" * 1000)
    (base / "a b").write_bytes(b"space")
    (base / "%2e%2e").write_bytes(b"literal")
    # pybootd's prefix test let /tmpfoo pass for a root /tmp
    sibling = tmp_path / "tmpfoo"
    sibling.mkdir()
    (sibling / "secret").write_bytes(b"secret")
    (base / "out").symlink_to(sibling / "secret")
    (base / "outdir").symlink_to(sibling)
    (base / "inside").symlink_to(base / "sub" / "initrd.img")
    return base


@pytest.fixture
def serve():
    made: list[tuple[HttpServer, FileStore | None]] = []

    def make(files, store: FileStore | None = None, **kw) -> HttpServer:
        events = kw.pop("events", None) or EventBus()
        recorder = EventRecorder()
        events.subscribe(recorder)
        server = HttpServer("127.0.0.1", 0, files, events, **kw)
        server.start()
        server.recorder = recorder      # type: ignore[attr-defined]
        made.append((server, store))
        return server

    yield make
    for server, store in made:
        server.stop(timeout=0)
        if store is not None:
            store.close()


@pytest.fixture
def local(root, serve, tmp_path):
    def make(**kw) -> HttpServer:
        store = FileStore(str(root), cache_dir=str(tmp_path / "cache"))
        return serve(store, store, **kw)
    return make


def get(server: HttpServer, path: str, method: str = "GET", headers: dict | None = None,
        source: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                      source_address=(source, 0) if source else None)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()     # type: ignore[attr-defined]
    conn.close()
    return resp


def raw(server: HttpServer, data: bytes, source: str | None = None) -> bytes:
    """Send *data*, read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_get_head_range_conditionals(local):
    server = local()
    r = get(server, "/vmlinuz")
    assert r.status == 200 and sha(r.body) == sha(DATA)
    assert r.getheader("Content-Length") == str(len(DATA)) and r.getheader("Accept-Ranges") == "bytes"
    etag, modified = r.getheader("ETag"), r.getheader("Last-Modified")
    assert etag.startswith('"') and modified.endswith("GMT")
    head = get(server, "/vmlinuz", "HEAD")
    assert head.status == 200 and head.body == b"" and head.getheader("ETag") == etag
    assert head.getheader("Content-Length") == str(len(DATA))
    part = get(server, "/vmlinuz", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and part.body == DATA[1000:2000]
    assert part.getheader("Content-Range") == f"bytes 1000-1999/{len(DATA)}"
    tail = get(server, "/vmlinuz", headers={"Range": "bytes=-4"})
    assert tail.status == 206 and tail.body == b"tail"
    resume = get(server, "/vmlinuz", headers={"Range": "bytes=1048000-", "If-Range": etag})
    assert resume.status == 206 and resume.body == DATA[1048000:]
    changed = get(server, "/vmlinuz", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert changed.status == 200 and len(changed.body) == len(DATA)
    beyond = get(server, "/vmlinuz", headers={"Range": f"bytes={len(DATA)}-"})
    assert beyond.status == 416 and beyond.getheader("Content-Range") == f"bytes */{len(DATA)}"
    assert get(server, "/vmlinuz", headers={"If-None-Match": etag}).status == 304
    assert get(server, "/vmlinuz", headers={"If-Modified-Since": modified}).status == 304
    # pybootd looked the query string up as part of the name
    assert get(server, "/sub/initrd.img?arch=x86_64#frag").body == b"initrd" * 1000
    assert get(server, "/a%20b").body == b"space"
    assert get(server, "/inside").status == 200            # a symlink inside the root
    done = server.recorder.of("http.done")
    assert [e.get("status") for e in done][:3] == [200, 200, 206]
    assert done[0].get("bytes") == len(DATA) and done[0].get("body") is True
    assert done[1].get("body") is False and done[1].get("method") == "HEAD"


def test_keep_alive_and_pipelining(local):
    server = local()
    requests_ = (b"GET /sub/initrd.img HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"HEAD /vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /a%20b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = raw(server, requests_)
    assert out.count(b"HTTP/1.1 ") == 4
    assert out.index(b"HTTP/1.1 200") < out.index(b"HTTP/1.1 404") < out.rindex(b"HTTP/1.1 200")
    assert out.endswith(b"space") and b"initrd" * 1000 in out
    # HTTP/1.0 without keep-alive: one response, then the server closes
    out = raw(server, b"GET /a%20b HTTP/1.0\r\n\r\nGET /a%20b HTTP/1.0\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 1 and b"Connection: close" in out
    # one connection, several requests: the same connection served them
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/a%20b")
        assert conn.getresponse().read() == b"space"
    assert server.connections == 1
    conn.close()


@pytest.mark.parametrize("path, status", [
    ("/missing", 404),
    ("/sub", 404),                          # a directory
    ("/", 404),
    ("/../tmpfoo/secret", 403),
    ("/%2e%2e/tmpfoo/secret", 403),          # encoded
    ("/%2E%2E%2Ftmpfoo%2Fsecret", 403),
    ("/%252e%252e", 200),                    # decoded once: the literal file "%2e%2e"
    ("/%252e%252e/tmpfoo/secret", 404),
    ("/..%5c..%5cetc%5cpasswd", 403),       # backslashes
    ("/..\\tmpfoo\\secret", 403),
    ("//etc/passwd", 403),
    ("/%2fetc%2fpasswd", 403),
    ("/out", 403),                           # a symlink out of the root
    ("/outdir/secret", 403),                 # /tmpfoo is not inside /tmp
    ("/vmlinuz%00.txt", 403),                # NUL
    ("/C:/x", 403),
])
def test_traversal_refused(local, path, status):
    server = local()
    r = get(server, path)
    assert r.status == status
    assert b"secret" not in r.body
    if status == 403:
        assert server.recorder.of("http.done")[-1].get("reason") == "access"


def test_httpd_root_keeps_filters_and_confinement(root, serve, tmp_path):
    other = tmp_path / "www"
    other.mkdir()
    (other / "boot.ipxe").write_bytes(b"#!ipxe\n")
    (other / "pxe.cfg").write_bytes(b"menu")     # relative targets: under the root served
    store = FileStore(str(root), [("pxelinux.cfg/*", "pxe.cfg")], cache_dir=str(tmp_path / "c"))
    server = serve(store.for_root(str(other)), store)
    assert get(server, "/boot.ipxe").body == b"#!ipxe\n"
    assert get(server, "/vmlinuz").status == 404              # the TFTP root is not served
    assert get(server, "/pxelinux.cfg/01-aa").body == b"menu"  # filters apply
    assert get(server, "/../tmp/vmlinuz").status == 403
    store.set_filters([("pxelinux.cfg/*", "boot.ipxe")])       # a reload's filters
    assert get(server, "/pxelinux.cfg/01-aa").body == b"#!ipxe\n"


def test_check_ip_401(local, tmp_path):
    leased = {"127.0.0.1"}
    server = local(is_leased=leased.__contains__)
    assert get(server, "/a%20b", source="127.0.0.1").status == 200
    r = get(server, "/a%20b", source="127.0.0.2")
    assert r.status == 401 and r.body == b"401 Unauthorized\n"
    assert server.recorder.of("http.done")[-1].get("reason") == "not_leased"
    # the lease store's answer: bound, static and reserved count; offered and released do not
    store = MemoryLeaseStore(["127.0.0.3", "127.0.0.4"], {"AA:00:00:00:00:09": "127.0.0.9"})
    view = StoreLeases(lambda: [store])
    assert not view("127.0.0.3")
    store.allocate("AA:00:00:00:00:01")                      # offered: not yet
    assert not view("127.0.0.3")
    store.commit("AA:00:00:00:00:01", "127.0.0.3", lease_time=60)
    assert view("127.0.0.3") and not view("127.0.0.9") and not view("127.0.0.4")
    store.commit("AA:00:00:00:00:09", "127.0.0.9", lease_time=60)   # a static client's ACK
    assert view("127.0.0.9")
    store.release("AA:00:00:00:00:01")
    assert not view("127.0.0.3")
    fails = local(is_leased=lambda ip: 1 / 0)                # a store that cannot answer
    assert get(fails, "/a%20b").status == 503


def _view_follows_the_store(store, view) -> None:
    """*view* (check_ip's reader of the lease store of another process) on *store*, whose pool
    is 10.0.0.10-11 with AA:00:00:00:00:09 static at 10.0.0.9: only bound addresses are leased."""
    assert not view("10.0.0.10") and not view("10.0.0.9")
    store.commit("AA:00:00:00:00:09", "10.0.0.9", lease_time=60)   # a static client's ACK
    assert view("10.0.0.9")
    store.allocate("AA:00:00:00:00:01")
    assert not view("10.0.0.10")                          # offered
    store.commit("AA:00:00:00:00:01", "10.0.0.10", lease_time=60)
    assert view("10.0.0.10")
    store.release("AA:00:00:00:00:01")
    assert not view("10.0.0.10")


def test_check_ip_reads_sqlite_of_another_process(tmp_path):
    """-t -H: the lease database written by the DHCP server, read-only."""
    path = str(tmp_path / "leases.sqlite3")
    store = SqliteLeaseStore(path, ["10.0.0.10", "10.0.0.11"], {"AA:00:00:00:00:09": "10.0.0.9"})
    view = SqliteLeases([path, str(tmp_path / "missing.sqlite3")], ttl=0, negative_ttl=0)
    try:
        _view_follows_the_store(store, view)
        before = os.stat(path).st_mtime_ns
        view("10.0.0.11")
        assert os.stat(path).st_mtime_ns == before             # never written
    finally:
        view.close()
        store.close()


def test_bad_and_oversized_requests(local):
    server = local(max_request_bytes=1024)
    assert raw(server, b"POST /vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw(server, b"GET /vmlinuz HTTP/3.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert raw(server, b"GET /vmlinuz\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(server, b"GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"GET /vmlinuz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
    assert raw(server, big).startswith(b"HTTP/1.1 431")
    long_line = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(server, long_line).startswith(b"HTTP/1.1 414")
    assert [e.get("reason") for e in server.recorder.of("http.done")][-2:] == ["too_large"] * 2
    # still serving
    assert get(server, "/a%20b").body == b"space"


def test_request_timeout_and_idle_close(local):
    server = local(request_timeout=0.3, idle_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /vmlinuz HTTP/1.1\r\nHo")
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert sock.recv(100) == b""        # idle: closed without a word


def test_client_leaving_mid_body(root, local):
    big = root / "big"
    with open(big, "wb") as f:
        f.truncate(64 << 20)                  # larger than any socket buffer
    server = local()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()                              # a reset
    deadline = time.monotonic() + 10
    while not server.recorder.of("http.fail") and time.monotonic() < deadline:
        gevent.sleep(0.05)
    fail = server.recorder.of("http.fail")[0]
    assert fail.get("reason") == "client_gone" and 0 < fail.get("bytes") < 64 << 20
    assert server.connections == 0
    assert get(server, "/a%20b").body == b"space"


def test_send_timeout(root, local):
    with open(root / "big", "wb") as f:
        f.truncate(64 << 20)
    server = local(send_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 10
    while not server.recorder.of("http.fail") and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert server.recorder.of("http.fail")[0].get("reason") == "send_timeout"
    sock.close()


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_thousand_idle_connections_do_not_stop_service(local):
    _raise_nofile(4096)
    server = local(max_connections=200, max_per_client=2000)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(1000)]
    try:
        gevent.sleep(0.2)
        for _ in range(3):
            assert get(server, "/a%20b").body == b"space"
        assert server.connections <= 200 and server.evicted >= 800
        assert not server.recorder.of("http.refused")
    finally:
        for sock in idle:
            sock.close()


def test_pool_full_and_per_client(root, local):
    with open(root / "big", "wb") as f:
        f.truncate(64 << 20)
    server = local(max_connections=2, max_per_client=2)
    busy = []
    for _ in range(2):                        # two connections busy sending (nobody reads)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        busy.append(sock)
    deadline = time.monotonic() + 10
    while server.sending < 2 and time.monotonic() < deadline:
        gevent.sleep(0.02)
    assert raw(server, b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n",
               source="127.0.0.7").startswith(b"HTTP/1.1 503")
    assert [e.get("reason") for e in server.recorder.of("http.refused")] == ["connections"]
    for sock in busy:
        sock.close()
    deadline = time.monotonic() + 10
    while server.connections and time.monotonic() < deadline:
        gevent.sleep(0.02)
    per = local(max_per_client=1)
    with socket.create_connection(("127.0.0.1", per.port), timeout=10):
        gevent.sleep(0.1)
        assert raw(per, b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503")
    assert raw(per, b"GET /a%20b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
               source="127.0.0.8").startswith(
        b"HTTP/1.1 200")
    assert per.recorder.of("http.refused")[0].get("reason") == "per_client"


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.stop()


def test_tftp_and_http_clients_share_one_upstream_get(mirror, serve, tmp_path):
    body = os.urandom(3 << 20)
    mirror.files["kernel"] = body
    mirror.hold_headers = gevent.event.Event()
    events = EventBus()
    store = FileStore(mirror.root, cache_dir=str(tmp_path / "cache"), http_timeout=5.0,
                      session=requests.Session(), events=events)
    http_server = serve(store, store, events=events)
    tftp = TftpServer("127.0.0.1", 0, store, events)
    tftp.start()
    try:
        results: dict[str, bytes] = {}

        def by_http(key: str) -> None:
            results[key] = requests.get(f"http://127.0.0.1:{http_server.port}/kernel", timeout=20).content

        def by_tftp() -> None:
            client = Client(tftp.port)
            try:
                results["tftp"] = client.download("kernel", blksize=1428, windowsize=8)
            finally:
                client.close()

        jobs = [gevent.spawn(by_http, "http1"), gevent.spawn(by_http, "http2"), gevent.spawn(by_tftp)]
        gevent.sleep(0.3)
        mirror.hold_headers.set()
        gevent.joinall(jobs, timeout=30, raise_error=True)
        assert {k: sha(v) for k, v in results.items()} == dict.fromkeys(results, sha(body))
        assert len(mirror.gets("kernel")) == 1
        # and from the cache afterwards, with validators
        cached = requests.get(f"http://127.0.0.1:{http_server.port}/kernel", timeout=20)
        assert cached.content == body and cached.headers["ETag"]
        assert len(mirror.gets("kernel")) == 1
    finally:
        tftp.stop(timeout=0)


@pytest.mark.parametrize("framing", ["chunked", "close", "length"])
def test_download_in_flight_is_streamed(mirror, serve, tmp_path, framing):
    body = os.urandom(1 << 20)
    mirror.files["initrd"] = body
    mirror.framing = framing
    mirror.hold_at = 300_000
    mirror.gate = gevent.event.Event()
    store = FileStore(mirror.root, cache_dir=str(tmp_path / "cache"), http_timeout=5.0,
                      session=requests.Session())
    server = serve(store, store)
    got = gevent.spawn(lambda: requests.get(f"http://127.0.0.1:{server.port}/initrd", timeout=20))
    deadline = time.monotonic() + 10
    while not server.recorder.of("http.start") and time.monotonic() < deadline:
        gevent.sleep(0.02)
    start = server.recorder.of("http.start")[0]
    assert start.get("bytes") == (len(body) if framing == "length" else None)
    mirror.gate.set()
    resp = got.get(timeout=20)
    assert resp.status_code == 200 and resp.content == body
    chunked = resp.headers.get("Transfer-Encoding") == "chunked"
    assert chunked is (framing != "length")


def test_mirror_failure_never_reveals_the_url(mirror, serve, tmp_path):
    mirror.files["kernel"] = b"x" * 1000
    mirror.status["kernel"] = 503
    store = FileStore(mirror.root, cache_dir=str(tmp_path / "cache"), http_timeout=5.0,
                      session=requests.Session())
    server = serve(store, store)
    r = get(server, "/kernel")
    assert r.status == 502 and b"127.0.0.1" not in r.body and b"netboot" not in r.body
    assert b"127.0.0.1" not in b"".join(f"{k}{v}".encode() for k, v in r.getheaders())
    assert get(server, "/missing").status == 404
    # cut mid-body: the response is cut too (no false complete file)
    mirror.status.clear()
    mirror.files["cut"] = os.urandom(1 << 20)
    mirror.cut_at = 200_000
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(f"http://127.0.0.1:{server.port}/cut", timeout=20).raise_for_status()
    deadline = time.monotonic() + 10
    while not server.recorder.of("http.fail") and time.monotonic() < deadline:
        gevent.sleep(0.02)
    assert server.recorder.of("http.fail")[0].get("reason") == "upstream"


def test_metrics_and_progress(local):
    events = EventBus()
    metrics = Metrics(MetricsConfig(), events, registry=CollectorRegistry())
    server = local(events=events)
    metrics._http = server
    events.emit("dhcp.reply", msgtype="ack", mac="AA:00:00:00:00:01", ip="127.0.0.1", pxe=True,
                arch=0, phase="pxe", file="undionly.kpxe", ipxe=False, uuid=None)
    events.emit("tftp.start", ip="127.0.0.1", port=1, name="undionly.kpxe", blksize=1428,
                windowsize=1, mode="octet", options={}, oack={})
    events.emit("tftp.done", ip="127.0.0.1", port=1, name="undionly.kpxe", bytes=70000, duration=0.1,
                ttfb=0.01, retransmits=0, blocks=50, blocks_sent=50, blksize=1428, windowsize=1)
    assert metrics.progress.phase("AA:00:00:00:00:01") == "loader"
    assert get(server, "/vmlinuz").status == 200
    assert get(server, "/missing").status == 404
    record = metrics.progress.get("AA:00:00:00:00:01")
    assert record.phase == "kernel" and record.files == 2 and record.bytes == 70000 + len(DATA)
    assert record.last_file == "vmlinuz"
    sample = metrics.registry.get_sample_value
    assert sample("massboot_http_requests_total", {"method": "GET", "code": "200"}) == 1
    assert sample("massboot_http_requests_total", {"method": "GET", "code": "404"}) == 1
    assert sample("massboot_http_sent_bytes_total") == len(DATA)
    assert sample("massboot_http_request_duration_seconds_count") == 1
    assert sample("massboot_workers_capacity", {"pool": "http"}) == 1024
    deadline = time.monotonic() + 10
    while server.connections and time.monotonic() < deadline:   # the client closed: seen soon
        gevent.sleep(0.02)
    assert sample("massboot_http_connections") == 0
    assert metrics.health() == (True, {"http": "up"})


def test_hundred_clients_of_one_download_in_flight(mirror, serve, tmp_path):
    """A rack asking for one kernel at once while the mirror is slow to start: one upstream GET,
    every client streamed from it as it fills, every body whole."""
    body = os.urandom(4 << 20)
    mirror.files["vmlinuz"] = body
    mirror.drip = (256 << 10, 0.01)
    store = FileStore(mirror.root, cache_dir=str(tmp_path / "cache"), http_timeout=5.0,
                      session=requests.Session())
    server = serve(store, store, max_per_client=200)     # one address plays the whole rack
    url = f"http://127.0.0.1:{server.port}/vmlinuz"

    def fetch(n: int) -> str:
        with requests.get(url, timeout=60, stream=True) as r:
            assert r.status_code == 200
            return sha(b"".join(r.iter_content(1 << 16)))

    jobs = [gevent.spawn(fetch, n) for n in range(100)]
    gevent.joinall(jobs, timeout=120, raise_error=True)
    assert {job.value for job in jobs} == {sha(body)}
    assert len(mirror.gets("vmlinuz")) == 1
    done = server.recorder.of("http.done")
    assert len(done) == 100 and {e.get("bytes") for e in done} == {len(body)}


def test_check_ip_reads_the_postgresql_pool_of_other_processes(pg_dsn):
    """-t -H with ``lease_db = postgresql://...`` (README, "Several servers"): the shared pool,
    read only; an unreachable database is 503 for every question, never a download."""
    from massboot.dhcp.leases.postgresql import PostgresLeaseStore, parse_dsn
    from massboot.http.leased import PgLeases

    store = PostgresLeaseStore(pg_dsn, ["10.0.0.10", "10.0.0.11"], {"AA:00:00:00:00:09": "10.0.0.9"})
    view = PgLeases(parse_dsn(pg_dsn), ttl=0, negative_ttl=0)
    try:
        _view_follows_the_store(store, view)
        store.reserve("AA:00:00:00:00:02", "10.0.0.11")
        assert view("10.0.0.11")                              # reserved
    finally:
        view.close()
        store.close()
    dead = PgLeases(parse_dsn(pg_dsn.replace(f":{parse_dsn(pg_dsn).port}/", ":1/")), ttl=0, negative_ttl=0)
    with pytest.raises(LeaseStoreUnavailable):
        dead("10.0.0.9")


def test_out_of_descriptors_opening_a_file_is_busy_never_404(root, local, monkeypatch):
    """open() failing with EMFILE is the server's shortage: an idle connection is closed and the
    file opened again; with none idle the client gets 503 + Retry-After (reason busy), not 404."""
    import errno

    from massboot.files import local as local_files
    from massboot.files.cachedopen import CachedOpener

    real = local_files.open_cloexec
    real_openat2 = CachedOpener._openat2
    failures = {"left": 0}

    def open_cloexec(path: str, *flags: int) -> int:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, *flags)

    def openat2(self, *args) -> int:   # the hub's open from the caches is short of them too
        return -errno.EMFILE if failures["left"] > 0 else real_openat2(self, *args)

    monkeypatch.setattr(local_files, "open_cloexec", open_cloexec)
    monkeypatch.setattr(CachedOpener, "_openat2", openat2)
    server = local()
    failures["left"] = 1             # nobody idle: nothing to free
    resp = get(server, "/vmlinuz")
    assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    done = server.recorder.of("http.done")[-1]
    assert (done.get("status"), done.get("reason")) == (503, "busy")
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        time.sleep(0.3)              # accepted: the idle connection waits for its request head
        evicted = server.evicted
        failures["left"] = 1         # one idle connection: it makes room, the GET succeeds
        resp = get(server, "/vmlinuz")
        assert resp.status == 200 and resp.body == DATA
        assert server.evicted == evicted + 1
        assert idle.recv(1) == b""   # it was the one closed
    finally:
        idle.close()


def test_lookup_out_of_descriptors_is_busy(tmp_path, monkeypatch):
    import errno

    from massboot.files import local as local_files
    from massboot.sources import FileError, FileReason

    (tmp_path / "f").write_bytes(b"x")

    def emfile(path: str, *flags: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(local_files, "open_cloexec", emfile)
    with pytest.raises(FileError) as info:
        local_files._lookup((str(tmp_path / "f"),), None, True)
    assert info.value.reason is FileReason.BUSY
