"""Pure DHCP/PXE helpers of the exchange (:mod:`massboot.dhcp.exchange`): no state, no store.

* :func:`next_state` — pybootd's per-MAC PXE→OS state machine (README, "DHCP and PXE
  behaviour");
* :func:`request_kind` — which RFC 2131 §4.3.2 state a DHCPREQUEST comes from;
* :func:`select_bootfile` — boot file by architecture, iPXE second stage (README, "[bootfile]");
* :func:`select_http_bootfile` — a UEFI HTTP Boot client's boot URL (README, "UEFI: ipxe.efi and
  UEFI HTTP Boot");
* :func:`build_reply` — the reply packet and its options (RFC 2131 §4.3.1, RFC 2132);
* :func:`destination` — where the reply goes (RFC 2131 §4.1);
* :func:`build_proxy_reply`, :func:`proxy_destination` — proxy mode's OFFER and boot-server ACK
  and where they go (PXE 2.1 §2.2, §2.5; README, "proxyDHCP").
"""

from __future__ import annotations

import functools
import ipaddress
import math
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum

from massboot.dhcp.packet import (
    BOOTREPLY,
    FLAG_BROADCAST,
    HTTP_CLIENT_CLASS,
    BootpPacket,
    MessageType,
    Opt,
    encode_suboptions,
    ip_bytes,
    ips_bytes,
    u8,
    u32,
)

#: PXE vendor option 43, sub-option 6 (PXE_DISCOVERY_CONTROL, PXE spec 2.1 §2.4.5): bit 3 = use
#: the boot file name of this offer directly, with no boot-server discovery or menu. pybootd also
#: sent a 10 s menu prompt ("Stupid PXE"), which only delays a mass boot.
PXE_DISCOVERY_CONTROL = 6
PXE_USE_BOOTFILE = 0x08
#: option 43 sub-option 71 (PXE_BOOT_ITEM, PXE 2.1 §2.4.5): the boot server type and layer a
#: client asks the boot server for; the boot server's ACK carries it back
PXE_BOOT_ITEM = 71

#: The "boot from HTTP" client architectures (IANA "Processor Architecture Types", the registry
#: RFC 4578 §2.1 began; option 93) and the PXE architecture of the same machine, its *twin*: an
#: HTTP architecture without a ``[bootfile]`` entry of its own gets its twin's file, as a URL.
#: 20 ("pc/at bios boot from HTTP") has no twin: an HTTP client never gets a BIOS file, so it
#: needs an entry of its own (README, "UEFI: ipxe.efi and UEFI HTTP Boot").
HTTP_ARCH_TWINS: Mapping[int, int | None] = {
    15: 6,      # x86 UEFI boot from HTTP          -> 6 x86 UEFI (IA32)
    16: 7,      # x64 UEFI boot from HTTP          -> 7 x64 UEFI
    17: 9,      # EBC boot from HTTP               -> 9 EBC
    18: 10,     # ARM UEFI 32 boot from HTTP       -> 10 ARM 32-bit UEFI
    19: 11,     # ARM UEFI 64 boot from HTTP       -> 11 ARM 64-bit UEFI
    20: None,   # pc/at BIOS boot from HTTP        -> (BIOS: no twin)
    23: 21,     # ARM uboot 32 boot from HTTP      -> 21 ARM 32 uboot
    24: 22,     # ARM uboot 64 boot from HTTP      -> 22 ARM 64 uboot
    26: 25,     # RISC-V 32-bit UEFI boot from HTTP  -> 25
    28: 27,     # RISC-V 64-bit UEFI boot from HTTP  -> 27
    30: 29,     # RISC-V 128-bit UEFI boot from HTTP -> 29
    38: 37,     # LoongArch 32-bit UEFI boot from HTTP -> 37
    40: 39,     # LoongArch 64-bit UEFI boot from HTTP -> 39
}
#: architectures whose files are BIOS boot files: never given to an HTTP client as a twin
BIOS_ARCHES = frozenset({0})


class State(IntEnum):
    """pybootd's per-MAC state (README, "DHCP and PXE behaviour")."""

    IDLE = 0
    PXE = 1
    DHCP = 2


class RequestKind(IntEnum):
    """The client state a DHCPREQUEST comes from (RFC 2131 §4.3.2)."""

    SELECTING = 1       # server id (54) present, ciaddr 0, option 50 = the offered address
    INIT_REBOOT = 2     # no server id, option 50 present, ciaddr 0
    RENEWING = 3        # no server id, ciaddr set (unicast to us, or relayed)
    REBINDING = 4       # no server id, ciaddr set, broadcast
    UNKNOWN = 5         # no server id, no option 50, ciaddr 0: pybootd ACKed these; so do we


@dataclass(frozen=True, slots=True)
class Network:
    """What a reply needs to know of the client's subnet."""

    server_ip: str
    netmask: str
    router: str | None
    dns: tuple[str, ...]
    lease_time: int

    @property
    def broadcast(self) -> str:
        """The subnet-directed broadcast address of the server's subnet."""
        return _broadcast(self.server_ip, self.netmask)


@functools.lru_cache(maxsize=64)
def _broadcast(address: str, netmask: str) -> str:
    return str(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False).broadcast_address)


@dataclass(slots=True, unsafe_hash=True)     # a value: never changed once built (issue #14)
class BootInfo:
    """What a PXE client is told to boot."""

    server_ip: str
    sname: str
    bootfile: str
    bootfile_size: int | None = None    # bytes, for option 13


def next_state(state: State, pxe: bool, msgtype: MessageType | None) -> State:
    """pybootd's transition: IDLE→PXE on a PXE DISCOVER, PXE→DHCP on an OS
    REQUEST, DHCP→PXE on any PXE request (the machine rebooted)."""
    if pxe:
        if state == State.IDLE and msgtype == MessageType.DISCOVER:
            return State.PXE
        if state == State.DHCP:
            return State.PXE
        return state
    if state == State.PXE and msgtype == MessageType.REQUEST:
        return State.DHCP
    return state


def request_kind(packet: BootpPacket, unicast: bool = False) -> RequestKind:
    """Classify a DHCPREQUEST (RFC 2131 §4.3.2)."""
    if packet.server_id is not None:
        return RequestKind.SELECTING
    if packet.ciaddr != "0.0.0.0":
        return RequestKind.RENEWING if unicast or packet.giaddr != "0.0.0.0" else RequestKind.REBINDING
    if packet.requested_ip is not None:
        return RequestKind.INIT_REBOOT
    return RequestKind.UNKNOWN


def select_bootfile(arch: int | None, ipxe: bool, default: str, by_arch: Mapping[int, str],
                    ipxe_bootfile: str | None) -> tuple[str, bool]:
    """Boot file for a client (README, "[bootfile]").

    An iPXE client (user class ``iPXE``) gets *ipxe_bootfile* when configured, which breaks the
    chainload loop. Otherwise the architecture of option 93, else option 60, picks a
    ``[bootfile]`` entry; an architecture with no entry falls back to *default*.

    Args:
        arch: the client architecture (:attr:`BootpPacket.client_arch`), None when unknown.
        ipxe: the client is iPXE (:attr:`BootpPacket.is_ipxe`).
        default: ``[bootfile] default``.
        by_arch: the other ``[bootfile]`` entries.
        ipxe_bootfile: ``[bootpd] ipxe_boot_file``.

    Returns:
        ``(file, fell_back)``: fell_back is True when the client named an architecture that has
        no entry (the server logs and counts it).
    """
    if ipxe_bootfile and ipxe:
        return ipxe_bootfile, False
    if arch is None or arch == 0:      # no architecture, or x86 BIOS: the default is meant
        return by_arch.get(0, default) if arch == 0 else default, False
    if arch in by_arch:
        return by_arch[arch], False
    return default, True


def is_url(name: str) -> bool:
    """True for an ``http://`` or ``https://`` boot file (case-insensitive scheme)."""
    return name.lower().startswith(("http://", "https://"))


def http_base(address: str, port: int) -> str:
    """The URL prefix of massboot's own HTTP server, for relative HTTP boot files.

    Args:
        address: the address clients reach the server at (a unicast IPv4 address).
        port: its TCP port.
    """
    return f"http://{address}:{port}/"


def http_url(name: str, base: str | None) -> str | None:
    """*name* as a URL: itself when it is one, else *base* + the name without leading ``/``,
    percent-encoded (RFC 3986 §2.1; :func:`urllib.parse.quote` keeps ``/``), else None when
    there is no *base* (HTTP not served)."""
    if is_url(name):
        return name
    if base is None:
        return None
    return base + urllib.parse.quote(name.lstrip("/"))


def http_bootfile_entry(arch: int, by_arch: Mapping[int, str]) -> tuple[int, str] | None:
    """The ``[bootfile]`` entry an HTTP Boot client of architecture *arch* uses.

    Its own entry, else its PXE twin's (:data:`HTTP_ARCH_TWINS`); never the default nor a BIOS
    entry. Returns ``(key, value)``, or None when there is none.
    """
    twin = HTTP_ARCH_TWINS.get(arch)
    for key in (arch, twin):
        if key is not None and key not in BIOS_ARCHES and key in by_arch:
            return key, by_arch[key]
    return None


def select_http_bootfile(arch: int | None, by_arch: Mapping[int, str],
                         base: str | None) -> tuple[str | None, str]:
    """A UEFI HTTP Boot client's boot file, as a full URL (README, "UEFI: ipxe.efi and UEFI HTTP
    Boot").

    Args:
        arch: the client architecture (option 93, else option 60), None when unknown.
        by_arch: the ``[bootfile]`` entries by architecture (not the default).
        base: :func:`http_base` of massboot's HTTP server, None when this process serves no HTTP.

    Returns:
        ``(url, why)``: *url* None when the client gets nothing (it is ignored, logged and
        counted); *why* says which entry was used, or why there is none (for the log line).
    """
    if arch is None:
        return None, "no architecture (option 93, option 60's Arch field) given"
    entry = http_bootfile_entry(arch, by_arch)
    if entry is None:
        twin = HTTP_ARCH_TWINS.get(arch)
        wanted = f"[bootfile] {arch}" + (f" nor {twin}" if twin is not None else "")
        return None, f"arch {arch}: no {wanted} entry (an HTTP client never gets the default or a BIOS file)"
    key, value = entry
    url = http_url(value, base)
    if url is None:
        return None, (f"[bootfile] {key} = {value!r} is a file name and this massboot serves no "
                      "HTTP (-H)")
    return url, f"[bootfile] {key}"


def relative_http_bootfiles(by_arch: Mapping[int, str]) -> Iterator[tuple[int, str]]:
    """``(arch, value)`` of each HTTP architecture's own ``[bootfile]`` entry that is a file
    name, not a URL: with HTTP off, a configuration error (README, "UEFI: ipxe.efi and UEFI
    HTTP Boot")."""
    for arch in sorted(by_arch):
        if arch in HTTP_ARCH_TWINS and not is_url(by_arch[arch]):
            yield arch, by_arch[arch]


def _http_options(boot: BootInfo) -> list[tuple[int, bytes]]:
    """A UEFI HTTP Boot reply: option 60 ``HTTPClient`` (what makes it an "HTTP offer" for the
    firmware) and the URL in option 67, sent whether asked for or not: the ``file`` field holds
    127 bytes, a URL may be longer (EDK2 reads option 67 first; it reads one instance, so a URL
    over 255 bytes, which :func:`~massboot.dhcp.packet.encode` splits, reaches it cut)."""
    return [(Opt.VENDOR_CLASS, HTTP_CLIENT_CLASS), (Opt.BOOTFILE, boot.bootfile.encode("utf-8"))]


def _pxe_options(packet: BootpPacket, boot: BootInfo) -> list[tuple[int, bytes]]:
    params = set(packet.requested_params)
    options: list[tuple[int, bytes]] = []
    vendor_class = packet.vendor_class or ""
    if vendor_class.startswith("PXEClient"):
        options.append((Opt.VENDOR_CLASS, b"PXEClient"))
    options.append(_USE_BOOTFILE)
    uuid_opt = packet.option(Opt.CLIENT_UUID)
    if uuid_opt is not None:
        options.append((Opt.CLIENT_UUID, uuid_opt))
    if Opt.TFTP_SERVER in params:
        # pybootd sent the sname host name, which a client cannot resolve; the address works.
        options.append((Opt.TFTP_SERVER, boot.server_ip.encode("ascii")))
    if Opt.BOOTFILE in params:
        options.append((Opt.BOOTFILE, boot.bootfile.encode("utf-8")))
    if Opt.BOOTFILE_SIZE in params and boot.bootfile_size:
        blocks = min(math.ceil(boot.bootfile_size / 512), 0xFFFF)
        options.append((Opt.BOOTFILE_SIZE, blocks.to_bytes(2, "big")))
    return options


#: option 43 of a PXE reply: discovery control "use the boot file of this reply" (PXE 2.1 §2.4.5)
_USE_BOOTFILE = (Opt.VENDOR_SPECIFIC, encode_suboptions([(PXE_DISCOVERY_CONTROL, u8(PXE_USE_BOOTFILE))]))


@functools.lru_cache(maxsize=64)
def _head_options(msgtype: MessageType, server_ip: str) -> tuple[tuple[int, bytes], ...]:
    """Options 53 and 54 of a reply (RFC 2132 §9.6, §9.7)."""
    return (Opt.MESSAGE_TYPE, u8(msgtype)), (Opt.SERVER_ID, ip_bytes(server_ip))


@functools.lru_cache(maxsize=64)
def _net_options(netmask: str, router: str | None, dns: tuple[str, ...]) -> tuple[tuple[int, bytes], ...]:
    """Options 1, 3 and 6 of a scope (RFC 2132 §3.3, §3.5, §3.8: DNS one option, 4×N bytes)."""
    options = [(Opt.SUBNET_MASK, ip_bytes(netmask))]
    if router:
        options.append((Opt.ROUTER, ip_bytes(router)))
    if dns:
        options.append((Opt.DNS, ips_bytes(dns)))
    return tuple(options)


@functools.lru_cache(maxsize=64)
def _lease_options(lease_time: int) -> tuple[tuple[int, bytes], ...]:
    """Options 51, 58 and 59 (RFC 2132 §9.2, §9.11, §9.12): T1 half, T2 7/8 of the lease."""
    return ((Opt.LEASE_TIME, u32(lease_time)), (Opt.RENEWAL_T1, u32(lease_time // 2)),
            (Opt.REBINDING_T2, u32(lease_time * 7 // 8)))


def build_reply(request: BootpPacket, msgtype: MessageType | None, *, yiaddr: str, net: Network,
                boot: BootInfo | None, pxe: bool, hostname: str | None = None,
                message: str | None = None, domain: str | None = None,
                http: bool = False) -> BootpPacket:
    """The reply to *request* (RFC 2131 §4.3.1 table 3, RFC 2132 options).

    *msgtype* None builds a plain BOOTP reply (RFC 951/1497: no option 53, no lease time).
    A NAK carries only 53, 54 and an optional message (56). *domain* is sent as option 15 when
    the client asks for it in option 55 (README, ``[bootpd]`` domain). *http*: a UEFI HTTP Boot
    client, whose *boot* file is a URL (option 60 ``HTTPClient`` and option 67 instead of the
    PXE options; the ``file`` field carries the URL only when it fits whole).
    """
    # the option runs that are the same for every reply of a scope come encoded from caches
    # keyed by their values (issue #14): a reload that changes a value makes a new key, so a
    # stale run cannot be served
    options: list[tuple[int, bytes]] = [] if msgtype is None else list(_head_options(msgtype, net.server_ip))
    if msgtype == MessageType.NAK:
        if message:
            options.append((Opt.MESSAGE, message.encode("utf-8")[:255]))
        return BootpPacket(op=BOOTREPLY, xid=request.xid, htype=request.htype, hlen=request.hlen,
                           flags=request.flags, giaddr=request.giaddr, chaddr=request.chaddr,
                           options=tuple(options) + _relay_echo(request))
    options += _net_options(net.netmask, net.router, net.dns)
    if hostname:
        options.append((Opt.HOSTNAME, hostname.encode("utf-8")[:255]))
    if domain and Opt.DOMAIN_NAME in request.requested_params:
        options.append((Opt.DOMAIN_NAME, domain.encode("utf-8")[:255]))   # RFC 2132 §3.17
    if (msgtype == MessageType.OFFER or msgtype == MessageType.ACK) and yiaddr != "0.0.0.0":
        options += _lease_options(net.lease_time)
    file = boot.bootfile.encode("utf-8")[:127] if boot else b""
    if http and boot is not None:
        options.extend(_http_options(boot))
        if len(boot.bootfile.encode("utf-8")) > 127:
            file = b""      # never a truncated URL: option 67 carries it whole
    elif pxe and boot is not None:
        options.extend(_pxe_options(request, boot))
    return BootpPacket(
        op=BOOTREPLY, xid=request.xid, htype=request.htype, hlen=request.hlen, hops=0, secs=0,
        flags=request.flags, ciaddr=request.ciaddr, yiaddr=yiaddr,
        siaddr=boot.server_ip if boot else net.server_ip, giaddr=request.giaddr, chaddr=request.chaddr,
        sname=boot.sname.encode("utf-8")[:63] if boot else b"",
        file=file, options=tuple(options) + _relay_echo(request), vendor=True)


def _relay_echo(request: BootpPacket) -> tuple[tuple[int, bytes], ...]:
    """Option 82 goes back to the relay unchanged (RFC 3046 §2.2)."""
    info = request.option(Opt.RELAY_AGENT)
    return ((Opt.RELAY_AGENT, info),) if info is not None else ()


def destination(request: BootpPacket, reply: BootpPacket, source: tuple[str, int], *,
                server_port: int, subnet_broadcast: str, force_broadcast: bool) -> tuple[str, int]:
    """Where a reply goes (RFC 2131 §4.1).

    * relayed (giaddr set): to the relay, on the port it sent from when it sent from giaddr,
      else on the server port;
    * ciaddr set (renewing, inform): unicast to ciaddr;
    * otherwise broadcast: 255.255.255.255 when the client set the broadcast flag, for
      ``[buggy_clients]`` and for NAKs; else the subnet-directed broadcast, as pybootd does.
      The client port is the request's source port (68 normally).
    """
    src_ip, src_port = source
    if request.giaddr != "0.0.0.0":
        return request.giaddr, src_port if src_ip == request.giaddr else server_port
    if request.ciaddr != "0.0.0.0" and reply.option(Opt.MESSAGE_TYPE) != u8(MessageType.NAK):
        return request.ciaddr, src_port
    if force_broadcast or request.flags & FLAG_BROADCAST or \
            reply.option(Opt.MESSAGE_TYPE) == u8(MessageType.NAK):
        return "255.255.255.255", src_port
    # Without a raw socket we cannot unicast to an address the client does not hold yet (there
    # is no ARP entry for it), whatever its broadcast flag says: broadcast on the server's
    # subnet, as pybootd does.
    return subnet_broadcast, src_port


def build_proxy_reply(request: BootpPacket, msgtype: MessageType, *, server_ip: str, boot: BootInfo,
                      boot_item: bytes | None = None, redirect: bool = False,
                      http: bool = False) -> BootpPacket:
    """A proxyDHCP reply (PXE 2.1 §2.2, §2.5; README, "proxyDHCP"): boot information, no address.

    To a DISCOVER on port 67 an OFFER, to a REQUEST (port 4011, or 67 naming this server) an
    ACK. ``yiaddr`` is 0.0.0.0 and the reply carries no lease time, mask, router or DNS: those
    are the site DHCP server's. Option 54 is this server (ROMs send their boot-server REQUEST
    to it), option 60 ``PXEClient`` (``HTTPClient`` to such a client: what iPXE and EDK2 look
    for to tell a proxy offer), option 97 echoed, option 43 with discovery control 8 (use the
    boot file of this reply, no boot-server discovery or menu: what dnsmasq sends when it has
    no menu and Tinkerbell smee always sends), or, to a boot-server REQUEST that named a boot
    item (sub-option 71), that item echoed as the PXE boot server's ACK does. ``siaddr``,
    ``sname`` and ``file`` name the boot file, as options 66/67/13 do when asked.

    *redirect* (an OFFER with ``proxy_offer = redirect``): no boot file, no option 43, 66, 67
    or 13, as dnsmasq's proxy OFFER to UEFI clients: a ROM then sends its REQUEST to option 54's
    port 4011 from the address the site server gave it (PXE 2.1 §2.2; iPXE does so whenever a
    proxy offer names no boot file and no menu), and gets the boot file in the ACK.

    *http* (a UEFI HTTP Boot client, README "proxyDHCP"): an OFFER with option 60 ``HTTPClient``
    and the boot URL in option 67 (and in ``file`` when it fits whole), no option 43: EDK2 takes
    its address from the site server's offer and the URI from this one; it never asks on 4011.
    """
    if http:
        http_options = [(Opt.MESSAGE_TYPE, u8(msgtype)), (Opt.SERVER_ID, ip_bytes(server_ip)),
                        *_http_options(boot)]
        uuid_opt = request.option(Opt.CLIENT_UUID)
        if uuid_opt is not None:
            http_options.append((Opt.CLIENT_UUID, uuid_opt))
        url = boot.bootfile.encode("utf-8")
        return BootpPacket(
            op=BOOTREPLY, xid=request.xid, htype=request.htype, hlen=request.hlen, flags=request.flags,
            ciaddr=request.ciaddr, yiaddr="0.0.0.0", siaddr=boot.server_ip, giaddr=request.giaddr,
            chaddr=request.chaddr, file=url if len(url) <= 127 else b"",
            options=tuple(http_options) + _relay_echo(request), vendor=True)
    vendor = (request.vendor_class or "").startswith("HTTPClient")
    options: list[tuple[int, bytes]] = [
        (Opt.MESSAGE_TYPE, u8(msgtype)),
        (Opt.SERVER_ID, ip_bytes(server_ip)),
        (Opt.VENDOR_CLASS, b"HTTPClient" if vendor else b"PXEClient"),
    ]
    uuid_opt = request.option(Opt.CLIENT_UUID)
    if redirect:
        if uuid_opt is not None:
            options.append((Opt.CLIENT_UUID, uuid_opt))
        return BootpPacket(
            op=BOOTREPLY, xid=request.xid, htype=request.htype, hlen=request.hlen, flags=request.flags,
            ciaddr=request.ciaddr, siaddr=boot.server_ip, giaddr=request.giaddr, chaddr=request.chaddr,
            options=tuple(options) + _relay_echo(request), vendor=True)
    if boot_item is not None:
        options.append((Opt.VENDOR_SPECIFIC, encode_suboptions([(PXE_BOOT_ITEM, boot_item)])))
    else:
        options.append((Opt.VENDOR_SPECIFIC,
                        encode_suboptions([(PXE_DISCOVERY_CONTROL, u8(PXE_USE_BOOTFILE))])))
    if uuid_opt is not None:
        options.append((Opt.CLIENT_UUID, uuid_opt))
    params = set(request.requested_params)
    if Opt.TFTP_SERVER in params:
        options.append((Opt.TFTP_SERVER, boot.server_ip.encode("ascii")))
    if Opt.BOOTFILE in params:
        options.append((Opt.BOOTFILE, boot.bootfile.encode("utf-8")[:255]))
    if Opt.BOOTFILE_SIZE in params and boot.bootfile_size:
        blocks = min(math.ceil(boot.bootfile_size / 512), 0xFFFF)
        options.append((Opt.BOOTFILE_SIZE, blocks.to_bytes(2, "big")))
    return BootpPacket(
        op=BOOTREPLY, xid=request.xid, htype=request.htype, hlen=request.hlen, hops=0, secs=0,
        flags=request.flags, ciaddr=request.ciaddr, yiaddr="0.0.0.0", siaddr=boot.server_ip,
        giaddr=request.giaddr, chaddr=request.chaddr, sname=boot.sname.encode("utf-8")[:63],
        file=boot.bootfile.encode("utf-8")[:127], options=tuple(options) + _relay_echo(request),
        vendor=True)


def proxy_destination(request: BootpPacket, source: tuple[str, int], *, server_port: int) -> tuple[str, int]:
    """Where a proxyDHCP reply goes.

    * relayed (giaddr set): to the relay, as :func:`destination` (RFC 2131 §4.1);
    * from an address (a REQUEST on port 4011 comes from the address the site server gave):
      back to that address and port (PXE 2.1 §2.2.1; dnsmasq answers its port-4011 requests so);
    * from 0.0.0.0 (a DISCOVER): 255.255.255.255 on the request's source port, out of the
      interface it came in on: the client has no address yet, and the proxy cannot know the one
      the site server is offering it.
    """
    src_ip, src_port = source
    if request.giaddr != "0.0.0.0":
        return request.giaddr, src_port if src_ip == request.giaddr else server_port
    if src_ip != "0.0.0.0":
        return src_ip, src_port
    return "255.255.255.255", src_port
