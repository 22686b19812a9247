"""The massboot command: exit codes, --check-config, --version, signals (as a real subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import massboot

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massboot", *args], cwd=REPO, env=ENV, text=True,
                          capture_output=True, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "massboot.ini"
    path.write_text(text)
    return str(path)


GOOD = """
[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
lease_db = :memory:
[bootfile]
default = pxelinux.0
[tftpd]
port = {tftp}
root = .
"""


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"massboot {massboot.__version__}"


def test_check_config_ok_and_summary(tmp_path):
    result = run("-c", write(tmp_path, GOOD.format(dhcp=6767, tftp=6969)), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "pool 127.0.0.100 .. 127.0.0.109 (10 addresses)" in result.stdout
    assert "network: lo 127.0.0.1/8, server address 127.0.0.1" in result.stdout
    assert result.stdout.strip().endswith("config OK")


def test_bad_value_names_section_option_value(tmp_path):
    result = run("-c", write(tmp_path, GOOD.format(dhcp=6767, tftp=6969) + "pool_count = many\n"
                             .replace("pool_count", "[bootpd]\npool_count")), "--check-config")
    assert result.returncode == 2
    assert "[bootpd] pool_count = 'many': not an integer" in result.stderr


def test_pool_outside_every_network(tmp_path):
    # address (the fallback of the detection) left at 0.0.0.0, pool_start in no local network
    text = GOOD.format(dhcp=6767, tftp=6969).replace("127.0.0.100", "203.0.113.100").replace(
        "address = 127.0.0.1\n", "")
    result = run("-c", write(tmp_path, text), "--check-config")
    assert result.returncode == 2
    assert "Unable to detect network configuration" in result.stderr
    assert "pool_start 203.0.113.100" in result.stderr and "lo 127.0.0.1/8" in result.stderr
    result = run("-c", write(tmp_path, text), "-p")
    assert result.returncode == 1 and "Unable to detect network configuration" in result.stderr


def test_argument_errors(tmp_path):
    assert run("-c", str(tmp_path / "nope.ini")).returncode == 2
    result = run("-c", write(tmp_path, GOOD.format(dhcp=1, tftp=2)), "-p", "-t")
    assert result.returncode == 2 and "Cannot exclude PXE & TFTP servers altogether" in result.stderr


def test_serves_then_stops_cleanly_on_sigterm(tmp_path):
    dhcp, tftp = free_port(), free_port()
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp) + "[logger]\nlevel = info\n")
    proc = subprocess.Popen([sys.executable, "-m", "massboot", "-c", path], cwd=REPO, env=ENV,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 20
        while not any("tftp listening" in line for line in seen) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
        assert any("dhcp listening on 127.0.0.1" in line for line in seen), seen
        # a real transfer through the command: RRQ + DATA 1 + ACK
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"\x00\x01hello.txt\x00octet\x00", ("127.0.0.1", tftp))
            data, server = s.recvfrom(600)
            assert data == b"\x00\x03\x00\x01hello\n"
            s.sendto(b"\x00\x04\x00\x01", server)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=15)[1]
        assert proc.returncode == 0
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unbindable_port_is_an_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = run("-c", write(tmp_path, GOOD.format(dhcp=free_port(), tftp=port)))
    assert result.returncode == 1 and "Address already in use" in result.stderr
