"""CPU time and peak memory of a process tree (a server and the children it forked), and of
the whole machine, from ``/proc``: the benches' server figures; and how the benches stop the
servers they started."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

__all__ = ["host_cpu", "stop_process", "tree_cpu", "tree_peak_rss_mib", "tree_pids"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """*pid* and its descendants (from ``/proc/PID/task/TID/children``)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def _stat_fields(pid: int) -> list[int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # after "(comm) ": field 3 (state) is index 0; utime, stime, cutime, cstime are fields 14-17
    return [int(x) for x in stat[stat.rindex(")") + 2:].split()[11:15]]


def tree_cpu(pid: int) -> float:
    """CPU-seconds (user + system) of the tree rooted at *pid*: every live process, plus the
    children the root has reaped."""
    total = 0
    for p in tree_pids(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        total += fields[0] + fields[1] + (fields[2] + fields[3] if p == pid else 0)
    return total / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, softirq) CPU-seconds of the whole machine so far, from ``/proc/stat``: loopback
    TCP delivery runs in softirq context and is charged to no process."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / CLK_TCK, values[6] / CLK_TCK


def tree_peak_rss_mib(pid: int) -> float:
    """The sum of ``VmHWM`` (peak resident set) over the tree rooted at *pid*, MiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
    return total / 1024


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a server we started: *sig* (its graceful stop), then SIGKILL after *timeout* seconds;
    reaped either way. Nothing when it has already exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
