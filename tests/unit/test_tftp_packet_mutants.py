"""TFTP codec edges found by mutation testing (tests/mutation.sh): exact bounds, byte order of
the 16-bit fields, the reasons :class:`PacketError` gives (they end up in the log), and what
the encoders refuse. RFC 1350 section 5, RFC 2347, RFC 2348.

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* codec names in another case: ``"UTF-8"``, ``"LATIN-1"`` (Python's codec lookup ignores
  case), 10 mutants in ``Request.encode``, ``Error.encode``, ``decode``, ``_decode_request``,
  ``_decode_options`` and ``_encode_options``;
* ``decode`` of an ERROR: ``split(b"\\0")`` and ``split(b"\\0", 2)`` for ``split(b"\\0", 1)``
  (only the first piece is kept);
* ``_decode_request``: the message of the ``UnicodeDecodeError`` branch (unreachable:
  ``surrogateescape`` never fails).
"""

from __future__ import annotations

import pytest

from massboot.tftp.packet import (
    BLKSIZE_MAX,
    Ack,
    Data,
    Error,
    Opcode,
    OptionAck,
    PacketError,
    Request,
    decode,
    parse_tsize,
)


def test_an_opcode_alone_is_enough_for_an_empty_oack() -> None:
    # two bytes are a whole opcode; an OACK may carry no option at all
    assert decode(b"\x00\x06") == OptionAck({})


def test_opcode_high_byte_counts() -> None:
    # RFC 1350: the opcode is a 16-bit big-endian number; 0x0104 is not ACK
    with pytest.raises(PacketError, match=r"^unknown opcode 260$"):
        decode(b"\x01\x04\x00\x01")
    with pytest.raises(PacketError, match=r"^unknown opcode 257$"):
        decode(b"\x01\x01file\x00octet\x00")


def test_error_code_is_sixteen_bits_big_endian() -> None:
    assert decode(b"\x00\x05\x01\x02oops\x00") == Error(0x0102, "oops")
    assert decode(b"\x00\x05\x80\x00\x00") == Error(0x8000, "")


def test_error_without_message_or_terminator() -> None:
    assert decode(b"\x00\x05\x00\x01") == Error(1, "")


def test_error_message_stops_at_the_first_nul() -> None:
    assert decode(b"\x00\x05\x00\x00abc\x00junk\x00more\x00") == Error(0, "abc")


def test_largest_data_payload_is_accepted() -> None:
    payload = bytes(range(256)) * (BLKSIZE_MAX // 256) + bytes(BLKSIZE_MAX % 256)
    assert len(payload) == BLKSIZE_MAX
    assert decode(b"\x00\x03\x00\x07" + payload) == Data(7, payload)
    with pytest.raises(PacketError, match=r"^DATA payload larger than 65464 bytes$"):
        decode(b"\x00\x03\x00\x07" + payload + b"x")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "shorter than an opcode"),
        (b"\x00", "shorter than an opcode"),
        (b"\x00\x04\x00", "truncated ACK"),
        (b"\x00\x03\x00", "truncated DATA"),
        (b"\x00\x05\x00", "truncated ERROR"),
        (b"\x00\x07", "unknown opcode 7"),
        (b"\x00\x01", "RRQ without a mode"),
        (b"\x00\x02file\x00", "WRQ without a mode"),
        (b"\x00\x01file", "RRQ not NUL-terminated"),
        (b"\x00\x02file", "WRQ not NUL-terminated"),
        (b"\x00\x06blksize\x00512", "OACK not NUL-terminated"),
        (b"\x00\x01\x00octet\x00", "RRQ with an empty filename"),
        (b"\x00\x01file\x00\x00", "RRQ with an empty mode"),
        (b"\x00\x01file\x00octet\x00blksize\x00", "option without a value"),
        (b"\x00\x06blksize\x00", "option without a value"),
        (b"\x00\x01file\x00octet\x00\x00512\x00", "empty option name"),
    ],
)
def test_packet_error_reasons(wire: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as info:
        decode(wire)
    assert str(info.value) == reason


def test_encoders_refuse_a_nul_inside_a_string() -> None:
    # a NUL would end the string early on the wire (RFC 1350: strings are NUL-terminated)
    for packet in (Request(Opcode.RRQ, "a\0b"), Request(Opcode.RRQ, "f", "oct\0et"),
                   OptionAck({"blk\0size": "512"}), OptionAck({"blksize": "5\x0012"})):
        with pytest.raises(ValueError, match=r"^a TFTP string cannot contain NUL$"):
            packet.encode()


def test_error_message_outside_latin1_is_replaced_not_fatal() -> None:
    assert Error(0, "caf\u00e9 \u20ac").encode() == b"\x00\x05\x00\x00caf\xe9 ?\x00"


def test_twenty_digit_number_is_still_a_number() -> None:
    assert parse_tsize("9" * 20) == 10**20 - 1
    assert parse_tsize("9" * 21) is None


def test_ack_block_high_byte() -> None:
    assert decode(b"\x00\x04\x01\x00") == Ack(256)
