"""The DHCP/PXE exchange without sockets (massboot.dhcp.exchange).

Each case runs requests through :class:`Exchange` the way the server does, against memory
lease stores, and checks what would go on the wire: the reply and its options, where it goes,
the events, the lease store and the client record.
"""

from __future__ import annotations

import ipaddress
import uuid as uuid_module
from dataclasses import dataclass, field

import pytest

from massboot.acl import AclResult, RuleTable, Verdict
from massboot.config import AclRule
from massboot.dhcp import packet as codec
from massboot.dhcp.exchange import AclQuery, Exchange, Outcome, Scope, Settings, classify, select_scope
from massboot.dhcp.leases import BOUND, OFFERED, RELEASED, MemoryLeaseStore
from massboot.dhcp.packet import BOOTREQUEST, FLAG_BROADCAST, BootpPacket, MessageType, Opt, ip_bytes, u8
from massboot.dhcp.policy import Network, RequestKind, State
from massboot.events import ACL_NO_UUID
from massboot.notify import notice_for

SERVER = "10.0.0.1"
MAC = bytes.fromhex("525400123456")
MAC_S = "52:54:00:12:34:56"
OTHER = bytes.fromhex("5254000000aa")
STATIC = bytes.fromhex("5254000000ee")
STATIC_S = "52:54:00:00:00:EE"
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"
POOL = ["10.0.0.100", "10.0.0.101", "10.0.0.102", "10.0.0.103"]
RACK_POOL = ["10.9.0.10", "10.9.0.11"]
PARAMS = bytes([1, 3, 6, 12, 13, 43, 54, 60, 66, 67])
AGENT = bytes([1, 4]) + b"sw12" + bytes([2, 2]) + b"p7"
BCAST = ("0.0.0.0", 68)                     # a client without an address, broadcasting
LIMITED = ("255.255.255.255", 68)
SUBNET_BCAST = ("10.0.0.255", 68)

D, Q, A, N, R, L, INF = (MessageType.DISCOVER, MessageType.REQUEST, MessageType.ACK, MessageType.NAK,
                         MessageType.RELEASE, MessageType.DECLINE, MessageType.INFORM)


def pkt(msgtype: int | None = D, *, mac: bytes = MAC, pxe: bool = True, arch: int | None = 0,
        uuid: str | None = UUID, ipxe: bool = False, sid: str | None = None, want: str | None = None,
        options=(), **fields) -> BootpPacket:
    """A request as firmware (pxe) or an OS DHCP client sends it."""
    opts: list[tuple[int, bytes]] = [] if msgtype is None else [(Opt.MESSAGE_TYPE, u8(msgtype))]
    opts.append((Opt.PARAM_REQUEST, PARAMS))
    if pxe:
        opts.append((Opt.VENDOR_CLASS, b"PXEClient" if arch is None else
                     f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()))
        if arch is not None:
            opts.append((Opt.CLIENT_ARCH, arch.to_bytes(2, "big")))
        if uuid:
            opts.append((Opt.CLIENT_UUID, b"\0" + uuid_module.UUID(uuid).bytes))
    if ipxe:
        opts.append((Opt.USER_CLASS, b"\x04iPXE"))
    if sid:
        opts.append((Opt.SERVER_ID, ip_bytes(sid)))
    if want:
        opts.append((Opt.REQUESTED_IP, ip_bytes(want)))
    return BootpPacket(op=BOOTREQUEST, xid=0x1234, chaddr=MAC if mac is None else mac,
                       options=tuple(opts) + tuple(options), **fields)


def os_pkt(msgtype: int | None = D, **kw) -> BootpPacket:
    return pkt(msgtype, pxe=False, **kw)


@dataclass
class Run:
    """One request's result: the outcome plus every event, the ACL step's included."""

    outcome: Outcome
    events: list[tuple[str, dict]]
    query: AclQuery | None

    @property
    def reply(self) -> BootpPacket | None:
        # what goes on the wire, read back as a client would
        return None if self.outcome.reply is None else codec.decode(codec.encode(self.outcome.reply))

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def event(self, kind: str) -> dict:
        (fields,) = [f for k, f in self.events if k == kind]
        return fields

    @property
    def notices(self) -> list[tuple[str, str, str, str | None]]:
        # what the Notifier, subscribed to the bus, sends for these events (README, "Notifications")
        return [n for k, f in self.events if (n := notice_for(k, f)) is not None]

    @property
    def dest(self) -> tuple[str, int] | None:
        d = self.outcome.destination
        return None if d is None else (d.address, d.port)


@dataclass
class World:
    """The server's state around exchanges: settings, scopes, client records, a scripted ACL."""

    settings: Settings
    pool: list[str] = field(default_factory=lambda: list(POOL))
    reservations: dict[str, str] = field(default_factory=dict)      # [static_dhcp]
    acl_answer: AclResult = field(default_factory=lambda: AclResult(Verdict.ALLOWED))
    clients: dict = field(default_factory=dict)          # MAC → Client, as the server keeps them
    queries: list[AclQuery] = field(default_factory=list)
    store_options: dict = field(default_factory=dict)    # offer_hold, reclaim, clock...
    probe_answers: list = field(default_factory=list)    # what the scripted pings answer (then False)
    probes: list = field(default_factory=list)           # the ProbeQuery steps asked

    def __post_init__(self) -> None:
        self.main = Scope("main", MemoryLeaseStore(self.pool, self.reservations, **self.store_options),
                          Network(SERVER, "255.255.255.0", "10.0.0.254", ("10.0.0.53", "10.0.0.54"), 3600),
                          ipaddress.IPv4Network("10.0.0.0/24"))
        self.rack = Scope("rack2", MemoryLeaseStore(RACK_POOL),
                          Network(SERVER, "255.255.255.0", "10.9.0.1", (), 600),
                          ipaddress.IPv4Network("10.9.0.0/24"))

    def __call__(self, packet: BootpPacket, source: tuple[str, int] = BCAST) -> Run:
        request = classify(packet, source)
        exchange = Exchange(self.settings, request, self.clients.get(request.mac),
                            select_scope(packet, self.main, [self.rack]))
        step = exchange.start()
        if exchange.client is not None:
            self.clients.setdefault(request.mac, exchange.client)
        query, events = None, []
        while not isinstance(step, Outcome):       # as the server does
            events += [(e.kind, e.fields) for e in step.events]
            if isinstance(step, AclQuery):
                query = step
                self.queries.append(step)
                step = exchange.on_acl(self.acl_answer)
            else:
                self.probes.append(step)
                step = exchange.on_probe(self.probe_answers.pop(0) if self.probe_answers else False)
        events += [(e.kind, e.fields) for e in step.events]
        return Run(step, events, query)

    def client(self, mac: str = MAC_S):
        return self.clients[mac]

    def dora(self, mac: bytes = MAC, **kw) -> Run:
        offer = self(pkt(D, mac=mac, **kw))
        assert offer.outcome.reply is not None
        return self(pkt(Q, mac=mac, sid=SERVER, want=offer.outcome.reply.yiaddr, **kw))


def world(**settings) -> World:
    extra = {k: settings.pop(k) for k in ("pool", "reservations", "acl_answer", "store_options")
             if k in settings}
    base = dict(server_ip=SERVER, sname="boot.example", server_port=67, default_bootfile="pxelinux.0",
                bootfiles={7: "shimx64.efi", 9: "shimx64.efi"})
    base.update(settings)
    return World(Settings(**base), **extra)


def opt_u32(reply: BootpPacket, code: int) -> int | None:
    value = reply.option(code)
    return None if value is None else int.from_bytes(value, "big")


# ---------------------------------------------------------------- RFC 2131 message flows

@dataclass(frozen=True)
class Flow:
    """Requests played first (their results unchecked), then the request under test."""

    name: str
    before: tuple[tuple[BootpPacket, tuple[str, int]], ...]
    request: BootpPacket
    source: tuple[str, int] = BCAST
    settings: tuple[tuple[str, object], ...] = ()
    reply: MessageType | str | None = None     # "bootp": a reply without option 53
    yiaddr: str | None = None
    dest: tuple[str, int] | None = None
    no_reply: str | None = None
    events: tuple[str, ...] = ()
    lease: tuple[str, str] | None = None       # (ip, state) of MAC's lease afterwards; ("", "") none


DISC = (pkt(D), BCAST)
SELECT = (pkt(Q, sid=SERVER, want="10.0.0.100"), BCAST)
BOUND_100 = (DISC, SELECT)
SIMPLE = (("allow_simple_dhcp", True),)
RECV_REPLY = ("dhcp.received", "dhcp.reply")

FLOWS = [
    Flow("discover-offer", (), pkt(D), reply=MessageType.OFFER, yiaddr="10.0.0.100", dest=SUBNET_BCAST,
         events=RECV_REPLY, lease=("10.0.0.100", OFFERED)),
    Flow("discover-broadcast-flag", (), pkt(D, flags=FLAG_BROADCAST), reply=MessageType.OFFER,
         yiaddr="10.0.0.100", dest=LIMITED, events=RECV_REPLY),
    Flow("discover-again-same-address", (DISC,), pkt(D), reply=MessageType.OFFER, yiaddr="10.0.0.100",
         dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", OFFERED)),
    Flow("selecting-ack", (DISC,), pkt(Q, sid=SERVER, want="10.0.0.100"), reply=A, yiaddr="10.0.0.100",
         dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("selecting-without-option-50", (DISC,), pkt(Q, sid=SERVER), reply=A, yiaddr="10.0.0.100",
         dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("selecting-wrong-address-nak", (DISC,), pkt(Q, sid=SERVER, want="10.0.0.103"), reply=N,
         yiaddr="0.0.0.0", dest=LIMITED, events=RECV_REPLY, lease=("10.0.0.100", OFFERED)),
    Flow("selecting-other-server-ignored", (DISC,), pkt(Q, sid="10.0.0.9", want="10.0.0.100"),
         no_reply="other_server", events=("dhcp.received", "dhcp.ignored"), lease=("10.0.0.100", OFFERED)),
    Flow("init-reboot-ack", BOUND_100, pkt(Q, want="10.0.0.100"), reply=A, yiaddr="10.0.0.100",
         dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("init-reboot-wrong-nak", BOUND_100, pkt(Q, want="10.0.0.102"), reply=N, yiaddr="0.0.0.0",
         dest=LIMITED, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("init-reboot-no-binding-ack", (), os_pkt(Q, want="10.0.0.100"), settings=SIMPLE, reply=A,
         yiaddr="10.0.0.100", dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("init-reboot-no-binding-nak-keeps-offer", (), os_pkt(Q, want="10.0.0.102"), settings=SIMPLE,
         reply=N, yiaddr="0.0.0.0", dest=LIMITED, events=RECV_REPLY, lease=("10.0.0.100", OFFERED)),
    Flow("renewing-unicast-ack", BOUND_100, pkt(Q, ciaddr="10.0.0.100"), source=("10.0.0.100", 68),
         reply=A, yiaddr="10.0.0.100", dest=("10.0.0.100", 68), events=RECV_REPLY,
         lease=("10.0.0.100", BOUND)),
    Flow("renewing-wrong-address-nak", BOUND_100, pkt(Q, ciaddr="10.0.0.102"), source=("10.0.0.102", 68),
         reply=N, yiaddr="0.0.0.0", dest=LIMITED, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("rebinding-ack", BOUND_100, pkt(Q, ciaddr="10.0.0.100"), reply=A, yiaddr="10.0.0.100",
         dest=("10.0.0.100", 68), events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("rebinding-our-subnet-wrong-address-nak", BOUND_100, pkt(Q, ciaddr="10.0.0.102"), reply=N,
         yiaddr="0.0.0.0", dest=LIMITED, events=RECV_REPLY),
    Flow("rebinding-foreign-address-ignored", BOUND_100, pkt(Q, ciaddr="192.168.5.5"),
         no_reply="not_our_address", events=("dhcp.received", "dhcp.ignored"), lease=("10.0.0.100", BOUND)),
    Flow("request-without-anything-ack", (DISC,), pkt(Q), reply=A, yiaddr="10.0.0.100", dest=SUBNET_BCAST,
         events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("inform-ack-without-address", BOUND_100, pkt(INF, ciaddr="10.0.0.100"), source=("10.0.0.100", 68),
         reply=A, yiaddr="0.0.0.0", dest=("10.0.0.100", 68), events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("release-keeps-binding", BOUND_100, pkt(R, ciaddr="10.0.0.100"), source=("10.0.0.100", 68),
         no_reply="released", events=("dhcp.received", "dhcp.released"), lease=("10.0.0.100", RELEASED)),
    Flow("release-without-ciaddr", BOUND_100, pkt(R), no_reply="released",
         events=("dhcp.received", "dhcp.released"), lease=("10.0.0.100", RELEASED)),
    Flow("release-of-another-address", BOUND_100, pkt(R, ciaddr="10.0.0.103"), no_reply="released",
         events=("dhcp.received", "dhcp.released"), lease=("10.0.0.100", BOUND)),
    Flow("release-unknown-client", (), pkt(R), no_reply="released", events=("dhcp.received",),
         lease=("", "")),
    Flow("decline-drops-binding", BOUND_100, pkt(L, want="10.0.0.100"), no_reply="declined",
         events=("dhcp.received", "dhcp.declined"), lease=("", "")),
    Flow("decline-of-an-address-not-held-refused", BOUND_100, pkt(L, want="10.0.0.103"),
         no_reply="decline_refused", events=("dhcp.received", "dhcp.ignored"), lease=("10.0.0.100", BOUND)),
    Flow("decline-without-option-50", (DISC,), pkt(L), no_reply="declined",
         events=("dhcp.received", "dhcp.declined"), lease=("", "")),
    Flow("bootp-answered-and-bound", (), os_pkt(None), settings=SIMPLE, reply="bootp", yiaddr="10.0.0.100",
         dest=SUBNET_BCAST, events=RECV_REPLY, lease=("10.0.0.100", BOUND)),
    Flow("bootp-from-idle-not-allowed", (), os_pkt(None), no_reply="idle_state",
         events=("dhcp.received", "dhcp.ignored"), lease=("", "")),
    Flow("bootp-after-pxe-not-allowed", (DISC,), os_pkt(None), no_reply="bootp_not_allowed",
         events=("dhcp.received", "dhcp.ignored"), lease=("10.0.0.100", OFFERED)),
    Flow("os-discover-from-idle-ignored", (), os_pkt(D), no_reply="idle_state",
         events=("dhcp.received", "dhcp.ignored"), lease=("", "")),
    Flow("os-discover-simple-dhcp", (), os_pkt(D), settings=SIMPLE, reply=MessageType.OFFER,
         yiaddr="10.0.0.100", dest=SUBNET_BCAST, events=RECV_REPLY),
    Flow("pxe-request-from-idle-ignored", (), pkt(Q, sid=SERVER, want="10.0.0.100"), no_reply="idle_state",
         events=("dhcp.received", "dhcp.ignored"), lease=("", "")),
    Flow("reply-type-as-request-unhandled", (DISC,), pkt(MessageType.OFFER), no_reply="unhandled_offer",
         events=("dhcp.received", "dhcp.ignored")),
    Flow("unknown-message-type-malformed", (), pkt(99), no_reply="malformed", events=("dhcp.malformed",),
         lease=("", "")),
]


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flows(flow: Flow) -> None:
    w = world(**dict(flow.settings))
    for packet, source in flow.before:
        w(packet, source)
    run = w(flow.request, flow.source)
    assert run.kinds == list(flow.events)
    assert run.outcome.no_reply == flow.no_reply
    reply = run.reply
    if flow.reply is None:
        assert reply is None and run.outcome.destination is None
    else:
        assert reply is not None
        assert reply.message_type == (None if flow.reply == "bootp" else flow.reply)
        assert reply.yiaddr == flow.yiaddr and reply.xid == flow.request.xid and reply.chaddr[:6] == MAC
        assert run.dest == flow.dest
        assert run.event("dhcp.reply")["msgtype"] == (flow.reply if flow.reply == "bootp" else
                                                      flow.reply.name.lower())
        assert run.outcome.assigned == (None if flow.reply == N or flow.yiaddr == "0.0.0.0" else flow.yiaddr)
    lease = w.main.store.get(MAC_S)
    if flow.lease == ("", ""):
        assert lease is None
    elif flow.lease is not None:
        assert (lease.ip, lease.state) == flow.lease


def test_offer_and_ack_carry_the_lease_and_boot_options() -> None:
    w = world()
    offer = w(pkt(D, arch=7)).reply
    assert offer.option(Opt.SERVER_ID) == ip_bytes(SERVER) and offer.siaddr == SERVER
    assert offer.sname == b"boot.example" and offer.file == b"shimx64.efi"
    assert offer.option(Opt.SUBNET_MASK) == ip_bytes("255.255.255.0")
    assert offer.option(Opt.ROUTER) == ip_bytes("10.0.0.254")
    assert offer.option(Opt.DNS) == ip_bytes("10.0.0.53") + ip_bytes("10.0.0.54")
    assert (opt_u32(offer, Opt.LEASE_TIME), opt_u32(offer, Opt.RENEWAL_T1),
            opt_u32(offer, Opt.REBINDING_T2)) == (3600, 1800, 3150)
    assert offer.option(Opt.VENDOR_CLASS) == b"PXEClient"
    assert offer.option(Opt.VENDOR_SPECIFIC) == bytes([6, 1, 8, 255])
    assert offer.option(Opt.CLIENT_UUID) == b"\0" + uuid_module.UUID(UUID).bytes
    assert offer.option(Opt.TFTP_SERVER) == SERVER.encode() and offer.option(Opt.BOOTFILE) == b"shimx64.efi"
    run = w(pkt(Q, arch=7, sid=SERVER, want=offer.yiaddr))
    ack = run.reply
    assert ack.message_type == A and opt_u32(ack, Opt.LEASE_TIME) == 3600 and ack.file == b"shimx64.efi"
    assert run.outcome.lease.state == BOUND and run.outcome.lease.uuid == UUID
    assert (w.client().arch, w.client().uuid, w.client().ip) == (7, UUID, "10.0.0.100")   # for TFTP
    assert run.event("dhcp.reply") == {"msgtype": "ack", "mac": MAC_S, "ip": "10.0.0.100", "pxe": True,
                                       "arch": 7, "phase": "pxe", "file": "shimx64.efi", "ipxe": False,
                                       "uuid": UUID, "to": SUBNET_BCAST}
    assert run.notices == [("BOOT", MAC_S, "10.0.0.100", UUID)]
    assert run.event("dhcp.received") == {"msgtype": "request", "mac": MAC_S, "relayed": False, "pxe": True,
                                          "ipxe": False, "uuid": UUID, "arch": 7}


def test_nak_inform_release_decline_details() -> None:
    w = world()
    w.dora()
    nak = w(pkt(Q, want="10.0.0.102"))
    assert [code for code, _ in nak.reply.options] == [Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.MESSAGE]
    assert nak.reply.option(Opt.MESSAGE) == b"address 10.0.0.102 is not yours" and nak.reply.file == b""
    assert nak.notices == [] and w.client().ip == "10.0.0.100"
    assert {k: nak.event("dhcp.reply")[k] for k in ("msgtype", "ip", "requested", "bound", "to")} == \
        {"msgtype": "nak", "ip": "0.0.0.0", "requested": "10.0.0.102", "bound": "10.0.0.100", "to": LIMITED}
    inform_run = w(os_pkt(INF, ciaddr="10.0.0.100"), ("10.0.0.100", 68))
    inform = inform_run.reply
    assert inform_run.notices == [] and "requested" not in inform_run.event("dhcp.reply")
    assert inform.option(Opt.LEASE_TIME) is None and inform.option(Opt.SUBNET_MASK) is not None
    assert inform.ciaddr == "10.0.0.100" and inform.option(Opt.VENDOR_SPECIFIC) is None
    release = w(pkt(R, ciaddr="10.0.0.100"))
    assert release.event("dhcp.released") == {"mac": MAC_S, "ip": "10.0.0.100", "uuid": UUID}
    assert release.notices == [("RELEASE", MAC_S, "10.0.0.100", UUID)]
    assert w(pkt(D)).reply.yiaddr == "10.0.0.100"               # sticky after a release
    refused = w(pkt(L, want="10.0.0.100"))                       # released: no longer its to decline
    assert refused.event("dhcp.ignored")["detail"] == "not_held"
    assert w(pkt(Q, sid=SERVER, want="10.0.0.100")).reply.message_type == A
    decline = w(pkt(L, want="10.0.0.100"))
    assert decline.event("dhcp.declined") == {"mac": MAC_S, "ip": "10.0.0.100"}
    assert w(pkt(D)).reply.yiaddr == "10.0.0.101"               # another address
    assert w(pkt(D, mac=OTHER)).reply.yiaddr == "10.0.0.102"     # .100 is set aside for everybody


def test_bootp_reply_has_no_dhcp_options() -> None:
    w = world(allow_simple_dhcp=True)
    run = w(os_pkt(None))
    assert run.reply.option(Opt.MESSAGE_TYPE) is None and run.reply.option(Opt.SERVER_ID) is None
    assert run.reply.option(Opt.LEASE_TIME) is None and run.reply.file == b"pxelinux.0"
    assert run.outcome.lease.state == BOUND


# ---------------------------------------------------------------- pool exhaustion

@pytest.mark.parametrize("request_, settings", [
    (pkt(D), {}),
    (os_pkt(None), {"allow_simple_dhcp": True}),
    (os_pkt(Q, want="10.0.0.100"), {"allow_simple_dhcp": True}),
], ids=["discover", "bootp", "init-reboot"])
def test_pool_exhaustion(request_, settings) -> None:
    w = world(pool=POOL[:2], **settings)
    w.dora(mac=OTHER)
    w.dora(mac=bytes.fromhex("5254000000bb"))
    run = w(request_)
    assert run.reply is None and run.outcome.no_reply == "exhausted"
    assert run.kinds == ["dhcp.received", "dhcp.exhausted"]
    assert run.event("dhcp.exhausted") == {"mac": MAC_S, "scope": "main"}
    assert w.main.store.get(MAC_S) is None
    assert w.dora(mac=OTHER).reply.yiaddr == "10.0.0.100"       # known clients are still served


# ---------------------------------------------------------------- PXE / OS phases

def test_pxe_then_os_phase_state_machine() -> None:
    w = world()
    steps = [
        # request, expected reply, client state after, phase, notification
        (pkt(D), MessageType.OFFER, State.PXE, "pxe", None),
        (pkt(Q, sid=SERVER, want="10.0.0.100"), A, State.PXE, "pxe", "BOOT"),
        (os_pkt(D), MessageType.OFFER, State.PXE, "os", None),
        (os_pkt(Q, sid=SERVER, want="10.0.0.100"), A, State.DHCP, "os", "LEASE"),
        (os_pkt(Q, ciaddr="10.0.0.100"), A, State.DHCP, "os", "LEASE"),
        (pkt(D), MessageType.OFFER, State.PXE, "pxe", None),           # rebooted into PXE
    ]
    for request_, reply, state, phase, notify in steps:
        run = w(request_)
        assert run.reply.message_type == reply
        assert w.client().state == state
        event = run.event("dhcp.reply")
        assert event["phase"] == phase and event["pxe"] == (phase == "pxe")
        assert [n[0] for n in run.notices] == ([notify] if notify else [])
        if notify:
            assert run.notices[0][3] == UUID                          # cached from the PXE phase
        if phase == "os":
            assert run.reply.option(Opt.VENDOR_SPECIFIC) is None and run.reply.option(Opt.BOOTFILE) is None
            assert run.reply.option(Opt.CLIENT_UUID) is None


def test_request_for_another_server_still_moves_the_state() -> None:
    w = world()
    w.dora()
    run = w(os_pkt(Q, sid="10.0.0.9", want="10.0.0.55"))
    assert run.outcome.no_reply == "other_server" and w.client().state == State.DHCP
    assert run.event("dhcp.ignored") == {"mac": MAC_S, "reason": "other_server", "phase": "os"}


def test_uuid_remembered_from_the_lease_store() -> None:
    w = world(allow_simple_dhcp=True)
    w.main.store.bind(MAC_S, None, lease_time=60, uuid=UUID)
    run = w(os_pkt(Q))
    assert run.event("dhcp.reply")["uuid"] == UUID and run.notices == [("LEASE", MAC_S, "10.0.0.100", UUID)]


# ---------------------------------------------------------------- static clients and ACLs

def test_static_client_gets_its_address_whatever_the_acl() -> None:
    w = world(reservations={STATIC_S: "10.0.0.50"}, access="mac", static=frozenset({STATIC_S}),
              mac_acl=RuleTable([AclRule.mac("52-54-00-00-00-ee", False)]))
    run = w(pkt(D, mac=STATIC))
    assert run.reply.yiaddr == "10.0.0.50" and "dhcp.acl" not in run.kinds
    assert w(pkt(Q, mac=STATIC, sid=SERVER, want="10.0.0.50")).outcome.lease.static


ACL_TABLE = [
    # access, table, mac, uuid, allowed, acl event verdict, its detail (for the log line)
    ("mac", [("52-54-00-12/16", True)], MAC, UUID, True, "allowed", None),
    ("mac", [("52-54-00-12/16", True), ("52-54-00-12-34-56", False)], MAC, UUID, False, "denied", "disabled"),
    ("mac", [("00-11-22-33-44-55", True)], MAC, UUID, False, "denied", "not listed"),
    ("uuid", [(UUID, True)], MAC, UUID, True, "allowed", None),
    ("uuid", [(UUID, True)], MAC, "00000000-0000-0000-0000-000000000001", False, "denied", "not listed"),
    ("uuid", [(UUID, True)], MAC, None, False, "denied", ACL_NO_UUID),
]


@pytest.mark.parametrize("access, table, mac, uuid, allowed, verdict, detail", ACL_TABLE)
def test_local_acls(access, table, mac, uuid, allowed, verdict, detail) -> None:
    make = AclRule.mac if access == "mac" else AclRule.uuid
    rules = RuleTable([make(key, ok) for key, ok in table])
    w = world(access=access, **{f"{access}_acl": rules})
    run = w(pkt(D, mac=mac, uuid=uuid))
    expected = {"acl": access, "verdict": verdict, "mac": MAC_S}
    assert run.event("dhcp.acl") == (expected if detail is None else {**expected, "detail": detail})
    assert (run.reply is not None) == allowed
    if not allowed:
        assert run.outcome.no_reply == "denied" and run.kinds == ["dhcp.received", "dhcp.acl"]
        assert w.client().state == State.IDLE and w.main.store.get(MAC_S) is None


def test_http_acl_is_asked_when_the_state_changes() -> None:
    w = world(access="http", acl_answer=AclResult(Verdict.ALLOWED, client_name="rack1-n07", file="n07.cfg"))
    offer = w(pkt(D))
    assert offer.query == AclQuery(MAC, UUID, None, True, offer.query.events)
    assert [e.kind for e in offer.query.events] == ["dhcp.received"]          # emitted before asking
    assert offer.kinds == ["dhcp.received", "dhcp.acl", "dhcp.reply"]
    assert offer.event("dhcp.acl") == {"acl": "http", "verdict": "allowed", "mac": MAC_S}
    assert w(pkt(Q, sid=SERVER, want="10.0.0.100")).query is None             # PXE → PXE: not asked
    os_ack = w(os_pkt(Q, sid=SERVER, want="10.0.0.100"))                      # PXE → DHCP: asked
    assert os_ack.query is not None and os_ack.query.pxe is False and os_ack.query.ip == "10.0.0.100"
    assert os_ack.reply.option(Opt.HOSTNAME) == b"rack1-n07"                  # OS phase only
    assert w.client().file == "n07.cfg"
    assert w(pkt(D)).reply.option(Opt.HOSTNAME) is None                       # PXE phase: none
    assert len(w.queries) == 3                                                # DHCP → PXE: asked


@pytest.mark.parametrize("verdict", [Verdict.DENIED, Verdict.ERROR])
def test_http_acl_refusal_resets_the_client(verdict) -> None:
    w = world(access="http", acl_answer=AclResult(verdict, reason="status 403"))
    run = w(pkt(D))
    assert run.reply is None and run.outcome.no_reply == "denied"
    assert run.kinds == ["dhcp.received", "dhcp.acl"]
    assert run.event("dhcp.acl") == {"acl": "http", "verdict": verdict.value, "mac": MAC_S,
                                     "detail": "status 403"}
    assert w.client().state == State.IDLE and w.main.store.get(MAC_S) is None


def test_http_acl_refusal_later_in_the_boot_resets_the_client() -> None:
    w = world(access="http")
    w.dora()
    w.acl_answer = AclResult(Verdict.DENIED, reason="status 403")
    run = w(os_pkt(Q, sid=SERVER, want="10.0.0.100"))                # PXE → DHCP: asked, denied
    assert run.reply is None and w.client().state == State.IDLE
    assert w(os_pkt(D)).outcome.no_reply == "idle_state"             # must PXE boot again


def test_http_acl_always_check() -> None:
    w = world(access="http", http_always_check=True)
    w.dora()
    w(pkt(D))
    assert len(w.queries) == 3


# ---------------------------------------------------------------- relays and scopes

@pytest.mark.parametrize("giaddr, source, scope, yiaddr, router, lease_time, dest", [
    ("10.9.0.1", ("10.9.0.1", 67), "rack2", "10.9.0.10", "10.9.0.1", 600, ("10.9.0.1", 67)),
    ("10.9.0.1", ("10.9.0.1", 6767), "rack2", "10.9.0.10", "10.9.0.1", 600, ("10.9.0.1", 6767)),
    ("10.9.0.1", ("10.9.0.2", 6767), "rack2", "10.9.0.10", "10.9.0.1", 600, ("10.9.0.1", 67)),
    ("10.5.0.1", ("10.5.0.1", 67), "main", "10.0.0.100", "10.0.0.254", 3600, ("10.5.0.1", 67)),
], ids=["rack", "rack-source-port", "rack-other-source", "unknown-relay-main-scope"])
def test_relayed_requests(giaddr, source, scope, yiaddr, router, lease_time, dest) -> None:
    w = world()
    run = w(pkt(D, giaddr=giaddr, flags=FLAG_BROADCAST, options=[(Opt.RELAY_AGENT, AGENT)]), source)
    assert run.event("dhcp.received")["relayed"] is True
    offer = run.reply
    assert offer.yiaddr == yiaddr and offer.giaddr == giaddr and run.dest == dest
    assert offer.option(Opt.ROUTER) == ip_bytes(router) and opt_u32(offer, Opt.LEASE_TIME) == lease_time
    assert offer.option(Opt.RELAY_AGENT) == AGENT                                 # RFC 3046 §2.2
    store = w.rack.store if scope == "rack2" else w.main.store
    assert store.get(MAC_S).ip == yiaddr
    nak = w(pkt(Q, giaddr=giaddr, want="10.0.0.103", options=[(Opt.RELAY_AGENT, AGENT)]), source).reply
    assert nak.message_type == N and nak.option(Opt.RELAY_AGENT) == AGENT and nak.giaddr == giaddr


def test_rack_scope_exhaustion_names_the_scope() -> None:
    w = world()
    for i in range(2):
        w(pkt(D, mac=bytes([2, 0, 0, 0, 0, i]), giaddr="10.9.0.1"), ("10.9.0.1", 67))
    run = w(pkt(D, giaddr="10.9.0.1"), ("10.9.0.1", 67))
    assert run.event("dhcp.exhausted") == {"mac": MAC_S, "scope": "rack2"}


def test_relayed_renew_is_renewing() -> None:
    w = world()
    w.dora(giaddr="10.9.0.1")
    request = classify(pkt(Q, ciaddr="10.9.0.10", giaddr="10.9.0.1"), ("10.9.0.1", 67))
    assert request.kind == RequestKind.RENEWING and request.relayed


# ---------------------------------------------------------------- destinations

@pytest.mark.parametrize("fields, source, buggy, dest", [
    ({}, BCAST, False, SUBNET_BCAST),
    ({"flags": FLAG_BROADCAST}, BCAST, False, LIMITED),
    ({}, BCAST, True, LIMITED),
    ({}, ("0.0.0.0", 1068), False, ("10.0.0.255", 1068)),
])
def test_offer_destinations(fields, source, buggy, dest) -> None:
    settings = {"buggy": RuleTable([AclRule.mac("52-54-00/24", True)])} if buggy else {}
    run = world(**settings)(pkt(D, **fields), source)
    assert run.dest == dest
    assert run.outcome.destination.limited_broadcast == (dest[0] == "255.255.255.255")


# ---------------------------------------------------------------- boot files

@pytest.mark.parametrize("arch, ipxe, ipxe_file, file, fallback", [
    (0, False, None, "pxelinux.0", False),
    (7, False, None, "shimx64.efi", False),
    (9, False, None, "shimx64.efi", False),
    (11, False, None, "pxelinux.0", True),
    (None, False, None, "pxelinux.0", False),
    (7, True, "http://10.0.0.1/boot.ipxe", "http://10.0.0.1/boot.ipxe", False),
    (7, True, None, "shimx64.efi", False),
    (11, True, "boot.ipxe", "boot.ipxe", False),
])
def test_boot_file_by_arch_and_ipxe(arch, ipxe, ipxe_file, file, fallback) -> None:
    w = world(ipxe_bootfile=ipxe_file)
    run = w(pkt(D, arch=arch, ipxe=ipxe))
    assert run.reply.file == file.encode() and run.reply.option(Opt.BOOTFILE) == file.encode()
    assert run.event("dhcp.reply")["file"] == file and run.event("dhcp.reply")["ipxe"] is ipxe
    assert ("dhcp.arch_fallback" in run.kinds) == fallback
    if fallback:
        assert run.event("dhcp.arch_fallback") == {"mac": MAC_S, "arch": arch, "file": file}
        assert run.kinds.index("dhcp.arch_fallback") < run.kinds.index("dhcp.reply")


def test_boot_file_size_option_13() -> None:
    asked = []

    def size(name: str, ip: str) -> int | None:
        asked.append((name, ip))
        return 40000 if name == "pxelinux.0" else None

    w = world(bootfile_size=size, ipxe_bootfile="http://10.0.0.1/boot.ipxe")
    assert w(pkt(D)).reply.option(Opt.BOOTFILE_SIZE) == (79).to_bytes(2, "big")   # ceil(40000 / 512)
    assert w(pkt(D, arch=7)).reply.option(Opt.BOOTFILE_SIZE) is None
    assert w(pkt(D, ipxe=True)).reply.option(Opt.BOOTFILE_SIZE) is None            # a URL: not asked
    assert asked == [("pxelinux.0", "0.0.0.0"), ("shimx64.efi", "10.0.0.100")]


# ---------------------------------------------------------------- classification

@pytest.mark.parametrize("packet, source, expected", [
    (pkt(D, arch=7), BCAST, dict(msgtype=D, pxe=True, ipxe=False, arch=7, uuid=UUID, relayed=False,
                                 kind=None, name="discover", phase="pxe", bad_type=False)),
    (os_pkt(None), BCAST, dict(msgtype=None, pxe=False, arch=None, uuid=None, name="bootp", phase="os")),
    (pkt(D, ipxe=True, arch=None, uuid=None), BCAST, dict(pxe=True, ipxe=True, arch=None, uuid=None)),
    (pkt(D, giaddr="10.9.0.1"), ("10.9.0.1", 67), dict(relayed=True)),
    (pkt(99), BCAST, dict(msgtype=None, bad_type=True)),
    (pkt(Q, sid=SERVER, want="10.0.0.100"), BCAST, dict(kind=RequestKind.SELECTING, name="request")),
    (pkt(Q, want="10.0.0.100"), BCAST, dict(kind=RequestKind.INIT_REBOOT)),
    (pkt(Q, ciaddr="10.0.0.100"), ("10.0.0.100", 68), dict(kind=RequestKind.RENEWING)),
    (pkt(Q, ciaddr="10.0.0.100"), BCAST, dict(kind=RequestKind.REBINDING)),
    (pkt(Q), BCAST, dict(kind=RequestKind.UNKNOWN)),
])
def test_classify(packet, source, expected) -> None:
    request = classify(packet, source)
    assert request.mac == MAC_S and request.packet is packet and request.source == source
    assert {name: getattr(request, name) for name in expected} == expected


@pytest.mark.parametrize("hlen, htype, chaddr", [(0, 1, b""), (3, 1, b"\1\2\3"), (16, 1, bytes(16)),
                                                  (0, 32, b""), (5, 6, bytes(5))])
def test_unusable_hardware_address_is_malformed_before_any_lookup(hlen, htype, chaddr) -> None:
    """``hlen`` below 6 (or not 6 for Ethernet): the codec accepts it (RFC 2131 §2), massboot
    cannot key a client by it; the lease store is never asked (it would raise on the MAC)."""
    w = world(access="mac")
    run = w(pkt(mac=chaddr, hlen=hlen, htype=htype))
    assert run.outcome.no_reply == "malformed" and not w.clients
    assert run.event("dhcp.malformed")["reason"] == "bad_hlen"
    assert run.kinds == ["dhcp.malformed"]
    assert classify(pkt(hlen=6, htype=6), BCAST).bad_hlen is None       # IEEE 802: 6 octets, fine


# ---------------------------------------------------------------- lease lifecycle: DECLINE, probes

class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


THIRD = bytes.fromhex("5254000000cc")


@pytest.mark.parametrize("sender, sid, want, detail", [
    (MAC, SERVER, "10.0.0.100", None),               # the holder, to us: accepted
    (MAC, None, "10.0.0.100", None),                 # option 54 is optional (RFC 2131 Table 5)
    (MAC, None, None, None),                         # no option 50: the address it holds
    (MAC, "10.0.0.9", "10.0.0.100", "other_server"),  # for another server's offer
    (OTHER, SERVER, "10.0.0.100", "other_mac"),      # spoofed: another MAC's address
    (MAC, SERVER, "192.168.9.9", "outside_pool"),
    (MAC, SERVER, "10.0.0.103", "not_held"),         # a free address
    (OTHER, SERVER, None, "not_held"),               # offered nothing
], ids=["holder", "holder-without-54", "holder-without-50", "other-server", "other-mac", "outside-pool",
        "free-address", "not-offered"])
def test_decline_accepted_only_from_the_holder(sender, sid, want, detail) -> None:
    """RFC 2131 §4.3.3; before, any DECLINE set any free address aside for good."""
    w = world()
    w.dora()
    before = (w.main.store.counts(), w.main.store.leases())
    run = w(pkt(L, mac=sender, sid=sid, want=want))
    assert run.reply is None
    if detail is None:
        assert run.kinds == ["dhcp.received", "dhcp.declined"] and run.outcome.no_reply == "declined"
        assert w.main.store.counts() == (0, 3) and w.main.store.get(MAC_S) is None
        return
    assert run.kinds == ["dhcp.received", "dhcp.ignored"] and run.outcome.no_reply == "decline_refused"
    assert run.event("dhcp.ignored")["detail"] == detail
    assert (w.main.store.counts(), w.main.store.leases()) == before
    assert w(pkt(D, mac=THIRD)).reply.yiaddr == "10.0.0.101"


def _expired_pool(probe: bool = True, **store_options) -> tuple[World, Clock]:
    """A full pool whose leases (3600 s) have all expired; OTHER's (.100) expired first."""
    clock = Clock()
    w = world(pool=POOL[:2], probe=probe, probe_timeout=0.2, store_options=dict(clock=clock, **store_options))
    w.dora(mac=OTHER)
    clock.t += 10
    w.dora()
    clock.t += 4000
    return w, clock


def test_a_reclaimed_address_is_probed_before_it_is_offered() -> None:
    w, _ = _expired_pool()
    run = w(pkt(D, mac=THIRD))
    assert [(p.ip, p.mac, p.timeout) for p in w.probes] == [("10.0.0.100", "52:54:00:00:00:CC", 0.2)]
    assert run.reply.yiaddr == "10.0.0.100"                      # silent: offered
    assert run.kinds == ["dhcp.received", "dhcp.probe", "dhcp.reply"]
    assert run.event("dhcp.probe") == {"mac": "52:54:00:00:00:CC", "ip": "10.0.0.100", "result": "free",
                                       "scope": "main"}
    assert w(pkt(D, mac=THIRD)).reply.yiaddr == "10.0.0.100" and len(w.probes) == 1   # probed once
    assert w.main.store.get("52:54:00:00:00:AA") is None          # OTHER lost it: the pool was full


def test_an_address_that_answers_is_set_aside_and_the_next_one_tried() -> None:
    w, _ = _expired_pool()
    w.probe_answers = [True, False]
    run = w(pkt(D, mac=THIRD))
    assert [p.ip for p in w.probes] == ["10.0.0.100", "10.0.0.101"]
    assert [e["result"] for k, e in run.events if k == "dhcp.probe"] == ["in_use", "free"]
    assert run.reply.yiaddr == "10.0.0.101"
    assert w.main.store.counts() == (1, 1)                        # .101 set aside for a while


def test_every_address_answering_ends_without_a_reply() -> None:
    w, _ = _expired_pool()
    w.probe_answers = [True, True]
    run = w(pkt(D, mac=THIRD))
    assert run.reply is None and run.outcome.no_reply == "exhausted"
    clock = Clock()
    w = world(pool=POOL, probe=True, store_options=dict(clock=clock))
    for n in range(4):
        w.dora(mac=bytes.fromhex(f"5254000001{n:02x}"))
    clock.t += 4000
    w.probe_answers = [True] * 4
    run = w(pkt(D, mac=THIRD))
    assert run.reply is None and run.outcome.no_reply == "address_in_use" and len(w.probes) == 3


def test_probe_off_and_probe_unavailable_offer_at_once() -> None:
    w, _ = _expired_pool(probe=False)
    assert w(pkt(D, mac=THIRD)).reply.yiaddr == "10.0.0.100" and w.probes == []
    w, _ = _expired_pool()
    w.probe_answers = [None]                                      # no ICMP socket: not probed
    run = w(pkt(D, mac=THIRD))
    assert run.reply.yiaddr == "10.0.0.100" and run.event("dhcp.probe")["result"] == "unavailable"


def test_plain_bootp_is_probed_then_bound() -> None:
    clock = Clock()
    w = world(pool=POOL[:1], probe=True, allow_simple_dhcp=True, store_options=dict(clock=clock))
    w(os_pkt(None, mac=OTHER))
    clock.t += 4000
    run = w(os_pkt(None, mac=THIRD))
    assert len(w.probes) == 1 and run.reply.yiaddr == "10.0.0.100" and run.outcome.lease.state == BOUND


def test_reclaim_never_and_offer_hold_in_the_exchange() -> None:
    w, clock = _expired_pool(reclaim="never", offer_hold=30)
    assert w(pkt(D, mac=THIRD)).outcome.no_reply == "exhausted" and w.probes == []
    w = world(pool=POOL[:1], store_options=dict(clock=clock, offer_hold=30))
    assert w(pkt(D)).reply.yiaddr == "10.0.0.100"
    assert w(pkt(D, mac=OTHER)).outcome.no_reply == "exhausted"
    clock.t += 31                                                 # MAC never REQUESTed
    assert w(pkt(D, mac=OTHER)).reply.yiaddr == "10.0.0.100"
    assert w(pkt(Q, sid=SERVER, want="10.0.0.100")).outcome.no_reply == "exhausted"   # too late


def test_records_are_values_that_no_step_changes() -> None:
    # Classification, Outcome, Destination, EventRecord (and events.Event, policy.BootInfo) are
    # plain slotted dataclasses, not frozen=True, whose object.__setattr__ per field made
    # them the costliest objects of an exchange (issue #14): still values, compared and
    # hashed by their fields, and never changed by any step once built
    import copy

    from massboot.dhcp.exchange import Destination, EventRecord

    w = world()
    for packet in (pkt(D, arch=7), pkt(Q, sid=SERVER, want="10.0.0.100", arch=7)):
        request = classify(packet, BCAST)
        kept = copy.copy(request)
        exchange = Exchange(w.settings, request, w.clients.get(request.mac), w.main)
        outcome = exchange.start()
        w.clients.setdefault(request.mac, exchange.client)
        assert isinstance(outcome, Outcome) and outcome.reply is not None
        assert request == kept and hash(request) == hash(kept) and request is not kept
        dest = outcome.destination
        assert dest == Destination(dest.address, dest.port) and hash(dest) == hash(copy.copy(dest))
    assert Destination("10.0.0.255", 68) == Destination("10.0.0.255", 68)
    assert hash(Destination("10.0.0.255", 68)) == hash(Destination("10.0.0.255", 68))
    assert EventRecord("dhcp.reply", {}) == EventRecord("dhcp.reply", {})
    assert EventRecord("dhcp.reply", {}) != EventRecord("dhcp.ignored", {})
