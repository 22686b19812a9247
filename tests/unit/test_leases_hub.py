"""The SQLite lease store writes off the gevent hub (README "DHCP and PXE behaviour": leases are
written before the ACK leaves, while other clients keep being served).

Black box: a second connection holds the database's write lock, so the store's commit has to
wait for it. Done on the hub, that wait would freeze every greenlet, the one meant to release
the lock included; done on the writer thread, a ticker greenlet keeps its pace and releases it.
"""

from __future__ import annotations

import sqlite3
import time

import gevent
import pytest
from gevent import monkey

from massboot.dhcp.leases import BOUND, SqliteLeaseStore

POOL = [f"10.0.0.{i}" for i in range(10, 20)]
MAC = "00:11:22:33:44:0A"
TICK = 0.02
HOLD = 0.4          # seconds the other connection keeps the write lock

_real_get_ident = monkey.get_original("_thread", "get_ident")


@pytest.fixture
def store(tmp_path):
    s = SqliteLeaseStore(str(tmp_path / "leases.db"), POOL)
    yield s
    s.close()


def _ticker(ticks: list[float], stop: gevent.event.Event) -> None:
    while not stop.is_set():
        ticks.append(time.monotonic())
        gevent.sleep(TICK)


def test_commit_waits_for_a_busy_database_without_blocking_the_hub(store, tmp_path) -> None:
    offered = store.allocate(MAC)
    assert offered is not None
    other = sqlite3.connect(str(tmp_path / "leases.db"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")             # the write lock: the store's commit waits
        ticks: list[float] = []
        stop = gevent.event.Event()
        ticker = gevent.spawn(_ticker, ticks, stop)
        released: list[float] = []

        def release() -> None:
            gevent.sleep(HOLD)                       # a greenlet: runs only if the hub is free
            released.append(time.monotonic())
            other.execute("COMMIT")

        releaser = gevent.spawn(release)
        start = time.monotonic()
        lease = store.commit(MAC, offered.ip, lease_time=3600)
        done = time.monotonic()
        stop.set()
        gevent.joinall([ticker, releaser], timeout=5, raise_error=True)
    finally:
        other.close()
    assert lease.state == BOUND and lease.ip == offered.ip
    # the commit waited for the lock, which was released on time by a greenlet
    assert released and released[0] - start < HOLD + 0.3
    assert done >= released[0]
    # and the hub kept running meanwhile: no gap between ticks anywhere near the hold
    during = [t for t in ticks if start <= t <= done]
    assert len(during) >= HOLD / TICK / 3
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < HOLD - 0.1, f"the hub stalled for {max(gaps):.3f} s"
    # the row is durable: a new connection reads it
    check = sqlite3.connect(str(tmp_path / "leases.db"))
    try:
        (state,) = check.execute("SELECT state FROM leases WHERE mac = ?", (MAC,)).fetchone()
    finally:
        check.close()
    assert state == BOUND


def test_statements_run_on_another_thread_than_the_hub(tmp_path, monkeypatch) -> None:
    # a trace callback on every connection the store opens records the OS thread of each statement
    threads: list[tuple[int, str]] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_trace_callback(lambda sql: threads.append((_real_get_ident(), sql)))
        return db

    monkeypatch.setattr(sqlite3, "connect", traced)
    s = SqliteLeaseStore(str(tmp_path / "leases.db"), POOL)
    try:
        offered = s.allocate(MAC)
        s.commit(MAC, offered.ip, lease_time=60)
        s.release(MAC)
        s.decline(MAC, offered.ip)
    finally:
        s.close()
    hub = _real_get_ident()
    writes = [(ident, sql) for ident, sql in threads if sql.split()[0].upper() in
              ("INSERT", "DELETE", "COMMIT", "BEGIN")]
    assert writes, threads
    assert any(sql.upper().startswith("COMMIT") for _, sql in writes)
    assert all(ident != hub for ident, _ in writes), [sql for ident, sql in writes if ident == hub]


# -- group commit (README, "Lease database writes") ---------------------------------------------

MACS = [f"00:11:22:33:55:{i:02X}" for i in range(8)]


@pytest.fixture
def windowed(tmp_path, monkeypatch):
    """A store whose commit window is a minute (no test waits it out) and whose transactions
    are counted (the sizes of their batches)."""
    from massboot.dhcp.leases import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "COMMIT_INTERVAL", 60.0)
    s = SqliteLeaseStore(str(tmp_path / "leases.db"), POOL)
    batch = s._db_batch
    s.transactions = []

    def counting(items):
        s.transactions.append(items)
        return batch(items)

    s._db_batch = counting
    yield s
    s.close()


def _commit(store: SqliteLeaseStore, mac: str) -> str:
    offered = store.allocate(mac)
    assert offered is not None
    return offered.ip


def test_a_change_after_a_quiet_spell_is_written_at_once(windowed) -> None:
    done = gevent.spawn(_commit, windowed, MACS[0])
    done.join(timeout=5)
    assert done.successful(), "the first change waited for a window nobody opened"
    assert len(windowed.transactions) == 1


def test_changes_within_the_window_wait_and_share_one_transaction(windowed) -> None:
    _commit(windowed, MACS[0])                              # opens the window
    waiting = [gevent.spawn(_commit, windowed, mac) for mac in MACS[1:6]]
    gevent.sleep(0.3)
    assert not any(g.ready() for g in waiting), "a change within the window did not wait"
    assert len(windowed.transactions) == 1
    windowed.hurry()                                        # what the DHCP read loop does
    gevent.joinall(waiting, timeout=5, raise_error=True)
    assert all(g.successful() for g in waiting)
    assert len(windowed.transactions) == 2                  # the five in one
    assert {lease.mac for lease in windowed.leases()} == set(MACS[:6])


def test_a_full_batch_is_written_without_waiting_for_the_window(windowed, monkeypatch) -> None:
    from massboot.dhcp.leases import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "COMMIT_BATCH", 4)
    _commit(windowed, MACS[0])
    batch = [gevent.spawn(_commit, windowed, mac) for mac in MACS[1:4]]
    gevent.sleep(0.1)
    assert not any(g.ready() for g in batch)                # three wait in the window ...
    batch.append(gevent.spawn(_commit, windowed, MACS[4]))  # ... the fourth fills the batch
    gevent.joinall(batch, timeout=5, raise_error=True)
    assert all(g.successful() for g in batch), "a full batch waited for the window"
    assert len(windowed.transactions) == 2


def test_a_hurry_while_a_transaction_runs_is_not_lost(windowed) -> None:
    _commit(windowed, MACS[0])
    first = gevent.spawn(_commit, windowed, MACS[1])
    gevent.sleep(0.1)
    windowed.hurry()                                        # MACS[1]'s transaction starts
    gevent.sleep(0)
    windowed.hurry()                                        # asked while it runs
    second = gevent.spawn(_commit, windowed, MACS[2])
    gevent.joinall([first, second], timeout=5, raise_error=True)
    assert first.successful() and second.successful(), "the second hurry was lost"


def test_close_writes_what_waits_in_the_window(windowed, tmp_path) -> None:
    """An exchange waiting for its commit when the server stops: its change is written (no
    ACKed lease is lost, and no decision half-kept), and close() does not wait the window out."""
    _commit(windowed, MACS[0])
    waiting = gevent.spawn(_commit, windowed, MACS[1])
    gevent.sleep(0.1)
    assert not waiting.ready()
    start = time.monotonic()
    windowed.close()
    assert time.monotonic() - start < 5
    waiting.join(timeout=5)
    assert waiting.successful()
    db = sqlite3.connect(str(tmp_path / "leases.db"))
    try:
        assert {mac for (mac,) in db.execute("SELECT mac FROM leases")} == set(MACS[:2])
    finally:
        db.close()
