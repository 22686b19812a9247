"""One simulated machine: PXE DHCP, the boot file, the PXELINUX config probes or the iPXE
script, kernel and initrd, the booted OS's DHCP (see bench/README.md, "simulate.py"). A
chainloading profile (``http``) asks for an address a second time as iPXE once its boot file
is loaded, and reads the script, kernel and initrd named by URLs: ``http://`` ones over HTTP
(``bench/sim/http.py``), the others by TFTP.

DHCP follows RFC 2131 as a relay agent would forward it (``giaddr``, hops 1) or, with
``--netns``, by broadcast; PXE options as in RFC 4578 and the PXE 2.1 specification. TFTP
reads go through the shared sans-IO client (``bench/tftpcore.py``); this module is its driver
on gevent: one :class:`~bench.sim.transport.LeanUdp` socket per transfer, loss injected in
both directions.
"""

from __future__ import annotations

import posixpath
import random
import re
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import gevent

from massboot.dhcp.packet import (
    BOOTREQUEST,
    FLAG_BROADCAST,
    BootpPacket,
    MessageType,
    Opt,
    PacketError,
    decode,
    encode,
    ip_bytes,
    u8,
    u16,
)

from ..tftpcore import DONE, FAILED, ReadClient, unknown_tid_error
from .http import HttpConnection, HttpFailure, split_url
from .profiles import HTTP_IDLE_TIMEOUT, OS_DHCP_WAITS, OS_PARAMS, PROFILES, Profile, Stage
from .transport import LeanUdp, RelayMailbox

if TYPE_CHECKING:
    from .rack import Rack

__all__ = ["ClientFailure", "ClientResult", "SimClient", "parse_boot_config", "parse_ipxe_script",
           "pxelinux_probes", "resolve_uri"]

_KEEP_LIMIT = 1 << 20  # config files and scripts are read into memory, up to this size
#: failures after which firmware set to retry network boot starts again (any DHCP or TFTP
#: failure: a server gone mid-transfer shows as a timeout, or as ERROR 5 from whoever took its
#: port), and its pause (s)
RETRIED_PREFIXES = ("dhcp_", "tftp_")
BOOT_RETRY_PAUSE = 1.0


@dataclass
class ClientResult:
    """What one client did."""

    index: int
    mac: str
    uuid: str
    profile: str
    ip: str | None = None
    os_ip: str | None = None
    marks: dict[str, float] = field(default_factory=dict)
    ok: bool = False
    failure: str | None = None
    bytes: int = 0
    files: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    dhcp_exchanges: int = 0
    dhcp_resends: int = 0
    dhcp_lost: int = 0
    tftp_resends: int = 0
    tftp_duplicates: int = 0
    http_requests: int = 0
    http_connections: int = 0
    dora_times: list[float] = field(default_factory=list)
    boot_retries: int = 0


class ClientFailure(Exception):
    """A client gave up: ``reason`` says why (``dhcp_timeout``, ``tftp_timeout``...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def pxelinux_probes(uuid: str, mac: str, ip: str) -> list[str]:
    """PXELINUX's config search order: UUID, ``01-<mac>``, hex IP shortened to 1 digit, default."""
    hexip = "".join(f"{int(octet):02X}" for octet in ip.split("."))
    names = [uuid, "01-" + mac.replace(":", "-").lower()]
    names += [hexip[:n] for n in range(len(hexip), 0, -1)]
    names.append("default")
    return ["pxelinux.cfg/" + n for n in names]


def _strip_tftp_url(name: str) -> str:
    match = re.match(r"tftp://[^/]*/(.*)", name)
    return match.group(1) if match else name


def _arguments(words: list[str]) -> list[str]:
    """Positional arguments of a config line: iPXE's ``--name X``/``-n X`` style flags dropped."""
    args: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--name", "-n", "--timeout", "-t"):
            skip = True
        elif not word.startswith("-"):
            args.append(word)
    return args


def parse_boot_config(text: str, ipxe: bool) -> tuple[str | None, str | None]:
    """The kernel and initrd named by a PXELINUX config or an iPXE script (first label)."""
    kernel: str | None = None
    initrd: str | None = None
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].lower()
        args = _arguments(words[1:])
        if ipxe:
            if keyword in ("kernel", "chain", "imgexec") and args and kernel is None:
                kernel = _strip_tftp_url(args[0])
            elif keyword in ("initrd", "module", "imgfetch") and args and initrd is None:
                initrd = _strip_tftp_url(args[0])
            continue
        if keyword in ("kernel", "linux") and args and kernel is None:
            kernel = args[0]
        elif keyword == "initrd" and args and initrd is None:
            initrd = args[0].split(",")[0]
        elif keyword == "append" and initrd is None:
            for word in args:
                if word.startswith("initrd="):
                    initrd = word[len("initrd="):].split(",")[0]
                    break
    return kernel, initrd


def _ip_text(value: bytes | None) -> str | None:
    return ".".join(str(b) for b in value) if value is not None and len(value) == 4 else None


def resolve_uri(base: str, ref: str) -> str:
    """*ref* as iPXE resolves it against the URI of the script that names it (RFC 3986
    section 5.2): an absolute URI stays, a relative one is joined to the script's; a script
    reached by a plain TFTP name resolves to a TFTP name (relative to the script's directory)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", ref):
        return ref
    if re.match(r"https?://", base, re.IGNORECASE):
        return urllib.parse.urljoin(base, ref)
    match = re.match(r"(tftp://[^/]*/)(.*)", base, re.IGNORECASE)
    if match:
        return match.group(1) + posixpath.normpath(posixpath.join(posixpath.dirname(match.group(2)), ref))
    if ref.startswith("/"):
        return ref.lstrip("/")
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), ref))


def parse_ipxe_script(text: str, base: str) -> tuple[str | None, str | None]:
    """The kernel and initrd an iPXE script names (``kernel``/``chain``/``imgexec``,
    ``initrd``/``module``/``imgfetch``: the first of each), as URIs resolved against *base*,
    the URI the script was read from (:func:`resolve_uri`). Options (``--name X``) and the
    kernel's command line are skipped; a script must start with ``#!ipxe`` (iPXE refuses
    anything else as a script), else ``(None, None)``."""
    if not text.lstrip().startswith("#!ipxe"):
        return None, None
    kernel: str | None = None
    initrd: str | None = None
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#") or words[0].startswith(":"):
            continue
        keyword = words[0].lower()
        args = _arguments(words[1:])
        if keyword in ("kernel", "chain", "imgexec") and args and kernel is None:
            kernel = resolve_uri(base, args[0])
        elif keyword in ("initrd", "module", "imgfetch") and args and initrd is None:
            initrd = resolve_uri(base, args[0])
    return kernel, initrd


class SimClient:
    """One simulated machine: see the module docstring for what it does."""

    def __init__(self, rack: Rack, index: int, profile: Profile, rng: random.Random) -> None:
        self.rack = rack
        self.profile = profile
        self.rng = rng
        mac = bytes([0x02, 0x4D, 0x42]) + (index + 1).to_bytes(3, "big")
        self.mac = mac
        self.uuid = uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"massboot-sim-{mac.hex()}")
        self.result = ClientResult(index=index, mac=":".join(f"{b:02x}" for b in mac),
                                   uuid=str(self.uuid), profile=profile.name)
        self.firmware_options = profile.firmware.options(rng)
        self.loader_options = (self.firmware_options if profile.loader is profile.firmware
                               else profile.loader.options(rng))
        self.power_on = 0.0
        self.phase = "power_on"
        self.server_id: bytes | None = None
        self.tftp_host = rack.server_host
        self.tftp_port = rack.tftp_port
        self.bind_ip = "0.0.0.0"
        self._http: dict[tuple[str, int], HttpConnection] = {}

    # -- bookkeeping ---------------------------------------------------------------------

    def mark(self, phase: str) -> None:
        if phase not in self.result.marks:      # a boot started again counts each phase once
            self.rack.phase_counts[phase] += 1
        self.result.marks[phase] = self.rack.now()
        self.phase = phase

    def run(self) -> None:
        """Boot; on failure record the reason and the last phase reached."""
        try:
            self.power_on = time.monotonic()
            self.mark("power_on")
            while True:
                try:
                    if self.rack.opts.dhcp_only:
                        self._dhcp_only()
                    else:
                        self._boot()
                    break
                except ClientFailure as exc:
                    # firmware set to retry network boot starts again from DISCOVER (a server
                    # died, its TFTP or its ACK never came: README, "Several servers")
                    if not exc.reason.startswith(RETRIED_PREFIXES) or \
                            self.result.boot_retries >= self.rack.opts.boot_retries:
                        raise
                    self.result.boot_retries += 1
                    self.rack.boot_retries += 1
                    gevent.sleep(BOOT_RETRY_PAUSE * self.rack.scale)
            self.result.ok = True
        except ClientFailure as exc:
            self._fail(exc.reason, exc.detail)
        except gevent.GreenletExit:
            self._fail("duration", "still running when --duration ran out")
            raise
        except Exception as exc:  # a bug in the simulator: say so, do not hide it as a boot failure
            self._fail("simulator_error", repr(exc))

    def _fail(self, reason: str, detail: str) -> None:
        self.result.ok = False
        self.result.failure = f"{reason} after {self.phase}" + (f" ({detail})" if detail else "")
        self.rack.failed += 1

    # -- the boot ------------------------------------------------------------------------

    def _boot(self) -> None:
        profile = self.profile
        if self.rack.proxy:         # the address from the site server, the boot file from massboot
            ip, ack = self._proxy_dhcp()
        else:
            ack = self._dora(pxe=True)
            ip = ack.yiaddr
            self.result.ip = ip
            self.mark("address")
        if ack.siaddr != "0.0.0.0":
            self.tftp_host = ack.siaddr
        elif ack.option(Opt.TFTP_SERVER):
            self.tftp_host = (ack.option(Opt.TFTP_SERVER) or b"").decode("latin-1").strip("\0")
        if self.rack.broadcast or (ip.startswith("127.") and self.tftp_host.startswith("127.")):
            self.bind_ip = ip  # on loopback (or the AnyIP route of --netns) it owns its address
        bootfile = self._bootfile(ack)
        stage = profile.firmware
        try:
            if profile.chain is not None:
                self._fetch(bootfile, stage, self.firmware_options)  # iPXE itself (undionly.kpxe)
                self.mark("bootfile")
                chained = PROFILES[profile.chain]
                if self.rack.proxy:  # iPXE asks again, as iPXE: both servers again
                    ipxe_ip, ipxe_ack = self._proxy_dhcp(chained, first=False)
                else:
                    ipxe_ack = self._dora(pxe=True, profile=chained)  # iPXE asks again, as iPXE
                    ipxe_ip = ipxe_ack.yiaddr
                if ipxe_ip != ip and self.bind_ip == ip:
                    self.bind_ip = ipxe_ip  # iPXE uses what it was given (massboot's is sticky)
                script_uri = self._bootfile(ipxe_ack)
                stage = chained.loader
                config = self._load(script_uri, stage, self.loader_options, keep=True)
                kernel, initrd = parse_ipxe_script(config.decode("latin-1"), script_uri)
            elif profile.ipxe:
                config = self._load(bootfile, stage, self.firmware_options, keep=True)
                self.mark("bootfile")
                kernel, initrd = parse_ipxe_script(config.decode("latin-1"), bootfile)
            else:
                got = self._fetch(bootfile, stage, self.firmware_options)
                assert got is not None
                self.mark("bootfile")
                stage = profile.loader
                config = None
                for name in pxelinux_probes(str(self.uuid), self.result.mac, ip):
                    self.result.probes += 1
                    got = self._fetch(name, stage, self.loader_options, keep=True, missing_ok=True)
                    if got is not None:
                        config = got[1]
                        break
                if config is None:
                    raise ClientFailure("no_config", "no pxelinux.cfg file found")
                kernel, initrd = parse_boot_config(config.decode("latin-1"), False)
            self.mark("config")
            if kernel is None:
                raise ClientFailure("no_kernel", "the config names no kernel")
            self._load(kernel, stage, self.loader_options)
            self.mark("kernel")
            if initrd is not None:
                self._load(initrd, stage, self.loader_options)
            self.mark("initrd")
        finally:
            self._close_http()  # the kernel starts: the boot loader's connections are gone
        os_ack = self._dora(pxe=False)
        self.result.os_ip = os_ack.yiaddr
        if self.rack.opts.release:
            self._release(os_ack)
        self.mark("booted")

    @staticmethod
    def _bootfile(ack: BootpPacket) -> str:
        """The boot file of an ACK: the ``file`` field, else option 67."""
        bootfile = ack.file.decode("latin-1").strip("\0") or \
            (ack.option(Opt.BOOTFILE) or b"").decode("latin-1").strip("\0")
        if not bootfile:
            raise ClientFailure("no_bootfile", "the ACK names no boot file")
        return bootfile

    def _dhcp_only(self) -> None:
        for round_ in range(max(1, self.rack.opts.rounds)):
            ack = self._dora(pxe=True)
            if round_ == 0:
                self.result.ip = ack.yiaddr
                self.mark("address")
        self.mark("booted")

    # -- DHCP ----------------------------------------------------------------------------

    def _options(self, pxe: bool, profile: Profile | None = None) -> list[tuple[int, bytes]]:
        profile = profile or self.profile
        if not pxe:
            return [(Opt.MAX_SIZE, u16(576)), (Opt.CLIENT_ID, b"\x01" + self.mac),
                    (Opt.VENDOR_CLASS, b"Linux ipconfig"), (Opt.PARAM_REQUEST, OS_PARAMS)]
        options = [(Opt.MAX_SIZE, u16(profile.max_size)), (Opt.PARAM_REQUEST, profile.params),
                   (Opt.CLIENT_UUID, b"\0" + self.uuid.bytes), (Opt.CLIENT_NDI, profile.ndi),
                   (Opt.CLIENT_ARCH, u16(profile.arch)),
                   (Opt.VENDOR_CLASS, profile.vendor_class.encode("ascii"))]
        if profile.ipxe:
            options.append((Opt.USER_CLASS, b"iPXE"))
        return options

    def _packet(self, xid: int, msgtype: MessageType, options: list[tuple[int, bytes]],
                **fields: object) -> BootpPacket:
        relay, hops = ("0.0.0.0", 0) if self.rack.broadcast else (self.rack.opts.relay_ip, 1)
        return BootpPacket(op=BOOTREQUEST, xid=xid, hops=hops, flags=FLAG_BROADCAST, giaddr=relay,
                           chaddr=self.mac, options=((Opt.MESSAGE_TYPE, u8(msgtype)), *options),
                           **fields)  # type: ignore[arg-type]

    def _dora(self, pxe: bool, profile: Profile | None = None) -> BootpPacket:
        """DISCOVER → OFFER, REQUEST → ACK, retransmitting on the firmware's schedule (of
        *profile*, the client's own by default)."""
        profile = profile or self.profile
        waits = (profile.dhcp_waits if pxe else OS_DHCP_WAITS)
        started = time.monotonic()
        box = self.rack.mailbox()
        try:
            xid = self.rng.getrandbits(32)
            box.watch(xid)
            options = self._options(pxe, profile)
            resends_before = self.result.dhcp_resends
            offer = self._transact(box, self._packet(xid, MessageType.DISCOVER, options),
                                   (MessageType.OFFER,), waits)
            if offer.yiaddr == "0.0.0.0":
                raise ClientFailure("bad_offer", "OFFER without an address")
            server_id = offer.option(Opt.SERVER_ID) or ip_bytes(self.rack.server_host)
            request = self._packet(xid, MessageType.REQUEST, options + [
                (Opt.SERVER_ID, server_id), (Opt.REQUESTED_IP, ip_bytes(offer.yiaddr))])
            ack = self._transact(box, request, (MessageType.ACK, MessageType.NAK), waits)
            if ack.message_type == MessageType.NAK:
                raise ClientFailure("dhcp_nak", (ack.option(Opt.MESSAGE) or b"").decode("latin-1"))
            if ack.yiaddr != offer.yiaddr:
                raise ClientFailure("dhcp_mismatch", f"offered {offer.yiaddr}, acked {ack.yiaddr}")
            self.server_id = server_id
            self.tftp_port = self.rack.tftp_port_for(box.source)
            self.rack.dhcp_exchanges += 1
            self.result.dhcp_exchanges += 1
            self.result.dora_times.append(time.monotonic() - started)
            if self.result.dhcp_resends > resends_before:
                self.result.dhcp_lost += 1
            return ack
        finally:
            box.close()

    def _proxy_dhcp(self, profile: Profile | None = None, *, first: bool = True) -> tuple[str, BootpPacket]:
        """``--proxy`` (README, "proxyDHCP"): one DISCOVER relayed to both servers; the site's
        OFFER (an address) and massboot's proxy OFFER (``PXEClient``, no address) are awaited,
        retransmitting on the firmware's schedule until both came; the REQUEST for the site's
        address; then a REQUEST to massboot's PXE boot server port from that address, whose ACK
        names the boot file. Returns the address and that ACK. *profile*: the stage asking (the
        client's own by default; the chained iPXE's for its second exchange, *first* False:
        the client's address and its mark are the first exchange's)."""
        profile = profile or self.profile
        waits = profile.dhcp_waits
        rack = self.rack
        started = time.monotonic()
        box = rack.mailbox()
        try:
            xid = self.rng.getrandbits(32)
            box.watch(xid)
            options = self._options(True, profile)
            resends_before = self.result.dhcp_resends
            site, proxy = self._both_offers(box, self._packet(xid, MessageType.DISCOVER, options), waits)
            server_id = site.option(Opt.SERVER_ID) or b""
            request = self._packet(xid, MessageType.REQUEST, options + [
                (Opt.SERVER_ID, server_id), (Opt.REQUESTED_IP, ip_bytes(site.yiaddr))])
            ack = self._transact(box, request, (MessageType.ACK, MessageType.NAK), waits)
            if ack.message_type == MessageType.NAK or ack.yiaddr != site.yiaddr:
                raise ClientFailure("dhcp_nak", f"the site server refused {site.yiaddr}")
            rack.dhcp_exchanges += 1
            self.result.dhcp_exchanges += 1
            if self.result.dhcp_resends > resends_before:
                self.result.dhcp_lost += 1
        finally:
            box.close()
        ip = ack.yiaddr
        if first:
            self.result.ip = ip
            self.mark("address")
        boot = self._bootserver(ip, proxy, options, waits)
        self.result.dora_times.append(time.monotonic() - started)
        return ip, boot

    def _both_offers(self, box: RelayMailbox, discover: BootpPacket,
                     waits: tuple[float, ...]) -> tuple[BootpPacket, BootpPacket]:
        site: BootpPacket | None = None
        proxy: BootpPacket | None = None
        for reply in self._relayed(box, discover, waits):
            if reply.xid != discover.xid or reply.message_type != MessageType.OFFER:
                continue
            if reply.yiaddr != "0.0.0.0":
                site = site or reply
            elif (reply.vendor_class or "").startswith("PXEClient"):
                proxy = proxy or reply
            if site is not None and proxy is not None:
                return site, proxy
        missing = "the site server's OFFER" if site is None else "the proxy OFFER"
        raise ClientFailure("dhcp_timeout", f"no {missing} after {len(waits)} DISCOVERs")

    def _bootserver(self, ip: str, proxy: BootpPacket, options: list[tuple[int, bytes]],
                    waits: tuple[float, ...]) -> BootpPacket:
        """The REQUEST to the PXE boot server port (option 54 of the proxy OFFER, the port the
        rack knows), from *ip* (``ciaddr``), until its ACK names a boot file."""
        rack = self.rack
        server = (_ip_text(proxy.option(Opt.SERVER_ID)) or rack.bootserver[0], rack.bootserver[1])
        xid = self.rng.getrandbits(32)
        request = replace(self._packet(xid, MessageType.REQUEST, options), giaddr="0.0.0.0", hops=0,
                          flags=0, ciaddr=ip)
        sock = LeanUdp((ip if ip.startswith("127.") else "0.0.0.0", 0))
        buf = bytearray(4096)

        def send() -> None:
            if not (rack.loss and self.rng.random() < rack.loss):
                sock.sendto(encode(request), server)
            else:
                rack.dropped_out += 1

        def recv(timeout: float) -> bytes | None:
            got = sock.recvfrom_into(buf, timeout)
            return None if got is None else bytes(buf[:got[0]])

        try:
            for reply in self._replies(send, recv, waits):
                if reply.xid == xid and reply.message_type == MessageType.ACK and reply.file:
                    rack.bootserver_exchanges += 1
                    return reply
        finally:
            sock.close()
        raise ClientFailure("dhcp_timeout", f"no ACK from the PXE boot server port after {len(waits)} tries")

    def _transact(self, box: RelayMailbox, request: BootpPacket, wanted: tuple[MessageType, ...],
                  waits: tuple[float, ...]) -> BootpPacket:
        for reply in self._relayed(box, request, waits):
            if reply.xid == request.xid and reply.chaddr[:6] == self.mac and reply.message_type in wanted:
                return reply
        name = MessageType(request.message_type or 0).name if request.message_type else "request"
        raise ClientFailure("dhcp_timeout", f"no answer to {name} after {len(waits)} tries")

    def _relayed(self, box: RelayMailbox, request: BootpPacket,
                 waits: tuple[float, ...]) -> Iterator[BootpPacket]:
        """:meth:`_replies` through the relay mailbox *box*, ``secs`` brought up to date on each try."""

        def send() -> None:
            secs = min(int(time.monotonic() - self.power_on), 0xFFFF)
            self._send_dhcp(box, encode(replace(request, secs=secs)))

        return self._replies(send, box.recv, waits)

    def _replies(self, send: Callable[[], None], recv: Callable[[float], bytes | None],
                 waits: tuple[float, ...]) -> Iterator[BootpPacket]:
        """Call *send* on the firmware's schedule (one try per wait in *waits*) and yield every
        datagram *recv* returns that survives the injected loss and decodes; the next try goes
        out when a wait ends with the caller still asking. Ends after the last wait."""
        rack = self.rack
        for attempt, wait in enumerate(waits):
            if attempt:
                self.result.dhcp_resends += 1
            send()
            deadline = time.monotonic() + wait * rack.scale
            while (remaining := deadline - time.monotonic()) > 0:
                data = recv(remaining)
                if data is None:
                    break
                if rack.loss and self.rng.random() < rack.loss:
                    rack.dropped_in += 1
                    continue
                try:
                    reply = decode(data)
                except PacketError:
                    continue
                yield reply

    def _send_dhcp(self, box: RelayMailbox, data: bytes) -> None:
        rack = self.rack
        if rack.loss and self.rng.random() < rack.loss:
            rack.dropped_out += 1
            return
        box.send(data)

    def _release(self, ack: BootpPacket) -> None:
        box = self.rack.mailbox()
        try:
            options = [(Opt.SERVER_ID, self.server_id or ip_bytes(self.rack.server_host)),
                       (Opt.CLIENT_ID, b"\x01" + self.mac)]
            packet = replace(self._packet(self.rng.getrandbits(32), MessageType.RELEASE, options),
                             ciaddr=ack.yiaddr, flags=0)
            self._send_dhcp(box, encode(packet))
        finally:
            box.close()

    # -- files by URI: TFTP or HTTP ---------------------------------------------------------

    def _load(self, uri: str, stage: Stage, options: dict[str, str], *, keep: bool = False) -> bytes:
        """Read the file *uri* names: ``http://`` over HTTP, ``tftp://`` or a plain name by TFTP
        (from the DHCP server's TFTP server, as today). Returns the content when ``keep``."""
        if re.match(r"http://", uri, re.IGNORECASE):
            return self._http_fetch(uri, keep)
        if "://" in uri and not re.match(r"tftp://", uri, re.IGNORECASE):
            raise ClientFailure("unsupported_uri", uri[:80])
        got = self._fetch(_strip_tftp_url(uri), stage, options, keep=keep)
        assert got is not None
        return got[1]

    def _http_fetch(self, url: str, keep: bool) -> bytes:
        """GET *url* on the client's kept-alive connection to that server (a new one at first)."""
        rack = self.rack
        try:
            host, port, target = split_url(url)
        except ValueError as exc:
            raise ClientFailure("bad_uri", str(exc)) from exc
        conn = self._http.get((host, port))
        if conn is None:
            conn = self._http[(host, port)] = HttpConnection((host, port), self.bind_ip,
                                                             HTTP_IDLE_TIMEOUT * rack.scale)
        rack.http_requests += 1

        def count(n: int) -> None:
            rack.bytes += n

        try:
            reader = conn.get(target, keep=_KEEP_LIMIT if keep else 0, progress=count)
        except HttpFailure as exc:
            raise ClientFailure(exc.reason, exc.detail) from exc
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        self.result.bytes += reader.received
        self.result.files[name] = reader.received
        return reader.content

    def _close_http(self) -> None:
        for conn in self._http.values():
            self.result.http_requests += conn.requests
            self.result.http_connections += conn.connections
            conn.close()
        self._http.clear()

    # -- TFTP ----------------------------------------------------------------------------

    def _fetch(self, name: str, stage: Stage, options: dict[str, str], *, keep: bool = False,
               missing_ok: bool = False) -> tuple[int, bytes] | None:
        """Read one file (RFC 1350 with RFC 2347-2349 and 7440 options).

        Returns:
            ``(size, content)`` (content only when ``keep``), or None for a missing file when
            ``missing_ok`` (ERROR 1).

        Raises:
            ClientFailure: ``tftp_timeout``, ``tftp_error_N``, ``tftp_size``, ``tftp_bad_oack``.
        """
        rack = self.rack
        result = self.result
        loss = rack.loss
        rng = self.rng
        scale = rack.scale
        clock = time.monotonic
        core = ReadClient(name, options, waits=[wait * scale for wait in stage.waits],
                          keep=_KEEP_LIMIT if keep else 0)
        on_packet = core.on_packet
        sock = LeanUdp((self.bind_ip, 0))
        try:
            server = (self.tftp_host, self.tftp_port)
            rack.transfers += 1
            peer: tuple[str, int] | None = None
            buf = bytearray(65536 + 4)
            view = memoryview(buf)

            def send(data: bytes, to: tuple[str, int]) -> None:
                if loss and rng.random() < loss:
                    rack.dropped_out += 1
                    return
                try:
                    sock.sendto(data, to)
                except OSError:  # a full socket buffer (EAGAIN) is a loss; the timer resends
                    rack.send_errors += 1

            send(core.start(clock()), server)
            while core.state < DONE:
                remaining = core.deadline - clock()
                if remaining <= 0:
                    again = core.on_timeout(clock())
                    if again is not None:
                        send(again, server if peer is None else peer)
                    continue
                try:
                    got = sock.recvfrom_into(buf, remaining)
                except OSError:  # e.g. ICMP port unreachable reported late: like a loss
                    continue
                if got is None:
                    continue
                size, addr = got
                if loss and rng.random() < loss:
                    rack.dropped_in += 1
                    continue
                if size < 4:
                    continue
                if peer is None:
                    peer = addr
                elif addr != peer:
                    send(unknown_tid_error(), addr)
                    continue
                before = core.received
                reply = on_packet(view, size, clock())
                rack.bytes += core.received - before
                if reply is not None:
                    send(reply, peer)
        finally:
            sock.close()
            result.tftp_resends += core.resends
            result.tftp_duplicates += core.duplicates
        if core.state == FAILED:
            if core.reason == "error":
                if core.error_code == 1 and missing_ok:  # RFC 1350: File not found
                    return None
                raise ClientFailure(f"tftp_error_{core.error_code}", f"{name}: {core.error_message}")
            if core.reason == "timeout":
                raise ClientFailure("tftp_timeout", f"{name} {core.detail}")
            raise ClientFailure(f"tftp_{core.reason}", f"{name}: {core.detail}")
        result.bytes += core.received
        result.files[name] = core.received
        return core.received, core.content
