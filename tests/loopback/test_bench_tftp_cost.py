"""bench/tftp_cost.py runs tiny against this checkout twice (itself and as a ``--massboot-tree``),
so that the bench cannot rot. Behaviour only: every wave is answered as expected and its
figure is recorded; speed is never asserted.

The bench runs in a subprocess: its load generator forks worker processes with their own epoll
loops and must not run in this gevent-patched interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_measures_each_kind_per_server_and_round(tmp_path):
    out = tmp_path / "cost.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.tftp_cost", "--clients", "12", "--rounds", "2",
         "--massboot-tree", f"other={REPO}", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert data["clients"] == 12 and data["rounds"] == 2
    assert set(data["figures"]) == {"massboot", "other"}
    for name, kinds in data["figures"].items():
        assert set(kinds) == {"16K", "missing"}
        for kind, values in kinds.items():
            assert len(values) == 2 and all(v > 0 for v in values), (name, kind, values)
    lines = run.stdout.splitlines()
    # each server takes each slot in turn: the second round starts with the second server
    waves = [line.split()[2] for line in lines if line.startswith("round ")]
    assert waves == ["massboot", "other", "massboot", "other", "other", "massboot", "other", "massboot"]
    assert any(line.startswith("missing  other") and "x (geomean" in line and "p = " in line
               for line in lines), run.stdout


def test_bench_refuses_a_tree_that_is_not_a_checkout(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.tftp_cost", "--massboot-tree", f"x={tmp_path}/nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "NAME=PATH of a checkout" in run.stderr
