"""Strangers cannot starve clients (issue #10), written as the attack.

An HTTP ACL server that *holds* every call about an unknown MAC until the test lets it go, a
flood of spoofed MACs larger than both pools, and the clients that must be answered meanwhile;
the verdict cache counted call by call; the bounded client records and their memory; the relay
allow-list and hop count; hardware addresses massboot cannot identify a client by.
"""

from __future__ import annotations

import collections
import gc
import logging
import socket
from urllib.parse import parse_qs

import gevent
import gevent.event
import pytest
from gevent.monkey import get_original
from gevent.pywsgi import WSGIServer
from prometheus_client import generate_latest

from massboot import config as cfg
from massboot.acl import HttpAcl
from massboot.dhcp.leases import MemoryLeaseStore
from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, MessageType, Opt, decode, encode, u8
from massboot.dhcp.server import DhcpServer, main_pool
from massboot.events import EventBus
from massboot.metrics import Metrics
from tests.loopback import test_dhcp_server as base
from tests.loopback.dhcpclient import RelayClient, pxe_options
from tests.loopback.test_dhcp_server import _wait, assert_unanswered
from tests.loopback.test_tftp_server import nothing_pending

harness = base.harness         # the fixture, shared

STATIC = bytes.fromhex("525400ab0001")
ALLOWED = bytes.fromhex("525400ab0002")
NativeEvent = get_original("threading", "Event")
native_sleep = get_original("time", "sleep")
FLOOD = [bytes.fromhex(f"02dead{i:06x}") for i in range(200)]   # locally administered, spoofed


class HeldAcl:
    """An ACL server that answers the *allowed* MACs at once and holds every other call until
    :attr:`release` is set; then it denies them (403)."""

    def __init__(self, allowed: set[bytes]) -> None:
        self.allowed = {mac.hex("-").upper() for mac in allowed}
        self.release = gevent.event.Event()
        self.pending = 0
        self.calls: collections.Counter[str] = collections.Counter()        # MAC → calls
        self.paths: collections.Counter[str] = collections.Counter()        # path → calls
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.location = f"127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        mac = parse_qs(environ.get("QUERY_STRING", ""))["mac"][0]
        self.calls[mac] += 1
        self.paths[environ["PATH_INFO"]] += 1
        if mac not in self.allowed:
            self.pending += 1
            try:
                self.release.wait()
            finally:
                self.pending -= 1
            start_response("403 Forbidden", [("Content-Length", "0")])
            return [b""]
        body = b"Client: rack-host\n"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.release.set()
        self.server.stop(timeout=1)


@pytest.fixture
def held():
    """``held(allowed)`` starts a :class:`HeldAcl`; each is closed (its calls let go) at the end."""
    servers: list[HeldAcl] = []
    yield lambda allowed: servers.append(HeldAcl(allowed)) or servers[-1]
    for server in servers:
        server.close()


def _http(h_bootpd: str, location: str, **acl) -> tuple[str, str, dict]:
    extra = (f"[http]\nlocation = {location}\n"
             f"[static_dhcp]\n{STATIC.hex('-')} = 127.0.0.50\n")
    return (f"access = http\n{h_bootpd}", extra,
            {"http_acl": HttpAcl(location, "boot", "linux", timeout=30, **acl)})


def _ignored(h, reason: str) -> int:
    return sum(e.get("reason") == reason for e in h.recorder.of("dhcp.ignored"))


def _discovers(relay: RelayClient, macs) -> None:
    for mac in macs:
        relay.send(relay.packet(mac, MessageType.DISCOVER, pxe_options()))


def test_flood_of_strangers_does_not_starve_static_and_allowed_clients(harness, held):
    """200 spoofed MACs, every ACL call about them held: both pools are smaller than the flood.
    A static client and an already-allowed one are answered while the held calls are pending;
    the calls beyond ``max_calls`` are refused and counted, never queued."""
    acl = held({ALLOWED})
    bootpd, extra, kw = _http("pool_size = 16\npool_count = 50", acl.location, max_calls=8)
    h = harness(bootpd=bootpd, extra=extra, **kw)
    metrics = Metrics(cfg.MetricsConfig(), h.events, dhcp=h.server)
    offer, ack = h.client.dora(ALLOWED, pxe_options())       # known and allowed before the flood
    assert ack is not None and acl.calls["52-54-00-AB-00-02"] == 1
    flood = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.0.3")
    try:
        _discovers(flood, FLOOD)
        # strangers may hold 6 of the 8 calls: the last quarter is for known clients
        _wait(lambda: acl.pending == 6 and _ignored(h, "acl_busy") == len(FLOOD) - 6)
        assert h.server.acl_workers() == (6, 8)
        assert h.server.workers()[0] == 0                    # no exchange waits in the exchange pool

        answered = []
        _, static_ack = h.client.dora(STATIC, pxe_options())
        answered.append(("static", static_ack, acl.pending, acl.release.is_set()))
        again, again_ack = h.client.dora(ALLOWED, pxe_options())           # PXE again: same phase
        answered.append(("allowed", again_ack, acl.pending, acl.release.is_set()))
        _discovers(flood, FLOOD)                              # a second wave meanwhile
        _, os_ack = h.client.dora(ALLOWED, pxe_options(uuid=None)[:1])     # its OS: a phase change
        answered.append(("allowed-os", os_ack, acl.pending, acl.release.is_set()))
        for name, reply, pending, released in answered:
            assert reply is not None and reply.message_type == MessageType.ACK, name
            assert pending == 6 and not released, name       # answered while 6 calls were held
        assert static_ack.yiaddr == "127.0.0.50" and again_ack.yiaddr == ack.yiaddr
        _wait(lambda: _ignored(h, "acl_busy") == 2 * (len(FLOOD) - 6))
        assert _ignored(h, "in_flight") == 6                 # the held ones, retransmitted
        assert metrics.dhcp_ignored.get(("acl_busy",)) == 2 * (len(FLOOD) - 6)
        assert acl.calls["52-54-00-AB-00-02"] == 2           # its OS phase: asked, answered
        assert len(h.server.clients) == 2                    # the strangers left no record
        held_macs = [mac for mac, n in acl.calls.items() if mac.startswith("02-DE-AD")]
        assert len(held_macs) == 6 and all(acl.calls[mac] == 1 for mac in held_macs)

        acl.release.set()                                    # the held calls end: denied
        _wait(lambda: sum(e.get("verdict") == "denied" for e in h.recorder.of("dhcp.acl")) == 6)
        _wait(lambda: h.server.acl_workers() == (0, 8))
        _discovers(flood, [bytes.fromhex(mac.replace("-", "")) for mac in held_macs])
        _wait(lambda: sum(e.get("verdict") == "denied" for e in h.recorder.of("dhcp.acl")) == 12)
        assert all(acl.calls[mac] == 1 for mac in held_macs)   # the denials came from the cache
        assert h.server.http_acl.cache_hits == 6
        assert len(h.server.clients) == 2
        text = generate_latest(metrics.registry).decode()
        for line in ('massboot_dhcp_acl_cache_hits_total 6.0', 'massboot_dhcp_acl_calls_total 8.0',
                     'massboot_dhcp_clients 2.0', 'massboot_workers_capacity{pool="dhcp_acl"} 8.0',
                     f'massboot_dhcp_requests_ignored_total{{reason="acl_busy"}} {2 * (len(FLOOD) - 6)}.0'):
            assert line in text.splitlines(), line
    finally:
        flood.close()


def gated_commits(store, delay: float = 0.0):
    """Make *store*'s (SQLite) commits wait for the returned gate (a real thread's event: they
    run in the store's worker thread), and each take *delay* seconds: a slow or stuck disk."""
    gate = NativeEvent()
    batch = store._db_batch

    def gated(items):
        gate.wait(30)
        native_sleep(delay)
        return batch(items)

    store._db_batch = gated
    return gate


def test_full_exchange_pool_drops_and_counts(harness, tmp_path):
    """Exchanges waiting for a stuck lease commit fill the pool (answered inline or in a
    greenlet, an exchange holds its slot until its reply is sent): the read loop drops and
    counts the rest (``pool_full``) instead of blocking, and goes on once the store answers."""
    h = harness(bootpd="pool_size = 4", db=str(tmp_path / "leases.sqlite3"))
    gate = gated_commits(h.store)
    _discovers(h.client, FLOOD[:10])
    _wait(lambda: _ignored(h, "pool_full") == 6)
    assert h.server.workers() == (4, 4) and h.server.alive
    assert h.client.recv(0.2) is None            # no OFFER before its commit
    gate.set()
    offers = [h.client.recv(2) for _ in range(4)]
    assert all(o is not None and o.message_type == MessageType.OFFER for o in offers)
    assert h.client.dora(ALLOWED, pxe_options())[1] is not None


def test_a_burst_larger_than_the_pool_waits_its_turn(harness, tmp_path):
    """A rack powering on: 16 DISCOVERs at once into 2 slots whose exchanges each take a
    moment (a lease commit). The loop waits for slots and the burst waits in the receive
    buffer: every client gets its OFFER at the first try, nothing is dropped."""
    h = harness(bootpd="pool_size = 2", db=str(tmp_path / "leases.sqlite3"))   # 20 addresses
    gated_commits(h.store, delay=0.005).set()
    macs = FLOOD[:16]
    _discovers(h.client, macs)
    offers = [h.client.recv(5) for _ in macs]
    assert all(o is not None and o.message_type == MessageType.OFFER for o in offers)
    assert sorted(bytes(o.mac) for o in offers) == sorted(macs)
    assert _ignored(h, "pool_full") == 0


class HeldProber:
    """A prober that holds every probe until :attr:`release` is set (at most its timeout), then
    finds the address silent."""

    def __init__(self) -> None:
        self.release = gevent.event.Event()
        self.pending = 0
        self.asked: list[str] = []

    def __call__(self, ip: str, timeout: float) -> bool:
        self.asked.append(ip)
        self.pending += 1
        try:
            self.release.wait(timeout)
        finally:
            self.pending -= 1
        return False


def test_probes_wait_out_of_the_exchange_pool_bounded_and_counted(harness):
    """Exchanges that must probe a reclaimed address leave the exchange pool for the probe pool
    (``pool_size`` greenlets): while every probe is held, a known client's renewal is answered
    and nothing counts as ``pool_full``; the probes beyond the probe pool are dropped and
    counted (``probe_busy``), never queued; the client's retry is offered the held address."""
    prober = HeldProber()
    h = harness(bootpd="pool_size = 2\npool_count = 4\nlease_time = 1\nprobe_timeout = 10",
                prober=prober)
    metrics = Metrics(cfg.MetricsConfig(), h.events, dhcp=h.server)
    owners = [bytes.fromhex(f"5254000004{n:02x}") for n in range(4)]
    acks = [h.client.dora(mac, pxe_options())[1] for mac in owners]
    assert all(ack is not None for ack in acks) and not prober.asked      # fresh: not probed
    _wait(lambda: h.store.counts() == (0, 4), timeout=10)                  # every lease expired
    newcomers = FLOOD[:3]
    _discovers(h.client, newcomers)                # each reclaims an expired address: probed
    _wait(lambda: prober.pending == 2 and _ignored(h, "probe_busy") == 1)
    assert h.server.probe_workers() == (2, 2) and h.server.workers()[0] == 0
    # the exchange pool is free: the last owner renews the address it still holds
    last = h.store.get("52:54:00:00:04:03")
    assert last is not None
    renew = h.client.exchange(h.client.packet(owners[3], MessageType.REQUEST, ciaddr=last.ip))
    assert renew is not None and renew.message_type == MessageType.ACK and renew.yiaddr == last.ip
    assert _ignored(h, "pool_full") == 0 and prober.pending == 2
    text = generate_latest(metrics.registry).decode()
    for line in ('massboot_workers_busy{pool="dhcp_probe"} 2.0',
                 'massboot_workers_capacity{pool="dhcp_probe"} 2.0',
                 'massboot_dhcp_requests_ignored_total{reason="probe_busy"} 1.0'):
        assert line in text.splitlines(), line
    prober.release.set()                                                   # silent: offered
    offers = [h.client.recv(2) for _ in range(2)]
    assert all(o is not None and o.message_type == MessageType.OFFER for o in offers)
    _wait(lambda: h.server.probe_workers() == (0, 2))
    dropped = next(e.get("mac") for e in h.recorder.of("dhcp.ignored") if e.get("reason") == "probe_busy")
    retry = h.client.exchange(h.client.packet(bytes.fromhex(dropped.replace(":", "")),
                                              MessageType.DISCOVER, pxe_options()))
    assert retry is not None and retry.message_type == MessageType.OFFER
    # the dropped request never reached the prober; its retry probes the address held for it
    assert len(prober.asked) == 3 and retry.yiaddr == prober.asked[2]


def test_an_exchange_asked_about_moves_on_to_the_probe_pool(harness, held):
    """access = http: the ACL's call ends, its slot is free, and the probe runs in the probe pool."""
    prober = HeldProber()
    newcomer = FLOOD[0]
    acl = held({ALLOWED, newcomer})
    bootpd, extra, kw = _http("pool_count = 1\nlease_time = 1\nprobe_timeout = 10", acl.location,
                              max_calls=4)
    h = harness(bootpd=bootpd, extra=extra, prober=prober, **kw)
    assert h.client.dora(ALLOWED, pxe_options())[1] is not None
    _wait(lambda: h.store.counts() == (0, 1), timeout=10)
    _discovers(h.client, [newcomer])
    _wait(lambda: prober.pending == 1)
    _wait(lambda: h.server.acl_workers() == (0, 4))               # the call's slot is free
    assert h.server.workers()[0] == 0 and h.server.probe_workers()[0] == 1
    prober.release.set()
    offer = h.client.recv(2)
    assert offer is not None and offer.message_type == MessageType.OFFER and offer.yiaddr == "127.0.0.100"
    assert acl.calls[newcomer.hex("-").upper()] == 1


def test_verdict_cache_counts_calls(harness, held):
    """Exact call counts: a retransmitting denied MAC, a flood of the same MACs, and a real
    client's boot flow (pybootd's "asked on phase change" rule) with and without the cache."""
    acl = held({ALLOWED})
    acl.release.set()                                        # denials answered at once
    now = [1000.0]
    bootpd, extra, kw = _http("pool_count = 50", acl.location, clock=lambda: now[0])
    h = harness(bootpd=bootpd, extra=extra, **kw)
    denied = FLOOD[0]
    for _ in range(5):                                       # the client retransmits its DISCOVER
        assert_unanswered(h, h.client.packet(denied, MessageType.DISCOVER, pxe_options()),
                          "dhcp.acl", verdict="denied")
    assert acl.calls["02-DE-AD-00-00-00"] == 1

    for _ in range(5):                                       # 20 MACs, 5 times each, back to back
        _discovers(h.client, FLOOD[1:21])
        gevent.sleep(0.05)
    _wait(lambda: sum(e.get("verdict") == "denied" for e in h.recorder.of("dhcp.acl"))
          + _ignored(h, "in_flight") == 5 + 100)
    assert {acl.calls[m.hex("-").upper()] for m in FLOOD[1:21]} == {1}

    # the boot flow: PXE, OS, reboot into PXE (cached), 31 s later OS and PXE again (expired)
    def boot_flow() -> None:
        assert h.client.dora(ALLOWED, pxe_options())[1] is not None
        assert h.client.dora(ALLOWED)[1] is not None
        assert h.client.dora(ALLOWED, pxe_options())[1] is not None
        now[0] += 31
        assert h.client.dora(ALLOWED)[1] is not None
        assert h.client.dora(ALLOWED, pxe_options())[1] is not None

    boot_flow()
    assert (acl.paths["/boot"] - 21, acl.paths["/linux"]) == (2, 2)   # 21: the strangers' calls
    nocache = held({ALLOWED})
    bootpd, extra, kw = _http("pool_count = 50", nocache.location, cache_ttl=0)
    h = harness(bootpd=bootpd, extra=extra, **kw)
    boot_flow()
    assert (nocache.paths["/boot"], nocache.paths["/linux"]) == (3, 2)   # the one duplicate saved


def test_relay_allow_list_and_hop_count(harness):
    h = harness(bootpd="relays = 127.0.0.2;127.0.2.0/24")
    assert h.client.dora(STATIC, pxe_options())[1] is not None       # from 127.0.0.2: allowed
    rack = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.2.9")
    stranger = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.0.3")
    try:
        assert rack.dora(ALLOWED, pxe_options())[1] is not None
        stranger.send(stranger.packet(FLOOD[0], MessageType.DISCOVER, pxe_options()))
        _wait(lambda: _ignored(h, "relay_not_allowed") == 1)
        assert nothing_pending(stranger.sock, 0.5)
        assert_unanswered(h, h.client.packet(FLOOD[1], MessageType.DISCOVER, pxe_options(), hops=5),
                          "dhcp.ignored", reason="too_many_hops")
        reply = h.client.exchange(h.client.packet(FLOOD[1], MessageType.DISCOVER, pxe_options(), hops=4))
        assert reply is not None and reply.message_type == MessageType.OFFER
        (event,) = [e for e in h.recorder.of("dhcp.ignored") if e.get("reason") == "relay_not_allowed"]
        assert event.get("detail") == "relay 127.0.0.3 (giaddr 127.0.0.3)"
    finally:
        rack.close()
        stranger.close()


def test_reload_applies_relays_hops_and_max_clients(harness):
    h = harness()
    assert h.client.dora(STATIC, pxe_options())[1] is not None
    new = cfg.loads(base.BASE.format(bootpd="relays = 127.0.2.0/24\nmax_hops = 0\nmax_clients = 1",
                                     extra="", lease_time=3600)).bootp
    h.server.apply(new, subnet_stores={}, http_acl=None, dns=())
    assert_unanswered(h, h.client.packet(ALLOWED, MessageType.DISCOVER, pxe_options()),
                      "dhcp.ignored", reason="relay_not_allowed")
    rack = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.2.9")
    try:
        assert rack.dora(ALLOWED, pxe_options())[1] is not None
        assert list(h.server.clients.get(m) is not None for m in ("52:54:00:AB:00:01", "52:54:00:AB:00:02")) \
            == [False, True]                                  # max_clients = 1: the older one went
        reply = rack.exchange(rack.packet(ALLOWED, MessageType.DISCOVER, pxe_options(), hops=1), 0.5)
        assert reply is None and _ignored(h, "too_many_hops") == 1
    finally:
        rack.close()


def test_unusable_hardware_addresses_are_malformed_without_traceback(harness, caplog):
    h = harness()
    metrics = Metrics(cfg.MetricsConfig(), h.events, dhcp=h.server)
    caplog.set_level(logging.DEBUG)
    packets = [BootpPacket(op=BOOTREQUEST, xid=i, hlen=hlen, htype=htype, chaddr=bytes(range(1, 17))[:hlen],
                           giaddr="127.0.0.2", options=((Opt.MESSAGE_TYPE, u8(MessageType.DISCOVER)),
                                                        *pxe_options()))
               for i, (hlen, htype) in enumerate([(0, 1), (3, 1), (16, 1), (0, 32), (5, 6)])]
    data = [encode(p) for p in packets]
    data.append(data[0][:2] + bytes([17]) + data[0][3:])        # hlen 17: the codec's
    for datagram in data:
        h.client.sock.sendto(datagram, ("127.0.0.1", h.server.port))
    assert h.client.dora(ALLOWED, pxe_options())[1] is not None        # the server goes on
    _wait(lambda: len(h.recorder.of("dhcp.malformed")) == 6)
    assert {e.get("reason") for e in h.recorder.of("dhcp.malformed")} == {"bad_hlen"}
    assert metrics.malformed.get(("dhcp", "bad_hlen")) == 6
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not _ignored(h, "internal_error") and len(h.server.clients) == 1
    ok = decode(encode(BootpPacket(op=BOOTREQUEST, htype=6, hlen=6, chaddr=ALLOWED)))   # IEEE 802: fine
    assert ok.hlen == 6


def test_client_records_bounded_and_evicted(harness):
    h = harness(bootpd="max_clients = 1000\npool_count = 50")
    for i in range(5000):
        packet = h.client.packet(bytes.fromhex(f"5254{i:08x}"), MessageType.DISCOVER, pxe_options())
        h.server.handle(packet, ("127.0.0.2", h.client.sock.getsockname()[1]))
        assert len(h.server.clients) <= 1000
    assert h.server.clients.evicted >= 4000 and len(h.server.clients) > 900
    assert "52:54:00:00:13:87" in h.server.clients and "52:54:00:00:00:00" not in h.server.clients
    denied = harness(bootpd="access = mac\npool_count = 50", extra="[mac]\n52-54-00-12-34-56 = yes\n")
    for i in range(2000):
        packet = denied.client.packet(bytes.fromhex(f"02ad{i:08x}"), MessageType.DISCOVER, pxe_options())
        denied.server.handle(packet, ("127.0.0.2", denied.client.sock.getsockname()[1]))
    assert len(denied.server.clients) == 0


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_rss_growth_after_100000_distinct_macs(tmp_path):
    """100,000 distinct MACs that pass every check (the worst case: each gets a record; the
    pool of 100 addresses is exhausted after the first ones) through the server's handle path:
    the process grows by less than 20 MiB, and no more than ``max_clients`` records exist."""
    config = cfg.loads("[bootpd]\naddress = 127.0.0.1\nport = 0\npool_start = 127.0.0.100\n"
                       "pool_count = 100\n[bootfile]\ndefault = pxelinux.0\n").bootp
    pool, _ = main_pool(config, "127.0.0.1", "255.0.0.0")
    store = MemoryLeaseStore(pool, {})
    server = DhcpServer(config, "127.0.0.1", "255.0.0.0", store, EventBus())
    server.start()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.2", 0))
    source = ("127.0.0.2", sink.getsockname()[1])
    template = encode(BootpPacket(op=BOOTREQUEST, xid=7, chaddr=bytes(6), giaddr="127.0.0.2",
                                  options=((Opt.MESSAGE_TYPE, u8(MessageType.DISCOVER)), *pxe_options())))
    try:
        def run(first: int, count: int) -> None:
            for i in range(first, first + count):
                data = template[:28] + (0x5254_0000_0000 + i).to_bytes(6, "big") + template[34:]
                server.handle(decode(data), source)

        run(0, 2000)                                  # warm up: the pool is exhausted, caches made
        gc.collect()
        before = _rss()
        run(2000, 100_000)
        gc.collect()
        growth = _rss() - before
        assert 98_000 < len(server.clients) <= config.max_clients == 100_000
        assert growth < 20 << 20, f"RSS grew by {growth / 2**20:.1f} MiB"
        print(f"RSS growth after 100,000 distinct MACs: {growth / 2**20:.1f} MiB")
    finally:
        sink.close()
        server.stop(1)
