"""The lease lifecycle on loopback, as the attack of issue #10 (README, "Lease lifecycle").

The server runs on 127.0.0.1 and the scripted clients act as relays (no root). Waits are on
the server's state and events, never on a quiet moment of the clock: an offer's hold is over
when the store says so.
"""

from __future__ import annotations

import os

import pytest

from massboot.dhcp.packet import MessageType, Opt, ip_bytes
from massboot.dhcp.probe import IcmpProber
from tests.conftest import require
from tests.loopback import test_dhcp_server
from tests.loopback.dhcpclient import pxe_options
from tests.loopback.test_dhcp_server import MAC1, _wait

SMALL_POOL = "pool_count = 10\noffer_hold = 1\nallow_simple_dhcp = on\n"


harness = test_dhcp_server.harness        # the fixture: a server on 127.0.0.1 and a relay client


def random_mac() -> bytes:
    return b"\x02" + os.urandom(5)


def test_a_flood_of_random_macs_holds_the_pool_for_the_offer_hold_only(harness):
    """Ten DISCOVERs from random MACs took a ten-address pool for ever; now for offer_hold."""
    h = harness(bootpd=SMALL_POOL)
    flood = [h.client.exchange(h.client.packet(random_mac(), MessageType.DISCOVER, pxe_options()))
             for _ in range(10)]
    assert all(offer is not None for offer in flood)
    assert h.store.counts() == (10, 10)
    offer, _ = h.client.dora(MAC1, pxe_options(), timeout=0.5)
    assert offer is None and h.recorder.of("dhcp.exhausted")          # full while the offers hold
    _wait(lambda: h.store.counts()[0] == 0, timeout=10)               # the hold is over
    served = 0
    for n in range(10):                                               # ten real clients
        _, ack = h.client.dora(bytes.fromhex(f"5254000100{n:02x}"), pxe_options())
        served += ack is not None and ack.message_type == MessageType.ACK
    assert served == 10
    assert h.store.stats().offers_expired == 10 and h.store.counts() == (10, 10)
    assert {lease.state for lease in h.store.leases()} == {"bound"}


def test_offers_of_a_flood_are_forgotten_across_a_restart(harness, tmp_path):
    db = str(tmp_path / "leases.sqlite3")
    h = harness(bootpd=SMALL_POOL, db=db)
    for _ in range(10):
        h.client.exchange(h.client.packet(random_mac(), MessageType.DISCOVER, pxe_options()))
    _, bound = h.client.dora(MAC1, pxe_options(), timeout=0.5)
    assert bound is None
    h.close()
    h2 = harness(bootpd=SMALL_POOL, db=db)
    _wait(lambda: h2.store.counts()[0] == 0, timeout=10)
    _, ack = h2.client.dora(MAC1, pxe_options())
    assert ack is not None and ack.yiaddr == "127.0.0.100"


def test_spoofed_declines_change_nothing(harness):
    h = harness(bootpd="pool_count = 10")
    _, ack = h.client.dora(MAC1, pxe_options())
    before = h.store.counts()
    spoofs = []
    for n in range(10):                       # one DECLINE per pool address, from anyone
        ip = f"127.0.0.{100 + n}"
        spoofs.append([(Opt.REQUESTED_IP, ip_bytes(ip))])
        spoofs.append([(Opt.REQUESTED_IP, ip_bytes(ip)), (Opt.SERVER_ID, ip_bytes("127.0.0.1"))])
    for n in range(20):                       # and addresses outside every pool
        spoofs.append([(Opt.REQUESTED_IP, ip_bytes(f"10.66.{n}.1"))])
    spoofs.append([(Opt.REQUESTED_IP, ip_bytes(ack.yiaddr)), (Opt.SERVER_ID, ip_bytes("127.0.0.9"))])
    for options in spoofs:
        h.client.send(h.client.packet(random_mac(), MessageType.DECLINE, options))
    # the holder itself, naming another server: refused too
    h.client.send(h.client.packet(MAC1, MessageType.DECLINE, [(Opt.REQUESTED_IP, ip_bytes(ack.yiaddr)),
                                                              (Opt.SERVER_ID, ip_bytes("127.0.0.9"))]))
    refused = lambda: [e for e in h.recorder.of("dhcp.ignored") if e.get("reason") == "decline_refused"]  # noqa: E731
    _wait(lambda: len(refused()) == len(spoofs) + 1)
    _wait(lambda: h.server.pool.free_count() == h.server.pool.size)
    assert not h.recorder.of("dhcp.declined")
    assert {e.get("detail") for e in refused()} == {"other_mac", "not_held", "outside_pool", "other_server"}
    assert h.store.counts() == before == (1, 10)
    renew = h.client.exchange(h.client.packet(MAC1, MessageType.REQUEST, ciaddr=ack.yiaddr))
    assert renew.message_type == MessageType.ACK and renew.yiaddr == ack.yiaddr
    for n in range(9):                        # and every other address is still there for others
        _, other = h.client.dora(bytes.fromhex(f"5254000200{n:02x}"), pxe_options())
        assert other is not None and other.yiaddr != ack.yiaddr


def test_the_icmp_prober_against_the_loopback():
    """The real socket: 127.0.0.1 answers an echo (unprivileged ICMP socket, else raw)."""
    prober = IcmpProber()
    answered = prober("127.0.0.1", 1.0)
    require(answered is not None, "no ICMP socket: needs net.ipv4.ping_group_range or CAP_NET_RAW")
    assert answered is True
    assert prober("127.0.0.53", 1.0) is True               # any 127/8 address answers


@pytest.mark.parametrize("probe", ["on", "off"])
def test_a_reclaimed_address_is_probed_by_the_server(harness, probe):
    """A pool on 127/8 is always "in use" (the loopback answers pings for any 127/8 address):
    with probe = on the server's real ICMP probe finds both reclaimed addresses answering and
    offers neither; with probe = off the reclaimed address is offered at once."""
    require(IcmpProber()("127.0.0.1", 1.0) is not None, "no ICMP socket")
    h = harness(bootpd=f"pool_count = 2\nlease_time = 1\nprobe = {probe}\nprobe_timeout = 1")
    macs = [bytes.fromhex("525400000301"), bytes.fromhex("525400000302")]
    for mac in macs:
        assert h.client.dora(mac, pxe_options())[1] is not None
    _wait(lambda: h.store.counts() == (0, 2), timeout=10)              # both leases expired
    newcomer = h.client.packet(bytes.fromhex("525400000399"), MessageType.DISCOVER, pxe_options())
    if probe == "off":
        offer = h.client.exchange(newcomer)
        assert offer.yiaddr == "127.0.0.100" and not h.recorder.of("dhcp.probe")
        return
    h.client.send(newcomer)
    _wait(lambda: h.recorder.of("dhcp.exhausted"), timeout=10)
    probes = [(e.get("ip"), e.get("result")) for e in h.recorder.of("dhcp.probe")]
    assert probes == [("127.0.0.100", "in_use"), ("127.0.0.101", "in_use")]
    assert h.store.counts() == (0, 0)                                   # both set aside a while
