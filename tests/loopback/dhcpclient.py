"""A scripted DHCP client for loopback tests: it acts as a relay (giaddr), so replies come back
by unicast to its own socket and no root is needed."""

from __future__ import annotations

import socket
import uuid as _uuid
from dataclasses import replace

from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, MessageType, Opt, decode, encode, ip_bytes, u8

PXE_PARAMS = bytes([1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 66, 67, 128, 129, 130, 131,
                    132, 133, 134, 135])


def pxe_options(arch: int = 0, uuid: str | None = "12345678-abcd-ef00-1111-abcdefabcdef",
                ipxe: bool = False) -> list[tuple[int, bytes]]:
    options = [(Opt.PARAM_REQUEST, PXE_PARAMS), (Opt.MAX_SIZE, (1260).to_bytes(2, "big")),
               (Opt.VENDOR_CLASS, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()),
               (Opt.CLIENT_ARCH, arch.to_bytes(2, "big")), (Opt.CLIENT_NDI, bytes([1, 2, 1]))]
    if uuid:
        options.append((Opt.CLIENT_UUID, b"\0" + _uuid.UUID(uuid).bytes))
    if ipxe:
        options.append((Opt.USER_CLASS, b"iPXE"))
    return options


class RelayClient:
    """Sends requests as a relay agent at *relay_ip* and reads the replies."""

    def __init__(self, server: tuple[str, int], relay_ip: str = "127.0.0.2", timeout: float = 2.0) -> None:
        self.server = server
        self.relay_ip = relay_ip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((relay_ip, 0))
        self.sock.settimeout(timeout)
        self.xid = 0x1000

    def close(self) -> None:
        self.sock.close()

    def packet(self, mac: bytes, msgtype: int | None, options=(), **fields) -> BootpPacket:
        self.xid += 1
        opts = ([(Opt.MESSAGE_TYPE, u8(msgtype))] if msgtype is not None else []) + list(options)
        fields.setdefault("giaddr", self.relay_ip)
        return BootpPacket(op=BOOTREQUEST, xid=self.xid, chaddr=mac, options=tuple(opts), **fields)

    def send(self, packet: BootpPacket) -> None:
        self.sock.sendto(encode(packet), self.server)

    def recv(self, timeout: float | None = None) -> BootpPacket | None:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return decode(data)

    def exchange(self, packet: BootpPacket, timeout: float = 2.0) -> BootpPacket | None:
        self.send(packet)
        while True:
            reply = self.recv(timeout)
            if reply is None or reply.xid == packet.xid:
                return reply

    def dora(self, mac: bytes, options=(),
             timeout: float = 2.0) -> tuple[BootpPacket | None, BootpPacket | None]:
        offer = self.exchange(self.packet(mac, MessageType.DISCOVER, options), timeout)
        if offer is None:
            return None, None
        server_id = offer.option(Opt.SERVER_ID)
        request = self.packet(mac, MessageType.REQUEST, list(options) + [
            (Opt.SERVER_ID, server_id), (Opt.REQUESTED_IP, ip_bytes(offer.yiaddr))])
        request = replace(request, xid=offer.xid)
        return offer, self.exchange(request, timeout)
