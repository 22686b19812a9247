"""The PostgreSQL lease store as several servers use it (README, "Several servers").

Each store below is what one massboot server opens: its own connection and its own index, one
pool in one real PostgreSQL (a throwaway cluster, tests/pgserver.py). The single-store
contract is tests/unit/test_leases.py, which runs on this store too.
"""

from __future__ import annotations

import gevent
import pytest

from massboot.dhcp.leases import (
    BOUND,
    OFFERED,
    RESERVED,
    LeaseConflict,
    LeaseStoreError,
    LeaseStoreUnavailable,
    PostgresLeaseStore,
)
from massboot.dhcp.leases.postgresql import _MIGRATIONS, SCHEMA_VERSION, copy_leases, parse_dsn, redact
from tests.pgserver import PgCluster
from tests.unit.test_leases import MAC_A, MAC_B, MAC_C, POOL, T0, Clock, mac


@pytest.fixture
def servers(pg_dsn):
    """``servers(n, **options)``: *n* stores on one pool, as *n* massboot servers open it."""
    opened: list[PostgresLeaseStore] = []

    def make(n: int = 3, pool=POOL, static={}, **options) -> list[PostgresLeaseStore]:  # noqa: B006
        stores = [PostgresLeaseStore(pg_dsn, pool, static, **options) for _ in range(n)]
        opened.extend(stores)
        return stores

    yield make
    for store in opened:
        store.close()


def test_servers_racing_for_the_last_address_one_wins(servers) -> None:
    """Three servers, each asked by another MAC at the same moment, for the one free address."""
    stores = servers(3, pool=POOL[:1])
    winners = []

    def ask(store: PostgresLeaseStore, n: int) -> None:
        result = store.bind(mac(n), None, lease_time=600)
        if result.bound:
            winners.append((n, result.lease.ip))

    for _ in range(5):                      # several rounds: the order in which they commit varies
        for store in stores:
            for lease in store.leases():
                store.free(lease.mac)
        winners.clear()
        gevent.joinall([gevent.spawn(ask, store, n) for n, store in enumerate(stores)], raise_error=True)
        assert len(winners) == 1 and winners[0][1] == POOL[0]
        n = winners[0][0]
        for store in stores:        # every server sees the winner, and nobody else holds anything
            assert store.get(mac(n)).state == BOUND
            assert [lease.mac for lease in store.leases()] == [mac(n)]


def test_many_servers_many_clients_never_share_an_address(servers) -> None:
    pool = [f"10.3.0.{i}" for i in range(1, 61)]
    stores = servers(3, pool=pool)

    def client(n: int) -> str | None:
        store = stores[n % 3]
        gevent.sleep(0)
        offer = store.allocate(mac(n))
        if offer is None:
            return None
        result = stores[(n + 1) % 3].bind(mac(n), offer.ip, lease_time=600)   # REQUEST to another one
        return result.lease.ip if result.bound else None

    jobs = [gevent.spawn(client, n) for n in range(80)]
    gevent.joinall(jobs, raise_error=True)
    ips = [job.value for job in jobs if job.value is not None]
    assert len(ips) == len(set(ips)) == 60
    for store in stores:
        owners = {lease.ip: lease.mac for lease in store.leases()}
        assert len(owners) == 60 and set(owners) == set(pool)


def test_one_mac_asking_two_servers_at_once_gets_one_address(servers) -> None:
    a, b = servers(2)
    for n in range(10):
        jobs = [gevent.spawn(store.allocate, mac(n)) for store in (a, b)]
        gevent.joinall(jobs, raise_error=True)
        assert jobs[0].value.ip == jobs[1].value.ip
    assert len({lease.ip for lease in a.leases()}) == 10


def test_an_offer_is_a_row_another_server_does_not_offer_again(servers) -> None:
    clock = Clock()
    a, b = servers(2, pool=POOL[:2], offer_hold=60, clock=clock)
    offer = a.allocate(MAC_A)
    assert offer.state == OFFERED and offer.expires == T0 + 60
    assert b.get(MAC_A) == offer and b.by_ip(offer.ip).mac == MAC_A
    assert b.allocate(MAC_B).ip == POOL[1]
    assert b.allocate(MAC_C) is None                      # both held by offers
    clock.advance(61)                                     # A's offer was never REQUESTed
    assert b.allocate(MAC_C).ip == POOL[0]
    assert a.get(MAC_A) is None and a.by_ip(POOL[0]).mac == MAC_C


def test_an_operators_change_on_one_server_reaches_the_others_at_once(servers) -> None:
    a, b, c = servers(3)
    bound = a.bind(MAC_A, None, lease_time=600).lease
    assert c.get(MAC_A).state == BOUND
    assert b.free(MAC_A).ip == bound.ip                   # `massboot leases release` on server b
    assert a.get(MAC_A) is None and c.by_ip(bound.ip) is None
    b.reserve(MAC_B, "10.0.0.15")
    assert a.get(MAC_B).state == RESERVED and c.allocate(MAC_B).ip == "10.0.0.15"
    with pytest.raises(LeaseConflict):
        c.reserve(MAC_C, "10.0.0.15")
    assert a.bind(MAC_B, "10.0.0.15", lease_time=60).bound
    assert b.unreserve(MAC_B) and c.get(MAC_B).state == BOUND


def test_sticky_reclaim_and_decline_hold_across_servers(servers) -> None:
    clock = Clock()
    a, b = servers(2, pool=POOL[:3], clock=clock, decline_probation=100)
    first = a.bind(mac(0), None, lease_time=10).lease.ip
    second = b.bind(mac(1), None, lease_time=1000).lease.ip
    clock.advance(50)                                     # mac(0) expired: sticky while there is room
    assert b.allocate(mac(0)).ip == first                 # the other server knows its address
    assert a.decline(mac(1), second).accepted             # declined to a, set aside on b too
    assert b.bind(MAC_A, None, lease_time=1000).lease.ip == POOL[2]
    assert b.allocate(MAC_B) is None                      # mac(0) was re-offered: held from reclaim
    clock.advance(61)
    assert a.allocate(MAC_B).ip == first and a.stats().reclaimed == 1   # now reclaimed
    assert b.get(MAC_B).ip == first and b.needs_probe(first)   # another MAC had it: probe first
    assert b.bind(MAC_B, first, lease_time=1000).bound
    assert a.get(MAC_B).state == BOUND and not a.needs_probe(first)
    clock.advance(100)                                    # the probation ends
    assert b.allocate(MAC_C).ip == second


def test_a_restarted_server_finds_the_pool_as_the_others_left_it(servers, pg_dsn) -> None:
    (a,) = servers(1)
    bound = a.bind(MAC_A, None, lease_time=600, uuid="11111111-2222-3333-4444-555555555555").lease
    offered = a.allocate(MAC_B)
    a.close()
    (b,) = servers(1)
    assert b.get(MAC_A) == bound and b.get(MAC_B) == offered
    assert b.allocate(MAC_C).ip == "10.0.0.12"


def test_the_database_guards_one_mac_per_address(pg_cluster, pg_dsn) -> None:
    (store,) = [PostgresLeaseStore(pg_dsn, POOL)]
    try:
        store.bind(MAC_A, None, lease_time=600)
        con = pg_cluster.connect(pg_dsn.split("?")[0].rsplit("/", 1)[1])
        try:
            with pytest.raises(Exception, match="massboot_leases_one_mac_per_ip"):
                con.run("INSERT INTO massboot_leases (scope, mac, ip, state, seq) "
                        "VALUES ('main', 'X', '10.0.0.10', 'bound', 0)")
        finally:
            con.close()
    finally:
        store.close()


def test_the_schema_is_versioned_migrated_and_a_newer_one_is_refused(pg_cluster, pg_dsn) -> None:
    database = pg_dsn.split("?")[0].rsplit("/", 1)[1]
    con = pg_cluster.connect(database)
    try:           # the first schema, as the first massboot with PostgreSQL left it, with a lease
        con.run("CREATE TABLE massboot_schema (version integer NOT NULL)")
        con.run("INSERT INTO massboot_schema VALUES (1)")
        for statement in _MIGRATIONS[1].split(";"):
            if statement.strip():
                con.run(statement)
        con.run("INSERT INTO massboot_scopes (scope, seq) VALUES ('main', 1)")
        con.run("INSERT INTO massboot_leases (scope, mac, ip, state, expires, updated, seq) "
                "VALUES ('main', :m, '10.0.0.12', 'bound', :e, 1, 1)", m=MAC_A, e=T0 * 2)
    finally:
        con.close()
    store = PostgresLeaseStore(pg_dsn, POOL)
    try:
        assert store.get(MAC_A).ip == "10.0.0.12" and store.allocate(MAC_B).ip == "10.0.0.10"
    finally:
        store.close()
    con = pg_cluster.connect(database)
    try:
        assert con.run("SELECT version FROM massboot_schema") == [[SCHEMA_VERSION]] and SCHEMA_VERSION == 2
        assert con.run("SELECT settings <> '' FROM massboot_scopes") == [[True]]
        con.run("UPDATE massboot_schema SET version = 3")
    finally:
        con.close()
    with pytest.raises(LeaseStoreError, match="schema version 3 is newer"):
        PostgresLeaseStore(pg_dsn, POOL)


def test_servers_of_one_pool_with_different_settings_are_warned_about(servers, caplog) -> None:
    caplog.set_level("WARNING", logger="massboot.dhcp.leases")
    servers(2)
    assert not caplog.records                                   # the same settings: quiet
    servers(1, pool=POOL[:5])
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "differ from those of" in warning and "pid" in warning


def test_scopes_are_separate_pools(pg_dsn) -> None:
    main = PostgresLeaseStore(pg_dsn, POOL)
    rack2 = PostgresLeaseStore(pg_dsn, POOL, scope="rack2")
    try:
        assert main.allocate(MAC_A).ip == rack2.allocate(MAC_B).ip == POOL[0]
        assert main.get(MAC_B) is None and rack2.get(MAC_A) is None
    finally:
        main.close()
        rack2.close()


def test_migrate_copies_a_pool_and_every_server_reloads(pg_dsn, servers) -> None:
    (a,) = servers(1)
    a.bind(MAC_A, None, lease_time=600)
    from massboot.dhcp.leases import Lease
    rows = [Lease(MAC_B, "10.0.0.14", state=BOUND, expires=T0 * 2, updated=T0),
            Lease(MAC_C, "10.0.0.15", reserved=True, state=OFFERED)]
    with pytest.raises(LeaseStoreError, match="already has 1 bindings"):
        copy_leases(rows, [], parse_dsn(pg_dsn), "main")
    assert copy_leases(rows, [("10.0.0.16", MAC_A, T0, T0 * 2)], parse_dsn(pg_dsn), "main",
                       replace_existing=True) == 2
    assert a.get(MAC_A) is None and a.get(MAC_B).ip == "10.0.0.14"
    assert a.get(MAC_C).state == RESERVED
    assert a.allocate(MAC_A).ip == "10.0.0.10" and a.allocate(mac(1)).ip == "10.0.0.11"
    assert [a.allocate(mac(n)).ip for n in (2, 3, 4)] == ["10.0.0.12", "10.0.0.13", "10.0.0.17"]


# -- faults ---------------------------------------------------------------------------------


@pytest.fixture
def own_cluster(pg_cluster):
    """A cluster of the test's own, to stop and start (pg_cluster is required: same checks)."""
    cluster = PgCluster().start()
    yield cluster
    cluster.stop(remove=True)


def test_a_database_outage_renews_known_bindings_only_up_to_their_committed_expiry(own_cluster) -> None:
    dsn = own_cluster.create_database("leases") + "&timeout=2&connect_timeout=1"
    clock = Clock()
    store = PostgresLeaseStore(dsn, POOL, clock=clock)
    try:
        bound = store.bind(MAC_A, None, lease_time=600).lease
        offered = store.allocate(MAC_B)
        assert store.database_up
        own_cluster.stop()
        clock.advance(100)
        # a renewal cannot be recorded: granted what is left of the committed lease, no more
        renew = store.bind(MAC_A, bound.ip, lease_time=600)
        assert renew.bound and renew.lease_time == 500 and renew.lease.expires == bound.expires
        assert not store.database_up
        assert store.allocate(MAC_A).ip == bound.ip        # its DISCOVER is answered
        with pytest.raises(LeaseStoreUnavailable):
            store.allocate(MAC_C)                          # a new client is not
        with pytest.raises(LeaseStoreUnavailable):
            store.bind(MAC_B, offered.ip, lease_time=600)  # nor an offer never committed as bound
        with pytest.raises(LeaseStoreUnavailable):
            store.bind(MAC_A, "10.0.0.19", lease_time=600)
        assert store.get(MAC_A).ip == bound.ip and store.by_ip(bound.ip).mac == MAC_A
        clock.advance(600)
        with pytest.raises(LeaseStoreUnavailable):
            store.bind(MAC_A, bound.ip, lease_time=600)    # its committed lease ran out
        own_cluster.start()
        deadline = gevent.get_hub().loop.now() + 20
        while not store.database_up and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.1)
        assert store.database_up                           # back by itself
        assert store.bind(MAC_C, None, lease_time=600).bound
        renewed = store.bind(MAC_A, bound.ip, lease_time=600)
        assert renewed.bound and renewed.lease_time is None and renewed.lease.expires == clock() + 600
    finally:
        store.close()


def test_a_dropped_connection_is_replaced_and_nothing_committed_is_lost(own_cluster) -> None:
    dsn = own_cluster.create_database("leases")
    a = PostgresLeaseStore(dsn, POOL)
    b = PostgresLeaseStore(dsn, POOL)
    try:
        first = a.bind(MAC_A, None, lease_time=600).lease
        con = own_cluster.connect("leases")
        try:       # an administrator ends every session of massboot
            con.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'massboot'")
        finally:
            con.close()
        # the next transaction of each finds its connection closed, opens another at once, and
        # runs on the reloaded pool: no error for the client, no outage
        second = b.bind(MAC_B, None, lease_time=600).lease
        assert second.ip != first.ip and a.get(MAC_B) == second and b.get(MAC_A) == first
        assert a.database_up and b.database_up
    finally:
        a.close()
        b.close()


# -- the DSN ---------------------------------------------------------------------------------


def test_dsn_parsing(tmp_path) -> None:
    t = parse_dsn("postgresql://boot@db.example.net:6543/leases?password_file=pw&sslmode=require"
                  "&timeout=3", base_dir=str(tmp_path))
    assert (t.user, t.host, t.port, t.database, t.sslmode, t.timeout) == \
        ("boot", "db.example.net", 6543, "leases", "require", 3.0)
    assert t.password_file == str(tmp_path / "pw") and t.unix_sock is None
    t = parse_dsn("postgresql://boot@/leases?host=/run/postgresql")
    assert t.unix_sock == "/run/postgresql/.s.PGSQL.5432" and t.host is None and t.sslmode == "disable"
    assert parse_dsn("postgresql://boot@db/leases").sslmode == "disable"
    for bad, why in [("postgresql://boot:secret@db/leases", "password in the URL"),
                     ("postgresql://db/leases?pasword_file=x", "unknown parameter"),
                     ("postgresql://db:99999/leases", "out of range|port"),
                     ("postgresql://db/leases?sslmode=maybe", "sslmode"),
                     ("postgresql://db/leases?sslmode=prefer", "fall back"),
                     ("postgresql://boot@/x?host=/run/postgresql&sslmode=require", "unix socket"),
                     ("postgresql://db/leases?timeout=0", "between")]:
        with pytest.raises(ValueError, match=why) as info:
            parse_dsn(bad)
        assert "secret" not in str(info.value)
    assert redact("postgresql://boot:secret@db/leases") == "postgresql://boot:***@db/leases"


def test_password_comes_from_the_file_or_the_environment(tmp_path, monkeypatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert parse_dsn(f"postgresql://boot@db/x?password_file={tmp_path / 'pw'}").password() == "s3cret"
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert parse_dsn("postgresql://boot@db/x").password() == "from-env"
    with pytest.raises(LeaseStoreError, match="password_file"):
        parse_dsn(f"postgresql://boot@db/x?password_file={tmp_path / 'none'}").password()


def test_an_unreachable_database_at_startup_names_it_and_never_the_password(tmp_path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    from tests.pgserver import free_port

    dsn = f"postgresql://boot@127.0.0.1:{free_port()}/x?password_file={tmp_path / 'pw'}&connect_timeout=1"
    with pytest.raises(LeaseStoreUnavailable, match="cannot connect") as info:
        PostgresLeaseStore(dsn, POOL)
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)


def test_a_reconnection_uses_the_password_read_at_start(pg_cluster, pg_dsn, tmp_path) -> None:
    """As after massboot dropped its privileges: the root-only password file cannot be read."""
    secret = tmp_path / "pw"
    secret.write_text(open(pg_dsn.split("password_file=")[1]).read())
    dsn = pg_dsn.split("?")[0] + f"?password_file={secret}"
    store = PostgresLeaseStore(dsn, POOL)
    try:
        first = store.bind(MAC_A, None, lease_time=600).lease
        secret.unlink()
        con = pg_cluster.connect(pg_dsn.split("?")[0].rsplit("/", 1)[1])
        try:
            con.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'massboot'")
        finally:
            con.close()
        assert store.bind(MAC_B, None, lease_time=600).bound and store.database_up
        assert store.get(MAC_A) == first
    finally:
        store.close()
