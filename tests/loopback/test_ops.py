"""Operations (README, "Operator commands", "Reload", "Privileges"): the admin command against a
running massboot and against its database, SIGHUP during a transfer, log reopening, the
privilege drop (as real subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from massboot.dhcp.packet import MessageType, Opt
from tests.conftest import require, require_root
from tests.loopback.dhcpclient import RelayClient, pxe_options
from tests.loopback.test_cli import ENV, REPO, Running, free_port

MAC_A = bytes.fromhex("525400000a01")
MAC_B = bytes.fromhex("525400000a02")
MAC_C = bytes.fromhex("525400000a03")
STATIC = bytes.fromhex("525400000a09")


def colon(mac: bytes) -> str:
    return ":".join(f"{b:02X}" for b in mac)


CONFIG = """
[logger]
level = info
{logger}
[massboot]
state_dir = state
[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
domain = rack.example
; every 127/8 address answers a ping: a freed address would be found "in use" (README, Lease lifecycle)
probe = off
{bootpd}
[bootfile]
default = pxelinux.0
[static_dhcp]
52-54-00-00-0A-09 = 127.0.0.120
[tftpd]
port = {tftp}
root = files
{tftpd}
[filters]
{filters}
"""


def ini(tmp_path: Path, dhcp: int, tftp: int, *, bootpd: str = "", tftpd: str = "", logger: str = "",
        filters: str = "", extra: str = "") -> str:
    path = tmp_path / "massboot.ini"
    path.write_text(CONFIG.format(dhcp=dhcp, tftp=tftp, bootpd=bootpd, tftpd=tftpd, logger=logger,
                                  filters=filters) + extra)
    return str(path)


def leases(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massboot", "-c", path, "leases", *args], cwd=REPO,
                          env=ENV, text=True, capture_output=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_admin_command_against_the_running_server_then_the_database(tmp_path):
    (tmp_path / "files").mkdir()
    dhcp, tftp = free_port(), free_port()
    path = ini(tmp_path, dhcp, tftp)
    mb = Running("-c", path)
    relay = RelayClient(("127.0.0.1", dhcp))
    state = tmp_path / "state"
    try:
        mb.wait_for("tftp listening")
        mb.wait_for("admin socket")
        offer, ack = relay.dora(MAC_A, pxe_options())
        assert ack is not None and ack.yiaddr == "127.0.0.100"
        assert offer.option(Opt.DOMAIN_NAME) == b"rack.example"      # option 15, asked in 55
        # the files massboot keeps are private
        assert mode(state / "admin.sock") == 0o600
        assert mode(state / "massboot-leases.sqlite3") == 0o600 and mode(state / "cache") == 0o700

        listed = leases(path, "list")
        assert listed.returncode == 0, listed.stderr
        assert "not running" not in listed.stderr
        line = next(x for x in listed.stdout.splitlines() if colon(MAC_A) in x)
        assert "127.0.0.100" in line and "bound" in line and "main" in line
        shown = leases(path, "show", colon(MAC_A).replace(":", "-"))
        assert "state: bound" in shown.stdout and "ip: 127.0.0.100" in shown.stdout

        # release frees the address: the next DISCOVER from another MAC gets it
        released = leases(path, "release", colon(MAC_A))
        assert released.returncode == 0 and "released" in released.stdout, released.stderr
        offer, _ = relay.dora(MAC_B, pxe_options())
        assert offer is not None and offer.yiaddr == "127.0.0.100"

        # reserve: the MAC gets that address at its next request
        reserved = leases(path, "reserve", colon(MAC_C), "127.0.0.107")
        assert reserved.returncode == 0, reserved.stderr
        _, ack = relay.dora(MAC_C, pxe_options())
        assert ack is not None and ack.yiaddr == "127.0.0.107"
        # a [static_dhcp] entry wins over a reservation, clearly
        refused = leases(path, "reserve", colon(STATIC), "127.0.0.108")
        assert refused.returncode == 1 and "[static_dhcp] entry wins over a reservation" in refused.stderr
        refused = leases(path, "reserve", colon(MAC_A), "127.0.0.120")
        assert refused.returncode == 1 and "is the [static_dhcp] address of" in refused.stderr
        taken = leases(path, "reserve", colon(MAC_A), "127.0.0.107")
        assert taken.returncode == 1 and "bound to" in taken.stderr
        assert leases(path, "reserve", colon(MAC_A), "127.0.0.109").returncode == 0
        assert leases(path, "unreserve", colon(MAC_A)).returncode == 0
        assert leases(path, "unreserve", colon(MAC_A)).returncode == 1

        # export parses back
        rows = list(csv.DictReader(io.StringIO(leases(path, "export").stdout)))
        as_json = json.loads(leases(path, "export", "--format", "json").stdout)
        assert {(r["mac"], r["ip"], r["state"]) for r in rows} == \
            {(r["mac"], r["ip"], r["state"]) for r in as_json}
        assert {(r["mac"], r["ip"]) for r in as_json} == {(colon(MAC_B), "127.0.0.100"),
                                                          (colon(MAC_C), "127.0.0.107")}
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        relay.close()
        mb.close()
    assert not (state / "admin.sock").exists()

    # the server stopped: the command works on the database itself
    listed = leases(path, "list")
    assert listed.returncode == 0 and "not running" in listed.stderr, listed.stderr
    assert colon(MAC_B) in listed.stdout and colon(MAC_C) in listed.stdout
    assert leases(path, "release", colon(MAC_B)).returncode == 0
    assert leases(path, "reserve", colon(MAC_A), "127.0.0.104").returncode == 0
    exported = json.loads(leases(path, "export", "--format", "json").stdout)
    # a reservation stays one once bound (never reclaimed; README, Lease lifecycle): its expires
    # is the lease's end
    assert {(r["mac"], r["ip"], r["state"]) for r in exported} == {
        (colon(MAC_C), "127.0.0.107", "reserved"), (colon(MAC_A), "127.0.0.104", "reserved")}
    assert next(r for r in exported if r["mac"] == colon(MAC_C))["expires"]
    assert mode(state / "massboot-leases.sqlite3") == 0o600


def tftp_download(port: int, name: str, on_block: Callable[[int], None] = lambda n: None) -> bytes:
    """A plain RFC 1350 download, 512-byte blocks; *on_block* runs before each ACK."""
    data = b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        expected = 1
        while True:
            packet, server = s.recvfrom(1024)
            opcode, block = struct.unpack("!HH", packet[:4])
            assert opcode == 3, packet
            if block == expected:
                data += packet[4:]
                on_block(block)
                expected += 1
            s.sendto(struct.pack("!HH", 4, block), server)
            if block == expected - 1 and len(packet) < 516:
                return data


def tftp_error(port: int, name: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        packet, server = s.recvfrom(1024)
        if packet[:2] == b"\x00\x03":
            s.sendto(b"\x00\x05\x00\x00stop\x00", server)
        return packet


def test_sighup_reload_good_and_broken_during_a_transfer(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    big = os.urandom(300 * 512 + 17)
    (files / "big.bin").write_bytes(big)
    (files / "one.txt").write_bytes(b"one\n")
    (files / "two.txt").write_bytes(b"two\n")
    dhcp, tftp = free_port(), free_port()
    log_file = tmp_path / "massboot.log"
    acl = "access = mac\n"
    rules = f"[mac]\n{colon(MAC_A).replace(':', '-')} = enable\n"
    path = ini(tmp_path, dhcp, tftp, bootpd=acl, filters="which.txt = one.txt",
               logger=f"type = file\nfile = {log_file}", extra=rules)
    mb = Running("-c", path)
    relay = RelayClient(("127.0.0.1", dhcp))
    try:
        deadline = time.monotonic() + 20
        while "tftp listening" not in (log_file.read_text() if log_file.exists() else ""):
            assert mb.proc.poll() is None and time.monotonic() < deadline, mb.log
            time.sleep(0.05)
        offer = relay.exchange(relay.packet(MAC_B, MessageType.DISCOVER, pxe_options()), timeout=1)
        assert offer is None                                   # MAC B is not in [mac]
        assert tftp_download(tftp, "which.txt") == b"one\n"

        def log_has(text: str) -> bool:
            return text in log_file.read_text() if log_file.exists() else False

        def wait(predicate: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 20
            while not predicate():
                assert time.monotonic() < deadline and mb.proc.poll() is None, mb.log
                time.sleep(0.02)

        def during(block: int) -> None:
            if block == 50:    # a good config: new ACL and filters; the log file was rotated
                ini(tmp_path, dhcp, tftp, bootpd=acl, filters="which.txt = two.txt",
                    logger=f"type = file\nfile = {log_file}",
                    extra=rules + f"{colon(MAC_B).replace(':', '-')} = enable\n")
                os.rename(log_file, tmp_path / "massboot.log.1")
                mb.proc.send_signal(signal.SIGHUP)
                wait(lambda: log_has("reload: ") and log_has("applied"))
                assert tftp_download(tftp, "which.txt") == b"two\n"       # the new filter
                offer = relay.exchange(relay.packet(MAC_B, MessageType.DISCOVER, pxe_options()))
                assert offer is not None and offer.yiaddr.startswith("127.0.0.")   # the new ACL
            if block == 150:   # a broken one: logged, the running one kept
                Path(path).write_text(Path(path).read_text().replace("root = files",
                                                                     "root = files\ntimeout = soon"))
                mb.proc.send_signal(signal.SIGHUP)
                wait(lambda: log_has("the running configuration is kept"))
                assert tftp_download(tftp, "which.txt") == b"two\n"

        assert tftp_download(tftp, "big.bin", during) == big     # neither reload cut it
        text = log_file.read_text()
        assert "[tftpd] timeout = 'soon': not a number; the running configuration is kept" in text
        assert "tftp listening" in (tmp_path / "massboot.log.1").read_text()
        assert "tftp listening" not in text                     # a new file after the rename
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        relay.close()
        mb.close()


def test_listener_change_on_reload_says_restart(tmp_path):
    (tmp_path / "files").mkdir()
    dhcp, tftp = free_port(), free_port()
    path = ini(tmp_path, dhcp, tftp)
    mb = Running("-c", path)
    try:
        mb.wait_for("tftp listening")
        ini(tmp_path, dhcp, free_port())
        mb.proc.send_signal(signal.SIGHUP)
        mb.wait_for("reload: [tftpd] address/port changed: takes effect at the next restart")
        mb.wait_for("applied")
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()


def test_sighup_applies_static_dhcp_entries_without_dropping_leases(tmp_path):
    """README, "Reload": a new [static_dhcp] entry applies at its MAC's next request; one that
    takes another MAC's active lease is logged, and that MAC's RENEW is NAKed."""
    (tmp_path / "files").mkdir()
    dhcp, tftp = free_port(), free_port()
    path = ini(tmp_path, dhcp, tftp)
    mb = Running("-c", path)
    relay = RelayClient(("127.0.0.1", dhcp))

    def renew(mac: bytes, ip: str):
        return relay.exchange(relay.packet(mac, MessageType.REQUEST, ciaddr=ip))

    try:
        mb.wait_for("tftp listening")
        _, ack_a = relay.dora(MAC_A, pxe_options())
        _, ack_b = relay.dora(MAC_B, pxe_options())
        _, ack_c = relay.dora(MAC_C, pxe_options())
        assert (ack_a.yiaddr, ack_b.yiaddr, ack_c.yiaddr) == ("127.0.0.100", "127.0.0.101", "127.0.0.102")
        # MAC A becomes static at another address; STATIC's address moves onto MAC B's lease
        text = Path(path).read_text()
        entries = "52-54-00-00-0A-09 = 127.0.0.101\n52-54-00-00-0A-01 = 127.0.0.105"
        Path(path).write_text(text.replace("52-54-00-00-0A-09 = 127.0.0.120", entries))
        mb.proc.send_signal(signal.SIGHUP)
        mb.wait_for("applied")
        assert f"static address 127.0.0.101 of {colon(STATIC)} is the active binding of {colon(MAC_B)}" \
            in mb.log
        assert "[static_dhcp]" not in mb.log and "next restart" not in mb.log

        # MAC A: its RENEW of the dynamic address is NAKed, its next DISCOVER gets the static one
        nak = renew(MAC_A, "127.0.0.100")
        assert nak is not None and nak.option(Opt.MESSAGE_TYPE)[0] == MessageType.NAK
        offer, ack = relay.dora(MAC_A, pxe_options())
        assert offer.yiaddr == ack.yiaddr == "127.0.0.105"
        assert ack.option(Opt.MESSAGE_TYPE)[0] == MessageType.ACK
        # MAC B: its RENEW of the now-static address is NAKed; it gets another address
        nak = renew(MAC_B, "127.0.0.101")
        assert nak is not None and nak.option(Opt.MESSAGE_TYPE)[0] == MessageType.NAK
        offer, ack = relay.dora(MAC_B, pxe_options())
        assert ack.option(Opt.MESSAGE_TYPE)[0] == MessageType.ACK
        assert ack.yiaddr not in ("127.0.0.101", "127.0.0.102", "127.0.0.105", "127.0.0.120")
        _, ack = relay.dora(STATIC, pxe_options())
        assert ack.yiaddr == "127.0.0.101"
        # an untouched lease renews as before
        ack = renew(MAC_C, "127.0.0.102")
        assert ack.option(Opt.MESSAGE_TYPE)[0] == MessageType.ACK and ack.yiaddr == "127.0.0.102"
        listed = leases(path, "show", colon(MAC_A))
        assert "ip: 127.0.0.105" in listed.stdout and "state: static" in listed.stdout, listed.stdout
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        relay.close()
        mb.close()


def test_sighup_while_starting_is_a_reload_not_a_kill(tmp_path):
    """logrotate may send SIGHUP while massboot starts: it is kept and applied once it serves."""
    (tmp_path / "files").mkdir()
    path = ini(tmp_path, free_port(), free_port())
    mb = Running("-c", path)
    try:
        mb.wait_for("massboot-")           # its first line: the services are not started yet
        mb.proc.send_signal(signal.SIGHUP)
        mb.wait_for("applied")
        assert mb.proc.poll() is None, mb.log
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()


def proc_ids(pid: int) -> tuple[list[int], list[int]]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


def test_privilege_drop(tmp_path):
    """Started as root with user = nobody: ports bound, files made private and handed over."""
    require_root()
    import pwd

    nobody = pwd.getpwnam("nobody")
    require(nobody is not None, "no user nobody")
    (tmp_path / "files").mkdir()
    dhcp, tftp = free_port(), free_port()
    log_file = tmp_path / "massboot.log"
    path = ini(tmp_path, dhcp, tftp, logger=f"type = file\nfile = {log_file}",
               extra="[massboot]\nuser = nobody\n")
    mb = Running("-c", path)
    relay = RelayClient(("127.0.0.1", dhcp))
    state = tmp_path / "state"
    try:
        deadline = time.monotonic() + 20
        while "running as user nobody" not in (log_file.read_text() if log_file.exists() else ""):
            assert mb.proc.poll() is None and time.monotonic() < deadline, mb.log
            time.sleep(0.05)
        uids, gids = proc_ids(mb.proc.pid)
        assert uids == [nobody.pw_uid] * 4 and gids == [nobody.pw_gid] * 4
        for name, want in (("admin.sock", 0o600), ("massboot-leases.sqlite3", 0o600), ("cache", 0o700),
                           (".", 0o700)):
            info = os.lstat(state / name)
            assert stat.S_IMODE(info.st_mode) == want, name
            assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
        assert os.stat(log_file).st_uid == nobody.pw_uid
        _, ack = relay.dora(MAC_A, pxe_options())          # the lease database still writes
        assert ack is not None and ack.yiaddr == "127.0.0.100"
        listed = leases(path, "list")
        assert colon(MAC_A) in listed.stdout and "not running" not in listed.stderr
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        relay.close()
        mb.close()
