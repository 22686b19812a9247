"""DORA/s on each lease store, side by side with Kea on the same PostgreSQL (README, "Performance").

Run through ``bench/lease_db_bench.sh`` (root): it makes a network namespace of its own and runs
this script inside it, so PostgreSQL, the DHCP servers and ISC perfdhcp all live on that
namespace's loopback (no host port is touched). One private PostgreSQL cluster
(``tests/pgserver.py``: initdb in a temporary directory, as ``nobody``) serves every run; each
run gets a fresh database (and a fresh SQLite file). For each target and each offered rate:

* ``massboot sqlite``: one massboot, SQLite (the default);
* ``massboot pg``: one massboot, ``lease_db = postgresql://...``;
* ``massboot pg x3``: three massboots on one PostgreSQL pool, each fed a third of the rate by
  its own perfdhcp (its own relay address and MAC range): the fleet's aggregate. On 2 cores
  it measures contention on the pool's lock and the CPU, not scale;
* ``kea pg``: Kea's kea-dhcp4 (Debian kea-dhcp4-server) with its PostgreSQL lease backend,
  schema by ``kea-admin db-init pgsql``, single-threaded as packaged.

``perfdhcp -4 -l RELAY -r RATE -R CLIENTS -p PERIOD -W 2000000 SERVER``: DORA exchanges
completed per second of the period and the drop ratios; the best rate with < 1 % drops in both
directions is each target's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.pgserver import PASSWORD, SUPERUSER, PgCluster  # noqa: E402

SERVER_ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
RELAYS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MASSBOOT_INI = """\
[massboot]
state_dir = {state_dir}

[logger]
type = stderr
level = warning

[bootpd]
address = {address}
port = 67
pool_start = 127.1.0.1
pool_count = {pool_count}
lease_time = 3600
lease_db = {lease_db}
allow_simple_dhcp = on

[bootfile]
default = pxelinux.0

[tftpd]
address = {address}
port = 6969
root = {root}

[metrics]
address = {address}
port = 9469
"""


def kea_config(pool_count: int, port: int, database: str, workdir: str) -> dict:
    last = 0x7F010001 + pool_count - 1
    end = ".".join(str(last >> s & 255) for s in (24, 16, 8, 0))
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": [f"lo/{SERVER_ADDRESSES[0]}"], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "postgresql", "name": database, "host": "127.0.0.1", "port": port,
                           "user": SUPERUSER, "password": PASSWORD},
        "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
        "subnet4": [{"id": 1, "subnet": "127.0.0.0/8", "pools": [{"pool": f"127.1.0.1 - {end}"}],
                     "relay": {"ip-addresses": list(RELAYS)}}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": os.path.join(workdir, "kea.log")}]}],
    }}


class Target:
    """One server set-up: start() it fresh, stop() it, and where perfdhcp sends."""

    def __init__(self, name: str, servers: int) -> None:
        self.name = name
        self.servers = servers
        self.procs: list[subprocess.Popen[bytes]] = []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def _wait_port(address: str, port: int, proc: subprocess.Popen[bytes], log: str) -> None:
    for _ in range(300):
        out = subprocess.run(["ss", "-Hlun", f"src {address}:{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log, errors="replace") as f:
        raise RuntimeError(f"server did not start:\n{f.read()[-3000:]}")


def ignored_reasons(address: str) -> dict[str, float]:
    """``massboot_dhcp_requests_ignored_total`` by reason, from the server's /metrics."""
    import urllib.request

    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://{address}:9469/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for m in re.finditer(r'^massboot_dhcp_requests_ignored_total\{reason="([^"]+)"\} (\S+)', text, re.M):
        if float(m.group(2)):
            out[m.group(1)] = float(m.group(2))
    return out


class Massboot(Target):
    def __init__(self, name: str, servers: int, store: str, cluster: PgCluster, workdir: str,
                 pool_count: int, python: str) -> None:
        super().__init__(name, servers)
        self.store, self.cluster, self.workdir = store, cluster, workdir
        self.pool_count, self.python = pool_count, python

    def start(self) -> None:
        if self.store == "sqlite":
            lease_db = os.path.join(self.workdir, "leases.sqlite3")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(lease_db + suffix):
                    os.remove(lease_db + suffix)
        else:
            lease_db = self.cluster.create_database("massboot")
        env = dict(os.environ, PYTHONPATH=REPO)
        for n in range(self.servers):
            address = SERVER_ADDRESSES[n]
            ini = os.path.join(self.workdir, f"massboot{n}.ini")
            state_dir = os.path.join(self.workdir, f"state{n}")
            os.makedirs(state_dir, exist_ok=True)
            with open(ini, "w") as f:
                f.write(MASSBOOT_INI.format(address=address, pool_count=self.pool_count, lease_db=lease_db,
                                            root=self.workdir, state_dir=state_dir))
            log = os.path.join(self.workdir, f"massboot{n}.log")
            with open(log, "wb") as out:
                proc = subprocess.Popen([self.python, "-m", "massboot", "-c", ini], stdout=out,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
            self.procs.append(proc)
            _wait_port(address, 67, proc, log)


class Kea(Target):
    def __init__(self, cluster: PgCluster, workdir: str, pool_count: int) -> None:
        super().__init__("kea pg", 1)
        self.cluster, self.workdir, self.pool_count = cluster, workdir, pool_count

    def start(self) -> None:
        self.cluster.create_database("kea")
        init = subprocess.run(["kea-admin", "db-init", "pgsql", "-u", SUPERUSER, "-p", PASSWORD, "-n", "kea",
                               "-h", "127.0.0.1", "-P", str(self.cluster.port)],
                              capture_output=True, text=True)
        if init.returncode:
            raise RuntimeError(f"kea-admin db-init failed: {init.stdout}{init.stderr}")
        path = os.path.join(self.workdir, "kea-dhcp4.json")
        with open(path, "w") as f:
            json.dump(kea_config(self.pool_count, self.cluster.port, "kea", self.workdir), f, indent=1)
        env = dict(os.environ, KEA_PIDFILE_DIR=self.workdir, KEA_LOCKFILE_DIR=self.workdir)
        log = os.path.join(self.workdir, "kea.out")
        with open(log, "wb") as out:
            proc = subprocess.Popen(["kea-dhcp4", "-c", path], stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        _wait_port(SERVER_ADDRESSES[0], 67, proc, log)


def perfdhcp(relay: str, server: str, rate: float, clients: int, period: int, mac_base: str,
             out: str) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(["perfdhcp", "-4", "-l", relay, "-r", str(rate), "-R", str(clients),
                                 "-p", str(period), "-W", "2000000", "-b", f"mac={mac_base}", server],
                                stdout=f, stderr=subprocess.STDOUT)


def parse_perfdhcp(text: str) -> dict[str, float]:
    part, figures = None, {}
    for line in text.splitlines():
        if "Statistics for: DISCOVER-OFFER" in line:
            part = "do"
        elif "Statistics for: REQUEST-ACK" in line:
            part = "ra"
        elif part and (m := re.match(r"(sent|received) packets: (\d+)", line)):
            figures[f"{part}_{m.group(1)}"] = int(m.group(2))
    return figures


def run_one(target: Target, rate: int, clients: int, period: int, workdir: str) -> dict:
    target.start()
    try:
        time.sleep(0.5)
        cpu0 = target.cpu_seconds()
        share = max(1, round(rate / target.servers))
        runs = [perfdhcp(RELAYS[n], SERVER_ADDRESSES[n], share, clients, period,
                         f"02:{n + 1:02x}:00:00:00:00", os.path.join(workdir, f"perfdhcp{n}.out"))
                for n in range(target.servers)]
        for proc in runs:
            proc.wait(timeout=period + 120)
        cpu1 = target.cpu_seconds()
        ignored: dict[str, float] = {}
        if isinstance(target, Massboot):
            for n in range(target.servers):
                for reason, count in ignored_reasons(SERVER_ADDRESSES[n]).items():
                    ignored[reason] = ignored.get(reason, 0) + count
    finally:
        target.stop()
    total: dict[str, float] = {}
    for n in range(target.servers):
        with open(os.path.join(workdir, f"perfdhcp{n}.out"), errors="replace") as f:
            text = f.read()
        figures = parse_perfdhcp(text)
        if not figures:
            raise RuntimeError(f"perfdhcp said:\n{text[-2000:]}")
        for key, value in figures.items():
            total[key] = total.get(key, 0) + value
    do_sent, do_recv = total.get("do_sent", 0), total.get("do_received", 0)
    ra_sent, ra_recv = total.get("ra_sent", 0), total.get("ra_received", 0)
    return {"target": target.name, "rate": rate, "dora_per_s": ra_recv / period,
            "do_drops": 100.0 * (1 - do_recv / do_sent) if do_sent else 100.0,
            "ra_drops": 100.0 * (1 - ra_recv / ra_sent) if ra_sent else 100.0,
            "done": ra_recv, "started": do_sent, "server_cpu_s": cpu1 - cpu0, "ignored": ignored}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="250,500,1000,1500,2000",
                        help="offered DISCOVERs per second, comma-separated (%(default)s)")
    parser.add_argument("--period", type=int, default=10, help="seconds per run (%(default)s)")
    parser.add_argument("--clients", type=int, default=20000, help="perfdhcp -R (%(default)s)")
    parser.add_argument("--targets", default="massboot-sqlite,massboot-pg,massboot-pg-x3,kea-pg")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    workdir = tempfile.mkdtemp(prefix="massboot-leasebench-")
    os.chmod(workdir, 0o755)
    cluster = PgCluster().start()
    results = []
    try:
        pool = args.clients * 2 + 1000
        python = sys.executable
        targets = {
            "massboot-sqlite": Massboot("massboot sqlite", 1, "sqlite", cluster, workdir, pool, python),
            "massboot-pg": Massboot("massboot pg", 1, "pg", cluster, workdir, pool, python),
            "massboot-pg-x3": Massboot("massboot pg x3", 3, "pg", cluster, workdir, pool, python),
            "kea-pg": Kea(cluster, workdir, pool),
        }
        print(f"{'target':16} {'rate':>6} {'DORA/s':>8} {'DO drops':>9} {'RA drops':>9} {'done':>14} "
              f"{'CPU-s':>6}")
        for name in args.targets.split(","):
            for rate in rates:
                r = run_one(targets[name], rate, args.clients, args.period, workdir)
                results.append(r)
                print(f"{r['target']:16} {rate:6d} {r['dora_per_s']:8.0f} {r['do_drops']:8.2f}% "
                      f"{r['ra_drops']:8.2f}% {r['done']:6.0f}/{r['started']:<7.0f} {r['server_cpu_s']:6.1f} "
                      + " ".join(f"{k}={v:.0f}" for k, v in sorted(r["ignored"].items())),
                      flush=True)
        print("\nbest DORA/s with < 1 % drops each way:")
        for name in args.targets.split(","):
            label = targets[name].name
            ok = [r for r in results if r["target"] == label and r["do_drops"] < 1 and r["ra_drops"] < 1]
            best = max(ok, key=lambda r: r["dora_per_s"]) if ok else None
            print(f"  {label:16} " + (f"{best['dora_per_s']:.0f} (offered {best['rate']}/s)" if best
                                      else "none of the rates tried"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        cluster.stop(remove=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
