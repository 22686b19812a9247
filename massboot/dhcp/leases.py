"""Lease store: MAC → IP bindings over an ordered pool, with a lifecycle (README, "Lease lifecycle").

Bindings are sticky while the pool has room (pybootd's behaviour, README "DHCP and PXE
behaviour"); what is not a binding does not hold an address for ever::

    DISCOVER → offered ──REQUEST──→ bound ──lease time passes──→ expired ──pool full──→ reclaimed
                 │ no REQUEST within offer_hold         ↑ renew            (reclaim = expired)
                 └──→ forgotten (the address is free)   └── RELEASE → released (reclaimable)
    DECLINE by the holder → probation (decline_probation) → free, probed before reuse

* An OFFER is provisional: it holds its address for ``offer_hold`` seconds (persisted with that
  expiry, so a restart does not make it permanent); unREQUESTed, it is forgotten.
* A bound lease whose time ran out (or that was released) keeps its address for its MAC as long
  as the pool has free addresses. When it has none and ``reclaim = expired``, the binding that
  expired longest ago is reclaimed (as Kea and dnsmasq reuse expired leases); ``reclaim =
  never`` keeps pybootd's strict never-reassign rule. Static (``[static_dhcp]``) and reserved
  (``reserve``) bindings are never reclaimed.
* A DHCPDECLINE counts only from the MAC that holds the address, for a pool address (or the
  MAC's static one) (RFC 2131 §4.3.3); the address is then set aside for ``decline_probation``
  seconds (Kea's default: a day) and comes back afterwards.
* An address that goes to another MAC than the one that had it bound (reclaimed, freed by the
  operator) or that comes back from probation is *suspect*: :meth:`LeaseStore.needs_probe` is
  True until a probe (ICMP echo, done by the server) found it silent or a client bound it.

Every decision is made on an in-memory index (MAC → lease, IP → MAC, a heap of free pool
addresses, heaps of offer and lease expiries, the addresses on probation) with no cooperative
yield between reading and writing it, so a decision is atomic under gevent, and each costs
O(log n). :class:`SqliteLeaseStore` then writes the change to SQLite on one worker thread and
the caller waits for it cooperatively.

``LeaseStore`` keeps each operation that decides atomic on its own (:meth:`~LeaseStore.allocate`,
:meth:`~LeaseStore.bind`, :meth:`~LeaseStore.release`, :meth:`~LeaseStore.decline`, and the
operator's :meth:`~LeaseStore.free`, :meth:`~LeaseStore.reserve`, :meth:`~LeaseStore.unreserve`,
and a reload's :meth:`~LeaseStore.set_static`):
the caller never reads a lease and then writes a decision based on it, so a store that yields on
every call (a database shared by several servers) can implement it with one transaction each.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from massboot.ident import mac_str, parse_mac

log = logging.getLogger(__name__)

OFFERED = "offered"
BOUND = "bound"
RELEASED = "released"
EXPIRED = "expired"        # reported only: a bound lease whose time ran out
RESERVED = "reserved"      # reported only: reserved by the operator (LeaseStore.reserve)
STATIC = "static"          # reported only: a [static_dhcp] binding
#: ``reclaim`` values: reuse the longest-expired binding when the pool is full, or never
RECLAIM_EXPIRED = "expired"
RECLAIM_NEVER = "never"
DEFAULT_OFFER_HOLD = 60.0
DEFAULT_DECLINE_PROBATION = 86400.0
#: seconds an address that answered a probe is set aside before it is tried (and probed) again
#: (dnsmasq avoids such an address for 10 minutes)
PROBE_IN_USE_HOLD = 600.0
#: the refusal reasons of :meth:`LeaseStore.decline` (the ``detail`` of ``dhcp.ignored``)
DECLINE_OTHER_MAC = "other_mac"
DECLINE_OUTSIDE_POOL = "outside_pool"
DECLINE_NOT_HELD = "not_held"


@dataclass(frozen=True, slots=True)
class Lease:
    """One MAC's binding.

    Attributes:
        mac: ``AA:BB:CC:DD:EE:FF``.
        ip: the bound address.
        static: from ``[static_dhcp]``.
        state: ``offered`` (provisional, until *expires*), ``bound``, ``expired`` (bound, its
            time ran out: sticky while the pool has room), ``released``; ``static`` and
            ``reserved`` for bindings that never expire nor move (*expires* then tells when
            the last ACK's lease ends).
        uuid: the client UUID (option 97) when known.
        expires: epoch seconds when the offer or lease ends; None when it never does (a static
            or reserved binding never bound).
        updated: epoch seconds of the last change.
        reserved: reserved by the operator (:meth:`LeaseStore.reserve`).
    """

    mac: str
    ip: str
    static: bool = False
    state: str = OFFERED
    uuid: str | None = None
    expires: float | None = None
    updated: float = 0.0
    reserved: bool = False

    @property
    def pinned(self) -> bool:
        """Static or reserved: never expires, never reclaimed."""
        return self.static or self.reserved


@dataclass(frozen=True, slots=True)
class Binding:
    """The result of :meth:`LeaseStore.bind`.

    Attributes:
        lease: the MAC's lease after the call; None when it had none and the pool is exhausted.
        bound: True when *lease* is now bound; False when the MAC holds another address than
            the one asked for (*lease* is then that binding, unchanged) or has none.
    """

    lease: Lease | None
    bound: bool


@dataclass(frozen=True, slots=True)
class Decline:
    """The result of :meth:`LeaseStore.decline`.

    Attributes:
        ip: the address the DHCPDECLINE named (option 50, else the MAC's address), or None.
        refused: None when accepted, else why it changed nothing: ``other_mac`` (another MAC
            holds it), ``outside_pool``, ``not_held`` (the MAC holds no such offer or lease).
        until: when an accepted address comes back (end of its probation).
    """

    ip: str | None
    refused: str | None = None
    until: float | None = None

    @property
    def accepted(self) -> bool:
        return self.refused is None


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """Counters since start, read by the metrics at scrape time.

    Attributes:
        offers_expired: offers forgotten because no REQUEST came within ``offer_hold``.
        reclaimed: expired bindings whose address went to another MAC.
        probation_ended: declined (or probed in-use) addresses that came back.
    """

    offers_expired: int = 0
    reclaimed: int = 0
    probation_ended: int = 0


class LeaseConflict(ValueError):
    """A commit or reservation that would give a MAC an address it may not have."""


class LeaseStoreError(RuntimeError):
    """The persistent store could not record a change."""


class LeaseStore(ABC):
    """The lease interface the DHCP exchange and the operator's commands use."""

    @abstractmethod
    def get(self, mac: str) -> Lease | None:
        """The MAC's binding (an offer past its hold is none), or None."""

    @abstractmethod
    def by_ip(self, ip: str) -> Lease | None:
        """The lease holding *ip*, or None."""

    @abstractmethod
    def allocate(self, mac: str) -> Lease | None:
        """Return the MAC's address, offering a new one if it has none.

        Sticky: the existing binding is returned unchanged (an expired or released one is then
        kept from reclaim for ``offer_hold``); else the static address; else the first free
        pool address (state ``offered`` until ``now + offer_hold``); else, with ``reclaim =
        expired``, the address of the binding that expired longest ago.

        Returns:
            The lease, or None when the pool is exhausted.
        """

    @abstractmethod
    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        """Mark the MAC's binding to *ip* as bound until ``now + lease_time``.

        Returns only once the change is durable.

        Raises:
            LeaseConflict: *ip* is held or reserved for another MAC, set aside, or the MAC
                holds a different address.
        """

    @abstractmethod
    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        """Atomically bind the MAC's address for a DHCPREQUEST or a plain BOOTP request.

        The MAC's address is its binding, or a new one picked as :meth:`allocate` does (a
        new offer is kept even when nothing gets bound). When *ip* is given and is not that
        address, nothing is bound. Otherwise the binding is marked bound until
        ``now + lease_time`` and the call returns only once that is durable (an ACKed lease is
        never lost: commit before the ACK leaves).
        """

    @abstractmethod
    def release(self, mac: str, ip: str | None = None) -> Lease | None:
        """Mark the MAC's lease released: it keeps the address while the pool has room.

        With *ip*, only when the MAC holds that address. Returns the released lease, or None
        when nothing was released.
        """

    @abstractmethod
    def decline(self, mac: str, ip: str | None = None) -> Decline:
        """A DHCPDECLINE from *mac* for *ip* (None: the MAC's address), RFC 2131 §4.3.3.

        Accepted only when the MAC holds *ip* (offered, or bound and not expired) and *ip* is a
        pool address or the MAC's static one: the address is set aside for
        ``decline_probation`` seconds and the MAC's binding dropped. Anything else changes
        nothing and says why.
        """

    @abstractmethod
    def needs_probe(self, ip: str) -> bool:
        """True when *ip* must be probed before it is offered (see the module docstring)."""

    @abstractmethod
    def probed(self, mac: str, ip: str, in_use: bool) -> None:
        """Record a probe of *ip*, offered to *mac*: silent, it is no longer suspect; answered,
        it is set aside for :data:`PROBE_IN_USE_HOLD` seconds and the MAC's offer dropped."""

    @abstractmethod
    def free(self, mac: str) -> Lease | None:
        """Drop the MAC's binding, whatever its state (operator). Returns it, or None.

        A static MAC gets its static address again on its next request; the freed address of
        another MAC is probed before it is offered again.
        """

    @abstractmethod
    def reserve(self, mac: str, ip: str) -> Lease:
        """Reserve *ip* for *mac* (operator): never reclaimed, never offered to another MAC.

        The MAC's other binding, if any, is dropped; another MAC's expired or released binding
        to *ip* is taken over; a probation on *ip* ends.

        Raises:
            LeaseConflict: *ip* is another MAC's active binding (offered or bound and not
                expired) or reservation, a static or excluded address, or not an IPv4
                address; or *mac* is static.
        """

    @abstractmethod
    def unreserve(self, mac: str) -> bool:
        """Drop the MAC's reservation; a bound lease stays as an ordinary one. False when the
        MAC had no reservation."""

    @abstractmethod
    def set_static(self, static: Mapping[str, str]) -> list[tuple[str, str, str]]:
        """Adopt a new ``[static_dhcp]`` MAC → IP table (a reload), atomically; no lease is lost.

        A new entry applies at the MAC's next request (its other binding or reservation yields
        then). An entry whose address is another MAC's active binding wins: that binding is
        dropped, with a warning, so the other MAC's next request is NAKed or gets another
        address. A removed entry's bound address becomes an ordinary binding (sticky while the
        pool has room) or, outside the pool, is released at the MAC's next request.

        Returns:
            ``(ip, static MAC, other MAC)`` of each such taken-over active binding.

        Raises:
            ValueError: an address is given to two MACs (nothing changed).
        """

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """``(in use, capacity)`` over the pool.

        *in use* counts pool addresses with an active binding (an offer within its hold, a
        bound lease not expired, a static or reserved one; with ``reclaim = never`` every
        binding); *capacity* is *in use* plus the addresses that can be handed out (free,
        or expired and reclaimable), i.e. the pool without the excluded addresses and those
        on probation. The pool is exhausted when they are equal.
        """

    @abstractmethod
    def stats(self) -> LeaseStats:
        """Lifecycle counters since start (for metrics)."""

    @abstractmethod
    def leases(self) -> list[Lease]:
        """Every binding with its state (a snapshot)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; pending writes are finished first."""


_CANONICAL_MAC = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")


def _norm_mac(mac: str) -> str:
    if _CANONICAL_MAC.fullmatch(mac):      # the server's own form: the common case, kept cheap
        return mac
    return mac_str(parse_mac(mac))


def _active(lease: Lease, now: float) -> bool:
    """Holds its address now: pinned, an offer within its hold, a lease not expired."""
    if lease.pinned:
        return True
    if lease.state == OFFERED:
        return lease.expires is None or lease.expires > now
    return lease.state == BOUND and lease.expires is not None and lease.expires > now


def _view(lease: Lease, now: float) -> Lease:
    """The lease as callers see it: its reported state."""
    if lease.static:
        state = STATIC
    elif lease.reserved:
        state = RESERVED
    elif lease.state == BOUND and lease.expires is not None and lease.expires <= now:
        state = EXPIRED
    else:
        return lease
    return replace(lease, state=state)


@dataclass(slots=True)
class _Change:
    """What one decision changed, for the persistent store (one transaction)."""

    upserts: dict[str, Lease] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    set_aside: dict[str, tuple[str | None, float, float]] = field(default_factory=dict)  # ip → mac, at, until
    returned: set[str] = field(default_factory=set)          # ips whose probation ended

    def upsert(self, lease: Lease) -> None:
        self.deletes.discard(lease.mac)
        self.upserts[lease.mac] = lease

    def delete(self, mac: str) -> None:
        self.upserts.pop(mac, None)
        self.deletes.add(mac)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.set_aside or self.returned)


def _static_table(static: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(MAC → IP, IP → MAC)`` of ``[static_dhcp]``.

    Raises:
        ValueError: an address is given to two MACs.
    """
    table: dict[str, str] = {}
    owner: dict[str, str] = {}
    for mac, ip in static.items():
        mac = _norm_mac(mac)
        other = owner.get(ip)
        if other is not None and other != mac:
            raise ValueError(f"static address {ip} given to both {other} and {mac}")
        table[mac] = ip
        owner[ip] = mac
    return table, owner


class _Index:
    """The in-memory state shared by both stores. Never yields; every method is atomic.

    Heaps are lazy: an entry is checked against the current lease when it is popped, and
    skipped when stale (the lease changed or went away since).
    """

    def __init__(self, pool: Sequence[str], static: Mapping[str, str], exclude: Iterable[str], *,
                 offer_hold: float, reclaim: str, decline_probation: float) -> None:
        if reclaim not in (RECLAIM_EXPIRED, RECLAIM_NEVER):
            raise ValueError(f"reclaim must be {RECLAIM_EXPIRED!r} or {RECLAIM_NEVER!r}, not {reclaim!r}")
        self.pool = list(dict.fromkeys(pool))
        self.position = {ip: n for n, ip in enumerate(self.pool)}
        self.exclude = set(exclude)
        self.offer_hold = offer_hold
        self.reclaim = reclaim
        self.probation = decline_probation
        self.static, self.static_owner = _static_table(static)
        #: MACs whose binding a reload of [static_dhcp] made wrong: dropped at their next request
        self.stale: set[str] = set()
        self.aside: dict[str, float] = {}              # ip → end of its probation
        self.by_mac: dict[str, Lease] = {}
        self.owner: dict[str, str] = dict(self.static_owner)  # ip -> mac, reservations included
        self.suspect: set[str] = set()                 # to probe before it is offered
        self.held: dict[str, float] = {}               # mac → until: its expired lease is re-offered
        self.free_heap: list[int] = []                 # pool positions, lazily valid
        self.offer_heap: list[tuple[float, str]] = []  # (expires, mac) of offers
        self.expiry_heap: list[tuple[float, str]] = []  # (expires, mac) of bound/released leases
        self.aside_heap: list[tuple[float, str]] = []  # (until, ip)
        self.offers_expired = self.reclaimed = self.probation_ended = 0
        self._rebuild_free()

    # -- loading -------------------------------------------------------------------------

    def load(self, rows: Iterable[Lease], declined: Iterable[tuple[str, float]], now: float) -> _Change:
        """Adopt persisted state; return the rows to delete (expired offers, config changes)."""
        change = _Change()
        for ip, until in declined:
            if ip not in self.position and ip not in self.static_owner:
                log.info("declined address %s dropped: outside the pool", ip)
                change.returned.add(ip)
            elif until <= now:
                change.returned.add(ip)
                self.suspect.add(ip)
            else:
                self.aside[ip] = until
                heapq.heappush(self.aside_heap, (until, ip))
        for lease in rows:
            static_ip = self.static.get(lease.mac)
            if lease.state == OFFERED and static_ip is None and not lease.reserved and \
                    (lease.expires is None or lease.expires <= now):
                # an offer past its hold is forgotten; so is the never-bound offer of a MAC
                # that is no longer static
                change.delete(lease.mac)
                continue
            if static_ip is not None and lease.ip != static_ip:
                log.info("lease mac=%s ip=%s replaced by static ip=%s", lease.mac, lease.ip, static_ip)
                change.delete(lease.mac)
                continue
            holder = self.owner.get(lease.ip)
            if holder is not None and holder != lease.mac:
                log.warning("lease mac=%s ip=%s dropped: the address is now static for %s",
                            lease.mac, lease.ip, holder)
                change.delete(lease.mac)
                continue
            if lease.ip in self.aside:
                log.warning("lease mac=%s ip=%s dropped: the address was declined", lease.mac, lease.ip)
                change.delete(lease.mac)
                continue
            if lease.ip not in self.position and static_ip is None and not lease.reserved:
                if lease.static:        # as set_static does for a removed entry
                    self.stale.add(lease.mac)
                    log.info("lease mac=%s ip=%s is no longer static; outside the pool, it is released "
                             "at the next request", lease.mac, lease.ip)
                else:
                    log.info("lease mac=%s ip=%s is outside the pool; kept for that MAC", lease.mac, lease.ip)
            lease = replace(lease, static=static_ip is not None)
            self._put(lease)
        self._rebuild_free()
        return change

    def _rebuild_free(self) -> None:
        self.free_heap = [n for n, ip in enumerate(self.pool) if self._usable(ip)]   # sorted: a heap

    # -- bookkeeping -----------------------------------------------------------------------

    def _usable(self, ip: str) -> bool:
        return ip not in self.owner and ip not in self.aside and ip not in self.exclude

    def _put(self, lease: Lease) -> None:
        """Store *lease* and index its expiry."""
        self.by_mac[lease.mac] = lease
        self.owner[lease.ip] = lease.mac
        if lease.pinned or lease.expires is None:
            return
        if lease.state == OFFERED:
            heapq.heappush(self.offer_heap, (lease.expires, lease.mac))
        else:
            heapq.heappush(self.expiry_heap, (lease.expires, lease.mac))
            if len(self.expiry_heap) > 2 * len(self.by_mac) + 64:     # renewals leave stale entries
                self.expiry_heap = [(e, m) for e, m in self.expiry_heap
                                    if self._current(m, e, BOUND, RELEASED)]
                heapq.heapify(self.expiry_heap)

    def _current(self, mac: str, expires: float, *states: str) -> Lease | None:
        """The MAC's lease when a heap entry ``(expires, mac)`` still describes it."""
        lease = self.by_mac.get(mac)
        if lease is None or lease.expires != expires or lease.state not in states or lease.pinned:
            return None
        return lease

    def _drop(self, mac: str, change: _Change) -> Lease | None:
        """Forget the MAC's binding; its pool address becomes free."""
        lease = self.by_mac.pop(mac, None)
        self.held.pop(mac, None)
        if lease is None:
            return None
        change.delete(mac)
        ip = lease.ip
        if ip not in self.static_owner and self.owner.get(ip) == mac:
            del self.owner[ip]
            if lease.state != OFFERED:
                self.suspect.add(ip)            # it was bound: the host may still use it
            position = self.position.get(ip)
            if position is not None:
                heapq.heappush(self.free_heap, position)
        return lease

    def _set_aside(self, ip: str, mac: str | None, until: float, now: float, change: _Change) -> None:
        self.aside[ip] = until
        heapq.heappush(self.aside_heap, (until, ip))
        change.set_aside[ip] = (mac, now, until)
        change.returned.discard(ip)

    def sweep(self, now: float, change: _Change) -> None:
        """Forget the offers past their hold; end the probations that are over."""
        heap = self.offer_heap
        while heap and heap[0][0] <= now:
            expires, mac = heapq.heappop(heap)
            if self._current(mac, expires, OFFERED) is not None:
                self._drop(mac, change)
                self.offers_expired += 1
        heap = self.aside_heap
        while heap and heap[0][0] <= now:
            until, ip = heapq.heappop(heap)
            if self.aside.get(ip) == until:
                del self.aside[ip]
                self.suspect.add(ip)             # probe it before it is offered again
                change.returned.add(ip)
                change.set_aside.pop(ip, None)
                self.probation_ended += 1
                position = self.position.get(ip)
                if position is not None:
                    heapq.heappush(self.free_heap, position)

    def _take_free(self) -> str | None:
        heap = self.free_heap
        while heap:
            ip = self.pool[heapq.heappop(heap)]
            if self._usable(ip):
                return ip
        return None

    def _take_expired(self, now: float, change: _Change) -> str | None:
        """Reclaim the address of the binding that expired longest ago, if any expired."""
        heap, kept = self.expiry_heap, []
        found: Lease | None = None
        while heap and heap[0][0] <= now:
            expires, mac = heapq.heappop(heap)
            lease = self._current(mac, expires, BOUND, RELEASED)
            if lease is None or lease.ip not in self.position:
                continue                    # stale, or outside the pool (reclaiming it helps nobody)
            if self.held.get(mac, 0.0) > now:
                kept.append((expires, mac))   # its MAC came back and was offered it: not now
                continue
            found = lease
            break
        for entry in kept:
            heapq.heappush(heap, entry)
        if found is None:
            return None
        self._drop(found.mac, change)
        self.reclaimed += 1
        log.info("lease reclaimed ip=%s from mac=%s (expired %.0f s ago)", found.ip, found.mac,
                 now - (found.expires or now))
        return found.ip if self._usable(found.ip) else None

    # -- decisions (no yield anywhere below) -----------------------------------------------

    def allocate(self, mac: str, now: float, change: _Change) -> Lease | None:
        if self.stale and mac in self.stale:
            self.stale.discard(mac)
            dropped = self._drop(mac, change)
            if dropped is not None:
                log.info("lease mac=%s ip=%s dropped: [static_dhcp] changed", mac, dropped.ip)
        lease = self.by_mac.get(mac)
        if lease is not None:
            if not _active(lease, now):
                self.held[mac] = now + self.offer_hold     # not reclaimed while it REQUESTs it
            return lease
        static_ip = self.static.get(mac)
        if static_ip is not None and static_ip not in self.aside:
            lease = Lease(mac, static_ip, static=True, state=OFFERED, updated=now)
        else:
            ip = self._take_free()
            if ip is None and self.reclaim == RECLAIM_EXPIRED:
                ip = self._take_expired(now, change)
            if ip is None:
                return None
            lease = Lease(mac, ip, state=OFFERED, expires=now + self.offer_hold, updated=now)
        self._put(lease)
        change.upsert(lease)
        return lease

    def commit(self, mac: str, ip: str, lease_time: int, uuid: str | None, now: float,
               change: _Change) -> Lease:
        current = self.by_mac.get(mac)
        if current is not None:
            if current.ip != ip:
                raise LeaseConflict(f"{mac} is bound to {current.ip}, not {ip}")
        else:
            static_ip = self.static.get(mac)
            if static_ip is not None and static_ip != ip and static_ip not in self.aside:
                raise LeaseConflict(f"{mac} has the static address {static_ip}, not {ip}")
            holder = self.owner.get(ip)
            if holder is not None and holder != mac:
                raise LeaseConflict(f"{ip} is bound to {holder}")
            if holder is None and (ip in self.aside or ip in self.exclude):
                raise LeaseConflict(f"{ip} is set aside")
        lease = Lease(
            mac,
            ip,
            static=self.static.get(mac) == ip,
            state=BOUND,
            uuid=uuid if uuid is not None else (current.uuid if current is not None else None),
            expires=now + lease_time,
            updated=now,
            reserved=current is not None and current.reserved,
        )
        self._put(lease)
        self.held.pop(mac, None)
        self.suspect.discard(ip)         # the client checks it (ARP, RFC 2131 §4.4.1) and declines
        change.upsert(lease)
        return lease

    def bind(self, mac: str, ip: str | None, lease_time: int, uuid: str | None, now: float,
             change: _Change) -> tuple[Lease | None, bool]:
        lease = self.allocate(mac, now, change)
        if lease is None or (ip is not None and lease.ip != ip):
            return lease, False
        return self.commit(mac, lease.ip, lease_time, uuid, now, change), True

    def release(self, mac: str, ip: str | None, now: float, change: _Change) -> Lease | None:
        current = self.by_mac.get(mac)
        if current is None or (ip is not None and current.ip != ip) or current.state == OFFERED:
            return None
        expires = now if current.expires is None else min(current.expires, now)
        lease = replace(current, state=RELEASED, expires=expires, updated=now)
        self._put(lease)
        change.upsert(lease)
        return lease

    def decline(self, mac: str, ip: str | None, now: float, change: _Change) -> Decline:
        current = self.by_mac.get(mac)
        if ip is None:
            if current is None:
                return Decline(None, DECLINE_NOT_HELD)
            ip = current.ip
        if ip not in self.position and self.static.get(mac) != ip:
            return Decline(ip, DECLINE_OUTSIDE_POOL)
        holder = self.owner.get(ip)
        if holder is not None and holder != mac:
            return Decline(ip, DECLINE_OTHER_MAC)
        if current is None or current.ip != ip or not _active(current, now):
            return Decline(ip, DECLINE_NOT_HELD)
        self._drop(mac, change)
        until = now + self.probation
        self._set_aside(ip, mac, until, now, change)
        return Decline(ip, None, until)

    def probed(self, mac: str, ip: str, in_use: bool, now: float, change: _Change) -> None:
        if not in_use:
            self.suspect.discard(ip)
            return
        current = self.by_mac.get(mac)
        if current is not None and current.ip == ip and current.state == OFFERED and not current.pinned:
            self._drop(mac, change)
        if self.owner.get(ip) is None and ip in self.position:
            self._set_aside(ip, None, now + PROBE_IN_USE_HOLD, now, change)

    def free(self, mac: str, now: float, change: _Change) -> Lease | None:
        return self._drop(mac, change)

    def reserve(self, mac: str, ip: str, now: float, change: _Change) -> Lease:
        if ip in self.exclude:
            raise LeaseConflict(f"{ip} is never handed out")
        if mac in self.static:
            raise LeaseConflict(f"{mac} has the static address {self.static[mac]}")
        if ip in self.static_owner:
            raise LeaseConflict(f"{ip} is the static address of {self.static_owner[ip]}")
        holder = self.owner.get(ip)
        if holder is not None and holder != mac:
            other = self.by_mac.get(holder)
            if other is not None and (other.pinned or _active(other, now)):
                state = _view(other, now).state
                raise LeaseConflict(f"{ip} is bound to {holder} ({state}; release it first)")
            self._drop(holder, change)
        current = self.by_mac.get(mac)
        if current is not None and current.ip != ip:
            self._drop(mac, change)
            current = None
        if ip in self.aside:
            del self.aside[ip]
            change.returned.add(ip)
            change.set_aside.pop(ip, None)
        self.suspect.discard(ip)              # the operator says so
        self.stale.discard(mac)               # and the MAC's binding is right again
        if current is None:
            lease = Lease(mac, ip, state=OFFERED, updated=now, reserved=True)
        elif current.state == OFFERED:
            lease = replace(current, expires=None, updated=now, reserved=True)
        else:
            lease = replace(current, updated=now, reserved=True)
        self._put(lease)
        change.upsert(lease)
        return lease

    def unreserve(self, mac: str, now: float, change: _Change) -> bool:
        lease = self.by_mac.get(mac)
        if lease is None or not lease.reserved:
            return False
        if lease.state == OFFERED:            # never bound: the address is free again
            self._drop(mac, change)
            return True
        lease = replace(lease, reserved=False, updated=now)
        self._put(lease)
        change.upsert(lease)
        return True

    def set_static(self, static: Mapping[str, str], now: float,
                   change: _Change) -> list[tuple[str, str, str]]:
        """Adopt a new ``[static_dhcp]`` (a reload); return ``(ip, static MAC, other MAC)`` of each
        static address that was another MAC's active binding (that binding is dropped)."""
        table, owners = _static_table(static)       # raises before anything changes
        old = self.static
        for mac, ip in old.items():                 # entries removed or moved
            if table.get(mac) == ip:
                continue
            del self.static_owner[ip]
            lease = self.by_mac.get(mac)
            if lease is None or lease.ip != ip:
                if self.owner.get(ip) == mac:
                    del self.owner[ip]
                    position = self.position.get(ip)
                    if position is not None:
                        heapq.heappush(self.free_heap, position)
            elif lease.state == OFFERED:            # never bound: nothing to keep
                self._drop(mac, change)
            else:                                   # an ordinary binding from now on
                lease = replace(lease, static=False, updated=now)
                self._put(lease)
                if ip in self.position or lease.reserved:
                    change.upsert(lease)
                else:   # outside the pool: released at its next request (its row stays static,
                    self.stale.add(mac)             # so a restart before that releases it too)
                    log.info("lease mac=%s ip=%s is no longer static; outside the pool, it is "
                             "released at the next request", mac, ip)
        self.static = table
        conflicts: list[tuple[str, str, str]] = []
        for mac, ip in table.items():               # entries added or moved
            if old.get(mac) == ip:
                continue
            self.static_owner[ip] = mac
            holder = self.owner.get(ip)
            if holder is not None and holder != mac:
                other = self.by_mac.get(holder)
                if other is not None and other.ip == ip:
                    if _active(other, now):
                        log.warning("static address %s of %s is the active binding of %s: %s gets "
                                    "a NAK or another address at its next request", ip, mac, holder, holder)
                        conflicts.append((ip, mac, holder))
                    self._drop(holder, change)
                    self.stale.discard(holder)
            self.owner[ip] = mac
            lease = self.by_mac.get(mac)
            if lease is None:
                self.stale.discard(mac)
            elif lease.ip == ip:                    # its binding is its static address now
                self.stale.discard(mac)
                expires = None if lease.state == OFFERED else lease.expires
                lease = replace(lease, static=True, reserved=False, expires=expires, updated=now)
                self._put(lease)
                change.upsert(lease)
            else:                                   # a lease or reservation elsewhere yields
                self.stale.add(mac)
        return conflicts

    def counts(self, now: float) -> tuple[int, int]:
        used = free = 0
        strict = self.reclaim == RECLAIM_NEVER
        for ip in self.pool:
            mac = self.owner.get(ip)
            if mac is not None:
                lease = self.by_mac.get(mac)
                if lease is None or strict and lease.state != OFFERED or _active(lease, now):
                    used += 1
                else:
                    free += 1          # an offer past its hold; an expired, reclaimable lease
            elif ip not in self.aside and ip not in self.exclude:
                free += 1
            elif ip in self.aside and self.aside[ip] <= now:
                free += 1
        return used, used + free

    def get(self, mac: str, now: float) -> Lease | None:
        lease = self.by_mac.get(mac)
        if lease is None or lease.state == OFFERED and not _active(lease, now):
            return None
        return _view(lease, now)

    def by_ip(self, ip: str, now: float) -> Lease | None:
        mac = self.owner.get(ip)
        return None if mac is None else self.get(mac, now)


class _IndexedLeaseStore(LeaseStore):
    """The decisions of both stores; subclasses persist each change through :meth:`_save`."""

    def __init__(
        self,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        offer_hold: float = DEFAULT_OFFER_HOLD,
        reclaim: str = RECLAIM_EXPIRED,
        decline_probation: float = DEFAULT_DECLINE_PROBATION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = _Index(pool, static, exclude, offer_hold=offer_hold, reclaim=reclaim,
                             decline_probation=decline_probation)
        self._clock = clock
        self._counts_cache: tuple[float, tuple[int, int]] | None = None

    # persistence hook, a no-op here
    def _save(self, change: _Change) -> None:
        pass

    def _decide(self, decision: Callable[..., Any], *args: Any) -> Any:
        """Run one decision on the index (after the sweep), then persist what it changed."""
        now = self._clock()
        change = _Change()
        self._index.sweep(now, change)
        try:
            result = decision(*args, now, change)
        finally:
            if change:
                self._counts_cache = None
                self._save(change)
        return result

    def get(self, mac: str) -> Lease | None:
        return self._index.get(_norm_mac(mac), self._clock())

    def by_ip(self, ip: str) -> Lease | None:
        return self._index.by_ip(ip, self._clock())

    def allocate(self, mac: str) -> Lease | None:
        mac = _norm_mac(mac)
        lease = self._decide(self._index.allocate, mac)
        if lease is None:     # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
            return None
        return _view(lease, self._clock())

    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        mac = _norm_mac(mac)
        lease = self._decide(lambda now, change: self._index.commit(mac, ip, lease_time, uuid, now, change))
        log.debug("lease bound mac=%s ip=%s expires=%.0f", mac, ip, lease.expires)
        return _view(lease, self._clock())

    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        mac = _norm_mac(mac)
        lease, bound = self._decide(
            lambda now, change: self._index.bind(mac, ip, lease_time, uuid, now, change))
        if lease is None:     # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
            return Binding(None, False)
        return Binding(_view(lease, self._clock()), bound)

    def release(self, mac: str, ip: str | None = None) -> Lease | None:
        mac = _norm_mac(mac)
        lease = self._decide(self._index.release, mac, ip)
        if lease is None:
            return None
        log.debug("lease released mac=%s ip=%s", mac, lease.ip)
        return _view(lease, self._clock())

    def decline(self, mac: str, ip: str | None = None) -> Decline:
        mac = _norm_mac(mac)
        result: Decline = self._decide(self._index.decline, mac, ip)
        # the exchange's dhcp.declined (WARNING) or dhcp.ignored is the outcome's line
        log.debug("decline mac=%s ip=%s: %s", mac, result.ip, result.refused or "set aside")
        return result

    def needs_probe(self, ip: str) -> bool:
        return ip in self._index.suspect

    def probed(self, mac: str, ip: str, in_use: bool) -> None:
        self._decide(self._index.probed, _norm_mac(mac), ip, in_use)

    def free(self, mac: str) -> Lease | None:
        lease = self._decide(self._index.free, _norm_mac(mac))
        return None if lease is None else _view(lease, self._clock())

    def reserve(self, mac: str, ip: str) -> Lease:
        mac = _norm_mac(mac)
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise LeaseConflict(f"{ip!r} is not an IPv4 address") from None
        lease = self._decide(self._index.reserve, mac, ip)
        log.info("lease reserved mac=%s ip=%s", mac, ip)
        return _view(lease, self._clock())

    def unreserve(self, mac: str) -> bool:
        return bool(self._decide(self._index.unreserve, _norm_mac(mac)))

    def set_static(self, static: Mapping[str, str]) -> list[tuple[str, str, str]]:
        return self._decide(self._index.set_static, static)

    def counts(self) -> tuple[int, int]:
        # computed at most once a second and once per change: scrapes are frequent
        now = self._clock()
        cached = self._counts_cache
        if cached is None or not 0 <= now - cached[0] < 1.0:
            cached = self._counts_cache = (now, self._index.counts(now))
        return cached[1]

    def stats(self) -> LeaseStats:
        index = self._index
        return LeaseStats(index.offers_expired, index.reclaimed, index.probation_ended)

    def leases(self) -> list[Lease]:
        now = self._clock()
        return [_view(lease, now) for lease in self._index.by_mac.values()
                if lease.state != OFFERED or _active(lease, now)]

    def close(self) -> None:
        pass


class MemoryLeaseStore(_IndexedLeaseStore):
    """A lease store kept in memory only (lost on restart); for tests and simulations.

    Args:
        pool: the ordered dynamic addresses (own, network and broadcast addresses removed).
        static: MAC → IP reservations from ``[static_dhcp]``.
        exclude: addresses never to hand out.
        offer_hold: seconds an unREQUESTed offer holds its address.
        reclaim: ``expired`` or ``never`` (README, "Lease lifecycle").
        decline_probation: seconds a declined address is set aside.
        clock: the time source (epoch seconds).
    """


#: the schema version this code writes (``PRAGMA user_version``); 0 is the schema of massboot
#: before the lease lifecycle (no reservations, declines for ever, offers without expiry)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    static INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    uuid TEXT,
    expires REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE declined (
    ip TEXT PRIMARY KEY,
    mac TEXT,
    at REAL NOT NULL DEFAULT 0,
    until REAL NOT NULL DEFAULT 0
);
"""


def _migrate_v0(db: sqlite3.Connection, offer_hold: float, probation: float) -> None:
    """Schema 0 → 1: reservations; a declined address comes back after its probation (counted
    from when it was declined); an offer expires ``offer_hold`` after it was made."""
    db.execute("ALTER TABLE leases ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE declined ADD COLUMN until REAL NOT NULL DEFAULT 0")
    db.execute("UPDATE declined SET until = at + ?", (probation,))
    db.execute("UPDATE leases SET expires = updated + ? WHERE state = ? AND static = 0 AND expires = 0",
               (offer_hold, OFFERED))


class SqliteLeaseStore(_IndexedLeaseStore):
    """A lease store persisted to SQLite; bindings survive a restart and ``kill -9``.

    The database uses the WAL journal with ``synchronous=NORMAL``: a committed transaction is
    in the WAL file before the commit returns, so it survives the process being killed at any
    point (only a power loss or kernel crash may lose the last transactions, which ``FULL``
    would prevent at the cost of an fsync per lease).

    Decisions are taken on the in-memory index (atomic under gevent); every change is then
    written by ONE dedicated worker thread (a gevent thread pool of size 1, so writes happen in
    decision order), and the calling greenlet waits for it cooperatively: other greenlets keep
    running while SQLite works. :meth:`commit` returns only once the row is durable. Offers are
    persisted with their expiry, so a restart within the hold keeps them and one after it
    forgets them. The schema is versioned (``PRAGMA user_version``); an older database is
    migrated when opened.

    Args:
        path: the database file (created if missing).
        pool: the ordered dynamic addresses (own, network and broadcast addresses removed).
        static: MAC → IP reservations from ``[static_dhcp]``; they override stored bindings.
        exclude: addresses never to hand out.
        offer_hold, reclaim, decline_probation: see :class:`MemoryLeaseStore`.
        clock: the time source (epoch seconds).

    Raises:
        LeaseStoreError: a write failed (the caller must not acknowledge the lease), or the
            database has a newer schema than this massboot knows.
    """

    def __init__(
        self,
        path: str,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        offer_hold: float = DEFAULT_OFFER_HOLD,
        reclaim: str = RECLAIM_EXPIRED,
        decline_probation: float = DEFAULT_DECLINE_PROBATION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from gevent.threadpool import ThreadPool

        super().__init__(pool, static, exclude, offer_hold=offer_hold, reclaim=reclaim,
                         decline_probation=decline_probation, clock=clock)
        self._path = path
        self._worker = ThreadPool(1)
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # group commit: changes queue here in decision order; one flusher greenlet writes
        # everything queued in a single transaction, so a burst of ACKs costs one transaction
        # per batch instead of one per lease
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...], Any]] = []
        self._flusher: Any = None
        try:
            rows, declined = self._run(self._db_open, offer_hold, decline_probation)
            change = self._index.load(rows, declined, self._clock())
            if change:
                self._run(self._db_batch, [(self._db_apply, (change,))])
        except BaseException:
            self.close()
            raise
        used, size = self.counts()
        log.info("lease store %s: %d leases, %d declined, pool %d/%d in use",
                 path, len(self._index.by_mac), len(self._index.aside), used, size)

    # -- worker-thread side ----------------------------------------------------------------

    def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise LeaseStoreError("lease store is closed")
        try:
            return self._worker.spawn(func, *args).get()
        except sqlite3.Error as exc:
            log.error("lease store %s: %s failed: %s", self._path, func.__name__, exc)
            raise LeaseStoreError(f"lease store {self._path}: {exc}") from exc

    def _db_open(self, offer_hold: float, probation: float) -> tuple[list[Lease], list[tuple[str, float]]]:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'"
                                ).fetchone() is not None
            if version > SCHEMA_VERSION:
                raise LeaseStoreError(f"lease store {self._path}: schema version {version} is newer "
                                      f"than this massboot's ({SCHEMA_VERSION}); upgrade massboot")
            if not exists:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            elif version == 0:
                _migrate_v0(db, offer_hold, probation)
                log.info("lease store %s: schema migrated from version 0 to %d", self._path, SCHEMA_VERSION)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        rows = [
            Lease(mac, ip, bool(static), state, uuid, expires or None, updated, bool(reserved))
            for mac, ip, static, state, uuid, expires, updated, reserved in db.execute(
                "SELECT mac, ip, static, state, uuid, expires, updated, reserved FROM leases ORDER BY rowid"
            )
        ]
        declined = [(ip, until) for ip, until in db.execute("SELECT ip, until FROM declined")]
        return rows, declined

    def _db_apply(self, change: _Change) -> None:
        assert self._db is not None
        db = self._db
        for mac in change.deletes:
            db.execute("DELETE FROM leases WHERE mac = ?", (mac,))
        for lease in change.upserts.values():
            db.execute(
                "INSERT INTO leases (mac, ip, static, state, uuid, expires, updated, reserved)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(mac) DO UPDATE SET ip=excluded.ip, static=excluded.static,"
                " state=excluded.state, uuid=excluded.uuid, expires=excluded.expires,"
                " updated=excluded.updated, reserved=excluded.reserved",
                (lease.mac, lease.ip, int(lease.static), lease.state, lease.uuid, lease.expires or 0,
                 lease.updated, int(lease.reserved)),
            )
        for ip in change.returned:
            db.execute("DELETE FROM declined WHERE ip = ?", (ip,))
        for ip, (mac, at, until) in change.set_aside.items():
            db.execute("INSERT OR REPLACE INTO declined (ip, mac, at, until) VALUES (?, ?, ?, ?)",
                       (ip, mac, at, until))

    def _db_batch(self, items: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
        """Run queued changes, in order, in one transaction (worker thread)."""
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for func, args in items:
                func(*args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _db_close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- hook ------------------------------------------------------------------------------

    def _save(self, change: _Change) -> None:
        self._write(self._db_apply, change)

    def _write(self, func: Callable[..., None], *args: Any) -> None:
        """Queue one change and wait (cooperatively) until its transaction is committed."""
        from gevent import spawn
        from gevent.event import AsyncResult

        if self._closed:
            raise LeaseStoreError("lease store is closed")
        done = AsyncResult()
        self._pending.append((func, args, done))
        if self._flusher is None:
            self._flusher = spawn(self._flush)
        done.get()

    def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    self._run(self._db_batch, [(func, args) for func, args, _ in batch])
                except Exception as exc:   # LeaseStoreError, or the store closed under us
                    for _, _, done in batch:
                        done.set_exception(exc if isinstance(exc, LeaseStoreError)
                                           else LeaseStoreError(str(exc)))
                else:
                    for _, _, done in batch:
                        done.set(None)
        finally:
            self._flusher = None

    def close(self) -> None:
        if self._closed:
            return
        if self._flusher is not None:
            self._flusher.join(timeout=10)     # pending writes are finished first
        try:
            self._run(self._db_close)
        finally:
            self._closed = True
            self._worker.kill()
