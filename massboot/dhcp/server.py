"""The BOOTP/DHCP/PXE server: one UDP socket, a greenlet per exchange from a bounded pool.

The read loop decodes each datagram (a :class:`PacketError` is dropped: a ``dhcp.malformed``
event with the codec's reason), drops a retransmission from a client whose exchange is still in
flight, and hands the rest to a greenlet drawn from a :class:`gevent.pool.Pool`. When the pool
is full the loop waits for a free slot and stops reading; the kernel's receive buffer
(``rcvbuf``, sized for a burst of a thousand DISCOVERs) absorbs the burst, and clients
retransmit as they always do. A receive error that passes (an ICMP error, a lack of buffers) is
counted and logged once per burst; one that persists ends the read loop with that exception, so
that the process exits.

Inside an exchange greenlet the decisions are :class:`massboot.dhcp.exchange.Exchange`'s (no
I/O); this module asks the HTTP ACL when the exchange needs its verdict (waiting in this
greenlet only, bounded by the ACL's timeout), then sends the reply and emits the events. The
exchange's lease operations are made durable by the store before it returns an ACK.

Outcomes are events only: the outcome log (:mod:`massboot.eventlog`, README "[logger]"), the
metrics and the notifications (:class:`massboot.notify.Notifier`, README "Notifications") are
subscribers of the bus. The lines this module writes itself are about its own workings: the
socket, receive errors, an exchange that failed with a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

import gevent
from gevent.pool import Pool

from massboot.acl import HttpAcl
from massboot.config import BootpConfig, SubnetConfig, pool_addresses
from massboot.dhcp.exchange import (
    AclQuery,
    Client,
    Destination,
    EventRecord,
    Exchange,
    Outcome,
    Scope,
    Settings,
    classify,
    select_scope,
)
from massboot.dhcp.leases import LeaseStore
from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, PacketError, Reason, decode, encode
from massboot.dhcp.policy import Network
from massboot.events import EventBus
from massboot.ident import mac_str
from massboot.sources import ClientInfo

log = logging.getLogger(__name__)

#: receive errors that pass: ICMP errors reported on the socket, interrupted or spurious
#: wake-ups, a momentary lack of memory or buffers, an interface going down and up
TRANSIENT_ERRNOS = frozenset({
    errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT,
    errno.ENOBUFS, errno.ENOMEM,
})
#: this many transient errors in a row, without one datagram read, is a persistent error
MAX_CONSECUTIVE_ERRORS = 100
#: after a few errors in a row the loop sleeps this long between reads instead of only yielding
ERROR_BACKOFF = 0.01


class DhcpServer:
    """BOOTP/DHCP/PXE server.

    Args:
        config: the validated ``[bootpd]`` settings.
        server_ip: this server's address on the served subnet (siaddr, option 54).
        netmask: that subnet's mask (``[bootpd] netmask`` wins when set).
        store: lease store of the main subnet.
        events: the event bus every outcome goes to.
        subnet_stores: a lease store per ``[subnet:NAME]`` section, by name.
        bootfile_size: ``name, client_ip → size or None``, never blocking (option 13).
        http_acl: the remote ACL when ``access = http``.
    """

    def __init__(self, config: BootpConfig, server_ip: str, netmask: str, store: LeaseStore,
                 events: EventBus, *, subnet_stores: dict[str, LeaseStore] | None = None,
                 bootfile_size: Callable[[str, str], int | None] | None = None,
                 http_acl: HttpAcl | None = None,
                 dns: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.server_ip = server_ip
        self.events = events
        self.http_acl = http_acl
        self.settings = Settings.from_config(config, server_ip, bootfile_size=bootfile_size)
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
        self.clients: dict[str, Client] = {}
        self._ip_to_mac: dict[str, str] = {}
        self._in_flight: set[bytes] = set()
        self.pool = Pool(config.pool_size)
        self.socket: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._running = False
        self.receive_errors = 0        # transient receive errors since start (for metrics)

    def apply(self, config: BootpConfig, *, subnet_stores: dict[str, LeaseStore],
              http_acl: HttpAcl | None, dns: tuple[str, ...]) -> None:
        """Take new settings (SIGHUP, README "Reload"): ACLs, static entries, boot files, subnets.

        Leases and exchanges in flight are kept: an exchange runs on the settings it started
        with. The socket, the main pool and its store stay (the caller says what needs a restart).
        """
        settings = Settings.from_config(config, self.server_ip, bootfile_size=self.settings.bootfile_size)
        net = self.main.net
        main = Scope("main", self.main.store,
                     Network(self.server_ip, config.netmask or net.netmask,
                             config.gateway or self.server_ip, dns, config.lease_time), self.main.network)
        scopes = [self._scope(sub, subnet_stores[sub.name], dns, config) for sub in config.subnets]
        self.config, self.settings, self.http_acl, self.main, self.scopes = (
            config, settings, http_acl, main, scopes)

    def _scope(self, sub: SubnetConfig, store: LeaseStore, dns: tuple[str, ...],
               config: BootpConfig | None = None) -> Scope:
        return Scope(sub.name, store,
                     Network(self.server_ip, str(sub.network.netmask), sub.gateway, sub.dns or dns,
                             sub.lease_time or (config or self.config).lease_time), sub.network)

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
        if self.settings.buggy is not None:
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
    def error(self) -> str | None:
        """Why the read loop stopped on its own (a persistent receive error), else None."""
        if self._reader is None or not self._reader.dead or self._reader.exception is None:
            return None
        return f"receive failed: {self._reader.exception}"

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
        # [buggy_clients] (README): these clients ignore subnet broadcasts, so replies go to
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
        failures = 0                      # receive errors in a row
        while self._running:
            try:
                data, ancillary, _flags, source = sock.recvmsg(65535, PKTINFO_SPACE)
            except OSError as exc:
                if not self._running:
                    return
                failures += 1
                self._receive_failed(exc, failures)
                # yield, so that a fault that repeats at once cannot starve the exchanges
                gevent.sleep(0 if failures < 10 else ERROR_BACKOFF)
                continue
            if failures:
                log.info("dhcp receive works again after %d errors", failures)
                failures = 0
            try:
                packet = decode(data)
            except PacketError as exc:
                self.events.emit("dhcp.malformed", reason=exc.reason, source=source[0], detail=str(exc))
                continue
            if packet.op != BOOTREQUEST:     # a BOOTREPLY sent to the server port (RFC 2131 §2)
                self.events.emit("dhcp.malformed", reason=Reason.NOT_REQUEST, source=source[0],
                                 detail=f"op {packet.op}: a reply, not a request")
                continue
            key = bytes(packet.mac)
            if key in self._in_flight:
                self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="in_flight")
                continue
            self._in_flight.add(key)
            ifindex = _ifindex(ancillary)
            self.pool.spawn(self._exchange, packet, (source[0], source[1], ifindex), key)  # waits if full

    def _receive_failed(self, exc: OSError, failures: int) -> None:
        """Count a receive error; raise it when it is not transient or keeps coming."""
        if exc.errno not in TRANSIENT_ERRNOS:
            log.error("dhcp receive failed, the DHCP server stops: %s", exc)
            raise exc
        if failures >= MAX_CONSECUTIVE_ERRORS:
            log.error("dhcp receive failed %d times in a row, the DHCP server stops: %s", failures, exc)
            raise exc
        self.receive_errors += 1
        if failures == 1:             # once per burst
            log.warning("dhcp receive failed (%s); retrying", exc)

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
        request = classify(packet, source)
        http_acl = self.http_acl      # the settings and the ACL of one reload (apply) together
        exchange = Exchange(self.settings, request, self.clients.get(request.mac),
                            select_scope(packet, self.main, self.scopes))
        try:
            step = exchange.start()
            if exchange.client is not None:
                self.clients.setdefault(request.mac, exchange.client)
            if isinstance(step, AclQuery):
                self._emit(step.events)
                assert http_acl is not None
                result = http_acl.check(step.mac, uuid=step.uuid, ip=step.ip, pxe=step.pxe)
                step = exchange.on_acl(result)
        except Exception:
            self._emit(exchange.take_events())    # what happened before the failure
            raise
        return self._carry_out(step, request.mac, ifindex)

    def _carry_out(self, outcome: Outcome, mac: str, ifindex: int) -> BootpPacket | None:
        if outcome.reply is not None:
            assert outcome.destination is not None
            self._send(encode(outcome.reply), outcome.destination, ifindex)
            if outcome.assigned is not None:
                self._ip_to_mac[outcome.assigned] = mac
        self._emit(outcome.events)
        return outcome.reply

    def _send(self, data: bytes, dest: Destination, ifindex: int) -> None:
        assert self.socket is not None
        if dest.limited_broadcast and ifindex and self.settings.buggy is None:
            # out of the request's interface, with no route needed (RFC 2131 §4.1); with
            # [buggy_clients] the socket is bound to the interface already
            pktinfo = _PKTINFO.pack(ifindex, b"\0" * 4, b"\0" * 4)
            self.socket.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0,
                               (dest.address, dest.port))
        else:
            self.socket.sendto(data, (dest.address, dest.port))

    def _emit(self, events: tuple[EventRecord, ...]) -> None:
        for event in events:
            self.events.emit(event.kind, **event.fields)

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

    # ------------------------------------------------------------------ status (metrics.DhcpStatus)
    def lease_counts(self) -> dict[str, tuple[int, int]]:
        """``scope → (bound, size)`` of every pool, for metrics."""
        return {scope.name: scope.store.counts() for scope in [self.main, *self.scopes]}

    def workers(self) -> tuple[int, int]:
        """``(busy, capacity)`` of the exchange pool, for metrics."""
        pool = self.pool
        return pool.size - pool.free_count(), pool.size

    def client_identity(self, mac: str) -> tuple[str | None, int | None]:
        """``(uuid, architecture)`` last seen from *mac* (``AA:BB:…``); ``(None, None)`` if unknown."""
        client = self.clients.get(mac)
        return (None, None) if client is None else (client.uuid, client.arch)


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("@i4s4s")           # struct in_pktinfo: ifindex, spec_dst, addr
PKTINFO_SPACE = socket.CMSG_SPACE(_PKTINFO.size)


def _ifindex(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            return _PKTINFO.unpack_from(data)[0]
    return 0


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
