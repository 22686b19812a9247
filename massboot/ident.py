"""Client identifiers: MAC and UUID formats and the pybootd ACL key syntax (pure)."""

from __future__ import annotations

import re
import uuid as _uuid

MAC_BITS = 48
UUID_BITS = 128
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")


def mac_str(mac: bytes) -> str:
    """``AA:BB:CC:DD:EE:FF``: pybootd's on-wire and notification form."""
    return bytes(mac[:6]).hex(":").upper()


def mac_dash(mac: bytes) -> str:
    """``AA-BB-CC-DD-EE-FF``: the documented HTTP ACL query form."""
    return bytes(mac[:6]).hex("-").upper()


def mac_int(mac: bytes) -> int:
    """The first six bytes of a hardware address as a 48-bit integer."""
    return int.from_bytes(mac[:6].ljust(6, b"\0"), "big")


def parse_mac(text: str) -> bytes:
    """Parse a full MAC written with ``-``, ``:`` or no separators.

    Raises:
        ValueError: not 12 hex digits.
    """
    digits = re.sub(r"[-:.]", "", text.strip())
    if len(digits) != 12 or not _HEX_RE.match(digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex(digits)


def parse_mac_rule(key: str) -> tuple[int, int]:
    """Parse a pybootd ``[mac]`` key into ``(value, mask)`` over 48 bits.

    The hex digits are left-aligned in 48 bits (``AA-BB-CC`` is ``0xAABBCC000000``);
    ``/N`` clears the N *low* bits of the mask (N wildcard bits), as pybootd 1.8 does.

    Raises:
        ValueError: unparsable, longer than 48 bits, or N out of 0..48.
    """
    text, _, wild = key.strip().partition("/")
    digits = re.sub(r"[-:.]", "", text)
    if not digits or not _HEX_RE.match(digits) or len(digits) > 12:
        raise ValueError(f"invalid MAC ACL value: {key!r}")
    value = int(digits, 16) << (4 * (12 - len(digits)))
    mask = (1 << MAC_BITS) - 1
    if wild:
        try:
            bits = int(wild)
        except ValueError:
            raise ValueError(f"invalid MAC ACL mask: {key!r}") from None
        if not 0 <= bits <= MAC_BITS:
            raise ValueError(f"MAC ACL mask out of 0..48: {key!r}")
        mask &= ~((1 << bits) - 1)
    return value & mask, mask


def parse_uuid_rule(key: str) -> tuple[int, int]:
    """Parse a pybootd ``[uuid]`` key ``UUID[/UUIDMASK]`` into ``(value, mask)``.

    The mask is a UUID-formatted 128-bit bit mask, not a bit count.

    Raises:
        ValueError: either half is not a UUID.
    """
    text, _, mask_text = key.strip().partition("/")
    try:
        value = _uuid.UUID(text).int
        mask = _uuid.UUID(mask_text).int if mask_text else (1 << UUID_BITS) - 1
    except ValueError:
        raise ValueError(f"invalid UUID ACL value: {key!r}") from None
    return value & mask, mask


def uuid_from_option97(data: bytes) -> str | None:
    """The client UUID of option 97 (type byte 0 + 16 bytes), raw byte order, lower case.

    pybootd reads the 16 bytes as big-endian with no SMBIOS swap; so do we.
    """
    if len(data) != 17:
        return None
    return str(_uuid.UUID(bytes=bytes(data[1:17])))
