"""Lease store: sticky MAC → IP bindings over an ordered pool (README, "DHCP and PXE behaviour").

An address, once bound to a MAC (offered or acknowledged), stays that MAC's for ever: it is
never handed to another MAC, even after a RELEASE or an expiry. A DHCPDECLINE sets the address
aside for good and drops the client's binding, so its next allocation gets another address.
Static leases (``[static_dhcp]``) are reserved for their MAC from startup.

Every decision is made on an in-memory index (MAC → lease, IP → MAC, a cursor over the pool)
with no cooperative yield between reading and writing it, so a decision is atomic under gevent.
Because addresses are never freed at run time, everything before the cursor is taken and
allocation is O(1) amortised. :class:`SqliteLeaseStore` then writes the change to SQLite on one
worker thread and the caller waits for it cooperatively.

``LeaseStore`` is deliberately small, and each operation that decides is atomic on its own
(:meth:`~LeaseStore.allocate`, :meth:`~LeaseStore.bind`, :meth:`~LeaseStore.release`,
:meth:`~LeaseStore.decline`): the caller never reads a lease and then writes a decision based on
it, so a store that yields on every call (a database shared by several servers) can implement
it later with one transaction per operation.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from massboot.ident import mac_str, parse_mac

log = logging.getLogger(__name__)

OFFERED = "offered"
BOUND = "bound"
RELEASED = "released"
RESERVED = "reserved"     # an operator's reservation (``massboot leases reserve``), not yet bound


@dataclass(frozen=True, slots=True)
class Lease:
    """One MAC's binding.

    Attributes:
        mac: ``AA:BB:CC:DD:EE:FF``.
        ip: the bound address.
        static: from ``[static_dhcp]``.
        state: ``offered``, ``bound`` or ``released`` (the binding is kept in every state).
        uuid: the client UUID (option 97) when known.
        expires: epoch seconds when the lease ends; 0 when it was never bound.
        updated: epoch seconds of the last change.
    """

    mac: str
    ip: str
    static: bool = False
    state: str = OFFERED
    uuid: str | None = None
    expires: float = 0.0
    updated: float = 0.0


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


class LeaseConflict(ValueError):
    """A commit that would give a MAC an address it may not have."""


class LeaseStoreError(RuntimeError):
    """The persistent store could not record a change."""


class LeaseStore(ABC):
    """The lease interface the DHCP exchange uses."""

    @abstractmethod
    def get(self, mac: str) -> Lease | None:
        """The MAC's binding, or None."""

    @abstractmethod
    def by_ip(self, ip: str) -> Lease | None:
        """The lease holding *ip*, or None."""

    @abstractmethod
    def allocate(self, mac: str) -> Lease | None:
        """Return the MAC's address, binding a new one (state ``offered``) if it has none.

        Sticky: the existing binding is returned unchanged; else the static address; else the
        first pool address not bound to any MAC, not declined and not excluded.

        Returns:
            The lease, or None when the pool is exhausted.
        """

    @abstractmethod
    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        """Mark the MAC's binding to *ip* as bound until ``now + lease_time``.

        Returns only once the change is durable.

        Raises:
            LeaseConflict: *ip* is bound or reserved for another MAC, set aside, or the MAC
                is bound to a different address.
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
        """Mark the MAC's lease released (the binding is kept).

        With *ip*, only when the MAC holds that address. Returns the released lease, or None
        when nothing was released.
        """

    @abstractmethod
    def decline(self, mac: str, ip: str | None = None) -> str | None:
        """Set *ip* (None: the MAC's address) aside for ever and drop the MAC's binding to it.

        An address bound to another MAC is left alone (logged). Returns the address the
        decline named: *ip*, else the MAC's address, else None.
        """

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """``(in use, capacity)`` over the pool.

        *in use* counts pool addresses bound to some MAC (static reservations included);
        *capacity* is *in use* plus the addresses still free, i.e. the pool without the
        excluded and declined addresses nobody holds. The pool is exhausted when they are equal.
        """

    @abstractmethod
    def leases(self) -> list[Lease]:
        """Every binding (a snapshot)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; pending writes are finished first."""


_CANONICAL_MAC = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")


def _norm_mac(mac: str) -> str:
    if _CANONICAL_MAC.fullmatch(mac):      # the server's own form: the common case, kept cheap
        return mac
    return mac_str(parse_mac(mac))


class _Index:
    """The in-memory state shared by both stores. Never yields; every method is atomic."""

    def __init__(self, pool: Sequence[str], static: Mapping[str, str], exclude: Iterable[str]) -> None:
        self.pool = list(dict.fromkeys(pool))
        self.pool_set = set(self.pool)
        self.exclude = set(exclude)
        self.static: dict[str, str] = {}
        for mac, ip in static.items():
            self.static[_norm_mac(mac)] = ip
        self.static_owner: dict[str, str] = {}
        for mac, ip in self.static.items():
            other = self.static_owner.get(ip)
            if other is not None:
                raise ValueError(f"static address {ip} given to both {other} and {mac}")
            self.static_owner[ip] = mac
        self.declined: set[str] = set()
        self.by_mac: dict[str, Lease] = {}
        self.owner: dict[str, str] = dict(self.static_owner)  # ip -> mac, reservations included
        self.cursor = 0

    # -- loading -------------------------------------------------------------------------

    def load(self, rows: Iterable[Lease], declined: Iterable[str]) -> list[Lease]:
        """Adopt persisted state; return the rows that had to be dropped (config changed)."""
        dropped: list[Lease] = []
        self.declined.update(declined)
        for lease in rows:
            static_ip = self.static.get(lease.mac)
            if static_ip is not None and lease.ip != static_ip:
                log.info("lease mac=%s ip=%s replaced by static ip=%s", lease.mac, lease.ip, static_ip)
                dropped.append(lease)
                continue
            holder = self.owner.get(lease.ip)
            if holder is not None and holder != lease.mac:
                log.warning("lease mac=%s ip=%s dropped: the address is now static for %s",
                            lease.mac, lease.ip, holder)
                dropped.append(lease)
                continue
            if lease.ip in self.declined:
                log.warning("lease mac=%s ip=%s dropped: the address was declined", lease.mac, lease.ip)
                dropped.append(lease)
                continue
            if lease.ip not in self.pool_set and static_ip is None:
                log.info("lease mac=%s ip=%s is outside the pool; kept for that MAC", lease.mac, lease.ip)
            lease = replace(lease, static=static_ip is not None)
            self.by_mac[lease.mac] = lease
            self.owner[lease.ip] = lease.mac
        return dropped

    # -- decisions (no yield anywhere below) -----------------------------------------------

    def _usable(self, ip: str) -> bool:
        return ip not in self.owner and ip not in self.declined and ip not in self.exclude

    def _next_free(self) -> str | None:
        pool = self.pool
        while self.cursor < len(pool):
            ip = pool[self.cursor]
            self.cursor += 1
            if self._usable(ip):
                return ip
        return None

    def allocate(self, mac: str, now: float) -> tuple[Lease | None, bool]:
        """Return (lease, changed)."""
        lease = self.by_mac.get(mac)
        if lease is not None:
            return lease, False
        static_ip = self.static.get(mac)
        if static_ip is not None and static_ip not in self.declined:
            lease = Lease(mac, static_ip, static=True, state=OFFERED, updated=now)
        else:
            ip = self._next_free()
            if ip is None:
                return None, False
            lease = Lease(mac, ip, state=OFFERED, updated=now)
        self.by_mac[mac] = lease
        self.owner[lease.ip] = mac
        return lease, True

    def commit(self, mac: str, ip: str, lease_time: int, uuid: str | None, now: float) -> Lease:
        current = self.by_mac.get(mac)
        if current is not None:
            if current.ip != ip:
                raise LeaseConflict(f"{mac} is bound to {current.ip}, not {ip}")
        else:
            static_ip = self.static.get(mac)
            if static_ip is not None and static_ip != ip and static_ip not in self.declined:
                raise LeaseConflict(f"{mac} has the static address {static_ip}, not {ip}")
            holder = self.owner.get(ip)
            if holder is not None and holder != mac:
                raise LeaseConflict(f"{ip} is bound to {holder}")
            if holder is None and (ip in self.declined or ip in self.exclude):
                raise LeaseConflict(f"{ip} is set aside")
        lease = Lease(
            mac,
            ip,
            static=self.static.get(mac) == ip,
            state=BOUND,
            uuid=uuid if uuid is not None else (current.uuid if current is not None else None),
            expires=now + lease_time,
            updated=now,
        )
        self.by_mac[mac] = lease
        self.owner[ip] = mac
        return lease

    def bind(self, mac: str, ip: str | None, lease_time: int, uuid: str | None,
             now: float) -> tuple[Lease | None, bool, bool]:
        """Return (lease, bound, offer changed)."""
        lease, changed = self.allocate(mac, now)
        if lease is None or (ip is not None and lease.ip != ip):
            return lease, False, changed
        return self.commit(mac, lease.ip, lease_time, uuid, now), True, changed

    def release(self, mac: str, ip: str | None, now: float) -> Lease | None:
        current = self.by_mac.get(mac)
        if current is None or (ip is not None and current.ip != ip):
            return None
        lease = replace(current, state=RELEASED, expires=min(current.expires, now), updated=now)
        self.by_mac[mac] = lease
        return lease

    def decline(self, mac: str, ip: str) -> tuple[bool, bool]:
        """Return (address newly set aside, MAC binding dropped)."""
        holder = self.owner.get(ip)
        if holder is not None and holder != mac:
            return False, False
        added = ip not in self.declined
        self.declined.add(ip)
        dropped = False
        if holder == mac:
            del self.owner[ip]
            current = self.by_mac.get(mac)
            if current is not None and current.ip == ip:
                del self.by_mac[mac]
                dropped = True
        return added, dropped

    def counts(self) -> tuple[int, int]:
        used = free = 0
        for ip in self.pool:
            if ip in self.owner:
                used += 1
            elif ip not in self.declined and ip not in self.exclude:
                free += 1
        return used, used + free

    def by_ip(self, ip: str) -> Lease | None:
        mac = self.owner.get(ip)
        if mac is None:
            return None
        return self.by_mac.get(mac)

    # -- operator commands (README, "Operator commands"): minimal, until the lease branch's -----

    def free(self, mac: str) -> Lease | None:
        """Drop the MAC's binding; its pool address can be handed to another MAC."""
        lease = self.by_mac.pop(mac, None)
        if lease is None:
            return None
        if self.owner.get(lease.ip) == mac and self.static_owner.get(lease.ip) != mac:
            del self.owner[lease.ip]
            if lease.ip in self.pool_set:       # allocation scans from the cursor: rewind it
                self.cursor = min(self.cursor, self.pool.index(lease.ip))
        return lease

    def reserve(self, mac: str, ip: str, now: float) -> tuple[Lease, Lease | None]:
        """Give *ip* to *mac* (state ``reserved``); return (reservation, binding it replaced)."""
        static_ip = self.static.get(mac)
        if static_ip is not None:
            raise LeaseConflict(f"{mac} has the [static_dhcp] address {static_ip}: a [static_dhcp] "
                                "entry wins over a reservation (edit the config instead)")
        static_mac = self.static_owner.get(ip)
        if static_mac is not None:
            raise LeaseConflict(f"{ip} is the [static_dhcp] address of {static_mac}: a [static_dhcp] "
                                "entry wins over a reservation")
        holder = self.owner.get(ip)
        if holder is not None and holder != mac:
            raise LeaseConflict(f"{ip} is bound to {holder} (release it first)")
        if ip in self.declined or ip in self.exclude:
            raise LeaseConflict(f"{ip} is set aside (declined or excluded)")
        current = self.by_mac.get(mac)
        if current is not None and current.ip == ip:
            return current, None
        replaced = self.free(mac) if current is not None else None
        lease = Lease(mac, ip, state=RESERVED, updated=now)
        self.by_mac[mac] = lease
        self.owner[ip] = mac
        return lease, replaced


class _IndexedLeaseStore(LeaseStore):
    """The decisions of both stores; subclasses persist through the two ``_save_*`` hooks."""

    def __init__(
        self,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = _Index(pool, static, exclude)
        self._clock = clock
        self._counts_cache: tuple[int, int] | None = None

    # persistence hooks, no-ops here
    def _save_lease(self, lease: Lease) -> None:
        pass

    def _save_decline(self, mac: str, ip: str, dropped: bool) -> None:
        pass

    def _save_free(self, mac: str) -> None:
        pass

    def get(self, mac: str) -> Lease | None:
        return self._index.by_mac.get(_norm_mac(mac))

    def by_ip(self, ip: str) -> Lease | None:
        return self._index.by_ip(ip)

    def allocate(self, mac: str) -> Lease | None:
        mac = _norm_mac(mac)
        lease, changed = self._index.allocate(mac, self._clock())
        if changed:
            self._counts_cache = None
            assert lease is not None
            self._save_lease(lease)
            log.debug("lease offered mac=%s ip=%s static=%s", mac, lease.ip, lease.static)
        elif lease is None:   # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
        return lease

    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        mac = _norm_mac(mac)
        lease = self._index.commit(mac, ip, lease_time, uuid, self._clock())
        self._counts_cache = None
        self._save_lease(lease)
        log.debug("lease bound mac=%s ip=%s expires=%.0f", mac, ip, lease.expires)
        return lease

    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        mac = _norm_mac(mac)
        lease, bound, changed = self._index.bind(mac, ip, lease_time, uuid, self._clock())
        if bound or changed:
            self._counts_cache = None
            assert lease is not None
            self._save_lease(lease)       # the bound row supersedes the offer: one write
            log.debug("lease %s mac=%s ip=%s", "bound" if bound else "offered", mac, lease.ip)
        elif lease is None:   # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
        return Binding(lease, bound)

    def release(self, mac: str, ip: str | None = None) -> Lease | None:
        mac = _norm_mac(mac)
        lease = self._index.release(mac, ip, self._clock())
        if lease is not None:
            self._save_lease(lease)
            log.debug("lease released mac=%s ip=%s", mac, lease.ip)
        return lease

    def decline(self, mac: str, ip: str | None = None) -> str | None:
        mac = _norm_mac(mac)
        if ip is None:
            current = self._index.by_mac.get(mac)
            if current is None:
                return None
            ip = current.ip
        added, dropped = self._index.decline(mac, ip)
        if not added and not dropped:
            if ip not in self._index.declined:
                log.warning("decline ignored mac=%s ip=%s: bound to %s", mac, ip, self._index.owner.get(ip))
            return ip
        self._counts_cache = None
        self._save_decline(mac, ip, dropped)
        log.debug("address declined mac=%s ip=%s: set aside", mac, ip)   # dhcp.declined: the WARNING
        return ip

    def counts(self) -> tuple[int, int]:
        # Computed at most once per change: scrapes are frequent, changes cheap to flag.
        if self._counts_cache is None:
            self._counts_cache = self._index.counts()
        return self._counts_cache

    def leases(self) -> list[Lease]:
        return list(self._index.by_mac.values())

    # operator commands (README, "Operator commands"); the lease branch brings the full versions
    def free(self, mac: str) -> Lease | None:
        """Drop the MAC's binding for good; its address goes back to the pool. Returns it, or None."""
        mac = _norm_mac(mac)
        lease = self._index.free(mac)
        if lease is not None:
            self._counts_cache = None
            self._save_free(mac)
            log.info("lease freed mac=%s ip=%s", mac, lease.ip)
        return lease

    def reserve(self, mac: str, ip: str) -> Lease:
        """Bind *ip* to *mac* now (state ``reserved``): its next request gets it.

        Raises:
            LeaseConflict: the MAC or the address has a ``[static_dhcp]`` entry (it wins), the
                address is held by another MAC, or it is set aside.
        """
        mac = _norm_mac(mac)
        lease, replaced = self._index.reserve(mac, ip, self._clock())
        self._counts_cache = None
        if replaced is not None:
            self._save_free(mac)
        self._save_lease(lease)
        log.info("lease reserved mac=%s ip=%s", mac, ip)
        return lease

    def unreserve(self, mac: str) -> bool:
        """Drop the MAC's reservation if it has not been bound yet; True when one was dropped."""
        lease = self.get(mac)
        if lease is None or lease.state != RESERVED:
            return False
        return self.free(mac) is not None

    def close(self) -> None:
        pass


class MemoryLeaseStore(_IndexedLeaseStore):
    """A lease store kept in memory only (lost on restart); for tests and simulations.

    Args:
        pool: the ordered dynamic addresses (own, network and broadcast addresses removed).
        static: MAC → IP reservations from ``[static_dhcp]``.
        exclude: addresses never to hand out.
        clock: the time source (epoch seconds).
    """


_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    static INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    uuid TEXT,
    expires REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS declined (
    ip TEXT PRIMARY KEY,
    mac TEXT,
    at REAL NOT NULL DEFAULT 0
);
"""


class SqliteLeaseStore(_IndexedLeaseStore):
    """A lease store persisted to SQLite; bindings survive a restart and ``kill -9``.

    The database uses the WAL journal with ``synchronous=NORMAL``: a committed transaction is
    in the WAL file before the commit returns, so it survives the process being killed at any
    point (only a power loss or kernel crash may lose the last transactions, which ``FULL``
    would prevent at the cost of an fsync per lease).

    Decisions are taken on the in-memory index (atomic under gevent); every mutation is then
    written by ONE dedicated worker thread (a gevent thread pool of size 1, so writes happen in
    decision order), and the calling greenlet waits for it cooperatively: other greenlets keep
    running while SQLite works. :meth:`commit` returns only once the row is durable. Offers are
    persisted too, so a MAC gets the same address after a restart even if it never bound it.

    Args:
        path: the database file (created if missing).
        pool: the ordered dynamic addresses (own, network and broadcast addresses removed).
        static: MAC → IP reservations from ``[static_dhcp]``; they override stored bindings.
        exclude: addresses never to hand out.
        clock: the time source (epoch seconds).

    Raises:
        LeaseStoreError: a write failed (the caller must not acknowledge the lease).
    """

    def __init__(
        self,
        path: str,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from gevent.threadpool import ThreadPool

        super().__init__(pool, static, exclude, clock=clock)
        self._path = path
        self._worker = ThreadPool(1)
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # group commit: mutations queue here in decision order; one flusher greenlet writes
        # everything queued in a single transaction, so a burst of ACKs costs one transaction
        # per batch instead of one per lease
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...], Any]] = []
        self._flusher: Any = None
        try:
            rows, declined = self._run(self._db_open)
            dropped = self._index.load(rows, declined)
            for lease in dropped:
                self._run(self._db_delete, lease.mac)
        except BaseException:
            self.close()
            raise
        used, size = self.counts()
        log.info("lease store %s: %d leases, %d declined, pool %d/%d in use",
                 path, len(self._index.by_mac), len(self._index.declined), used, size)

    # -- worker-thread side ----------------------------------------------------------------

    def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise LeaseStoreError("lease store is closed")
        try:
            return self._worker.spawn(func, *args).get()
        except sqlite3.Error as exc:
            log.error("lease store %s: %s failed: %s", self._path, func.__name__, exc)
            raise LeaseStoreError(f"lease store {self._path}: {exc}") from exc

    def _db_open(self) -> tuple[list[Lease], list[str]]:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        rows = [
            Lease(mac, ip, bool(static), state, uuid, expires, updated)
            for mac, ip, static, state, uuid, expires, updated in db.execute(
                "SELECT mac, ip, static, state, uuid, expires, updated FROM leases ORDER BY rowid"
            )
        ]
        declined = [ip for (ip,) in db.execute("SELECT ip FROM declined")]
        return rows, declined

    def _db_upsert(self, lease: Lease) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO leases (mac, ip, static, state, uuid, expires, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(mac) DO UPDATE SET ip=excluded.ip, static=excluded.static,"
            " state=excluded.state, uuid=excluded.uuid, expires=excluded.expires,"
            " updated=excluded.updated",
            (lease.mac, lease.ip, int(lease.static), lease.state, lease.uuid, lease.expires, lease.updated),
        )

    def _db_delete(self, mac: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM leases WHERE mac = ?", (mac,))

    def _db_decline(self, mac: str, ip: str, dropped: bool, at: float) -> None:
        assert self._db is not None
        db = self._db
        db.execute("INSERT OR IGNORE INTO declined (ip, mac, at) VALUES (?, ?, ?)", (ip, mac, at))
        if dropped:
            db.execute("DELETE FROM leases WHERE mac = ? AND ip = ?", (mac, ip))

    def _db_batch(self, items: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
        """Run queued mutations, in order, in one transaction (worker thread)."""
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

    # -- hooks -----------------------------------------------------------------------------

    def _save_lease(self, lease: Lease) -> None:
        self._write(self._db_upsert, lease)

    def _save_decline(self, mac: str, ip: str, dropped: bool) -> None:
        self._write(self._db_decline, mac, ip, dropped, self._clock())

    def _save_free(self, mac: str) -> None:
        self._write(self._db_delete, mac)

    def _write(self, func: Callable[..., None], *args: Any) -> None:
        """Queue one mutation and wait (cooperatively) until its transaction is committed."""
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
