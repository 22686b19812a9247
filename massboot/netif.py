"""Local IPv4 networks, for finding the server's address and subnet (README, "Server address").

:func:`local_networks` lists every IPv4 address of every interface, secondary addresses
included, with an rtnetlink ``RTM_GETADDR`` dump (stdlib only). Where netlink is unavailable
it falls back to ``ip -j -4 addr``, then to ``ioctl`` (primary addresses only).
:func:`detect` picks the network that holds ``pool_start`` (else ``address``), as pybootd did,
and fails with a message that says what to fix.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import socket
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_REQUEST = 0x001
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type

# ioctl (linux/sockios.h)
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


@dataclass(frozen=True, slots=True)
class LocalNetwork:
    """One IPv4 address of a local interface and the subnet it sits in.

    Attributes:
        ifname: the interface (``eth0``).
        address: the local address (``10.1.2.3``).
        netmask: dotted (``255.255.255.0``).
        prefixlen: 24.
        network: ``10.1.2.0``.
        broadcast: ``10.1.2.255``.
    """

    ifname: str
    address: str
    netmask: str
    prefixlen: int
    network: str
    broadcast: str

    @classmethod
    def make(cls, ifname: str, address: str, prefixlen: int) -> LocalNetwork:
        """Build the entry for *address*/*prefixlen* on *ifname*."""
        iface = ipaddress.IPv4Interface(f"{address}/{prefixlen}")
        net = iface.network
        return cls(ifname, str(iface.ip), str(net.netmask), prefixlen, str(net.network_address),
                   str(net.broadcast_address))

    @property
    def cidr(self) -> str:
        """``10.1.2.3/24``."""
        return f"{self.address}/{self.prefixlen}"

    def contains(self, ip: str) -> bool:
        """Whether *ip* is inside this subnet."""
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        mask = int(ipaddress.IPv4Address(self.netmask))
        return value & mask == int(ipaddress.IPv4Address(self.network))


class NetworkDetectError(Exception):
    """No local IPv4 network holds the configured addresses."""


# -- rtnetlink -----------------------------------------------------------------------------


def _align(n: int) -> int:
    return (n + 3) & ~3


def _parse_rtattrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        attrs.setdefault(kind, data[offset + _RTATTR.size:offset + length])
        offset += _align(length)
    return attrs


def _ifname(index: int, label: bytes | None) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return label.split(b"\0", 1)[0].decode("utf-8", "replace") if label else f"if{index}"


def parse_rtm_newaddr(payload: bytes) -> LocalNetwork | None:
    """Decode the body of one ``RTM_NEWADDR`` message (after the netlink header).

    Returns:
        The IPv4 entry, or None for another family or a message without an address.
    """
    if len(payload) < _IFADDRMSG.size:
        return None
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
    if family != socket.AF_INET:
        return None
    attrs = _parse_rtattrs(payload[_IFADDRMSG.size:])
    # IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != 4 or prefixlen > 32:
        return None
    return LocalNetwork.make(_ifname(index, attrs.get(IFA_LABEL)), socket.inet_ntoa(raw), prefixlen)


def netlink_networks(timeout: float = 5.0) -> list[LocalNetwork]:
    """Every IPv4 address through an rtnetlink ``RTM_GETADDR`` dump.

    Raises:
        OSError: netlink is unavailable, or the kernel answered with an error.
    """
    networks: list[LocalNetwork] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        seq = 1
        request = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        flags = NLM_F_REQUEST | NLM_F_DUMP
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), RTM_GETADDR, flags, seq, 0)
        sock.sendto(header + request, (0, 0))
        while True:
            data = sock.recv(65536)
            if not data:
                raise OSError("netlink: connection closed during the dump")
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    raise OSError("netlink: truncated message")
                body = data[offset + _NLMSGHDR.size:offset + length]
                offset += _align(length)
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return networks
                if kind == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    if errno == 0:
                        continue
                    raise OSError(errno, f"netlink RTM_GETADDR: {errno}")
                if kind == RTM_NEWADDR:
                    entry = parse_rtm_newaddr(body)
                    if entry is not None:
                        networks.append(entry)


# -- fallbacks -----------------------------------------------------------------------------


def parse_ip_json(text: str) -> list[LocalNetwork]:
    """Decode the output of ``ip -j -4 addr``."""
    networks: list[LocalNetwork] = []
    for link in json.loads(text or "[]"):
        ifname = link.get("ifname", "")
        for info in link.get("addr_info", []):
            if info.get("family") not in (None, "inet") or "local" not in info:
                continue
            networks.append(LocalNetwork.make(ifname, info["local"], int(info.get("prefixlen", 32))))
    return networks


def ip_command_networks(timeout: float = 10.0) -> list[LocalNetwork]:
    """Every IPv4 address from ``ip -j -4 addr``.

    Raises:
        OSError: ``ip`` is missing or failed.
        ValueError: its output is not the expected JSON.
    """
    try:
        done = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.SubprocessError as exc:
        raise OSError(f"ip -j -4 addr: {exc}") from exc
    return parse_ip_json(done.stdout)


def ioctl_networks() -> list[LocalNetwork]:
    """The primary IPv4 address of each interface (``SIOCGIFADDR``/``SIOCGIFNETMASK``)."""
    networks: list[LocalNetwork] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24]
                netmask = fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, request)[20:24]
            except OSError:
                continue  # no IPv4 address on this interface
            mask = ipaddress.IPv4Address(netmask)
            prefixlen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            networks.append(LocalNetwork.make(name, socket.inet_ntoa(address), prefixlen))
    return networks


def local_networks() -> list[LocalNetwork]:
    """Every IPv4 address on every interface, secondary addresses included, in kernel order.

    Nothing is filtered here: link-local and ``/32`` addresses carry a mask and are listed;
    :func:`find_network` ignores only entries without a usable mask (``/0``).
    """
    try:
        return netlink_networks()
    except OSError as exc:
        log.debug("netlink address dump failed (%s); trying `ip -j -4 addr`", exc)
    try:
        return ip_command_networks()
    except (OSError, ValueError) as exc:
        log.debug("`ip -j -4 addr` failed (%s); using ioctl (primary addresses only)", exc)
    return ioctl_networks()


# -- detection -----------------------------------------------------------------------------


def find_network(ip: str, networks: Sequence[LocalNetwork]) -> LocalNetwork | None:
    """The first network containing *ip*, skipping entries with no usable mask (``/0``)."""
    for network in networks:
        if network.prefixlen > 0 and network.contains(ip):
            return network
    return None


def _describe(networks: Sequence[LocalNetwork]) -> str:
    return ", ".join(f"{n.ifname} {n.cidr}" for n in networks) or "none"


def detect(
    pool_start: str, address: str = "0.0.0.0", networks: Sequence[LocalNetwork] | None = None
) -> LocalNetwork:
    """Find the local network that serves the pool: ``pool_start``'s, else ``address``'s.

    Args:
        pool_start: the first pool address (``[bootpd] pool_start``).
        address: the configured listen address (``[bootpd] address``).
        networks: the local networks (default: :func:`local_networks`).

    Returns:
        The entry whose ``address`` is the server's address on that network.

    Raises:
        NetworkDetectError: neither address is inside a local IPv4 network. The message
            begins ``Unable to detect network configuration``, names the addresses tried,
            lists the local networks and says to set ``pool_start`` inside one of them.
    """
    if networks is None:
        networks = local_networks()
    tried = []
    for label, ip in (("pool_start", pool_start), ("address", address)):
        tried.append(f"{label} {ip}")
        found = find_network(ip, networks)
        if found is not None:
            log.info("using ifname:%s, mask:%s, net:%s, server:%s (from %s %s)",
                     found.ifname, found.netmask, found.network, found.address, label, ip)
            return found
    raise NetworkDetectError(
        "Unable to detect network configuration: no local IPv4 network contains "
        f"{' or '.join(tried)}. Local IPv4 networks: {_describe(networks)}. "
        "Set [bootpd] pool_start to an address inside one of them."
    )


def detect_proxy(tftp_address: str | None, address: str = "0.0.0.0",
                 networks: Sequence[LocalNetwork] | None = None) -> LocalNetwork:
    """The server's network in proxy mode, where there is no pool to pick it (README, "proxyDHCP").

    ``[tftpd] address`` when set (it must be a local address: it goes in ``siaddr`` and option
    54), else ``[bootpd] address`` when it is a unicast address, else the one local IPv4 network
    that is not loopback.

    Raises:
        NetworkDetectError: the configured address is not local, or there is no non-loopback
            network, or several: the message lists them and says to set ``[tftpd] address``.
    """
    if networks is None:
        networks = local_networks()
    for label, ip in (("[tftpd] address", tftp_address), ("[bootpd] address", address)):
        if not ip or ip == "0.0.0.0":
            continue
        found = next((n for n in networks if n.address == ip and n.prefixlen > 0), None)
        if found is None:
            raise NetworkDetectError(
                f"Unable to detect network configuration: {label} {ip} is not an address of this "
                f"host. Local IPv4 networks: {_describe(networks)}.")
        log.info("proxy mode: using ifname:%s, net:%s/%d, server:%s (from %s)",
                 found.ifname, found.network, found.prefixlen, found.address, label)
        return found
    candidates = [n for n in networks if n.prefixlen > 0 and not ipaddress.IPv4Address(n.address).is_loopback]
    if len(candidates) == 1:
        found = candidates[0]
        log.info("proxy mode: using ifname:%s, net:%s/%d, server:%s (the only non-loopback network)",
                 found.ifname, found.network, found.prefixlen, found.address)
        return found
    what = "no IPv4 network but loopback" if not candidates else \
        f"{len(candidates)} IPv4 networks ({_describe(candidates)})"
    raise NetworkDetectError(
        f"Unable to detect network configuration: proxy mode has no pool to pick the server "
        f"address and this host has {what}. Set [tftpd] address to the address the PXE clients "
        "reach this server at.")
