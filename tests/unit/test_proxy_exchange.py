"""Proxy mode of the DHCP/PXE exchange, without sockets (README, "proxyDHCP").

Each case plays requests through :class:`Exchange` with no scope (proxy mode has no lease store)
the way the server does, and checks what would go on the wire: the reply, its fields and
options, where it goes and from which socket, and the events. The requests are built by hand,
taken from a real ROM (``golden/ipxe_discover.hex``: QEMU's iPXE) and built by scapy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from massboot.acl import AclResult, RuleTable, Verdict
from massboot.config import AclRule
from massboot.dhcp import packet as codec
from massboot.dhcp.exchange import AclQuery, Exchange, Outcome, Settings, classify
from massboot.dhcp.packet import BootpPacket, MessageType, Opt, decode_suboptions
from massboot.dhcp.policy import PXE_BOOT_ITEM, PXE_DISCOVERY_CONTROL, PXE_USE_BOOTFILE
from massboot.notify import notice_for
from tests.unit.test_exchange import BCAST, INF, MAC, MAC_S, UUID, D, Q, Run, os_pkt, pkt

SERVER = "10.0.0.1"
SITE = "10.0.0.2"               # the site DHCP server
CLIENT_IP = "10.0.0.57"          # the address the site server gave the client
GOLDEN = Path(__file__).parent / "golden"
R, L = MessageType.RELEASE, MessageType.DECLINE


class ProxyWorld:
    """A proxy-mode server's state: settings, client records, a scripted HTTP ACL."""

    def __init__(self, **settings: object) -> None:
        base: dict = dict(server_ip=SERVER, sname="boot.example", server_port=67, proxy=True,
                          default_bootfile="pxelinux.0", bootfiles={7: "shimx64.efi", 9: "shimx64.efi"},
                          ipxe_bootfile="http://10.0.0.1/boot.ipxe")
        base.update(settings)
        self.settings = Settings(**base)
        self.clients: dict = {}
        self.acl_answer = AclResult(Verdict.ALLOWED)
        self.queries: list[AclQuery] = []

    def __call__(self, packet: BootpPacket, source: tuple[str, int] = BCAST, bootserver: bool = False) -> Run:
        request = classify(packet, source, bootserver=bootserver)
        exchange = Exchange(self.settings, request, self.clients.get(request.mac), None)
        step = exchange.start()
        if exchange.client is not None:
            self.clients.setdefault(request.mac, exchange.client)
        query, events = None, []
        while not isinstance(step, Outcome):
            assert isinstance(step, AclQuery), "proxy mode never probes"
            events += [(e.kind, e.fields) for e in step.events]
            query = step
            self.queries.append(step)
            step = exchange.on_acl(self.acl_answer)
        events += [(e.kind, e.fields) for e in step.events]
        return Run(step, events, query)


def vendor43(reply: BootpPacket) -> dict[int, bytes]:
    value = reply.option(Opt.VENDOR_SPECIFIC)
    assert value is not None, "no option 43"
    return dict(decode_suboptions(value))


BOOTSERVER = (CLIENT_IP, 68)            # a REQUEST to port 4011 from the address the site gave
ITEM = bytes([0x80, 0x00, 0x00, 0x00])  # boot server type 0x8000, layer 0 (PXE 2.1 §2.4.5)


@dataclass(frozen=True)
class Case:
    name: str
    request: BootpPacket
    source: tuple[str, int] = BCAST
    bootserver: bool = False
    reply: MessageType | None = None
    dest: tuple[str, int] | None = None
    file: str | None = None
    no_reply: str | None = None
    ip: str = "0.0.0.0"                  # the dhcp.reply event's ip: what the client reported
    settings: tuple[tuple[str, object], ...] = ()


BOOTFILE = (("proxy_redirect", False),)     # proxy_offer = bootfile


CASES = [
    Case("bios-discover-redirect-offer", pkt(D, arch=0), reply=MessageType.OFFER,
         dest=("255.255.255.255", 68)),
    Case("uefi-discover-redirect-offer", pkt(D, arch=7), reply=MessageType.OFFER,
         dest=("255.255.255.255", 68)),
    Case("bios-discover-bootfile-offer", pkt(D, arch=0), reply=MessageType.OFFER,
         dest=("255.255.255.255", 68), file="pxelinux.0", settings=BOOTFILE),
    Case("uefi-discover-bootfile-offer-by-arch", pkt(D, arch=7), reply=MessageType.OFFER,
         dest=("255.255.255.255", 68), file="shimx64.efi", settings=BOOTFILE),
    Case("ipxe-second-stage", pkt(D, arch=0, ipxe=True), reply=MessageType.OFFER,
         dest=("255.255.255.255", 68), file="http://10.0.0.1/boot.ipxe", settings=BOOTFILE),
    Case("ipxe-second-stage-ack", pkt(Q, arch=0, ipxe=True, ciaddr=CLIENT_IP), BOOTSERVER, True,
         reply=MessageType.ACK, dest=BOOTSERVER, file="http://10.0.0.1/boot.ipxe", ip=CLIENT_IP),
    Case("bootserver-request-ack", pkt(Q, ciaddr=CLIENT_IP), BOOTSERVER, True, reply=MessageType.ACK,
         dest=BOOTSERVER, file="pxelinux.0", ip=CLIENT_IP),
    Case("bootserver-inform-ack", pkt(INF, ciaddr=CLIENT_IP), BOOTSERVER, True, reply=MessageType.ACK,
         dest=BOOTSERVER, file="pxelinux.0", ip=CLIENT_IP),
    Case("bootserver-request-without-address", pkt(Q), BCAST, True, reply=MessageType.ACK,
         dest=("255.255.255.255", 68), file="pxelinux.0"),
    Case("bootserver-uefi", pkt(Q, arch=9, ciaddr=CLIENT_IP), (CLIENT_IP, 1025), True,
         reply=MessageType.ACK, dest=(CLIENT_IP, 1025), file="shimx64.efi", ip=CLIENT_IP),
    Case("port67-request-naming-us", pkt(Q, sid=SERVER), reply=MessageType.ACK,
         dest=("255.255.255.255", 68), file="pxelinux.0"),
    Case("relayed-discover", pkt(D, giaddr="10.9.0.1"), ("10.9.0.1", 67), reply=MessageType.OFFER,
         dest=("10.9.0.1", 67)),
    Case("relayed-bootserver-request", pkt(Q, giaddr="10.9.0.1", ciaddr="10.9.0.77"), ("10.9.0.1", 67),
         True, reply=MessageType.ACK, dest=("10.9.0.1", 67), file="pxelinux.0", ip="10.9.0.77"),
    Case("request-for-site-server", pkt(Q, sid=SITE, want=CLIENT_IP), no_reply="site_server"),
    Case("port67-request-without-server-id", pkt(Q, want=CLIENT_IP), no_reply="proxy_unhandled"),
    Case("discover-on-bootserver-port", pkt(D), BCAST, True, no_reply="proxy_unhandled"),
    Case("release", pkt(R, ciaddr=CLIENT_IP), BOOTSERVER, no_reply="proxy_unhandled"),
    Case("decline", pkt(L, want=CLIENT_IP), no_reply="proxy_unhandled"),
    Case("plain-bootp", pkt(None), no_reply="proxy_unhandled"),
    Case("os-discover", os_pkt(D), no_reply="not_boot_client"),
    Case("os-request", os_pkt(Q, sid=SITE, want=CLIENT_IP), no_reply="not_boot_client"),
    Case("os-request-on-bootserver-port", os_pkt(Q, ciaddr=CLIENT_IP), BOOTSERVER, True,
         no_reply="not_boot_client"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_proxy_exchange(case: Case) -> None:
    run = ProxyWorld(**dict(case.settings))(case.request, case.source, case.bootserver)
    if case.no_reply is not None:
        assert run.outcome.reply is None and run.outcome.no_reply == case.no_reply
        assert run.event("dhcp.ignored")["reason"] == case.no_reply
        assert not [k for k, _ in run.events if k == "dhcp.reply"]
        return
    reply = run.reply
    assert reply is not None and reply.message_type == case.reply
    dest = run.outcome.destination
    assert dest is not None and (dest.address, dest.port) == case.dest
    assert dest.bootserver is case.bootserver          # answered from the socket it came in on
    # never an address, a lease or the site's network settings (README, "proxyDHCP")
    assert reply.yiaddr == "0.0.0.0" and run.outcome.assigned is None and run.outcome.lease is None
    for code in (Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS, Opt.LEASE_TIME, Opt.RENEWAL_T1, Opt.REBINDING_T2):
        assert reply.option(code) is None, f"option {code} in a proxy reply"
    assert reply.ciaddr == case.request.ciaddr and reply.giaddr == case.request.giaddr
    assert reply.xid == case.request.xid and reply.mac == MAC
    assert reply.server_id == SERVER and reply.siaddr == SERVER
    assert reply.vendor_class == "PXEClient"
    assert reply.option(Opt.CLIENT_UUID) == case.request.option(Opt.CLIENT_UUID)
    event = run.event("dhcp.reply")
    assert event["proxy"] is True and event["phase"] == "pxe" and event["file"] == case.file
    if case.file is None:        # proxy_offer = redirect: the ROM must ask on 4011 (iPXE, EDK2)
        assert reply.file == b"" and reply.sname == b""
        for code in (Opt.BOOTFILE, Opt.TFTP_SERVER, Opt.VENDOR_SPECIFIC, Opt.BOOTFILE_SIZE):
            assert reply.option(code) is None, f"option {code} in a redirect offer"
    else:
        assert reply.file.decode() == case.file and reply.option(Opt.BOOTFILE) == case.file.encode()
        assert reply.option(Opt.TFTP_SERVER) == SERVER.encode()
        assert vendor43(reply) == {PXE_DISCOVERY_CONTROL: bytes([PXE_USE_BOOTFILE])}
    assert event["ip"] == case.ip and event["msgtype"] == case.reply.name.lower()
    assert run.outcome.reported == (None if case.ip == "0.0.0.0" else case.ip)


def test_bootserver_request_with_a_boot_item_gets_it_back() -> None:
    """PXE 2.1 §2.4.5: a boot-server REQUEST naming a boot item (43.71) gets the item back."""
    item43 = bytes([PXE_BOOT_ITEM, 4]) + ITEM + b"\xff"
    request = pkt(Q, ciaddr=CLIENT_IP, options=((Opt.VENDOR_SPECIFIC, item43),))
    run = ProxyWorld()(request, BOOTSERVER, bootserver=True)
    assert run.reply is not None and vendor43(run.reply) == {PXE_BOOT_ITEM: ITEM}
    # the same item on port 67 is not a boot-server request: discovery control as in an offer
    run = ProxyWorld()(pkt(Q, sid=SERVER, options=((Opt.VENDOR_SPECIFIC, bytes([PXE_BOOT_ITEM, 4]) + ITEM),)))
    assert run.reply is not None and PXE_BOOT_ITEM not in vendor43(run.reply)


def test_a_broken_option_43_is_no_boot_item() -> None:
    broken = ((Opt.VENDOR_SPECIFIC, bytes([PXE_BOOT_ITEM, 9, 1])),)
    run = ProxyWorld()(pkt(Q, ciaddr=CLIENT_IP, options=broken), BOOTSERVER, bootserver=True)
    assert run.reply is not None and vendor43(run.reply) == {PXE_DISCOVERY_CONTROL: bytes([PXE_USE_BOOTFILE])}


def http_discover(arch: int = 16) -> BootpPacket:
    """A UEFI HTTP Boot DISCOVER (option 60 ``HTTPClient``, as OVMF sends it)."""
    request = pkt(D, arch=arch, options=())
    http = f"HTTPClient:Arch:{arch:05d}:UNDI:003001".encode()
    return BootpPacket(op=request.op, xid=request.xid, chaddr=request.chaddr, options=tuple(
        (c, http if c == Opt.VENDOR_CLASS else v) for c, v in request.options))


def test_http_client_gets_a_proxy_offer_with_its_url() -> None:
    """UEFI HTTP Boot in proxy mode: option 60 HTTPClient and the URL, no address, no option 43,
    never redirected to 4011 (EDK2 has no boot-server step): the PXE twin's entry (16 -> 7)."""
    world = ProxyWorld(http_base="http://10.0.0.1:8080/")
    request = http_discover(16)
    assert classify(request, BCAST).boot_client and classify(request, BCAST).http_client
    run = world(request)
    reply = run.reply
    assert reply is not None and reply.message_type == MessageType.OFFER
    assert reply.yiaddr == "0.0.0.0" and reply.vendor_class == "HTTPClient"
    assert reply.option(Opt.BOOTFILE) == b"http://10.0.0.1:8080/shimx64.efi"
    assert reply.file == b"http://10.0.0.1:8080/shimx64.efi"
    assert reply.option(Opt.VENDOR_SPECIFIC) is None and reply.option(Opt.LEASE_TIME) is None
    assert run.event("dhcp.reply")["http"] is True and run.event("dhcp.reply")["proxy"] is True


def test_http_client_without_an_http_boot_file_gets_nothing_in_proxy_mode() -> None:
    """No -H and a file name as the entry, or an architecture without one: no answer, counted."""
    run = ProxyWorld()(http_discover(16))          # no http_base: shimx64.efi has no URL
    assert run.reply is None and run.outcome.no_reply == "no_http_bootfile"
    run = ProxyWorld(http_base="http://10.0.0.1/")(http_discover(19))     # no [bootfile] 19 or 11
    assert run.reply is None and run.outcome.no_reply == "no_http_bootfile"


def test_mac_acl_in_proxy_mode() -> None:
    listed = AclRule.mac("52-54-00-12-34-56", True)
    world = ProxyWorld(access="mac", mac_acl=RuleTable([listed]))
    assert world(pkt(D)).reply is not None
    other = bytes.fromhex("5254000000aa")
    run = world(pkt(D, mac=other))
    assert run.reply is None and run.outcome.no_reply == "denied"
    assert run.event("dhcp.acl")["verdict"] == "denied"


def test_http_acl_in_proxy_mode_is_asked_once_per_boot_with_the_reported_address() -> None:
    world = ProxyWorld(access="http")
    offer = world(pkt(D))
    assert offer.query is not None and offer.query.pxe is True and offer.query.ip is None
    ack = world(pkt(Q, ciaddr=CLIENT_IP), BOOTSERVER, bootserver=True)
    assert ack.reply is not None and ack.query is None           # same phase: not asked again
    world.acl_answer = AclResult(Verdict.DENIED, reason="nope")
    world.clients.clear()                                        # a new client record: asked
    denied = world(pkt(Q, ciaddr=CLIENT_IP), BOOTSERVER, bootserver=True)
    assert denied.query is not None and denied.query.ip == CLIENT_IP
    assert denied.reply is None and denied.outcome.no_reply == "denied"


def test_site_server_request_tells_the_address_of_a_client_we_offered_to() -> None:
    """The REQUEST for the site's offer carries the address (option 50): kept, no reply."""
    world = ProxyWorld(proxy_redirect=False)
    before = world(pkt(Q, sid=SITE, want=CLIENT_IP))        # no proxy OFFER yet: not taken
    assert before.outcome.reported is None and "ip" not in before.event("dhcp.ignored")
    world(pkt(D))
    run = world(pkt(Q, sid=SITE, want=CLIENT_IP))
    assert run.outcome.reply is None and run.outcome.reported == CLIENT_IP
    expected = {"mac": MAC_S, "reason": "site_server", "phase": "pxe", "ip": CLIENT_IP}
    assert run.event("dhcp.ignored") == expected
    assert world.clients[MAC_S].ip == CLIENT_IP


def test_notification_and_tftp_address_follow_the_reported_address() -> None:
    world = ProxyWorld()
    offer = world(pkt(D))
    assert [n for k, f in offer.events if (n := notice_for(k, f))] == []     # no address: no BOOT
    ack = world(pkt(Q, ciaddr=CLIENT_IP), BOOTSERVER, bootserver=True)
    assert [n for k, f in ack.events if (n := notice_for(k, f))] == [("BOOT", MAC_S, CLIENT_IP, UUID)]
    assert world.clients[MAC_S].ip == CLIENT_IP


def test_proxy_golden_ipxe_discover() -> None:
    """QEMU's iPXE ROM DISCOVER (golden/ipxe_discover.hex) gets a proxy OFFER iPXE accepts: option
    60 PXEClient and option 54 (iPXE's test for a proxy offer), no address, the BIOS boot file."""
    raw = bytes.fromhex((GOLDEN / "ipxe_discover.hex").read_text().strip())
    request = codec.decode(raw)
    redirect = ProxyWorld(ipxe_bootfile=None)(request).reply
    assert redirect is not None and redirect.file == b"" and redirect.server_id == SERVER
    assert redirect.vendor_class == "PXEClient" and redirect.option(Opt.VENDOR_SPECIFIC) is None
    world = ProxyWorld(ipxe_bootfile=None, proxy_redirect=False)
    run = world(request)
    reply = run.reply
    assert reply is not None and reply.message_type == MessageType.OFFER
    assert reply.yiaddr == "0.0.0.0" and reply.server_id == SERVER and reply.vendor_class == "PXEClient"
    assert reply.file == b"pxelinux.0" and reply.siaddr == SERVER
    assert reply.option(Opt.CLIENT_UUID) == request.option(Opt.CLIENT_UUID)
    # scapy reads our OFFER the same way
    theirs = BOOTP(codec.encode(run.outcome.reply))
    options = {o[0]: o[1:] for o in theirs[DHCP].options if isinstance(o, tuple)}
    assert options["message-type"] == (2,) and options["server_id"] == (SERVER,)
    assert options["vendor_class_id"] == (b"PXEClient",)
    assert theirs.yiaddr == "0.0.0.0" and theirs.siaddr == SERVER
    assert theirs.file.rstrip(b"\0") == b"pxelinux.0"
    assert "lease_time" not in options and "subnet_mask" not in options
    # iPXE's second stage (the same ROM, user class iPXE) gets ipxe_boot_file
    assert ProxyWorld(proxy_redirect=False)(request).reply.file == b"http://10.0.0.1/boot.ipxe"


def test_proxy_scapy_built_bootserver_request() -> None:
    """A boot-server REQUEST built by scapy (as a ROM sends it to port 4011) gets the ACK."""
    uuid17 = b"\0" + bytes(range(16))
    built = BOOTP(op=1, xid=0xCAFE, ciaddr=CLIENT_IP, chaddr=MAC) / DHCP(options=[
        ("message-type", "request"), ("param_req_list", [1, 3, 43, 60, 66, 67]),
        ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"), (97, uuid17),
        ("vendor_specific", bytes([PXE_BOOT_ITEM, 4]) + ITEM + b"\xff"), "end"])
    request = codec.decode(bytes(built))
    run = ProxyWorld()(request, BOOTSERVER, bootserver=True)
    assert run.outcome.reply is not None
    theirs = BOOTP(codec.encode(run.outcome.reply))
    options = {o[0]: o[1:] for o in theirs[DHCP].options if isinstance(o, tuple)}
    assert options["message-type"] == (5,) and options["server_id"] == (SERVER,)
    assert theirs.xid == 0xCAFE and theirs.ciaddr == CLIENT_IP and theirs.yiaddr == "0.0.0.0"
    assert theirs.file.rstrip(b"\0") == b"shimx64.efi"
    assert run.reply is not None and run.reply.option(Opt.CLIENT_UUID) == uuid17
    assert dict(decode_suboptions(options["vendor_specific"][0])) == {PXE_BOOT_ITEM: ITEM}



# ---------------------------------------------------------------- real ROMs (golden/README.txt)

ROMS = [
    # (name, DISCOVER file, REQUEST file, the request's source, boot file by its architecture)
    ("ipxe", "ipxe_proxy_discover", "ipxe_proxy_request", ("10.79.0.111", 68), "pxelinux.0"),
    ("ovmf", "ovmf_proxy_discover", "ovmf_proxy_request", ("10.79.0.112", 4011), "shimx64.efi"),
]


def golden(name: str) -> BootpPacket:
    return codec.decode(bytes.fromhex((GOLDEN / f"{name}.hex").read_text().strip()))


def scapy_options(raw: bytes) -> tuple[BOOTP, dict]:
    theirs = BOOTP(raw)
    return theirs, {o[0]: o[1:] for o in theirs[DHCP].options if isinstance(o, tuple)}


@pytest.mark.parametrize("name, discover, bootserver_request, source, file", ROMS, ids=[r[0] for r in ROMS])
def test_real_rom_proxy_exchange(name: str, discover: str, bootserver_request: str,
                                 source: tuple[str, int], file: str) -> None:
    """A real ROM's DISCOVER gets the redirect OFFER, its REQUEST to 4011 the ACK with its boot
    file; scapy reads both replies as we mean them."""
    world = ProxyWorld(ipxe_bootfile=None, bootfile_size=lambda name, ip: 70_000)
    rom_discover, rom_request = golden(discover), golden(bootserver_request)
    offer = world(rom_discover)
    assert offer.outcome.reply is not None
    dest = offer.outcome.destination
    assert dest is not None and (dest.address, dest.port, dest.bootserver) == ("255.255.255.255", 68, False)
    theirs, options = scapy_options(codec.encode(offer.outcome.reply))
    assert options["message-type"] == (2,) and options["server_id"] == (SERVER,)
    assert options["vendor_class_id"] == (b"PXEClient",)
    assert theirs.xid == rom_discover.xid and theirs.yiaddr == "0.0.0.0" and theirs.siaddr == SERVER
    assert theirs.file.rstrip(b"\0") == b"" and "vendor_specific" not in options
    assert not {"lease_time", "subnet_mask", "router", "name_server"} & set(options)

    ack = world(rom_request, source, bootserver=True)
    assert ack.outcome.reply is not None
    dest = ack.outcome.destination
    assert dest is not None and (dest.address, dest.port, dest.bootserver) == (*source, True)
    theirs, options = scapy_options(codec.encode(ack.outcome.reply))
    assert options["message-type"] == (5,) and options["server_id"] == (SERVER,)
    assert theirs.xid == rom_request.xid and theirs.ciaddr == rom_request.ciaddr == source[0]
    assert theirs.yiaddr == "0.0.0.0" and theirs.siaddr == SERVER
    assert theirs.file.rstrip(b"\0") == file.encode()
    assert dict(decode_suboptions(ack.outcome.reply.option(Opt.VENDOR_SPECIFIC))) == {
        PXE_DISCOVERY_CONTROL: bytes([PXE_USE_BOOTFILE])}
    assert ack.outcome.reply.option(Opt.CLIENT_UUID) == rom_request.option(Opt.CLIENT_UUID)
    if Opt.BOOTFILE_SIZE in rom_request.requested_params:          # EDK2 asks for option 13
        assert ack.outcome.reply.option(Opt.BOOTFILE_SIZE) == (137).to_bytes(2, "big")
    assert ack.outcome.reported == source[0]
    assert [n for k, f in ack.events if (n := notice_for(k, f))] == [
        ("BOOT", rom_request.mac.hex(":").upper(), source[0], rom_request.uuid)]
