"""The BOOTP/DHCP/PXE server: one UDP socket, a greenlet per exchange from a bounded pool.

The read loop decodes each datagram (a :class:`PacketError` is counted and dropped), drops a
retransmission from a client whose exchange is still in flight, and hands the rest to a
greenlet drawn from a :class:`gevent.pool.Pool`. When the pool is full the loop waits for a
free slot and stops reading; the kernel's receive buffer (``rcvbuf``, sized for a burst of a
thousand DISCOVERs) absorbs the burst, and clients retransmit as they always do.

Inside an exchange: identify the client (MAC, UUID, architecture, PXE or OS phase), apply
pybootd's state machine and ACLs (the HTTP ACL waits in this greenlet only, bounded by its
timeout), pick or check the address in the lease store, commit it durably *before* the ACK
leaves, notify, send, and emit one event.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent.pool import Pool

from massboot.acl import HttpAcl, RuleTable, Verdict
from massboot.config import BootpConfig, SubnetConfig, pool_addresses
from massboot.dhcp import policy
from massboot.dhcp.leases import LeaseStore
from massboot.dhcp.packet import (
    BOOTREQUEST,
    BootpPacket,
    MessageType,
    PacketError,
    decode,
    encode,
)
from massboot.dhcp.policy import BootInfo, Network, RequestKind, State
from massboot.events import EventBus
from massboot.ident import mac_int, mac_str
from massboot.notify import Notifier
from massboot.sources import ClientInfo

log = logging.getLogger(__name__)

MSG_NAMES = {t: t.name.lower() for t in MessageType}


@dataclass(slots=True)
class Client:
    """What the server remembers of one MAC between exchanges (bounded: one per client)."""

    mac: str
    state: State = State.IDLE
    uuid: str | None = None
    arch: int | None = None
    ip: str | None = None
    hostname: str | None = None      # HTTP ACL "Client:" line (option 12)
    file: str | None = None          # HTTP ACL "File:" line (TFTP filters' {file})
    ifindex: int = 0                 # interface of the exchange in flight
    ipxe: bool = False               # the request in flight comes from iPXE
    req_arch: int | None = None      # the architecture the request in flight names


@dataclass(frozen=True, slots=True)
class Scope:
    """One served subnet: its lease store and what replies say about it."""

    name: str
    store: LeaseStore
    net: Network
    network: ipaddress.IPv4Network


class DhcpServer:
    """BOOTP/DHCP/PXE server.

    Args:
        config: the validated ``[bootpd]`` settings.
        server_ip: this server's address on the served subnet (contract C4).
        netmask: that subnet's mask (``[bootpd] netmask`` wins when set).
        store: lease store of the main subnet.
        events: the event bus every outcome goes to.
        subnet_stores: a lease store per ``[subnet:NAME]`` section, by name.
        bootfile_size: ``name, client_ip → size or None``, never blocking (option 13).
        notifier: sends pybootd's UDP notifications, if configured.
        http_acl: the remote ACL when ``access = http``.
    """

    def __init__(self, config: BootpConfig, server_ip: str, netmask: str, store: LeaseStore,
                 events: EventBus, *, subnet_stores: dict[str, LeaseStore] | None = None,
                 bootfile_size: Callable[[str, str], int | None] | None = None,
                 notifier: Notifier | None = None, http_acl: HttpAcl | None = None,
                 dns: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.server_ip = server_ip
        self.events = events
        self.notifier = notifier
        self.http_acl = http_acl
        self._bootfile_size = bootfile_size
        netmask = config.netmask or netmask
        dns = config.dns if dns is None else dns
        main_net = ipaddress.IPv4Network(f"{server_ip}/{netmask}", strict=False)
        self.main = Scope("main", store, Network(server_ip, netmask, config.gateway or server_ip,
                                                 dns, config.lease_time), main_net)
        self.scopes: list[Scope] = []
        for sub in config.subnets:
            if subnet_stores is None or sub.name not in subnet_stores:
                raise ValueError(f"no lease store for subnet {sub.name}")
            self.scopes.append(self._scope(sub, subnet_stores[sub.name], dns))
        self.mac_acl = RuleTable(config.mac_rules) if config.access == "mac" else None
        self.uuid_acl = RuleTable(config.uuid_rules) if config.access == "uuid" else None
        self.buggy = RuleTable(config.buggy_clients) if config.buggy_clients else None
        self.sname = f"{config.servername}.{config.domain}"
        self.clients: dict[str, Client] = {}
        self._ip_to_mac: dict[str, str] = {}
        self._in_flight: set[bytes] = set()
        self.pool = Pool(config.pool_size)
        self.socket: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._running = False

    def _scope(self, sub: SubnetConfig, store: LeaseStore, dns: tuple[str, ...]) -> Scope:
        return Scope(sub.name, store,
                     Network(self.server_ip, str(sub.network.netmask), sub.gateway, sub.dns or dns,
                             sub.lease_time or self.config.lease_time), sub.network)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind the socket (synchronously) and start reading."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # learn the interface of each request, so that a limited broadcast (255.255.255.255) goes
        # out of that interface without SO_BINDTODEVICE or a route (RFC 2131 §4.1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        set_rcvbuf(sock, self.config.rcvbuf)
        if self.buggy is not None:
            self._bind_to_device(sock)
        sock.bind((self.config.address, self.config.port))
        self.socket = sock
        self._running = True
        self._reader = gevent.spawn(self._read_loop)
        log.info("dhcp listening on %s:%d server=%s pool=%s+%d", self.config.address, self.port,
                 self.server_ip, self.config.pool_start, self.config.pool_count)

    @property
    def alive(self) -> bool:
        """True while the read loop runs (for /healthz and the main loop)."""
        return self._reader is not None and not self._reader.dead

    @property
    def port(self) -> int:
        """The bound UDP port."""
        assert self.socket is not None
        return self.socket.getsockname()[1]

    def serve_forever(self) -> None:
        if self.socket is None:
            self.start()
        assert self._reader is not None
        self._reader.join()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, let running exchanges finish up to *timeout*, then kill them."""
        self._running = False
        if self._reader is not None:
            self._reader.kill(block=True, timeout=1)
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def _bind_to_device(self, sock: socket.socket) -> None:
        # pybootd §2.4: buggy clients ignore subnet broadcasts, so replies go to
        # 255.255.255.255, which only leaves by the right interface when bound to it.
        from massboot.netif import find_network, local_networks

        network = find_network(self.server_ip, local_networks())
        if network is None:
            raise OSError(f"Unable to retrieve binding interface for {self.server_ip}")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, network.ifname.encode())

    # ------------------------------------------------------------------ read loop
    def _read_loop(self) -> None:
        sock = self.socket
        assert sock is not None
        while self._running:
            try:
                data, ancillary, _flags, source = sock.recvmsg(65535, PKTINFO_SPACE)
            except OSError:
                if not self._running:
                    return
                log.exception("dhcp receive failed")
                continue
            try:
                packet = decode(data)
            except PacketError as exc:
                self.events.emit("dhcp.malformed", reason=_reason(exc), source=source[0])
                log.debug("dhcp malformed from %s: %s", source[0], exc)
                continue
            if packet.op != BOOTREQUEST:
                self.events.emit("dhcp.malformed", reason="not_request", source=source[0])
                continue
            key = bytes(packet.mac)
            if key in self._in_flight:
                self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="in_flight")
                continue
            self._in_flight.add(key)
            ifindex = _ifindex(ancillary)
            self.pool.spawn(self._exchange, packet, (source[0], source[1], ifindex), key)  # waits if full

    def _exchange(self, packet: BootpPacket, source: tuple[str, int, int], key: bytes) -> None:
        try:
            self.handle(packet, source[:2], ifindex=source[2])
        except Exception:
            log.exception("dhcp exchange with %s failed", mac_str(packet.mac))
            self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="internal_error")
        finally:
            self._in_flight.discard(key)

    # ------------------------------------------------------------------ one exchange
    def handle(self, packet: BootpPacket, source: tuple[str, int], ifindex: int = 0) -> BootpPacket | None:
        """Answer one decoded request; return the reply sent, if any.

        Args:
            packet: the decoded request.
            source: its source address and port.
            ifindex: the interface it arrived on (0: unknown), for limited broadcasts.
        """
        mac = mac_str(packet.mac)
        msgtype = packet.message_type
        mtname = MSG_NAMES.get(msgtype, "bootp") if msgtype is not None else "bootp"
        if packet.option(53) is not None and msgtype is None:
            self.events.emit("dhcp.malformed", reason="bad_message_type", source=source[0])
            return None
        pxe, ipxe, uuid, arch = packet.is_pxe, packet.is_ipxe, packet.uuid, packet.client_arch
        self.events.emit("dhcp.received", msgtype=mtname, mac=mac, relayed=packet.giaddr != "0.0.0.0",
                         pxe=pxe, ipxe=ipxe, uuid=uuid, arch=arch)
        client = self.clients.get(mac)
        if client is None:
            client = self.clients[mac] = Client(mac)
            lease = self._scope_for(packet).store.get(mac)
            if lease is not None and lease.uuid:
                client.uuid = lease.uuid
        client.ifindex = ifindex      # one exchange per MAC at a time: safe to keep here
        client.ipxe = ipxe
        if uuid:
            client.uuid = uuid
        client.req_arch = arch
        if arch is not None:
            client.arch = arch
        phase = "pxe" if pxe else "os"

        if msgtype == MessageType.REQUEST and packet.server_id not in (None, self.server_ip):
            client.state = policy.next_state(client.state, pxe, msgtype)
            return self._ignore(mac, "other_server", phase)
        if msgtype in (MessageType.RELEASE, MessageType.DECLINE):
            return self._release_or_decline(packet, client, msgtype)

        new_state = policy.next_state(client.state, pxe, msgtype)
        if new_state == State.IDLE and not self.config.allow_simple_dhcp:
            return self._ignore(mac, "idle_state", phase)
        if msgtype is None and not self.config.allow_simple_dhcp:
            return self._ignore(mac, "bootp_not_allowed", phase)

        if not self._allowed(packet, client, new_state, pxe):
            client.state = State.IDLE
            return None

        scope = self._scope_for(packet)
        if msgtype == MessageType.INFORM:
            return self._reply(packet, source, client, scope, MessageType.ACK, "0.0.0.0", phase, pxe)
        if msgtype == MessageType.DISCOVER or msgtype is None:
            lease = scope.store.allocate(mac)
            if lease is None:
                return self._exhausted(mac, scope)
            if msgtype is None:   # plain BOOTP: no REQUEST will follow, bind now
                scope.store.commit(mac, lease.ip, lease_time=scope.net.lease_time, uuid=client.uuid)
            reply = self._reply(packet, source, client, scope, msgtype and MessageType.OFFER, lease.ip,
                                phase, pxe)
            client.state = new_state
            return reply
        if msgtype == MessageType.REQUEST:
            return self._request(packet, source, client, scope, new_state, phase, pxe)
        return self._ignore(mac, f"unhandled_{mtname}", phase)

    def _request(self, packet: BootpPacket, source: tuple[str, int], client: Client, scope: Scope,
                 new_state: State, phase: str, pxe: bool) -> BootpPacket | None:
        mac = client.mac
        kind = policy.request_kind(packet, unicast=source[0] == packet.ciaddr)
        current = scope.store.get(mac)
        if kind in (RequestKind.RENEWING, RequestKind.REBINDING):
            wanted = packet.ciaddr
        elif kind == RequestKind.UNKNOWN:
            wanted = None
        else:
            wanted = packet.requested_ip
        if current is None:
            # no binding yet (INIT-REBOOT after a database loss, or pybootd's ACK-anything
            # clients): allocate the sticky address; it must be the one the client wants
            current = scope.store.allocate(mac)
            if current is None:
                return self._exhausted(mac, scope)
        if wanted is not None and current.ip != wanted:
            if kind == RequestKind.REBINDING and not self._ours(wanted, scope):
                return self._ignore(mac, "not_our_address", phase)
            log.info("nak mac=%s phase=%s requested=%s bound=%s", mac, phase, wanted, current.ip)
            return self._reply(packet, source, client, scope, MessageType.NAK, "0.0.0.0", phase, pxe,
                               message=f"address {wanted} is not yours")
        lease = scope.store.commit(mac, current.ip, lease_time=scope.net.lease_time, uuid=client.uuid)
        if self.notifier is not None:
            self.notifier.send("BOOT" if pxe else "LEASE", packet.mac, lease.ip, client.uuid)
        reply = self._reply(packet, source, client, scope, MessageType.ACK, lease.ip, phase, pxe)
        client.state = new_state
        return reply

    def _release_or_decline(self, packet: BootpPacket, client: Client,
                            msgtype: MessageType) -> None:
        scope = self._scope_for(packet)
        mac = client.mac
        current = scope.store.get(mac)
        if msgtype == MessageType.DECLINE:
            ip = packet.requested_ip or (current.ip if current else None)
            if ip is not None:
                scope.store.decline(mac, ip)
                log.warning("decline mac=%s ip=%s: address set aside (in use by another host?)", mac, ip)
                self.events.emit("dhcp.declined", mac=mac, ip=ip)
            return None
        ip = packet.ciaddr if packet.ciaddr != "0.0.0.0" else (current.ip if current else None)
        if current is not None and (packet.ciaddr in ("0.0.0.0", current.ip)):
            scope.store.release(mac)
        if ip is not None:
            log.info("release mac=%s ip=%s", mac, ip)
            self.events.emit("dhcp.released", mac=mac, ip=ip)
            if self.notifier is not None:
                self.notifier.send("RELEASE", packet.mac, ip, client.uuid)
        return None

    # ------------------------------------------------------------------ helpers
    def _allowed(self, packet: BootpPacket, client: Client, new_state: State, pxe: bool) -> bool:
        access = self.config.access
        if access is None or client.mac in self.config.static:
            return True
        if access == "mac":
            assert self.mac_acl is not None
            verdict = self.mac_acl.check(mac_int(packet.mac))
            return self._local_verdict("mac", client.mac, verdict)
        if access == "uuid":
            assert self.uuid_acl is not None
            if client.uuid is None:
                log.info("ignored mac=%s: access = uuid and no UUID known", client.mac)
                self.events.emit("dhcp.acl", acl="uuid", verdict="denied", mac=client.mac)
                return False
            verdict = self.uuid_acl.check(uuid_module.UUID(client.uuid).int)
            return self._local_verdict("uuid", client.mac, verdict)
        # access == "http": asked when the state changes, or always (spec §5.3)
        assert self.http_acl is not None and self.config.http is not None
        if new_state == client.state and not self.config.http.always_check:
            return True
        if new_state == State.IDLE and not self.config.http.always_check:
            return True
        result = self.http_acl.check(packet.mac, uuid=client.uuid, ip=client.ip, pxe=pxe)
        self.events.emit("dhcp.acl", acl="http", verdict=result.verdict.value, mac=client.mac)
        if result.verdict != Verdict.ALLOWED:
            log.info("%s mac=%s by http acl: %s", "denied" if result.verdict == Verdict.DENIED else
                     "ignored", client.mac, result.reason)
            return False
        if result.client_name:
            client.hostname = result.client_name
        if result.file:
            client.file = result.file
        return True

    def _local_verdict(self, acl: str, mac: str, verdict: bool | None) -> bool:
        if verdict:
            self.events.emit("dhcp.acl", acl=acl, verdict="allowed", mac=mac)
            return True
        log.info("denied mac=%s by %s acl: %s", mac, acl, "disabled" if verdict is False else "not listed")
        self.events.emit("dhcp.acl", acl=acl, verdict="denied", mac=mac)
        return False

    def _scope_for(self, packet: BootpPacket) -> Scope:
        if packet.giaddr != "0.0.0.0" and self.scopes:
            relay = ipaddress.IPv4Address(packet.giaddr)
            for scope in self.scopes:
                if relay in scope.network:
                    return scope
        return self.main

    def _ours(self, ip: str, scope: Scope) -> bool:
        return ipaddress.IPv4Address(ip) in scope.network

    def _exhausted(self, mac: str, scope: Scope) -> None:
        self.events.emit("dhcp.exhausted", mac=mac, scope=scope.name)
        log.warning("pool exhausted: no address for mac=%s scope=%s", mac, scope.name)
        return None

    def _ignore(self, mac: str, reason: str, phase: str) -> None:
        log.debug("ignored mac=%s phase=%s reason=%s", mac, phase, reason)
        self.events.emit("dhcp.ignored", mac=mac, reason=reason, phase=phase)
        return None

    def _boot_info(self, packet: BootpPacket, client: Client) -> BootInfo:
        config = self.config
        bootfile, fell_back = policy.select_bootfile(client.req_arch, client.ipxe, config.default_bootfile,
                                                     config.bootfiles, config.ipxe_boot_file)
        if fell_back:
            log.warning("mac=%s arch=%s has no [bootfile] entry: serving default %s",
                        client.mac, client.req_arch, bootfile)
            self.events.emit("dhcp.arch_fallback", mac=client.mac, arch=client.req_arch)
        size = None
        if self._bootfile_size is not None and 13 in packet.requested_params and "://" not in bootfile:
            size = self._bootfile_size(bootfile, client.ip or "0.0.0.0")
        return BootInfo(self.server_ip, self.sname, bootfile, size)

    def _reply(self, packet: BootpPacket, source: tuple[str, int], client: Client, scope: Scope,
               msgtype: MessageType | None, yiaddr: str, phase: str, pxe: bool,
               message: str | None = None) -> BootpPacket:
        boot = self._boot_info(packet, client) if msgtype != MessageType.NAK else None
        reply = policy.build_reply(packet, msgtype, yiaddr=yiaddr, net=scope.net, boot=boot, pxe=pxe,
                                   hostname=None if pxe else client.hostname, message=message)
        buggy = self.buggy is not None and bool(self.buggy.check(mac_int(packet.mac)))
        dest = policy.destination(packet, reply, source, server_port=self.config.port,
                                  subnet_broadcast=scope.net.broadcast, force_broadcast=buggy)
        assert self.socket is not None
        data = encode(reply)
        if dest[0] == "255.255.255.255" and client.ifindex and self.buggy is None:
            pktinfo = _PKTINFO.pack(client.ifindex, b"\0" * 4, b"\0" * 4)
            self.socket.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, dest)
        else:
            self.socket.sendto(data, dest)
        name = MSG_NAMES.get(msgtype, "bootp") if msgtype is not None else "bootp"
        if yiaddr != "0.0.0.0" and msgtype != MessageType.NAK:
            client.ip = yiaddr
            self._ip_to_mac[yiaddr] = client.mac
        arch = client.req_arch
        log.info("%s mac=%s ip=%s phase=%s arch=%s file=%s to=%s:%d", name, client.mac, yiaddr, phase,
                 arch if arch is not None else "-", boot.bootfile if boot else "-", dest[0], dest[1])
        self.events.emit("dhcp.reply", msgtype=name, mac=client.mac, ip=yiaddr, pxe=pxe, arch=arch,
                         phase=phase, file=boot.bootfile if boot else None, ipxe=client.ipxe,
                         uuid=client.uuid)
        return reply

    # ------------------------------------------------------------------ for the TFTP side
    def client_info(self, ip: str) -> ClientInfo | None:
        """What the DHCP side knows of the client holding *ip* (TFTP filters' variables)."""
        mac = self._ip_to_mac.get(ip)
        if mac is None:
            for scope in [self.main, *self.scopes]:
                lease = scope.store.by_ip(ip)
                if lease is not None:
                    mac = lease.mac
                    break
        if mac is None:
            return None
        client = self.clients.get(mac)
        if client is None:
            return ClientInfo(ip=ip, mac=mac)
        return ClientInfo(ip=ip, mac=mac, uuid=client.uuid, arch=client.arch, file=client.file)

    def lease_counts(self) -> dict[str, tuple[int, int]]:
        """``scope → (bound, size)`` of every pool, for metrics."""
        return {scope.name: scope.store.counts() for scope in [self.main, *self.scopes]}


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("@i4s4s")           # struct in_pktinfo: ifindex, spec_dst, addr
PKTINFO_SPACE = socket.CMSG_SPACE(_PKTINFO.size)


def _ifindex(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            return _PKTINFO.unpack_from(data)[0]
    return 0


def _reason(exc: Exception) -> str:
    text = str(exc).split(":")[0].strip().lower().replace(" ", "_")
    return text[:40] or "malformed"


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Size the receive buffer for a burst; root may exceed ``net.core.rmem_max``."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if actual < size:
        log.warning("receive buffer is %d bytes, not %d: raise net.core.rmem_max for bursts", actual, size)
    return actual


def main_pool(config: BootpConfig, server_ip: str, netmask: str) -> tuple[list[str], list[str]]:
    """The main pool's addresses, without the server's own, network and broadcast addresses.

    Returns:
        ``(pool, skipped)``.
    """
    net = ipaddress.IPv4Network(f"{server_ip}/{config.netmask or netmask}", strict=False)
    forbidden = {server_ip, str(net.network_address), str(net.broadcast_address)}
    forbidden |= set(config.static.values())
    pool, skipped = [], []
    for ip in pool_addresses(config.pool_start, config.pool_count):
        (skipped if ip in forbidden and net.prefixlen < 31 or ip == server_ip else pool).append(ip)
    return pool, skipped


def subnet_pool(sub: SubnetConfig, static: dict[str, str]) -> list[str]:
    """A relay subnet's pool addresses, without its network and broadcast addresses."""
    net = sub.network
    forbidden = {str(net.network_address), str(net.broadcast_address), *static.values()}
    return [ip for ip in pool_addresses(sub.pool_start, sub.pool_count) if ip not in forbidden]
