"""bench/tftp_client.py (tftp_bench's load generator) against a massboot it starts: its epoll
driver over the shared sans-IO client (bench/tftpcore.py) reads whole files, sha256 checked;
its compiled clients (bench/tftp_gen.c) read them and compare every byte, and refuse a first
answer that is not the OACK asked for.

The generator runs in a subprocess: it forks worker processes with their own epoll loops, and
must not run in this gevent-patched interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading

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


def _needs_a_compiler() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("no C compiler (apt-get install gcc): the compiled generator cannot be tested")
    pytest.skip("no C compiler: the compiled generator cannot be built")


def test_compiled_generator_reads_whole_files_and_compares_every_byte(tmp_path):
    _needs_a_compiler()
    root = tmp_path / "root"
    root.mkdir()
    content = os.urandom(300_000)
    (root / "blob.bin").write_bytes(content)
    wrong = bytearray(content)
    wrong[290_000] ^= 0xFF   # block 204 of 1428-byte blocks differs from what the server sends
    (tmp_path / "wrong.bin").write_bytes(wrong)
    server = ServerProcess(str(tmp_path), str(root), clients=4, log_level="warning")
    server.start()
    try:
        def generator(local: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "bench.tftp_client", "--compiled", "--server",
                 f"127.0.0.1:{server.tftp_port}", "--file", "blob.bin", "--local", local, "--clients", "6",
                 "--workers", "2", "--verify-every", "1", "--deadline", "60"],
                cwd=REPO, capture_output=True, text=True, timeout=120)

        good = generator(str(root / "blob.bin"))
        bad = generator(str(tmp_path / "wrong.bin"))
    finally:
        server.stop()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "6/6 ok" in good.stdout and "bytes compared 6" in good.stdout, good.stdout
    assert "window 1" in good.stdout, good.stdout
    assert re.search(r"generator CPU \d+\.\d+ s, sleeps \d+, preempted \d+", good.stdout), good.stdout
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "0/6 ok" in bad.stdout and "{'content at block 204': 6}" in bad.stdout, bad.stdout


def _compiled(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """bench/tftp_client.py --compiled against 127.0.0.1:port, one worker, with *args*."""
    return subprocess.run(
        [sys.executable, "-m", "bench.tftp_client", "--compiled", "--server", f"127.0.0.1:{port}",
         "--workers", "1", "--deadline", "20", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60)


def _oack(**options: str) -> bytes:
    return b"\0\6" + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())


@pytest.mark.parametrize("answer, reason", [
    (_oack(blksize="512", tsize="3000"), "blksize"),            # not the blksize asked (RFC 2347)
    (_oack(blksize="1428", tsize="2999"), "tsize"),             # not the size expected (RFC 2349)
    (_oack(blksize="1428"), "tsize"),                           # tsize asked, not answered
    (b"\0\6blksize\0" + b"1428", "bad OACK"),                   # value not terminated
    (b"\0\3\0\1" + b"x" * 512, "no OACK"),                      # DATA 1: the options ignored
    (b"\0\5\0\1File not found\0", "error File not found"),
    (b"\0\4\0\0", "opcode 4"),
])
def test_compiled_generator_refuses_a_wrong_first_answer(answer: bytes, reason: str) -> None:
    _needs_a_compiler()
    port69 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port69.bind(("127.0.0.1", 0))
    tid = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tid.bind(("127.0.0.1", 0))
    port69.settimeout(60)
    seen: list[bytes] = []

    def answer_once() -> None:
        rrq, peer = port69.recvfrom(2048)
        seen.append(rrq)
        tid.sendto(answer, peer)   # from another port: the server's TID

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        run = _compiled(port69.getsockname()[1], "--file", "a file", "--size", "3000", "--clients", "1",
                        "--timeout", "0.3", "--retries", "0")
        thread.join(10)
    finally:
        port69.close()
        tid.close()
    assert seen == [b"\0\1a file\0octet\0blksize\x001428\0tsize\x000\0"]
    assert run.returncode == 1 and f"{{'{reason}': 1}}" in run.stdout, run.stdout + run.stderr


def test_compiled_generator_resends_to_a_silent_server_then_gives_up() -> None:
    _needs_a_compiler()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        run = _compiled(silent.getsockname()[1], "--file", "nothing", "--size", "1", "--clients", "2",
                        "--timeout", "0.1", "--retries", "2")
        rrqs = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recvfrom(2048)
            except BlockingIOError:
                break
            rrqs += 1
    finally:
        silent.close()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0/2 ok" in run.stdout and "{'timeout': 2}" in run.stdout, run.stdout
    assert "client resends 4" in run.stdout, run.stdout   # two resends each, then given up
    assert rrqs == 6   # each client's RRQ and its two resends


def test_compiled_generator_spins_instead_of_sleeping_when_told() -> None:
    # against a silent server a worker has nothing to read for its whole run: it sleeps in
    # epoll_wait about every 50 ms, unless it spins (LoadSpec.spin, -P), when it never waits
    _needs_a_compiler()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    sleeps = {}
    try:
        for spin in (False, True):
            run = _compiled(silent.getsockname()[1], "--file", "nothing", "--size", "1", "--clients", "1",
                            "--timeout", "0.2", "--retries", "1", *(["--spin"] if spin else []))
            assert run.returncode == 1 and "{'timeout': 1}" in run.stdout, run.stdout + run.stderr
            found = re.search(r"sleeps (\d+), preempted", run.stdout)
            assert found, run.stdout
            sleeps[spin] = int(found.group(1))
    finally:
        silent.close()
    assert sleeps[False] >= 4, sleeps   # 0.4 s of 50 ms waits
    assert sleeps[True] <= 2, sleeps
