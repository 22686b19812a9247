"""Real third-party DHCP clients against massboot across a veth pair in network namespaces.

massboot runs as ``python -m massboot -p`` in a "server" namespace (10.77.0.1/24, pool
10.77.0.100..119, SQLite lease database in the test's tmp dir); the clients run in a "client"
namespace whose veth end is unnumbered, as a booting machine's is:

* ISC dhclient and busybox udhcpc get an address from the pool, and the SAME address again
  from a fresh DISCOVER after massboot restarts (SIGTERM, and SIGKILL right after the ACK):
  the sticky lease is in SQLite, committed before the ACK leaves;
* a hand-written plain BOOTP client (no option 53) gets a BOOTREPLY without option 53, at
  the subnet broadcast, or at 255.255.255.255 when its MAC is in ``[buggy_clients]`` (then
  even a plain UDP socket on the unnumbered interface receives it);
* massboot logs one line per reply, with the MAC and the phase.

Leases are handed out in pool order, so "the same address" alone would prove nothing (a
forgotten database hands out the first address again). Each sticky test first lets a decoy
MAC take 10.77.0.100 by plain BOOTP, so the real client holds 10.77.0.101: after a restart
that lost the database it would get 10.77.0.100.

Root only (``ip netns``); under ``CI=true`` they must run.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from massboot.dhcp.packet import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    BootpPacket,
    Opt,
    PacketError,
    bytes_ip,
    decode,
    encode,
    ip_bytes,
)
from massboot.ident import parse_mac
from tests.conftest import require_root, require_tool
from tests.netns.netns import REPO, Massboot, NetnsPair, kill, namespace_pair, random_mac, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVER_ADDR = "10.77.0.1/24"
SERVER_IP = "10.77.0.1"
POOL = [str(ipaddress.IPv4Address("10.77.0.100") + i) for i in range(20)]
FIRST, SECOND = POOL[0], POOL[1]
CONFIG = """\
[logger]
level = debug
[bootpd]
pool_start = 10.77.0.100
pool_count = 20
lease_db = leases.sqlite3
allow_simple_dhcp = yes
[bootfile]
default = pxelinux.0
"""
RELOAD_DNS = "10.77.0.53"
CLIENT_TIMEOUT = 20       # seconds a client may take to get a lease (they answer in about 1-3 s)
DHCLIENT_CONF = """\
timeout 15;
retry 1;
initial-interval 1;
backoff-cutoff 2;
request subnet-mask, broadcast-address, routers, domain-name-servers;
"""
# dhclient's -sf and udhcpc's -s: record what the client was given, touch nothing (the real
# scripts rewrite the host's /etc/resolv.conf, which `ip netns exec` does not isolate).
HOOK = """\
#!/bin/sh
case "${{reason:-$1}}" in
  BOUND|REBOOT|bound|renew) env > "{out}.tmp" && mv "{out}.tmp" "{out}" ;;
esac
exit 0
"""
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d PXE\[\w+\] [A-Z]+: ")
REPLY_LINE = re.compile(r"PXE\[server\] INFO: (?P<event>offer|ack|nak|bootp) mac=(?P<mac>\S+) ip=(?P<ip>\S+) "
                        r"phase=(?P<phase>\S+) ")


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[NetnsPair]:
    require_root()
    require_tool("ip")
    with namespace_pair(request.node.name.removeprefix("test_"), server_addr=SERVER_ADDR) as pair:
        yield pair


@pytest.fixture
def start_server(net: NetnsPair, tmp_path: Path) -> Callable[[str], Massboot]:
    """Write a config (CONFIG plus *extra* ini text) and start massboot on it; it is stopped
    by pid with the namespaces."""

    def start(extra: str = "") -> Massboot:
        conf_dir = tmp_path / "etc"
        conf_dir.mkdir()
        config = conf_dir / "massboot.ini"
        config.write_text(CONFIG + extra)
        return Massboot(net, config, tmp_path).start()

    return start


@pytest.fixture
def server(start_server: Callable[[str], Massboot]) -> Massboot:
    return start_server("")


# ------------------------------------------------------------------------------------------
# clients
# ------------------------------------------------------------------------------------------


def _hook(path: Path, out: Path) -> Path:
    path.write_text(HOOK.format(out=out))
    path.chmod(0o755)
    return path


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


@dataclass
class DhclientLease:
    ip: str
    options: dict[str, str]       # "subnet-mask" -> "255.255.255.0", from the lease file
    hook_env: dict[str, str]      # what dhclient gave its -sf script


def parse_dhclient_leases(text: str) -> list[dict[str, str]]:
    """The ``lease { ... }`` blocks of a dhclient lease file: fixed-address and options."""
    leases = []
    for block in re.findall(r"lease \{(.*?)\n\}", text, re.S):
        entry: dict[str, str] = {}
        for line in block.splitlines():
            line = line.strip().rstrip(";")
            if line.startswith("fixed-address "):
                entry["fixed-address"] = line.split()[1]
            elif line.startswith("option "):
                _, name, value = line.split(None, 2)
                entry[name] = value.strip('"')
        leases.append(entry)
    return leases


def run_dhclient(net: NetnsPair, work: Path, name: str, leases_of: str | None = None) -> DhclientLease:
    """One dhclient DORA in the client namespace with a fresh lease file (or, with *leases_of*,
    the lease file of that earlier run: an INIT-REBOOT REQUEST of its address); dhclient is
    then killed by pid (no RELEASE is sent, as when a machine goes on to boot)."""
    require_tool("dhclient")
    work.mkdir(parents=True, exist_ok=True)
    conf = work / f"{name}.conf"
    conf.write_text(DHCLIENT_CONF)
    leases, out = work / f"{leases_of or name}.leases", work / f"{name}.env"
    hook = _hook(work / f"{name}.sh", out)
    argv = ["dhclient", "-4", "-1", "-d", "-v", "-sf", str(hook), "-cf", str(conf), "-lf", str(leases),
            "-pf", str(work / f"{name}.pid"), net.client_if]
    with open(work / f"{name}.log", "wb") as log:
        proc = net.popen(net.client, argv, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)

    def bound() -> bool:
        if out.exists():
            return True
        if proc.poll() is not None:
            raise AssertionError(f"dhclient exited {proc.returncode} without a lease:\n"
                                 f"{(work / f'{name}.log').read_text(errors='replace')}")
        return False

    try:
        wait_until(bound, CLIENT_TIMEOUT, "dhclient to bind")
        found = wait_until(lambda: leases.exists() and [e for e in parse_dhclient_leases(leases.read_text())
                                                        if "fixed-address" in e], 5, "dhclient's lease file")
    finally:
        kill(proc)
    assert isinstance(found, list)
    lease = found[-1]
    hook_env = _env_file(out)
    assert hook_env.get("new_ip_address") == lease["fixed-address"], (hook_env, lease)
    return DhclientLease(lease["fixed-address"], lease, hook_env)


def run_udhcpc(net: NetnsPair, work: Path, name: str) -> dict[str, str]:
    """busybox udhcpc: ``-n -q -f``, gets one lease and exits; returns its script's env."""
    require_tool("busybox")
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{name}.env"
    hook = _hook(work / f"{name}.sh", out)
    argv = ["busybox", "udhcpc", "-i", net.client_if, "-n", "-q", "-f", "-t", "10", "-T", "1",
            "-s", str(hook)]
    result = net.run(net.client, argv, timeout=CLIENT_TIMEOUT)
    assert result.returncode == 0, f"udhcpc failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert out.exists(), f"udhcpc's script never saw 'bound':\n{result.stdout}\n{result.stderr}"
    return _env_file(out)


def _bootp_payload(ip_packet: bytes) -> bytes | None:
    """The UDP payload of an IPv4/UDP packet to port 68, else None."""
    if len(ip_packet) < 28 or ip_packet[0] >> 4 != 4 or ip_packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (ip_packet[0] & 0x0F) * 4
    _sport, dport, length, _sum = struct.unpack_from("!HHHH", ip_packet, ihl)
    if dport != 68:
        return None
    return ip_packet[ihl + 8 : ihl + length]


def bootp_request(mac: str, xid: int, flags: int = FLAG_BROADCAST) -> BootpPacket:
    """A plain BOOTP request: magic cookie, no option but END, broadcast flag set."""
    return BootpPacket(op=BOOTREQUEST, xid=xid, flags=flags, chaddr=parse_mac(mac), options=())


class BootpClient:
    """A hand-written plain BOOTP client in the client namespace.

    It sends from a UDP socket on 0.0.0.0:68 (SO_BROADCAST, SO_BINDTODEVICE to the veth) to
    255.255.255.255:67. Replies are caught two ways: on that UDP socket, which on an
    unnumbered interface only gets datagrams sent to 255.255.255.255, and on a packet socket,
    which sees every IPv4 packet on the veth, as dhclient and udhcpc do (massboot answers on
    the subnet broadcast 10.77.0.255 unless the MAC is in ``[buggy_clients]``).
    """

    ETH_P_IP = 0x0800

    def __init__(self, net: NetnsPair) -> None:
        def udp_setup(sock: socket.socket) -> None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, net.client_if.encode())
            sock.bind(("0.0.0.0", 68))

        def raw_setup(sock: socket.socket) -> None:
            sock.bind((net.client_if, self.ETH_P_IP))

        self.udp = net.socket(net.client, setup=udp_setup)
        try:
            self.raw = net.socket(net.client, socket.AF_PACKET, socket.SOCK_DGRAM,
                                  socket.htons(self.ETH_P_IP), raw_setup)
        except BaseException:
            self.udp.close()
            raise
        self.sent = 0

    def close(self) -> None:
        self.udp.close()
        self.raw.close()

    def __enter__(self) -> BootpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exchange(self, mac: str, timeout: float = 10, listen: str = "packet",
                 flags: int = FLAG_BROADCAST) -> BootpPacket:
        """Broadcast a BOOTREQUEST for *mac* (again every second, as a BOOTP client does)
        until the BOOTREPLY with its xid arrives on the *listen* socket ("packet" or "udp")."""
        xid = int.from_bytes(os.urandom(4), "big")
        request = encode(bootp_request(mac, xid, flags))
        assert request[236:241] == b"\x63\x82\x53\x63\xff"     # cookie, END, then padding only
        sock = self.raw if listen == "packet" else self.udp
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                self.udp.sendto(request, ("255.255.255.255", 67))
                self.sent += 1
                next_send = time.monotonic() + 1.0
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            reply = self._decode(data if listen == "udp" else _bootp_payload(data))
            if reply is not None and (reply.op, reply.xid, reply.mac) == (BOOTREPLY, xid, parse_mac(mac)):
                return reply
        raise AssertionError(f"no BOOTREPLY for {mac} on the {listen} socket in {timeout} s")

    def udp_pending(self) -> list[BootpPacket]:
        """What the UDP socket holds right now (no wait)."""
        found = []
        self.udp.setblocking(False)
        try:
            while True:
                try:
                    data = self.udp.recv(65535)
                except (BlockingIOError, TimeoutError):
                    return found
                reply = self._decode(data)
                if reply is not None:
                    found.append(reply)
        finally:
            self.udp.setblocking(True)

    @staticmethod
    def _decode(data: bytes | None) -> BootpPacket | None:
        if data is None:
            return None
        try:
            return decode(data)
        except PacketError:
            return None


def take_first_address(net: NetnsPair) -> str:
    """A decoy MAC takes 10.77.0.100 by plain BOOTP (bound at once), so the real client of a
    test gets 10.77.0.101, which a server that forgot its database would not give it again."""
    decoy = random_mac()
    with BootpClient(net) as client:
        reply = client.exchange(decoy)
    assert reply.yiaddr == FIRST, f"the decoy {decoy} should get the first pool address, got {reply.yiaddr}"
    return decoy


def reply_lines(log: str, mac: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(REPLY_LINE.search, log.splitlines()) if m and m["mac"] == mac]


def restart(server: Massboot, sig: int) -> None:
    status = server.stop(sig)
    if sig == signal.SIGTERM:
        assert status == 0, f"massboot exited {status} on SIGTERM:\n{server.log_text()}"
        assert "stopped" in server.log_text()
    else:
        assert status == -sig
    server.start()


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------


def test_dhclient_lease_sticky_across_restart(net: NetnsPair, server: Massboot, tmp_path: Path) -> None:
    take_first_address(net)
    first = run_dhclient(net, tmp_path / "dhclient", "run1")
    assert first.ip == SECOND
    assert first.options["subnet-mask"] == "255.255.255.0"
    assert first.options["dhcp-server-identifier"] == SERVER_IP
    assert first.options["dhcp-lease-time"].isdigit()
    assert first.hook_env["new_subnet_mask"] == "255.255.255.0"

    restart(server, signal.SIGTERM)
    again = run_dhclient(net, tmp_path / "dhclient", "run2")       # new lease file: a DISCOVER again
    assert again.ip == first.ip
    assert reply_lines(server.log_text(until=rf"ack mac={net.client_mac} "), net.client_mac), \
        "the restarted server logged no reply"


def test_udhcpc_lease_sticky_across_restart(net: NetnsPair, server: Massboot, tmp_path: Path) -> None:
    take_first_address(net)
    first = run_udhcpc(net, tmp_path / "udhcpc", "run1")
    assert first["ip"] == SECOND
    assert first["subnet"] == "255.255.255.0"
    assert first["serverid"] == SERVER_IP
    assert first["router"].split()[0] == SERVER_IP        # gateway defaults to the server address

    restart(server, signal.SIGTERM)
    again = run_udhcpc(net, tmp_path / "udhcpc", "run2")
    assert again["ip"] == first["ip"]


def reload_with_new_dns(server: Massboot) -> None:
    """A compatible config change (a DNS server) applied by SIGHUP, by pid."""
    server.config.write_text(server.config.read_text().replace(
        "allow_simple_dhcp = yes\n", f"allow_simple_dhcp = yes\ndns = {RELOAD_DNS}\n"))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "applied" in server.log_text(), 20, "the reload")
    assert "next restart" not in server.log_text()


def test_dhclient_keeps_its_address_across_a_reload(net: NetnsPair, server: Massboot, tmp_path: Path) -> None:
    take_first_address(net)
    first = run_dhclient(net, tmp_path / "dhclient", "run1")
    assert first.ip == SECOND and first.options.get("domain-name-servers") != RELOAD_DNS
    reload_with_new_dns(server)
    # dhclient -1 again on its lease file: an INIT-REBOOT REQUEST of the address it holds
    again = run_dhclient(net, tmp_path / "dhclient", "run2", leases_of="run1")
    assert again.hook_env.get("reason") == "REBOOT", again.hook_env
    assert again.ip == first.ip
    assert again.hook_env["new_domain_name_servers"] == RELOAD_DNS        # the new config answered
    log = server.log_text(until=lambda text: len(reply_lines(text, net.client_mac)) >= 3)
    assert [r["event"] for r in reply_lines(log, net.client_mac)] == ["offer", "ack", "ack"]


RENEW_HOOK = """\
#!/bin/sh
# configures the address (a RENEW is unicast from it) and records each event
case "$1" in
  bound) ip addr add "$ip/${{mask:-24}}" dev "$interface"; echo "bound $ip $dns" >> "{out}" ;;
  renew) echo "renew $ip $dns" >> "{out}" ;;
esac
exit 0
"""


def test_udhcpc_renews_its_address_across_a_reload(net: NetnsPair, server: Massboot, tmp_path: Path) -> None:
    require_tool("busybox")
    take_first_address(net)
    work = tmp_path / "udhcpc"
    work.mkdir()
    out, hook = work / "events", work / "hook.sh"
    hook.write_text(RENEW_HOOK.format(out=out))
    hook.chmod(0o755)
    argv = ["busybox", "udhcpc", "-i", net.client_if, "-f", "-t", "10", "-T", "1", "-s", str(hook)]
    with open(work / "udhcpc.log", "wb") as log:
        proc = net.popen(net.client, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def events() -> list[list[str]]:
        assert proc.poll() is None, (work / "udhcpc.log").read_text(errors="replace")
        return [line.split() for line in out.read_text().splitlines()] if out.exists() else []

    try:
        wait_until(events, CLIENT_TIMEOUT, "udhcpc to bind")
        assert events()[0][:2] == ["bound", SECOND]
        reload_with_new_dns(server)
        proc.send_signal(signal.SIGUSR1)                       # udhcpc: renew now
        wait_until(lambda: len(events()) > 1, CLIENT_TIMEOUT, "udhcpc to renew")
        assert events()[1] == ["renew", SECOND, RELOAD_DNS], events()
    finally:
        kill(proc)
    log = server.log_text(until=lambda text: len(reply_lines(text, net.client_mac)) >= 3)
    replies = [r["event"] for r in reply_lines(log, net.client_mac)]
    assert replies == ["offer", "ack", "ack"], log


def test_check_config_sees_the_veth(net: NetnsPair, tmp_path: Path) -> None:
    (tmp_path / "massboot.ini").write_text(CONFIG)
    result = net.run(net.server, [sys.executable, "-m", "massboot", "--check-config", "-p",
                                  "-c", str(tmp_path / "massboot.ini")], cwd=str(REPO))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = f"network: {net.server_if} {SERVER_ADDR}, server address {SERVER_IP}"
    assert expected in result.stdout, result.stdout
    assert "config OK" in result.stdout


def test_plain_bootp_request_answered(net: NetnsPair, server: Massboot) -> None:
    mac = random_mac()
    with BootpClient(net) as client:
        reply = client.exchange(mac)
        assert reply.op == BOOTREPLY
        assert reply.yiaddr in POOL
        assert reply.option(Opt.MESSAGE_TYPE) is None             # plain BOOTP: no option 53 back
        assert reply.option(Opt.SERVER_ID) is None and reply.option(Opt.LEASE_TIME) is None
        assert reply.option(Opt.SUBNET_MASK) == ip_bytes("255.255.255.0")
        assert bytes_ip(reply.option(Opt.ROUTER) or b"") == SERVER_IP
        assert reply.siaddr == SERVER_IP and reply.file == b"pxelinux.0"
        assert reply.flags & FLAG_BROADCAST
        # BOOTP binds at once (no REQUEST follows): the same MAC gets the same address again
        assert client.exchange(mac).yiaddr == reply.yiaddr
        sent = client.sent
    lines = reply_lines(server.log_text(until=lambda text: len(reply_lines(text, mac)) >= sent), mac)
    assert [(e["event"], e["ip"], e["phase"]) for e in lines] == [("bootp", reply.yiaddr, "os")] * sent


def test_broadcast_flag_reply_reaches_a_plain_udp_socket(net: NetnsPair, server: Massboot) -> None:
    """RFC 2131 §4.1: a client without an address that sets the broadcast flag is answered at
    255.255.255.255, out of the interface the request came in by (IP_PKTINFO), so even a plain
    UDP socket on an unnumbered interface receives it."""
    mac = random_mac()
    with BootpClient(net) as client:
        reply = client.exchange(mac, listen="udp", flags=FLAG_BROADCAST)
        assert reply.yiaddr in POOL
    line = rf"bootp mac={mac} \S+ phase=os arch=- file=pxelinux.0 to=255.255.255.255:68"
    assert re.search(line, server.log_text(until=line))


def test_buggy_client_gets_its_reply_at_255_255_255_255(net: NetnsPair,
                                                        start_server: Callable[[str], Massboot]) -> None:
    """A client in ``[buggy_clients]`` is answered at 255.255.255.255 (the socket is bound to
    the veth) even without the broadcast flag: even a plain UDP socket on an unnumbered
    interface receives that. Another client without the flag gets its reply at 10.77.0.255,
    which only a packet socket sees there."""
    buggy = "02:B0:66:" + random_mac()[9:]
    server = start_server("[buggy_clients]\n02-B0-66/24 = yes\n")
    with BootpClient(net) as client:
        reply = client.exchange(buggy, listen="udp", flags=0)
        assert reply.yiaddr in POOL and reply.option(Opt.MESSAGE_TYPE) is None
        other = random_mac()
        assert not other.startswith("02:B0:66")
        assert client.exchange(other, listen="packet", flags=0).yiaddr in POOL
        # the packet socket had it, so the kernel has already passed on whatever the UDP
        # socket was going to get: nothing for the other MAC
        assert [p for p in client.udp_pending() if p.mac == parse_mac(other)] == []
    log = server.log_text(until=lambda text: f"bootp mac={buggy} " in text and f"bootp mac={other} " in text)
    assert f"bootp mac={buggy} ip={reply.yiaddr} " in log and "to=255.255.255.255:68" in log
    assert any(line["event"] == "bootp" for line in reply_lines(log, other))
    assert re.search(rf"bootp mac={other} \S+ phase=os arch=- file=pxelinux.0 to=10.77.0.255:68", log), log


def test_lease_survives_sigkill_right_after_ack(net: NetnsPair, server: Massboot, tmp_path: Path) -> None:
    take_first_address(net)
    first = run_dhclient(net, tmp_path / "dhclient", "run1")
    assert first.ip == SECOND
    restart(server, signal.SIGKILL)                          # no clean shutdown, no checkpoint
    again = run_dhclient(net, tmp_path / "dhclient", "run2")
    assert again.ip == first.ip


def test_log_has_one_line_per_reply_with_mac_and_phase(net: NetnsPair, server: Massboot,
                                                        tmp_path: Path) -> None:
    lease = run_dhclient(net, tmp_path / "dhclient", "run1")
    log = server.log_text(until=rf"ack mac={net.client_mac} ")
    lines = log.splitlines()
    bad = [line for line in lines if not LOG_LINE.match(line)]
    assert not bad, f"log lines without the time and PXE[...] prefix (a multi-line record?): {bad}"
    assert not [line for line in lines if " ERROR: " in line or " CRITICAL: " in line], log

    events = reply_lines(log, net.client_mac)
    assert events, log
    for event in events:
        assert event["phase"] == "os" and event["ip"] == lease.ip, event
    assert events[-1]["event"] == "ack"
    # one line per reply: as many offers as dhclient sent DISCOVERs, acks as REQUESTs (a veth
    # loses nothing, so every request reached the server)
    client_log = (tmp_path / "dhclient" / "run1.log").read_text()
    kinds = [e["event"] for e in events]
    assert kinds.count("offer") == client_log.count("DHCPDISCOVER on ") >= 1, (kinds, client_log)
    assert kinds.count("ack") == client_log.count("DHCPREQUEST for ") >= 1, (kinds, client_log)
    assert client_log.count("DHCPACK of ") >= 1
