"""HTTP servers side by side: massboot's ``-H`` file server against nginx (issue 12).

One run measures every server the same way, one after the other and round after round, each
server taking each slot in turn (so a noisy neighbour hurts them all alike), on 127.0.0.1 with
the same files in the same directory:

* **Download storm**: ``--clients`` connections opened at once, one ``GET`` each, every one a
  whole ``--size`` file (``--files`` distinct files of that size, client i reading file
  i mod N). Figures: aggregate MB/s (10^6 bytes/s, first connect to last byte), failures,
  p50/p95/max download time (connect to last byte), p95 time to the first response byte, the
  server's CPU-seconds per 100 MB (10^8 bytes) and its peak RSS, the load generator's CPU.

The servers, each started by the bench on a free loopback port and stopped after its turn:

* ``massboot``: ``python -m massboot -t -H -c CONF`` from this checkout, ``[tftpd] root`` the
  directory, ``[httpd] address 127.0.0.1``, its port, ``check_ip = off`` (the generator has no
  lease), ``max_per_client`` lifted (every connection comes from 127.0.0.1; nginx has no such
  cap), ``max_connections`` above ``--clients``, and no ``root`` (so it serves the TFTP root,
  through the same file store), logging at ``warning``.
* ``nginx``: the Debian package as a private instance (``bench/nginx.py``): temporary prefix,
  ``worker_processes 1``, ``sendfile on``, ``access_log off``, never the system service.
* ``--extra-server NAME=COMMAND``: any other server (a massboot branch, a prototype) serving
  ``{root}`` on ``127.0.0.1:{port}`` in the foreground.

Server CPU is utime+stime from ``/proc/PID/stat`` of every process in the server's tree (nginx:
master and worker) before and after the storm, plus what the root reaped (cutime); peak RSS is
the sum of the tree's ``VmHWM`` at the end of the storm (one fresh server per round).

The load generator (``bench/http_client.py``) is a few forked processes, each one epoll loop,
no greenlets; unhashed bodies are received with ``MSG_TRUNC`` (counted, not copied), every
``--verify-every``-th one is copied and its sha256 checked, every size is checked. Its CPU is
reported beside the server's, so that one can see it is not the bottleneck.

    python bench/http_bench.py --clients 500 --size 16M --servers massboot,nginx --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: F401

from bench.http_client import HttpLoadResult, HttpLoadSpec, run_load  # noqa: E402
from bench.loadgen import parse_size  # noqa: E402
from bench.nginx import Nginx, NginxError, free_tcp_port, nginx_binary, nginx_version  # noqa: E402
from bench.proctree import host_cpu, stop_process, tree_cpu, tree_peak_rss_mib  # noqa: E402
from bench.tftp_bench import free_port, machine, median, size_label  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # massboot runs from here
ALL_SERVERS = ("massboot", "nginx")

MASSBOOT_CONFIG = """\
[logger]
level = warning
[tftpd]
address = 127.0.0.1
port = {tftp_port}
root = {root}
[httpd]
address = 127.0.0.1
port = {port}
check_ip = off
max_per_client = 100000
max_connections = {max_connections}
"""


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server: its root process and how to stop it."""

    name: str
    pid: int
    port: int
    stop: Any  # callable
    log: str


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-2000:]
    except OSError:
        return ""


def massboot_http_missing() -> str | None:
    """Why this checkout's massboot cannot serve HTTP, or None (``-H`` still a no-op)."""
    out = subprocess.run([sys.executable, "-m", "massboot", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    if "not provided yet" in out.stdout:
        return "this massboot accepts -H and serves nothing yet (issue 12's server is not merged)"
    return None


def start_server(name: str, root: str, work: str, extra: dict[str, str], clients: int = 500) -> Server:
    """Start *name* on a free loopback port, serving *root*; wait until it accepts connections.

    Raises:
        RuntimeError: it did not start (with its log's tail).
    """
    port = free_tcp_port()
    if name == "nginx":
        nginx = Nginx(os.path.join(work, f"nginx-{port}"), root, port=port)
        try:
            nginx.start()
        except NginxError as exc:
            raise RuntimeError(str(exc)) from exc
        return Server(name, nginx.pid, port, nginx.stop, os.path.join(nginx.prefix, "error.log"))
    log = os.path.join(work, f"{name}-{port}.log")
    if name == "massboot":
        config = os.path.join(work, f"massboot-{port}.ini")
        with open(config, "w") as f:
            f.write(MASSBOOT_CONFIG.format(port=port, tftp_port=free_port(), root=root,
                                           max_connections=max(1024, clients + 64)))
        argv = [sys.executable, "-m", "massboot", "-t", "-H", "-c", config]
    elif name in extra:
        argv = [part.format(root=root, port=port) for part in shlex.split(extra[name])]
    else:
        raise ValueError(f"unknown server {name}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    if not _wait_listening(port, proc, 30.0):
        stop_process(proc)
        raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port}:\n{_tail(log)}")
    return Server(name, proc.pid, port, lambda: stop_process(proc), log)


# ----------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One storm against one server."""

    server: str
    round: int
    load: HttpLoadResult
    server_cpu: float
    peak_rss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)

    def per_100mb(self, cpu: float) -> float:
        """CPU-seconds per 10^8 bytes served successfully."""
        return cpu / (self.load.bytes_ok / 1e8) if self.load.bytes_ok else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"server": self.server, "round": self.round, "server_cpu": self.server_cpu,
                "server_cpu_per_100mb": self.per_100mb(self.server_cpu),
                "gen_cpu_per_100mb": self.per_100mb(self.load.gen_cpu), "peak_rss_mib": self.peak_rss_mib,
                **self.load.as_dict(), **self.extra}


def measure(server: Server, spec: HttpLoadSpec, clients: int, workers: int) -> Sample:
    """One storm against *server*: the figures, its CPU over the storm and its peak RSS."""
    before: list[Any] = []
    load = run_load(spec, clients, workers,
                    before_start=lambda: before.extend((tree_cpu(server.pid), host_cpu(), time.monotonic())))
    busy, softirq = host_cpu()
    wall = time.monotonic() - before[2]
    time.sleep(0.2)  # the server's last bookkeeping
    cpu = tree_cpu(server.pid) - before[0]
    host = {"host_cores": (busy - before[1][0]) / wall, "host_softirq_cores": (softirq - before[1][1]) / wall}
    return Sample(server.name, -1, load, cpu, tree_peak_rss_mib(server.pid), host)


def make_files(root: str, size: int, count: int) -> list[tuple[str, int, str]]:
    """*count* files of *size* pseudo-random bytes in *root*: ``(path, size, sha256)``."""
    files = []
    for i in range(count):
        name = f"bench-{size_label(size)}-{i}.bin"
        digest = hashlib.sha256()
        rng = random.Random(size * 1000 + i)
        with open(os.path.join(root, name), "wb") as f:
            left = size
            while left:
                chunk = rng.randbytes(min(left, 1 << 20))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        os.chmod(os.path.join(root, name), 0o644)
        files.append(("/" + name, size, digest.hexdigest()))
    return files


# ----------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or NaN."""
    return a / b if b and b == b else float("nan")


def storm_table(samples: list[Sample], names: list[str], clients: int, size: int, files: int) -> str:
    """The storm table: medians over rounds, ratios to nginx."""
    head = (f"{'server':<10} {'MB/s':>7} {'x ngx':>6} {'ok':>9} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
            f"{'ttfb95':>7} {'srv CPU-s':>9} {'x ngx':>6} {'srv cores':>9} {'peak RSS':>9} {'gen CPU-s':>9} "
            f"{'gen cores':>9} {'host':>5} {'sirq':>5}")
    lines = [f"Download storm: {clients} connections at once, one GET each of a {size_label(size)} file "
             f"({files} distinct), loopback; medians of rounds. MB/s = 10^6 B/s; times per download "
             "(connect to last byte), ttfb95 = p95 to the first response byte (s); CPU-s per 100 MB; "
             "x ngx = ratio to nginx's; cores = CPU-s / wall; peak RSS = the tree's VmHWM, MiB; "
             "host = the whole machine's busy cores during the storm, sirq = its softirq share (loopback TCP "
             "delivery, charged to no process); ok summed over rounds",
             head, "-" * len(head)]

    def med(rows: list[Sample], key: Any) -> float:
        return median([key(s) for s in rows])

    base = [s for s in samples if s.server == "nginx"]
    base_mbps = med(base, lambda s: s.load.mbps) if base else float("nan")
    base_cpu = med(base, lambda s: s.per_100mb(s.server_cpu)) if base else float("nan")
    for name in names:
        rows = [s for s in samples if s.server == name]
        if not rows:
            continue
        mbps = med(rows, lambda s: s.load.mbps)
        cpu = med(rows, lambda s: s.per_100mb(s.server_cpu))
        ok = sum(s.load.ok for s in rows)
        total = sum(s.load.clients for s in rows)
        lines.append(
            f"{name:<10} {mbps:7.1f} {ratio(mbps, base_mbps):6.2f} {f'{ok}/{total}':>9} "
            f"{med(rows, lambda s: s.load.p50):7.2f} {med(rows, lambda s: s.load.p95):7.2f} "
            f"{med(rows, lambda s: s.load.max):7.2f} {med(rows, lambda s: s.load.ttfb_p95):7.2f} "
            f"{cpu:9.3f} {ratio(cpu, base_cpu):6.2f} {med(rows, lambda s: s.server_cpu / s.load.wall):9.2f} "
            f"{med(rows, lambda s: s.peak_rss_mib):9.1f} "
            f"{med(rows, lambda s: s.per_100mb(s.load.gen_cpu)):9.3f} "
            f"{med(rows, lambda s: s.load.gen_cpu / s.load.wall):9.2f} "
            f"{med(rows, lambda s: s.extra['host_cores']):5.2f} "
            f"{med(rows, lambda s: s.extra['host_softirq_cores']):5.2f}")
    failures: collections.Counter[str] = collections.Counter()
    for s in samples:
        failures.update({f"{s.server}: {k}": v for k, v in s.load.failures.items()})
    if failures:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in failures.most_common()))
    checked = sum(s.load.sha_checked for s in samples)
    lines.append(f"verified: every download's size; sha256 of {checked} downloads")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """The measurements; returns 0 when every download of every round succeeded."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    size = parse_size(args.size)
    extra = dict(item.split("=", 1) for item in args.extra_server)
    out: dict[str, Any] = {"machine": machine(), "args": vars(args), "samples": []}
    out["machine"]["versions"]["nginx"] = nginx_version()
    order: list[str] = []
    for name in names:
        why = None
        if name == "nginx" and not nginx_binary():
            why = "nginx not installed (apt-get install nginx)"
        elif name == "massboot":
            why = massboot_http_missing()
        elif name not in ALL_SERVERS and name not in extra:
            why = f"unknown server (known: {', '.join(ALL_SERVERS)}, or --extra-server {name}=COMMAND)"
        if why:
            print(f"skipping {name}: {why}", flush=True)
            if args.require_all:
                return 2
            continue
        order.append(name)
    if not order:
        print("no server to measure", file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory(prefix="http-bench-") as work:
        root = os.path.join(work, "root")
        os.mkdir(root)
        for path in (work, root):
            os.chmod(path, 0o755)
        files = make_files(root, size, args.files)
        spec = HttpLoadSpec(("127.0.0.1", 0), tuple(files), verify_every=args.verify_every, copy=args.copy,
                            timeout=args.timeout, deadline=args.deadline)
        print(f"machine: {out['machine']['cpus']} CPUs, {out['machine']['model']}, {out['machine']['date']}; "
              f"nginx {out['machine']['versions'].get('nginx', '?')}; {args.clients} x {size_label(size)}",
              flush=True)
        samples: list[Sample] = []
        for rnd in range(args.rounds):
            shift = rnd % len(order)
            for name in order[shift:] + order[:shift]:  # each server takes each slot in turn
                server = start_server(name, root, work, extra, args.clients)
                try:
                    run_spec = HttpLoadSpec(("127.0.0.1", server.port), spec.files, verify_every=1,
                                            timeout=spec.timeout, deadline=30)
                    warm = run_load(run_spec, min(4, args.clients), 1)  # page cache, first accepts
                    if warm.failed:
                        raise RuntimeError(f"{name}: warm-up downloads failed: {warm.failures}\n"
                                           f"{_tail(server.log)}")
                    run_spec.verify_every, run_spec.copy, run_spec.deadline = (args.verify_every, args.copy,
                                                                               args.deadline)
                    sample = measure(server, run_spec, args.clients, args.workers)
                finally:
                    server.stop()
                sample.round = rnd
                samples.append(sample)
                failed += sample.load.failed
                load = sample.load
                print(f"round {rnd + 1} {name:<10} {load.mbps:8.1f} MB/s {load.ok}/{load.clients} ok "
                      f"p50 {load.p50:.2f} s p95 {load.p95:.2f} s ttfb p95 {load.ttfb_p95:.2f} s "
                      f"srv {sample.per_100mb(sample.server_cpu):.3f} "
                      f"gen {sample.per_100mb(load.gen_cpu):.3f} CPU-s/100MB, "
                      f"peak RSS {sample.peak_rss_mib:.1f} MiB, host {sample.extra['host_cores']:.2f} cores "
                      f"{load.failures or ''}", flush=True)
        report = storm_table(samples, order, args.clients, size, args.files)
        print()
        print(report)
        out["samples"] = [s.as_dict() for s in samples]
        out["report"] = report
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)
    return 0 if failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500, help="connections opened at once (%(default)s)")
    parser.add_argument("--size", default="16M", help="file size, K/M/G (%(default)s)")
    parser.add_argument("--files", type=int, default=1, help="distinct files of that size (%(default)s)")
    parser.add_argument("--servers", default="massboot,nginx",
                        help=f"servers, in order, from {','.join(ALL_SERVERS)} and --extra-server names")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are quoted) (%(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes (%(default)s)")
    parser.add_argument("--verify-every", type=int, default=10, help="sha256 on every Nth download")
    parser.add_argument("--copy", action="store_true",
                        help="the generator copies every body to user space (no MSG_TRUNC)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds without a byte before a download fails (%(default)s)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for one storm at most")
    parser.add_argument("--extra-server", metavar="NAME=COMMAND", action="append", default=[],
                        help="another server to measure (name it in --servers): a command that serves "
                             "{root} on 127.0.0.1:{port} in the foreground")
    parser.add_argument("--require-all", action="store_true",
                        help="exit 2 when a server named cannot run here, instead of skipping it")
    parser.add_argument("--json", metavar="FILE", help="write every sample and the table as JSON")
    args = parser.parse_args(argv)
    if args.json:
        args.json = os.path.abspath(args.json)
    if args.clients < 1 or args.files < 1 or args.rounds < 1:
        parser.error("--clients, --files and --rounds must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
