"""The lease index seen through the stores, pinned down by mutation testing (tests/mutation.sh
``massboot/dhcp/leases.py:_Index``): reloading a database under a changed config, timestamps,
conflicts and their reasons, DECLINE (RFC 2131 §4.3.3) and what each decision logs (README
"DHCP and PXE behaviour": sticky leases, declined addresses set aside for good).

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``allocate``: ``state=OFFERED`` left out (it is the default of :class:`Lease`).
* ``decline``: ``dropped = None`` (falsy like False).
"""

from __future__ import annotations

import logging
import sqlite3

import pytest

from massboot.dhcp.leases import BOUND, OFFERED, RELEASED, LeaseConflict, MemoryLeaseStore, SqliteLeaseStore

POOL = [f"10.0.0.{i}" for i in range(10, 20)]
A, B, C, D, E, F, G = (f"02:00:00:00:00:0{n}" for n in "ABCDEF0")
LOGGER = "massboot.dhcp.leases"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


# -- reloading under a changed config ------------------------------------------------------


def test_reload_drops_what_the_config_now_forbids_and_keeps_the_rest(tmp_path, caplog) -> None:
    path = str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL)
    for mac, ip in ((A, "10.0.0.10"), (B, "10.0.0.11"), (C, "10.0.0.12"), (D, "10.0.0.13"),
                    (E, "10.0.0.14"), (G, "10.0.0.15")):
        store.commit(mac, ip, lease_time=3600)
    store.close()
    db = sqlite3.connect(path)                 # an address set aside while C held it
    db.execute("INSERT INTO declined (ip, mac, at) VALUES ('10.0.0.12', NULL, 0)")
    db.commit()
    db.close()

    caplog.set_level(logging.INFO, logger=LOGGER)
    static = {A: "10.0.0.30", F: "10.0.0.11", G: "10.0.0.15"}
    pool = [ip for ip in POOL if ip != "10.0.0.13"]      # D's address left the pool
    store = SqliteLeaseStore(path, pool, static)
    try:
        assert store.get(A) is None                      # replaced by its static address
        assert store.get(B) is None and store.by_ip("10.0.0.11") is None   # now static for F
        assert store.get(C) is None                      # its address was declined
        d, e, g = store.get(D), store.get(E), store.get(G)
        assert d is not None and d.ip == "10.0.0.13" and not d.static   # kept outside the pool
        assert e is not None and e.ip == "10.0.0.14" and e.state == BOUND and not e.static
        assert g is not None and g.static                # its lease is its static address
        assert store.by_ip("10.0.0.14") == e and store.by_ip("10.0.0.13") == d
        assert store.allocate(A).ip == "10.0.0.30"
    finally:
        store.close()
    logged = messages(caplog)
    assert f"lease mac={A} ip=10.0.0.10 replaced by static ip=10.0.0.30" in logged
    assert f"lease mac={B} ip=10.0.0.11 dropped: the address is now static for {F}" in logged
    assert f"lease mac={C} ip=10.0.0.12 dropped: the address was declined" in logged
    outside = [m for m in logged if "outside the pool" in m]
    assert outside == [f"lease mac={D} ip=10.0.0.13 is outside the pool; kept for that MAC"]
    # the dropped rows are gone for good: a third start drops nothing
    caplog.clear()
    SqliteLeaseStore(path, pool, static).close()
    assert not [m for m in messages(caplog) if "dropped" in m or "replaced" in m]


# -- timestamps ------------------------------------------------------------------------


def test_leases_carry_the_clock_of_their_last_change() -> None:
    clock = Clock()
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"}, clock=clock)
    offered = store.allocate(A)
    static = store.allocate(F)
    assert (offered.state, offered.updated) == (static.state, static.updated) == (OFFERED, 1000.0)
    clock.now = 1100.0
    bound = store.commit(A, offered.ip, lease_time=600)
    assert (bound.updated, bound.expires) == (1100.0, 1700.0)
    clock.now = 1200.0
    released = store.release(A)
    assert (released.state, released.updated, released.expires) == (RELEASED, 1200.0, 1200.0)
    clock.now = 1300.0
    again = store.release(A)                             # expires never moves forward
    assert (again.updated, again.expires) == (1300.0, 1200.0)


def test_a_second_allocate_changes_and_logs_nothing(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    first = store.allocate(A)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
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
    with pytest.raises(LeaseConflict, match=r"^10\.0\.0\.19 is set aside$"):
        store.commit(B, "10.0.0.19", lease_time=60)
    # a commit without an offer binds the address and indexes it
    lease = store.commit(C, "10.0.0.15", lease_time=60)
    assert store.by_ip("10.0.0.15") == lease and store.get(C) == lease


def test_a_static_mac_whose_address_was_declined_may_bind_another() -> None:
    store = MemoryLeaseStore(POOL, {F: "10.0.0.40"})
    store.decline(F, "10.0.0.40")                        # before any offer: no crash
    assert store.allocate(F).ip == "10.0.0.10"           # the reservation is set aside
    lease = store.commit(F, "10.0.0.10", lease_time=60)
    assert lease.ip == "10.0.0.10" and not lease.static


# -- DECLINE ----------------------------------------------------------------------------


def test_decline_of_another_macs_address_is_ignored(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    a = store.allocate(A)
    caplog.set_level(logging.INFO, logger=LOGGER)
    store.decline(B, a.ip)
    assert messages(caplog) == [f"decline ignored mac={B} ip={a.ip}: bound to {A}"]
    assert store.get(A) == a and store.by_ip(a.ip) == a
    assert store.counts() == (1, 10)


def test_decline_of_a_free_address_sets_it_aside(caplog) -> None:
    store = MemoryLeaseStore(POOL)
    caplog.set_level(logging.INFO, logger=LOGGER)
    store.decline(A, "10.0.0.10")
    assert messages(caplog) == [f"address declined mac={A} ip=10.0.0.10: set aside"]
    assert store.counts() == (0, 9)
    caplog.clear()
    store.decline(A, "10.0.0.10")                        # again: nothing new, nothing logged
    assert messages(caplog) == []
    assert store.allocate(A).ip == "10.0.0.11"


def test_decline_of_its_own_address_drops_the_binding_for_good(tmp_path, caplog) -> None:
    path = str(tmp_path / "leases.db")
    store = SqliteLeaseStore(path, POOL)
    a = store.allocate(A)
    store.commit(A, a.ip, lease_time=60)
    caplog.set_level(logging.INFO, logger=LOGGER)
    store.decline(A, a.ip)
    assert messages(caplog) == [f"address declined mac={A} ip={a.ip}: set aside"]
    assert store.get(A) is None and store.by_ip(a.ip) is None
    store.close()
    caplog.clear()
    store = SqliteLeaseStore(path, POOL)                 # the row went with the decline
    try:
        assert not [m for m in messages(caplog) if "dropped" in m]
        assert store.get(A) is None
        assert store.allocate(A).ip != a.ip
    finally:
        store.close()
