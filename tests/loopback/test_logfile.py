"""The log of a running massboot process, read while it runs (README, "[logger]").

Lines are written off the hub by massboot.logwriter: these tests start the real command with
``type = file`` (and ``type = stderr`` sent to a file, as the namespace tests run it), make it
log a DHCP exchange and a TFTP transfer on loopback, and read the file while the server still
runs, waiting a few seconds at most for each line. They also check what happens to the lines
at a clean stop (SIGTERM: every line written, ``stopped`` last) and at a rotation (rename,
SIGHUP: the new file gets the next lines, the old one keeps the earlier ones)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loopback.dhcpclient import RelayClient
from tests.loopback.test_cli import ENV, REPO, free_port

CONFIG = """
[logger]
{logger}
level = info

[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
lease_db = {tmp}/leases.sqlite3
allow_simple_dhcp = on

[bootfile]
default = pxelinux.0

[tftpd]
address = 127.0.0.1
port = {tftp}
root = {tmp}/root
"""

WAIT = 5.0      # seconds a line may take to show up (a generous bound, not a speed check)


class Server:
    """``python -m massboot`` on loopback, its output (stdout and stderr) into a file."""

    def __init__(self, tmp: Path, logger: str) -> None:
        (tmp / "root").mkdir(exist_ok=True)
        (tmp / "root" / "hello.txt").write_bytes(b"hello\n")
        self.dhcp, self.tftp = free_port(), free_port()
        self.log_file = tmp / "massboot.log"
        self.out_file = tmp / "massboot.out"
        logger = logger.format(log=self.log_file)
        config = tmp / "massboot.ini"
        config.write_text(CONFIG.format(logger=logger, dhcp=self.dhcp, tftp=self.tftp, tmp=tmp))
        with open(self.out_file, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "massboot", "-c", str(config)],
                                         cwd=REPO, env=dict(ENV, PYTHONUNBUFFERED="1"), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.path = self.log_file if "type = file" in logger else self.out_file

    def text(self, path: Path | None = None) -> str:
        try:
            return (path or self.path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, path: Path | None = None) -> str:
        """Wait until a line of the log matches *pattern*; return it."""
        deadline = time.monotonic() + WAIT
        while True:
            match = re.search(pattern, self.text(path), re.M)
            if match:
                return match.group(0)
            assert self.proc.poll() is None, \
                f"massboot exited {self.proc.returncode}:\n{self.text(self.out_file)}\n{self.text()}"
            assert time.monotonic() < deadline, \
                f"no line matching {pattern!r} after {WAIT} s while massboot runs:\n{self.text(path)}"
            time.sleep(0.02)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(params=["type = file\nfile = {log}", "type = stderr"], ids=["file", "stderr"])
def server(request: pytest.FixtureRequest, tmp_path: Path):
    srv = Server(tmp_path, request.param)
    try:
        srv.wait_for("tftp listening on")
        yield srv
    finally:
        srv.close()


def dora(server: Server, mac: str) -> None:
    client = RelayClient(("127.0.0.1", server.dhcp))
    try:
        offer, ack = client.dora(bytes.fromhex(mac.replace(":", "")))
    finally:
        client.close()
    assert offer is not None and ack is not None


def tftp_get(server: Server, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", server.tftp))
        data, peer = s.recvfrom(600)
        assert data == b"\x00\x03\x00\x01hello\n"
        s.sendto(b"\x00\x04\x00\x01", peer)


def test_lines_reach_the_log_while_the_server_runs_and_all_of_them_at_a_clean_stop(server: Server):
    mac = "02:00:00:4c:00:01"
    dora(server, mac)
    server.wait_for(rf"INFO: offer mac={mac.upper()} ip=127\.0\.0\.100 phase=os .*$")
    server.wait_for(rf"INFO: ack mac={mac.upper()} ip=127\.0\.0\.100 phase=os .*$")
    tftp_get(server, "hello.txt")
    server.wait_for(r"INFO: tftp done client=127\.0\.0\.1:\d+ file=hello\.txt bytes=6 .*$")
    # an idle server writes each line at once; later ones too, the hub having gone idle between
    for n in range(2, 5):
        dora(server, f"02:00:00:4c:00:0{n}")
        server.wait_for(rf"INFO: ack mac=02:00:00:4C:00:0{n} .*$")
    assert server.stop() == 0
    lines = server.text().splitlines()
    assert lines[-1].endswith("INFO: stopped"), lines[-3:]
    assert lines[-2].endswith("INFO: signal 15: stopping"), lines[-3:]
    acks = [line for line in lines if " INFO: ack mac=" in line]
    assert len(acks) == 4 and len(set(acks)) == 4          # each line once, none torn


def test_a_burst_is_written_whole_and_in_order_at_a_clean_stop(server: Server):
    """Many exchanges, then SIGTERM at once: every line is in the log, in order."""
    client = RelayClient(("127.0.0.1", server.dhcp))
    try:
        for n in range(8):
            offer, ack = client.dora(bytes.fromhex(f"02000000{0x4d:02x}{n:02x}"))
            assert ack is not None
    finally:
        client.close()
    assert server.stop() == 0
    text = server.text()
    acks = re.findall(r"INFO: ack mac=02:00:00:00:4D:(\w\w) ", text)
    assert acks == [f"{n:02X}" for n in range(8)], text
    assert text.splitlines()[-1].endswith("INFO: stopped")


def test_rotation_by_rename_and_sighup_goes_on_in_a_new_file(tmp_path: Path):
    srv = Server(tmp_path, "type = file\nfile = {log}")
    try:
        srv.wait_for("tftp listening on")
        dora(srv, "02:00:00:4e:00:01")
        srv.wait_for(r"INFO: ack mac=02:00:00:4E:00:01 ")
        rotated = tmp_path / "massboot.log.1"
        os.rename(srv.log_file, rotated)
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for(r"INFO: reload: .* applied$")     # the new file, opened by its name
        dora(srv, "02:00:00:4e:00:02")
        srv.wait_for(r"INFO: ack mac=02:00:00:4E:00:02 ")       # in the new file
        assert srv.stop() == 0
    finally:
        srv.close()
    old, new = rotated.read_text(), srv.log_file.read_text()
    assert "02:00:00:4E:00:01" in old and "02:00:00:4E:00:02" not in old
    assert "02:00:00:4E:00:01" not in new and new.splitlines()[-1].endswith("INFO: stopped")
    assert "applied" not in old
