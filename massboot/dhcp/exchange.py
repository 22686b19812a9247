"""Sans-IO DHCP/PXE exchange: one decoded request in, what to do out.

:class:`Exchange` owns no socket, as :class:`massboot.tftp.transfer.ReadTransfer` does not. The
server classifies the request, picks its scope, hands over what it knows of the client and
carries out the answer::

    request = classify(packet, source)
    scope = select_scope(packet, main, scopes)
    exchange = Exchange(settings, request, clients.get(request.mac), scope)
    step = exchange.start()
    while not isinstance(step, Outcome):
        emit(step.events)
        if isinstance(step, AclQuery):              # access = http: the server asks (may wait)
            step = exchange.on_acl(http_acl.check(step.mac, uuid=step.uuid, ip=step.ip, pxe=step.pxe))
        else:                                       # ProbeQuery: ICMP echo, bounded by its timeout
            step = exchange.on_probe(prober(step.ip, step.timeout))
    clients[request.mac] = exchange.client
    send(step.reply, step.destination); emit(step.events)

The lease operations go to the scope's :class:`LeaseStore`, each atomic on its own (the store
decides, this module never reads a lease to write a decision back), and an ACK is only built
once the store has made its binding durable. Events come back as data, in the order they
happened, and are this module's only output besides the reply: it writes no log line (the
outcome log is :mod:`massboot.eventlog`'s, one line per event; README, "[logger]") and sends
no notification (the :class:`~massboot.notify.Notifier` reads ``dhcp.reply`` and
``dhcp.released``; README, "Notifications"), so each event carries what its line needs.

Behaviour (README, "DHCP and PXE behaviour"):

* DISCOVER → OFFER; REQUEST → ACK or NAK by the state it comes from (RFC 2131 §4.3.2:
  SELECTING, INIT-REBOOT, RENEWING, REBINDING); a REQUEST naming another server (option 54) is
  left alone; a REBINDING client asking for an address outside the scope is left alone too.
  INFORM → ACK without address or lease time (RFC 2131 §4.3.5). RELEASE keeps the binding
  (RFC 2131 §4.3.4). A DECLINE counts only from the client holding the address, for this
  server (option 54, when present, must be ours) and a pool address: the store sets it aside
  for ``decline_probation`` (RFC 2131 §4.3.3); any other DECLINE is ignored and changes nothing
  (``dhcp.ignored``, reason ``decline_refused``). No option 53: plain BOOTP (RFC 951), answered
  and bound at once when ``allow_simple_dhcp`` is on.
* Lease lifecycle (README, "Lease lifecycle"): an address the store flags (another MAC had it
  bound, or it is back from probation) is probed before it is offered: the exchange returns a
  :class:`ProbeQuery`, the server pings, :meth:`Exchange.on_probe` goes on; an address that
  answers is set aside and another one is tried (RFC 2131 §4.4.1: the server SHOULD probe).
* pybootd's PXE→OS state machine (:func:`~massboot.dhcp.policy.next_state`): a MAC must start
  with a PXE DISCOVER unless ``allow_simple_dhcp`` is on. A UEFI HTTP Boot request (option 60
  ``HTTPClient``) is a boot-firmware request like a PXE one (:attr:`Classification.boot_client`):
  it gets option 60 ``HTTPClient`` back and its boot file as a full URL
  (:func:`~massboot.dhcp.policy.select_http_bootfile`), or no answer at all when its
  architecture has no HTTP boot file (``dhcp.ignored``, reason ``no_http_bootfile``; README,
  "UEFI: ipxe.efi and UEFI HTTP Boot").
* ACLs: static clients are always served; ``access = mac`` / ``uuid`` are decided here;
  ``access = http`` is asked when the client's state changes (or always with
  ``always_check``), and a denial puts the client back to the idle state.
* Proxy mode (``[bootpd] mode = proxy``, README "proxyDHCP"; PXE 2.1 §2.2): no scope, no
  lease store, never an address. A boot client's (:attr:`Classification.boot_client`) DISCOVER
  on port 67 gets a proxy OFFER; its REQUEST (or INFORM) on the PXE boot server port, or on 67
  naming this server in option 54, gets a proxy ACK; everything else is left alone and counted
  (``not_boot_client``, ``site_server``, ``proxy_unhandled``). The ACLs, the boot file by
  architecture and the iPXE second stage work as in full mode; the address a client reports
  (``ciaddr``) is what the events, the notifications and TFTP's ``{ip}`` know it by.

The records an exchange builds per request (:class:`Classification`, :class:`Outcome`,
:class:`Destination`, :class:`EventRecord`, the queries; :class:`massboot.events.Event` and
:class:`~massboot.dhcp.policy.BootInfo` too) are values that nothing changes once built, compared
and hashed by their fields, but plain slotted dataclasses, not ``frozen=True``: a frozen one sets
each field through ``object.__setattr__`` (23,000 instructions for a 16-field record, against
6,300), which made them the costliest objects of an exchange (issue #14).
"""

from __future__ import annotations

import ipaddress
import uuid as uuid_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from massboot.acl import AclResult, RuleTable, Verdict
from massboot.config import BootpConfig
from massboot.dhcp import policy
from massboot.dhcp.leases import Lease, LeaseStore
from massboot.dhcp.packet import BootpPacket, MessageType, Opt, PacketError, Reason, decode_suboptions
from massboot.dhcp.policy import BootInfo, Network, RequestKind, State
from massboot.events import ACL_NO_UUID
from massboot.ident import mac_int, mac_str

MSG_NAMES = {t: t.name.lower() for t in MessageType}
#: the hardware address length massboot identifies a client by: a 6-octet MAC (RFC 2131 §2
#: ``chaddr``; Ethernet, ``htype`` 1, is always 6 octets, RFC 1700 "ARP Hardware Type")
MAC_LEN = 6
HTYPE_ETHERNET = 1
LIMITED_BROADCAST = "255.255.255.255"
NO_ADDRESS = "0.0.0.0"


@dataclass(slots=True)
class Client:
    """What the server remembers of one MAC between exchanges (one record per MAC)."""

    mac: str
    state: State = State.IDLE
    uuid: str | None = None
    arch: int | None = None
    ip: str | None = None
    hostname: str | None = None      # HTTP ACL "Client:" line (option 12)
    file: str | None = None          # HTTP ACL "File:" line (TFTP filters' {file})


@dataclass(frozen=True, slots=True)
class Scope:
    """One served subnet: its lease store and what replies say about it."""

    name: str
    store: LeaseStore
    net: Network
    network: ipaddress.IPv4Network


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[bootpd]`` settings an exchange needs, checked once at startup."""

    server_ip: str
    sname: str
    server_port: int = 67
    allow_simple_dhcp: bool = False
    access: str | None = None                  # None, "mac", "uuid" or "http"
    static: frozenset[str] = frozenset()       # MACs with a [static_dhcp] address: no ACL
    mac_acl: RuleTable | None = None
    uuid_acl: RuleTable | None = None
    http_always_check: bool = False
    buggy: RuleTable | None = None             # [buggy_clients]: replies to 255.255.255.255
    default_bootfile: str = ""
    bootfiles: Mapping[int, str] = field(default_factory=dict)
    ipxe_bootfile: str | None = None
    #: option 15 (RFC 2132 §3.17): ``[bootpd] domain`` when the file sets it, else None
    domain_name: str | None = None
    #: ``name, client_ip → size or None``, never blocking (option 13)
    bootfile_size: Callable[[str, str], int | None] | None = None
    probe: bool = False                        # ICMP-probe a reused address before offering it
    probe_timeout: float = 0.5
    proxy: bool = False                        # [bootpd] mode = proxy (README, "proxyDHCP")
    proxy_redirect: bool = True                # proxy_offer = redirect: no boot file in the OFFER
    #: ``http://ADDRESS:PORT/``: massboot's own HTTP server (``-H``), the prefix of a relative
    #: boot file given to a UEFI HTTP Boot client; None when this process serves no HTTP
    http_base: str | None = None

    @classmethod
    def from_config(cls, config: BootpConfig, server_ip: str, *,
                    bootfile_size: Callable[[str, str], int | None] | None = None,
                    http_base: str | None = None) -> Settings:
        """Build the settings from the validated ``[bootpd]`` section (*http_base*: see the
        attribute)."""
        return cls(
            server_ip=server_ip, sname=f"{config.servername}.{config.domain}", server_port=config.port,
            allow_simple_dhcp=config.allow_simple_dhcp, access=config.access,
            static=frozenset(config.static),
            mac_acl=RuleTable(config.mac_rules) if config.access == "mac" else None,
            uuid_acl=RuleTable(config.uuid_rules) if config.access == "uuid" else None,
            http_always_check=config.http is not None and config.http.always_check,
            buggy=RuleTable(config.buggy_clients) if config.buggy_clients else None,
            default_bootfile=config.default_bootfile, bootfiles=config.bootfiles,
            ipxe_bootfile=config.ipxe_boot_file, bootfile_size=bootfile_size,
            domain_name=config.domain if config.domain_explicit else None,
            probe=config.probe, probe_timeout=config.probe_timeout, proxy=config.mode == "proxy",
            proxy_redirect=config.proxy_offer == "redirect", http_base=http_base)


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class Classification:
    """Who sent a request and what it asks: every later decision reads this, not the packet.

    Attributes:
        packet: the decoded request.
        source: its source address and port.
        mac: ``AA:BB:CC:DD:EE:FF``.
        msgtype: option 53; None for plain BOOTP or an unknown value (see *bad_type*).
        bad_type: option 53 is present but names no known message type.
        pxe: a PXE firmware request (option 97, or option 60 ``PXEClient``), not an HTTP Boot
            one (see *http_client*).
        ipxe: iPXE (user class ``iPXE`` or option 175).
        uuid: the machine UUID of option 97.
        arch: the client architecture (option 93, else option 60).
        relayed: came through a relay agent (``giaddr`` set).
        kind: for a DHCPREQUEST, the client state it comes from (RFC 2131 §4.3.2).
        bad_hlen: why the hardware address cannot identify a client (``hlen`` below 6, or
            not 6 for Ethernet), else None. The codec accepts any ``hlen`` up to 16 (RFC 2131
            §2: other hardware types are valid BOOTP); massboot keys clients, leases and ACLs
            by a 6-octet MAC, so such a request is malformed *for us*.
        bootserver: it came in on the PXE boot server port (4011: proxy mode, PXE 2.1 §2.2.1).
        boot_item: the PXE boot item it asks for (option 43, sub-option 71: type and layer,
            PXE 2.1 §2.4.5), else None.
        http_client: a UEFI HTTP Boot firmware request (option 60 ``HTTPClient...``, UEFI 2.5
            and later, "HTTP Boot"), which may carry option 97 as well.

    A request from boot firmware, PXE or HTTP (:attr:`boot_client`), is in the PXE phase (the
    firmware's); any other is the installed OS's DHCP client (the OS phase).
    """

    packet: BootpPacket
    source: tuple[str, int]
    mac: str
    msgtype: MessageType | None
    bad_type: bool
    pxe: bool
    ipxe: bool
    uuid: str | None
    arch: int | None
    relayed: bool
    kind: RequestKind | None
    bad_hlen: str | None = None
    bootserver: bool = False
    boot_item: bytes | None = None
    http_client: bool = False

    @property
    def boot_client(self) -> bool:
        """Boot firmware asks (PXE or UEFI HTTP Boot), not an installed OS: what "is this a
        PXE-phase request" means for the state machine, the HTTP ACL's path, notifications,
        boot progress and proxy mode. Every such decision reads this one property."""
        return self.pxe or self.http_client

    @property
    def name(self) -> str:
        """The message type as events and logs name it (``bootp`` without option 53)."""
        return MSG_NAMES[self.msgtype] if self.msgtype is not None else "bootp"

    @property
    def phase(self) -> str:
        """``pxe`` (boot firmware, PXE or HTTP) or ``os``."""
        return "pxe" if self.boot_client else "os"


def classify(packet: BootpPacket, source: tuple[str, int], *, bootserver: bool = False) -> Classification:
    """Classify one decoded request (the only place that looks at the packet to do so).

    *bootserver*: it came in on the PXE boot server port (proxy mode's second socket).
    """
    msgtype = packet.message_type
    kind = None
    if msgtype == MessageType.REQUEST:
        kind = policy.request_kind(packet, unicast=source[0] == packet.ciaddr)
    http_client = packet.is_http_client
    return Classification(
        packet=packet, source=source, mac=mac_str(packet.mac), msgtype=msgtype,
        bad_type=msgtype is None and packet.option(Opt.MESSAGE_TYPE) is not None,
        pxe=packet.is_pxe and not http_client, ipxe=packet.is_ipxe, uuid=packet.uuid,
        arch=packet.client_arch, relayed=packet.giaddr != NO_ADDRESS, kind=kind,
        bad_hlen=hardware_problem(packet), bootserver=bootserver, boot_item=_boot_item(packet),
        http_client=http_client)


def _boot_item(packet: BootpPacket) -> bytes | None:
    """Option 43's PXE_BOOT_ITEM (sub-option 71, 4 octets: type, layer; PXE 2.1 §2.4.5), if any."""
    vendor = packet.option(Opt.VENDOR_SPECIFIC)
    if vendor is None:
        return None
    try:
        items = decode_suboptions(vendor)
    except PacketError:      # not PXE's encapsulation: another vendor's option 43
        return None
    return next((value for code, value in items if code == policy.PXE_BOOT_ITEM and len(value) == 4), None)


def hardware_problem(packet: BootpPacket) -> str | None:
    """Why *packet*'s ``chaddr`` cannot identify a client (see :class:`Classification`), or None."""
    if packet.hlen < MAC_LEN:
        return f"hlen {packet.hlen} (htype {packet.htype}): shorter than a 6-octet MAC"
    if packet.htype == HTYPE_ETHERNET and packet.hlen != MAC_LEN:
        return f"hlen {packet.hlen}: an Ethernet (htype 1) address is 6 octets"
    return None


def select_scope(packet: BootpPacket, main: Scope, scopes: Sequence[Scope]) -> Scope:
    """The ``[subnet:NAME]`` scope whose network holds the relay address, else the main one."""
    if packet.giaddr != NO_ADDRESS and scopes:
        relay = ipaddress.IPv4Address(packet.giaddr)
        for scope in scopes:
            if relay in scope.network:
                return scope
    return main


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class EventRecord:
    """An event to emit on the bus: its kind and fields."""

    kind: str
    fields: dict[str, Any]


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class Destination:
    """Where a reply goes (RFC 2131 §4.1)."""

    address: str
    port: int
    #: sent from the PXE boot server port's socket (a reply to a request that came in there)
    bootserver: bool = False

    @property
    def limited_broadcast(self) -> bool:
        """To 255.255.255.255: the server sends it out of the request's interface."""
        return self.address == LIMITED_BROADCAST


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class AclQuery:
    """The exchange needs the HTTP ACL's verdict: ask it, then call :meth:`Exchange.on_acl`."""

    mac: bytes
    uuid: str | None
    ip: str | None
    pxe: bool
    events: tuple[EventRecord, ...] = ()


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class ProbeQuery:
    """The exchange is about to offer *ip*, which must be probed first: send an ICMP echo,
    wait up to *timeout* seconds, then call :meth:`Exchange.on_probe` with the answer."""

    ip: str
    mac: str
    timeout: float
    events: tuple[EventRecord, ...] = ()


#: addresses probed (and found in use) in one exchange before it gives up without a reply
MAX_PROBES = 3


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class Outcome:
    """What to do once an exchange is decided.

    Attributes:
        events: to emit, in order, once the reply (if any) is sent.
        reply: the reply to send, or None.
        destination: where to send *reply*.
        no_reply: why there is no reply: a ``dhcp.ignored`` reason (``decline_refused``,
            ``address_in_use``...), or ``malformed``, ``denied``, ``exhausted``, ``released``,
            ``declined``.
        assigned: the address the reply gives the client, if any.
        lease: what the lease store returned (offered, bound or released lease).
        reported: proxy mode: the address the client says it holds (``ciaddr`` of its
            boot-server REQUEST), given by the site server; TFTP knows the client by it.
    """

    events: tuple[EventRecord, ...] = ()
    reply: BootpPacket | None = None
    destination: Destination | None = None
    no_reply: str | None = None
    assigned: str | None = None
    lease: Lease | None = None
    reported: str | None = None


class Exchange:
    """One request's exchange; see the module docstring.

    Args:
        settings: the server's settings.
        request: the classified request.
        client: what is known of the MAC, None when never seen (a record is then made, its
            UUID taken from a stored lease); available afterwards as :attr:`client`.
        scope: the scope the request belongs to (:func:`select_scope`); None in proxy mode,
            which has no lease store.
    """

    def __init__(self, settings: Settings, request: Classification, client: Client | None,
                 scope: Scope | None) -> None:
        self.settings = settings
        self.request = request
        self.scope = scope
        self.client = client
        self._events: list[EventRecord] = []
        self._new_state = State.IDLE
        #: the request passed the PXE rule and the ACLs: the server keeps the client's record
        self.admitted = False
        self._probing: Lease | None = None     # the offer a ProbeQuery waits for
        self._probes = 0
        self._http_url: str | None = None      # an HTTP Boot client's boot file (start())

    # ------------------------------------------------------------------ steps
    def start(self) -> Outcome | AclQuery | ProbeQuery:
        """Decide what can be decided without the HTTP ACL."""
        req, settings = self.request, self.settings
        if req.bad_hlen is not None:      # before anything reads the MAC (the lease store would raise)
            self._emit("dhcp.malformed", reason=Reason.BAD_HLEN, source=req.source[0], detail=req.bad_hlen)
            return self._done(no_reply="malformed")
        if req.bad_type:
            value = int.from_bytes(req.packet.option(Opt.MESSAGE_TYPE) or b"", "big")
            self._emit("dhcp.malformed", reason=Reason.BAD_MESSAGE_TYPE, source=req.source[0],
                       detail=f"message type {value} unknown (RFC 2132 §9.6)")
            return self._done(no_reply="malformed")
        self._emit("dhcp.received", msgtype=req.name, mac=req.mac, relayed=req.relayed,
                   pxe=req.boot_client, ipxe=req.ipxe, uuid=req.uuid, arch=req.arch,
                   **({"http": True} if req.http_client else {}))
        client = self.client
        if client is None:
            client = self.client = Client(req.mac)
            lease = self.scope.store.known(req.mac) if self.scope is not None else None  # UUID: no DB trip
            if lease is not None and lease.uuid:
                client.uuid = lease.uuid
        if req.uuid:
            client.uuid = req.uuid
        if req.arch is not None:
            client.arch = req.arch
        msgtype = req.msgtype
        if settings.proxy:
            return self._proxy_start(client)
        if msgtype == MessageType.REQUEST and req.packet.server_id not in (None, settings.server_ip):
            client.state = policy.next_state(client.state, req.boot_client, msgtype)
            return self._ignore("other_server")
        if msgtype == MessageType.RELEASE:
            return self._release()
        if msgtype == MessageType.DECLINE:
            return self._decline()
        self._new_state = policy.next_state(client.state, req.boot_client, msgtype)
        if self._new_state == State.IDLE and not settings.allow_simple_dhcp:
            return self._ignore("idle_state")
        if msgtype is None and not settings.allow_simple_dhcp:
            return self._ignore("bootp_not_allowed")
        if req.http_client:
            # before the ACLs and the pool: an HTTP client with no boot URL gets no answer at
            # all (README, "UEFI: ipxe.efi and UEFI HTTP Boot"), not an address it cannot boot from
            self._http_url, why = policy.select_http_bootfile(req.arch, settings.bootfiles,
                                                              settings.http_base)
            if self._http_url is None:
                return self._ignore("no_http_bootfile", detail=why)
        allowed = self._local_acl(client)
        if allowed is None:
            return AclQuery(req.packet.mac, client.uuid, client.ip, req.boot_client, self.take_events())
        return self._answer(allowed)

    def on_acl(self, result: AclResult) -> Outcome | ProbeQuery:
        """Go on with the HTTP ACL's verdict."""
        client = self._known()
        if result.verdict != Verdict.ALLOWED:     # the refusal's reason goes in the log line
            self._emit("dhcp.acl", acl="http", verdict=result.verdict.value, mac=client.mac,
                       detail=result.reason)
            return self._answer(False)
        self._emit("dhcp.acl", acl="http", verdict=result.verdict.value, mac=client.mac)
        if result.client_name:
            client.hostname = result.client_name
        if result.file:
            client.file = result.file
        return self._answer(True)

    def on_probe(self, answered: bool | None) -> Outcome | ProbeQuery:
        """Go on with the probe's result: True (an echo reply came: the address is in use),
        False (silence) or None (no probe could be sent)."""
        lease, client = self._probing, self._known()
        assert lease is not None, "no probe asked"
        self._probing = None
        result = "in_use" if answered else "free" if answered is False else "unavailable"
        self._emit("dhcp.probe", mac=client.mac, ip=lease.ip, result=result, scope=self._full().name)
        self._full().store.probed(client.mac, lease.ip, bool(answered))
        if answered and self._probes >= MAX_PROBES:
            return self._ignore("address_in_use")
        return self._offer(client, self.request.msgtype, probed=None if answered else lease.ip)

    # ------------------------------------------------------------------ decisions
    def _local_acl(self, client: Client) -> bool | None:
        """True or False when decided here, None when the HTTP ACL must be asked."""
        settings = self.settings
        if settings.access is None or client.mac in settings.static:
            return True
        if settings.access == "mac":
            assert settings.mac_acl is not None
            return self._local_verdict("mac", settings.mac_acl.check(mac_int(self.request.packet.mac)))
        if settings.access == "uuid":
            assert settings.uuid_acl is not None
            if client.uuid is None:
                self._emit("dhcp.acl", acl="uuid", verdict="denied", mac=client.mac, detail=ACL_NO_UUID)
                return False
            return self._local_verdict("uuid", settings.uuid_acl.check(uuid_module.UUID(client.uuid).int))
        # access = http: asked when the state changes, or on every request with always_check
        if not settings.http_always_check and self._new_state == client.state:
            return True
        return None

    def _local_verdict(self, acl: str, verdict: bool | None) -> bool:
        mac = self.request.mac
        if verdict:
            self._emit("dhcp.acl", acl=acl, verdict="allowed", mac=mac)
            return True
        self._emit("dhcp.acl", acl=acl, verdict="denied", mac=mac,
                   detail="disabled" if verdict is False else "not listed")
        return False

    def _answer(self, allowed: bool) -> Outcome | ProbeQuery:
        client, msgtype = self._known(), self.request.msgtype
        if not allowed:
            client.state = State.IDLE
            return self._done(no_reply="denied")
        self.admitted = True
        if self.settings.proxy:
            return self._proxy_reply(client)
        if msgtype == MessageType.INFORM:
            return self._reply(MessageType.ACK, NO_ADDRESS)
        if msgtype == MessageType.DISCOVER or msgtype is None:
            return self._offer(client, msgtype)
        if msgtype == MessageType.REQUEST:
            return self._request(client)
        return self._ignore(f"unhandled_{self.request.name}")

    def _offer(self, client: Client, msgtype: MessageType | None,
               probed: str | None = None) -> Outcome | ProbeQuery:
        scope, settings = self._full(), self.settings
        lease = scope.store.allocate(client.mac)
        if lease is None:
            return self._exhausted()
        if settings.probe and lease.ip != probed and not lease.pinned and \
                scope.store.needs_probe(lease.ip):
            # RFC 2131 §4.4.1: probe a reused address before offering it (README, "Lease lifecycle")
            self._probing = lease
            self._probes += 1
            return ProbeQuery(lease.ip, client.mac, settings.probe_timeout, self.take_events())
        if msgtype is None:     # plain BOOTP: no REQUEST will follow, bind now
            lease = scope.store.bind(client.mac, lease.ip, lease_time=scope.net.lease_time,
                                     uuid=client.uuid).lease
            if lease is None:
                return self._exhausted()
        outcome = self._reply(msgtype and MessageType.OFFER, lease.ip, lease=lease)
        client.state = self._new_state
        return outcome

    def _request(self, client: Client) -> Outcome:
        req, scope = self.request, self._full()
        # the address the client asks for: ciaddr when it has one, else option 50 (SELECTING,
        # INIT-REBOOT); neither (pybootd's ACK-anything clients): whatever it holds
        if req.kind in (RequestKind.RENEWING, RequestKind.REBINDING):
            wanted: str | None = req.packet.ciaddr
        else:
            wanted = req.packet.requested_ip
        # no binding yet (INIT-REBOOT after a database loss, or pybootd's ACK-anything clients):
        # the store allocates the sticky address, which must be the one the client wants
        binding = scope.store.bind(client.mac, wanted, lease_time=scope.net.lease_time, uuid=client.uuid)
        if binding.lease is None:
            return self._exhausted()
        if not binding.bound:
            if req.kind == RequestKind.REBINDING and wanted is not None and \
                    ipaddress.IPv4Address(wanted) not in scope.network:
                return self._ignore("not_our_address")
            return self._reply(MessageType.NAK, NO_ADDRESS, message=f"address {wanted} is not yours",
                               nak=(wanted, binding.lease.ip))
        lease = binding.lease
        # this ACK binds lease.ip: the Notifier sends BOOT or LEASE on its dhcp.reply; a store
        # that could not record the renewal grants only what is left of the committed lease
        # (README, "Several servers")
        outcome = self._reply(MessageType.ACK, lease.ip, lease=lease, lease_time=binding.lease_time)
        client.state = self._new_state
        return outcome

    def _release(self) -> Outcome:
        req = self.request
        ciaddr = req.packet.ciaddr
        released = self._full().store.release(req.mac, None if ciaddr == NO_ADDRESS else ciaddr)
        ip = ciaddr if ciaddr != NO_ADDRESS else (released.ip if released else None)
        if ip is None:
            return self._done(no_reply="released")
        self._emit("dhcp.released", mac=req.mac, ip=ip, uuid=self._known().uuid)   # RELEASE notification
        return self._done(no_reply="released", lease=released)

    def _decline(self) -> Outcome:
        # RFC 2131 §4.3.3: the client that holds the address declines it, to the server that
        # gave it (option 54); anything else is refused and changes nothing (README, "Lease
        # lifecycle"), so spoofed DECLINEs cannot empty the pool
        req = self.request
        server_id = req.packet.server_id
        if server_id is not None and server_id != self.settings.server_ip:
            return self._ignore("decline_refused", detail="other_server")
        result = self._full().store.decline(req.mac, req.packet.requested_ip)
        if result.refused is not None:
            return self._ignore("decline_refused", detail=result.refused)
        self._emit("dhcp.declined", mac=req.mac, ip=result.ip)
        return self._done(no_reply="declined")

    # ------------------------------------------------------------------ proxy mode
    def _proxy_start(self, client: Client) -> Outcome | AclQuery:
        """Proxy mode: which requests get an answer (see the module docstring)."""
        req, msgtype = self.request, self.request.msgtype
        if not req.boot_client:      # an installed OS's DHCP client: the site server's
            return self._ignore("not_boot_client")
        if msgtype == MessageType.DISCOVER and not req.bootserver:
            pass                     # the proxy OFFER (PXE 2.1 §2.2, step 2)
        elif msgtype in (MessageType.REQUEST, MessageType.INFORM) and req.bootserver:
            pass                     # the boot server REQUEST (PXE 2.1 §2.2, step 6)
        elif msgtype == MessageType.REQUEST and req.packet.server_id == self.settings.server_ip:
            pass                     # ROMs that ask the proxy on port 67
        elif msgtype == MessageType.REQUEST and req.packet.server_id is not None:
            # the REQUEST for the site server's offer: option 50 is the address the client is
            # taking, kept for a client this boot's proxy OFFER went to (README, "proxyDHCP")
            wanted = req.packet.requested_ip
            if wanted is None or client.state != State.PXE:
                return self._ignore("site_server")
            client.ip = wanted
            self._emit("dhcp.ignored", mac=client.mac, reason="site_server", phase="pxe", ip=wanted)
            return self._done(no_reply="site_server", reported=wanted)
        else:
            return self._ignore("proxy_unhandled", detail=f"{req.name} on port "
                                f"{'4011' if req.bootserver else '67'}")
        # every answered request is the PXE phase; a DISCOVER begins a boot, so the HTTP ACL is
        # asked at each boot's DISCOVER (its cache absorbs retransmissions) and at a boot-server
        # REQUEST from a client without a record, not again within a boot (README, "proxyDHCP")
        if req.http_client:
            # a UEFI HTTP Boot client gets its URL in the OFFER or nothing (README, "proxyDHCP")
            self._http_url, why = policy.select_http_bootfile(req.arch, self.settings.bootfiles,
                                                              self.settings.http_base)
            if self._http_url is None:
                return self._ignore("no_http_bootfile", detail=why)
        if msgtype == MessageType.DISCOVER:
            client.state = State.IDLE
        self._new_state = State.PXE
        allowed = self._local_acl(client)
        if allowed is None:
            reported = self._reported()
            return AclQuery(req.packet.mac, client.uuid, reported or client.ip, True, self.take_events())
        return self._answer(allowed)

    def _reported(self) -> str | None:
        """The address the client says it holds (``ciaddr``), None when it says none."""
        ciaddr = self.request.packet.ciaddr
        return None if ciaddr == NO_ADDRESS else ciaddr

    def _proxy_reply(self, client: Client) -> Outcome:
        req, settings = self.request, self.settings
        msgtype = MessageType.OFFER if req.msgtype == MessageType.DISCOVER else MessageType.ACK
        reported = self._reported()
        if reported is not None:
            client.ip = reported
        boot = self._boot_info()
        item = req.boot_item if req.bootserver else None
        # proxy_offer = redirect: the OFFER names no boot file, the ROM asks on 4011 with its address
        # (never to an HTTP client: UEFI HTTP Boot has no boot-server step to redirect to)
        redirect = settings.proxy_redirect and msgtype == MessageType.OFFER and not req.http_client
        reply = policy.build_proxy_reply(req.packet, msgtype, server_ip=settings.server_ip, boot=boot,
                                         boot_item=item, redirect=redirect, http=req.http_client)
        address, port = policy.proxy_destination(req.packet, req.source, server_port=settings.server_port)
        dest = Destination(address, port, bootserver=req.bootserver)
        self._emit("dhcp.reply", msgtype=MSG_NAMES[msgtype], mac=client.mac, ip=reported or NO_ADDRESS,
                   pxe=True, arch=req.arch, phase="pxe", file=None if redirect else boot.bootfile,
                   ipxe=req.ipxe, uuid=client.uuid, to=(dest.address, dest.port), proxy=True,
                   **({"http": True} if req.http_client else {}))
        client.state = self._new_state
        return self._done(reply=reply, destination=dest, reported=reported)

    # ------------------------------------------------------------------ replies
    def _boot_info(self) -> BootInfo:
        req, settings, client = self.request, self.settings, self._known()
        if req.http_client:
            assert self._http_url is not None, "start() ignores an HTTP client without a URL"
            return BootInfo(settings.server_ip, settings.sname, self._http_url)
        bootfile, fell_back = policy.select_bootfile(req.arch, req.ipxe, settings.default_bootfile,
                                                     settings.bootfiles, settings.ipxe_bootfile)
        if fell_back:
            self._emit("dhcp.arch_fallback", mac=req.mac, arch=req.arch, file=bootfile)
        size = None
        if settings.bootfile_size is not None and Opt.BOOTFILE_SIZE in req.packet.requested_params \
                and "://" not in bootfile:
            size = settings.bootfile_size(bootfile, client.ip or NO_ADDRESS)
        return BootInfo(settings.server_ip, settings.sname, bootfile, size)

    def _reply(self, msgtype: MessageType | None, yiaddr: str, *, message: str | None = None,
               lease: Lease | None = None, nak: tuple[str | None, str] | None = None,
               lease_time: int | None = None) -> Outcome:
        """Build and address a reply; *nak*: the addresses a NAK refuses, ``(requested, bound)``;
        *lease_time*: less than the scope's (option 51)."""
        req, settings, client, net = self.request, self.settings, self._known(), self._full().net
        if lease_time is not None and lease_time < net.lease_time:
            net = replace(net, lease_time=lease_time)
        boot = self._boot_info() if msgtype != MessageType.NAK else None
        reply = policy.build_reply(req.packet, msgtype, yiaddr=yiaddr, net=net, boot=boot, pxe=req.pxe,
                                   hostname=None if req.boot_client else client.hostname,
                                   message=message, domain=settings.domain_name, http=req.http_client)
        buggy = settings.buggy is not None and bool(settings.buggy.check(mac_int(req.packet.mac)))
        dest = Destination(*policy.destination(req.packet, reply, req.source,
                                               server_port=settings.server_port,
                                               subnet_broadcast=net.broadcast, force_broadcast=buggy))
        assigned = yiaddr if yiaddr != NO_ADDRESS and msgtype != MessageType.NAK else None
        if assigned is not None:
            client.ip = assigned
        name = MSG_NAMES[msgtype] if msgtype is not None else "bootp"
        file = boot.bootfile if boot else None
        extra: dict[str, Any] = {} if nak is None else {"requested": nak[0], "bound": nak[1]}
        if req.http_client:
            extra["http"] = True
        self._emit("dhcp.reply", msgtype=name, mac=client.mac, ip=yiaddr, pxe=req.boot_client,
                   arch=req.arch, phase=req.phase, file=file, ipxe=req.ipxe, uuid=client.uuid,
                   to=(dest.address, dest.port), **extra)
        return self._done(reply=reply, destination=dest, assigned=assigned, lease=lease)

    def _exhausted(self) -> Outcome:
        mac, scope = self.request.mac, self._full().name
        self._emit("dhcp.exhausted", mac=mac, scope=scope)
        return self._done(no_reply="exhausted")

    def _ignore(self, reason: str, detail: str | None = None) -> Outcome:
        mac, phase = self.request.mac, self.request.phase
        extra = {} if detail is None else {"detail": detail}
        self._emit("dhcp.ignored", mac=mac, reason=reason, phase=phase, **extra)
        return self._done(no_reply=reason)

    # ------------------------------------------------------------------ plumbing
    def _full(self) -> Scope:
        assert self.scope is not None, "full mode only: proxy mode has no scope"
        return self.scope

    def _known(self) -> Client:
        assert self.client is not None, "start() first"
        return self.client

    def _emit(self, kind: str, **fields: Any) -> None:
        self._events.append(EventRecord(kind, fields))

    def take_events(self) -> tuple[EventRecord, ...]:
        """The events recorded and not yet returned (those before a failure, say)."""
        events, self._events = tuple(self._events), []
        return events

    def _done(self, **fields: Any) -> Outcome:
        return Outcome(events=self.take_events(), **fields)
