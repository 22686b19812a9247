"""Two lease indexes kept in step by what each one's decisions changed (``_Index.adopt``):
what every PostgreSQL server does with the rows the others committed (README, "Several
servers"). Pure: no database. A seeded run of mixed operations, each made on one index or the
other; after each, the other adopts the change and both must hold the same state, so that
whichever server decides next decides the same."""

from __future__ import annotations

import random

import pytest

from massboot.dhcp.leases import LeaseConflict, MemoryLeaseStore
from massboot.dhcp.leases.index import _Change

POOL = [f"10.0.0.{i}" for i in range(10, 22)]
STATIC = {"AA:BB:CC:DD:EE:01": "10.0.0.11", "AA:BB:CC:DD:EE:02": "192.168.5.5"}
T0 = 1_700_000_000.0


class Server:
    """A store whose changes are recorded, as the PostgreSQL store writes them."""

    def __init__(self, clock) -> None:
        self.store = MemoryLeaseStore(POOL, STATIC, ["10.0.0.20"], offer_hold=30, decline_probation=200,
                                      clock=clock)
        self.changes: list[_Change] = []
        self.store._save = self.changes.append        # what a transaction would write

    @property
    def index(self):
        return self.store._index


def adopt(src: Server, dst: Server) -> None:
    """*dst* takes what *src*'s decisions changed (rows, tombstones and marks)."""
    for change in src.changes:
        dst.index.adopt(change.deletes, change.upserts.values(), change.returned,
                        [(ip, until) for ip, (_, _, until) in change.set_aside.items()])
    src.changes.clear()
    dst.index.suspect = set(src.index.suspect)
    dst.index.held = dict(src.index.held)
    dst.index.stale = set(src.index.stale)


def state(server: Server, now: float) -> tuple:
    index = server.index
    return (dict(index.by_mac), dict(index.owner), dict(index.aside), set(index.suspect),
            dict(index.held), set(index.stale), index.counts(now),
            sorted((lease.mac, lease.state) for lease in server.store.leases()))


def mac(n: int) -> str:
    return f"02:00:00:00:00:{n:02X}"


@pytest.mark.parametrize("seed", range(8))
def test_replicas_decide_alike(seed: int) -> None:
    rng = random.Random(seed)
    now = [T0]
    a, b = Server(lambda: now[0]), Server(lambda: now[0])
    macs = [mac(n) for n in range(20)] + list(STATIC)
    for step in range(300):
        here, there = (a, b) if rng.random() < 0.5 else (b, a)
        store = here.store
        m = rng.choice(macs)
        op = rng.random()
        try:
            if op < 0.3:
                store.allocate(m)
            elif op < 0.55:
                lease = store.get(m)
                store.bind(m, lease.ip if lease and rng.random() < 0.8 else None,
                           lease_time=rng.choice([10, 60, 600]))
            elif op < 0.62:
                store.release(m)
            elif op < 0.68:
                lease = store.get(m)
                store.decline(m, lease.ip if lease else None)
            elif op < 0.72:
                store.free(m)
            elif op < 0.76:
                store.reserve(m, rng.choice(POOL))
            elif op < 0.79:
                store.unreserve(m)
            elif op < 0.84:
                lease = store.get(m)
                if lease is not None:
                    store.probed(m, lease.ip, rng.random() < 0.5)
            else:
                now[0] += rng.choice([1, 5, 20, 40, 120, 250])
        except LeaseConflict:
            pass
        adopt(here, there)
        assert state(a, now[0]) == state(b, now[0]), (seed, step)
    # and from the same state, each decides the next new client alike
    for n in range(30, 45):
        now[0] += 3
        first = a.store.allocate(mac(n))
        adopt(a, b)
        assert b.store.get(mac(n)) == first
        second = b.store.bind(mac(n + 100), None, lease_time=60)
        adopt(b, a)
        assert a.store.get(mac(n + 100)) == (second.lease if second.bound else a.store.get(mac(n + 100)))
        assert state(a, now[0]) == state(b, now[0])


def test_an_address_back_from_probation_on_one_server_is_free_on_the_other() -> None:
    now = [T0]
    a, b = Server(lambda: now[0]), Server(lambda: now[0])
    pool = [ip for ip in POOL if ip not in ("10.0.0.11", "10.0.0.20")]     # static, excluded
    ip = a.store.bind(mac(1), None, lease_time=600).lease.ip
    assert a.store.decline(mac(1), ip).accepted
    adopt(a, b)
    for n in range(2, 2 + len(pool) - 1):              # b fills the rest of the pool meanwhile
        assert b.store.bind(mac(n), None, lease_time=600).lease.ip != ip
    assert b.store.allocate(mac(50)) is None
    adopt(b, a)
    now[0] += 201                                      # the probation ends: a's next decision sees it
    assert a.store.release(mac(2)) is not None         # any decision sweeps first
    assert a.store.stats().probation_ended == 1 and b.store.stats().probation_ended == 0
    adopt(a, b)
    got = b.store.allocate(mac(52))
    assert got is not None and got.ip == ip
