"""The PostgreSQL lease store never blocks the hub (README, "Several servers"; design "Nothing
blocks the gevent hub").

A real DHCP server and a real TFTP server share one process, as in massboot; the DHCP server's
lease store is PostgreSQL (a throwaway cluster). Then the database stalls while a client waits
for its OFFER: either another session holds the pool's lock (the store's transaction waits in
the server), or the store's own backend process is frozen with SIGSTOP (the server does not
answer at all). Meanwhile a TFTP transfer runs block by block, the DHCP read loop reads and
counts a malformed datagram, and a ticker greenlet keeps ticking. Were the driver to wait on the
hub, all three would freeze until the stall ends. Black box: nothing here knows the driver.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import gevent
import pytest

from massboot.dhcp.leases import PostgresLeaseStore
from massboot.dhcp.packet import MessageType
from massboot.tftp.server import TftpServer
from tests.loopback.dhcpclient import pxe_options
from tests.loopback.test_dhcp_server import Harness
from tests.loopback.test_tftp_server import FILES, MemStore

HOLD = 1.5          # seconds the database stalls
TICK = 0.02


def _tftp_read(port: int, name: str, marks: list[float]) -> bytes:
    """A lock-step RFC 1350 read with blksize 1024 (RFC 2348); *marks*: each block's arrival."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        sock.sendto(b"\0\1" + name.encode() + b"\0octet\0blksize\0001024\0", ("127.0.0.1", port))
        out = bytearray()
        expected = 1
        while True:
            data, peer = sock.recvfrom(2048)
            opcode = struct.unpack("!H", data[:2])[0]
            if opcode == 6:                          # OACK: acknowledge with block 0
                sock.sendto(b"\0\4\0\0", peer)
                continue
            assert opcode == 3, data[:40]
            block = struct.unpack("!H", data[2:4])[0]
            if block == expected:
                out += data[4:]
                marks.append(time.monotonic())
                expected += 1
            sock.sendto(b"\0\4" + data[2:4], peer)
            if block == expected - 1 and len(data) - 4 < 1024:
                return bytes(out)
    finally:
        sock.close()


@pytest.fixture
def rack(pg_cluster, pg_dsn):
    h = Harness(bootpd="allow_simple_dhcp = on",
                store=lambda pool, _config: PostgresLeaseStore(pg_dsn + "&timeout=10", pool))
    tftp = TftpServer("127.0.0.1", 0, MemStore(FILES), h.events, timeout_min=0.05, timeout_max=1.0)
    tftp.start()
    yield h.server, tftp, h.client, h.recorder, h.store
    tftp.stop(timeout=0)
    h.close()


def _stall_and_measure(rack, pg_cluster, pg_dsn, stall, resume) -> None:
    dhcp, tftp, client, recorder, store = rack
    ticks: list[float] = []
    stop = gevent.event.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            gevent.sleep(TICK)

    mac = bytes.fromhex("525400aa0001")
    stall()
    started = time.monotonic()
    ticking = gevent.spawn(ticker)
    discover = client.packet(mac, MessageType.DISCOVER, pxe_options(arch=7))
    offer_job = gevent.spawn(client.exchange, discover, HOLD + 10)
    gevent.sleep(0.1)                                   # the DISCOVER is in the store, waiting
    marks: list[float] = []
    transfer = gevent.spawn(_tftp_read, tftp.port, "f600k", marks)
    malformed_sent = time.monotonic()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.sendto(b"\x01\x01\x06", ("127.0.0.1", dhcp.port))   # too short: the read loop counts it
    raw.close()
    data = transfer.get(timeout=HOLD + 10)
    transfer_done = time.monotonic()
    malformed_seen = bool(recorder.of("dhcp.malformed"))
    offer_before_resume = offer_job.ready()
    gevent.sleep(max(0.0, HOLD - (time.monotonic() - started)))   # the hub runs the ticker meanwhile
    resume()
    resumed = time.monotonic()
    offer = offer_job.get(timeout=30)
    offered = time.monotonic()
    stop.set()
    ticking.join(timeout=5)
    assert data == FILES["f600k"]
    # the transfer and the read loop went on during the stall, the OFFER waited for its end
    assert transfer_done < resumed and malformed_seen and malformed_sent < resumed
    assert not offer_before_resume and offer is not None and offer.message_type == MessageType.OFFER
    assert offered - started >= HOLD
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    assert len(marks) == len(FILES["f600k"]) // 1024 + 1
    assert max(gaps) < HOLD / 3, f"a TFTP block waited {max(gaps):.3f} s"
    tick_gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(tick_gaps) < HOLD / 3, f"the hub stalled for {max(tick_gaps):.3f} s"
    assert store.get("52:54:00:AA:00:01").state == "offered"


def test_a_lock_held_by_another_session_blocks_no_one_else(rack, pg_cluster, pg_dsn) -> None:
    database = pg_dsn.split("?")[0].rsplit("/", 1)[1]
    other = pg_cluster.connect(database)

    def stall() -> None:
        other.run("BEGIN")
        other.run("SELECT seq FROM massboot_scopes WHERE scope = 'main' FOR UPDATE")

    try:
        _stall_and_measure(rack, pg_cluster, pg_dsn, stall, lambda: other.run("COMMIT"))
    finally:
        other.close()


def test_a_frozen_database_backend_blocks_no_one_else(rack, pg_cluster, pg_dsn) -> None:
    database = pg_dsn.split("?")[0].rsplit("/", 1)[1]
    (pid,) = pg_cluster.backend_pids(database)          # the store's session
    frozen: list[float] = []

    def stall() -> None:
        os.kill(pid, signal.SIGSTOP)
        frozen.append(time.monotonic())

    def resume() -> None:
        os.kill(pid, signal.SIGCONT)

    try:
        _stall_and_measure(rack, pg_cluster, pg_dsn, stall, resume)
    finally:
        os.kill(pid, signal.SIGCONT)
