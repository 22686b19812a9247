"""The lease index seen through the stores, pinned down by mutation testing (tests/mutation.sh
``massboot/dhcp/leases/index.py:_Index``): reloading a database under a changed config, timestamps
and boundaries on an injected clock, conflicts and their reasons, DECLINE from the holder only
with its probation (RFC 2131 §4.3.3), reclaim, probes, the operator's reservations, counts, and
what each decision logs (README "Lease lifecycle").

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``allocate``, ``reserve``: ``state=OFFERED`` left out (it is the default of :class:`Lease`).
* ``__init__``: ``free_heap = None`` (``_rebuild_free`` sets it at once).
* ``_rebuild_free``: ``_usable(None)`` (the free heap is lazily valid: ``_take_free`` checks
  each address it pops).
* ``_put``: the compaction threshold of the expiry heap (``2 /``, ``3 *``, ``- 64``, ``+ 65``):
  when stale entries are dropped shows in memory only; what is kept is tested.
* ``_drop``: ``held.pop(None, None)`` (a dropped MAC binds again only through ``commit``,
  which ends its hold too).
* ``_set_aside``: ``change.returned.discard(None)`` (an address returned and set aside again in
  one decision: the store deletes the returned row before it writes the set-aside one).
* ``sweep``, ``reserve``: ``change.set_aside.pop(None, None)`` (nothing is set aside earlier
  in the same decision: the sweep runs first, and ``reserve`` sets nothing aside).
* ``_take_expired``: ``held.get(mac, 1.0)`` (the clock is epoch seconds, never below 1).
* ``by_ip``: ``self.get(mac, now)`` also for no owner (``get(None)`` is None).
"""

from __future__ import annotations

import logging
import sqlite3

import pytest

from massboot.dhcp.leases import PROBE_IN_USE_HOLD, Decline, LeaseConflict, MemoryLeaseStore, SqliteLeaseStore
from tests.unit.test_leases import BOUND, EXPIRED, OFFERED, RELEASED, RESERVED, STATIC, T0, Clock

POOL = [f"10.0.0.{i}" for i in range(10, 20)]
A, B, C, D, E, F, G, H, J = (f"02:00:00:00:00:0{n}" for n in "ABCDEF012")
LOGGER = "massboot.dhcp.leases"


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def mac(n: int) -> str:
    return f"02:00:00:00:01:{n:02X}"


# -- reloading under a changed config ------------------------------------------------------


def test_reload_drops_what_the_config_now_forbids_and_keeps_the_rest(tmp_path, caplog) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL, clock=clock)
    for m, ip in ((A, "10.0.0.10"), (B, "10.0.0.11"), (C, "10.0.0.12"), (D, "10.0.0.13"),
                  (E, "10.0.0.14"), (G, "10.0.0.15")):
        store.commit(m, ip, lease_time=3600)
    store.reserve(H, "10.0.0.16")                        # reserved, never bound: no expiry
    store.allocate(J)                                    # an offer, held 60 s
    clock.t = T0 + 40
    store.allocate(mac(9))                               # an offer held until the restart
    store.close()
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO declined (ip, mac, at, until) VALUES (?, ?, ?, ?)", [
        ("10.0.0.12", C, T0, T0 + 500),                  # on probation while C's row says bound
        ("10.0.0.18", None, T0 - 100, T0 + 100),         # its probation ends before the restart
        ("192.168.1.1", None, T0, T0 + 500),             # outside every pool now
    ])
    db.commit()
    db.close()

    clock.t = T0 + 100                                 # I's offer is past its hold
    caplog.set_level(logging.INFO, logger=LOGGER)
    static = {A: "10.0.0.30", F: "10.0.0.11", G: "10.0.0.15"}
    pool = [ip for ip in POOL if ip != "10.0.0.13"]      # D's address left the pool
    store = SqliteLeaseStore(path, pool, static, clock=clock)
    try:
        db = sqlite3.connect(path)                       # the rows it dropped are deleted at once
        assert not {A, B, C, J} & {m for (m,) in db.execute("SELECT mac FROM leases")}
        db.close()
        assert store.get(A) is None                      # replaced by its static address
        assert store.get(B) is None and store.by_ip("10.0.0.11") is None   # now static for F
        assert store.get(C) is None                      # its address was declined
        assert store.get(J) is None                      # an offer past its hold is forgotten
        d, e, g, h = store.get(D), store.get(E), store.get(G), store.get(H)
        assert d is not None and d.ip == "10.0.0.13" and not d.static   # kept outside the pool
        assert e is not None and e.ip == "10.0.0.14" and e.state == BOUND and not e.static
        assert g is not None and g.static and g.state == STATIC       # its lease is its static address
        assert h is not None and h.state == RESERVED and h.expires is None
        assert store.by_ip("10.0.0.14") == e and store.by_ip("10.0.0.13") == d
        assert store.needs_probe("10.0.0.18") and not store.needs_probe("10.0.0.17")
        # in use: .11 (F's static), .14, .15, .16; free: .10, .17, .18, .19; .12 on probation
        assert store.counts() == (4, 8)
        assert store.allocate(A).ip == "10.0.0.30"
        assert [store.allocate(m).ip for m in (B, C, mac(3), mac(1))] == \
            ["10.0.0.10", "10.0.0.17", "10.0.0.18", "10.0.0.19"]
        assert store.allocate(mac(2)) is None
        assert store.stats().offers_expired == 0         # the offers were forgotten at the start
    finally:
        store.close()
    assert (logging.INFO, f"lease mac={A} ip=10.0.0.10 replaced by static ip=10.0.0.30") in records(caplog)
    assert (logging.WARNING, f"lease mac={B} ip=10.0.0.11 dropped: the address is now static for {F}") \
        in records(caplog)
    assert (logging.WARNING, f"lease mac={C} ip=10.0.0.12 dropped: the address was declined") \
        in records(caplog)
    assert (logging.INFO, "declined address 192.168.1.1 dropped: outside the pool") in records(caplog)
    outside = [m for m in messages(caplog) if "outside the pool" in m and m.startswith("lease")]
    assert outside == [f"lease mac={D} ip=10.0.0.13 is outside the pool; kept for that MAC"]
    # the dropped rows are gone for good: a third start drops nothing
    db = sqlite3.connect(path)
    assert [ip for (ip,) in db.execute("SELECT ip FROM declined")] == ["10.0.0.12"]
    assert J not in [m for (m,) in db.execute("SELECT mac FROM leases")]
    db.close()
    caplog.clear()
    SqliteLeaseStore(path, pool, static, clock=clock).close()
    assert not [m for m in messages(caplog) if "dropped" in m or "replaced" in m]


def test_a_declined_static_address_of_a_mac_still_static_is_kept_aside(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL, {F: "10.0.0.40"}, clock=clock, decline_probation=100)
    store.allocate(F)
    assert store.decline(F, "10.0.0.40").accepted
    store.close()
    store = SqliteLeaseStore(path, POOL, {F: "10.0.0.40"}, clock=clock, decline_probation=100)
    try:
        assert store.allocate(F).ip == "10.0.0.10"       # the static address is still aside
    finally:
        store.close()


# -- timestamps ------------------------------------------------------------------------


def test_leases_carry_the_clock_of_their_last_change() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"}, clock=clock)
    offered = store.allocate(A)
    static = store.allocate(F)
    assert (offered.state, offered.updated, offered.expires) == (OFFERED, T0, T0 + 60)
    assert (static.state, static.updated, static.expires) == (STATIC, T0, None)
    clock.t = T0 + 100
    bound = store.commit(A, offered.ip, lease_time=600)
    assert (bound.state, bound.updated, bound.expires) == (BOUND, T0 + 100, T0 + 700)
    clock.t = T0 + 200
    released = store.release(A)
    assert (released.state, released.updated, released.expires) == (RELEASED, T0 + 200, T0 + 200)
    clock.t = T0 + 300
    again = store.release(A)                             # expires never moves forward
    assert (again.updated, again.expires) == (T0 + 300, T0 + 200)
    clock.t = T0 + 400
    assert store.get(A) == again                         # released stays released, not expired


def test_a_second_allocate_changes_and_logs_nothing(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    first = store.allocate(A)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    caplog.clear()   # what came before (a store's opening line) is not this test's
    assert store.allocate(A) == first
    assert messages(caplog, logging.DEBUG) == []


# -- commit conflicts ------------------------------------------------------------------


def test_commit_conflicts_and_their_reasons() -> None:
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"}, exclude=["10.0.0.19"])
    store.allocate(A)
    with pytest.raises(LeaseConflict, match=rf"^{A} is bound to 10\.0\.0\.10, not 10\.0\.0\.11$"):
        store.commit(A, "10.0.0.11", lease_time=60)
    with pytest.raises(LeaseConflict, match=rf"^{F} has the static address 10\.0\.0\.40, not 10\.0\.0\.12$"):
        store.commit(F, "10.0.0.12", lease_time=60)
    with pytest.raises(LeaseConflict, match=rf"^10\.0\.0\.10 is bound to {A}$"):
        store.commit(B, "10.0.0.10", lease_time=60)
    with pytest.raises(LeaseConflict, match=rf"^10\.0\.0\.40 is bound to {F}$"):
        store.commit(B, "10.0.0.40", lease_time=60)     # another MAC's static address
    with pytest.raises(LeaseConflict, match=r"^10\.0\.0\.19 is set aside$"):
        store.commit(B, "10.0.0.19", lease_time=60)
    # a commit without an offer binds the address and indexes it
    lease = store.commit(C, "10.0.0.15", lease_time=60)
    assert store.by_ip("10.0.0.15") == lease and store.get(C) == lease
    assert store.commit(F, "10.0.0.40", lease_time=60).static
    assert store.counts() == (2, 9)                      # .40 is outside the pool


def test_a_declined_address_cannot_be_committed_until_its_probation_ends() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, clock=clock, decline_probation=100)
    store.allocate(A)
    assert store.decline(A, "10.0.0.10").accepted
    with pytest.raises(LeaseConflict, match=r"^10\.0\.0\.10 is set aside$"):
        store.commit(B, "10.0.0.10", lease_time=60)
    clock.t = T0 + 100                                 # exactly the end of the probation
    assert store.commit(B, "10.0.0.10", lease_time=60).state == BOUND
    assert store.stats().probation_ended == 1 and not store.needs_probe("10.0.0.10")


def test_a_static_mac_whose_address_was_declined_may_bind_another() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"}, clock=clock, decline_probation=100)
    assert store.decline(F, "10.0.0.40") == Decline("10.0.0.40", "not_held")   # before any offer
    assert store.allocate(F).static
    assert store.decline(F, "10.0.0.40") == Decline("10.0.0.40", None, T0 + 100)
    assert store.get(F) is None and store.by_ip("10.0.0.40") is None
    lease = store.allocate(F)
    assert lease.ip == "10.0.0.10" and not lease.static  # the static address is set aside
    lease = store.commit(F, "10.0.0.10", lease_time=60)
    assert lease.ip == "10.0.0.10" and not lease.static and lease.state == BOUND
    assert store.counts() == (1, 10)


def test_a_static_mac_without_binding_may_commit_another_address_only_while_its_own_is_aside() -> None:
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"}, decline_probation=100)
    store.allocate(F)
    store.decline(F)
    store.free(F)
    assert store.commit(F, "10.0.0.12", lease_time=60).ip == "10.0.0.12"


# -- DECLINE ----------------------------------------------------------------------------


def test_decline_of_another_macs_address_changes_nothing_and_says_why_at_debug(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    a = store.allocate(A)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    caplog.clear()   # what came before (a store's opening line) is not this test's
    assert store.decline(B, a.ip) == Decline(a.ip, "other_mac")
    assert records(caplog) == [(logging.DEBUG, f"decline mac={B} ip={a.ip}: other_mac")]
    assert store.get(A) == a and store.by_ip(a.ip) == a
    assert store.counts() == (1, 10)


def test_decline_outside_the_pool_names_the_address() -> None:
    store = MemoryLeaseStore(POOL)
    store.allocate(A)
    assert store.decline(A, "192.168.7.7") == Decline("192.168.7.7", "outside_pool")


def test_decline_of_a_free_address_changes_nothing(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    caplog.clear()   # what came before (a store's opening line) is not this test's
    assert store.decline(A, "10.0.0.10") == Decline("10.0.0.10", "not_held")
    assert records(caplog) == [(logging.DEBUG, f"decline mac={A} ip=10.0.0.10: not_held")]
    assert store.counts() == (0, 10)
    assert store.allocate(A).ip == "10.0.0.10"


def test_decline_of_its_own_address_sets_it_aside_durably_for_the_probation(tmp_path, caplog) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL, clock=clock, decline_probation=500)
    a = store.allocate(A)
    store.commit(A, a.ip, lease_time=60)
    clock.t = T0 + 10
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    caplog.clear()   # what came before (a store's opening line) is not this test's
    assert store.decline(A, a.ip) == Decline(a.ip, None, T0 + 510)
    assert records(caplog) == [(logging.DEBUG, f"decline mac={A} ip={a.ip}: set aside")]
    assert store.get(A) is None and store.by_ip(a.ip) is None
    assert store.counts() == (0, 9)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT ip, mac, at, until FROM declined").fetchall() == [(a.ip, A, T0 + 10, T0 + 510)]
    assert db.execute("SELECT mac FROM leases").fetchall() == []
    db.close()
    caplog.clear()
    clock.t = T0 + 509
    store = SqliteLeaseStore(path, POOL, clock=clock, decline_probation=500)
    try:
        assert not [m for m in messages(caplog) if "dropped" in m]
        assert store.get(A) is None and store.counts() == (0, 9)
        assert store.allocate(A).ip == "10.0.0.11"
        clock.t = T0 + 510
        assert store.counts() == (1, 10)
        assert store.allocate(B).ip == a.ip and store.needs_probe(a.ip)
        assert store.stats().probation_ended == 1
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT ip FROM declined").fetchall() == []
    db.close()


def test_decline_of_an_expired_binding_is_not_held_at_the_boundary() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, clock=clock)
    store.bind(A, None, lease_time=100)
    clock.t = T0 + 99
    assert store.decline(A).accepted
    store.bind(B, None, lease_time=100)                  # .11, from T0 + 99
    clock.t = T0 + 199
    assert store.decline(B) == Decline("10.0.0.11", "not_held")
    assert store.get(B).state == EXPIRED


def test_decline_of_an_offer_at_the_end_of_its_hold_is_not_held() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, clock=clock, offer_hold=30)
    store.allocate(A)
    clock.t = T0 + 30
    assert store.decline(A, "10.0.0.10") == Decline("10.0.0.10", "not_held")
    assert store.counts() == (0, 10)


def test_a_bound_row_without_expiry_loads_and_releases_at_once(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL, clock=clock)
    store.bind(A, None, lease_time=600)
    store.close()
    db = sqlite3.connect(path)                           # a row written without its expiry
    db.execute("INSERT INTO leases (mac, ip, state, expires) VALUES (?, '10.0.0.11', 'bound', 0)", (B,))
    db.commit()
    db.close()
    store = SqliteLeaseStore(path, POOL, clock=clock)
    try:
        assert store.get(B).expires is None
        clock.t = T0 + 5
        released = store.release(B)
        assert (released.state, released.expires) == (RELEASED, T0 + 5)
    finally:
        store.close()


# -- the constructor ----------------------------------------------------------------------


def test_an_unknown_reclaim_policy_is_refused_by_name() -> None:
    with pytest.raises(ValueError) as err:
        MemoryLeaseStore(POOL, reclaim="sometimes")
    assert str(err.value) == "reclaim must be 'expired' or 'never', not 'sometimes'"


# -- boundaries of the hold, the probation and the reclaim ------------------------------------


def test_an_offer_is_forgotten_exactly_at_the_end_of_its_hold() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:1], clock=clock, offer_hold=60)
    store.allocate(A)
    clock.t = T0 + 59.5
    assert store.allocate(B) is None
    clock.t = T0 + 60
    assert store.allocate(B).ip == "10.0.0.10" and store.stats().offers_expired == 1


def test_a_lease_bound_as_long_as_the_offer_was_held_is_not_forgotten_as_an_offer() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:2], clock=clock, offer_hold=60)
    store.bind(A, None, lease_time=60)                   # its offer and its lease end together
    clock.t = T0 + 60
    store.allocate(B)
    assert store.get(A).state == EXPIRED and store.stats().offers_expired == 0


def test_every_probation_that_ends_is_counted() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, clock=clock, decline_probation=100)
    for m in (A, B):
        store.allocate(m)
        assert store.decline(m).accepted
    clock.t = T0 + 100
    store.allocate(C)
    assert store.stats().probation_ended == 2


def test_an_address_whose_probation_is_over_counts_as_free_even_before_a_sweep() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:3], clock=clock, decline_probation=100)
    store.allocate(A)
    store.allocate(B)
    assert store.decline(B).accepted                     # .11 on probation
    store.free(A)                                        # .10 free again
    assert store.counts() == (0, 2)
    clock.t = T0 + 100                                 # no decision since: nothing swept yet
    assert store.counts() == (0, 3)


def test_reclaim_at_the_exact_expiry_and_its_log_line(caplog) -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:1], clock=clock)
    store.bind(A, None, lease_time=100)
    clock.t = T0 + 100
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert store.allocate(B).ip == "10.0.0.10"
    clock.t = T0 + 160.4
    store.bind(B, None, lease_time=1)
    clock.t = T0 + 221.6
    assert store.allocate(C).ip == "10.0.0.10"
    assert messages(caplog) == [f"lease reclaimed ip=10.0.0.10 from mac={A} (expired 0 s ago)",
                                f"lease reclaimed ip=10.0.0.10 from mac={B} (expired 60 s ago)"]


def test_a_released_binding_is_reclaimed_first_when_it_ended_first() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:3], clock=clock)
    store.bind(A, None, lease_time=10)                   # .10, ends at T0 + 10
    store.bind(B, None, lease_time=1000)                 # .11, released at T0
    store.release(B)
    for _ in range(100):                                 # C's renewals: the expiry heap is compacted
        store.bind(C, None, lease_time=1000)
    clock.t = T0 + 20
    assert [store.allocate(m).ip for m in (D, E)] == ["10.0.0.11", "10.0.0.10"]
    assert store.allocate(F) is None and store.stats().reclaimed == 2


def test_reclaim_skips_stale_entries_outside_the_pool_and_held_addresses(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, ["10.0.0.9"] + POOL[:3], clock=clock)
    store.bind(G, None, lease_time=1)                    # .9, which leaves the pool
    store.close()
    store = SqliteLeaseStore(path, POOL[:3], clock=clock, offer_hold=30)
    try:
        store.bind(A, None, lease_time=5)                # .10: renewed below, a stale entry stays
        store.bind(B, None, lease_time=10)               # .11
        store.bind(C, None, lease_time=20)               # .12
        store.bind(A, None, lease_time=30)
        clock.t = T0 + 40                              # all expired; .9 first of all
        assert store.allocate(B).ip == "10.0.0.11"       # B is back: its address held 30 s
        # not .9 (outside the pool), not .11 (held for B)
        assert store.bind(D, None, lease_time=1000).lease.ip == "10.0.0.12"
        assert store.bind(E, None, lease_time=1000).lease.ip == "10.0.0.10"
        clock.t = T0 + 69.5
        assert store.allocate(F) is None                 # B's hold still runs
        clock.t = T0 + 70
        assert store.allocate(F).ip == "10.0.0.11"       # over, exactly now
        assert store.get(G).ip == "10.0.0.9"             # never reclaimed
    finally:
        store.close()


def test_a_reclaimed_address_now_excluded_is_not_handed_out(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL[:2], clock=clock)
    store.bind(A, None, lease_time=10)
    store.bind(B, None, lease_time=1000)
    store.close()
    store = SqliteLeaseStore(path, POOL[:2], exclude=["10.0.0.10"], clock=clock)
    try:
        clock.t = T0 + 20
        assert store.allocate(C) is None
        assert store.get(A) is None
    finally:
        store.close()


def test_a_drop_or_a_commit_ends_the_hold_of_a_mac_back_for_its_expired_lease() -> None:
    for end in ("free", "commit"):
        clock = Clock()
        store = MemoryLeaseStore(POOL[:1], clock=clock, offer_hold=60)
        store.bind(A, None, lease_time=10)
        clock.t = T0 + 20
        assert store.allocate(A).ip == "10.0.0.10"       # held for A until T0 + 80
        if end == "free":
            store.free(A)
        store.bind(A, None, lease_time=10)
        clock.t = T0 + 40
        assert store.allocate(B).ip == "10.0.0.10", end


def test_a_commit_or_a_silent_probe_clears_the_suspicion() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL[:2], clock=clock)
    store.bind(A, None, lease_time=10)
    store.bind(B, None, lease_time=10)
    clock.t = T0 + 20
    assert store.allocate(C).ip == "10.0.0.10" and store.needs_probe("10.0.0.10")
    store.commit(C, "10.0.0.10", lease_time=10)
    assert not store.needs_probe("10.0.0.10")
    assert store.allocate(D).ip == "10.0.0.11" and store.needs_probe("10.0.0.11")
    store.probed(D, "10.0.0.11", False)
    assert not store.needs_probe("10.0.0.11") and store.get(D).state == OFFERED


# -- probes -------------------------------------------------------------------------------


def test_a_probe_answered_drops_only_the_macs_offer_of_that_address(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL[:4], clock=clock, offer_hold=10000)
    try:
        a = store.bind(A, None, lease_time=100).lease    # .10, bound
        b = store.allocate(B)                            # .11, offered
        store.probed(A, a.ip, True)                      # bound: kept, its address too
        store.probed(B, "10.0.0.12", True)               # not B's offer: kept; .12 set aside
        store.probed(C, a.ip, True)                      # another MAC's address: not set aside
        assert store.get(A) == a and store.get(B) == b
        assert store.counts() == (2, 3)
        store.free(A)
        assert store.allocate(C).ip == a.ip
        clock.t = T0 + 7
        store.probed(D, "10.0.0.13", True)               # nobody's: set aside
        assert store.allocate(D) is None
        clock.t = T0 + PROBE_IN_USE_HOLD
        assert store.allocate(D).ip == "10.0.0.12"
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT ip, mac, at, until FROM declined").fetchall() == \
        [("10.0.0.13", None, T0 + 7, T0 + 7 + PROBE_IN_USE_HOLD)]
    db.close()


# -- the operator's reservations -----------------------------------------------------------


def test_reserve_refusals_say_why() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40", G: "10.0.0.18"}, exclude=["10.0.0.19"], clock=clock)
    store.bind(A, None, lease_time=100)
    store.allocate(B)
    store.reserve(C, "10.0.0.12")
    store.bind(G, None, lease_time=100)
    for m, ip, message in [
        (D, "10.0.0.19", "10.0.0.19 is never handed out"),
        (F, "10.0.0.13", f"{F} has the static address 10.0.0.40"),
        (D, "10.0.0.18", f"10.0.0.18 is the static address of {G}"),
        (D, "10.0.0.10", f"10.0.0.10 is bound to {A} (bound; release it first)"),
        (D, "10.0.0.11", f"10.0.0.11 is bound to {B} (offered; release it first)"),
        (D, "10.0.0.12", f"10.0.0.12 is bound to {C} (reserved; release it first)"),
    ]:
        with pytest.raises(LeaseConflict) as err:
            store.reserve(m, ip)
        assert str(err.value) == message


def test_reserve_keeps_the_macs_own_binding_and_moves_it_otherwise() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, clock=clock)
    bound = store.bind(A, None, lease_time=100).lease    # .10
    offered = store.allocate(B)                          # .11, held until T0 + 60
    clock.t = T0 + 5
    a = store.reserve(A, bound.ip)
    assert (a.ip, a.state, a.expires, a.updated) == (bound.ip, RESERVED, T0 + 100, T0 + 5)
    b = store.reserve(B, offered.ip)
    assert (b.ip, b.state, b.expires, b.updated, b.reserved) == (offered.ip, RESERVED, None, T0 + 5, True)
    clock.t = T0 + 500                                 # past B's hold and A's lease: both stay
    assert store.get(B) == b and store.by_ip(offered.ip) == b
    assert store.allocate(C).ip == "10.0.0.12"
    clock.t = T0 + 600
    assert store.unreserve(A)
    a = store.get(A)
    assert (a.state, a.reserved, a.updated, a.expires) == (EXPIRED, False, T0 + 600, T0 + 100)
    moved = store.reserve(B, "10.0.0.15")                # another address: the old one is let go
    assert (moved.ip, moved.updated) == ("10.0.0.15", T0 + 600) and store.by_ip(offered.ip) is None
    assert store.allocate(D).ip == offered.ip


def test_reserve_ends_a_probation_and_a_suspicion_durably(tmp_path) -> None:
    clock, path = Clock(), str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL, clock=clock)
    store.allocate(A)
    assert store.decline(A).accepted                     # .10 on probation for a day
    store.bind(B, None, lease_time=100)                  # .11
    store.free(B)                                        # suspect: it was bound
    assert store.needs_probe("10.0.0.11")
    assert store.reserve(C, "10.0.0.10").ip == "10.0.0.10"
    store.reserve(D, "10.0.0.11")
    assert not store.needs_probe("10.0.0.11") and not store.needs_probe("10.0.0.10")
    store.close()
    store = SqliteLeaseStore(path, POOL, clock=clock)
    try:
        assert store.get(C).state == RESERVED and store.get(C).ip == "10.0.0.10"
    finally:
        store.close()


def test_free_of_a_static_binding_keeps_its_address_its_own() -> None:
    store = MemoryLeaseStore(POOL, {F: "10.0.0.12"})
    store.bind(F, None, lease_time=100)
    assert store.free(F).ip == "10.0.0.12" and not store.needs_probe("10.0.0.12")
    with pytest.raises(LeaseConflict, match=rf"^10\.0\.0\.12 is bound to {F}$"):
        store.commit(A, "10.0.0.12", lease_time=60)
    assert [store.allocate(m).ip for m in (A, B, C)] == ["10.0.0.10", "10.0.0.11", "10.0.0.13"]
