"""The in-memory lease index every store decides on: pure, never yields, each method atomic."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from massboot.dhcp.leases.base import (
    BOUND,
    DECLINE_NOT_HELD,
    DECLINE_OTHER_MAC,
    DECLINE_OUTSIDE_POOL,
    OFFERED,
    PROBE_IN_USE_HOLD,
    RECLAIM_EXPIRED,
    RECLAIM_NEVER,
    RELEASED,
    Decline,
    Lease,
    LeaseConflict,
    _active,
    _norm_mac,
    _view,
)

log = logging.getLogger("massboot.dhcp.leases")    # one logger for the package


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

    # -- another server's committed changes (README, "Several servers") ---------------------

    def adopt(self, removed: Iterable[str], rows: Iterable[Lease],
              returned: Iterable[str], aside: Iterable[tuple[str, float]]) -> None:
        """Take what other servers committed since this index last saw the database.

        *removed*: MACs whose binding is gone; *rows*: bindings created or changed;
        *returned*: addresses whose probation ended (or that the operator took back);
        *aside*: ``(ip, until)`` set aside. The marks (suspect, held, stale) are set by the
        caller. No decision is made: the other server made it.
        """
        for mac in removed:
            self._forget(mac)
        rows = list(rows)
        for lease in rows:                     # first let go of the addresses that moved
            old = self.by_mac.get(lease.mac)
            if old is not None and old.ip != lease.ip:
                self._forget(lease.mac)
        for lease in rows:
            self._put(lease)
        for ip in returned:
            if self.aside.pop(ip, None) is not None:
                position = self.position.get(ip)
                if position is not None:
                    heapq.heappush(self.free_heap, position)
        for ip, until in aside:
            self.aside[ip] = until
            heapq.heappush(self.aside_heap, (until, ip))

    def _forget(self, mac: str) -> None:
        """Drop the MAC's binding from the index only (no change to persist, no probe mark)."""
        lease = self.by_mac.pop(mac, None)
        if lease is None:
            return
        ip = lease.ip
        if self.owner.get(ip) == mac:
            if ip in self.static_owner:
                self.owner[ip] = self.static_owner[ip]
            else:
                del self.owner[ip]
                position = self.position.get(ip)
                if position is not None:
                    heapq.heappush(self.free_heap, position)

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

