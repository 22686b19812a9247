"""bench/http_bench.py and its load generator (bench/http_client.py) run tiny against a private
nginx (the Debian package, started by the bench on a loopback port), and against massboot's
``-H`` beside it once this massboot serves HTTP, so that the bench cannot rot. Behaviour only:
every download is verified and the figures add up; speed is never asserted. nginx is required
under CI=true.

The bench and the generator run in subprocesses: the generator forks worker processes with
their own epoll loops and must not run in this gevent-patched interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from bench.nginx import nginx_binary
from tests.conftest import require

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_against_nginx_verifies_every_download(tmp_path):
    require(nginx_binary() is not None, "nginx is not installed (apt-get install nginx)")
    out = tmp_path / "bench.json"
    names = ["massboot", "nginx"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.http_bench", "--servers", ",".join(names), "--clients", "12",
         "--size", "300K", "--files", "3", "--rounds", "2", "--workers", "2", "--verify-every", "2",
         "--deadline", "60", "--require-all", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Download storm: 12 connections" in run.stdout
    assert f"sha256 of {12 * len(names)} downloads" in run.stdout  # 6 per round and server, 2 rounds
    data = json.loads(out.read_text())
    assert data["machine"]["versions"]["nginx"].startswith("nginx/")
    samples = data["samples"]
    # each server takes each slot in turn
    order = [names, names[::-1]]
    assert [(s["round"], s["server"]) for s in samples] == [(r, n) for r in (0, 1) for n in order[r]]
    for s in samples:
        assert s["ok"] == 12 and s["failed"] == 0 and s["failures"] == {}
        assert s["bytes_ok"] == 12 * 300 * 1024 == s["bytes_in"]
        assert s["sha_checked"] == 6
        assert 0 < s["p50"] <= s["p95"] <= s["max"] <= s["wall"]
        assert s["server_cpu"] >= 0 and s["gen_cpu"] >= 0  # clock ticks: a tiny run may read 0
        assert s["peak_rss_mib"] > 1  # master and worker, from /proc
    table = data["report"]
    for name in names:
        assert any(line.startswith(name) and "24/24" in line for line in table.splitlines()), table


def test_generator_counts_wrong_sizes_bad_hashes_and_errors(tmp_path):
    """The generator alone against nginx: a file that is not what is expected fails every
    client, a 404 is counted by status, nothing listening is a connect error."""
    require(nginx_binary() is not None, "nginx is not installed (apt-get install nginx)")
    from bench.nginx import Nginx

    root = tmp_path / "root"
    root.mkdir()
    content = os.urandom(200_000)
    (root / "blob.bin").write_bytes(content)
    os.chmod(root, 0o755)
    sha = hashlib.sha256(content).hexdigest()

    def generate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bench.http_client", "--workers", "2",
                               "--deadline", "30", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    with Nginx(str(tmp_path / "nginx"), str(root)) as nginx:
        good = generate("--url", nginx.url + "blob.bin", "--local", str(root / "blob.bin"), "--clients", "8",
                        "--verify-every", "1", "--copy")
        assert good.returncode == 0 and "8/8 ok" in good.stdout, good.stdout
        assert "sha256 checked 8" in good.stdout, good.stdout
        size = generate("--url", nginx.url + "blob.bin", "--size", "200001", "--clients", "3")
        assert size.returncode == 1 and "{'size': 3}" in size.stdout, size.stdout
        bad = generate("--url", nginx.url + "blob.bin", "--size", "200000", "--sha256", "0" * 64,
                       "--clients", "4", "--verify-every", "2")
        assert bad.returncode == 1 and "2/4 ok" in bad.stdout and "{'sha256': 2}" in bad.stdout, bad.stdout
        missing = generate("--url", nginx.url + "nope.bin", "--size", "1K", "--clients", "2")
        assert missing.returncode == 1 and "{'status 404': 2}" in missing.stdout, missing.stdout
        port = nginx.port
    assert sha
    refused = generate("--url", f"http://127.0.0.1:{port}/blob.bin", "--size", "1K", "--clients", "2")
    assert refused.returncode == 1 and "connect ECONNREFUSED" in refused.stdout, refused.stdout
