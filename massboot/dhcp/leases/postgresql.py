"""One lease pool shared by several massboot servers: PostgreSQL (README, "Several servers").

Every server decides on its own copy of the pure index (:class:`~massboot.dhcp.leases.index._Index`,
the code the embedded stores run) and never on a stale one: a decision runs inside a database
transaction that first locks the scope's row in ``massboot_scopes`` (``SELECT ... FOR UPDATE``:
the fleet's decisions on one pool are serialized by the engine), then reads what the other
servers committed since this server's last transaction (every row carries the sequence number
of the transaction that wrote it; a deletion leaves a tombstone), applies it to the index,
decides, writes the change with the next sequence number, and commits. So allocation is atomic
across servers (several servers racing for the last free address: one wins, the others see its
row before they decide), a MAC asking two servers at once gets one address, offers are rows
with their ``offer_hold`` expiry, and an operator's release or reservation on one server is seen
by the next decision of every other one. The sticky, reclaim, decline, probation, reservation
and static semantics are the index's, identical to SQLite's. A unique constraint on
``(scope, ip)``, checked at commit, is the engine's own guard that no address is ever held by
two MACs.

Decisions that arrive while a transaction runs wait for the next one and share it (group
commit, as the SQLite store does): a burst of ACKs costs one transaction per batch. The caller
returns only once its transaction is committed: an ACK leaves only after its commit.

The driver is pg8000: pure Python over the standard socket module, so under gevent's
monkey-patching every wait on the database is a cooperative wait and the hub never blocks
(``tests/loopback/test_leases_pg_hub.py`` proves it with a stalled database).

Faults. When the database cannot be reached (a connection error, or no answer within the
DSN's ``timeout``), the store is *degraded*: the index may hold decisions that were never
committed, so it answers from what it last saw committed only: a client with a bound lease
gets it renewed up to its committed expiry and no further (:attr:`Binding.lease_time`), a new
client is not answered (:class:`LeaseStoreUnavailable`), and a greenlet reconnects, reloads
the pool and resumes by itself. A transaction whose commit was lost is never acknowledged;
the client retries and finds its committed row, or none.

Security: the password is never in the DSN (refused there: logs, ``ps`` and config dumps would
show it); it comes from the file named by ``password_file=``, else from ``PGPASSWORD``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from massboot.dhcp.leases.base import (
    BOUND,
    DEFAULT_DECLINE_PROBATION,
    DEFAULT_OFFER_HOLD,
    RECLAIM_EXPIRED,
    Binding,
    Lease,
    LeaseStoreError,
    LeaseStoreUnavailable,
    _norm_mac,
    _view,
)
from massboot.dhcp.leases.index import _Change
from massboot.dhcp.leases.memory import _IndexedLeaseStore

log = logging.getLogger("massboot.dhcp.leases")    # one logger for the package

#: the schema this code writes (``massboot_schema.version``); an older one is migrated at open
SCHEMA_VERSION = 2
SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
DEFAULT_TIMEOUT = 5.0
#: seconds between reconnection attempts while the database is unreachable (doubling up to the max)
RECONNECT_MIN, RECONNECT_MAX = 0.5, 5.0
#: tombstones older than this are pruned; a server that saw nothing for so long reloads the pool
TOMBSTONE_KEEP = 3600.0
#: the advisory lock key under which the schema is created or migrated (one server at a time)
_SCHEMA_LOCK = 0x6D617373626F6F74 >> 1      # "massboot"

_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE massboot_scopes (
    scope text PRIMARY KEY,
    seq bigint NOT NULL DEFAULT 0,          -- the last committed transaction on this pool
    pruned bigint NOT NULL DEFAULT 0        -- tombstones up to this seq are gone
);
CREATE TABLE massboot_leases (
    scope text NOT NULL,
    mac text NOT NULL,
    ip text NOT NULL,
    static boolean NOT NULL DEFAULT false,
    state text NOT NULL,
    uuid text,
    expires double precision,
    updated double precision NOT NULL DEFAULT 0,
    reserved boolean NOT NULL DEFAULT false,
    seq bigint NOT NULL,
    PRIMARY KEY (scope, mac),
    CONSTRAINT massboot_leases_one_mac_per_ip UNIQUE (scope, ip) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX massboot_leases_seq ON massboot_leases (scope, seq);
CREATE TABLE massboot_declined (
    scope text NOT NULL,
    ip text NOT NULL,
    mac text,
    at double precision NOT NULL,
    until double precision NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (scope, ip)
);
CREATE INDEX massboot_declined_seq ON massboot_declined (scope, seq);
CREATE TABLE massboot_marks (               -- suspect (ip), held (mac, until), stale (mac)
    scope text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    until double precision,
    seq bigint NOT NULL,
    PRIMARY KEY (scope, kind, key)
);
CREATE INDEX massboot_marks_seq ON massboot_marks (scope, seq);
CREATE TABLE massboot_removed (             -- tombstones: lease (mac), declined (ip), marks
    scope text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    seq bigint NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (scope, kind, key)
);
CREATE INDEX massboot_removed_seq ON massboot_removed (scope, seq);
""",
    # which settings the servers of a pool decide by, and who wrote them last (a warning when
    # two servers of one pool differ)
    2: """
ALTER TABLE massboot_scopes ADD COLUMN settings text NOT NULL DEFAULT '';
ALTER TABLE massboot_scopes ADD COLUMN settings_by text NOT NULL DEFAULT ''
""",
}

_LEASE_COLUMNS = "mac, ip, static, state, uuid, expires, updated, reserved"
_LEASE_RECORD = ("mac text, ip text, static boolean, state text, uuid text, expires double precision, "
                 "updated double precision, reserved boolean")

# one statement writes a whole batch: deletions and their tombstones, upserts, marks, the seq;
# only the parts a batch needs are in it (an empty DELETE ... IN (...) may still scan the table)
_WRITE_PARTS = {
    "deletes": """del_l AS (DELETE FROM massboot_leases WHERE scope = :scope
           AND mac IN (SELECT json_array_elements_text(CAST(:deletes AS json))))""",
    "upserts": f"""up_l AS (INSERT INTO massboot_leases (scope, {_LEASE_COLUMNS}, seq)
          SELECT :scope, {_LEASE_COLUMNS}, :seq
          FROM json_to_recordset(CAST(:upserts AS json)) AS r({_LEASE_RECORD})
          ON CONFLICT (scope, mac) DO UPDATE SET ip = excluded.ip, static = excluded.static,
             state = excluded.state, uuid = excluded.uuid, expires = excluded.expires,
             updated = excluded.updated, reserved = excluded.reserved, seq = excluded.seq)""",
    "returned": """del_d AS (DELETE FROM massboot_declined WHERE scope = :scope
           AND ip IN (SELECT json_array_elements_text(CAST(:returned AS json))))""",
    "aside": """up_d AS (INSERT INTO massboot_declined (scope, ip, mac, at, until, seq)
          SELECT :scope, ip, mac, at, until, :seq
          FROM json_to_recordset(CAST(:aside AS json)) AS r(ip text, mac text, at double precision,
                                                             until double precision)
          ON CONFLICT (scope, ip) DO UPDATE SET mac = excluded.mac, at = excluded.at,
             until = excluded.until, seq = excluded.seq)""",
    "unmarks": """del_m AS (DELETE FROM massboot_marks m USING json_to_recordset(CAST(:unmarks AS json))
               AS r(kind text, key text)
           WHERE m.scope = :scope AND m.kind = r.kind AND m.key = r.key)""",
    "marks": """up_m AS (INSERT INTO massboot_marks (scope, kind, key, until, seq)
          SELECT :scope, kind, key, until, :seq
          FROM json_to_recordset(CAST(:marks AS json)) AS r(kind text, key text, until double precision)
          ON CONFLICT (scope, kind, key) DO UPDATE SET until = excluded.until, seq = excluded.seq)""",
    "tombs": """tomb AS (INSERT INTO massboot_removed (scope, kind, key, seq, at)
          SELECT :scope, kind, key, :seq, :now
          FROM json_to_recordset(CAST(:tombs AS json)) AS r(kind text, key text)
          ON CONFLICT (scope, kind, key) DO UPDATE SET seq = excluded.seq, at = excluded.at)""",
}


def _write(con: Any, scope: str, seq: int, now: float, **parts: list[Any]) -> None:
    """Write one batch (the non-empty *parts*) and the pool's new *seq*, in one statement."""
    used = {name: json.dumps(rows) for name, rows in parts.items() if rows}
    ctes = ",\n ".join(_WRITE_PARTS[name] for name in used)
    sql = (f"WITH {ctes}\n" if ctes else "") + "UPDATE massboot_scopes SET seq = :seq WHERE scope = :scope"
    params: dict[str, Any] = {"scope": scope, "seq": seq, **used}
    if "tombs" in used:
        params["now"] = now
    con.run(sql, **params)


# ----------------------------------------------------------------------------- the DSN


@dataclass(frozen=True, slots=True)
class PgTarget:
    """Where the lease database is and how to log in; parsed from ``lease_db`` by :func:`parse_dsn`.

    Attributes:
        shown: the DSN as logs may show it (it never holds a password).
    """

    shown: str
    user: str
    database: str
    host: str | None = "localhost"
    port: int = DEFAULT_PORT
    unix_sock: str | None = None
    password_file: str | None = None
    sslmode: str = "disable"
    connect_timeout: float = DEFAULT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    application_name: str = "massboot"

    def password(self) -> str | None:
        """The password: the file's first line, else ``PGPASSWORD``, else None (trust, peer...).

        Raises:
            LeaseStoreError: the file cannot be read.
        """
        if self.password_file is not None:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")
            except OSError as exc:
                raise LeaseStoreError(f"lease database {self.shown}: password_file: {exc.strerror}") from None
        return os.environ.get("PGPASSWORD")

    def session(self, con: Any) -> None:
        """Session settings: a statement waits at most ``timeout`` (a lock held by a stuck peer);
        a transaction left idle by a stopped server is ended by the database."""
        con.run(f"SET statement_timeout = {int(self.timeout * 1000)}")
        con.run("SET idle_in_transaction_session_timeout = 10000")

    def connect(self, password: str | None = None) -> Any:
        """A new pg8000 connection (cooperative under gevent: plain sockets).

        Raises:
            LeaseStoreUnavailable: the server cannot be reached or refused the login.
        """
        import pg8000.native

        context: ssl.SSLContext | None = None
        if self.sslmode == "require":           # encrypted, the certificate not checked (libpq's)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.sslmode == "verify-full":     # the system's CAs, and the host name
            context = ssl.create_default_context()
        try:
            return pg8000.native.Connection(
                self.user, host=self.host or "localhost", database=self.database, port=self.port,
                password=password if password is not None else self.password(), unix_sock=self.unix_sock,
                ssl_context=context,
                # the socket's timeout: past the statement timeout, so that a slow statement is
                # cancelled by the server (an error) before the link is given up (unreachable)
                timeout=max(self.connect_timeout, self.timeout + 2.0),
                application_name=self.application_name)
        except LeaseStoreError:
            raise
        except Exception as exc:
            raise LeaseStoreUnavailable(
                f"lease database {self.shown}: cannot connect: {_reason(exc)} (is PostgreSQL "
                f"running there, with database {self.database!r} and user {self.user!r}, and does "
                "its pg_hba.conf admit this host?)") from None


def is_dsn(value: str) -> bool:
    """True when ``lease_db`` names a PostgreSQL database rather than a SQLite file."""
    return value.split("://", 1)[0].lower() in SCHEMES and "://" in value


def redact(value: str) -> str:
    """*value* with any password in it replaced, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return value
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


_PARAMS = ("password_file", "sslmode", "connect_timeout", "timeout", "host", "port", "application_name")


def parse_dsn(dsn: str, *, base_dir: str = ".") -> PgTarget:
    """``postgresql://USER@HOST:PORT/DATABASE?password_file=PATH&sslmode=...&timeout=S``.

    ``host`` may be a unix socket directory (``postgresql://massboot@/leases?host=/run/postgresql``),
    as with libpq. A relative ``password_file`` is relative to *base_dir*.

    Raises:
        ValueError: the DSN is malformed, names a password, or an unknown parameter; the
            message never repeats a password.
    """
    try:
        parts = urllib.parse.urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a PostgreSQL URL: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("must start with postgresql://")
    if parts.password is not None:
        raise ValueError("a password in the URL would be shown in logs and process lists: "
                         "put it in a file named by ?password_file=PATH, or in PGPASSWORD")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    for name, values in query.items():
        if name not in _PARAMS:
            raise ValueError(f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})")
        if len(values) != 1:
            raise ValueError(f"parameter {name!r} given twice")
    params = {name: values[0] for name, values in query.items()}
    user = urllib.parse.unquote(parts.username or "") or os.environ.get("PGUSER") or "massboot"
    database = urllib.parse.unquote(parts.path.lstrip("/")) or user
    if "/" in database:
        raise ValueError(f"database name {database!r} has a '/'")
    host = urllib.parse.unquote(parts.hostname or "") or params.get("host") or None
    if "port" in params:
        try:
            port = int(params["port"])
        except ValueError:
            raise ValueError(f"port {params['port']!r} is not a number") from None
    port = port or DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    unix_sock = None
    if host is None or host.startswith("/"):
        directory = host or "/run/postgresql"
        unix_sock, host = os.path.join(directory, f".s.PGSQL.{port}"), None
    sslmode = params.get("sslmode", "disable")
    if sslmode in ("allow", "prefer"):
        raise ValueError(f"sslmode {sslmode}: massboot does not fall back from TLS silently; "
                         "use disable, require or verify-full")
    if sslmode not in ("disable", "require", "verify-full"):
        raise ValueError(f"sslmode {sslmode!r}: use disable, require or verify-full")
    if unix_sock is not None and sslmode != "disable":
        raise ValueError("sslmode: a unix socket carries no TLS (use disable, or a host name)")
    timeouts = {}
    for name in ("connect_timeout", "timeout"):
        if name in params:
            try:
                timeouts[name] = float(params[name])
            except ValueError:
                raise ValueError(f"{name} {params[name]!r} is not a number of seconds") from None
            if not 0.1 <= timeouts[name] <= 600:
                raise ValueError(f"{name} {params[name]} must be between 0.1 and 600 seconds")
    password_file = params.get("password_file")
    if password_file is not None:
        password_file = os.path.join(base_dir, password_file)
    return PgTarget(shown=dsn, user=user, database=database, host=host, port=port, unix_sock=unix_sock,
                    password_file=password_file, sslmode=sslmode,
                    connect_timeout=timeouts.get("connect_timeout", DEFAULT_TIMEOUT),
                    timeout=timeouts.get("timeout", DEFAULT_TIMEOUT),
                    application_name=params.get("application_name", "massboot"))


def _reason(exc: BaseException) -> str:
    """A driver error in one line: the server's message and SQLSTATE, else the exception."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        return f"{arg.get('M', 'error')} ({arg.get('C', '?')})"
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if cause is not None and text in ("network error", "communication error"):
        text = f"{text}: {cause}"
    return text


def _unreachable(exc: BaseException) -> bool:
    """True for an error that says the server is gone, not that the statement was wrong."""
    import pg8000.exceptions

    if isinstance(exc, (OSError, socket.timeout, pg8000.exceptions.InterfaceError)):
        return True
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        code = str(arg.get("C", ""))
        # 08: connection exception; 57P01-03: the server shuts down or restarts
        return code.startswith("08") or code in ("57P01", "57P02", "57P03")
    return False


# ----------------------------------------------------------------------------- schema


def ensure_schema(con: Any, shown: str) -> None:
    """Create the tables, or migrate them to :data:`SCHEMA_VERSION` (one server at a time).

    Raises:
        LeaseStoreError: the database has a newer schema than this massboot knows.
    """
    con.run("BEGIN")
    try:
        con.run("SELECT pg_advisory_xact_lock(:k)", k=_SCHEMA_LOCK)
        exists = con.run("SELECT to_regclass('massboot_schema') IS NOT NULL")[0][0]
        if not exists:
            con.run("CREATE TABLE massboot_schema (version integer NOT NULL)")
            con.run("INSERT INTO massboot_schema VALUES (0)")
        version = con.run("SELECT version FROM massboot_schema")[0][0]
        if version > SCHEMA_VERSION:
            raise LeaseStoreError(f"lease database {shown}: schema version {version} is newer than "
                                  f"this massboot's ({SCHEMA_VERSION}); upgrade massboot")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step].split(";"):
                if statement.strip():
                    con.run(statement)
            log.info("lease database %s: schema %s version %d", shown,
                     "created at" if step == 1 else "migrated to", step)
        con.run("UPDATE massboot_schema SET version = :v", v=SCHEMA_VERSION)
        con.run("COMMIT")
    except BaseException:
        _rollback(con)
        raise


def check_database(target: PgTarget) -> str:
    """``--check-config``: log in and read the schema version, changing nothing.

    Returns:
        A line saying what was found.

    Raises:
        LeaseStoreError: unreachable, refused, or a newer schema than this massboot's.
    """
    with _one_shot(target) as con:
        exists = con.run("SELECT to_regclass('massboot_schema') IS NOT NULL")[0][0]
        version = con.run("SELECT version FROM massboot_schema")[0][0] if exists else None
    if version is None:
        return f"lease database {target.shown}: reachable, empty (massboot creates its tables)"
    if version > SCHEMA_VERSION:
        raise LeaseStoreError(f"lease database {target.shown}: schema version {version} is newer than "
                              f"this massboot's ({SCHEMA_VERSION}); upgrade massboot")
    return f"lease database {target.shown}: reachable, schema version {version}"


def _rollback(con: Any) -> None:
    try:
        con.run("ROLLBACK")
    except Exception:   # the connection is gone: so is the transaction
        pass


def _close(con: Any) -> None:
    try:
        con.close()
    except Exception:   # already gone
        pass


@contextmanager
def _one_shot(target: PgTarget) -> Iterator[Any]:
    """A connection for one operator command (check, migrate), closed after; a driver error
    becomes a :class:`LeaseStoreError` that names the database (raised by the connect too)."""
    con = target.connect()
    try:
        yield con
    except LeaseStoreError:
        raise
    except Exception as exc:
        raise LeaseStoreError(f"lease database {target.shown}: {_reason(exc)}") from None
    finally:
        _close(con)


def _lease(row: Sequence[Any]) -> Lease:
    mac, ip, static, state, uuid, expires, updated, reserved = row
    return Lease(mac, ip, bool(static), state, uuid, expires, updated or 0.0, bool(reserved))


def _lease_json(lease: Lease) -> dict[str, Any]:
    return {"mac": lease.mac, "ip": lease.ip, "static": lease.static, "state": lease.state,
            "uuid": lease.uuid, "expires": lease.expires, "updated": lease.updated,
            "reserved": lease.reserved}


_MARK_KINDS = ("suspect", "held", "stale")


# ----------------------------------------------------------------------------- the store


class PostgresLeaseStore(_IndexedLeaseStore):
    """A lease pool in PostgreSQL, shared by every server that names it (README, "Several servers").

    Args:
        dsn: ``postgresql://...`` (:func:`parse_dsn`), or a parsed :class:`PgTarget`.
        pool, static, exclude, offer_hold, reclaim, decline_probation, clock: as for
            :class:`~massboot.dhcp.leases.SqliteLeaseStore`. Every server sharing a pool must
            have the same pool and ``[static_dhcp]``.
        scope: the pool's name in the database (``main``, or a ``[subnet:NAME]``'s name).

    Raises:
        LeaseStoreError: the database cannot be reached or has a newer schema (at open only;
            later faults make the store degraded, then it recovers by itself).
    """

    #: a decision is taken in the database: it waits in the deciding greenlet (the DHCP read
    #: loop hands such exchanges to its pool)
    defers_saves = False

    def __init__(
        self,
        dsn: str | PgTarget,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        scope: str = "main",
        offer_hold: float = DEFAULT_OFFER_HOLD,
        reclaim: str = RECLAIM_EXPIRED,
        decline_probation: float = DEFAULT_DECLINE_PROBATION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(pool, static, exclude, offer_hold=offer_hold, reclaim=reclaim,
                         decline_probation=decline_probation, clock=clock)
        self._target = dsn if isinstance(dsn, PgTarget) else parse_dsn(dsn)
        self._scope = scope
        self._settings = (list(pool), dict(static), list(exclude), offer_hold, reclaim, decline_probation)
        self._con: Any = None
        self._seq = -1               # the last transaction this index has seen (-1: none: reload)
        self._dirty = True           # the index may hold decisions never committed: reload it
        self._closed = False
        self._pending: list[tuple[Callable[..., Any] | None, tuple[Any, ...], Any]] = []
        self._flusher: Any = None
        self._reconnector: Any = None
        self._down_since: float | None = None
        self._last_sync = 0.0
        # what was last seen committed, for a degraded store: MAC → lease, IP → MAC
        self._committed: dict[str, Lease] = {}
        self._committed_ip: dict[str, str] = {}
        self.transactions = 0        # committed (for the bench and the tests)
        self._load_change: _Change | None = None     # what a reload dropped, written next
        # read now, as root if massboot starts as root: a reconnection after the privileges are
        # dropped may no longer read the file (a new password there is used when it can)
        self._secret = self._target.password()
        self._con = self._connect()            # raises: a bad DSN or no server is a startup error
        try:
            ensure_schema(self._con, self._target.shown)
            self._target.session(self._con)
            self._con.run("INSERT INTO massboot_scopes (scope) VALUES (:s) ON CONFLICT DO NOTHING", s=scope)
            self._compare_settings()
            self._run_batch([])        # load the pool (and forget what the config now forbids)
        except BaseException as exc:
            self.close()
            if isinstance(exc, LeaseStoreError):
                raise
            if isinstance(exc, Exception):
                raise LeaseStoreError(f"lease database {self._target.shown}: {_reason(exc)}") from None
            raise
        used, size = self.counts()
        log.info("lease store %s scope %s: %d leases, %d declined, pool %d/%d in use",
                 self._target.shown, scope, len(self._index.by_mac), len(self._index.aside), used, size)

    def _compare_settings(self) -> None:
        """Record the settings this server decides by; warn when another server of the pool
        recorded different ones (README, "Several servers": they must be the same)."""
        pool, static, _, offer_hold, reclaim, probation = self._settings
        text = json.dumps({"pool": pool, "static": sorted(self._index.static.items()),
                           "offer_hold": offer_hold, "reclaim": reclaim, "decline_probation": probation})
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        me = f"{socket.gethostname()} pid {os.getpid()}"
        before, by = self._con.run("SELECT settings, settings_by FROM massboot_scopes WHERE scope = :s",
                                   s=self._scope)[0]
        self._con.run("UPDATE massboot_scopes SET settings = :d, settings_by = :me WHERE scope = :s",
                      d=digest, me=me, s=self._scope)
        if before and before != digest:
            log.warning("lease pool %s of %s: this server's pool, [static_dhcp] or lease lifecycle "
                        "options differ from those of %s, which shares it; every server of a pool "
                        "needs the same (README, Several servers)", self._scope, self._target.shown, by)

    def _connect(self) -> Any:
        try:
            self._secret = self._target.password()
        except LeaseStoreError:
            pass                           # unreadable now (privileges dropped): the one read before
        return self._target.connect(self._secret)

    # -- the interface -------------------------------------------------------------------

    @property
    def database_up(self) -> bool | None:
        return self._con is not None and not self._closed

    def _decide(self, decision: Callable[..., Any], *args: Any) -> Any:
        return self._submit(decision, args)

    def _submit(self, decision: Callable[..., Any] | None, args: tuple[Any, ...]) -> Any:
        """Queue a decision (None: only catch up) for the next transaction; wait for its commit."""
        from gevent import spawn
        from gevent.event import AsyncResult

        if self._closed:
            raise LeaseStoreError("lease store is closed")
        if self._con is None:
            raise LeaseStoreUnavailable(f"lease database {self._target.shown} unreachable")
        done = AsyncResult()
        self._pending.append((decision, args, done))
        if self._flusher is None:
            self._flusher = spawn(self._flush)
        return done.get()

    def _sync(self) -> None:
        """Catch up with the other servers before a read (nothing when the database is down)."""
        if self._con is None or self._closed:
            return
        try:
            self._submit(None, ())
        except LeaseStoreError:
            pass

    def get(self, mac: str) -> Lease | None:
        self._sync()
        if self._con is None:
            return self._known(_norm_mac(mac))
        return super().get(mac)

    def known(self, mac: str) -> Lease | None:
        if self._con is None:
            return self._known(_norm_mac(mac))
        return super().get(mac)          # the index as the last transaction left it: no wait

    def by_ip(self, ip: str) -> Lease | None:
        self._sync()
        if self._con is None:
            mac = self._committed_ip.get(ip)
            return None if mac is None else self._known(mac)
        return super().by_ip(ip)

    def leases(self) -> list[Lease]:
        self._sync()
        if self._con is None:
            now = self._clock()
            return [_view(lease, now) for lease in self._committed.values()]
        return super().leases()

    def counts(self) -> tuple[int, int]:
        now = self._clock()
        if not 0 <= now - self._last_sync < 1.0:      # at most once a second: scrapes are frequent
            self._last_sync = now
            self._sync()
        return super().counts()

    def needs_probe(self, ip: str) -> bool:
        return self._con is not None and super().needs_probe(ip)

    def allocate(self, mac: str) -> Lease | None:
        try:
            return super().allocate(mac)
        except LeaseStoreUnavailable:
            lease = self._renewable(_norm_mac(mac))
            if lease is None:
                raise
            return lease

    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        try:
            return super().bind(mac, ip, lease_time=lease_time, uuid=uuid)
        except LeaseStoreUnavailable:
            lease = self._renewable(_norm_mac(mac))
            if lease is None or (ip is not None and ip != lease.ip):
                raise
            assert lease.expires is not None
            left = int(lease.expires - self._clock())
            if left < 1:
                raise
            # never extended without a commit: what is left of the committed lease
            return Binding(lease, True, lease_time=min(left, lease_time))

    def _known(self, mac: str) -> Lease | None:
        lease = self._committed.get(mac)
        if lease is None:
            return None
        now = self._clock()
        if lease.state != BOUND and not lease.pinned and (lease.expires is None or lease.expires <= now):
            return None
        return _view(lease, now)

    def _renewable(self, mac: str) -> Lease | None:
        """The MAC's committed binding when it is bound and runs still (a degraded store's answer)."""
        lease = self._committed.get(mac)
        now = self._clock()
        if lease is None or lease.state != BOUND or lease.expires is None or lease.expires <= now:
            return None
        return _view(lease, now)

    # -- transactions ----------------------------------------------------------------------

    def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                if self._con is None or self._closed:
                    error = LeaseStoreError("lease store is closed") if self._closed else \
                        LeaseStoreUnavailable(f"lease database {self._target.shown} unreachable")
                    for _, _, done in batch:
                        done.set_exception(error)
                    continue
                items = [(decision, args) for decision, args, _ in batch]
                try:
                    try:
                        results = self._run_batch(items)
                    except Exception as exc:
                        # a connection the server closed (a restart, an administrator) is
                        # replaced at once and the batch run again on the reloaded pool: its
                        # decisions are made anew, so one that did commit is not made twice
                        if not _unreachable(exc) or not self._replace_connection():
                            raise
                        results = self._run_batch(items)
                except Exception as exc:
                    error = self._failed(exc)
                    for _, _, done in batch:
                        done.set_exception(error)
                else:
                    for (_, _, done), (ok, value) in zip(batch, results, strict=True):
                        if ok:
                            done.set(value)
                        else:
                            done.set_exception(value)
        finally:
            self._flusher = None

    def _replace_connection(self) -> bool:
        """Open a new connection in place of a broken one; False when none can be made now."""
        old, self._con = self._con, None
        if old is not None:
            _close(old)
        try:
            con = self._connect()
            self._target.session(con)
        except Exception:
            return False
        self._con, self._dirty = con, True
        return True

    def _failed(self, exc: Exception) -> LeaseStoreError:
        """A transaction failed: the index must be reloaded; when the server is gone, degrade."""
        self._dirty = True
        if isinstance(exc, LeaseStoreError):
            return exc
        if not _unreachable(exc):
            log.error("lease database %s scope %s: transaction failed: %s", self._target.shown,
                      self._scope, _reason(exc))
            return LeaseStoreError(f"lease database {self._target.shown}: {_reason(exc)}")
        self._degrade(exc)
        return LeaseStoreUnavailable(f"lease database {self._target.shown} unreachable: {_reason(exc)}")

    def _degrade(self, exc: BaseException) -> None:
        from gevent import spawn

        con, self._con = self._con, None
        if con is not None:
            _close(con)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("lease database %s unreachable (%s): known bindings are renewed up to their "
                        "committed expiry, new clients are not answered; reconnecting",
                        self._target.shown, _reason(exc))
        if self._reconnector is None and not self._closed:
            self._reconnector = spawn(self._reconnect)

    def _reconnect(self) -> None:
        from gevent import sleep

        delay = RECONNECT_MIN
        try:
            while not self._closed and self._con is None:
                sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                try:
                    con = self._connect()
                    self._target.session(con)
                except LeaseStoreError as exc:
                    log.debug("lease database %s: %s", self._target.shown, exc)
                    continue
                except Exception as exc:
                    log.debug("lease database %s: %s", self._target.shown, _reason(exc))
                    continue
                if self._closed:
                    con.close()
                    return
                self._dirty = True
                try:
                    # reload the pool as the others left it, on the new connection before it is
                    # published: a decision arriving now waits (no connection: not answered)
                    # rather than sharing the connection with this reload (one statement at a
                    # time on a pg8000 connection)
                    self._run_batch([], con)
                except Exception as exc:
                    _close(con)
                    log.debug("lease database %s: reload failed: %s", self._target.shown, _reason(exc))
                    continue
                if self._closed:
                    con.close()
                    return
                self._con = con
                down = time.monotonic() - (self._down_since or time.monotonic())
                self._down_since = None
                log.warning("lease database %s reachable again after %.1f s; pool reloaded",
                            self._target.shown, down)
        finally:
            self._reconnector = None

    def _run_batch(self, batch: list[tuple[Callable[..., Any] | None, tuple[Any, ...]]],
                   con: Any = None) -> list[tuple[bool, Any]]:
        """One transaction: lock the pool, catch up, decide every item, write, commit (on *con*,
        a connection not published yet, else the store's)."""
        if con is None:
            con = self._con
        if con is None:
            raise LeaseStoreUnavailable(f"lease database {self._target.shown} unreachable")
        scope = self._scope
        if batch and all(decision is None for decision, _ in batch) and not self._dirty:
            # reads only: nothing to lock when nobody committed since
            (seq,) = con.run("SELECT seq FROM massboot_scopes WHERE scope = :s", s=scope)[0]
            if seq == self._seq:
                return [(True, None)] * len(batch)
        con.run("BEGIN")
        try:
            seq, pruned = con.run("SELECT seq, pruned FROM massboot_scopes WHERE scope = :s FOR UPDATE",
                                  s=scope)[0]
            now = self._clock()
            if self._dirty or self._seq < pruned:
                self._reload(con, now)
            elif seq != self._seq:
                self._catch_up(con)
            self._seq = seq
            index = self._index
            marks = (set(index.suspect), dict(index.held), set(index.stale))
            change = self._load_change or _Change()
            self._load_change = None
            results: list[tuple[bool, Any]] = []
            for decision, args in batch:
                if decision is None:
                    results.append((True, None))
                    continue
                index.sweep(now, change)
                try:
                    results.append((True, decision(*args, now, change)))
                except Exception as exc:     # LeaseConflict, ValueError: that caller's answer
                    results.append((False, exc))
            marked, unmarked = self._mark_changes(marks)
            if change or marked or unmarked:
                tombs = [{"kind": "lease", "key": mac} for mac in change.deletes]
                tombs += [{"kind": "declined", "key": ip} for ip in change.returned]
                tombs += unmarked
                _write(con, scope, seq + 1, now, deletes=sorted(change.deletes),
                       upserts=[_lease_json(lease) for lease in change.upserts.values()],
                       returned=sorted(change.returned),
                       aside=[{"ip": ip, "mac": mac, "at": at, "until": until}
                              for ip, (mac, at, until) in change.set_aside.items()],
                       unmarks=unmarked, marks=marked, tombs=tombs)
                if seq % 1000 == 999:
                    self._prune(con, now)
                con.run("COMMIT")
                self._seq = seq + 1
                self._remember(change.upserts.values(), change.deletes)
            else:
                con.run("COMMIT")
            self.transactions += 1
            self._counts_cache = None
            return results
        except BaseException:
            self._dirty = True
            _rollback(con)
            raise

    def _reload(self, con: Any, now: float) -> None:
        """Rebuild the index from the database (at open, after a failed transaction)."""
        rows = [_lease(row) for row in con.run(
            f"SELECT {_LEASE_COLUMNS} FROM massboot_leases WHERE scope = :s ORDER BY seq, mac",
            s=self._scope)]
        declined = [(ip, until) for ip, until in con.run(
            "SELECT ip, until FROM massboot_declined WHERE scope = :s", s=self._scope)]
        marks = con.run("SELECT kind, key, until FROM massboot_marks WHERE scope = :s", s=self._scope)
        index = self._index
        counters = (index.offers_expired, index.reclaimed, index.probation_ended)
        pool, _, exclude, offer_hold, reclaim, probation = self._settings
        # in place: queued decisions hold its bound methods; the [static_dhcp] it has now (a
        # reload may have changed it since the store was opened)
        index.__init__(pool, dict(index.static), exclude, offer_hold=offer_hold, reclaim=reclaim,
                       decline_probation=probation)
        index.offers_expired, index.reclaimed, index.probation_ended = counters
        self._load_change = index.load(rows, declined, now)
        self._adopt_marks(marks, ())
        self._committed.clear()
        self._committed_ip.clear()
        self._remember(rows, ())
        self._remember((), self._load_change.deletes)
        self._dirty = False

    def _catch_up(self, con: Any) -> None:
        """Apply what the other servers committed since :attr:`_seq`."""
        s, since = self._scope, self._seq
        removed = con.run("SELECT kind, key FROM massboot_removed WHERE scope = :s AND seq > :q",
                          s=s, q=since)
        rows = [_lease(row) for row in con.run(
            f"SELECT {_LEASE_COLUMNS} FROM massboot_leases WHERE scope = :s AND seq > :q ORDER BY seq",
            s=s, q=since)]
        aside = [(ip, until) for ip, until in con.run(
            "SELECT ip, until FROM massboot_declined WHERE scope = :s AND seq > :q", s=s, q=since)]
        marks = con.run("SELECT kind, key, until FROM massboot_marks WHERE scope = :s AND seq > :q",
                        s=s, q=since)
        gone = [key for kind, key in removed if kind == "lease"]
        returned = [key for kind, key in removed if kind == "declined"]
        self._index.adopt(gone, rows, returned, aside)
        self._adopt_marks(marks, [(kind, key) for kind, key in removed if kind in _MARK_KINDS])
        self._remember(rows, gone)

    def _adopt_marks(self, marks: Iterable[Sequence[Any]], unmarks: Iterable[tuple[str, str]]) -> None:
        index = self._index
        for kind, key in unmarks:
            if kind == "suspect":
                index.suspect.discard(key)
            elif kind == "held":
                index.held.pop(key, None)
            else:
                index.stale.discard(key)
        for kind, key, until in marks:
            if kind == "suspect":
                index.suspect.add(key)
            elif kind == "held":
                index.held[key] = until or 0.0
            else:
                index.stale.add(key)

    def _mark_changes(self, before: tuple[set[str], dict[str, float], set[str]]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """The marks this batch set and removed, as rows."""
        suspect, held, stale = before
        index = self._index
        marked: list[dict[str, Any]] = []
        unmarked: list[dict[str, str]] = []
        marked += [{"kind": "suspect", "key": ip, "until": None} for ip in index.suspect - suspect]
        unmarked += [{"kind": "suspect", "key": ip} for ip in suspect - index.suspect]
        marked += [{"kind": "held", "key": mac, "until": until} for mac, until in index.held.items()
                   if held.get(mac) != until]
        unmarked += [{"kind": "held", "key": mac} for mac in held.keys() - index.held.keys()]
        marked += [{"kind": "stale", "key": mac, "until": None} for mac in index.stale - stale]
        unmarked += [{"kind": "stale", "key": mac} for mac in stale - index.stale]
        return marked, unmarked

    def _remember(self, rows: Iterable[Lease], gone: Iterable[str]) -> None:
        """Keep the committed view (what a degraded store answers from) up to date."""
        committed, by_ip = self._committed, self._committed_ip
        for mac in gone:
            lease = committed.pop(mac, None)
            if lease is not None and by_ip.get(lease.ip) == mac:
                del by_ip[lease.ip]
        for lease in rows:
            old = committed.get(lease.mac)
            if old is not None and old.ip != lease.ip and by_ip.get(old.ip) == lease.mac:
                del by_ip[old.ip]
            committed[lease.mac] = lease
            by_ip[lease.ip] = lease.mac

    def _prune(self, con: Any, now: float) -> None:
        """Forget tombstones older than :data:`TOMBSTONE_KEEP` (a server that saw none reloads)."""
        rows = con.run("DELETE FROM massboot_removed WHERE scope = :s AND at < :t RETURNING seq",
                       s=self._scope, t=now - TOMBSTONE_KEEP)
        if rows:
            con.run("UPDATE massboot_scopes SET pruned = GREATEST(pruned, :p) WHERE scope = :s",
                    p=max(seq for (seq,) in rows), s=self._scope)

    def close(self) -> None:
        if self._closed:
            return
        if self._flusher is not None:
            self._flusher.join(timeout=10)      # pending decisions are committed first
        self._closed = True
        if self._reconnector is not None:
            self._reconnector.kill(block=False)
        con, self._con = self._con, None
        if con is not None:
            _close(con)


def copy_leases(rows: Iterable[Lease], declined: Iterable[tuple[str, str | None, float, float]],
                target: PgTarget, scope: str, *, replace_existing: bool = False) -> int:
    """Write *rows* and *declined* ``(ip, mac, at, until)`` into *scope* of an empty pool (migrate).

    Returns:
        The number of bindings written.

    Raises:
        LeaseStoreError: the pool already has bindings (and not *replace_existing*), or the
            database refused the rows.
    """
    with _one_shot(target) as con:
        ensure_schema(con, target.shown)
        con.run("INSERT INTO massboot_scopes (scope) VALUES (:s) ON CONFLICT DO NOTHING", s=scope)
        con.run("BEGIN")
        try:
            seq = con.run("SELECT seq FROM massboot_scopes WHERE scope = :s FOR UPDATE", s=scope)[0][0]
            existing = con.run("SELECT count(*) FROM massboot_leases WHERE scope = :s", s=scope)[0][0]
            if existing and not replace_existing:
                raise LeaseStoreError(f"lease database {target.shown}: scope {scope} already has "
                                      f"{existing} bindings; refusing to merge (--replace to overwrite)")
            for table in ("massboot_leases", "massboot_declined", "massboot_marks", "massboot_removed"):
                con.run(f"DELETE FROM {table} WHERE scope = :s", s=scope)
            rows = list(rows)
            aside = [{"ip": ip, "mac": mac, "at": at, "until": until} for ip, mac, at, until in declined]
            _write(con, scope, seq + 1, time.time(),
                   upserts=[_lease_json(replace(lease, mac=_norm_mac(lease.mac))) for lease in rows],
                   aside=aside)
            con.run("UPDATE massboot_scopes SET pruned = :p WHERE scope = :s", p=seq + 1, s=scope)
            con.run("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return len(rows)
