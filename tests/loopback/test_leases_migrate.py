"""``massboot leases migrate --from sqlite:PATH --to postgresql://...`` keeps every binding
(README, "Several servers"), run as the operator runs it, against a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from massboot.dhcp.leases import PostgresLeaseStore, SqliteLeaseStore
from tests.pgserver import PASSWORD

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
POOL = [f"127.0.0.{i}" for i in range(100, 120)]
STATIC = {"AA:BB:CC:DD:EE:01": "127.0.0.150"}
CONFIG = """
[bootpd]
address = 127.0.0.1
pool_start = 127.0.0.100
pool_count = 20

[bootfile]
default = pxelinux.0

[static_dhcp]
AA-BB-CC-DD-EE-01 = 127.0.0.150
"""


def mac(n: int) -> str:
    return f"02:00:00:00:00:{n:02X}"


def massboot(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massboot", "-c", str(config), "leases", *args],
                          cwd=REPO, env=ENV, text=True, capture_output=True, timeout=60)


def _snapshot(store) -> dict[str, tuple]:
    return {lease.mac: (lease.ip, lease.state, lease.static, lease.reserved, lease.uuid, lease.expires)
            for lease in store.leases()}


def test_migrate_keeps_every_binding_and_the_addresses_on_probation(tmp_path, pg_dsn) -> None:
    config = tmp_path / "massboot.ini"
    config.write_text(CONFIG)
    path = str(tmp_path / "leases.sqlite3")
    old = SqliteLeaseStore(path, POOL, STATIC, decline_probation=3600)
    for n in range(40):                                # more MACs than the pool: some exhausted
        uuid = f"00000000-0000-0000-0000-0000000000{n:02x}"
        if old.bind(mac(n), None, lease_time=600 + n, uuid=uuid).lease is None:
            break
    old.release(mac(1))
    old.free(mac(2))
    old.decline(mac(3), POOL[3])
    old.reserve(mac(60), POOL[2])                      # mac(2)'s address, freed: reserved for another
    old.allocate("AA:BB:CC:DD:EE:01")
    old.bind("AA:BB:CC:DD:EE:01", None, lease_time=600)
    before = _snapshot(old)
    old.close()
    assert len(before) >= 19

    out = massboot(config, "migrate", "--from", f"sqlite:{path}", "--to", pg_dsn)
    assert out.returncode == 0, out.stderr
    assert f"migrated {len(before)} bindings and 1 declined addresses" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr

    new = PostgresLeaseStore(pg_dsn, POOL, STATIC, decline_probation=3600)
    try:
        assert _snapshot(new) == before
        offered = new.allocate(mac(99))                 # the pool is full but for probation
        assert offered is None or offered.ip != POOL[3]
        assert new.by_ip(POOL[2]).mac == mac(60)
    finally:
        new.close()

    # a second run refuses to merge into a pool that has bindings; --replace overwrites it
    again = massboot(config, "migrate", "--from", f"sqlite:{path}", "--to", pg_dsn)
    assert again.returncode == 1 and "already has" in again.stderr
    replaced = massboot(config, "migrate", "--from", f"sqlite:{path}", "--to", pg_dsn, "--replace")
    assert replaced.returncode == 0, replaced.stderr


def test_migrate_from_the_oldest_schema_and_bad_arguments(tmp_path, pg_dsn) -> None:
    config = tmp_path / "massboot.ini"
    config.write_text(CONFIG)
    path = tmp_path / "v0.sqlite3"
    shutil.copyfile(REPO / "tests" / "data" / "leases-v0.sqlite3", path)
    out = massboot(config, "migrate", "--from", f"sqlite:{path}", "--to", pg_dsn, "--scope", "rack2")
    assert out.returncode == 0, out.stderr
    assert "scope rack2" in out.stdout
    assert path.read_bytes() == (REPO / "tests" / "data" / "leases-v0.sqlite3").read_bytes()  # only read
    missing = massboot(config, "migrate", "--from", f"sqlite:{tmp_path / 'none'}", "--to", pg_dsn)
    assert missing.returncode == 1 and "no such lease database" in missing.stderr
    bad = massboot(config, "migrate", "--from", f"sqlite:{path}", "--to", "postgresql://u:pw@h/db")
    assert bad.returncode == 2 and "password in the URL" in bad.stderr and ":pw@" not in bad.stderr
    no_target = massboot(config, "migrate", "--from", f"sqlite:{path}")
    assert no_target.returncode == 2 and "--to" in no_target.stderr


def test_check_config_logs_in_and_reads_the_schema_version(tmp_path, pg_dsn) -> None:
    from tests.pgserver import free_port

    def check(dsn: str) -> subprocess.CompletedProcess:
        config = tmp_path / "massboot.ini"
        config.write_text(CONFIG.replace("pool_count = 20\n", f"pool_count = 20\nlease_db = {dsn}\n"))
        return subprocess.run([sys.executable, "-m", "massboot", "-c", str(config), "--check-config"],
                              cwd=REPO, env=ENV, text=True, capture_output=True, timeout=60)

    empty = check(pg_dsn)
    assert empty.returncode == 0 and "reachable, empty" in empty.stdout, empty.stderr
    PostgresLeaseStore(pg_dsn, POOL).close()
    ready = check(pg_dsn)
    assert ready.returncode == 0 and "reachable, schema version 2" in ready.stdout
    port = pg_dsn.split("@127.0.0.1:")[1].split("/")[0]
    away = check(pg_dsn.replace(f":{port}/", f":{free_port()}/") + "&connect_timeout=1")
    assert away.returncode == 1 and "cannot connect" in away.stderr and PASSWORD not in away.stderr
