"""UEFI HTTP Boot in the DHCP exchange (README, "UEFI: ipxe.efi and UEFI HTTP Boot").

A request whose option 60 begins with ``HTTPClient`` is boot firmware like a PXE one, gets
option 60 ``HTTPClient`` back and its boot file as a full URL: its architecture's own
``[bootfile]`` entry, else its PXE twin's, never the default nor a BIOS file; a file name
becomes a URL on massboot's own HTTP server (``-H``). The tables below run the selection
(:func:`select_http_bootfile`) and whole exchanges (the helpers of ``test_exchange``).
"""

from __future__ import annotations

import ipaddress
import uuid as uuid_module
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from massboot.acl import AclResult, Verdict
from massboot.config import loads
from massboot.dhcp.exchange import classify
from massboot.dhcp.packet import (
    BOOTREQUEST,
    BootpPacket,
    MessageType,
    Opt,
    arch_from_vendor_class,
    decode,
    encode,
    ip_bytes,
    u8,
)
from massboot.dhcp.policy import (
    HTTP_ARCH_TWINS,
    RequestKind,
    State,
    http_url,
    relative_http_bootfiles,
    select_http_bootfile,
)
from tests.unit.test_exchange import MAC, MAC_S, PARAMS, SERVER, SUBNET_BCAST, UUID, os_pkt, pkt, world

D, Q, A = MessageType.DISCOVER, MessageType.REQUEST, MessageType.ACK
BASE = "http://10.0.0.1:8080/"
MAC_OVMF = bytes.fromhex("525400123456")
OVMF_PARAMS = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                     59, 60, 235, 67, 97])     # what Debian 12's OVMF asks in its HTTPClient DISCOVER


def http_pkt(msgtype: int | None = D, *, arch: int | None = 16, uuid: str | None = UUID,
             vendor: bytes | None = None, option93: bool = True, params: bytes = OVMF_PARAMS,
             sid: str | None = None, want: str | None = None) -> BootpPacket:
    """A request as UEFI HTTP Boot firmware sends it (EDK2's HttpBootDxe: 53, 57, 55, 97, 94,
    93, 60; here without 57 and 94, which massboot does not read)."""
    opts: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, u8(msgtype))] if msgtype is not None else []
    opts.append((Opt.PARAM_REQUEST, params))
    if uuid:
        opts.append((Opt.CLIENT_UUID, b"\0" + uuid_module.UUID(uuid).bytes))
    if arch is not None and option93:
        opts.append((Opt.CLIENT_ARCH, arch.to_bytes(2, "big")))
    if vendor is None:
        vendor = f"HTTPClient:Arch:{arch or 0:05d}:UNDI:003000".encode()
    opts.append((Opt.VENDOR_CLASS, vendor))
    if sid:
        opts.append((Opt.SERVER_ID, ip_bytes(sid)))
    if want:
        opts.append((Opt.REQUESTED_IP, ip_bytes(want)))
    return BootpPacket(op=BOOTREQUEST, xid=0x4321, chaddr=MAC, options=tuple(opts))


# ---------------------------------------------------------------- the architecture twins


def test_twins_follow_the_iana_processor_architecture_table() -> None:
    # IANA "Processor Architecture Types" (RFC 4578 §2.1's registry): each "boot from HTTP" type
    # next to the PXE type of the same machine; 20 (pc/at BIOS from HTTP) has none on purpose
    assert HTTP_ARCH_TWINS == {15: 6, 16: 7, 17: 9, 18: 10, 19: 11, 20: None, 23: 21, 24: 22,
                               26: 25, 28: 27, 30: 29, 38: 37, 40: 39}


@dataclass(frozen=True)
class Pick:
    name: str
    arch: int | None
    bootfiles: dict[int, str]
    base: str | None
    url: str | None
    why: str               # a piece of the second value (the entry used, or why none)


PICKS = [
    Pick("own-url", 16, {16: "http://10.0.0.9/x64.efi", 7: "ipxe.efi"}, None,
         "http://10.0.0.9/x64.efi", "[bootfile] 16"),
    Pick("own-https-url", 16, {16: "HTTPS://boot.example/x64.efi"}, None,
         "HTTPS://boot.example/x64.efi", "[bootfile] 16"),
    Pick("own-name-on-our-server", 16, {16: "efi/x64.efi"}, BASE, BASE + "efi/x64.efi", "[bootfile] 16"),
    Pick("own-entry-before-twin", 16, {16: "a.efi", 7: "b.efi"}, BASE, BASE + "a.efi", "[bootfile] 16"),
    Pick("x64-twin-7", 16, {7: "ipxe.efi"}, BASE, BASE + "ipxe.efi", "[bootfile] 7"),
    Pick("arm64-twin-11", 19, {11: "grubaa64.efi"}, BASE, BASE + "grubaa64.efi", "[bootfile] 11"),
    Pick("ia32-twin-6", 15, {6: "ipxe32.efi"}, BASE, BASE + "ipxe32.efi", "[bootfile] 6"),
    Pick("arm32-twin-10", 18, {10: "arm.efi"}, BASE, BASE + "arm.efi", "[bootfile] 10"),
    Pick("ebc-twin-9", 17, {9: "ebc.efi"}, BASE, BASE + "ebc.efi", "[bootfile] 9"),
    Pick("riscv64-twin-27", 28, {27: "rv.efi"}, BASE, BASE + "rv.efi", "[bootfile] 27"),
    Pick("loongarch64-twin-39", 40, {39: "la.efi"}, BASE, BASE + "la.efi", "[bootfile] 39"),
    Pick("twin-url-without-http-server", 16, {7: "https://boot.example/ipxe.efi"}, None,
         "https://boot.example/ipxe.efi", "[bootfile] 7"),
    Pick("twin-name-without-http-server", 16, {7: "ipxe.efi"}, None, None,
         "[bootfile] 7 = 'ipxe.efi' is a file name and this massboot serves no HTTP (-H)"),
    Pick("no-entry-no-twin", 16, {11: "grubaa64.efi"}, BASE, None,
         "arch 16: no [bootfile] 16 nor 7 entry (an HTTP client never gets the default or a BIOS file)"),
    Pick("never-the-bios-entry", 16, {0: "undionly.kpxe"}, BASE, None, "never gets the default"),
    Pick("bios-http-has-no-twin", 20, {0: "undionly.kpxe"}, BASE, None,
         "arch 20: no [bootfile] 20 entry (an HTTP client never gets the default or a BIOS file)"),
    Pick("bios-http-own-entry", 20, {20: "http://10.0.0.9/bios.ipxe"}, None,
         "http://10.0.0.9/bios.ipxe", "[bootfile] 20"),
    Pick("pxe-arch-asking-http", 7, {7: "ipxe.efi"}, BASE, BASE + "ipxe.efi", "[bootfile] 7"),
    Pick("unknown-arch", 99, {7: "ipxe.efi"}, BASE, None, "no [bootfile] 99 entry"),
    Pick("no-arch", None, {7: "ipxe.efi"}, BASE, None,
         "no architecture (option 93, option 60's Arch field) given"),
    Pick("name-quoted", 16, {16: "/EFI/my boot/x64#1.efi"}, BASE, BASE + "EFI/my%20boot/x64%231.efi",
         "[bootfile] 16"),
    Pick("name-starting-with-x", 16, {16: "XenServer/x64.efi"}, BASE, BASE + "XenServer/x64.efi",
         "[bootfile] 16"),
]


@pytest.mark.parametrize("pick", PICKS, ids=[p.name for p in PICKS])
def test_select_http_bootfile(pick: Pick) -> None:
    url, why = select_http_bootfile(pick.arch, pick.bootfiles, pick.base)
    assert url == pick.url
    assert pick.why in why


def test_http_url_and_relative_entries() -> None:
    assert http_url("ipxe.efi", None) is None
    assert http_url("http://x/y", None) == "http://x/y"
    assert http_url("a b", "http://1.2.3.4:80/") == "http://1.2.3.4:80/a%20b"
    # only HTTP architectures' own entries, and only file names, need -H
    entries = {0: "pxelinux.0", 7: "ipxe.efi", 16: "ipxe.efi", 19: "http://x/a.efi", 40: "la.efi"}
    assert list(relative_http_bootfiles(entries)) == [(16, "ipxe.efi"), (40, "la.efi")]


def test_http_client_vendor_class_carries_the_architecture() -> None:
    assert arch_from_vendor_class("HTTPClient:Arch:00016:UNDI:003000") == 16
    assert arch_from_vendor_class("httpclient:arch:00019") == 19
    assert arch_from_vendor_class("HTTPClient") is None


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class Kind:
    name: str
    packet: BootpPacket
    pxe: bool
    http_client: bool
    arch: int | None


KINDS = [
    Kind("pxe-firmware", pkt(D, arch=7), True, False, 7),
    Kind("http-firmware-with-option-97", http_pkt(D), False, True, 16),
    Kind("http-firmware-arch-from-option-60", http_pkt(D, arch=19, option93=False), False, True, 19),
    Kind("http-firmware-without-uuid", http_pkt(D, uuid=None), False, True, 16),
    Kind("http-bare-vendor-class", http_pkt(D, arch=None, vendor=b"HTTPClient"), False, True, None),
    Kind("os-client", os_pkt(D), False, False, None),
]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_classify(kind: Kind) -> None:
    request = classify(kind.packet, ("0.0.0.0", 68))
    assert (request.pxe, request.http_client, request.arch) == (kind.pxe, kind.http_client, kind.arch)
    assert request.boot_client == (kind.pxe or kind.http_client)
    assert request.phase == ("pxe" if request.boot_client else "os")


# ---------------------------------------------------------------- exchanges


@dataclass(frozen=True)
class Case:
    name: str
    bootfiles: dict[int, str]
    base: str | None
    request: BootpPacket
    url: str | None                 # None: ignored, reason no_http_bootfile
    file_field: bytes = b""         # the BOOTP 'file' field of the reply


LONG = "http://boot.example.org/" + "d" * 120 + "/ipxe.efi"
CASES = [
    Case("twin-name-on-our-server", {7: "ipxe.efi"}, BASE, http_pkt(D), BASE + "ipxe.efi",
         (BASE + "ipxe.efi").encode()),
    Case("own-url", {16: "http://10.0.0.9/x.efi"}, None, http_pkt(D), "http://10.0.0.9/x.efi",
         b"http://10.0.0.9/x.efi"),
    Case("url-longer-than-the-file-field", {16: LONG}, None, http_pkt(D), LONG, b""),
    Case("option-67-sent-unasked", {7: "ipxe.efi"}, BASE, http_pkt(D, params=bytes([1, 3, 6])),
         BASE + "ipxe.efi", (BASE + "ipxe.efi").encode()),
    Case("no-entry-ignored", {7: "ipxe.efi"}, BASE, http_pkt(D, arch=19), None),
    Case("default-never-given", {}, BASE, http_pkt(D), None),
    Case("name-without-http-server-ignored", {7: "ipxe.efi"}, None, http_pkt(D), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_client_discover(case: Case) -> None:
    w = world(bootfiles=case.bootfiles, http_base=case.base, default_bootfile="undionly.kpxe")
    run = w(case.request)
    if case.url is None:
        assert run.reply is None and run.outcome.no_reply == "no_http_bootfile"
        assert run.kinds == ["dhcp.received", "dhcp.ignored"]
        ignored = run.event("dhcp.ignored")
        assert ignored["reason"] == "no_http_bootfile" and ignored["phase"] == "pxe" and ignored["detail"]
        assert w.main.store.get(MAC_S) is None          # no address offered, nor held
        assert w.client().state == State.IDLE
        return
    reply = run.reply
    assert reply is not None and reply.message_type == MessageType.OFFER
    assert reply.option(Opt.VENDOR_CLASS) == b"HTTPClient"
    assert reply.option(Opt.BOOTFILE) == case.url.encode()
    assert reply.file == case.file_field
    # no PXE options: no discovery control (43), no TFTP server (66), no option 97 echo
    assert reply.option(Opt.VENDOR_SPECIFIC) is None and reply.option(Opt.TFTP_SERVER) is None
    assert reply.option(Opt.CLIENT_UUID) is None and reply.option(Opt.BOOTFILE_SIZE) is None
    assert run.event("dhcp.reply")["file"] == case.url and run.event("dhcp.reply")["http"] is True
    assert run.event("dhcp.received")["http"] is True
    assert w.client().state == State.PXE


def test_http_boot_then_os_phase() -> None:
    """DORA as OVMF's HTTP boot does it, then the booted OS's DHCP client: the same address, the
    firmware phase then the OS phase, BOOT then LEASE notifications."""
    w = world(bootfiles={7: "ipxe.efi"}, http_base=BASE)
    offer = w(http_pkt(D)).reply
    run = w(http_pkt(Q, sid=SERVER, want=offer.yiaddr))
    ack = run.reply
    assert ack.message_type == A and ack.yiaddr == "10.0.0.100"
    assert ack.option(Opt.VENDOR_CLASS) == b"HTTPClient"
    assert ack.option(Opt.BOOTFILE) == (BASE + "ipxe.efi").encode()
    assert run.event("dhcp.reply") == {"msgtype": "ack", "mac": MAC_S, "ip": "10.0.0.100", "pxe": True,
                                       "arch": 16, "phase": "pxe", "file": BASE + "ipxe.efi",
                                       "ipxe": False, "uuid": UUID, "to": SUBNET_BCAST, "http": True}
    assert run.notices == [("BOOT", MAC_S, "10.0.0.100", UUID)]
    os_run = w(os_pkt(Q, want="10.0.0.100"))
    assert os_run.reply.message_type == A and os_run.reply.yiaddr == "10.0.0.100"
    assert os_run.event("dhcp.reply")["phase"] == "os" and "http" not in os_run.event("dhcp.reply")
    assert os_run.reply.option(Opt.VENDOR_CLASS) is None and os_run.reply.option(Opt.BOOTFILE) is None
    assert os_run.notices == [("LEASE", MAC_S, "10.0.0.100", UUID)]
    assert w.client().state == State.DHCP


def test_http_client_asks_the_http_acl_on_the_pxe_path() -> None:
    w = world(bootfiles={7: "ipxe.efi"}, http_base=BASE, access="http",
              acl_answer=AclResult(Verdict.ALLOWED))
    run = w(http_pkt(D))
    assert run.query is not None and run.query.pxe is True
    assert run.reply.option(Opt.VENDOR_CLASS) == b"HTTPClient"


def test_http_client_without_a_file_never_reaches_the_acl() -> None:
    w = world(bootfiles={}, http_base=BASE, access="http")
    run = w(http_pkt(D))
    assert run.query is None and w.queries == [] and run.outcome.no_reply == "no_http_bootfile"


def test_pxe_client_unchanged_beside_http_settings() -> None:
    w = world(bootfiles={7: "ipxe.efi", 16: "http://10.0.0.9/x.efi"}, http_base=BASE)
    reply = w(pkt(D, arch=7)).reply
    assert reply.file == b"ipxe.efi" and reply.option(Opt.VENDOR_CLASS) == b"PXEClient"
    assert reply.option(Opt.VENDOR_SPECIFIC) is not None


def test_ipxe_boot_file_may_be_a_url() -> None:
    """``ipxe_boot_file = http://...``: iPXE gets the URL in ``file`` and option 67, and no
    option 13 (a URL has no TFTP size), even when it asks for one."""
    sizes: list[str] = []
    w = world(ipxe_bootfile="http://10.0.0.1:8080/boot.ipxe",
              bootfile_size=lambda name, ip: sizes.append(name) or 1234)
    reply = w(pkt(D, arch=7, ipxe=True)).reply
    assert reply.file == b"http://10.0.0.1:8080/boot.ipxe"
    assert reply.option(Opt.BOOTFILE) == b"http://10.0.0.1:8080/boot.ipxe"
    assert Opt.BOOTFILE_SIZE in PARAMS and reply.option(Opt.BOOTFILE_SIZE) is None and sizes == []


# ---------------------------------------------------------------- config and command line


def _config(bootfile: str) -> str:
    return f"[bootpd]\npool_start = 10.0.0.100\n[bootfile]\ndefault = pxelinux.0\n{bootfile}\n"


@pytest.mark.parametrize(("bootfile", "run_http", "error"), [
    ("16 = ipxe.efi", False, "[bootfile] 16 = 'ipxe.efi': a file name for UEFI HTTP Boot clients"),
    ("00019 = grubaa64.efi", False, "[bootfile] 19 = 'grubaa64.efi'"),
    ("16 = ipxe.efi", True, None),
    ("16 = http://10.0.0.9/ipxe.efi", False, None),
    ("7 = ipxe.efi", False, None),          # a PXE twin's name: HTTP clients just get nothing
])
def test_relative_http_bootfile_needs_http(bootfile: str, run_http: bool, error: str | None) -> None:
    from massboot.cli import check_http_bootfiles
    from massboot.config import ConfigError

    bootp = loads(_config(bootfile)).bootp
    assert bootp is not None
    if error is None:
        check_http_bootfiles(bootp, run_http)
        return
    with pytest.raises(ConfigError) as info:
        check_http_bootfiles(bootp, run_http)
    assert str(info.value).startswith(error) and "-H" in str(info.value)
    assert info.value.section == "bootfile"


def test_http_boot_base_and_description() -> None:
    from massboot.cli import describe_http_boot, http_boot_base

    config = loads(_config("7 = ipxe.efi\n19 = http://10.0.0.9/a.efi") + "[httpd]\nport = 8080\n")
    assert http_boot_base(config, "10.0.0.1", False) is None
    assert http_boot_base(config, "10.0.0.1", True) == "http://10.0.0.1:8080/"
    bound = loads(_config("") + "[httpd]\naddress = 10.0.0.2\n")
    assert http_boot_base(bound, "10.0.0.1", True) == "http://10.0.0.2:80/"
    wildcard = loads(_config("") + "[httpd]\naddress = 0.0.0.0\n")
    assert http_boot_base(wildcard, "10.0.0.1", True) == "http://10.0.0.1:80/"
    assert config.bootp is not None
    lines = list(describe_http_boot(config.bootp, "http://10.0.0.1:8080/"))
    assert "http boot: arch 16 gets http://10.0.0.1:8080/ipxe.efi ([bootfile] 7)" in lines
    assert "http boot: arch 19 gets http://10.0.0.9/a.efi ([bootfile] 19)" in lines
    assert lines[-1].startswith("http boot: arch 15, 17, 18, 20, 23, 24, 26, 28, 30, 38, 40: no HTTP")
    off = list(describe_http_boot(config.bootp, None))
    assert not any("arch 16 gets" in line for line in off)


# ---------------------------------------------------------------- OVMF's own packets (golden)

GOLDEN = Path(__file__).parent / "golden"
OVMF_UUID = "7373614d-6f62-744f-a5e2-652d65326521"    # option 97 read raw (golden/README.txt)


def golden(name: str) -> bytes:
    return bytes.fromhex((GOLDEN / f"{name}.hex").read_text().strip())


@dataclass(frozen=True)
class Capture:
    name: str
    msgtype: MessageType
    pxe: bool
    http_client: bool
    arch: int


CAPTURES = [
    Capture("ovmf_pxe_discover", D, True, False, 7),
    Capture("ovmf_pxe_request", Q, True, False, 7),
    Capture("ovmf_http_discover", D, False, True, 16),
    Capture("ovmf_http_request", Q, False, True, 16),
]


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_ovmf_packets_decode_and_classify(capture: Capture) -> None:
    raw = golden(capture.name)
    packet = decode(raw)
    assert encode(packet) == raw          # byte-exact: EDK2 ends with END and no padding past 300
    assert packet.message_type == capture.msgtype and packet.broadcast and packet.mac == MAC_OVMF
    assert packet.uuid == OVMF_UUID and packet.is_pxe     # option 97 in both: is_pxe is not enough
    request = classify(packet, ("0.0.0.0", 68))
    assert (request.pxe, request.http_client, request.boot_client, request.arch, request.ipxe) == (
        capture.pxe, capture.http_client, True, capture.arch, False)
    if capture.msgtype == Q:
        assert request.kind == RequestKind.SELECTING
        assert (packet.server_id, packet.requested_ip) == ("10.78.0.1", "10.78.0.100")


@pytest.mark.parametrize("kind", ["pxe", "http"])
def test_ovmf_dora(kind: str) -> None:
    """OVMF's own DISCOVER and REQUEST through the exchange (its REQUEST names 10.78.0.1 and
    10.78.0.100, so this world is that network)."""
    w = world(server_ip="10.78.0.1", pool=["10.78.0.100", "10.78.0.101"], bootfiles={7: "ipxe.efi"},
              http_base="http://10.78.0.1:8080/")
    w.main = replace(w.main, network=ipaddress.IPv4Network("10.78.0.0/24"))
    offer = w(decode(golden(f"ovmf_{kind}_discover")))
    ack = w(decode(golden(f"ovmf_{kind}_request")))
    for run in (offer, ack):
        reply = run.reply
        assert reply is not None and reply.yiaddr == "10.78.0.100"
        if kind == "pxe":
            assert reply.file == b"ipxe.efi" and reply.option(Opt.VENDOR_CLASS) == b"PXEClient"
            assert reply.option(Opt.BOOTFILE) == b"ipxe.efi"      # it asks for 67
        else:
            assert reply.option(Opt.VENDOR_CLASS) == b"HTTPClient"
            assert reply.option(Opt.BOOTFILE) == b"http://10.78.0.1:8080/ipxe.efi"
        assert run.event("dhcp.reply")["phase"] == "pxe"
    assert ack.reply.message_type == A and ack.outcome.lease.uuid == OVMF_UUID
