"""bench/tftp_bench.py's scheduling counters: what they count, and the storm table's columns;
how the compiled generator's command line is made and its report read.

The counters read /proc (this process and the machine), so a thread that sleeps on purpose
shows up in them; the table is built from samples made here.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from bench import loadgen
from bench.tftp_bench import Sample, paired_table, sched_counters, storm_table
from bench.tftp_client import LoadResult, LoadSpec, generator_command, parse_generator_output

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sched_counters_count_the_sleeps_of_every_thread() -> None:
    before = sched_counters(os.getpid())

    def nap() -> None:
        for _ in range(5):
            time.sleep(0.005)

    worker = threading.Thread(target=nap)
    worker.start()
    # read while the thread is alive: the sleeps of a thread that ended leave /proc/PID/task
    while worker.is_alive() and sched_counters(os.getpid())["sleeps"] - before["sleeps"] < 5:
        time.sleep(0.001)
    after = sched_counters(os.getpid())
    worker.join()
    assert after["sleeps"] - before["sleeps"] >= 5
    assert after["ctxt"] - before["ctxt"] >= 5   # the machine's switches include ours
    assert after["ipi"] >= before["ipi"] >= 0


def test_sched_counters_of_a_process_that_is_gone() -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    counted = sched_counters(child)
    assert counted["sleeps"] == 0
    assert counted["ctxt"] > 0


def load(mbps: float, bytes_ok: int = 500 * 2**20) -> LoadResult:
    return LoadResult(clients=500, ok=500, failed=0, failures={}, bytes_ok=bytes_ok, wall=3.0,
                      mbps=mbps, p50=3.0, p95=3.1, client_resends=0, dup_data=0, sha_checked=50,
                      windowsize=1, gen_cpu=2.5)


def test_storm_table_gives_sleeps_and_wakeups_per_100_mb() -> None:
    size = 2**20
    samples = [
        Sample("massboot", "storm", size, 0, load(150.0), 2.8, 0.3,
               extra={"sleeps": 5243, "ctxt": 20000, "ipi": 10486}),
        Sample("massboot", "storm", size, 1, load(160.0), 2.7, 0.3,
               extra={"sleeps": 15729, "ctxt": 40000, "ipi": 31457}),
        Sample("massboot", "storm", size, 2, load(170.0), 2.6, 0.3,
               extra={"sleeps": 10486, "ctxt": 30000, "ipi": 20972}),
        Sample("dnsmasq", "storm", size, 0, load(200.0), 2.5, 0.2,
               extra={"sleeps": 52, "ctxt": 3000, "ipi": 1049}),
    ]
    table = storm_table(samples, [size], ["massboot", "dnsmasq"], 500, pinned=True)
    head = next(line for line in table.splitlines() if line.startswith("server"))
    assert head.split()[-4:] == ["sleeps", "ipi", "gsleeps", "gpreempt"]
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.split() and line.split()[0] in ("massboot", "dnsmasq")}
    # 500 MiB is 5.24 x 100 MB: the median round's 10,486 sleeps are 2,000 per 100 MB
    assert rows["massboot"][-4:-2] == ["2000", "4000"]
    assert rows["dnsmasq"][-4:-2] == ["10", "200"]


def test_storm_table_gives_the_generators_sleeps_and_preemptions_per_100_mb() -> None:
    size = 2**20
    counted = [load(150.0), load(160.0), load(170.0)]
    for result, (sleeps, preempted) in zip(counted, ((20972, 524), (52429, 1049), (31457, 0)), strict=True):
        result.gen_sleeps, result.gen_preempted = sleeps, preempted
    samples = [Sample("massboot", "storm", size, r, result, 2.8, 0.3) for r, result in enumerate(counted)]
    table = storm_table(samples, [size], ["massboot"], 500, pinned=False)
    row = next(line for line in table.splitlines() if line.startswith("massboot")).split()
    assert row[-2:] == ["6000", "100"]   # the medians, 31,457 and 524, per 100 MB (5.24 of them)


def test_switches_count_this_process_waiting() -> None:
    voluntary, involuntary = loadgen.switches()
    for _ in range(3):
        time.sleep(0.002)
    after = loadgen.switches()
    assert after[0] - voluntary >= 3
    assert after[1] >= involuntary


def test_the_generator_counts_its_sleeps_against_a_silent_server() -> None:
    # a "server" that never answers: each wait of a worker's epoll loop is a sleep; the clients
    # give up after one resend. In a subprocess: the generator's epoll loop cannot run in this
    # gevent-patched interpreter.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bench.tftp_client", "--server", f"127.0.0.1:{silent.getsockname()[1]}",
             "--file", "nothing", "--size", "1", "--clients", "2", "--workers", "2", "--timeout", "0.05",
             "--retries", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        silent.close()
    assert run.returncode == 1 and "0/2 ok" in run.stdout, run.stdout + run.stderr
    found = re.search(r"sleeps (\d+), preempted (\d+)", run.stdout)
    assert found, run.stdout
    assert int(found.group(1)) >= 4   # each worker waited at least twice: the RRQ, its resend


def test_storm_table_without_counters_says_nan() -> None:
    size = 2**20
    samples = [Sample("massboot", "storm", size, 0, load(150.0), 2.8, 0.3)]
    table = storm_table(samples, [size], ["massboot"], 500, pinned=False)
    row = next(line for line in table.splitlines() if line.startswith("massboot"))
    assert row.split()[-4:-2] == ["nan", "nan"]


def test_paired_table_compares_each_server_with_massboot_in_the_same_round() -> None:
    size = 2**20
    samples = [Sample("massboot", "storm", size, r, load(mbps), 2.0, 0.2)
               for r, mbps in enumerate((100.0, 200.0, 150.0, 120.0))]
    # dnsmasq: 1.10 times massboot in every round it ran (round 3 lost), half the CPU per byte
    samples += [Sample("dnsmasq", "storm", size, r, load(mbps), 1.0, 0.1)
                for r, mbps in enumerate((110.0, 220.0, 165.0))]
    samples.append(Sample("dnsmasq", "stream", size, 3, load(999.0), 1.0, 0.1))   # not a storm
    table = paired_table(samples, [size], ["dnsmasq", "massboot"])
    assert table.splitlines()[0].startswith("PXE storm round by round against massboot")
    row = table.splitlines()[1]
    assert row.startswith("dnsmasq")
    # 3 rounds all one way: p = 2 / 2 ** 3
    assert "MB/s 1.10x (geomean 1.10, 3/3 rounds >= 1, p = 0.25)" in row, row
    assert "CPU 0.50x (geomean 0.50, 0/3 rounds >= 1, p = 0.25)" in row, row
    assert not any(line.startswith("massboot") for line in table.splitlines()[1:])


def test_paired_table_without_massboot_uses_the_first_server() -> None:
    size = 2**20
    samples = [Sample(name, "storm", size, 0, load(mbps), 2.0, 0.2)
               for name, mbps in (("a", 100.0), ("b", 50.0))]
    table = paired_table(samples, [size], ["a", "b"])
    assert "against a:" in table and "b             1M  MB/s 0.50x" in table, table


def test_a_stale_compiled_module_is_named_as_such(monkeypatch) -> None:
    """A checkout updated without rebuilding keeps an older _fastpath: the bench says so (and how
    to rebuild) instead of calling it not built; a module that is not there is "not built"."""
    from bench.tftp_bench import Env, available
    from massboot.tftp import server

    env = Env(root=".", work=".", port=0, atftpd=None, dnsmasq=None, tftpd_hpa=None, exits=None)
    monkeypatch.setattr(server, "_fastpath", None)
    monkeypatch.setattr(server, "_FAST_PATH_BROKEN", "module API 3, this massboot needs 4")
    stale = available("massboot", env, netns=False)
    assert stale is not None and "does not match this massboot (module API 3" in stale
    assert "build_ext --inplace" in stale and "massboot-python still runs" in stale
    monkeypatch.setattr(server, "_FAST_PATH_BROKEN", None)
    missing = available("massboot", env, netns=False)
    assert missing is not None and "is not built" in missing and "build_ext --inplace" in missing


def test_the_compiled_generators_report_becomes_a_worker_result() -> None:
    report = ("c 10 1 100.0 101.5 3000 0 2 1 \n"
              "c 11 0 100.0 103.0 1428 3 0 0 error Access violation\n"
              "c 12 0 100.0 102.0 0 1 0 1 timeout\n"
              "cpu 0.25 40 3\nend\n")
    result = parse_generator_output(report)
    assert (result.ok, result.bytes_ok, result.durations) == (1, 3000, [1.5])
    assert result.failures == {"error Access violation": 1, "timeout": 1}
    assert result.sha_checked == 1   # clients 10 and 12 compared, 12 failed
    assert (result.client_resends, result.dup_data, result.windowsize_agreed) == (4, 2, [1])
    assert (result.cpu, result.sleeps, result.preempted) == (0.25, 40, 3)
    assert (result.first_start, result.last_end) == (100.0, 103.0)
    with pytest.raises(RuntimeError, match="incomplete"):
        parse_generator_output(report.removesuffix("end\n"))
    with pytest.raises(RuntimeError, match="no cpu line"):
        parse_generator_output("c 10 1 100.0 101.5 3000 0 2 1 \nend\n")


def test_the_compiled_generators_command_line() -> None:
    spec = LoadSpec(("127.0.0.1", 6969), "pxelinux.0", 42, "", blksize=512, tsize=False, timeout=0.5,
                    retries=2, deadline=30.0, sources=4, verify_every=10, local="/srv/pxelinux.0",
                    generator="/tmp/tftp_gen")
    assert generator_command(spec, 250, 250) == [
        "/tmp/tftp_gen", "-s", "127.0.0.1", "-p", "6969", "-f", "pxelinux.0", "-z", "42", "-n", "250",
        "-i", "250", "-b", "512", "-t", "0.5", "-r", "2", "-d", "30.0", "-S", "4", "-T",
        "-v", "10", "-l", "/srv/pxelinux.0"]
    spec.spin = True   # busy-polls instead of sleeping in epoll_wait
    assert "-P" in generator_command(spec, 1, 0)
    spec.windowsize = 8
    with pytest.raises(ValueError, match="lock-step"):
        generator_command(spec, 1, 0)
