"""The BOOTP/DHCP/PXE server: one UDP socket, its exchanges answered inline, in a bounded number.

The read loop decodes each datagram (a :class:`PacketError` is dropped: a ``dhcp.malformed``
event with the codec's reason), drops what it must not serve (a relayed request from a relay
outside ``relays``, more ``hops`` than ``max_hops``: RFC 1542 §4.1.1) and a retransmission
from a client whose exchange is still in flight, and hands the rest to a greenlet drawn from
a :class:`gevent.pool.Pool` of ``pool_size``. The loop never waits for a slot (design "Bounded
everything, and fair"): when the pool is full it yields once, so that the exchanges already
spawned run (one that waits on nothing ends in that turn), and if the pool is still full the
datagram is dropped and counted (``pool_full``); the client retransmits as it always does. A
burst is absorbed by the kernel's receive buffer (``rcvbuf``) while the loop reads. A receive
error that passes (an ICMP error, a lack of buffers) is counted and logged once per burst; one
that persists ends the read loop with that exception, so that the process exits.

With a SQLite or in-memory lease store (or none: proxy mode) the read loop answers each
request itself, without a greenlet per exchange (issue #14): the store decides at once on its
index and queues the commit, which the requests of one read batch share (one transaction);
the reply waits, parked, until that commit is done, and one greenlet per commit sends the
replies it holds, in order (:meth:`DhcpServer._run_inline`). A parked exchange holds its slot
of ``pool_size`` as one in the pool does, so a stuck disk fills the slots and the loop drops
and counts (``pool_full``). A PostgreSQL store decides in the database: its exchanges run in
the pool's greenlets, as all did before.

Inside an exchange the decisions are :class:`massboot.dhcp.exchange.Exchange`'s (no
I/O). Nothing in the exchange pool waits on the HTTP ACL (README, "[http]: the remote ACL"):
a verdict the ACL has cached answers at once; otherwise the exchange is handed to the ACL's own
pool of ``[http] max_calls`` greenlets (:meth:`massboot.acl.HttpAcl.submit`), where the call
and the rest of the exchange run, and the exchange slot is free again. When ``max_calls`` calls
are in flight the request is dropped and counted (``acl_busy``), never queued. So static
clients, clients of ``access = mac``/``uuid``, and known clients whose phase does not change
never wait behind ACL calls, however many strangers are being asked about. The exchange's lease
operations are made durable by the store before it returns an ACK.

Nor does anything in the exchange pool wait on an ICMP probe (README, "Lease lifecycle"): an
exchange that must ping an address before offering it (a :class:`ProbeQuery`) is handed, in
the same way, to the probe pool (``pool_size`` greenlets, each with its own ICMP socket), where
the probes (each at most ``probe_timeout``, at most ``MAX_PROBES`` of them) and the rest of
the exchange run. When that pool is full the request is dropped and counted (``probe_busy``).
An exchange handed to the ACL's pool that then needs a probe is handed on to the probe pool,
freeing its ACL call. :meth:`DhcpServer.handle` runs both steps in the caller's greenlet.

Per-client records (:class:`~massboot.dhcp.clients.ClientTable`) are made only for a request
that passed its checks, at most ``max_clients``, the least recently seen evicted first.

In proxy mode (``[bootpd] mode = proxy``, README "proxyDHCP") there is no lease store and a
second socket listens on the PXE boot server port (``bootserver_port``, 4011), read by a loop of
its own into the same pool; a reply to a request that came in there leaves from that socket
(PXE 2.1 §2.2.1), back to the client's source address and port. What a proxy exchange decides
is :class:`~massboot.dhcp.exchange.Exchange`'s, as in full mode. The addresses clients report
(``ciaddr``) are kept for TFTP's ``{ip}``, at most ``max_clients`` of them.

Outcomes are events only: the outcome log (:mod:`massboot.eventlog`, README "[logger]"), the
metrics and the notifications (:class:`massboot.notify.Notifier`, README "Notifications") are
subscribers of the bus. The lines this module writes itself are about its own workings: the
socket, receive errors, an exchange that failed with a traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent.pool import Group, Pool

from massboot.acl import AclResult, HttpAcl
from massboot.config import BootpConfig, SubnetConfig, pool_addresses
from massboot.dhcp.clients import ClientTable
from massboot.dhcp.exchange import (
    NO_ADDRESS,
    AclQuery,
    Destination,
    EventRecord,
    Exchange,
    Outcome,
    ProbeQuery,
    Scope,
    Settings,
    classify,
    hardware_problem,
    select_scope,
)
from massboot.dhcp.leases import LeaseStats, LeaseStore, LeaseStoreError, LeaseStoreUnavailable
from massboot.dhcp.leases.memory import DEFER_ATTRIBUTE, deferring
from massboot.dhcp.packet import (
    BOOTREQUEST,
    CODEC,
    CODEC_PROBLEM,
    CODEC_STALE,
    BootpPacket,
    PacketError,
    Reason,
    decode,
    encode,
)
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
#: the longest the read loop waits for an exchange slot before it drops and counts (pool_full)
POOL_WAIT = 0.5
#: the events an exchange records before its first lease decision: what is emitted of one
#: whose commit failed (as when the store raised in the decision)
_BEFORE_DECISION = frozenset({"dhcp.received", "dhcp.acl", "dhcp.malformed"})


class DhcpServer:
    """BOOTP/DHCP/PXE server.

    Args:
        config: the validated ``[bootpd]`` settings.
        server_ip: this server's address on the served subnet (siaddr, option 54).
        netmask: that subnet's mask (``[bootpd] netmask`` wins when set).
        store: lease store of the main subnet; None in proxy mode (and only there).
        events: the event bus every outcome goes to.
        subnet_stores: a lease store per ``[subnet:NAME]`` section, by name.
        bootfile_size: ``name, client_ip → size or None``, never blocking (option 13).
        http_base: ``http://ADDRESS:PORT/`` of this process's HTTP server (``-H``), for UEFI HTTP
            Boot clients' relative boot files; None without it.
        http_acl: the remote ACL when ``access = http``.
        prober: ``ip, timeout → True (answered), False or None (could not probe)``, used when
            ``probe = on``; an :class:`~massboot.dhcp.probe.IcmpProber` when None.
    """

    def __init__(self, config: BootpConfig, server_ip: str, netmask: str, store: LeaseStore | None,
                 events: EventBus, *, subnet_stores: dict[str, LeaseStore] | None = None,
                 bootfile_size: Callable[[str, str], int | None] | None = None,
                 http_base: str | None = None,
                 http_acl: HttpAcl | None = None,
                 dns: tuple[str, ...] | None = None,
                 prober: Callable[[str, float], bool | None] | None = None) -> None:
        self.config = config
        self.server_ip = server_ip
        self.events = events
        self.http_acl = http_acl
        self.settings = Settings.from_config(config, server_ip, bootfile_size=bootfile_size,
                                             http_base=http_base)
        if prober is None:      # opens its socket at the first probe: probe may be turned on by a reload
            from massboot.dhcp.probe import IcmpProber

            prober = IcmpProber()
        self.prober = prober
        netmask = config.netmask or netmask
        dns = config.dns if dns is None else dns
        main_net = ipaddress.IPv4Network(f"{server_ip}/{netmask}", strict=False)
        self.proxy = config.mode == "proxy"
        if (store is None) != self.proxy:
            raise ValueError("a lease store is needed in full mode, and only there")
        self.main: Scope | None = None if store is None else Scope(
            "main", store, Network(server_ip, netmask, config.gateway or server_ip, dns, config.lease_time),
            main_net)
        self.scopes: list[Scope] = []
        for sub in config.subnets:
            if subnet_stores is None or sub.name not in subnet_stores:
                raise ValueError(f"no lease store for subnet {sub.name}")
            self.scopes.append(self._scope(sub, subnet_stores[sub.name], dns))
        self.clients = ClientTable(config.max_clients)
        self._ip_to_mac: dict[str, str] = {}
        self._in_flight: set[bytes] = set()
        self.pool = Pool(config.pool_size)
        #: exchanges waiting on ICMP probes, out of the exchange pool (one ICMP socket each)
        self.probe_pool = Pool(config.pool_size)
        self._active = 0               # exchanges (in the pool, or answered inline) not ended yet
        #: the read loop answers inline: every store hands it its commits' results
        self._inline = self._stores_defer()
        #: exchanges answered inline whose replies wait for a commit, by the commit's result
        self._parked: dict[Any, list[tuple[Exchange, Outcome, int, bytes]]] = {}
        self._park_now: tuple[Any, Exchange, Outcome, int] | None = None
        #: the greenlets that send a commit's replies (joined at stop)
        self._finishers = Group()
        self._slot_freed = gevent.event.Event()
        self._stuck = False            # the last wait for a slot timed out, none freed since
        self.socket: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        #: proxy mode: the PXE boot server port's socket and its read loop
        self.bootserver_socket: socket.socket | None = None
        self._bootserver_reader: gevent.Greenlet | None = None
        self._running = False
        self.receive_errors = 0        # transient receive errors since start (for metrics)

    def apply(self, config: BootpConfig, *, subnet_stores: dict[str, LeaseStore],
              http_acl: HttpAcl | None, dns: tuple[str, ...]) -> None:
        """Take new settings (SIGHUP, README "Reload"): ACLs, static entries, boot files, subnets.

        Leases and exchanges in flight are kept: an exchange runs on the settings it started
        with. The socket, the main pool and its store stay (the caller says what needs a restart).
        Every store takes the new ``[static_dhcp]`` table (:meth:`LeaseStore.set_static`): an
        entry applies at its MAC's next request.
        """
        if config.mode != self.config.mode:   # a restart applies it (cli.restart_needed says so)
            config = dataclasses.replace(config, mode=self.config.mode)
        settings = Settings.from_config(config, self.server_ip, bootfile_size=self.settings.bootfile_size,
                                        http_base=self.settings.http_base)
        if self.main is None:          # proxy mode: no store, no scope (a mode change takes a restart)
            self.config, self.settings, self.http_acl = config, settings, http_acl
            self.clients.max_clients = config.max_clients
            return
        if config.static != self.config.static:
            for store in dict.fromkeys([self.main.store, *subnet_stores.values()]):
                try:
                    store.set_static(config.static)
                except LeaseStoreError as exc:    # logged by the store; memory is up to date
                    log.error("reload: [static_dhcp]: %s", exc)
        net = self.main.net
        main = Scope("main", self.main.store,
                     Network(self.server_ip, config.netmask or net.netmask,
                             config.gateway or self.server_ip, dns, config.lease_time), self.main.network)
        scopes = [self._scope(sub, subnet_stores[sub.name], dns, config) for sub in config.subnets]
        self.config, self.settings, self.http_acl, self.main, self.scopes = (
            config, settings, http_acl, main, scopes)
        self._inline = self._stores_defer()
        self.clients.max_clients = config.max_clients      # a smaller bound applies at the next record

    def _stores_defer(self) -> bool:
        """Every scope's store can hand the read loop its commits' results (SQLite, memory;
        proxy mode has none): the loop then answers inline instead of a greenlet each."""
        return all(getattr(scope.store, "defers_saves", False) for scope in self._all_scopes())

    def _scope(self, sub: SubnetConfig, store: LeaseStore, dns: tuple[str, ...],
               config: BootpConfig | None = None) -> Scope:
        return Scope(sub.name, store,
                     Network(self.server_ip, str(sub.network.netmask), sub.gateway, sub.dns or dns,
                             sub.lease_time or (config or self.config).lease_time), sub.network)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind the socket (synchronously) and start reading."""
        sock = self._bind(self.config.port)
        self.socket = sock
        if self.proxy:
            try:
                self.bootserver_socket = self._bootserver_bind()
            except OSError:
                sock.close()
                self.socket = None
                raise
        self._running = True
        self._reader = gevent.spawn(self._read_loop, sock, False)
        if self.bootserver_socket is not None:
            self._bootserver_reader = gevent.spawn(self._read_loop, self.bootserver_socket, True)
            log.info("dhcp listening on %s:%d and %s:%d (PXE boot server) server=%s mode=proxy "
                     "codec=%s", self.config.address, self.port, self.config.address,
                     self.bootserver_port, self.server_ip, CODEC)
        else:
            log.info("dhcp listening on %s:%d server=%s pool=%s+%d codec=%s", self.config.address,
                     self.port, self.server_ip, self.config.pool_start, self.config.pool_count, CODEC)
        if CODEC_PROBLEM is not None:   # README "Performance", "DHCP: the compiled codec"
            log.log(logging.WARNING if CODEC_STALE else logging.INFO,
                    "dhcp: %s; the Python codec serves every message", CODEC_PROBLEM)

    def _bind(self, port: int) -> socket.socket:
        """A DHCP socket bound to *port* of ``[bootpd] address`` (closed again if that fails)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            # learn the interface of each request, so that a limited broadcast (255.255.255.255)
            # goes out of that interface without SO_BINDTODEVICE or a route (RFC 2131 §4.1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            set_rcvbuf(sock, self.config.rcvbuf)
            if self.settings.buggy is not None:
                self._bind_to_device(sock)
            sock.bind((self.config.address, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _bootserver_bind(self) -> socket.socket:
        """Proxy mode's second socket, on the PXE boot server port (PXE 2.1 §2.2.1)."""
        try:
            return self._bind(self.config.bootserver_port)
        except OSError as exc:
            exc.bootserver_port = self.config.bootserver_port    # type: ignore[attr-defined]
            raise

    def _readers(self) -> list[gevent.Greenlet | None]:
        return [self._reader] + ([self._bootserver_reader] if self.proxy else [])

    @property
    def alive(self) -> bool:
        """True while the read loops run (for /healthz and the main loop)."""
        return all(reader is not None and not reader.dead for reader in self._readers())

    @property
    def error(self) -> str | None:
        """Why a read loop stopped on its own (a persistent receive error), else None."""
        for reader in self._readers():
            if reader is not None and reader.dead and reader.exception is not None:
                return f"receive failed: {reader.exception}"
        return None

    @property
    def bootserver_port(self) -> int:
        """Proxy mode: the bound PXE boot server port."""
        assert self.bootserver_socket is not None
        return self.bootserver_socket.getsockname()[1]

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
        for reader in self._readers():
            if reader is not None:
                reader.kill(block=True, timeout=1)
        pools = [self.pool] + ([self.http_acl.pool] if self.http_acl is not None else [])
        pools.append(self.probe_pool)     # last: an exchange may go on to it from the others
        pools.insert(0, self._finishers)  # replies waiting for their commit are sent
        for pool in pools:          # the exchanges waiting on the ACL or a probe finish there
            pool.join(timeout=timeout)
        for pool in pools:
            pool.kill(block=True, timeout=1)
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.bootserver_socket is not None:
            self.bootserver_socket.close()
            self.bootserver_socket = None

    def _bind_to_device(self, sock: socket.socket) -> None:
        # [buggy_clients] (README): these clients ignore subnet broadcasts, so replies go to
        # 255.255.255.255, which only leaves by the right interface when bound to it.
        from massboot.netif import find_network, local_networks

        network = find_network(self.server_ip, local_networks())
        if network is None:
            raise OSError(f"Unable to retrieve binding interface for {self.server_ip}")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, network.ifname.encode())

    # ------------------------------------------------------------------ read loop
    def _read_loop(self, sock: socket.socket | None = None, bootserver: bool = False) -> None:
        """Read *sock* (default: the DHCP port's; the PXE boot server port's when *bootserver*)
        until stopped."""
        sock = sock or self.socket
        assert sock is not None
        failures = 0                      # receive errors in a row
        deferring(gevent.getcurrent(), [])     # inline exchanges hand their commits' results here
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
            if not self._screen(packet, source[0]):
                continue
            key = bytes(packet.mac)
            if key in self._in_flight:
                self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="in_flight")
                continue
            if self._active >= self.pool.size and not self._wait_for_slot():
                self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="pool_full")
                continue
            self._in_flight.add(key)
            ifindex = _ifindex(ancillary)
            self._active += 1
            if self._inline:
                self._run_inline(packet, (source[0], source[1], ifindex, bootserver), key)
                continue
            # the slot is free: the pool may still count an ended exchange until its link
            # callback runs in the hub's next turn, the only wait spawn() can have here
            self.pool.spawn(self._run, packet, (source[0], source[1], ifindex, bootserver), key)

    def _wait_for_slot(self) -> bool:
        """Wait, at most ``POOL_WAIT`` seconds, for an exchange slot; False when none freed.

        No exchange waits on the HTTP ACL or a probe in this pool, so a full pool is a burst
        being worked through (lease commits): the loop waits a moment and the burst waits in the
        receive buffer, as a rack powering on needs. A pool that frees nothing in that time is
        stuck (a lease store that does not answer): the requests are dropped and counted, and
        the loop waits again only once a slot has freed (README, "DHCP and PXE behaviour").
        """
        if self._stuck:
            return False
        for scope in self._all_scopes():    # parked exchanges wait on commits: no window
            scope.store.hurry()
        deadline = time.monotonic() + POOL_WAIT
        while self._active >= self.pool.size:
            self._slot_freed.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not self._slot_freed.wait(left):
                self._stuck = self._active >= self.pool.size
                return not self._stuck
        return True

    def _screen(self, packet: BootpPacket, source: str) -> bool:
        """False (dropped, counted) for a hardware address that cannot identify a client
        (:func:`~massboot.dhcp.exchange.hardware_problem`), a request from a relay outside
        ``relays`` or with more ``hops`` than ``max_hops`` (RFC 1542 §4.1.1: relays discard
        above a configurable maximum, 4 by default, 16 at most)."""
        problem = hardware_problem(packet)
        if problem is not None:       # before the in-flight set, keyed by the hardware address
            self.events.emit("dhcp.malformed", reason=Reason.BAD_HLEN, source=source, detail=problem)
            return False
        if packet.hops > self.config.max_hops:
            self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="too_many_hops",
                             detail=f"hops {packet.hops} > {self.config.max_hops}")
            return False
        relays = self.config.relays
        if relays is not None and packet.giaddr != NO_ADDRESS:
            # the datagram's source is the relay as the network delivered it; giaddr, any
            # sender's to write, is the relay's address on the clients' side (RFC 1542 §4.1.1)
            address = ipaddress.IPv4Address(source)
            if not any(address in network for network in relays):
                self.events.emit("dhcp.ignored", mac=mac_str(packet.mac), reason="relay_not_allowed",
                                 detail=f"relay {source} (giaddr {packet.giaddr})")
                return False
        return True

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

    def _run(self, packet: BootpPacket, source: tuple[str, int, int, bool], key: bytes) -> None:
        """One exchange in the exchange pool; handed to the ACL's pool when it must ask, to
        the probe pool when it must ping. *source*: address, port, interface index, and
        whether it came in on the PXE boot server port."""
        handed_off = False
        try:
            handed_off = self._serve(packet, source[:2], source[2], key, source[3])
        except Exception:
            self._failed(packet.mac)
        finally:
            self._active -= 1
            self._stuck = False
            self._slot_freed.set()
            if not handed_off:
                self._in_flight.discard(key)

    def _run_inline(self, packet: BootpPacket, source: tuple[str, int, int, bool], key: bytes) -> None:
        """One exchange answered in the read loop, without a greenlet of its own (issue #14).

        Its lease decisions are taken at once on the store's index, and their commit is
        queued with those of the other requests of the same read batch (one transaction); the
        reply is parked until that commit is done (:meth:`_park`): an ACK still leaves only
        once its binding is durable. The ``pool_size`` bound counts parked exchanges as it
        counts the pool's. An exchange that must wait for the HTTP ACL or a probe is handed
        to their pools as before."""
        handed_off = False
        try:
            handed_off = self._serve(packet, source[:2], source[2], key, source[3])
        except Exception:
            self._park_now = None
            self._failed(packet.mac)
        finally:
            waits = getattr(gevent.getcurrent(), DEFER_ATTRIBUTE, None)
            if waits:       # decided, then failed before its reply: nothing to carry out
                waits.clear()
        parked, self._park_now = self._park_now, None
        if parked is not None:
            self._park(*parked, key)
            return
        self._active -= 1
        self._stuck = False
        self._slot_freed.set()
        if not handed_off:
            self._in_flight.discard(key)

    def _park(self, done: Any, exchange: Exchange, outcome: Outcome, ifindex: int, key: bytes) -> None:
        """Carry out *outcome* once *done* (its commit's result) is set: one greenlet per commit
        sends the replies of all the exchanges it holds, in order."""
        group = self._parked.get(done)
        if group is None:
            group = self._parked[done] = []
            self._finishers.spawn(self._finish, done, group)
        group.append((exchange, outcome, ifindex, key))

    def _finish(self, done: Any, group: list[tuple[Exchange, Outcome, int, bytes]]) -> None:
        """The commit of *group*'s decisions is done: send their replies (or, when it failed,
        none: the clients retry), end the exchanges."""
        done.wait()
        self._parked.pop(done, None)
        error = done.exception
        for exchange, outcome, ifindex, key in group:
            try:
                if error is None:
                    self._carry_out(exchange, outcome, ifindex)
                else:
                    self._commit_failed(exchange, outcome, error)
            except Exception:
                self._failed(exchange.request.packet.mac)
            finally:
                self._active -= 1
                self._in_flight.discard(key)
        self._stuck = False
        self._slot_freed.set()

    def _commit_failed(self, exchange: Exchange, outcome: Outcome, error: BaseException) -> None:
        """What an exchange whose store raised would have done (:meth:`_failed`), for one whose
        commit failed after its decision: the events of before the decision, no reply. The
        client's record keeps its state: the exchange changed a copy (:class:`ClientTable`),
        which only :meth:`_carry_out` keeps."""
        self._emit(tuple(e for e in outcome.events if e.kind in _BEFORE_DECISION))
        mac = exchange.request.mac
        if isinstance(error, LeaseStoreUnavailable):
            self.events.emit("dhcp.ignored", mac=mac, reason="lease_db_down")
            return
        log.error("dhcp exchange with %s failed: %s", mac, error)
        self.events.emit("dhcp.ignored", mac=mac, reason="internal_error")

    def _take_waits(self) -> list[Any]:
        """The commit results this greenlet's decisions handed it (emptied), if any."""
        waits = getattr(gevent.getcurrent(), DEFER_ATTRIBUTE, None)
        if not waits:
            return []
        taken = list(waits)
        waits.clear()
        return taken

    def _serve(self, packet: BootpPacket, source: tuple[str, int], ifindex: int, key: bytes,
               bootserver: bool = False) -> bool:
        """Answer, or hand the exchange to the ACL's or the probe pool; True when handed (it
        ends there)."""
        exchange, step, acl = self._begin(packet, source, bootserver)
        if isinstance(step, AclQuery):
            assert acl is not None
            result = acl.cached(step.mac, uuid=step.uuid, ip=step.ip, pxe=step.pxe)
            if result is None:
                waits = self._take_waits()

                def then(answer: AclResult) -> None:
                    self._after_acl(exchange, answer, ifindex, key, waits)

                known = exchange.request.mac in self.clients
                if acl.submit(step.mac, uuid=step.uuid, ip=step.ip, pxe=step.pxe, then=then, known=known):
                    return True
                # max_calls calls in flight: never queued (README, "[http]: the remote ACL")
                self.events.emit("dhcp.ignored", mac=exchange.request.mac, reason="acl_busy",
                                 phase=exchange.request.phase)
                return False
            step = self._step(exchange, exchange.on_acl, result)
        return self._go_on(exchange, step, ifindex, key)

    def _go_on(self, exchange: Exchange, step: Outcome | ProbeQuery, ifindex: int, key: bytes) -> bool:
        """Carry out *step*, or hand a probe to the probe pool; True when handed (it ends there)."""
        if not isinstance(step, ProbeQuery):
            self._carry_out(exchange, step, ifindex)
            return False
        if self.probe_pool.free_count() < 1:
            # pool_size probes in flight: never queued, the client retries (README, "Lease lifecycle")
            self._emit(step.events)
            self.events.emit("dhcp.ignored", mac=exchange.request.mac, reason="probe_busy",
                             phase=exchange.request.phase)
            return False
        # a free slot: no wait; the commits of the decisions taken so far go along
        self.probe_pool.spawn(self._after_probe, exchange, step, ifindex, key, self._take_waits())
        return True

    def _after_acl(self, exchange: Exchange, result: AclResult, ifindex: int, key: bytes,
                   waits: list[Any] = ()) -> None:         # type: ignore[assignment]
        """The rest of an exchange, in the ACL pool's greenlet that asked (*waits*: the commits
        of its decisions taken inline, waited for first)."""
        handed_off = False
        try:
            for done in waits:
                done.get()
            step = self._step(exchange, exchange.on_acl, result)
            handed_off = self._go_on(exchange, step, ifindex, key)
        except Exception:
            self._failed(exchange.request.packet.mac)
        finally:
            if not handed_off:
                self._in_flight.discard(key)

    def _after_probe(self, exchange: Exchange, step: ProbeQuery, ifindex: int, key: bytes,
                     waits: list[Any] = ()) -> None:       # type: ignore[assignment]
        """The probes and the rest of an exchange, in a greenlet of the probe pool (*waits*: the
        commits of its decisions taken inline, waited for first)."""
        try:
            for done in waits:
                done.get()
            self._carry_out(exchange, self._probes_here(exchange, step), ifindex)
        except Exception:
            self._failed(exchange.request.packet.mac)
        finally:
            self._in_flight.discard(key)

    def _failed(self, mac: bytes) -> None:
        if isinstance(sys.exc_info()[1], LeaseStoreUnavailable):
            # the store logs the outage once; the client retries (README, "Several servers")
            self.events.emit("dhcp.ignored", mac=mac_str(mac), reason="lease_db_down")
            return
        log.exception("dhcp exchange with %s failed", mac_str(mac))
        self.events.emit("dhcp.ignored", mac=mac_str(mac), reason="internal_error")

    # ------------------------------------------------------------------ one exchange
    def handle(self, packet: BootpPacket, source: tuple[str, int], ifindex: int = 0,
               bootserver: bool = False) -> BootpPacket | None:
        """Answer one decoded request in the caller's greenlet; return the reply sent, if any.

        The read loop does not call this: it screens relays and hops, and never lets an
        exchange wait on the HTTP ACL or a probe in its pool. Here a verdict the ACL has not
        cached is asked in this greenlet (bounded by the ACL's timeout, not by ``max_calls``),
        and so are the probes (each bounded by ``probe_timeout``).

        Args:
            packet: the decoded request.
            source: its source address and port.
            ifindex: the interface it arrived on (0: unknown), for limited broadcasts.
            bootserver: it came in on the PXE boot server port (proxy mode).
        """
        exchange, step, acl = self._begin(packet, source, bootserver)
        if isinstance(step, AclQuery):
            assert acl is not None
            result = acl.check(step.mac, uuid=step.uuid, ip=step.ip, pxe=step.pxe)
            step = self._step(exchange, exchange.on_acl, result)
        return self._carry_out(exchange, self._probes_here(exchange, step), ifindex)

    def _begin(self, packet: BootpPacket, source: tuple[str, int], bootserver: bool = False
               ) -> tuple[Exchange, Outcome | AclQuery | ProbeQuery, HttpAcl | None]:
        """Start the exchange of *packet*: it, its first step (the query's events emitted), and
        the HTTP ACL of the same settings (a reload, ``apply``, swaps both: an exchange runs on
        those it started with)."""
        request, acl = classify(packet, source, bootserver=bootserver), self.http_acl
        scope = None if self.main is None else select_scope(packet, self.main, self.scopes)
        exchange = Exchange(self.settings, request, self.clients.get(request.mac), scope)
        step = self._step(exchange, exchange.start)
        if isinstance(step, AclQuery):
            self._emit(step.events)
        return exchange, step, acl

    def _step(self, exchange: Exchange, step: Callable[..., Any], *args: Any
              ) -> Outcome | AclQuery | ProbeQuery:
        """Run one step of *exchange*; on an exception, emit what happened before it, then raise."""
        try:
            return step(*args)
        except Exception:
            self._emit(exchange.take_events())
            raise

    def _probes_here(self, exchange: Exchange, step: Outcome | ProbeQuery) -> Outcome:
        """Probe in this greenlet until *exchange* is decided (each probe bounded by its
        timeout, at most ``MAX_PROBES`` of them)."""
        while isinstance(step, ProbeQuery):
            self._emit(step.events)
            step = self._step(exchange, exchange.on_probe, self._probe(step))
        return step

    def _probe(self, query: ProbeQuery) -> bool | None:
        """Ping *query.ip* in this greenlet, at most its timeout (None: could not probe)."""
        if self.prober is None:
            return None
        try:
            return self.prober(query.ip, query.timeout)
        except OSError as exc:
            log.warning("probe of %s failed: %s", query.ip, exc)
            return None

    def _carry_out(self, exchange: Exchange, outcome: Outcome, ifindex: int) -> BootpPacket | None:
        waits = self._take_waits()
        if waits:       # answered inline: the reply waits for its commit (_run_inline parks it)
            self._park_now = (waits[-1], exchange, outcome, ifindex)
            return outcome.reply
        client = exchange.client
        # a record only for a request that passed its checks, or a client we know already
        if client is not None and (exchange.admitted or client.mac in self.clients):
            self.clients.seen(client)
        if outcome.reply is not None:
            assert outcome.destination is not None
            self._send(encode(outcome.reply), outcome.destination, ifindex)
            if outcome.assigned is not None:
                self._ip_to_mac[outcome.assigned] = exchange.request.mac
        if outcome.reported is not None:          # proxy mode: bounded, the client chose it
            self._ip_to_mac.pop(outcome.reported, None)
            self._ip_to_mac[outcome.reported] = exchange.request.mac
            while len(self._ip_to_mac) > self.config.max_clients:
                del self._ip_to_mac[next(iter(self._ip_to_mac))]
        self._emit(outcome.events)
        return outcome.reply

    def _send(self, data: bytes, dest: Destination, ifindex: int) -> None:
        sock = self.bootserver_socket if dest.bootserver else self.socket
        assert sock is not None
        if dest.limited_broadcast and ifindex and self.settings.buggy is None:
            # out of the request's interface, with no route needed (RFC 2131 §4.1); with
            # [buggy_clients] the socket is bound to the interface already
            pktinfo = _PKTINFO.pack(ifindex, b"\0" * 4, b"\0" * 4)
            sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (dest.address, dest.port))
        else:
            sock.sendto(data, (dest.address, dest.port))

    def _emit(self, events: tuple[EventRecord, ...]) -> None:
        publish = self.events.publish      # the exchange made each fields dict for its event
        for event in events:
            publish(event.kind, event.fields)

    # ------------------------------------------------------------------ for the TFTP side
    def reported(self, ip: str) -> bool:
        """Proxy mode: a boot client reported *ip* as the address the site server gave it (the
        ``ciaddr`` of its port-4011 REQUEST, or option 50): ``[httpd] check_ip``'s question
        when massboot leases nothing (README, "proxyDHCP"). Bounded by ``max_clients``."""
        return ip in self._ip_to_mac

    def client_info(self, ip: str) -> ClientInfo | None:
        """What the DHCP side knows of the client holding *ip* (TFTP filters' variables)."""
        mac = self._ip_to_mac.get(ip)
        if mac is None:
            for scope in self._all_scopes():
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
        return {scope.name: scope.store.counts() for scope in self._all_scopes()}

    def lease_db_up(self) -> dict[str, bool]:
        """``scope → reachable`` of each store with a database server (none for SQLite, nor in
        proxy mode)."""
        out = {}
        for scope in self._all_scopes():
            up = scope.store.database_up
            if up is not None:
                out[scope.name] = up
        return out

    def lease_stats(self) -> dict[str, LeaseStats]:
        """``scope → lifecycle counters`` of every pool, for metrics."""
        return {scope.name: scope.store.stats() for scope in self._all_scopes()}

    def _all_scopes(self) -> list[Scope]:
        """The main scope and the relay subnets' (none in proxy mode)."""
        return [] if self.main is None else [self.main, *self.scopes]

    def workers(self) -> tuple[int, int]:
        """``(busy, capacity)`` of the exchange pool, for metrics."""
        # answered inline or in a greenlet, an exchange holds its slot until its reply is sent
        return min(self._active, self.pool.size), self.pool.size

    def probe_workers(self) -> tuple[int, int]:
        """``(exchanges probing, capacity)`` of the probe pool, for metrics."""
        pool = self.probe_pool
        return pool.size - pool.free_count(), pool.size

    def acl_workers(self) -> tuple[int, int] | None:
        """``(calls in flight, max_calls)`` of the HTTP ACL; None without one."""
        return None if self.http_acl is None else self.http_acl.busy()

    def guard_counts(self) -> dict[str, int]:
        """Counters of the bounds, for metrics: client records kept and evicted, ACL calls
        made, verdicts answered from the cache, calls refused (``max_calls`` in flight),
        receive errors that passed."""
        acl = self.http_acl
        return {"clients": len(self.clients), "clients_evicted": self.clients.evicted,
                "acl_calls": acl.calls if acl else 0, "acl_cache_hits": acl.cache_hits if acl else 0,
                "acl_refused": acl.refused if acl else 0, "receive_errors": self.receive_errors}

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
