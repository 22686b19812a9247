"""``[httpd] check_ip``: is this address one that massboot leased? (pybootd: "in the BOOTP pool")

The HTTP server asks one question, ``is_leased(ip) -> bool``, and knows nothing else of leases.
Two answers to it:

* :class:`StoreLeases`, when the DHCP server runs in this process: the lease stores' own
  ``by_ip`` (the public :class:`massboot.dhcp.leases.LeaseStore` interface), no I/O;
* :class:`SqliteLeases`, with ``-t -H`` (no DHCP server here, another massboot writes the
  database): the same SQLite files, opened read-only, one query per address, answers
  kept a few seconds;
* :class:`PgLeases`, with ``-t -H`` and ``lease_db = postgresql://...`` (README, "Several
  servers"): the same query on the shared database, read only, cooperative under gevent.

An address counts when a lease holds it as **bound** (also **expired**: sticky, still its
holder's until reclaimed), **static** or **reserved**. An **offered** address is not in use yet
(a ROM downloads after its ACK), a **released** one no longer.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from massboot.dhcp.leases import BOUND, EXPIRED, RESERVED, STATIC, LeaseStoreUnavailable

__all__ = ["LEASED_STATES", "PgLeases", "SqliteLeases", "StoreLeases"]

log = logging.getLogger(__name__)

#: the lease states (as :meth:`LeaseStore.by_ip` reports them) that let an address download
LEASED_STATES = frozenset((BOUND, EXPIRED, STATIC, RESERVED))


class _ByIp(Protocol):
    """The one method of a lease store used here."""

    def by_ip(self, ip: str) -> object | None: ...


class StoreLeases:
    """``is_leased`` over the lease stores of the DHCP server running in this process.

    Args:
        stores: returns the stores to ask (main and ``[subnet:NAME]``; a reload may add some).
    """

    def __init__(self, stores: Callable[[], Iterable[_ByIp]]) -> None:
        self._stores = stores

    def __call__(self, ip: str) -> bool:
        for store in self._stores():
            lease = store.by_ip(ip)
            if lease is not None and getattr(lease, "state", None) in LEASED_STATES:
                return True
        return False


class SqliteLeases:
    """``is_leased`` read from SQLite lease databases another massboot writes (``-t -H``).

    One worker thread keeps a read-only connection per database (``mode=ro``: this process never
    writes the leases) and asks one query per database (a few thousand rows: a scan costs
    little); each query is its own read transaction, so it sees every lease committed before it.
    An answer is kept *ttl* seconds (a refusal *negative_ttl*), for at most *limit* addresses.
    A database that cannot be read counts as holding no lease (logged once until it can be).

    Args:
        paths: the database files (``[bootpd] lease_db`` and each subnet's).
    """

    def __init__(self, paths: Sequence[str], *, ttl: float = 5.0, negative_ttl: float = 1.0,
                 limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        from gevent.threadpool import ThreadPool

        self._paths = tuple(paths)
        self._ttl, self._negative_ttl, self._limit = ttl, negative_ttl, limit
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}
        self._worker = ThreadPool(1)
        self._dbs: dict[str, sqlite3.Connection] = {}    # used by the worker thread only
        self._failing: set[str] = set()

    def __call__(self, ip: str) -> bool:
        now = self._clock()
        known = self._known.get(ip)
        if known is not None and known[1] > now:
            return known[0]
        leased = self._worker.spawn(self._query, ip).get()
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[ip] = (leased, now + (self._ttl if leased else self._negative_ttl))
        return leased

    def close(self) -> None:
        """Close the connections and the worker thread."""
        self._worker.spawn(self._close).get()
        self._worker.kill()

    def _close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def _query(self, ip: str) -> bool:
        """On the worker thread: is *ip* bound, static or reserved in one of the databases?"""
        for path in self._paths:
            try:
                db = self._dbs.get(path)
                if db is None:
                    db = self._dbs[path] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                                                           isolation_level=None, check_same_thread=False)
                # fetchall: the statement runs to its end, so its read transaction ends too
                rows = db.execute("SELECT 1 FROM leases WHERE ip = ? AND (static OR reserved OR "
                                  "state = ?) LIMIT 1", (ip, BOUND)).fetchall()
            except sqlite3.Error as exc:
                stale = self._dbs.pop(path, None)
                if stale is not None:
                    stale.close()
                if path not in self._failing:
                    self._failing.add(path)
                    log.warning("check_ip: lease database %s unreadable: %s", path, exc)
                continue
            self._failing.discard(path)
            if rows:
                return True
        return False


class PgLeases:
    """``is_leased`` read from the PostgreSQL lease database the DHCP servers share (``-t -H``
    with ``lease_db = postgresql://...``): bound, static or reserved in any scope.

    One connection (pg8000 over plain sockets: every wait on it is cooperative under gevent),
    opened at the first question and again after an error, one statement at a time; it only
    reads. The password is read at construction, before privileges are dropped. An answer is
    kept *ttl* seconds (a refusal *negative_ttl*), for at most *limit* addresses. While the
    database cannot be reached, questions raise :class:`LeaseStoreUnavailable` (the server
    answers ``503``, never a download); that is logged once until it answers again.

    Args:
        target: the parsed ``lease_db`` (:func:`massboot.dhcp.leases.postgresql.parse_dsn`).
    """

    QUERY = ("SELECT 1 FROM massboot_leases WHERE ip = :ip AND (static OR reserved OR state = :bound) "
             "LIMIT 1")

    def __init__(self, target: object, *, ttl: float = 5.0, negative_ttl: float = 1.0,
                 limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        import gevent.lock

        self._target = target
        self._password = target.password()        # type: ignore[attr-defined]
        self._ttl, self._negative_ttl, self._limit = ttl, negative_ttl, limit
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}
        self._lock = gevent.lock.Semaphore()
        self._con: object | None = None
        self._failing = False

    def __call__(self, ip: str) -> bool:
        now = self._clock()
        known = self._known.get(ip)
        if known is not None and known[1] > now:
            return known[0]
        with self._lock:
            leased = self._query(ip)
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[ip] = (leased, now + (self._ttl if leased else self._negative_ttl))
        return leased

    def _query(self, ip: str) -> bool:
        target = self._target
        try:
            if self._con is None:
                con = target.connect(self._password)      # type: ignore[attr-defined]
                target.session(con)                       # type: ignore[attr-defined]
                self._con = con
            rows = self._con.run(self.QUERY, ip=ip, bound=BOUND)   # type: ignore[attr-defined]
        except Exception as exc:
            self.close()
            shown = getattr(target, "shown", "?")
            if not self._failing:
                self._failing = True
                log.warning("check_ip: lease database %s cannot answer: %s", shown, exc)
            raise LeaseStoreUnavailable(f"lease database {shown} cannot answer") from None
        if self._failing:
            self._failing = False
            log.warning("check_ip: lease database %s answers again", getattr(target, "shown", "?"))
        return bool(rows)

    def close(self) -> None:
        """Close the connection (the next question opens another)."""
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()                               # type: ignore[attr-defined]
            except Exception:  # noqa: S110 - already broken: nothing more to do with it
                pass
