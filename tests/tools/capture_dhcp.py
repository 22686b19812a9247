"""Capture a real client's DHCPDISCOVER as a golden hex file (one-time tool, root only).

The unit tests only read the files this tool wrote under ``tests/unit/golden/``; they never run
it. Each capture builds its own network namespaces, records the first DISCOVER that reaches a
plain UDP socket bound to port 67, kills the client by pid and removes the namespaces:

- ``dhclient``/``udhcpc``: two namespaces joined by a veth pair. The client runs in one on a
  fixed MAC (``02:00:00:00:00:01`` / ``02:00:00:00:00:02``) with a harmless script (``-sf`` /
  ``-s`` = ``/bin/true``), private lease and pid files and a config without ``host-name``; the
  recorder listens in the other (10.99.0.1/24).
- ``qemu``: one namespace with a tap device; ``qemu-system-x86_64 -boot n`` (TCG, e1000,
  MAC 52:54:00:12:34:56, a fixed SMBIOS UUID) runs SeaBIOS and Debian's iPXE ROM inside it.

Usage (from the repository root, as root)::

    python tests/tools/capture_dhcp.py dhclient udhcpc qemu --out tests/unit/golden

The ``listen`` sub-command is the recorder itself, started through ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from massboot.dhcp.packet import MessageType, PacketError, decode  # noqa: E402

SERVER_IP = "10.99.0.1/24"
QEMU_MAC = "52:54:00:12:34:56"
QEMU_UUID = "6c7a8b9c-0d1e-4f20-8a31-42536475a6b7"
CLIENT_MACS = {"dhclient": "02:00:00:00:00:01", "udhcpc": "02:00:00:00:00:02"}
DHCLIENT_CONF = """\
timeout 30;
retry 5;
request subnet-mask, broadcast-address, time-offset, routers,
        domain-name, domain-name-servers, domain-search, host-name,
        netbios-name-servers, netbios-scope, interface-mtu, ntp-servers;
"""


def run(*args: str) -> None:
    """Run a command, failing loudly."""
    subprocess.run(args, check=True)


def netns_sysctls(ns: str) -> None:
    """rp_filter=0 (DHCP sources are 0.0.0.0) and no IPv6 noise, inside ``ns`` only."""
    for key, value in (
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ):
        run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


def listen(timeout: float) -> int:
    """Recorder: print the hex of the first DHCPDISCOVER received on :67, then exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", 67))
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        try:
            if decode(data).message_type is MessageType.DISCOVER:
                print(data.hex(), flush=True)
                return 0
        except PacketError:
            continue
    return 1


def start_recorder(ns: str, timeout: float) -> subprocess.Popen[str]:
    """Start ``listen`` in ``ns`` and wait until its socket is bound."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, __file__, "listen", "--timeout", str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("recorder did not start")
    return proc


def finish(recorder: subprocess.Popen[str], client: subprocess.Popen[bytes], name: str) -> str:
    """Wait for the recorded hex, then stop the client by pid."""
    assert recorder.stdout is not None
    try:
        line = recorder.stdout.readline().strip()
        recorder.wait()
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGTERM)
            try:
                client.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
    if not line:
        raise RuntimeError(f"no DISCOVER captured from {name}")
    return line


def capture_veth(client: str, tmp: Path) -> str:
    """Capture ``client``'s DISCOVER across a veth pair between two fresh namespaces."""
    tag = f"{os.getpid()}"
    srv, cli = f"mbcap-srv-{tag}", f"mbcap-cli-{tag}"
    run("ip", "netns", "add", srv)
    try:
        run("ip", "netns", "add", cli)
        netns_sysctls(srv)
        netns_sysctls(cli)
        run("ip", "link", "add", "vsrv", "netns", srv, "type", "veth", "peer", "name", "vcli",
            "netns", cli, "address", CLIENT_MACS[client])
        run("ip", "-n", srv, "addr", "add", SERVER_IP, "dev", "vsrv")
        for ns, dev in ((srv, "vsrv"), (cli, "vcli"), (srv, "lo"), (cli, "lo")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        recorder = start_recorder(srv, 60)
        if client == "dhclient":
            conf = tmp / "dhclient.conf"
            conf.write_text(DHCLIENT_CONF)
            argv = ["dhclient", "-4", "-d", "-1", "-sf", "/bin/true", "-cf", str(conf),
                    "-lf", str(tmp / "dhclient.leases"), "-pf", str(tmp / "dhclient.pid"), "vcli"]
        else:
            argv = ["busybox", "udhcpc", "-f", "-i", "vcli", "-s", "/bin/true", "-t", "5", "-n"]
        proc = subprocess.Popen(["ip", "netns", "exec", cli, *argv], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return finish(recorder, proc, client)
    finally:
        subprocess.run(["ip", "netns", "del", cli], check=False)
        subprocess.run(["ip", "netns", "del", srv], check=False)


def capture_qemu(tmp: Path) -> str:
    """Capture the iPXE ROM's DISCOVER from QEMU (SeaBIOS, e1000) on a tap in a namespace."""
    ns = f"mbcap-qemu-{os.getpid()}"
    run("ip", "netns", "add", ns)
    try:
        netns_sysctls(ns)
        run("ip", "-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
        run("ip", "-n", ns, "addr", "add", SERVER_IP, "dev", "tap0")
        run("ip", "-n", ns, "link", "set", "tap0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        recorder = start_recorder(ns, 240)
        argv = ["qemu-system-x86_64", "-nographic", "-nodefaults", "-serial", "null", "-m", "256",
                "-boot", "n", "-smbios", f"type=1,uuid={QEMU_UUID}",
                "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device", f"e1000,netdev=n0,mac={QEMU_MAC}"]
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return finish(recorder, proc, "qemu")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=["dhclient", "udhcpc", "qemu", "listen"])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "unit" / "golden")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.what == ["listen"]:
        return listen(args.timeout)
    names = {"dhclient": "dhclient_discover", "udhcpc": "udhcpc_discover", "qemu": "ipxe_discover"}
    with tempfile.TemporaryDirectory() as tmp:
        for what in args.what:
            if what == "qemu":
                if shutil.which("qemu-system-x86_64") is None:
                    raise SystemExit("qemu-system-x86_64 is not installed")
                line = capture_qemu(Path(tmp))
            else:
                line = capture_veth(what, Path(tmp))
            path = args.out / f"{names[what]}.hex"
            path.write_text(line + "\n")
            packet = decode(bytes.fromhex(line))
            print(f"{path}: {len(line) // 2} bytes, mac={packet.mac.hex(':')}, options="
                  f"{[code for code, _ in packet.options]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
