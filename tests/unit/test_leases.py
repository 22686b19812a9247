"""Lease stores: stickiness, static leases, exhaustion, decline, persistence.

README, "DHCP and PXE behaviour".
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import pytest

from massboot.dhcp.leases import (
    BOUND,
    EXPIRED,
    OFFERED,
    PROBE_IN_USE_HOLD,
    RELEASED,
    RESERVED,
    STATIC,
    Decline,
    LeaseConflict,
    LeaseStore,
    LeaseStoreError,
    MemoryLeaseStore,
    SqliteLeaseStore,
)
from massboot.dhcp.leases.postgresql import PostgresLeaseStore

ROOT = Path(__file__).resolve().parents[2]
POOL = [f"10.0.0.{i}" for i in range(10, 20)]
MAC_A = "00:11:22:33:44:0A"
MAC_B = "00:11:22:33:44:0B"
MAC_C = "00:11:22:33:44:0C"
STATIC_MAC = "AA:BB:CC:DD:EE:01"


def mac(n: int) -> str:
    return "02:00:" + ":".join(f"{b:02X}" for b in n.to_bytes(4, "big"))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def make_store(request, tmp_path):
    """The store contract runs on every store; PostgreSQL on a real server (tests/pgserver.py)."""
    stores: list[LeaseStore] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else None

    def factory(pool=POOL, static={}, exclude=(), name="leases.db", **options) -> LeaseStore:  # noqa: B006
        if request.param == "memory":
            store: LeaseStore = MemoryLeaseStore(pool, static, exclude, **options)
        elif request.param == "postgresql":
            store = PostgresLeaseStore(dsn, pool, static, exclude, scope=name, **options)
        else:
            store = SqliteLeaseStore(str(tmp_path / name), pool, static, exclude, **options)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


def test_allocate_is_sticky(make_store) -> None:
    store = make_store()
    a = store.allocate(MAC_A)
    b = store.allocate(MAC_B)
    assert a is not None and b is not None
    assert (a.ip, b.ip) == ("10.0.0.10", "10.0.0.11")
    assert a.state == OFFERED and a.mac == MAC_A
    assert store.allocate(MAC_A) == a
    assert store.allocate(MAC_A.lower().replace(":", "-")).ip == a.ip  # any MAC spelling
    assert store.get(MAC_A) == a
    assert store.by_ip("10.0.0.11") == b
    assert store.by_ip("10.0.0.12") is None


def test_commit_binds_and_keeps_address(make_store) -> None:
    store = make_store()
    offered = store.allocate(MAC_A)
    lease = store.commit(MAC_A, offered.ip, lease_time=3600, uuid="12345678-abcd-ef00-1111-abcdefabcdef")
    assert lease.state == BOUND and lease.ip == offered.ip
    assert lease.expires >= lease.updated + 3600 - 1
    assert lease.uuid == "12345678-abcd-ef00-1111-abcdefabcdef"
    assert store.allocate(MAC_A) == lease  # a bound lease is returned unchanged
    again = store.commit(MAC_A, offered.ip, lease_time=60)
    assert again.uuid == lease.uuid  # a commit without UUID keeps the known one


def test_commit_refuses_another_macs_address(make_store) -> None:
    store = make_store(static={STATIC_MAC: "10.0.0.50"})
    a = store.allocate(MAC_A)
    with pytest.raises(LeaseConflict):
        store.commit(MAC_B, a.ip, lease_time=60)
    with pytest.raises(LeaseConflict):
        store.commit(MAC_B, "10.0.0.50", lease_time=60)  # another MAC's static address
    with pytest.raises(LeaseConflict):
        store.commit(MAC_A, "10.0.0.15", lease_time=60)  # MAC_A is bound to a.ip
    # a MAC with no binding may claim a free address (INIT-REBOOT after a lost store)
    lease = store.commit(MAC_C, "10.0.0.15", lease_time=60)
    assert lease.state == BOUND
    assert store.allocate(MAC_B).ip == "10.0.0.11"
    assert store.allocate(mac(1)).ip == "10.0.0.12"


def test_static_lease(make_store) -> None:
    store = make_store(static={"aa-bb-cc-dd-ee-01": "10.0.0.10", "AA-BB-CC-DD-EE-02": "192.168.9.9"})
    # the static address inside the pool is never given to another MAC
    assert store.allocate(MAC_A).ip == "10.0.0.11"
    s1 = store.allocate(STATIC_MAC)
    assert s1.ip == "10.0.0.10" and s1.static
    s2 = store.allocate("AA:BB:CC:DD:EE:02")
    assert s2.ip == "192.168.9.9" and s2.static
    assert store.commit(STATIC_MAC, "10.0.0.10", lease_time=60).static
    # the in-pool static reservation counts as in use, the one outside the pool does not
    assert store.counts() == (2, 10)


def test_duplicate_static_address_is_rejected() -> None:
    with pytest.raises(ValueError, match="10.0.0.1"):
        MemoryLeaseStore(POOL, {MAC_A: "10.0.0.1", MAC_B: "10.0.0.1"})


def test_exhaustion_returns_none(make_store) -> None:
    store = make_store(pool=POOL[:3], exclude=["10.0.0.11"])
    assert store.counts() == (0, 2)
    assert store.allocate(MAC_A).ip == "10.0.0.10"
    assert store.allocate(MAC_B).ip == "10.0.0.12"
    assert store.allocate(MAC_C) is None
    assert store.allocate(MAC_C) is None
    assert store.counts() == (2, 2)
    # existing bindings still work when the pool is exhausted
    assert store.allocate(MAC_A).ip == "10.0.0.10"


def test_release_keeps_binding(make_store) -> None:
    store = make_store()
    ip = store.allocate(MAC_A).ip
    store.commit(MAC_A, ip, lease_time=3600)
    released = store.release(MAC_A)
    assert released.state == RELEASED and released.ip == ip
    assert store.release(MAC_B) is None
    assert store.allocate(MAC_B).ip != ip
    assert store.allocate(MAC_A).ip == ip
    assert store.commit(MAC_A, ip, lease_time=60).state == BOUND


def test_decline_sets_address_aside(make_store) -> None:
    store = make_store()
    ip = store.allocate(MAC_A).ip
    store.decline(MAC_A, ip)
    assert store.get(MAC_A) is None
    assert store.by_ip(ip) is None
    new = store.allocate(MAC_A)
    assert new.ip != ip
    assert all(store.allocate(mac(i)).ip != ip for i in range(8))
    assert store.allocate(mac(99)) is None
    assert store.counts() == (9, 9)
    with pytest.raises(LeaseConflict):
        store.commit(MAC_B, ip, lease_time=60)


def test_decline_of_another_macs_address_is_ignored(make_store) -> None:
    store = make_store()
    a = store.allocate(MAC_A)
    store.decline(MAC_B, a.ip)
    assert store.get(MAC_A) == a
    assert store.counts() == (1, 10)


def test_declined_static_address_falls_back_to_pool(make_store) -> None:
    store = make_store(static={STATIC_MAC: "10.0.0.10"})
    assert store.allocate(STATIC_MAC).ip == "10.0.0.10"
    store.decline(STATIC_MAC, "10.0.0.10")
    lease = store.allocate(STATIC_MAC)
    assert lease.ip == "10.0.0.11" and not lease.static


def test_leases_snapshot(make_store) -> None:
    store = make_store()
    store.allocate(MAC_A)
    store.allocate(MAC_B)
    assert sorted(lease.mac for lease in store.leases()) == [MAC_A, MAC_B]


def test_thousand_allocations(make_store) -> None:
    pool = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    store = make_store(pool=pool)
    ips = [store.allocate(mac(i)).ip for i in range(1000)]
    assert ips == pool
    assert store.allocate(mac(1000)) is None
    assert store.counts() == (1000, 1000)
    assert [store.allocate(mac(i)).ip for i in range(0, 1000, 97)] == pool[::97]


def test_concurrent_greenlets_never_share_an_address(make_store) -> None:
    pool = [f"10.2.0.{i}" for i in range(1, 201)]
    store = make_store(pool=pool)

    def client(n: int) -> str | None:
        gevent.sleep(0)
        lease = store.allocate(mac(n))
        if lease is None:
            return None
        gevent.sleep(0)
        return store.commit(mac(n), lease.ip, lease_time=60).ip

    jobs = [gevent.spawn(client, n) for n in range(250)]
    gevent.joinall(jobs, raise_error=True)
    ips = [job.value for job in jobs if job.value is not None]
    assert len(ips) == 200
    assert len(set(ips)) == 200
    assert sum(job.value is None for job in jobs) == 50
    owners = {lease.ip: lease.mac for lease in store.leases()}
    assert len(owners) == 200


def test_bind_allocates_and_binds_atomically(make_store) -> None:
    store = make_store(pool=POOL[:2])
    first = store.bind(MAC_A, None, lease_time=60, uuid="11111111-2222-3333-4444-555555555555")
    assert first.bound and first.lease.ip == "10.0.0.10" and first.lease.state == BOUND
    assert first.lease.uuid == "11111111-2222-3333-4444-555555555555"
    again = store.bind(MAC_A, "10.0.0.10", lease_time=60)
    assert again.bound and again.lease.uuid == first.lease.uuid        # kept when not given
    # the MAC holds another address than the one asked for: nothing changes
    wrong = store.bind(MAC_A, "10.0.0.11", lease_time=60)
    assert not wrong.bound and wrong.lease == again.lease
    assert store.by_ip("10.0.0.11") is None
    # no binding yet and the wrong address asked for: the new offer is kept, nothing bound
    other = store.bind(MAC_B, "10.0.0.99", lease_time=60)
    assert not other.bound and other.lease.ip == "10.0.0.11" and other.lease.state == OFFERED
    assert store.get(MAC_B) == other.lease
    exhausted = store.bind(MAC_C, None, lease_time=60)
    assert exhausted.lease is None and not exhausted.bound


def test_concurrent_binds_never_share_an_address(make_store) -> None:
    pool = [f"10.3.0.{i}" for i in range(1, 51)]
    store = make_store(pool=pool)

    def client(n: int) -> str | None:
        gevent.sleep(0)
        result = store.bind(mac(n), None, lease_time=60)
        return result.lease.ip if result.bound else None

    jobs = [gevent.spawn(client, n) for n in range(60)]
    gevent.joinall(jobs, raise_error=True)
    ips = [job.value for job in jobs if job.value is not None]
    assert len(ips) == len(set(ips)) == 50


def test_release_only_the_address_named(make_store) -> None:
    store = make_store()
    ip = store.bind(MAC_A, None, lease_time=60).lease.ip
    assert store.release(MAC_A, "10.0.0.19") is None
    assert store.get(MAC_A).state == BOUND
    released = store.release(MAC_A, ip)
    assert released.state == RELEASED and store.get(MAC_A) == released


def test_decline_without_address_names_the_macs_own(make_store) -> None:
    store = make_store()
    assert store.decline(MAC_A) == Decline(None, "not_held")
    ip = store.allocate(MAC_A).ip
    declined = store.decline(MAC_A)
    assert declined.accepted and declined.ip == ip
    assert store.get(MAC_A) is None and store.allocate(MAC_A).ip != ip
    b = store.allocate(MAC_B)
    assert store.decline(MAC_C, b.ip) == Decline(b.ip, "other_mac")     # another MAC's: left alone
    assert store.get(MAC_B) == b


# -- persistence -------------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL, {STATIC_MAC: "10.0.0.19"})
    a = store.allocate(MAC_A)
    bound = store.commit(MAC_A, a.ip, lease_time=600, uuid="11111111-2222-3333-4444-555555555555")
    b = store.allocate(MAC_B)  # offered only
    store.allocate(MAC_C)
    store.release(MAC_C)
    store.decline(MAC_C, "10.0.0.12")
    store.close()
    store.close()  # idempotent

    again = SqliteLeaseStore(path, POOL, {STATIC_MAC: "10.0.0.19"})
    try:
        assert again.get(MAC_A) == bound
        assert again.get(MAC_B) == b
        assert again.get(MAC_C) is None
        assert again.allocate(MAC_C).ip == "10.0.0.13"  # .12 stays declined
        assert again.allocate(STATIC_MAC).ip == "10.0.0.19"
        assert again.counts() == (4, 9)
    finally:
        again.close()


def test_sqlite_bind_and_its_kept_offer_are_durable(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL)
    bound = store.bind(MAC_A, None, lease_time=600, uuid="11111111-2222-3333-4444-555555555555").lease
    offered = store.bind(MAC_B, "10.0.0.99", lease_time=600).lease       # wrong address: offer kept
    store.close()
    again = SqliteLeaseStore(path, POOL)
    try:
        assert again.get(MAC_A) == bound and again.get(MAC_A).state == BOUND
        assert again.get(MAC_B) == offered and offered.state == OFFERED
    finally:
        again.close()


def test_sqlite_pool_change_keeps_outside_bindings(tmp_path, caplog) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL)
    old = store.allocate(MAC_A)
    store.commit(MAC_A, old.ip, lease_time=60)
    store.close()

    new_pool = [f"10.0.1.{i}" for i in range(1, 5)]
    caplog.set_level("INFO", logger="massboot.dhcp.leases")
    again = SqliteLeaseStore(path, new_pool)
    try:
        assert again.allocate(MAC_A).ip == old.ip
        assert "outside the pool" in caplog.text
        assert again.counts() == (0, 4)
        assert again.allocate(MAC_B).ip == "10.0.1.1"
    finally:
        again.close()


def test_sqlite_static_config_wins_over_stored_binding(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL)
    assert store.allocate(MAC_A).ip == "10.0.0.10"
    assert store.allocate(MAC_B).ip == "10.0.0.11"
    store.close()
    # MAC_B's address is now static for MAC_C; MAC_A now has a static address
    again = SqliteLeaseStore(path, POOL, {MAC_C: "10.0.0.11", MAC_A: "10.0.0.30"})
    try:
        assert again.get(MAC_B) is None
        assert again.allocate(MAC_A).ip == "10.0.0.30"
        assert again.allocate(MAC_C).ip == "10.0.0.11"
    finally:
        again.close()
    third = SqliteLeaseStore(path, POOL, {MAC_C: "10.0.0.11", MAC_A: "10.0.0.30"})
    try:
        assert third.get(MAC_A).ip == "10.0.0.30"
    finally:
        third.close()


def test_sqlite_commit_survives_sigkill(tmp_path) -> None:
    path = str(tmp_path / "killed.db")
    script = textwrap.dedent(
        f"""
        import sys, time
        from massboot.dhcp.leases import SqliteLeaseStore
        store = SqliteLeaseStore({path!r}, {POOL!r})
        lease = store.allocate({MAC_A!r})
        store.commit({MAC_A!r}, lease.ip, lease_time=3600, uuid="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        store.allocate({MAC_B!r})
        print("committed", lease.ip, flush=True)
        time.sleep(120)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=str(ROOT), env=env, text=True
    )
    try:
        line = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert line[0] == "committed"
    assert proc.returncode == -signal.SIGKILL

    store = SqliteLeaseStore(path, POOL)
    try:
        lease = store.get(MAC_A)
        assert lease is not None and lease.state == BOUND and lease.ip == line[1]
        assert lease.uuid == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        assert store.get(MAC_B).ip == "10.0.0.11"
        assert store.allocate(MAC_C).ip == "10.0.0.12"
    finally:
        store.close()


def test_sqlite_writes_do_not_block_the_hub(tmp_path) -> None:
    store = SqliteLeaseStore(str(tmp_path / "l.db"), POOL)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0)) for _ in range(1000)])
    try:
        for i in range(10):
            lease = store.allocate(mac(i))
            store.commit(mac(i), lease.ip, lease_time=60)
        # while the worker thread wrote, the other greenlet ran
        assert ticks
    finally:
        ticker.kill()
        store.close()


def test_concurrent_commits_share_transactions_and_all_are_durable(tmp_path, monkeypatch) -> None:
    """Group commit: 300 greenlets binding at once are written in a few transactions, each
    caller returns only once its row is committed, and every lease is there after a reopen."""
    from massboot.dhcp.leases import sqlite

    merged = []
    real_merge = sqlite._merge

    def counting_merge(changes):
        merged.append(len(changes))
        return real_merge(changes)

    monkeypatch.setattr(sqlite, "_merge", counting_merge)
    pool = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(300)]
    path = str(tmp_path / "leases.sqlite3")
    store = SqliteLeaseStore(path, pool)
    batches = []
    real_batch = store._db_batch

    def counting_batch(items):
        batches.append(len(items))
        return real_batch(items)

    store._db_batch = counting_batch

    def bind(n: int) -> str:
        lease = store.allocate(mac(n))
        return store.commit(mac(n), lease.ip, lease_time=60).ip

    ips = [g.get() for g in [gevent.spawn(bind, n) for n in range(300)]]
    store.close()
    assert len(set(ips)) == 300
    assert sum(merged) == 600 and len(batches) == len(merged) < 600   # offers and binds, batched
    again = SqliteLeaseStore(path, pool)
    try:
        assert {again.get(mac(n)).ip for n in range(300)} == set(ips)
        assert all(again.get(mac(n)).state == "bound" for n in range(300))
    finally:
        again.close()


# -- the lease lifecycle (README, "Lease lifecycle"), on an injected clock -----------------

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_an_offer_not_requested_within_the_hold_is_forgotten(make_store) -> None:
    """The attack: ten DISCOVERs from random MACs take a ten-address pool, for the hold only."""
    clock = Clock()
    store = make_store(offer_hold=60, clock=clock)
    assert [store.allocate(mac(i)).ip for i in range(10)] == POOL
    assert store.allocate(MAC_A) is None and store.counts() == (10, 10)
    first = store.get(mac(0))
    assert first.state == OFFERED and first.expires == T0 + 60
    clock.advance(59)
    assert store.allocate(MAC_A) is None
    clock.advance(2)
    assert store.counts() == (0, 10)                   # expired offers count as free at once
    assert store.get(mac(0)) is None and store.leases() == []
    assert store.allocate(MAC_A).ip == "10.0.0.10"     # the first free address again
    assert store.stats().offers_expired == 10
    assert store.by_ip("10.0.0.11") is None
    assert not store.needs_probe("10.0.0.10")          # an offer never bound: no probe needed


def test_an_offer_survives_a_restart_within_its_hold_only(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL, offer_hold=60, clock=clock)
    store.allocate(MAC_A)
    bound = store.bind(MAC_B, None, lease_time=30).lease
    store.close()
    clock.advance(30)
    again = SqliteLeaseStore(path, POOL, offer_hold=60, clock=clock)
    assert again.get(MAC_A).ip == "10.0.0.10"
    again.close()
    clock.advance(31)
    third = SqliteLeaseStore(path, POOL, offer_hold=60, clock=clock)
    try:
        assert third.get(MAC_A) is None                 # not persisted as a binding for ever
        assert third.get(MAC_B).state == EXPIRED and third.get(MAC_B).ip == bound.ip   # sticky
        assert third.allocate(MAC_C).ip == "10.0.0.10"
    finally:
        third.close()
    db = sqlite3.connect(path)
    assert [m for (m,) in db.execute("SELECT mac FROM leases ORDER BY mac")] == [MAC_B, MAC_C]
    db.close()


def _fill(store, clock, lease_times) -> list[str]:
    ips = []
    for n, lease_time in enumerate(lease_times):
        ips.append(store.bind(mac(n), None, lease_time=lease_time).lease.ip)
    return ips


def test_expired_bindings_stay_sticky_while_the_pool_has_room(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:3], clock=clock)
    a, b = _fill(store, clock, [100, 100])
    clock.advance(1000)
    assert store.get(mac(0)).state == EXPIRED and store.counts() == (0, 3)
    assert store.allocate(MAC_C).ip == "10.0.0.12"     # the free address, nobody reclaimed
    assert store.allocate(mac(0)).ip == a              # the expired binding is still its own
    assert store.bind(mac(1), b, lease_time=100).bound  # and renews
    assert store.stats().reclaimed == 0


def test_reclaim_takes_the_longest_expired_binding_only_when_the_pool_is_full(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:3], clock=clock)
    a, b, c = _fill(store, clock, [100, 50, 1000])
    clock.advance(10)
    assert store.allocate(MAC_A) is None               # full, nothing expired
    clock.advance(100)                                 # a expired 10 s ago, b 60 s ago
    assert store.counts() == (1, 3)
    got = store.allocate(MAC_A)
    assert got.ip == b and got.state == OFFERED and store.get(mac(1)) is None
    assert store.needs_probe(b)                        # it was another MAC's: probe first
    assert store.allocate(MAC_B).ip == a
    assert store.allocate(MAC_C) is None               # c's lease runs: never taken
    assert store.get(mac(2)).state == BOUND and store.stats().reclaimed == 2
    assert store.allocate(mac(0)) is None              # a's old MAC lost its address, the pool is full
    clock.advance(61)                                  # A's and B's offers were never requested
    assert store.allocate(mac(0)).ip == a              # whose address is free again: no reclaim
    assert not store.needs_probe(POOL[2])


def test_reclaim_never_keeps_pybootds_strict_pool(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:2], reclaim="never", clock=clock)
    _fill(store, clock, [10, 10])
    clock.advance(1000)
    assert store.allocate(MAC_A) is None
    assert store.counts() == (2, 2)
    assert store.stats().reclaimed == 0


def test_an_expired_lease_offered_to_its_own_mac_is_not_reclaimed_meanwhile(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:1], offer_hold=60, clock=clock)
    (a,) = _fill(store, clock, [10])
    clock.advance(100)
    assert store.allocate(mac(0)).ip == a              # its MAC is back (DISCOVER)
    assert store.allocate(MAC_A) is None               # not taken while it may REQUEST
    clock.advance(61)
    assert store.allocate(MAC_A).ip == a


def test_static_and_reserved_bindings_are_never_reclaimed(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:3], static={STATIC_MAC: "10.0.0.10"}, clock=clock)
    assert store.bind(STATIC_MAC, None, lease_time=10).lease.state == STATIC
    store.reserve(MAC_A, "10.0.0.11")
    store.bind(MAC_A, "10.0.0.11", lease_time=10)
    assert store.bind(MAC_B, None, lease_time=10).lease.ip == "10.0.0.12"
    clock.advance(100)
    assert store.allocate(MAC_C).ip == "10.0.0.12"     # only the ordinary binding is reclaimed
    assert store.allocate(mac(9)) is None
    assert store.get(STATIC_MAC).state == STATIC and store.get(MAC_A).state == RESERVED


def test_decline_from_the_holder_sets_the_address_aside_for_the_probation(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:3], decline_probation=100, clock=clock)
    ip = store.bind(MAC_A, None, lease_time=1000).lease.ip
    declined = store.decline(MAC_A, ip)
    assert declined == Decline(ip, None, T0 + 100)
    assert store.get(MAC_A) is None and store.counts() == (0, 2)
    assert [store.bind(m, None, lease_time=1000).lease.ip for m in (MAC_A, MAC_B)] == \
        ["10.0.0.11", "10.0.0.12"]
    assert store.allocate(MAC_C) is None
    clock.advance(101)                                 # the probation is over
    assert store.counts() == (2, 3)
    assert store.allocate(MAC_C).ip == ip and store.needs_probe(ip)
    store.probed(MAC_C, ip, False)
    assert not store.needs_probe(ip) and store.stats().probation_ended == 1


@pytest.mark.parametrize("case, refused", [
    ("other_mac", "other_mac"),
    ("outside_pool", "outside_pool"),
    ("free_address", "not_held"),
    ("never_offered", "not_held"),
    ("expired", "not_held"),
    ("released", "not_held"),
])
def test_decline_refused_changes_nothing(make_store, case, refused) -> None:
    """RFC 2131 §4.3.3: only the client that holds the address may decline it."""
    clock = Clock()
    store = make_store(pool=POOL[:3], clock=clock)
    held = store.bind(MAC_A, None, lease_time=100).lease.ip
    sender, ip = {
        "other_mac": (MAC_B, held),                    # a spoofed DECLINE for another's address
        "outside_pool": (MAC_A, "192.168.7.7"),
        "free_address": (MAC_A, "10.0.0.12"),
        "never_offered": (MAC_B, None),
        "expired": (MAC_A, held),
        "released": (MAC_A, held),
    }[case]
    if case == "expired":
        clock.advance(200)
    if case == "released":
        store.release(MAC_A)
    before = (store.counts(), store.leases())
    result = store.decline(sender, ip)
    assert result.refused == refused and not result.accepted
    assert (store.counts(), store.leases()) == before
    assert store.allocate(MAC_C).ip == "10.0.0.11"     # every other address still free
    assert store.allocate(mac(7)).ip == "10.0.0.12"


def test_a_probe_that_is_answered_sets_the_address_aside(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:2], clock=clock)
    a, _ = _fill(store, clock, [10, 1000])
    clock.advance(100)
    offer = store.allocate(MAC_A)
    assert offer.ip == a and store.needs_probe(a)
    store.probed(MAC_A, a, True)                       # the old host still answers
    assert store.get(MAC_A) is None and store.counts() == (1, 1)
    assert store.allocate(MAC_A) is None
    clock.advance(PROBE_IN_USE_HOLD + 1)
    assert store.allocate(MAC_A).ip == a and store.needs_probe(a)


def test_operator_reserve_free_unreserve(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:4], static={STATIC_MAC: "10.0.0.50"}, clock=clock)
    a = store.bind(MAC_A, None, lease_time=100).lease.ip
    store.allocate(MAC_B)
    with pytest.raises(LeaseConflict):
        store.reserve(MAC_C, a)                        # MAC_A's active binding
    with pytest.raises(LeaseConflict):
        store.reserve(MAC_C, "10.0.0.11")              # MAC_B's offer
    with pytest.raises(LeaseConflict):
        store.reserve(MAC_C, "10.0.0.50")              # a static address
    with pytest.raises(LeaseConflict):
        store.reserve(STATIC_MAC, "10.0.0.12")         # a static MAC
    with pytest.raises(LeaseConflict):
        store.reserve(MAC_C, "10.0.0")
    reserved = store.reserve(MAC_C, "10.0.0.13")
    assert reserved.state == RESERVED and reserved.expires is None and reserved.reserved
    assert store.allocate(MAC_C) == reserved
    clock.advance(200)                                 # MAC_A's lease expired: reservable
    taken = store.reserve(mac(5), a)
    assert taken.ip == a and store.get(MAC_A) is None
    states = {lease.mac: lease.state for lease in store.leases()}
    assert states == {MAC_B: OFFERED, MAC_C: RESERVED, mac(5): RESERVED} or \
        states == {MAC_C: RESERVED, mac(5): RESERVED}     # MAC_B's offer may be past its hold
    assert store.unreserve(MAC_C) and not store.unreserve(MAC_C)
    assert store.get(MAC_C) is None                     # never bound: the address is free again
    store.bind(mac(5), a, lease_time=100)
    assert store.unreserve(mac(5)) and store.get(mac(5)).state == BOUND
    freed = store.free(mac(5))
    assert freed.ip == a and store.get(mac(5)) is None and store.free(mac(5)) is None
    assert store.needs_probe(a)                         # it was bound: probe before reuse
    store.bind(STATIC_MAC, None, lease_time=100)
    assert store.free(STATIC_MAC).state == STATIC
    assert store.allocate(STATIC_MAC).ip == "10.0.0.50"


def test_a_static_mac_removed_from_the_config_keeps_no_offer(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL, {STATIC_MAC: "10.0.0.50", MAC_A: "10.0.0.51"})
    store.allocate(STATIC_MAC)                         # never bound: an offer without expiry
    store.bind(MAC_A, None, lease_time=60)
    store.close()
    again = SqliteLeaseStore(path, POOL)
    try:
        assert again.get(STATIC_MAC) is None
        assert again.get(MAC_A).state == BOUND and not again.get(MAC_A).static
    finally:
        again.close()


def test_operator_changes_are_durable(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL, clock=clock)
    store.reserve(MAC_A, "10.0.0.15")
    store.bind(MAC_B, None, lease_time=100)
    store.free(MAC_B)
    store.close()
    clock.advance(3600)
    again = SqliteLeaseStore(path, POOL, clock=clock)
    try:
        assert again.get(MAC_A).state == RESERVED and again.get(MAC_B) is None
        assert again.allocate(MAC_C).ip == "10.0.0.10"
    finally:
        again.close()


#: made by massboot's lease store before the lease lifecycle (schema version 0, commit 81ddacd),
#: run from that checkout at T0 (``clock=``): a week-old offer of a flood, an address its
#: holder declined 25 hours before, a spoofed DECLINE of a free address 1000 s before and one of
#: an address outside every pool, MAC_A bound for an hour, MAC_C's offer of 10 s, the static MAC
V0_DATABASE = ROOT / "tests" / "data" / "leases-v0.sqlite3"


def test_schema_migration_from_version_0(tmp_path) -> None:
    path = str(tmp_path / "v0.sqlite3")
    shutil.copyfile(V0_DATABASE, path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    assert len(db.execute("SELECT * FROM declined").fetchall()) == 3
    db.close()
    clock = Clock()
    store = SqliteLeaseStore(path, POOL, {STATIC_MAC: "10.0.0.50"}, clock=clock)
    try:
        bound = store.get(MAC_A)
        assert (bound.ip, bound.state, bound.expires) == ("10.0.0.13", BOUND, T0 + 3600)
        assert bound.uuid == "11111111-2222-3333-4444-555555555555" and not bound.reserved
        assert store.get("02:00:00:00:00:01") is None             # the flood's offer: forgotten
        assert store.get(MAC_C).state == OFFERED and store.get(MAC_C).expires == T0 + 50
        assert store.get(STATIC_MAC).state == STATIC and store.get(STATIC_MAC).expires is None
        assert store.counts() == (2, 9)                            # .12 still on probation
        assert [store.allocate(mac(n)).ip for n in range(3)] == ["10.0.0.10", "10.0.0.11", "10.0.0.15"]
        assert store.needs_probe("10.0.0.11") and not store.needs_probe("10.0.0.10")
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (1,)
    assert db.execute("SELECT ip, until FROM declined").fetchall() == [("10.0.0.12", T0 - 1000 + 86400)]
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with pytest.raises(LeaseStoreError, match="schema version 2 is newer"):
        SqliteLeaseStore(path, POOL, clock=clock)


def test_a_reclaim_and_a_decline_are_durable(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL[:2], clock=clock, decline_probation=100)
    a, b = _fill(store, clock, [10, 1000])
    clock.advance(20)
    assert store.bind(MAC_A, None, lease_time=1000).lease.ip == a   # mac(0)'s expired binding reclaimed
    assert store.decline(mac(1), b).accepted
    store.close()
    again = SqliteLeaseStore(path, POOL[:2], clock=clock, decline_probation=100)
    try:
        assert again.get(mac(0)) is None and again.get(MAC_A).ip == a
        assert again.get(mac(1)) is None and again.counts() == (1, 1)      # b on probation
        clock.advance(101)
        assert again.allocate(MAC_B).ip == b and again.needs_probe(b)
    finally:
        again.close()


# -- [static_dhcp] on reload (LeaseStore.set_static) ---------------------------------------------

def test_set_static_moves_a_dynamic_lease_at_its_next_request(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:5], clock=clock)
    dynamic = store.bind(MAC_A, None, lease_time=600).lease
    assert dynamic.ip == POOL[0] and store.set_static({MAC_A: POOL[3]}) == []
    assert store.get(MAC_A).ip == POOL[0]                  # nothing moves before the next request
    clock.advance(10)
    # a RENEW of the old address is refused; the MAC's address is its static one now
    binding = store.bind(MAC_A, POOL[0], lease_time=600)
    assert not binding.bound and binding.lease.ip == POOL[3] and binding.lease.state == STATIC
    assert store.bind(MAC_A, POOL[3], lease_time=600).bound
    assert store.by_ip(POOL[3]).mac == MAC_A
    assert store.bind(MAC_B, None, lease_time=600).lease.ip == POOL[0]   # its old address is free
    assert store.bind(MAC_C, None, lease_time=600).lease.ip == POOL[1]   # the static one is not offered
    assert store.bind(mac(1), None, lease_time=600).lease.ip == POOL[2]
    assert store.bind(mac(2), None, lease_time=600).lease.ip == POOL[4]
    assert store.allocate(mac(3)) is None


def test_set_static_on_another_macs_active_lease_warns_and_that_mac_moves(make_store, caplog) -> None:
    clock = Clock()
    store = make_store(static={STATIC_MAC: "10.0.0.50"}, clock=clock)
    other = store.bind(MAC_B, None, lease_time=600).lease
    caplog.set_level("WARNING", logger="massboot.dhcp.leases")
    # the static address moves onto MAC_B's active lease
    assert store.set_static({STATIC_MAC: other.ip}) == [(other.ip, STATIC_MAC, MAC_B)]
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and other.ip in warning[0] and STATIC_MAC in warning[0] and MAC_B in warning[0]
    clock.advance(300)
    renew = store.bind(MAC_B, other.ip, lease_time=600)    # RENEWING: not ACKed
    assert not renew.bound and renew.lease.ip != other.ip
    assert store.bind(MAC_B, renew.lease.ip, lease_time=600).bound
    assert store.bind(STATIC_MAC, None, lease_time=600).lease.ip == other.ip
    with pytest.raises(LeaseConflict):
        store.commit(MAC_B, other.ip, lease_time=600)


def test_set_static_takes_an_expired_binding_silently(make_store, caplog) -> None:
    clock = Clock()
    store = make_store(clock=clock)
    old = store.bind(MAC_B, None, lease_time=60).lease
    clock.advance(120)
    caplog.set_level("WARNING", logger="massboot.dhcp.leases")
    assert store.set_static({STATIC_MAC: old.ip}) == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert store.get(MAC_B) is None and store.allocate(MAC_B).ip != old.ip


def test_set_static_a_reservation_of_the_same_mac_yields(make_store) -> None:
    store = make_store()
    store.reserve(MAC_A, POOL[5])
    store.set_static({MAC_A: POOL[7]})
    lease = store.allocate(MAC_A)
    assert lease.ip == POOL[7] and lease.state == STATIC and not lease.reserved
    assert store.by_ip(POOL[5]) is None


def test_set_static_on_the_macs_own_address_pins_it(make_store) -> None:
    clock = Clock()
    store = make_store(clock=clock)
    lease = store.bind(MAC_A, None, lease_time=60).lease
    store.set_static({MAC_A: lease.ip})
    assert store.get(MAC_A).state == STATIC
    clock.advance(10_000)                                  # pinned: never expires, never reclaimed
    assert store.get(MAC_A).state == STATIC and store.bind(MAC_A, lease.ip, lease_time=60).bound


def test_set_static_removed_entry_outside_the_pool_is_released_at_the_next_request(make_store) -> None:
    clock = Clock()
    store = make_store(static={STATIC_MAC: "10.0.0.50"}, clock=clock)
    assert store.bind(STATIC_MAC, None, lease_time=600).lease.ip == "10.0.0.50"
    store.set_static({})
    lease = store.get(STATIC_MAC)
    assert lease.ip == "10.0.0.50" and lease.state == BOUND and not lease.static
    clock.advance(10)
    renew = store.bind(STATIC_MAC, "10.0.0.50", lease_time=600)
    assert not renew.bound and renew.lease.ip == POOL[0]
    assert store.by_ip("10.0.0.50") is None


def test_a_reservation_after_set_static_removed_the_entry_stays(make_store) -> None:
    store = make_store(static={STATIC_MAC: "10.0.0.50"})
    store.bind(STATIC_MAC, None, lease_time=600)
    store.set_static({})
    store.reserve(STATIC_MAC, "10.0.0.50")                 # the operator keeps it for that MAC
    assert store.bind(STATIC_MAC, "10.0.0.50", lease_time=600).bound
    assert store.get(STATIC_MAC).state == RESERVED


def test_a_removed_static_entry_outside_the_pool_is_released_after_a_restart_too(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL, {STATIC_MAC: "10.0.0.50", MAC_A: "10.0.0.51"})
    store.bind(STATIC_MAC, None, lease_time=600)
    store.bind(MAC_A, None, lease_time=600)
    store.set_static({MAC_A: "10.0.0.51"})
    store.close()
    # STATIC_MAC's entry went by a reload, MAC_A's while massboot was stopped
    again = SqliteLeaseStore(path, POOL)
    try:
        for mac, ip in ((STATIC_MAC, "10.0.0.50"), (MAC_A, "10.0.0.51")):
            assert again.get(mac).ip == ip and again.get(mac).state == BOUND
            renew = again.bind(mac, ip, lease_time=600)
            assert not renew.bound and renew.lease.ip in POOL
    finally:
        again.close()


def test_set_static_removed_entry_in_the_pool_becomes_an_ordinary_binding(make_store) -> None:
    clock = Clock()
    store = make_store(pool=POOL[:2], clock=clock)
    store.set_static({STATIC_MAC: POOL[1]})
    assert store.bind(STATIC_MAC, None, lease_time=60).lease.ip == POOL[1]
    assert store.allocate(MAC_B).ip == POOL[0]
    store.set_static({STATIC_MAC: POOL[1], MAC_B: POOL[0]})
    assert store.get(MAC_B).state == STATIC            # its offer, pinned, never bound
    clock.advance(120)
    store.set_static({})
    assert store.get(MAC_B) is None                    # a never-bound static offer is dropped
    assert store.get(STATIC_MAC).state == EXPIRED and store.bind(STATIC_MAC, POOL[1], lease_time=60).bound
    assert store.get(STATIC_MAC).state == BOUND
    clock.advance(120)                                    # expired: sticky while the pool has room...
    assert store.get(STATIC_MAC).state == EXPIRED
    assert store.bind(MAC_A, None, lease_time=60).lease.ip == POOL[0]
    assert store.bind(MAC_C, None, lease_time=60).lease.ip == POOL[1]   # ...then reclaimed
    assert store.get(STATIC_MAC) is None


def test_set_static_refuses_a_duplicate_address_and_changes_nothing(make_store) -> None:
    store = make_store(static={STATIC_MAC: "10.0.0.50"})
    with pytest.raises(ValueError):
        store.set_static({MAC_A: "10.0.0.60", MAC_B: "10.0.0.60"})
    assert store.allocate(STATIC_MAC).ip == "10.0.0.50" and store.allocate(MAC_A).ip == POOL[0]


def test_set_static_is_durable(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    store = SqliteLeaseStore(path, POOL)
    lease = store.bind(MAC_A, None, lease_time=600).lease
    store.set_static({MAC_A: lease.ip})
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT static FROM leases WHERE mac = ?", (MAC_A,)).fetchone() == (1,)
    again = SqliteLeaseStore(path, POOL, {MAC_A: lease.ip})
    try:
        assert again.get(MAC_A).state == STATIC
    finally:
        again.close()


def test_merged_batch_writes_what_the_changes_in_order_write(tmp_path) -> None:
    """A group commit writes the net effect of its changes (multi-row statements): the same
    rows as writing each change in turn, whatever a later change undoes of an earlier one."""
    from massboot.dhcp.leases.base import Lease
    from massboot.dhcp.leases.index import _Change
    from massboot.dhcp.leases.sqlite import ROWS_PER_STATEMENT, _merge, _statements

    def lease(n: int, state: str, ip: str | None = None) -> Lease:
        return Lease(mac(n), ip or f"10.0.{n // 250}.{n % 250 + 1}", False, state, None, 100.0 + n, 50.0,
                     False)

    def change(upserts=(), deletes=(), aside=(), returned=()) -> _Change:
        c = _Change()
        for item in upserts:
            c.upsert(item)
        for m in deletes:
            c.delete(m)
        c.set_aside.update({ip: (mac(1), 1.0, 2.0) for ip in aside})
        c.returned.update(returned)
        return c

    many = ROWS_PER_STATEMENT + 7          # more rows than one statement takes
    changes = [
        change(upserts=[lease(n, "offered") for n in range(many)], aside=["10.9.0.1", "10.9.0.2"]),
        change(upserts=[lease(3, "bound")], deletes=[mac(4)], returned=["10.9.0.1"]),
        change(deletes=[mac(3)], aside=["10.9.0.1"]),            # undone, then set aside again
        change(upserts=[lease(4, "bound", "10.0.9.9")], returned=["10.9.0.2"]),
        change(deletes=[mac(n) for n in range(10, many)]),
    ]

    def rows(store: SqliteLeaseStore) -> tuple[list, list]:
        def read() -> tuple[list, list]:
            db = store._db
            return (db.execute("SELECT * FROM leases ORDER BY mac").fetchall(),
                    db.execute("SELECT * FROM declined ORDER BY ip").fetchall())
        return store._run(read)

    one_by_one = SqliteLeaseStore(str(tmp_path / "a.sqlite3"), [])
    merged = SqliteLeaseStore(str(tmp_path / "b.sqlite3"), [])
    try:
        for c in changes:
            one_by_one._run(one_by_one._db_batch, [(one_by_one._db_apply, (c,))])
        statements = _statements(_merge(changes))
        assert len(statements) < 8
        merged._run(merged._db_batch, [(merged._db_statements, (statements,))])
        expected = rows(one_by_one)
        assert len(expected[0]) == 9 and [ip for ip, *_ in expected[1]] == ["10.9.0.1"]
        assert rows(merged) == expected
    finally:
        one_by_one.close()
        merged.close()
