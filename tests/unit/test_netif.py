"""Local IPv4 networks and server network detection (README, "Server address")."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from massboot import netif
from massboot.netif import LocalNetwork, NetworkDetectError, detect, find_network
from tests.conftest import require, require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]

NETS = [
    LocalNetwork.make("lo", "127.0.0.1", 8),
    LocalNetwork.make("eth0", "10.1.2.3", 24),
    LocalNetwork.make("eth0", "10.1.2.4", 24),  # secondary, same subnet
    LocalNetwork.make("eth1", "192.168.7.1", 16),
]


def test_local_network_fields() -> None:
    net = LocalNetwork.make("eth0", "10.1.2.3", 24)
    assert net == LocalNetwork("eth0", "10.1.2.3", "255.255.255.0", 24, "10.1.2.0", "10.1.2.255")
    assert net.cidr == "10.1.2.3/24"
    assert net.contains("10.1.2.200") and not net.contains("10.1.3.1") and not net.contains("bogus")


def test_loopback_is_listed() -> None:
    networks = netif.local_networks()
    lo = [n for n in networks if n.address == "127.0.0.1"]
    assert lo and lo[0].ifname == "lo" and lo[0].prefixlen == 8
    assert lo[0].network == "127.0.0.0" and lo[0].broadcast == "127.255.255.255"


def test_netlink_matches_ip_command() -> None:
    require_tool("ip")
    done = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    expected = [
        (link["ifname"], info["local"], info["prefixlen"])
        for link in json.loads(done.stdout)
        for info in link.get("addr_info", [])
    ]
    got = [(n.ifname, n.address, n.prefixlen) for n in netif.netlink_networks()]
    assert got == expected
    assert netif.ip_command_networks() == netif.netlink_networks()


def test_ioctl_sees_the_primary_addresses() -> None:
    primaries = netif.ioctl_networks()
    assert set(primaries) <= set(netif.netlink_networks())
    assert any(n.address == "127.0.0.1" for n in primaries)


def test_fallbacks(monkeypatch) -> None:
    def broken() -> list[LocalNetwork]:
        raise OSError("no netlink here")

    monkeypatch.setattr(netif, "netlink_networks", broken)
    monkeypatch.setattr(netif, "ip_command_networks", lambda: NETS)
    assert netif.local_networks() == NETS
    monkeypatch.setattr(netif, "ip_command_networks", broken)
    assert any(n.address == "127.0.0.1" for n in netif.local_networks())


def test_parse_ip_json_keeps_secondaries() -> None:
    text = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [
                {"family": "inet", "local": "10.7.0.1", "prefixlen": 24},
                {"family": "inet", "local": "169.254.3.4", "prefixlen": 16},
                {"family": "inet", "local": "10.7.0.2", "prefixlen": 24, "secondary": True},
            ]},
            {"ifname": "eth1", "addr_info": []},
        ]
    )
    assert [n.cidr for n in netif.parse_ip_json(text)] == [
        "127.0.0.1/8", "10.7.0.1/24", "169.254.3.4/16", "10.7.0.2/24"
    ]
    assert netif.parse_ip_json("") == []


def _rtattr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((-length) % 4)


def test_parse_rtm_newaddr() -> None:
    header = struct.pack("=BBBBI", socket.AF_INET, 30, 0, 0, 0x7FFFFFF0)  # no such ifindex
    body = header + _rtattr(netif.IFA_ADDRESS, socket.inet_aton("10.0.0.2")) + _rtattr(
        netif.IFA_LOCAL, socket.inet_aton("10.0.0.1")) + _rtattr(netif.IFA_LABEL, b"ppp0\0")
    net = netif.parse_rtm_newaddr(body)
    # the local address, not the point-to-point peer; the label names the interface
    assert net == LocalNetwork.make("ppp0", "10.0.0.1", 30)
    v6 = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 1) + _rtattr(netif.IFA_ADDRESS, b"\0" * 16)
    assert netif.parse_rtm_newaddr(v6) is None
    assert netif.parse_rtm_newaddr(b"\x02") is None
    assert netif.parse_rtm_newaddr(header + b"\x08\x00") is None  # truncated attribute


def test_find_network() -> None:
    assert find_network("10.1.2.99", NETS) == NETS[1]  # the first (primary) address wins
    assert find_network("192.168.200.1", NETS) == NETS[3]
    assert find_network("172.16.0.1", NETS) is None
    # an entry without a usable mask never matches (pybootd issue #4)
    assert find_network("8.8.8.8", [LocalNetwork.make("weird0", "10.0.0.1", 0)]) is None
    assert find_network("10.9.9.9", [LocalNetwork.make("v0", "10.9.9.9", 32)]) is not None


def test_detect_prefers_pool_start_then_address() -> None:
    assert detect("192.168.9.10", "10.1.2.3", networks=NETS) == NETS[3]
    assert detect("172.16.0.1", "10.1.2.3", networks=NETS) == NETS[1]


def test_detect_error_message() -> None:
    with pytest.raises(NetworkDetectError) as info:
        detect("172.16.0.10", networks=NETS[:2])
    message = str(info.value)
    assert message.startswith("Unable to detect network configuration")
    assert "pool_start 172.16.0.10" in message
    assert "address 0.0.0.0" in message
    assert "lo 127.0.0.1/8, eth0 10.1.2.3/24" in message
    assert "pool_start to an address inside one of them" in message


def test_detect_error_without_networks() -> None:
    with pytest.raises(NetworkDetectError, match="Local IPv4 networks: none"):
        detect("10.0.0.1", "10.0.0.2", networks=[])


def test_detect_on_this_host() -> None:
    assert detect("127.0.0.200").address == "127.0.0.1"


# -- a namespace with secondary, link-local and /32 addresses (root only) ----------------


@pytest.fixture
def netns():
    require_root()
    require_tool("ip")
    name = f"mbnetif{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    require(added.returncode == 0, f"cannot create a network namespace here: {added.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_namespace_with_secondary_addresses(netns) -> None:
    commands = [
        "link set lo up",
        "link add mbva type veth peer name mbvb",
        "link set mbva up",
        "addr add 10.7.0.1/24 dev mbva",
        "addr add 10.7.0.2/24 dev mbva",  # secondary
        "addr add 169.254.3.4/16 dev mbva",
        "addr add 10.8.0.9/32 dev mbva",
    ]
    for command in commands:
        subprocess.run(["ip", "-n", netns, *command.split()], check=True, capture_output=True)
    script = (
        "import json, dataclasses\n"
        "from massboot import netif\n"
        "print(json.dumps([[dataclasses.asdict(n) for n in f()] for f in "
        "(netif.netlink_networks, netif.ip_command_networks)]))\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script],
        capture_output=True, text=True, check=True, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    via_netlink, via_ip = (
        [LocalNetwork(**entry) for entry in listing] for listing in json.loads(done.stdout)
    )
    assert via_netlink == via_ip
    cidrs = [(n.ifname, n.cidr) for n in via_netlink]
    assert cidrs == [
        ("lo", "127.0.0.1/8"),
        ("mbva", "10.7.0.1/24"),
        ("mbva", "169.254.3.4/16"),
        ("mbva", "10.8.0.9/32"),
        ("mbva", "10.7.0.2/24"),
    ]
    assert detect("10.7.0.50", networks=via_netlink).address == "10.7.0.1"
    assert detect("169.254.9.9", networks=via_netlink).address == "169.254.3.4"
    assert asdict(detect("10.9.0.1", "10.8.0.9", networks=via_netlink))["prefixlen"] == 32
