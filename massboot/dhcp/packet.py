"""BOOTP/DHCP message codec (RFC 951, RFC 2131, RFC 2132, RFC 3396, PXE): pure, no I/O.

A datagram becomes an immutable :class:`BootpPacket` with :func:`decode`, and a packet becomes
bytes with :func:`encode`. Options are kept as raw ``(code, value)`` pairs in wire order; the
properties of :class:`BootpPacket` interpret the few that the policy needs (message type, PXE
identity, architecture, user class, ...). :func:`decode` raises :class:`PacketError` and nothing
else, whatever the input, so a server can drop bad datagrams with one ``except``.

Replies are built from requests with :func:`dataclasses.replace`::

    reply = dataclasses.replace(request, op=BOOTREPLY, yiaddr="10.0.0.5", options=(
        (Opt.MESSAGE_TYPE, u8(MessageType.OFFER)),
        (Opt.SERVER_ID, ip_bytes("10.0.0.1")),
    ))
    datagram = encode(reply)
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import Any

from massboot import codec
from massboot.ident import uuid_from_option97

__all__ = [
    "BOOTP_MIN_SIZE",
    "BOOTREPLY",
    "BOOTREQUEST",
    "CODEC",
    "CODEC_API",
    "CODEC_PROBLEM",
    "CODEC_STALE",
    "FLAG_BROADCAST",
    "HEADER_SIZE",
    "HTTP_CLIENT_CLASS",
    "MAGIC_COOKIE",
    "BootpPacket",
    "MessageType",
    "Opt",
    "PacketError",
    "Reason",
    "arch_from_vendor_class",
    "bytes_ip",
    "decode",
    "decode_suboptions",
    "encode",
    "encode_suboptions",
    "ip_bytes",
    "ips_bytes",
    "parse_user_classes",
    "python_decode",
    "python_encode",
    "u8",
    "u16",
    "u32",
]

BOOTREQUEST = 1  # RFC 2131 §2, 'op'
BOOTREPLY = 2  # RFC 2131 §2, 'op'
FLAG_BROADCAST = 0x8000  # RFC 2131 §2, figure 2: the leftmost bit of 'flags'
MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2132 §2: 99.130.83.99 opens the vendor area
BOOTP_MIN_SIZE = 300  # RFC 951 (64-byte vendor area) and RFC 1542 §2.1: minimum BOOTP message
HEADER_SIZE = 236  # RFC 2131 §2: fixed fields up to and including 'file'
_MAX_HLEN = 16  # RFC 2131 §2: 'chaddr' is 16 octets
_SNAME_SIZE = 64  # RFC 2131 §2
_FILE_SIZE = 128  # RFC 2131 §2
_MAX_OPTION_LEN = 255  # RFC 2132 §2: one length octet; RFC 3396 §5 splits longer values

# op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr | chaddr sname file
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
assert _HEADER.size == HEADER_SIZE


class Reason(StrEnum):
    """Why a datagram was rejected: the ``reason`` label of ``massboot_malformed_packets``.

    :func:`decode` gives one of the first six; the server adds the last two (a reply where a
    request was expected, an option 53 it does not know). ``not_bytes`` has no label of its
    own (it is counted as ``other``). See the README, Monitoring.
    """

    TOO_SHORT = "too_short"  # under the 236-byte fixed header, RFC 2131 §2
    TRUNCATED = "truncated"  # an option or sub-option running past its field, RFC 2132 §2
    BAD_OP = "bad_op"  # 'op' neither BOOTREQUEST nor BOOTREPLY, RFC 2131 §2
    BAD_HLEN = "bad_hlen"  # 'hlen' above the 16 octets of 'chaddr' (RFC 2131 §2); below 6: exchange.classify
    BAD_OVERLOAD = "bad_overload"  # option 52 not 1, 2 or 3, RFC 2132 §9.3
    NOT_BYTES = "not_bytes"  # decode() given something else than bytes (a caller's bug)
    BAD_MESSAGE_TYPE = "bad_message_type"  # option 53 outside RFC 2132 §9.6
    NOT_REQUEST = "not_request"  # op = BOOTREPLY sent to the server


class PacketError(codec.PacketError):
    """A datagram that is not a well-formed BOOTP/DHCP message (the only error of :func:`decode`);
    ``exc.reason`` is a :class:`Reason`."""

    reason: Reason


class MessageType(IntEnum):
    """DHCP message types, option 53 (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


#: option 53 values by number (RFC 2132 §9.6)
_MESSAGE_TYPES: dict[int, MessageType] = {t.value: t for t in MessageType}


class Opt(IntEnum):
    """DHCP/BOOTP option codes."""

    PAD = 0  # RFC 2132 §3.1
    SUBNET_MASK = 1  # RFC 2132 §3.3
    ROUTER = 3  # RFC 2132 §3.5
    DNS = 6  # RFC 2132 §3.8
    HOSTNAME = 12  # RFC 2132 §3.14
    BOOTFILE_SIZE = 13  # RFC 2132 §3.15
    DOMAIN_NAME = 15  # RFC 2132 §3.17
    BROADCAST = 28  # RFC 2132 §5.3
    VENDOR_SPECIFIC = 43  # RFC 2132 §8.4; PXE 2.1 §2.4 encapsulates PXE sub-options here
    REQUESTED_IP = 50  # RFC 2132 §9.1
    LEASE_TIME = 51  # RFC 2132 §9.2
    OVERLOAD = 52  # RFC 2132 §9.3
    MESSAGE_TYPE = 53  # RFC 2132 §9.6
    SERVER_ID = 54  # RFC 2132 §9.7
    PARAM_REQUEST = 55  # RFC 2132 §9.8
    MESSAGE = 56  # RFC 2132 §9.9
    MAX_SIZE = 57  # RFC 2132 §9.10
    RENEWAL_T1 = 58  # RFC 2132 §9.11
    REBINDING_T2 = 59  # RFC 2132 §9.12
    VENDOR_CLASS = 60  # RFC 2132 §9.13; PXE: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"
    CLIENT_ID = 61  # RFC 2132 §9.14
    TFTP_SERVER = 66  # RFC 2132 §9.4
    BOOTFILE = 67  # RFC 2132 §9.5
    USER_CLASS = 77  # RFC 3004 §4
    RELAY_AGENT = 82  # RFC 3046 §2
    CLIENT_ARCH = 93  # RFC 4578 §2.1
    CLIENT_NDI = 94  # RFC 4578 §2.2
    CLIENT_UUID = 97  # RFC 4578 §2.3
    DOMAIN_SEARCH = 119  # RFC 3397 §2
    TFTP_SERVER_ADDRESS = 150  # RFC 5859 §3
    IPXE_ENCAP = 175  # iPXE's encapsulated options (docs: ipxe.org/howto/dhcpd)
    PXELINUX_CONFIGFILE = 209  # RFC 5071 §5
    PXELINUX_PATHPREFIX = 210  # RFC 5071 §6
    END = 255  # RFC 2132 §3.2


_PAD = 0
_END = 255
_OVERLOAD = 52  # Opt.OVERLOAD, as a plain int for the encode loop
_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_IPXE_USER_CLASS = b"iPXE"
#: option 60 of UEFI HTTP Boot firmware (UEFI 2.5 and later, "HTTP Boot": "HTTPClient:Arch:xxxxx:UNDI:yyyzzz")
HTTP_CLIENT_CLASS = b"HTTPClient"
#: the vendor classes whose second and third fields carry the architecture (lower case)
_ARCH_CLASSES = ("pxeclient", "httpclient")


# ---------------------------------------------------------------------------------------------
# value helpers
# ---------------------------------------------------------------------------------------------


def ip_bytes(ip: str) -> bytes:
    """Four network-order bytes of a dotted-quad IPv4 address.

    Raises:
        ValueError: not a dotted-quad IPv4 address.
    """
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except (OSError, TypeError):
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


def ips_bytes(ips: Iterable[str]) -> bytes:
    """The concatenated addresses of a list option (router, DNS: RFC 2132 §3.5, §3.8).

    Raises:
        ValueError: an element is not a dotted-quad IPv4 address.
    """
    return b"".join(ip_bytes(ip) for ip in ips)


def bytes_ip(b: bytes) -> str:
    """Dotted-quad text of four network-order bytes.

    Raises:
        ValueError: ``b`` is not exactly four bytes long.
    """
    if len(b) != 4:
        raise ValueError(f"an IPv4 address is 4 bytes, not {len(b)}")
    return socket.inet_ntoa(b)


def _uint(n: int, size: int) -> bytes:
    try:
        return int(n).to_bytes(size, "big")
    except OverflowError:
        raise ValueError(f"{n} does not fit in {size * 8} unsigned bits") from None


def u8(n: int) -> bytes:
    """One byte (e.g. option 53's value). Raises ValueError outside 0..255."""
    return _uint(n, 1)


def u16(n: int) -> bytes:
    """Two network-order bytes (e.g. option 57). Raises ValueError outside 0..65535."""
    return _uint(n, 2)


def u32(n: int) -> bytes:
    """Four network-order bytes (e.g. option 51). Raises ValueError outside 0..2**32-1."""
    return _uint(n, 4)


def encode_suboptions(items: Iterable[tuple[int, bytes]], *, end: bool = True) -> bytes:
    """Encapsulate sub-options as in option 43 (RFC 2132 §8.4; PXE 2.1 §2.4).

    Args:
        items: ``(code, value)`` pairs in order; codes 1..254, values of at most 255 bytes.
        end: append the END sub-option (255), as PXE 2.1 requires of option 43.

    Returns:
        The concatenated TLVs, ready to be the value of an option.

    Raises:
        ValueError: a code out of range or a value longer than 255 bytes.
    """
    out = bytearray()
    for code, value in items:
        if not 0 < code < _END:
            raise ValueError(f"sub-option code out of 1..254: {code}")
        if len(value) > _MAX_OPTION_LEN:
            raise ValueError(f"sub-option {code} is {len(value)} bytes, more than 255")
        out.append(code)
        out.append(len(value))
        out += value
    if end:
        out.append(_END)
    return bytes(out)


def decode_suboptions(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split encapsulated sub-options (the inverse of :func:`encode_suboptions`).

    PAD (0) is skipped, END (255) stops, a missing END is tolerated. Repeated codes stay
    separate entries, in wire order.

    Raises:
        PacketError: a sub-option whose length runs past the end of ``data``.
    """
    items: list[tuple[int, bytes]] = []
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == _PAD:
            i += 1
            continue
        if code == _END:
            break
        if i + 1 >= n:
            raise PacketError(f"sub-option {code} truncated: no length octet", reason=Reason.TRUNCATED)
        end = i + 2 + data[i + 1]
        if end > n:
            raise PacketError(f"sub-option {code} truncated: length {data[i + 1]} past the end",
                              reason=Reason.TRUNCATED)
        items.append((code, bytes(data[i + 2 : end])))
        i = end
    return tuple(items)


def parse_user_classes(value: bytes) -> tuple[bytes, ...]:
    """The classes of an option 77 value (RFC 3004 §4), tolerating iPXE's bare string.

    RFC 3004 encodes a list of length-prefixed strings. iPXE (and some other clients, as for
    the older RFC 2132 draft form) send one bare string such as ``b"iPXE"``. A value that
    does not parse exactly as a non-empty length-prefixed list is taken as one bare class.
    """
    if not value:
        return ()
    classes: list[bytes] = []
    i = 0
    n = len(value)
    while i < n:
        length = value[i]
        end = i + 1 + length
        if length == 0 or end > n:
            return (bytes(value),)
        classes.append(bytes(value[i + 1 : end]))
        i = end
    return tuple(classes)


def arch_from_vendor_class(vendor_class: str) -> int | None:
    """The architecture field of a PXE vendor class ``PXEClient:Arch:NNNNN:...`` (PXE 2.1), or
    of a UEFI HTTP Boot one, ``HTTPClient:Arch:NNNNN:...`` (UEFI 2.5 and later, "HTTP Boot").

    The first two fields are compared case-insensitively, as pybootd does.

    Returns:
        The decimal architecture number, or None if the text has no such field.
    """
    fields = vendor_class.split(":", 3)
    if len(fields) < 3 or fields[0].lower() not in _ARCH_CLASSES or fields[1].lower() != "arch":
        return None
    digits = fields[2].strip()
    if not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


# ---------------------------------------------------------------------------------------------
# the packet
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootpPacket:
    """One BOOTP/DHCP message (RFC 2131 §2), fields in wire order.

    Attributes:
        op: :data:`BOOTREQUEST` or :data:`BOOTREPLY`.
        xid: transaction id.
        htype: hardware type (1 = Ethernet).
        hlen: hardware address length (encoded as given, not derived from ``chaddr``).
        hops: relay hop count.
        secs: seconds since the client began.
        flags: the broadcast flag (:data:`FLAG_BROADCAST`) and reserved bits.
        ciaddr: client address (dotted quad).
        yiaddr: "your" (client) address offered or assigned.
        siaddr: next server (TFTP) address.
        giaddr: relay agent address.
        chaddr: client hardware address; decode gives ``hlen`` bytes, encode pads to 16.
        sname: server host name; NUL-padding stripped on decode; empty when overloaded.
        file: boot file name; NUL-padding stripped on decode; empty when overloaded.
        options: ordered ``(code, value)`` pairs. On decode, repeated codes are concatenated
            into one entry at the place of the first (RFC 3396 §7), PAD/END/OVERLOAD are
            not listed, and options carried in ``sname``/``file`` follow the others.
        vendor: False for a pure RFC 951 BOOTP vendor area without the magic cookie.
    """

    op: int
    xid: int = 0
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    chaddr: bytes = b""
    sname: bytes = b""
    file: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    vendor: bool = True
    #: ``code → value`` of :attr:`options` (the first of a repeated code), made by :func:`decode`
    #: or by the first :meth:`option` call: a request's options are read about ten times while
    #: it is classified and answered (issue #14). Not a field of the message: never compared,
    #: shown or copied by :func:`dataclasses.replace` (which makes a new one from ``options``).
    _index: dict[int, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def mac(self) -> bytes:
        """The first six bytes of ``chaddr``."""
        return self.chaddr[:6]

    def option(self, code: int) -> bytes | None:
        """The value of option ``code``, or None if absent."""
        return (self._index or self._indexed()).get(code)

    def _indexed(self) -> dict[int, bytes]:
        """Make (or make again, when empty) and keep :attr:`_index`. The properties below read
        it straight, one call less each: a request is classified by a dozen of them."""
        index: dict[int, bytes] = {}
        for c, value in self.options:
            index.setdefault(c, value)
        object.__setattr__(self, "_index", index)
        return index

    @property
    def message_type(self) -> MessageType | None:
        """Option 53 (RFC 2132 §9.6); None when absent, empty or of an unknown value."""
        value = (self._index or self._indexed()).get(Opt.MESSAGE_TYPE)
        if not value:
            return None
        return _MESSAGE_TYPES.get(value[0])     # a lookup: an Enum call costs ten times more

    @property
    def requested_params(self) -> tuple[int, ...]:
        """The codes of option 55 (RFC 2132 §9.8), in the client's order; () when absent."""
        value = (self._index or self._indexed()).get(Opt.PARAM_REQUEST)
        return tuple(value) if value else ()

    @property
    def vendor_class(self) -> str | None:
        """Option 60 (RFC 2132 §9.13) decoded as latin-1, or None."""
        value = (self._index or self._indexed()).get(Opt.VENDOR_CLASS)
        return None if value is None else value.decode("latin-1")

    @property
    def client_arch(self) -> int | None:
        """The client system architecture: the first type of option 93 (RFC 4578 §2.1), else
        the ``Arch`` field of a ``PXEClient:Arch:NNNNN:...`` option 60, else None."""
        value = (self._index or self._indexed()).get(Opt.CLIENT_ARCH)
        if value is not None and len(value) >= 2:
            return int.from_bytes(value[:2], "big")
        vendor_class = self.vendor_class
        if vendor_class is None:
            return None
        return arch_from_vendor_class(vendor_class)

    @property
    def user_classes(self) -> tuple[bytes, ...]:
        """The classes of option 77 (see :func:`parse_user_classes`); () when absent."""
        value = (self._index or self._indexed()).get(Opt.USER_CLASS)
        return parse_user_classes(value) if value else ()

    @property
    def is_ipxe(self) -> bool:
        """True for iPXE: a user class ``iPXE``, or iPXE's encapsulated option 175 present."""
        index = self._index or self._indexed()
        user_class = index.get(Opt.USER_CLASS)
        return bool(user_class) and _IPXE_USER_CLASS in parse_user_classes(user_class) or \
            index.get(Opt.IPXE_ENCAP) is not None

    @property
    def uuid(self) -> str | None:
        """The client machine UUID of a 17-byte option 97 (RFC 4578 §2.3), else None."""
        value = (self._index or self._indexed()).get(Opt.CLIENT_UUID)
        return None if value is None else uuid_from_option97(value)

    @property
    def is_pxe(self) -> bool:
        """True for a PXE request: option 97 of exactly 17 bytes, or option 60 ``PXEClient...``."""
        index = self._index or self._indexed()
        value = index.get(Opt.CLIENT_UUID)
        if value is not None and len(value) == 17:
            return True
        vendor_class = index.get(Opt.VENDOR_CLASS)
        return vendor_class is not None and vendor_class.startswith(b"PXEClient")

    @property
    def is_http_client(self) -> bool:
        """True for UEFI HTTP Boot firmware: option 60 begins with ``HTTPClient`` (UEFI 2.5
        and later, "HTTP Boot"). Such a request may carry option 97 too, so :attr:`is_pxe` is also True."""
        vendor_class = (self._index or self._indexed()).get(Opt.VENDOR_CLASS)
        return vendor_class is not None and vendor_class.startswith(HTTP_CLIENT_CLASS)

    @property
    def requested_ip(self) -> str | None:
        """Option 50 (RFC 2132 §9.1) as a dotted quad, or None if absent or not 4 bytes."""
        return _opt_ip((self._index or self._indexed()).get(Opt.REQUESTED_IP))

    @property
    def server_id(self) -> str | None:
        """Option 54 (RFC 2132 §9.7) as a dotted quad, or None if absent or not 4 bytes."""
        return _opt_ip((self._index or self._indexed()).get(Opt.SERVER_ID))

    @property
    def broadcast(self) -> bool:
        """The BROADCAST flag (RFC 2131 §2, §4.1)."""
        return bool(self.flags & FLAG_BROADCAST)


def _opt_ip(value: bytes | None) -> str | None:
    if value is None or len(value) != 4:
        return None
    return socket.inet_ntoa(value)


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------


def _parse_options(data: bytes, start: int, stop: int, found: dict[int, bytes], where: str) -> None:
    """Add the TLVs of ``data[start:stop]`` to ``found``, concatenating repeats (RFC 3396 §7).

    PAD is skipped and END stops (RFC 2132 §3.1, §3.2); running out of data exactly on a TLV
    boundary is accepted as a missing END.
    """
    i = start
    while i < stop:
        code = data[i]
        if code == _PAD:
            i += 1
            continue
        if code == _END:
            return
        if i + 1 >= stop:
            raise PacketError(f"option {code} in {where} truncated: no length octet", reason=Reason.TRUNCATED)
        end = i + 2 + data[i + 1]
        if end > stop:
            raise PacketError(f"option {code} in {where} truncated: length {data[i + 1]} past the end",
                              reason=Reason.TRUNCATED)
        if code in found:
            found[code] += data[i + 2 : end]
        else:
            found[code] = data[i + 2 : end]
        i = end


def python_decode(data: bytes) -> BootpPacket:
    """Decode one BOOTP/DHCP datagram (:func:`decode` is this function, or the compiled codec
    that gives the same packets and hands it whatever it does not serve; see :data:`CODEC`).

    The fixed header is RFC 2131 §2. Options follow the magic cookie (RFC 2132 §2); without
    the cookie the packet is plain BOOTP (``vendor=False``, no options). Option overload
    (RFC 2132 §9.3) is resolved in the order options, ``file``, ``sname`` (RFC 2131 §4.1),
    and repeated options are concatenated (RFC 3396 §7).

    Args:
        data: the UDP payload.

    Returns:
        The packet.

    Raises:
        PacketError: shorter than 236 bytes, ``op`` not 1 or 2, ``hlen`` above 16, a truncated
            option, or a bad overload option. Nothing else is ever raised.
    """
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise PacketError(f"not a byte string: {type(data).__name__}", reason=Reason.NOT_BYTES)
        data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise PacketError(f"{len(data)} bytes: shorter than the {HEADER_SIZE}-byte BOOTP header",
                          reason=Reason.TOO_SHORT)
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = _HEADER.unpack_from(data)
    if op != BOOTREQUEST and op != BOOTREPLY:
        raise PacketError(f"bad op {op}", reason=Reason.BAD_OP)
    if hlen > _MAX_HLEN:
        raise PacketError(f"bad hlen {hlen}", reason=Reason.BAD_HLEN)

    vendor = data[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC_COOKIE
    options: tuple[tuple[int, bytes], ...] = ()
    found: dict[int, bytes] = {}
    if vendor:
        _parse_options(data, HEADER_SIZE + 4, len(data), found, "options")
        overload = found.pop(Opt.OVERLOAD, None)
        if overload is not None:
            if len(overload) != 1 or not 1 <= overload[0] <= 3:
                raise PacketError(f"bad overload option value {overload.hex()}", reason=Reason.BAD_OVERLOAD)
            # RFC 2131 §4.1: the 'file' field is read before 'sname'.
            if overload[0] & 1:
                _parse_options(file, 0, _FILE_SIZE, found, "file")
                file = b""
            if overload[0] & 2:
                _parse_options(sname, 0, _SNAME_SIZE, found, "sname")
                sname = b""
            found.pop(Opt.OVERLOAD, None)
        options = tuple(found.items())

    # built field by field through the slots, not by the frozen dataclass's __init__ (its
    # object.__setattr__ per field costs a third more: issue #14); the all-zero addresses
    # of most requests need no inet_ntoa
    packet = _new_packet(BootpPacket)
    for set_field, value in zip(_PACKET_SETTERS, (
            op, xid, htype, hlen, hops, secs, flags,
            _NO_ADDRESS if ciaddr == _ZERO4 else _ntoa(ciaddr),
            _NO_ADDRESS if yiaddr == _ZERO4 else _ntoa(yiaddr),
            _NO_ADDRESS if siaddr == _ZERO4 else _ntoa(siaddr),
            _NO_ADDRESS if giaddr == _ZERO4 else _ntoa(giaddr),
            chaddr[:hlen], sname.rstrip(b"\0"), file.rstrip(b"\0"), options, vendor,
            found if vendor else None), strict=True):   # found: each code once, as in options
        set_field(packet, value)
    return packet


_new_packet = object.__new__
_ntoa = socket.inet_ntoa
_ZERO4 = bytes(4)
_NO_ADDRESS = "0.0.0.0"
#: each field's slot setter, in the order of the fields (the option index last)
_PACKET_SETTERS = tuple(BootpPacket.__dict__[f.name].__set__ for f in fields(BootpPacket))
assert [f.name for f in fields(BootpPacket)][-1] == "_index" and len(_PACKET_SETTERS) == 17, \
    "decode passes the 16 fields in their order, then the index"


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------


def python_encode(packet: BootpPacket, *, min_size: int = BOOTP_MIN_SIZE) -> bytes:
    """Encode a packet: header, magic cookie, options in the given order, END, zero padding
    (:func:`encode` is this function, or the compiled codec that gives the same bytes and hands
    it whatever it does not serve; see :data:`CODEC`).

    A value longer than 255 bytes is split into consecutive instances of its option
    (RFC 3396 §6). Option 52 is never produced (an OVERLOAD entry in ``options`` is dropped),
    nor PAD or END entries given in ``options``.

    Args:
        packet: the message; ``chaddr`` up to 16 bytes, ``sname`` up to 64, ``file`` up to 128.
        min_size: pad with zeros to at least this many bytes (RFC 1542 §2.1: 300 for BOOTP
            relays and old clients); 0 disables padding.

    Returns:
        The UDP payload.

    Raises:
        ValueError: a field out of range, an invalid address, an option code out of 0..255,
            or options on a packet with ``vendor=False``.
    """
    if len(packet.chaddr) > _MAX_HLEN:
        raise ValueError(f"chaddr is {len(packet.chaddr)} bytes, more than 16")
    if len(packet.sname) > _SNAME_SIZE:
        raise ValueError(f"sname is {len(packet.sname)} bytes, more than 64")
    if len(packet.file) > _FILE_SIZE:
        raise ValueError(f"file is {len(packet.file)} bytes, more than 128")
    try:
        # inet_pton straight, not through ip_bytes: a reply is encoded per message (issue #14)
        header = _HEADER.pack(
            packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs, packet.flags,
            _pton(_AF_INET, packet.ciaddr), _pton(_AF_INET, packet.yiaddr),
            _pton(_AF_INET, packet.siaddr), _pton(_AF_INET, packet.giaddr),
            packet.chaddr, packet.sname, packet.file,
        )
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None
    except (OSError, TypeError):     # not a dotted quad: ip_bytes raises, naming the address
        for ip in (packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr):
            ip_bytes(ip)
        raise

    out = bytearray(header)
    if packet.vendor:
        out += MAGIC_COOKIE
        for code, value in packet.options:
            if 0 < code < _END and code != _OVERLOAD:
                n = len(value)
                if n <= _MAX_OPTION_LEN:
                    out.append(code)
                    out.append(n)
                    out += value
                    continue
                for i in range(0, n, _MAX_OPTION_LEN):
                    chunk = value[i : i + _MAX_OPTION_LEN]
                    out.append(code)
                    out.append(len(chunk))
                    out += chunk
            elif code != _PAD and code != _END and code != _OVERLOAD:
                raise ValueError(f"option code out of 1..254: {code}")
        out.append(_END)
    elif packet.options:
        raise ValueError("options need the magic cookie: vendor=False packets carry none")
    if len(out) < min_size:
        out += bytes(min_size - len(out))
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# the compiled codec (README "Performance", "DHCP: the compiled codec")
# ---------------------------------------------------------------------------------------------

#: the glue contract with massboot/dhcp/_codec.c (its bind() and the slots it fills): its API
#: constant; both change together
CODEC_API = 1


def _bind_codec(module: Any) -> str | None:
    """Bind a built :mod:`massboot.dhcp._codec` to this module; why it cannot serve, or None.

    A checkout updated without rebuilding keeps the old ``.so``: its API number says so before
    it is used; then its ``bind()`` checks :class:`BootpPacket`'s slots.
    """
    api = getattr(module, "API", None)
    if api != CODEC_API:
        return f"module API {api}, this massboot needs {CODEC_API}"
    try:
        module.bind(BootpPacket, python_decode, python_encode, _NO_ADDRESS)
    except TypeError as exc:
        return str(exc)
    return None


#: why the compiled codec does not serve (with the fix), or None when it does
CODEC_PROBLEM: str | None = None
#: True when a built codec does not match this massboot (an old build: a warning at start)
CODEC_STALE = False
try:
    from massboot.dhcp import _codec  # type: ignore[attr-defined]
except ImportError:     # built by `pip install` when gcc and python3-dev are there (setup.py)
    _codec = None
    CODEC_PROBLEM = f"the compiled DHCP codec (massboot.dhcp._codec) is not built: {codec.BUILD_FIX}"
else:
    _mismatch = _bind_codec(_codec)
    if _mismatch is not None:
        _codec = None
        CODEC_STALE = True
        CODEC_PROBLEM = (f"the compiled DHCP codec (massboot.dhcp._codec) does not match this "
                         f"massboot ({_mismatch}): reinstall massboot (pip install) to rebuild it")

#: which codec :func:`decode` and :func:`encode` are: ``"compiled"`` or ``"python"``
CODEC = "compiled" if _codec is not None else "python"
#: decode one datagram: :func:`python_decode`'s contract, served by the compiled codec when it
#: is built (it hands every datagram it does not decode itself, a malformed one included, to
#: :func:`python_decode`, so errors have one source)
decode: Callable[[bytes], BootpPacket] = _codec.decode if _codec is not None else python_decode
#: encode one packet: :func:`python_encode`'s contract, served likewise
encode: Callable[..., bytes] = _codec.encode if _codec is not None else python_encode
