"""``massboot leases migrate --from sqlite:PATH --to postgresql://...`` (README, "Several servers").

Moves an existing pool from the embedded SQLite store to PostgreSQL keeping every row as it is:
bindings (bound, expired, released, offers within their hold, reservations, static ones) and the
addresses on probation. Rows are copied, not re-decided: what the config now forbids is dropped
by the servers when they load the pool, exactly as SQLite would at its next start. The SQLite
file is only read (an old schema is migrated in memory); stop the server that writes it first.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from massboot.dhcp.leases.base import DEFAULT_DECLINE_PROBATION, DEFAULT_OFFER_HOLD, Lease, LeaseStoreError
from massboot.dhcp.leases.postgresql import copy_leases, parse_dsn
from massboot.dhcp.leases.sqlite import SCHEMA_VERSION, _migrate_v0


@dataclass(frozen=True, slots=True)
class Moved:
    """What one migration wrote."""

    source: str
    target: str
    scope: str
    bindings: int
    declined: int


def read_sqlite(path: str, *, offer_hold: float = DEFAULT_OFFER_HOLD,
                decline_probation: float = DEFAULT_DECLINE_PROBATION
                ) -> tuple[list[Lease], list[tuple[str, str | None, float, float]]]:
    """Every lease row and every declined address ``(ip, mac, at, until)`` of a SQLite store.

    Raises:
        LeaseStoreError: no such file, not a lease database, or a newer schema.
    """
    if not os.path.isfile(path):
        raise LeaseStoreError(f"{path}: no such lease database")
    try:
        disk = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db = sqlite3.connect(":memory:")
            disk.backup(db)                          # a consistent snapshot, WAL included
        finally:
            disk.close()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "leases" not in tables:
            raise LeaseStoreError(f"{path}: not a massboot lease database (no leases table)")
        if version > SCHEMA_VERSION:
            raise LeaseStoreError(f"{path}: schema version {version} is newer than this massboot's "
                                  f"({SCHEMA_VERSION}); upgrade massboot")
        if version == 0:
            _migrate_v0(db, offer_hold, decline_probation)
        rows = [Lease(mac, ip, bool(static), state, uuid, expires or None, updated, bool(reserved))
                for mac, ip, static, state, uuid, expires, updated, reserved in db.execute(
                    "SELECT mac, ip, static, state, uuid, expires, updated, reserved FROM leases "
                    "ORDER BY rowid")]
        declined = [(ip, mac, at, until) for ip, mac, at, until in db.execute(
            "SELECT ip, mac, at, until FROM declined")]
        db.close()
    except sqlite3.Error as exc:
        raise LeaseStoreError(f"{path}: {exc}") from None
    return rows, declined


def migrate(source: str, target: str, *, scope: str = "main", replace: bool = False,
            offer_hold: float = DEFAULT_OFFER_HOLD, decline_probation: float = DEFAULT_DECLINE_PROBATION,
            base_dir: str = ".") -> Moved:
    """Copy the SQLite store *source* (``sqlite:PATH`` or a path) into *scope* of *target*.

    Raises:
        ValueError: a malformed source or DSN.
        LeaseStoreError: unreadable source, unreachable database, or the scope already has
            bindings and not *replace*.
    """
    path = source[len("sqlite:"):] if source.startswith("sqlite:") else source
    if not path:
        raise ValueError("--from: sqlite:PATH")
    rows, declined = read_sqlite(path, offer_hold=offer_hold, decline_probation=decline_probation)
    now = time.time()
    rows = [lease for lease in rows           # an offer past its hold is not a binding
            if not (lease.state == "offered" and not lease.pinned and lease.expires is not None
                    and lease.expires <= now)]
    written = copy_leases(rows, declined, parse_dsn(target, base_dir=base_dir), scope,
                          replace_existing=replace)
    return Moved(path, target, scope, written, len(declined))
