"""What one TFTP transfer costs the server besides its blocks, on a server that keeps running.

A rack asks one server for many small things in a row: a boot loader, its modules, a config
name per MAC, UUID and IP prefix (most of them missing). This bench starts each server once,
sends it ``--rounds`` waves of ``--clients`` simultaneous requests per kind, the servers taking
turns wave by wave, and divides the server's CPU time in each wave (every thread's, in
nanoseconds, from ``/proc/PID/task/*/schedstat``) by the requests in it:

* ``16K``: a 16 KiB file, blksize 1428 + tsize, lock-step (the OACK, 12 blocks, the last ACK);
* ``missing``: a name that does not exist (the RRQ, the lookup, ERROR 1).

Unlike ``bench/tftp_bench.py``, whose servers start afresh for each round, a server here has
served the waves before: what a warm server keeps from one request to the next counts (README
"Per-transfer cost"). It runs on the host's loopback with free unprivileged ports (no root, no
dnsmasq: its TFTP port is fixed at 69; ``bench/tftp_bench.py --size 16K`` compares with it).

    python bench/tftp_cost.py --massboot-tree previous=../previous --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: F401

from bench import loadgen, paired
from bench.proctree import stop_process
from bench.tftp_bench import MASSBOOT_CONFIG, TREE_MASSBOOT, free_port, probe
from bench.tftp_client import LoadSpec, run_load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("16K", "missing")


@dataclass
class Server:
    """One running server."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def cpu(self) -> float:
        """CPU-seconds of every thread of the server process so far."""
        total = 0
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:  # a thread that just ended
                continue
        return total / 1e9

    def stop(self) -> None:
        stop_process(self.proc)


def start(name: str, tree: str | None, work: str, root: str) -> Server:
    """Start massboot (this checkout, or *tree*) on a free port serving *root*."""
    port = free_port()
    config = os.path.join(work, f"{name}.ini")
    with open(config, "w") as f:
        f.write(MASSBOOT_CONFIG.format(port=port, root=root, processes=1))
    cmd = ([sys.executable, "-c", TREE_MASSBOOT, tree] if tree else [sys.executable, "-m", "massboot"])
    log = open(os.path.join(work, f"{name}.log"), "ab")
    proc = subprocess.Popen([*cmd, "-t", "-c", config], cwd=REPO, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    log.close()
    server = Server(name, proc, port)
    if not probe(port, 20.0) or proc.poll() is not None:
        server.stop()
        with open(os.path.join(work, f"{name}.log"), errors="replace") as f:
            raise RuntimeError(f"{name} did not start:\n{f.read()[-2000:]}")
    return server


def wave(server: Server, kind: str, clients: int, workers: int, sha: str, sources: int) -> float:
    """One wave of *clients* requests of *kind*; the server's CPU µs per request."""
    if kind == "16K":
        spec = LoadSpec(("127.0.0.1", server.port), "16k.bin", 16384, sha, verify_every=10,
                        sources=sources)
    else:
        spec = LoadSpec(("127.0.0.1", server.port), "missing.bin", 0, "", verify_every=0,
                        sources=sources)
    before: list[float] = []
    result = run_load(spec, clients, workers, before_start=lambda: before.append(server.cpu()))
    time.sleep(0.1)  # the last transfers' end
    used = server.cpu() - before[0]
    expected = result.ok if kind == "16K" else result.failures.get("error File not found", 0)
    if expected != clients:
        raise RuntimeError(f"{server.name} {kind}: {expected}/{clients} answered as expected "
                           f"({result.failures})")
    return used / clients * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500, help="simultaneous requests per wave")
    parser.add_argument("--rounds", type=int, default=8, help="waves per server and kind")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--sources", type=int, default=16,
                        help="clients send from 127.0.0.1 .. 127.0.0.N in turn")
    parser.add_argument("--massboot-tree", metavar="NAME=PATH", action="append", default=[],
                        help="massboot from another checkout too (e.g. previous=../previous)")
    parser.add_argument("--json", metavar="FILE", help="write every wave's figure as JSON")
    args = parser.parse_args()
    trees: list[tuple[str, str | None]] = [("massboot", None)]
    for item in args.massboot_tree:
        name, _, path = item.partition("=")
        if not name or not path or not os.path.isdir(path):
            parser.error(f"--massboot-tree {item!r}: NAME=PATH of a checkout")
        trees.append((name, os.path.abspath(path)))
    work = tempfile.mkdtemp(prefix="tftp-cost-")
    servers: list[Server] = []
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        data = os.urandom(16384)
        with open(os.path.join(root, "16k.bin"), "wb") as f:
            f.write(data)
        sha = loadgen.file_digest(os.path.join(root, "16k.bin"))[1]
        servers = [start(name, tree, work, root) for name, tree in trees]
        figures: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k in KINDS} for s in servers}
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            for kind in KINDS:
                for server in servers[shift:] + servers[:shift]:  # each server in each slot in turn
                    cost = wave(server, kind, args.clients, args.workers, sha, args.sources)
                    figures[server.name][kind].append(cost)
                    print(f"round {rnd + 1} {server.name:<10} {kind:<8} {cost:7.1f} µs per request",
                          flush=True)
        first = servers[0].name
        print(f"\nserver CPU per request, {args.clients} simultaneous requests a wave, median of "
              f"{args.rounds} waves; per wave, times {first}'s in the same round: median (geomean, "
              "waves >= 1, two-sided sign-flip p of the mean log ratio, bench/paired.py)")
        for kind in KINDS:
            for server in servers:
                values = figures[server.name][kind]
                line = f"{kind:<8} {server.name:<10} {statistics.median(values):7.1f} µs"
                if server.name != first:
                    line += "  " + paired.compare(zip(values, figures[first][kind], strict=True)).describe()
                print(line)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"clients": args.clients, "rounds": args.rounds, "figures": figures}, f,
                          indent=1)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
