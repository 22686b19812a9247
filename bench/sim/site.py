"""``--proxy``: the site DHCP server of a proxyDHCP run (README, "proxyDHCP").

A minimal address server in the simulator's own hub: it answers relayed DISCOVERs and REQUESTs
(``giaddr`` set) with an address from ``127.1.0.0/16`` per MAC (sticky), the options a plain
site server sends (53, 54, 1, 51) and never a PXE option, back to the relay. It exists so a
proxy run needs nothing but massboot; ``--site-server HOST:PORT`` uses a real one instead.
Counters: ``offers``, ``acks``, ``ignored``.
"""

from __future__ import annotations

import ipaddress
import socket

import gevent

from massboot.dhcp.packet import (
    BOOTREPLY,
    BootpPacket,
    MessageType,
    Opt,
    PacketError,
    decode,
    encode,
    ip_bytes,
    u8,
    u32,
)

from .transport import _set_rcvbuf

__all__ = ["SiteServer"]

FIRST = int(ipaddress.IPv4Address("127.1.0.1"))


class SiteServer:
    """The site's DHCP server for ``--proxy`` (see the module docstring)."""

    def __init__(self, address: str = "127.0.0.3") -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _set_rcvbuf(self.sock, 8 << 20)     # a rack's DISCOVERs at once: no drops here
        self.sock.bind((address, 0))
        self.port = self.sock.getsockname()[1]
        self.leases: dict[bytes, str] = {}
        self.offers = self.acks = self.ignored = 0
        self._reader = gevent.spawn(self._read)

    def _address(self, mac: bytes) -> str:
        ip = self.leases.get(mac)
        if ip is None:
            ip = self.leases[mac] = str(ipaddress.IPv4Address(FIRST + len(self.leases)))
        return ip

    def _read(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                request = decode(data)
            except PacketError:
                self.ignored += 1
                continue
            reply = self.answer(request)
            if reply is None:
                self.ignored += 1
                continue
            self.sock.sendto(encode(reply), peer)

    def answer(self, request: BootpPacket) -> BootpPacket | None:
        """The OFFER or ACK for a relayed DISCOVER or REQUEST, else None."""
        if request.giaddr == "0.0.0.0":
            return None
        msgtype = request.message_type
        if msgtype == MessageType.DISCOVER:
            kind = MessageType.OFFER
        elif msgtype == MessageType.REQUEST and request.server_id in (None, self.address):
            kind = MessageType.ACK
        else:
            return None
        ip = self._address(bytes(request.mac))
        if kind == MessageType.ACK and request.requested_ip not in (None, ip):
            return None
        if kind == MessageType.OFFER:
            self.offers += 1
        else:
            self.acks += 1
        options = ((Opt.MESSAGE_TYPE, u8(kind)), (Opt.SERVER_ID, ip_bytes(self.address)),
                   (Opt.SUBNET_MASK, ip_bytes("255.255.0.0")), (Opt.LEASE_TIME, u32(3600)))
        return BootpPacket(op=BOOTREPLY, xid=request.xid, flags=request.flags, yiaddr=ip,
                           giaddr=request.giaddr, chaddr=request.chaddr, options=options, vendor=True)

    def close(self) -> None:
        self._reader.kill(block=False)
        self.sock.close()
