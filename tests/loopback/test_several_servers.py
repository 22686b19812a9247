"""Several massboot servers, one lease pool in PostgreSQL (README, "Several servers").

Three massboot processes on loopback (one address, their own ports), the same config, their
leases in one throwaway PostgreSQL; the rack simulator's relay forwards every request to all
three (a relay with three helper addresses), its firmware takes the first OFFER and starts the
boot again from DISCOVER after a timeout, as firmware set to retry network boot does. Checked
at the end, against the simulator's records and the database: every client booted, no address
held by two MACs, each client's OS phase got its PXE phase's address, and the database's
binding of each MAC is that address. Then the same with one server killed (SIGKILL) in the
middle of the boot, and with the database restarted in the middle of the boot.
"""

from __future__ import annotations

import os
import signal
import time

import gevent
import pytest

from bench.sim.options import Options
from bench.sim.rack import run
from bench.sim.servers import ServerProcess, make_root
from tests.pgserver import PgCluster

CLIENTS = 500
SIZES = {"bootfile_size": 8 << 10, "kernel_size": 24 << 10, "initrd_size": 24 << 10}


class Fleet:
    """*n* massboot processes sharing the lease database *dsn*."""

    def __init__(self, workdir: str, dsn: str, n: int = 3, clients: int = CLIENTS,
                 sizes: dict[str, int] = SIZES) -> None:  # noqa: B006 (read only)
        root = os.path.join(workdir, "root")
        make_root(root, sizes["bootfile_size"], sizes["kernel_size"], sizes["initrd_size"])
        self.servers = []
        for i in range(n):
            path = os.path.join(workdir, f"server{i}")
            os.makedirs(path)
            self.servers.append(ServerProcess(path, root, clients, "info", lease_db=dsn))
        for server in self.servers:
            server.start()

    def addresses(self) -> list[tuple[str, int, int]]:
        return [("127.0.0.1", s.dhcp_port, s.tftp_port) for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def logs(self) -> str:
        return "\n".join(f"--- server {i}\n{s.log_tail(30)}" for i, s in enumerate(self.servers))


@pytest.fixture
def fleet(tmp_path):
    made: list[Fleet] = []

    def make(dsn: str, **kwargs) -> Fleet:
        f = Fleet(str(tmp_path), dsn, **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def _boot(fleet: Fleet, clients: int = CLIENTS, ramp: float = 4.0, seed: int = 3):
    opts = Options(clients=clients, mix={"bios": 1, "uefi": 1, "ipxe": 2}, ramp=ramp, seed=seed,
                   servers=fleet.addresses(), boot_retries=4, timeout_scale=0.25, duration=240,
                   progress=False)
    return run(opts)


def _bindings(cluster: PgCluster, database: str) -> dict[str, tuple[str, str]]:
    con = cluster.connect(database)
    try:
        rows = con.run("SELECT mac, ip, state FROM massboot_leases WHERE scope = 'main'")
    finally:
        con.close()
    return {mac.lower(): (ip, state) for mac, ip, state in rows}


def _check(summary, bindings: dict[str, tuple[str, str]], fleet: Fleet) -> None:
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and not failures, (list(failures.items())[:10], fleet.logs())
    ips = [r.ip for r in summary.results]
    assert len(set(ips)) == len(ips)                                 # no address held by two MACs
    assert all(r.os_ip == r.ip for r in summary.results)              # same address in both phases
    for r in summary.results:                                         # and so says the database
        assert bindings[r.mac] == (r.ip, "bound"), (r.mac, r.ip, bindings.get(r.mac))
    assert len({ip for ip, _ in bindings.values()}) == len(bindings)


def _timeline(summary, started: float, events: list[tuple[str, float]]) -> str:
    """One line for the report: the fault's times and what the clients went through."""
    retried = [r for r in summary.results if r.boot_retries]
    booted = sorted(r.marks["booted"] for r in summary.results)
    parts = [f"{name} at {at - started:.2f} s" for name, at in events]
    parts += [f"{len(retried)} clients started their boot again ({sum(r.boot_retries for r in retried)} "
              f"retries)", f"last booted at {booted[-1]:.2f} s", f"run {summary.elapsed:.1f} s"]
    return "timeline: " + ", ".join(parts)


def _database(dsn: str) -> str:
    return dsn.split("?")[0].rsplit("/", 1)[1]


def test_three_servers_one_pool_every_client_boots_once(pg_cluster, pg_dsn, fleet) -> None:
    f = fleet(pg_dsn)
    summary = _boot(f)
    _check(summary, _bindings(pg_cluster, _database(pg_dsn)), f)
    # every server answered: the first OFFER a client took came from any of the three
    acks = [s.log_text().count("ack mac=") for s in f.servers]
    assert all(n > 0 for n in acks), acks
    assert summary.dhcp_exchanges >= 2 * CLIENTS


def test_a_server_killed_mid_boot_every_client_still_boots(pg_cluster, pg_dsn, fleet) -> None:
    # larger files: a boot lasts long enough for many to be in flight with the victim
    f = fleet(pg_dsn, sizes={"bootfile_size": 8 << 10, "kernel_size": 256 << 10, "initrd_size": 256 << 10})
    victim = f.servers[1]
    killed: list[float] = []

    def kill_later() -> None:
        gevent.sleep(1.0)                          # half the rack is powered on by then
        os.kill(victim.process.pid, signal.SIGKILL)
        killed.append(time.monotonic())

    killer = gevent.spawn(kill_later)
    started = time.monotonic()
    summary = _boot(f, ramp=2.0, seed=4)
    killer.get(timeout=5)
    print(_timeline(summary, started, [("server 1 SIGKILLed", killed[0])]))
    assert killed and victim.process.wait(timeout=10) == -signal.SIGKILL
    _check(summary, _bindings(pg_cluster, _database(pg_dsn)), f)
    # some clients were caught by it: their boot started again and went to another server
    assert sum(r.boot_retries for r in summary.results) > 0


def test_the_database_restarted_mid_boot_loses_nothing_and_service_resumes(pg_cluster, fleet) -> None:
    cluster = PgCluster().start()
    try:
        dsn = cluster.create_database("leases") + "&timeout=3&connect_timeout=2"
        f = fleet(dsn)
        outage: list[float] = []

        def restart_later() -> None:
            gevent.sleep(1.5)
            outage.append(time.monotonic())
            cluster.stop()                         # fast shutdown: sessions are ended
            gevent.sleep(1.0)                      # the database is away for a second
            cluster.start()
            outage.append(time.monotonic())

        restarter = gevent.spawn(restart_later)
        started = time.monotonic()
        summary = _boot(f, ramp=4.0, seed=5)
        restarter.get(timeout=60)
        assert len(outage) == 2
        print(_timeline(summary, started, [("database stopped", outage[0]), ("started", outage[1])]))
        _check(summary, _bindings(cluster, "leases"), f)
        logs = [s.log_text() for s in f.servers]
        # the servers noticed, and came back by themselves
        assert any("unreachable" in text for text in logs), f.logs()
        assert all("reachable again" in text for text, s in zip(logs, f.servers, strict=True)
                   if "unreachable" in text), f.logs()
    finally:
        cluster.stop(remove=True)
