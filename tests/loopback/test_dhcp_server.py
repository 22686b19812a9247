"""The DHCP/PXE server on loopback, driven by a scripted client acting as a relay (no root)."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable

import gevent
import pytest

from massboot import config as cfg
from massboot.acl import HttpAcl
from massboot.config import BootpConfig
from massboot.dhcp.leases import LeaseStore, MemoryLeaseStore, SqliteLeaseStore
from massboot.dhcp.packet import BOOTREPLY, MessageType, Opt, bytes_ip, encode, ip_bytes
from massboot.dhcp.server import DhcpServer, main_pool, subnet_pool
from massboot.events import EventBus, EventRecorder
from massboot.ident import mac_str
from massboot.notify import Notifier
from tests.loopback.dhcpclient import RelayClient, pxe_options
from tests.loopback.test_tftp_server import nothing_pending

MAC1 = bytes.fromhex("525400123456")
MAC2 = bytes.fromhex("525400abcdef")
BASE = """
[bootpd]
address = 127.0.0.1
port = 0
pool_start = 127.0.0.100
pool_count = 20
lease_time = {lease_time}
dns = 127.0.0.53;127.0.0.54
{bootpd}
[bootfile]
default = pxelinux.0
00007 = shimx64.efi
{extra}
"""


class Harness:
    """A DhcpServer on 127.0.0.1 (relays on 127/8) from :data:`BASE` and a relay client.

    Args:
        bootpd, extra: lines added to [bootpd] and after [bootfile].
        db: a SQLite lease file (the in-memory store by default).
        store: ``(pool, config) -> lease store`` for any other store (PostgreSQL).
        lease_time: [bootpd] lease_time.
        kwargs: for DhcpServer.
    """

    def __init__(self, bootpd: str = "", extra: str = "", db: str | None = None,
                 store: Callable[[list[str], BootpConfig], LeaseStore] | None = None, lease_time: int = 3600,
                 **kwargs) -> None:
        self.config = cfg.loads(BASE.format(bootpd=bootpd, extra=extra, lease_time=lease_time)).bootp
        self.events = EventBus()
        self.recorder = EventRecorder()
        self.events.subscribe(self.recorder)
        pool, _ = main_pool(self.config, "127.0.0.1", "255.0.0.0")
        c = self.config
        lifecycle = dict(offer_hold=c.offer_hold, reclaim=c.reclaim, decline_probation=c.decline_probation)
        if store is not None:
            self.store = store(pool, c)
        else:
            self.store = SqliteLeaseStore(db, pool, c.static, **lifecycle) if db else MemoryLeaseStore(
                pool, c.static, **lifecycle)
        subnet_stores = {s.name: MemoryLeaseStore(subnet_pool(s, {})) for s in self.config.subnets}
        self.server = DhcpServer(self.config, "127.0.0.1", "255.0.0.0", self.store, self.events,
                                 subnet_stores=subnet_stores, **kwargs)
        self.server.start()
        self.client = RelayClient(("127.0.0.1", self.server.port))

    def close(self) -> None:
        self.client.close()
        self.server.stop(1)
        self.store.close()


@pytest.fixture
def harness():
    made = []

    def make(**kwargs) -> Harness:
        h = Harness(**kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_pxe_dora(harness):
    h = harness(bootpd="allow_simple_dhcp = off")
    offer, ack = h.client.dora(MAC1, pxe_options(arch=7))
    assert offer is not None and offer.message_type == MessageType.OFFER
    assert offer.yiaddr == "127.0.0.100" and offer.siaddr == "127.0.0.1"
    assert offer.file == b"shimx64.efi" and offer.sname == b"unknown.localdomain"
    assert offer.option(Opt.SERVER_ID) == ip_bytes("127.0.0.1")
    assert offer.option(Opt.SUBNET_MASK) == ip_bytes("255.0.0.0")
    assert offer.option(Opt.ROUTER) == ip_bytes("127.0.0.1")
    assert offer.option(Opt.DNS) == ip_bytes("127.0.0.53") + ip_bytes("127.0.0.54")   # one option
    assert offer.option(Opt.VENDOR_CLASS) == b"PXEClient"
    assert offer.option(Opt.CLIENT_UUID) == dict(pxe_options())[Opt.CLIENT_UUID]
    assert offer.option(Opt.VENDOR_SPECIFIC) is not None
    assert offer.option(Opt.BOOTFILE) == b"shimx64.efi" and offer.option(Opt.TFTP_SERVER) == b"127.0.0.1"
    assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == "127.0.0.100"
    assert int.from_bytes(ack.option(Opt.LEASE_TIME), "big") == 3600
    assert h.store.get("52:54:00:12:34:56").state == "bound"
    kinds = [e.get("msgtype") for e in h.recorder.of("dhcp.reply")]
    assert kinds == ["offer", "ack"]


def test_bios_default_and_unknown_arch_falls_back(harness):
    h = harness()
    offer, _ = h.client.dora(MAC1, pxe_options(arch=0))
    assert offer.file == b"pxelinux.0"
    offer, _ = h.client.dora(MAC2, pxe_options(arch=11))    # ARM64 UEFI: no entry → default, counted
    assert offer.file == b"pxelinux.0"
    assert h.recorder.of("dhcp.arch_fallback")


def test_sticky_and_distinct_addresses(harness):
    h = harness()
    ips = set()
    for i in range(10):
        mac = bytes.fromhex(f"5254000000{i:02x}")
        _, ack = h.client.dora(mac, pxe_options())
        ips.add(ack.yiaddr)
        _, again = h.client.dora(mac, pxe_options())
        assert again.yiaddr == ack.yiaddr
    assert len(ips) == 10


def test_lease_survives_restart(harness, tmp_path):
    db = str(tmp_path / "leases.sqlite3")
    h = harness(db=db)
    _, ack = h.client.dora(MAC1, pxe_options())
    h.client.dora(MAC2, pxe_options())
    h.close()
    h2 = harness(db=db)
    _, ack2 = h2.client.dora(MAC1, pxe_options())
    assert ack2.yiaddr == ack.yiaddr
    _, ack3 = h2.client.dora(bytes.fromhex("525400999999"), pxe_options())
    assert ack3.yiaddr not in (ack.yiaddr, "127.0.0.101")


def test_request_for_wrong_address_gets_nak_and_other_server_is_left_alone(harness):
    h = harness()
    h.client.dora(MAC1, pxe_options())
    req = h.client.packet(MAC1, MessageType.REQUEST, [(Opt.REQUESTED_IP, ip_bytes("127.0.0.119"))])
    nak = h.client.exchange(req)
    assert nak.message_type == MessageType.NAK and nak.yiaddr == "0.0.0.0"
    other = h.client.packet(MAC1, MessageType.REQUEST, [(Opt.SERVER_ID, ip_bytes("127.0.0.9")),
                                                        (Opt.REQUESTED_IP, ip_bytes("127.0.0.100"))])
    assert_unanswered(h, other, "dhcp.ignored", reason="other_server")


def test_init_reboot_and_renew(harness):
    h = harness()
    _, ack = h.client.dora(MAC1, pxe_options())
    reboot = h.client.packet(MAC1, MessageType.REQUEST, [(Opt.REQUESTED_IP, ip_bytes(ack.yiaddr))])
    assert h.client.exchange(reboot).message_type == MessageType.ACK
    renew = h.client.packet(MAC1, MessageType.REQUEST, ciaddr=ack.yiaddr)
    reply = h.client.exchange(renew)
    assert reply.message_type == MessageType.ACK and reply.yiaddr == ack.yiaddr


def test_inform_release_decline(harness):
    h = harness()
    _, ack = h.client.dora(MAC1, pxe_options())
    inform = h.client.packet(MAC1, MessageType.INFORM, ciaddr=ack.yiaddr)
    reply = h.client.exchange(inform)
    assert reply.message_type == MessageType.ACK and reply.yiaddr == "0.0.0.0"
    assert reply.option(Opt.LEASE_TIME) is None and reply.option(Opt.SUBNET_MASK) is not None
    h.client.send(h.client.packet(MAC1, MessageType.RELEASE, ciaddr=ack.yiaddr))
    gevent.sleep(0)
    _wait(lambda: h.recorder.of("dhcp.released"))
    _, again = h.client.dora(MAC1, pxe_options())
    assert again.yiaddr == ack.yiaddr                        # sticky after release (C10)
    h.client.send(h.client.packet(MAC1, MessageType.DECLINE, [(Opt.REQUESTED_IP, ip_bytes(ack.yiaddr))]))
    _wait(lambda: h.recorder.of("dhcp.declined"))
    _, moved = h.client.dora(MAC1, pxe_options())
    assert moved.yiaddr != ack.yiaddr
    _, other = h.client.dora(MAC2, pxe_options())
    assert other.yiaddr != ack.yiaddr                         # a declined address is set aside


def test_simple_dhcp_gate_and_plain_bootp(harness):
    h = harness(bootpd="allow_simple_dhcp = no")
    assert_unanswered(h, h.client.packet(MAC1, MessageType.DISCOVER), "dhcp.ignored")
    h.client.dora(MAC1, pxe_options())                          # PXE first: then OS requests are served
    offer, ack = h.client.dora(MAC1)
    assert ack.message_type == MessageType.ACK and ack.yiaddr == offer.yiaddr
    h2 = harness(bootpd="allow_simple_dhcp = yes")
    bootp = h2.client.exchange(h2.client.packet(MAC2, None))
    assert bootp is not None and bootp.message_type is None and bootp.yiaddr == "127.0.0.100"
    assert bootp.file == b"pxelinux.0" and h2.store.get("52:54:00:AB:CD:EF").state == "bound"


def test_never_server_network_or_broadcast_address():
    c = cfg.loads("[bootpd]\npool_start = 10.0.0.0\npool_count = 10\n[bootfile]\ndefault = a\n").bootp
    pool, skipped = main_pool(c, "10.0.0.1", "255.255.255.248")
    assert "10.0.0.0" not in pool and "10.0.0.1" not in pool and "10.0.0.7" not in pool
    assert set(skipped) == {"10.0.0.0", "10.0.0.1", "10.0.0.7"}


def test_pool_exhaustion(harness):
    h = harness(bootpd="allow_simple_dhcp = yes".replace("yes", "yes\npool_count = 2").replace(
        "pool_count = 2", "pool_count = 2"))
    # pool_count given twice in one section: the last value (2) wins, with a warning
    assert h.config.pool_count == 2
    assert h.client.dora(MAC1, pxe_options())[1] is not None
    assert h.client.dora(MAC2, pxe_options())[1] is not None
    assert_unanswered(h, h.client.packet(bytes.fromhex("525400000077"), MessageType.DISCOVER, pxe_options()),
                      "dhcp.exhausted")


def test_static_lease_and_mac_acl(harness):
    h = harness(bootpd="access = mac",
                extra="[mac]\n52-54-00-12/16 = yes\n52-54-00-12-34-56 = no\n"
                      "[static_dhcp]\n52-54-00-ab-cd-ef = 127.0.0.50\n")
    assert_unanswered(h, h.client.packet(MAC1, MessageType.DISCOVER, pxe_options()),   # exact key wins
                      "dhcp.acl", verdict="denied")
    _, ack = h.client.dora(bytes.fromhex("525400120001"), pxe_options())           # mask: allowed
    assert ack is not None
    assert_unanswered(h, h.client.packet(bytes.fromhex("001122334455"), MessageType.DISCOVER, pxe_options()),
                      "dhcp.acl", verdict="denied")
    _, static = h.client.dora(MAC2, pxe_options())                                 # static: always served
    assert static.yiaddr == "127.0.0.50"
    verdicts = {(e.get("acl"), e.get("verdict")) for e in h.recorder.of("dhcp.acl")}
    assert ("mac", "denied") in verdicts and ("mac", "allowed") in verdicts


def test_uuid_acl(harness):
    h = harness(bootpd="access = uuid", extra="[uuid]\n12345678-abcd-ef00-1111-abcdefabcdef = yes\n")
    assert h.client.dora(MAC1, pxe_options())[1] is not None
    assert_unanswered(h, h.client.packet(MAC2, MessageType.DISCOVER,
                                         pxe_options(uuid="00000000-0000-0000-0000-000000000001")),
                      "dhcp.acl", verdict="denied")


def test_ipxe_gets_second_stage(harness):
    h = harness(bootpd="ipxe_boot_file = http://127.0.0.1/boot.ipxe")
    offer, _ = h.client.dora(MAC1, pxe_options())
    assert offer.file == b"pxelinux.0"
    offer, _ = h.client.dora(MAC1, pxe_options(ipxe=True))
    assert offer.file == b"http://127.0.0.1/boot.ipxe"


def test_relay_agent_option_echoed_and_subnet_settings(harness):
    h = harness(extra="[subnet:rack2]\nnetwork = 127.0.2.0/24\npool_start = 127.0.2.10\npool_count = 5\n"
                      "gateway = 127.0.2.1\n")
    agent = bytes([1, 4]) + b"sw12" + bytes([2, 2]) + b"p7"
    offer = h.client.exchange(h.client.packet(MAC1, MessageType.DISCOVER,
                                              pxe_options() + [(Opt.RELAY_AGENT, agent)]))
    assert offer.option(Opt.RELAY_AGENT) == agent and offer.yiaddr == "127.0.0.100"
    rack = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.2.1")
    try:
        offer, ack = rack.dora(MAC2, pxe_options())
        assert offer.yiaddr == "127.0.2.10" and ack.yiaddr == "127.0.2.10"
        assert offer.option(Opt.SUBNET_MASK) == ip_bytes("255.255.255.0")
        assert offer.option(Opt.ROUTER) == ip_bytes("127.0.2.1")
        assert offer.giaddr == "127.0.2.1"
    finally:
        rack.close()


def test_malformed_is_counted_and_server_goes_on(harness):
    h = harness()
    reply = dataclasses.replace(h.client.packet(MAC2, MessageType.OFFER), op=BOOTREPLY)   # well formed
    for junk in (b"", b"\x01" * 100, b"\x07" + b"\0" * 300, encode(reply)):
        h.client.sock.sendto(junk, ("127.0.0.1", h.server.port))
    assert h.client.dora(MAC1, pxe_options())[1] is not None
    malformed = [(e.get("reason"), e.get("source")) for e in h.recorder.of("dhcp.malformed")]
    reasons = ("too_short", "too_short", "bad_op", "not_request")     # the codec's exc.reason, then ours
    assert malformed == [(reason, "127.0.0.2") for reason in reasons]
    detail = h.recorder.of("dhcp.malformed")[1].get("detail")
    assert detail == "100 bytes: shorter than the 236-byte BOOTP header"


def test_notifications(harness):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(2)
    port = listener.getsockname()[1]
    h = harness()
    notifier = Notifier([("127.0.0.1", port)], h.events)
    h.events.subscribe(notifier)                                    # as cli.py does
    _, ack = h.client.dora(MAC1, pxe_options())
    assert listener.recv(512) == b"BOOT,12345678-abcd-ef00-1111-abcdefabcdef,52:54:00:12:34:56," + \
        ack.yiaddr.encode()
    h.client.dora(MAC1)                                             # OS phase: LEASE with the cached UUID
    assert listener.recv(512) == b"LEASE,12345678-abcd-ef00-1111-abcdefabcdef,52:54:00:12:34:56," + \
        ack.yiaddr.encode()
    h.client.send(h.client.packet(MAC1, MessageType.RELEASE, ciaddr=ack.yiaddr))
    assert listener.recv(512) == b"RELEASE,12345678-abcd-ef00-1111-abcdefabcdef,52:54:00:12:34:56," + \
        ack.yiaddr.encode()
    h.client.exchange(h.client.packet(MAC1, MessageType.INFORM, ciaddr=ack.yiaddr))  # an ACK, no address
    listener.settimeout(0.3)
    with pytest.raises(TimeoutError):                               # nothing for OFFERs or the INFORM
        listener.recv(512)
    assert [e.get("notice") for e in h.recorder.of("dhcp.notify")] == ["BOOT", "LEASE", "RELEASE"]
    notifier.close()
    listener.close()


class SlowAcl:
    """A real HTTP ACL server (gevent WSGI on loopback) that is slow for one MAC."""

    def __init__(self, slow_mac: str = "52-54-00-12-34-56", delay: float = 3.0) -> None:
        from gevent.pywsgi import WSGIServer

        self.slow_mac, self.delay, self.seen = slow_mac, delay, []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.location = f"127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        query = environ.get("QUERY_STRING", "")
        self.seen.append(environ["PATH_INFO"] + "?" + query)
        if self.slow_mac in query:
            gevent.sleep(self.delay)
        body = b"\nClient: rack-host\nFile: next.cfg\n"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.server.stop()


def test_slow_http_acl_delays_no_other_client(harness):
    """An ACL server that sleeps 3 s for one client: 100 others get their addresses meanwhile.

    The 101 clients start at once and each needs a call: ``max_calls`` is raised (strangers may
    hold three quarters of it: 192), so
    that none is refused (``acl_busy``, tested in test_dhcp_guard.py) and the only thing tested
    is that the slow call delays nobody else."""
    acl = SlowAcl()
    try:
        location = acl.location
        h = harness(bootpd="access = http\npool_count = 150",
                    extra=f"[http]\nlocation = {location}\npxe = boot\ndhcp = linux\ntimeout = 5\n",
                    http_acl=HttpAcl(location, "boot", "linux", timeout=5, max_calls=256))
        slow = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.0.3", timeout=6)
        started = time.monotonic()
        slow_greenlet = gevent.spawn(slow.dora, MAC1, pxe_options(), 6.0)
        gevent.sleep(0.05)
        fast_done = []

        def one(i: int) -> None:
            c = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.0.4")
            try:
                _, ack = c.dora(bytes.fromhex(f"52540001{i:04x}"), pxe_options())
                if ack is not None:
                    fast_done.append(time.monotonic())
            finally:
                c.close()

        gevent.joinall([gevent.spawn(one, i) for i in range(100)], timeout=20)
        slow_offer, slow_ack = slow_greenlet.get(timeout=10)
        slow_done = time.monotonic()
        slow.close()
        assert len(fast_done) == 100
        assert max(fast_done) < slow_done                 # every fast client finished before the slow one
        assert slow_ack is not None and slow_done - started >= 3
        assert any("mac=52-54-00-12-34-56&uuid=12345678-abcd-ef00-1111-abcdefabcdef" in p for p in acl.seen)
    finally:
        acl.close()


def test_retransmitted_discover_in_flight_is_dropped(harness):
    acl = SlowAcl()
    try:
        location = acl.location
        h = harness(bootpd="access = http", extra=f"[http]\nlocation = {location}\n",
                    http_acl=HttpAcl(location, "boot", "linux", timeout=5))
        discover = h.client.packet(MAC1, MessageType.DISCOVER, pxe_options())
        h.client.send(discover)
        gevent.sleep(0.2)
        h.client.send(discover)                           # the client resends while the ACL is slow
        first = h.client.recv(6)
        assert first is not None and first.message_type == MessageType.OFFER
        assert any(e.get("reason") == "in_flight" for e in h.recorder.of("dhcp.ignored"))
        _wait(lambda: h.server.pool.free_count() == h.server.pool.size)   # every exchange is over
        assert nothing_pending(h.client.sock, 2.0)                  # exactly one OFFER
    finally:
        acl.close()


def test_client_info_for_tftp_side(harness):
    h = harness()
    _, ack = h.client.dora(MAC1, pxe_options(arch=7))
    info = h.server.client_info(ack.yiaddr)
    assert info.mac == "52:54:00:12:34:56" and info.arch == 7
    assert info.uuid == "12345678-abcd-ef00-1111-abcdefabcdef"
    assert h.server.client_info("127.0.0.250") is None
    assert bytes_ip(ip_bytes(ack.yiaddr)) == ack.yiaddr


def assert_unanswered(h: Harness, packet, kind: str, **fields) -> None:
    """*packet* gets no reply, proven by outcomes rather than a quiet moment on the clock: the
    server's decision shows as a new *kind* event with *fields*, then every exchange is over
    (the pool is idle), and no reply has arrived (loopback delivers at ``sendto``)."""
    def decided() -> int:
        return sum(all(e.get(k) == v for k, v in fields.items()) for e in h.recorder.of(kind))

    before = decided()
    h.client.send(packet)
    _wait(lambda: decided() > before)
    _wait(lambda: h.server.pool.free_count() == h.server.pool.size)
    assert nothing_pending(h.client.sock, 2.0)


def _wait(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        gevent.sleep(0.01)



def test_option_13_from_the_file_layer(harness, tmp_path):
    from massboot.files import FileStore

    (tmp_path / "pxelinux.0").write_bytes(b"x" * 40000)
    files = FileStore(str(tmp_path), base_dir=str(tmp_path))
    try:
        h = harness(bootfile_size=files.size)
        offer, _ = h.client.dora(MAC1, pxe_options(arch=0))
        assert int.from_bytes(offer.option(Opt.BOOTFILE_SIZE), "big") == 79   # ceil(40000 / 512)
        offer, _ = h.client.dora(MAC2, pxe_options(arch=7))                   # shimx64.efi: unknown size
        assert offer.option(Opt.BOOTFILE_SIZE) is None
    finally:
        files.close()


def test_burst_of_1000_discovers_is_absorbed(harness):
    """1,000 DISCOVERs sent back to back, faster than the server answers: the receive buffer
    holds the burst and every one gets its OFFER without a retransmission."""
    from tests.conftest import require

    h = harness(bootpd="pool_count = 1100")
    actual = h.server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    require(actual >= 2 << 20, f"receive buffer is {actual} bytes: needs root or net.core.rmem_max >= 2M")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), 8 << 20)
    sink.bind(("127.0.0.5", 0))
    relay = RelayClient(("127.0.0.1", h.server.port), relay_ip="127.0.0.5")
    relay.sock.close()
    relay.sock = sink
    try:
        from massboot.dhcp.packet import encode

        datagrams = [encode(relay.packet(bytes.fromhex(f"5254ff{i:06x}"), MessageType.DISCOVER,
                                         pxe_options())) for i in range(1000)]
        for data in datagrams:             # no yield in between: a real burst
            sink.sendto(data, ("127.0.0.1", h.server.port))
        offers = set()
        while len(offers) < 1000:
            reply = relay.recv(5)
            if reply is None:
                break
            offers.add(reply.yiaddr)
        assert len(offers) == 1000
        assert not [e for e in h.recorder.of("dhcp.ignored") if e.get("reason") == "in_flight"]
    finally:
        sink.close()


def test_lease_store_failure_gets_no_ack_and_is_reported(harness):
    from massboot.dhcp.leases import LeaseStoreError

    h = harness()

    def failing_bind(*args, **kwargs):
        raise LeaseStoreError("disk full")

    h.store.bind = failing_bind
    offer, ack = h.client.dora(MAC1, pxe_options(), timeout=0.5)
    assert offer is not None and ack is None                  # never ACK a lease that is not stored
    _wait(lambda: h.recorder.of("dhcp.ignored"))
    assert [e.get("msgtype") for e in h.recorder.of("dhcp.received")] == ["discover", "request"]
    assert [e.get("reason") for e in h.recorder.of("dhcp.ignored")] == ["internal_error"]


def test_a_failed_commit_gets_no_ack_and_the_client_state_is_kept(harness, tmp_path):
    """Answered inline, a REQUEST's binding is decided at once and committed with its read
    batch; when that commit fails no ACK leaves, the outcome is reported as when the store
    raised, and the client's state is what it was (its retry is served as the first try)."""
    import sqlite3

    h = harness(db=str(tmp_path / "leases.sqlite3"))
    batch = h.store._db_batch
    failing = []

    def maybe_failing(items):
        if failing:
            raise sqlite3.OperationalError("disk I/O error")
        return batch(items)

    h.store._db_batch = maybe_failing
    offer = h.client.exchange(h.client.packet(MAC1, MessageType.DISCOVER, pxe_options()))
    assert offer is not None
    state = h.server.clients.get(mac_str(MAC1)).state
    failing.append(True)
    request = h.client.packet(MAC1, MessageType.REQUEST, pxe_options() + [
        (Opt.SERVER_ID, offer.option(Opt.SERVER_ID)), (Opt.REQUESTED_IP, ip_bytes(offer.yiaddr))])
    assert h.client.exchange(request, timeout=0.5) is None
    _wait(lambda: h.recorder.of("dhcp.ignored"))
    assert [e.get("reason") for e in h.recorder.of("dhcp.ignored")] == ["internal_error"]
    assert [e.get("msgtype") for e in h.recorder.of("dhcp.reply")] == ["offer"]
    assert [e.get("msgtype") for e in h.recorder.of("dhcp.received")] == ["discover", "request"]
    assert h.server.clients.get(mac_str(MAC1)).state == state
    assert h.server.workers()[0] == 0
    failing.clear()                                          # the disk is back: the retry is ACKed
    ack = h.client.exchange(request)
    assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == offer.yiaddr


def test_the_requests_of_one_read_batch_share_one_commit(harness, tmp_path):
    """A burst read in one go is decided inline and written by one transaction (or very few),
    not one per exchange; every client gets its OFFER, after that commit."""
    h = harness(bootpd="pool_size = 64", db=str(tmp_path / "leases.sqlite3"))
    batch = h.store._db_batch
    transactions = []

    def counting(items):
        transactions.append(len(items))
        return batch(items)

    h.store._db_batch = counting
    macs = [bytes.fromhex(f"0200c0de{i:04x}") for i in range(16)]     # the pool has 20 addresses
    for mac in macs:
        h.client.send(h.client.packet(mac, MessageType.DISCOVER, pxe_options()))
    offers = [h.client.recv(5) for _ in macs]
    assert all(o is not None and o.message_type == MessageType.OFFER for o in offers)
    assert sorted(bytes(o.mac) for o in offers) == sorted(macs)
    assert 1 <= len(transactions) <= 3, transactions
    assert {lease.mac for lease in h.store.leases()} >= {mac_str(m) for m in macs}


def test_a_full_exchange_pool_does_not_wait_for_the_commit_window(harness, tmp_path, monkeypatch):
    """Exchanges parked on their commit hold their slots; when every slot is held the read
    loop has the store commit at once instead of at the end of its window (README, "Lease
    database writes"), so a small ``pool_size`` never limits the rate to a pool per window."""
    from massboot.dhcp.leases import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "COMMIT_INTERVAL", 60.0)
    h = harness(bootpd="pool_size = 2", db=str(tmp_path / "leases.sqlite3"))
    first = h.client.exchange(h.client.packet(MAC1, MessageType.DISCOVER, pxe_options()))
    assert first is not None and first.message_type == MessageType.OFFER    # after a quiet spell
    macs = [bytes.fromhex(f"0200c0de{i:04x}") for i in range(3)]
    for mac in macs:              # two park within the window and fill the pool; the third waits
        h.client.send(h.client.packet(mac, MessageType.DISCOVER, pxe_options()))
    offers = [h.client.recv(5) for _ in macs[:2]]
    assert all(o is not None and o.message_type == MessageType.OFFER for o in offers), \
        "the parked exchanges waited for the commit window"
    assert sorted(bytes(o.mac) for o in offers) == sorted(macs[:2])
