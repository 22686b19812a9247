"""TFTP packet codec: bytes <-> frozen dataclasses (RFC 1350, options RFC 2347-2349, RFC 7440).

Pure functions, no sockets. :func:`decode` turns one datagram into a :class:`Request`,
:class:`Data`, :class:`Ack`, :class:`Error` or :class:`OptionAck`; every problem with the
bytes raises :class:`PacketError` and nothing else. Each packet class has ``encode()``.

Text fields (filename, mode, option names and values, error messages) are NUL-terminated
strings. Filenames are decoded as UTF-8 with ``surrogateescape`` so that any byte string a
client sends maps back to the same bytes on the file system; mode, options and messages are
decoded as Latin-1 (RFC 1350 says netascii, Latin-1 never fails and keeps ASCII intact).
Option names are case-insensitive (RFC 2347) and are lower-cased on decode, as is the mode.

Tolerances (real clients are not always tidy): extra NUL padding after the last option of a
request is ignored; an ACK may carry trailing bytes after its block number; an ERROR message
may lack its terminating NUL.

The ``parse_*`` helpers validate one option value against its RFC range and return ``None``
for a value the server must ignore (RFC 2347: unknown or invalid options are not answered).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from massboot import codec

__all__ = [
    "ACK_HEADER",
    "DATA_HEADER",
    "BLKSIZE_DEFAULT",
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "TIMEOUT_MAX",
    "TIMEOUT_MIN",
    "WINDOWSIZE_MAX",
    "WINDOWSIZE_MIN",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Packet",
    "PacketError",
    "Reason",
    "Request",
    "decode",
    "parse_blksize",
    "parse_timeout",
    "parse_tsize",
    "parse_windowsize",
]


class Opcode(IntEnum):
    """TFTP opcodes, the first two bytes of every packet."""

    RRQ = 1  # read request, RFC 1350 section 5
    WRQ = 2  # write request, RFC 1350 section 5
    DATA = 3  # RFC 1350 section 5
    ACK = 4  # RFC 1350 section 5
    ERROR = 5  # RFC 1350 section 5
    OACK = 6  # option acknowledgment, RFC 2347


class ErrorCode(IntEnum):
    """ERROR packet codes: RFC 1350 appendix ("Error Codes") plus RFC 2347 code 8."""

    NOT_DEFINED = 0  # "Not defined, see error message (if any)", RFC 1350
    FILE_NOT_FOUND = 1  # RFC 1350
    ACCESS_VIOLATION = 2  # RFC 1350
    DISK_FULL = 3  # "Disk full or allocation exceeded", RFC 1350
    ILLEGAL_OPERATION = 4  # "Illegal TFTP operation", RFC 1350
    UNKNOWN_TID = 5  # "Unknown transfer ID", RFC 1350
    FILE_EXISTS = 6  # RFC 1350
    NO_SUCH_USER = 7  # RFC 1350
    OPTION_REFUSED = 8  # "terminate transfer due to option negotiation", RFC 2347


BLKSIZE_DEFAULT = 512  # RFC 1350 section 2: data blocks are 512 bytes without options
BLKSIZE_MIN = 8  # RFC 2348: valid blksize values are 8..65464
BLKSIZE_MAX = 65464  # RFC 2348 (65535 - 20 IP - 8 UDP - 4 TFTP - 39, a historical bound)
TIMEOUT_MIN = 1  # RFC 2349: timeout in seconds, 1..255
TIMEOUT_MAX = 255  # RFC 2349
WINDOWSIZE_MIN = 1  # RFC 7440: windowsize 1..65535
WINDOWSIZE_MAX = 65535  # RFC 7440

#: ``!HH`` header of DATA (opcode, block) and ACK (opcode, block), RFC 1350 section 5.
DATA_HEADER = struct.Struct("!HH")
ACK_HEADER = DATA_HEADER
_OPCODE = struct.Struct("!H")

_MAX_NUMBER_DIGITS = 20  # longer "integers" are rejected before int() sees them


class Reason(StrEnum):
    """Why :func:`decode` rejected a datagram: the ``reason`` label of
    ``massboot_malformed_packets`` (README, Monitoring)."""

    TOO_SHORT = "too_short"  # no room for the 2-byte opcode, RFC 1350 section 5
    TRUNCATED = "truncated"  # ACK, DATA or ERROR without its 2-byte number or code
    TOO_LONG = "too_long"  # DATA beyond the largest blksize, RFC 2348
    BAD_OPCODE = "bad_opcode"  # not one of RFC 1350's five nor OACK (RFC 2347)
    BAD_REQUEST = "bad_request"  # RRQ/WRQ without filename or mode, strings not NUL-terminated
    BAD_OPTION = "bad_option"  # an option name without a value, or an empty name (RFC 2347)


class PacketError(codec.PacketError):
    """The datagram is not a valid TFTP packet; the only exception :func:`decode` raises;
    ``exc.reason`` is a :class:`Reason`."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ (RFC 1350 section 5) with RFC 2347 options.

    Attributes:
        opcode: :attr:`Opcode.RRQ` or :attr:`Opcode.WRQ`.
        filename: the requested name, as sent (UTF-8, undecodable bytes surrogate-escaped).
        mode: lower-cased transfer mode (``octet``, ``netascii``, ``mail``, or what was sent).
        options: option name (lower-cased) to value, in the client's order; the first
            occurrence of a repeated name wins.
    """

    opcode: Opcode
    filename: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict, hash=False)

    def encode(self) -> bytes:
        """Return the wire form of this request."""
        parts = [_OPCODE.pack(self.opcode), _cstring(self.filename.encode("utf-8", "surrogateescape"))]
        parts.append(_cstring(self.mode.encode("latin-1")))
        parts.append(_encode_options(self.options))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Data:
    """DATA (RFC 1350 section 5): a 16-bit block number and 0..blksize bytes of payload."""

    block: int
    payload: bytes = b""

    def encode(self) -> bytes:
        """Return the wire form of this DATA packet."""
        return DATA_HEADER.pack(Opcode.DATA, self.block & 0xFFFF) + self.payload


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (RFC 1350 section 5) of one 16-bit block number (0 acknowledges an OACK)."""

    block: int

    def encode(self) -> bytes:
        """Return the wire form of this ACK."""
        return ACK_HEADER.pack(Opcode.ACK, self.block & 0xFFFF)


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR (RFC 1350 section 5): a code (see :class:`ErrorCode`) and a message."""

    code: int
    message: str = ""

    def encode(self) -> bytes:
        """Return the wire form of this ERROR packet."""
        return (
            DATA_HEADER.pack(Opcode.ERROR, self.code & 0xFFFF)
            + _cstring(self.message.replace("\0", " ").encode("latin-1", "replace"))
        )


@dataclass(frozen=True, slots=True)
class OptionAck:
    """OACK (RFC 2347): the options the server accepted, with their final values."""

    options: dict[str, str] = field(default_factory=dict, hash=False)

    def encode(self) -> bytes:
        """Return the wire form of this OACK."""
        return _OPCODE.pack(Opcode.OACK) + _encode_options(self.options)


Packet = Request | Data | Ack | Error | OptionAck


def decode(data: bytes) -> Packet:
    """Decode one datagram.

    Args:
        data: the UDP payload.

    Returns:
        The packet as a dataclass.

    Raises:
        PacketError: for anything that is not a well-formed TFTP packet.
    """
    if len(data) < 2:
        raise PacketError("shorter than an opcode", reason=Reason.TOO_SHORT)
    opcode = (data[0] << 8) | data[1]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(Opcode(opcode), data)
    if opcode == Opcode.ACK:
        if len(data) < 4:
            raise PacketError("truncated ACK", reason=Reason.TRUNCATED)
        return Ack((data[2] << 8) | data[3])
    if opcode == Opcode.DATA:
        if len(data) < 4:
            raise PacketError("truncated DATA", reason=Reason.TRUNCATED)
        if len(data) - 4 > BLKSIZE_MAX:
            raise PacketError("DATA payload larger than 65464 bytes", reason=Reason.TOO_LONG)
        return Data((data[2] << 8) | data[3], bytes(data[4:]))
    if opcode == Opcode.ERROR:
        if len(data) < 4:
            raise PacketError("truncated ERROR", reason=Reason.TRUNCATED)
        message = bytes(data[4:]).split(b"\0", 1)[0]
        return Error((data[2] << 8) | data[3], message.decode("latin-1"))
    if opcode == Opcode.OACK:
        strings = _split_strings(data, 2, "OACK")
        return OptionAck(_decode_options(strings))
    raise PacketError(f"unknown opcode {opcode}", reason=Reason.BAD_OPCODE)


def _decode_request(opcode: Opcode, data: bytes) -> Request:
    """RRQ/WRQ: filename NUL mode NUL [option NUL value NUL]... (RFC 1350, RFC 2347)."""
    strings = _split_strings(data, 2, opcode.name)
    if len(strings) < 2:
        raise PacketError(f"{opcode.name} without a mode", reason=Reason.BAD_REQUEST)
    raw_name, raw_mode = strings[0], strings[1]
    if not raw_name:
        raise PacketError(f"{opcode.name} with an empty filename", reason=Reason.BAD_REQUEST)
    if not raw_mode:
        raise PacketError(f"{opcode.name} with an empty mode", reason=Reason.BAD_REQUEST)
    try:
        filename = raw_name.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError as exc:  # surrogateescape never fails, but keep the contract
        raise PacketError(f"undecodable filename: {exc}", reason=Reason.BAD_REQUEST) from None
    mode = raw_mode.decode("latin-1").lower()
    return Request(opcode, filename, mode, _decode_options(strings[2:]))


def _split_strings(data: bytes, start: int, what: str) -> list[bytes]:
    """Split NUL-terminated strings from *start*; the packet must end with a NUL."""
    if len(data) <= start:
        return []
    if data[-1] != 0:
        raise PacketError(f"{what} not NUL-terminated", reason=Reason.BAD_REQUEST)
    return bytes(data[start:-1]).split(b"\0")


def _decode_options(strings: list[bytes]) -> dict[str, str]:
    """Pair option names with values (RFC 2347); names are case-insensitive."""
    # Tolerate NUL padding after the last pair: drop trailing empty strings that are not the
    # (possibly empty) value of a named option.
    count = len(strings)
    while count and not strings[count - 1] and (count % 2 or not strings[count - 2]):
        count -= 1
    if count % 2:
        raise PacketError("option without a value", reason=Reason.BAD_OPTION)
    options: dict[str, str] = {}
    for i in range(0, count, 2):
        name = strings[i].decode("latin-1").lower()
        if not name:
            raise PacketError("empty option name", reason=Reason.BAD_OPTION)
        options.setdefault(name, strings[i + 1].decode("latin-1"))
    return options


def _cstring(raw: bytes) -> bytes:
    if b"\0" in raw:
        raise ValueError("a TFTP string cannot contain NUL")
    return raw + b"\0"


def _encode_options(options: Mapping[str, str]) -> bytes:
    return b"".join(
        _cstring(str(name).encode("latin-1")) + _cstring(str(value).encode("latin-1"))
        for name, value in options.items()
    )


def _parse_uint(value: str) -> int | None:
    value = value.strip()
    if not value or len(value) > _MAX_NUMBER_DIGITS or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def parse_blksize(value: str) -> int | None:
    """Validate a ``blksize`` value (RFC 2348).

    Args:
        value: the option value as sent.

    Returns:
        The block size, capped at 65464 (a larger request may be answered with a smaller
        value, RFC 2348), or ``None`` when it is not an integer or is below 8.
    """
    number = _parse_uint(value)
    if number is None or number < BLKSIZE_MIN:
        return None
    return min(number, BLKSIZE_MAX)


def parse_tsize(value: str) -> int | None:
    """Validate a ``tsize`` value (RFC 2349): a non-negative integer (0 in a read request)."""
    return _parse_uint(value)


def parse_timeout(value: str) -> int | None:
    """Validate a ``timeout`` value (RFC 2349): whole seconds in 1..255, else ``None``."""
    number = _parse_uint(value)
    if number is None or not TIMEOUT_MIN <= number <= TIMEOUT_MAX:
        return None
    return number


def parse_windowsize(value: str) -> int | None:
    """Validate a ``windowsize`` value (RFC 7440): 1..65535, else ``None``."""
    number = _parse_uint(value)
    if number is None or not WINDOWSIZE_MIN <= number <= WINDOWSIZE_MAX:
        return None
    return number
