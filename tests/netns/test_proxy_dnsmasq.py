"""massboot in proxy mode beside a real site DHCP server (README, "proxyDHCP").

The segment (tests/netns/sitelab.py): dnsmasq, started privately, hands out the addresses and
no PXE option; massboot (``mode = proxy``, ``access = mac``, its server address detected as the
one non-loopback network) gives the boot information only. In the client namespace:

* a PXE client written here (the DISCOVER is QEMU iPXE ROM's, golden/ipxe_discover.hex, on this
  client's MAC) sees two OFFERs for one DISCOVER: dnsmasq's with an address and no boot
  information, massboot's with the boot file and no address; it takes the address from dnsmasq,
  then asks massboot on the PXE boot server port (4011) from that address and gets the boot
  file back from port 4011; TFTP then serves it a file named by the ``{ip}`` filter;
* dhclient and udhcpc (the OS phase on the same MAC) are answered by dnsmasq only: massboot
  logs them as ``not_boot_client`` and sends nothing;
* a MAC that ``[mac]`` does not list gets dnsmasq's OFFER and nothing from massboot.

Root only; under ``CI=true`` a missing tool fails instead of skipping.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from massboot.dhcp.packet import FLAG_BROADCAST, BootpPacket, MessageType, Opt, decode, encode, ip_bytes, u8
from massboot.ident import parse_mac
from tests.conftest import require_root, require_tool
from tests.netns.sitelab import PROXY_CONFIG, REPLY, SERVER_IP, SITE_IP, SITE_RANGE, SiteLab
from tests.netns.test_dhcp_clients import run_dhclient, run_udhcpc

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

CLIENT_MAC = "02:00:00:79:00:01"
DENIED_MAC = "02:00:00:79:00:99"
GOLDEN = Path(__file__).parents[1] / "unit" / "golden" / "ipxe_discover.hex"


def addresses() -> list[str]:
    first, last = (int(a.rsplit(".", 1)[1]) for a in SITE_RANGE)
    return [f"10.79.0.{n}" for n in range(first, last + 1)]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[SiteLab]:
    require_root()
    require_tool("ip", "dnsmasq", "dhclient", "busybox", "curl")
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "pxelinux.0").write_bytes(b"pxelinux" * 64)
    for ip in addresses():
        (root / f"cfg-{ip}").write_text(f"config for {ip}\n")
    config = tmp_path / "massboot.ini"
    config.write_text(PROXY_CONFIG.format(mac=CLIENT_MAC.replace(":", "-"), root=root,
                                          filter="boot.cfg = cfg-{ip}"))
    with SiteLab(tmp_path / "lab", client_mac=CLIENT_MAC) as made:
        made.start_dnsmasq()
        made.start_massboot(config)
        yield made


class Rom:
    """The PXE client written here: a UDP socket on :68 in the client namespace."""

    def __init__(self, lab: SiteLab, mac: str) -> None:
        self.lab = lab
        self.template = replace(decode(bytes.fromhex(GOLDEN.read_text().strip())), chaddr=parse_mac(mac))

        def setup(sock: socket.socket) -> None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, lab.client_if.encode())
            sock.bind(("0.0.0.0", 68))

        self.sock: socket.socket = lab.socket(lab.client, setup=setup)

    def close(self) -> None:
        self.sock.close()

    def packet(self, msgtype: MessageType, xid: int, extra: tuple = (), **fields: object) -> BootpPacket:
        options = tuple((c, u8(msgtype) if c == Opt.MESSAGE_TYPE else v) for c, v in self.template.options)
        return replace(self.template, xid=xid, options=options + extra, **fields)

    def send(self, packet: BootpPacket, to: tuple[str, int]) -> None:
        self.sock.sendto(encode(packet), to)

    def collect(self, xid: int, seconds: float, enough=None) -> list[tuple[BootpPacket, tuple[str, int]]]:
        """Replies with *xid* for *seconds* (or until *enough(replies)*)."""
        out: list[tuple[BootpPacket, tuple[str, int]]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            reply = decode(data)
            if reply.xid == xid and reply.op == 2:
                out.append((reply, peer))
                if enough is not None and enough(out):
                    break
        return out


def by_server(replies: list[tuple[BootpPacket, tuple[str, int]]]) -> dict[str, BootpPacket]:
    return {r.server_id or "?": r for r, _peer in replies}


def test_pxe_client_gets_address_from_site_and_boot_file_from_massboot(lab: SiteLab) -> None:
    rom = Rom(lab, CLIENT_MAC)
    try:
        xid = 0x13001
        rom.send(rom.packet(MessageType.DISCOVER, xid, flags=FLAG_BROADCAST), ("255.255.255.255", 67))
        offers = by_server(rom.collect(xid, 10, lambda got: len(by_server(got)) >= 2))
        diag = f"\nmassboot:\n{lab.massboot_text()}\ndnsmasq:\n{lab.dnsmasq_text()}"
        assert set(offers) == {SITE_IP, SERVER_IP}, f"offers from {set(offers)}{diag}"
        site, proxy = offers[SITE_IP], offers[SERVER_IP]
        # the site server: an address, no boot information
        assert site.message_type == MessageType.OFFER and site.yiaddr in addresses()
        assert site.vendor_class is None and site.option(Opt.VENDOR_SPECIFIC) is None and not site.file
        # massboot: the boot information, no address
        assert proxy.message_type == MessageType.OFFER and proxy.yiaddr == "0.0.0.0"
        # proxy_offer = redirect (the default): no boot file yet, the ROM must ask on port 4011
        assert proxy.vendor_class == "PXEClient" and proxy.file == b"" and proxy.siaddr == SERVER_IP
        assert proxy.option(Opt.LEASE_TIME) is None and proxy.option(Opt.SUBNET_MASK) is None

        # the ROM takes the site's address (REQUEST to the site server), as PXE 2.1 §2.2 step 4
        xid2 = 0x13002
        rom.send(rom.packet(MessageType.REQUEST, xid2, flags=FLAG_BROADCAST, extra=(
            (Opt.SERVER_ID, ip_bytes(SITE_IP)), (Opt.REQUESTED_IP, ip_bytes(site.yiaddr)))),
            ("255.255.255.255", 67))
        acks = rom.collect(xid2, 10, lambda got: True)
        assert [r.message_type for r, _ in acks] == [MessageType.ACK], f"site ACK: {acks}{diag}"
        ip = acks[0][0].yiaddr
        subprocess.run(["ip", "-n", lab.client, "addr", "add", f"{ip}/24", "dev", lab.client_if], check=True)

        # then the boot server REQUEST, unicast to massboot's port 4011 from that address
        xid3 = 0x13003
        rom.send(rom.packet(MessageType.REQUEST, xid3, ciaddr=ip), (SERVER_IP, 4011))
        replies = rom.collect(xid3, 10, lambda got: True)
        assert len(replies) == 1, f"boot server ACK: {replies}{diag}"
        ack, peer = replies[0]
        assert peer == (SERVER_IP, 4011), f"the ACK came from {peer}"
        assert ack.message_type == MessageType.ACK and ack.yiaddr == "0.0.0.0" and ack.ciaddr == ip
        assert ack.file == b"pxelinux.0" and ack.server_id == SERVER_IP
    finally:
        rom.close()

    # TFTP knows the client by the address it reported: the {ip} filter names its file
    fetched = lab.run(lab.client, ["curl", "-s", "--max-time", "20", f"tftp://{SERVER_IP}/boot.cfg"])
    assert fetched.returncode == 0 and fetched.stdout == f"config for {ip}\n", (fetched, lab.massboot_text())
    subprocess.run(["ip", "-n", lab.client, "addr", "flush", "dev", lab.client_if], check=True)

    # the OS phase on the same MAC: dhclient, then udhcpc, answered by the site server only
    lease = run_dhclient(lab, lab.work / "dhclient", "os1")   # type: ignore[arg-type]
    assert lease.ip in addresses() and lease.options.get("dhcp-server-identifier") == SITE_IP, lease
    env = run_udhcpc(lab, lab.work / "udhcpc", "os2")         # type: ignore[arg-type]
    assert env.get("ip") in addresses() and env.get("serverid") == SITE_IP, env

    log = lab.massboot_text()
    mine = [m for m in REPLY.finditer(log) if m["mac"] == CLIENT_MAC]
    assert [(bool(m["proxy"]), m["kind"], m["ip"]) for m in mine] == [
        (True, "offer", "0.0.0.0"), (True, "ack", ip)], f"massboot's replies:\n{log}"
    assert not [m for m in REPLY.finditer(log) if not m["proxy"]], f"a non-proxy reply:\n{log}"
    assert re.search(rf"ignored mac={CLIENT_MAC} phase=pxe reason=site_server", log), log
    assert len(re.findall(rf"ignored mac={CLIENT_MAC} phase=os reason=not_boot_client", log)) >= 4, log
    assert re.search(rf"tftp done client={re.escape(ip)}:\d+ file=boot.cfg", log), log


def test_mac_denied_rom_gets_nothing_from_massboot(lab: SiteLab) -> None:
    rom = Rom(lab, DENIED_MAC)
    try:
        xid = 0x13100
        rom.send(rom.packet(MessageType.DISCOVER, xid, flags=FLAG_BROADCAST), ("255.255.255.255", 67))
        offers = by_server(rom.collect(xid, 6))
    finally:
        rom.close()
    log = lab.massboot_text()
    assert set(offers) == {SITE_IP}, f"offers from {set(offers)}\n{log}"
    assert re.search(rf"denied mac={DENIED_MAC} by mac acl", log), log
    assert not [m for m in REPLY.finditer(log) if m["mac"] == DENIED_MAC], log
