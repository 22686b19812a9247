"""Capture a real ROM's proxyDHCP requests as golden hex files (one-time tool, root only).

The unit tests only read what this tool wrote under ``tests/unit/golden/``. It builds the
proxyDHCP segment of tests/netns/sitelab.py (dnsmasq as the site server, massboot in proxy mode,
one tap), powers on a QEMU machine on the tap, and records from the bridge (an ``AF_PACKET``
socket in the lab namespace) the ROM's first DISCOVER to port 67 and its first REQUEST to the
PXE boot server port 4011; then everything is stopped by pid and the namespaces deleted.

- ``ipxe``: SeaBIOS + Debian's iPXE ROM on an e1000 (MAC 52:54:00:12:34:56);
- ``ovmf``: OVMF (Debian ``ovmf``) with virtio-net and no option ROM, so EDK2's own UEFI PXE
  stack asks (MAC 52:54:00:12:34:57).

Usage (from the repository root, as root)::

    python tests/tools/capture_proxy.py ipxe ovmf --out tests/unit/golden
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from massboot.dhcp.packet import MessageType, PacketError, decode  # noqa: E402
from tests.netns.netns import inside  # noqa: E402
from tests.netns.sitelab import BRIDGE, TAPS, SiteLab  # noqa: E402

UUID = "6c7a8b9c-0d1e-4f20-8a31-42536475a6b7"
MACS = {"ipxe": "52:54:00:12:34:56", "ovmf": "52:54:00:12:34:57"}
CONFIG = """\
[logger]
level = debug
[bootpd]
mode = proxy
[bootfile]
default = pxelinux.0
00007 = bootx64.efi
[tftpd]
root = {root}
"""
ETH_P_IP = 0x0800


def qemu_argv(what: str, work: Path) -> list[str]:
    base = ["qemu-system-x86_64", "-nographic", "-nodefaults", "-m", "512", "-no-reboot",
            "-serial", f"file:{work / (what + '.serial')}", "-smbios", f"type=1,uuid={UUID}",
            "-netdev", f"tap,id=n0,ifname={TAPS[0]},script=no,downscript=no"]
    if what == "ipxe":
        return [*base, "-boot", "n", "-device", f"e1000,netdev=n0,mac={MACS[what]}"]
    code = Path("/usr/share/OVMF/OVMF_CODE.fd")
    variables = work / "OVMF_VARS.fd"
    shutil.copyfile("/usr/share/OVMF/OVMF_VARS.fd", variables)
    return [*base, "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={variables}",
            "-device", f"virtio-net-pci,netdev=n0,mac={MACS[what]},disable-legacy=on,romfile="]


def udp_payload(frame: bytes) -> tuple[int, bytes] | None:
    """(destination port, payload) of an Ethernet/IPv4/UDP frame, else None."""
    if len(frame) < 14 + 28 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    if ip[9] != socket.IPPROTO_UDP:
        return None
    ihl = (ip[0] & 0x0F) * 4
    _sport, dport, length, _sum = struct.unpack_from("!HHHH", ip, ihl)
    return dport, bytes(ip[ihl + 8: ihl + length])


def capture(what: str, work: Path, timeout: float = 240) -> dict[str, str]:
    root = work / "tftp"
    root.mkdir(parents=True)
    config = work / "massboot.ini"
    config.write_text(CONFIG.format(root=root))
    found: dict[str, str] = {}
    with SiteLab(work / "lab", taps=1) as lab:
        lab.start_dnsmasq()
        lab.start_massboot(config)
        with inside(lab.lab):
            sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            sniffer.bind((BRIDGE, 0))
        lab.popen(lab.lab, qemu_argv(what, work), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        mac = bytes.fromhex(MACS[what].replace(":", ""))
        while len(found) < 2 and (left := deadline - time.monotonic()) > 0:
            sniffer.settimeout(left)
            try:
                frame = sniffer.recv(65535)
            except TimeoutError:
                break
            got = udp_payload(frame)
            if got is None or got[0] not in (67, 4011):
                continue
            try:
                packet = decode(got[1])
            except PacketError:
                continue
            if packet.mac != mac or packet.op != 1:
                continue
            if got[0] == 67 and packet.message_type is MessageType.DISCOVER:
                found.setdefault("discover", got[1].hex())
            elif got[0] == 4011:
                found.setdefault("proxy_request", got[1].hex())
        sniffer.close()
        print(lab.massboot_text()[-3000:], file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=sorted(MACS))
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "unit" / "golden")
    args = parser.parse_args(argv)
    status = 0
    for what in args.what:
        with tempfile.TemporaryDirectory() as tmp:
            found = capture(what, Path(tmp))
        for kind, line in sorted(found.items()):
            path = args.out / f"{what}_proxy_{kind.removeprefix('proxy_')}.hex"
            path.write_text(line + "\n")
            packet = decode(bytes.fromhex(line))
            print(f"{path}: {len(line) // 2} bytes, ciaddr={packet.ciaddr}, options="
                  f"{[code for code, _ in packet.options]}")
        if "proxy_request" not in found:
            print(f"{what}: no REQUEST to port 4011 seen", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
