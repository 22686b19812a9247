"""The metrics HTTP side (README, "Monitoring"): /clients pages, the connection bound, the idle
timeout; in process, on gevent, with a TFTP transfer running beside it."""

from __future__ import annotations

import json
import os
import socket

import gevent
import requests
from prometheus_client import CollectorRegistry

from massboot.config import MetricsConfig
from massboot.events import EventBus
from massboot.files import FileStore
from massboot.metrics import Metrics
from massboot.tftp.server import TftpServer
from tests.loopback.test_ops import tftp_download

HOST = "127.0.0.1"


def mac(n: int) -> str:
    return "02:00:" + ":".join(f"{b:02X}" for b in n.to_bytes(4, "big"))


def fill(bus: EventBus, count: int) -> None:
    for n in range(count):
        bus.emit("dhcp.received", msgtype="discover", mac=mac(n), relayed=False, pxe=True, ipxe=False,
                 uuid=None, arch=0)


def test_clients_pages_of_50000_while_a_transfer_keeps_going(tmp_path):
    bus = EventBus()
    metrics = Metrics(MetricsConfig(address=HOST, port=0, clients_page=50000), bus,
                      registry=CollectorRegistry())
    data = os.urandom(3000 * 512 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    files = FileStore(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    tftp = TftpServer(HOST, 0, files, bus, timeout_min=0.5)
    metrics.start()
    tftp.start()
    try:
        fill(bus, 50000)
        url = f"http://{HOST}:{metrics.port}/clients"
        blocks: list[int] = []
        transfer = gevent.spawn(tftp_download, tftp.port, "big.bin", blocks.append)
        while len(blocks) < 100:
            assert not transfer.dead, transfer.exception
            gevent.sleep(0.01)
        before = len(blocks)
        response = requests.get(url, params={"limit": 50000}, timeout=60)
        during = len(blocks) - before
        assert response.status_code == 200
        records = response.json()
        assert len(records) == 50000 and "Link" not in response.headers
        assert [r["mac"] for r in records] == sorted(r["mac"] for r in records)
        # the page was built and sent in slices: the transfer went on while it was served
        assert during >= 2, during      # progress kept coming (dozens when the machine is idle)
        assert transfer.get(timeout=60) == data

        # pages and cursors: every record once, in MAC order
        seen: list[str] = []
        params: dict[str, object] = {"limit": 20000}
        while True:
            page = requests.get(url, params=params, timeout=60)
            seen.extend(r["mac"] for r in page.json())
            cursor = page.headers.get("X-Next-Cursor")
            if cursor is None:
                break
            assert page.headers["Link"].endswith('>; rel="next"')
            params = {"limit": 20000, "after": cursor}
        assert seen == sorted(mac(n) for n in range(50000))
        assert requests.get(url, params={"limit": 50001}, timeout=5).status_code == 400
    finally:
        tftp.stop(1)
        metrics.stop()
        files.close()


def test_plain_get_is_the_first_page():
    bus = EventBus()
    metrics = Metrics(MetricsConfig(address=HOST, port=0), bus, registry=CollectorRegistry())
    metrics.start()
    try:
        fill(bus, 1500)
        response = requests.get(f"http://{HOST}:{metrics.port}/clients", timeout=10)
        records = response.json()
        assert len(records) == 1000 == MetricsConfig().clients_page
        assert response.headers["X-Next-Cursor"] == records[-1]["mac"] == mac(999)
        rest = requests.get(f"http://{HOST}:{metrics.port}/clients",
                            params={"after": mac(999)}, timeout=10).json()
        assert [r["mac"] for r in rest] == [mac(n) for n in range(1000, 1500)]
    finally:
        metrics.stop()


def test_connection_bound_and_idle_timeout():
    registry = CollectorRegistry()
    metrics = Metrics(MetricsConfig(address=HOST, port=0, max_connections=2, idle_timeout=0.5),
                      EventBus(), registry=registry)
    metrics.start()
    idle = []
    try:
        for _ in range(2):
            idle.append(socket.create_connection((HOST, metrics.port), timeout=5))
        gevent.sleep(0.1)                      # both accepted and waiting for a request line
        with socket.create_connection((HOST, metrics.port), timeout=5) as extra:
            answer = b""
            while chunk := extra.recv(1024):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert registry.get_sample_value("massboot_metrics_connections_refused_total") == 1
        for sock in idle:                      # closed by the server after the idle timeout
            assert sock.recv(1024) == b""
        # the slots are free again
        body = requests.get(f"http://{HOST}:{metrics.port}/healthz", timeout=5).json()
        assert json.loads(json.dumps(body))["status"] == "ok"
    finally:
        for sock in idle:
            sock.close()
        metrics.stop()
