"""bench/tftp_client.py (tftp_bench's load generator) against a massboot it starts: its epoll
driver over the shared sans-IO client (bench/tftpcore.py) reads whole files, sha256 checked.

The generator runs in a subprocess: it forks worker processes with their own epoll loops, and
must not run in this gevent-patched interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.sim.servers import ServerProcess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("windowsize", [1, 8])
def test_generator_reads_whole_files(tmp_path, windowsize):
    root = tmp_path / "root"
    root.mkdir()
    content = os.urandom(300_000)
    (root / "blob.bin").write_bytes(content)
    server = ServerProcess(str(tmp_path), str(root), clients=4, log_level="warning")
    server.start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.tftp_client", "--server", f"127.0.0.1:{server.tftp_port}",
             "--file", "blob.bin", "--local", str(root / "blob.bin"), "--clients", "6", "--workers", "2",
             "--windowsize", str(windowsize), "--verify-every", "1", "--deadline", "60"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6/6 ok" in out.stdout and "sha256 checked 6" in out.stdout, out.stdout
    assert f"window {windowsize}" in out.stdout
    # nothing listens: the RRQ is resent once, then the client counts as timed out
    missing = subprocess.run(
        [sys.executable, "-m", "bench.tftp_client", "--server", "127.0.0.1:1", "--file", "x", "--size",
         "1K", "--clients", "1", "--workers", "1", "--timeout", "0.05", "--retries", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "{'timeout': 1}" in missing.stdout, missing.stdout
