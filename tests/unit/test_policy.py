"""DHCP/PXE decisions without sockets (massboot.dhcp.policy)."""

from __future__ import annotations

import pytest

from massboot.dhcp.packet import (
    BOOTREQUEST,
    FLAG_BROADCAST,
    BootpPacket,
    MessageType,
    Opt,
    decode,
    encode,
    ip_bytes,
    u8,
)
from massboot.dhcp.policy import (
    BootInfo,
    Network,
    RequestKind,
    State,
    build_reply,
    destination,
    next_state,
    request_kind,
    select_bootfile,
)

MAC = bytes.fromhex("525400123456")
NET = Network("10.0.0.1", "255.255.255.0", "10.0.0.254", ("10.0.0.53", "10.0.0.54"), 3600)
BOOT = BootInfo("10.0.0.1", "unknown.localdomain", "pxelinux.0", 40000)


def request(msgtype: int | None = MessageType.DISCOVER, options=(), **fields) -> BootpPacket:
    opts = ((Opt.MESSAGE_TYPE, u8(msgtype)),) if msgtype is not None else ()
    return BootpPacket(op=BOOTREQUEST, xid=7, chaddr=MAC, options=opts + tuple(options), **fields)


@pytest.mark.parametrize("state, pxe, msgtype, expected", [
    (State.IDLE, True, MessageType.DISCOVER, State.PXE),
    (State.IDLE, True, MessageType.REQUEST, State.IDLE),      # pybootd: only a DISCOVER starts PXE
    (State.IDLE, False, MessageType.DISCOVER, State.IDLE),
    (State.PXE, False, MessageType.DISCOVER, State.PXE),
    (State.PXE, False, MessageType.REQUEST, State.DHCP),      # the installed OS asks
    (State.PXE, True, MessageType.REQUEST, State.PXE),
    (State.DHCP, True, MessageType.DISCOVER, State.PXE),      # rebooted
    (State.DHCP, False, MessageType.REQUEST, State.DHCP),
])
def test_state_machine(state, pxe, msgtype, expected):
    assert next_state(state, pxe, msgtype) == expected


def test_request_kinds():
    sid = (Opt.SERVER_ID, ip_bytes("10.0.0.1"))
    want = (Opt.REQUESTED_IP, ip_bytes("10.0.0.100"))
    assert request_kind(request(MessageType.REQUEST, [sid, want])) == RequestKind.SELECTING
    assert request_kind(request(MessageType.REQUEST, [want])) == RequestKind.INIT_REBOOT
    renew = request(MessageType.REQUEST, ciaddr="10.0.0.100")
    assert request_kind(renew, unicast=True) == RequestKind.RENEWING
    assert request_kind(renew, unicast=False) == RequestKind.REBINDING
    assert request_kind(request(MessageType.REQUEST)) == RequestKind.UNKNOWN


def test_select_bootfile():
    table = {7: "shimx64.efi", 9: "shimx64.efi"}
    assert select_bootfile(None, False, "pxelinux.0", table, None) == ("pxelinux.0", False)
    assert select_bootfile(0, False, "pxelinux.0", table, None) == ("pxelinux.0", False)   # BIOS
    assert select_bootfile(0, False, "pxelinux.0", {0: "lpxelinux.0"}, None) == ("lpxelinux.0", False)
    assert select_bootfile(7, False, "pxelinux.0", table, None) == ("shimx64.efi", False)
    assert select_bootfile(11, False, "pxelinux.0", table, None) == ("pxelinux.0", True)   # counted
    assert select_bootfile(7, True, "pxelinux.0", table, "boot.ipxe") == ("boot.ipxe", False)
    assert select_bootfile(7, True, "pxelinux.0", table, None) == ("shimx64.efi", False)


def test_offer_options():
    pxe_req = request(options=[(Opt.PARAM_REQUEST, bytes([1, 3, 6, 13, 43, 60, 66, 67])),
                               (Opt.VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001"),
                               (Opt.CLIENT_UUID, b"\0" + bytes(16)),
                               (Opt.RELAY_AGENT, b"\x01\x02ab")], giaddr="10.9.0.1")
    reply = decode(encode(build_reply(pxe_req, MessageType.OFFER, yiaddr="10.0.0.100", net=NET,
                                      boot=BOOT, pxe=True)))
    assert reply.message_type == MessageType.OFFER and reply.yiaddr == "10.0.0.100"
    assert reply.siaddr == "10.0.0.1" and reply.file == b"pxelinux.0" and reply.giaddr == "10.9.0.1"
    assert reply.option(Opt.DNS) == ip_bytes("10.0.0.53") + ip_bytes("10.0.0.54")
    assert reply.option(Opt.ROUTER) == ip_bytes("10.0.0.254")
    assert int.from_bytes(reply.option(Opt.LEASE_TIME), "big") == 3600
    assert int.from_bytes(reply.option(Opt.RENEWAL_T1), "big") == 1800
    assert int.from_bytes(reply.option(Opt.REBINDING_T2), "big") == 3150
    assert reply.option(Opt.VENDOR_CLASS) == b"PXEClient"
    assert reply.option(Opt.VENDOR_SPECIFIC) == bytes([6, 1, 8, 255])       # boot the file directly
    assert reply.option(Opt.CLIENT_UUID) == b"\0" + bytes(16)
    assert reply.option(Opt.TFTP_SERVER) == b"10.0.0.1" and reply.option(Opt.BOOTFILE) == b"pxelinux.0"
    assert reply.option(Opt.BOOTFILE_SIZE) == (79).to_bytes(2, "big")
    assert reply.option(Opt.RELAY_AGENT) == b"\x01\x02ab"


def test_os_phase_reply_has_no_pxe_options_and_a_hostname():
    reply = build_reply(request(MessageType.REQUEST), MessageType.ACK, yiaddr="10.0.0.100", net=NET,
                        boot=BOOT, pxe=False, hostname="rack1-n07")
    assert reply.option(Opt.VENDOR_SPECIFIC) is None and reply.option(Opt.BOOTFILE) is None
    assert reply.option(Opt.HOSTNAME) == b"rack1-n07"


def test_nak_and_bootp_and_inform():
    nak = build_reply(request(MessageType.REQUEST), MessageType.NAK, yiaddr="0.0.0.0", net=NET, boot=None,
                      pxe=False, message="address 10.0.0.9 is not yours")
    assert [code for code, _ in nak.options] == [Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.MESSAGE]
    assert nak.yiaddr == "0.0.0.0" and nak.file == b""
    bootp = build_reply(request(None), None, yiaddr="10.0.0.100", net=NET, boot=BOOT, pxe=False)
    assert bootp.option(Opt.MESSAGE_TYPE) is None and bootp.option(Opt.LEASE_TIME) is None
    assert bootp.option(Opt.SUBNET_MASK) == ip_bytes("255.255.255.0")
    inform = build_reply(request(MessageType.INFORM, ciaddr="10.0.0.7"), MessageType.ACK, yiaddr="0.0.0.0",
                         net=NET, boot=None, pxe=False)
    assert inform.option(Opt.LEASE_TIME) is None and inform.ciaddr == "10.0.0.7"


@pytest.mark.parametrize("fields, source, msgtype, force, expected", [
    ({"giaddr": "10.9.0.1"}, ("10.9.0.1", 67), MessageType.OFFER, False, ("10.9.0.1", 67)),
    ({"giaddr": "10.9.0.1"}, ("10.9.0.1", 6767), MessageType.OFFER, False, ("10.9.0.1", 6767)),
    ({"giaddr": "10.9.0.1"}, ("10.9.0.2", 67), MessageType.OFFER, False, ("10.9.0.1", 67)),
    ({"ciaddr": "10.0.0.100"}, ("10.0.0.100", 68), MessageType.ACK, False, ("10.0.0.100", 68)),
    ({}, ("0.0.0.0", 68), MessageType.OFFER, False, ("10.0.0.255", 68)),
    ({"flags": FLAG_BROADCAST}, ("0.0.0.0", 68), MessageType.OFFER, False, ("255.255.255.255", 68)),
    ({}, ("0.0.0.0", 68), MessageType.OFFER, True, ("255.255.255.255", 68)),
    ({}, ("0.0.0.0", 68), MessageType.NAK, False, ("255.255.255.255", 68)),
])
def test_destination(fields, source, msgtype, force, expected):
    req = request(MessageType.REQUEST, **fields)
    reply = build_reply(req, msgtype, yiaddr="10.0.0.100", net=NET, boot=None, pxe=False)
    assert destination(req, reply, source, server_port=67, subnet_broadcast=NET.broadcast,
                       force_broadcast=force) == expected


def test_domain_name_only_when_set_and_asked():
    """Option 15 (RFC 2132 §3.17) when the config sets ``domain`` and option 55 asks for it."""
    asks = request(options=[(Opt.PARAM_REQUEST, bytes([1, 3, 15]))])
    silent = request(options=[(Opt.PARAM_REQUEST, bytes([1, 3]))])
    reply = build_reply(asks, MessageType.OFFER, yiaddr="10.0.0.100", net=NET, boot=BOOT, pxe=False,
                        domain="rack.example")
    assert decode(encode(reply)).option(Opt.DOMAIN_NAME) == b"rack.example"
    assert build_reply(silent, MessageType.OFFER, yiaddr="10.0.0.100", net=NET, boot=BOOT, pxe=False,
                       domain="rack.example").option(Opt.DOMAIN_NAME) is None
    assert build_reply(asks, MessageType.OFFER, yiaddr="10.0.0.100", net=NET, boot=BOOT,
                       pxe=False).option(Opt.DOMAIN_NAME) is None
    assert build_reply(asks, MessageType.NAK, yiaddr="0.0.0.0", net=NET, boot=None, pxe=False,
                       domain="rack.example").option(Opt.DOMAIN_NAME) is None
