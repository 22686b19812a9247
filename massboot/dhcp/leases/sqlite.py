"""The embedded lease store: SQLite, written off the hub by one worker thread."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gevent import getcurrent, spawn
from gevent.event import AsyncResult, Event

from massboot.dhcp.leases.base import (
    DEFAULT_DECLINE_PROBATION,
    DEFAULT_OFFER_HOLD,
    OFFERED,
    RECLAIM_EXPIRED,
    Lease,
    LeaseStoreError,
)
from massboot.dhcp.leases.index import _Change
from massboot.dhcp.leases.memory import DEFER_ATTRIBUTE, _IndexedLeaseStore

log = logging.getLogger("massboot.dhcp.leases")    # one logger for the package



#: group commit (README, "Lease database writes"): a transaction starts at most this many
#: seconds after the previous one started; what is decided meanwhile waits and shares the next
COMMIT_INTERVAL = 0.01
#: ... unless this many changes wait (or :meth:`SqliteLeaseStore.hurry`): then at once
COMMIT_BATCH = 128

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
    running while SQLite works. :meth:`commit` returns only once the row is durable. Changes are
    grouped: a transaction starts at most every :data:`COMMIT_INTERVAL` seconds (sooner once
    :data:`COMMIT_BATCH` changes wait, or on :meth:`hurry`). Offers are
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
        # per batch instead of one per lease; every change of a batch shares one result
        self._pending: list[_Change] = []
        self._pending_done: Any = None
        self._flusher: Any = None
        self._last_commit = float("-inf")        # time.monotonic() of the last transaction's start
        self._wake: Any = None                    # set to end the flusher's wait at once
        self._hurried = False                     # the next transaction starts without waiting
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
        self._db_statements(_statements(change))

    def _db_statements(self, statements: list[tuple[str, list[Any]]]) -> None:
        """Run prepared statements (worker thread): a few C calls per batch, each running
        with the GIL released, instead of Python per lease that would trade the GIL with the
        hub on every row."""
        assert self._db is not None
        execute = self._db.execute
        for sql, params in statements:
            execute(sql, params)

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
        """Queue *change* and wait (cooperatively) until its transaction is committed.

        In a greenlet that defers its waits (:func:`~massboot.dhcp.leases.memory.deferring`:
        the DHCP read loop, which answers the requests of one read batch inline) the batch's
        result is handed to it instead: the caller sends its ACK once that result is set."""
        if self._closed:
            raise LeaseStoreError("lease store is closed")
        done = self._pending_done
        if done is None:
            done = self._pending_done = AsyncResult()
        self._pending.append(change)
        if self._flusher is None:
            self._flusher = spawn(self._flush)
        elif len(self._pending) >= COMMIT_BATCH:
            self.hurry()
        waits = getattr(getcurrent(), DEFER_ATTRIBUTE, None)
        if waits is not None:
            waits.append(done)
            return
        done.get()

    def hurry(self) -> None:
        self._hurried = True
        if self._wake is not None:
            self._wake.set()

    def _flush(self) -> None:
        """Write everything queued, batch after batch: the changes of a batch are merged into
        their net effect (:func:`_merge`, in decision order) and written by a handful of
        multi-row statements in one transaction, built here on the hub so that the worker
        thread runs only SQLite.

        A transaction starts at most every :data:`COMMIT_INTERVAL` (a change after a quiet
        spell is written at once): each one hands the batch to the worker thread and its result
        back, and at a few thousand requests a second one per read batch made the hub and the
        worker trade the GIL for most of a core (README, "Lease database writes")."""
        try:
            while self._pending:
                wait = self._last_commit + COMMIT_INTERVAL - time.monotonic()
                if wait > 0 and len(self._pending) < COMMIT_BATCH and not self._hurried:
                    self._wake = Event()
                    self._wake.wait(wait)
                    self._wake = None
                self._hurried = False
                self._last_commit = time.monotonic()
                batch, done = self._pending, self._pending_done
                self._pending, self._pending_done = [], None
                try:
                    statements = _statements(_merge(batch))
                    self._run(self._db_batch, [(self._db_statements, (statements,))])
                except Exception as exc:   # LeaseStoreError, or the store closed under us
                    done.set_exception(exc if isinstance(exc, LeaseStoreError) else LeaseStoreError(str(exc)))
                else:
                    done.set(None)
        finally:
            self._flusher = None

    def close(self) -> None:
        if self._closed:
            return
        if self._flusher is not None:
            self.hurry()
            self._flusher.join(timeout=10)     # pending writes are finished first
        try:
            self._run(self._db_close)
        finally:
            self._closed = True
            self._worker.kill()


#: rows per multi-row statement: 8 columns x 500 stays far below SQLite's 32,766 variables
ROWS_PER_STATEMENT = 500

_UPSERT = ("INSERT INTO leases (mac, ip, static, state, uuid, expires, updated, reserved) VALUES {rows}"
           " ON CONFLICT(mac) DO UPDATE SET ip=excluded.ip, static=excluded.static,"
           " state=excluded.state, uuid=excluded.uuid, expires=excluded.expires,"
           " updated=excluded.updated, reserved=excluded.reserved")
_SET_ASIDE = "INSERT OR REPLACE INTO declined (ip, mac, at, until) VALUES {rows}"


def _merge(changes: list[_Change]) -> _Change:
    """The net effect of *changes* applied in order, as one change (what one transaction
    writes). Within a change deletes come before upserts and returned addresses before those
    set aside, as :meth:`SqliteLeaseStore._db_apply` has always written them."""
    if len(changes) == 1:
        return changes[0]
    merged = _Change()
    for change in changes:
        for mac in change.deletes:
            merged.delete(mac)
        for lease in change.upserts.values():
            merged.upsert(lease)
        for ip in change.returned:
            merged.set_aside.pop(ip, None)
            merged.returned.add(ip)
        for ip, aside in change.set_aside.items():
            merged.returned.discard(ip)
            merged.set_aside[ip] = aside
    return merged


def _chunks(items: list[Any], size: int = ROWS_PER_STATEMENT) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _statements(change: _Change) -> list[tuple[str, list[Any]]]:
    """The SQL that writes *change*: multi-row ``DELETE … IN`` and ``INSERT … ON CONFLICT``
    statements with their parameters. Deletes and upserts of one change never name the same
    MAC (:class:`_Change` keeps them apart), nor the returned and set-aside addresses the same
    address, so the statements' order does not matter."""
    out: list[tuple[str, list[Any]]] = []
    for macs in _chunks(sorted(change.deletes)):
        out.append((f"DELETE FROM leases WHERE mac IN ({','.join('?' * len(macs))})", macs))
    for leases in _chunks(list(change.upserts.values())):
        params: list[Any] = []
        for lease in leases:
            params += (lease.mac, lease.ip, int(lease.static), lease.state, lease.uuid, lease.expires or 0,
                       lease.updated, int(lease.reserved))
        out.append((_UPSERT.format(rows=",".join(["(?,?,?,?,?,?,?,?)"] * len(leases))), params))
    for ips in _chunks(sorted(change.returned)):
        out.append((f"DELETE FROM declined WHERE ip IN ({','.join('?' * len(ips))})", ips))
    for items in _chunks(list(change.set_aside.items())):
        params = []
        for ip, (mac, at, until) in items:
            params += (ip, mac, at, until)
        out.append((_SET_ASIDE.format(rows=",".join(["(?,?,?,?)"] * len(items))), params))
    return out
