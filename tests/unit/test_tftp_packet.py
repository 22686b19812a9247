"""TFTP codec: golden encodings, a malformed table, option helpers and a seeded fuzz."""

from __future__ import annotations

import random
import re

import pytest

from massboot.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    PacketError,
    Reason,
    Request,
    decode,
    parse_blksize,
    parse_timeout,
    parse_tsize,
    parse_windowsize,
)

# (wire bytes, decoded packet); each must round-trip both ways.
GOLDEN = [
    (b"\x00\x01pxelinux.0\x00octet\x00", Request(Opcode.RRQ, "pxelinux.0", "octet", {})),
    (b"\x00\x02upload.bin\x00octet\x00", Request(Opcode.WRQ, "upload.bin", "octet", {})),
    (
        b"\x00\x01boot/vmlinuz\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00",
        Request(Opcode.RRQ, "boot/vmlinuz", "octet", {"tsize": "0", "blksize": "1468", "windowsize": "4"}),
    ),
    (b"\x00\x01a.txt\x00netascii\x00", Request(Opcode.RRQ, "a.txt", "netascii", {})),
    (b"\x00\x03\x00\x01hello", Data(1, b"hello")),
    (b"\x00\x03\xff\xff", Data(65535, b"")),
    (b"\x00\x04\x00\x00", Ack(0)),
    (b"\x00\x04\x80\x00", Ack(32768)),  # pybootd parsed this as -32768
    (b"\x00\x05\x00\x01File not found\x00", Error(1, "File not found")),
    (b"\x00\x05\x00\x08\x00", Error(8, "")),
    (b"\x00\x06blksize\x001468\x00tsize\x0012345\x00", OptionAck({"blksize": "1468", "tsize": "12345"})),
]


@pytest.mark.parametrize(("wire", "packet"), GOLDEN)
def test_golden_decode(wire: bytes, packet: object) -> None:
    assert decode(wire) == packet


@pytest.mark.parametrize(("wire", "packet"), GOLDEN)
def test_golden_encode(wire: bytes, packet: Request | Data | Ack | Error | OptionAck) -> None:
    assert packet.encode() == wire


def test_option_names_and_mode_are_case_insensitive() -> None:
    packet = decode(b"\x00\x01File.BIN\x00OCTET\x00BlkSize\x001024\x00TSIZE\x000\x00")
    assert packet == Request(Opcode.RRQ, "File.BIN", "octet", {"blksize": "1024", "tsize": "0"})


def test_repeated_option_keeps_the_first() -> None:
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x001024\x00")
    assert isinstance(packet, Request)
    assert packet.options == {"blksize": "512"}


def test_trailing_nul_padding_after_options_is_tolerated() -> None:
    packet = decode(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00\x00\x00")
    assert packet == Request(Opcode.RRQ, "f", "octet", {"tsize": "0"})


def test_empty_option_value_is_kept_for_the_helpers_to_reject() -> None:
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x00\x00")
    assert isinstance(packet, Request)
    assert packet.options == {"blksize": ""}
    assert parse_blksize("") is None


def test_non_utf8_filename_round_trips() -> None:
    wire = b"\x00\x01caf\xe9\x00octet\x00"
    packet = decode(wire)
    assert isinstance(packet, Request)
    assert packet.filename.encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert packet.encode() == wire


def test_tolerated_extras() -> None:
    assert decode(b"\x00\x04\x00\x07\x00\x00") == Ack(7)  # padded ACK
    assert decode(b"\x00\x05\x00\x00no terminator") == Error(0, "no terminator")


def test_error_codes() -> None:
    assert [int(c) for c in ErrorCode] == list(range(9))
    wire = b"\x00\x05\x00\x05Unknown transfer ID\x00"
    assert Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode() == wire
    assert Error(0, "a\0b").encode() == b"\x00\x05\x00\x00a b\x00"


def test_data_block_number_wraps_on_encode() -> None:
    assert Data(65536, b"x").encode() == b"\x00\x03\x00\x00x"
    assert Ack(65537).encode() == b"\x00\x04\x00\x01"


MALFORMED = [
    (b"", "empty"),
    (b"\x00", "one byte"),
    (b"\x00\x00", "opcode 0"),
    (b"\x00\x07", "opcode 7"),
    (b"\xff\xff\x00\x00", "opcode 65535"),
    (b"\x00\x01", "RRQ without anything"),
    (b"\x00\x01some_fi", "RRQ unterminated filename"),
    (b"\x00\x01some_file\x00", "RRQ without mode"),
    (b"\x00\x01some_file\x00bina", "RRQ unterminated mode"),
    (b"\x00\x01\x00octet\x00", "RRQ empty filename"),
    (b"\x00\x01file\x00\x00", "RRQ empty mode"),
    (b"\x00\x01file\x00octet\x00blksize\x00", "option without value"),
    (b"\x00\x01file\x00octet\x00blksize\x00512", "unterminated option value"),
    (b"\x00\x01file\x00octet\x00\x00512\x00", "empty option name"),
    (b"\x00\x02file\x00", "WRQ without mode"),
    (b"\x00\x03\x00", "truncated DATA"),
    (b"\x00\x04\x00", "truncated ACK"),
    (b"\x00\x04", "ACK without block"),
    (b"\x00\x05\x00", "truncated ERROR"),
    (b"\x00\x06blksize\x00", "OACK option without value"),
    (b"\x00\x06blksize\x00512", "OACK unterminated"),
    (b"\x00\x03\x00\x01" + bytes(65465), "DATA payload too large"),
]


MALFORMED_REASON = {
    "empty": Reason.TOO_SHORT, "one byte": Reason.TOO_SHORT,
    "opcode 0": Reason.BAD_OPCODE, "opcode 7": Reason.BAD_OPCODE, "opcode 65535": Reason.BAD_OPCODE,
    "option without value": Reason.BAD_OPTION, "empty option name": Reason.BAD_OPTION,
    "OACK option without value": Reason.BAD_OPTION,
    "truncated DATA": Reason.TRUNCATED, "truncated ACK": Reason.TRUNCATED,
    "ACK without block": Reason.TRUNCATED, "truncated ERROR": Reason.TRUNCATED,
    "DATA payload too large": Reason.TOO_LONG,
}


@pytest.mark.parametrize(("wire", "why"), MALFORMED, ids=[why for _, why in MALFORMED])
def test_malformed(wire: bytes, why: str) -> None:
    with pytest.raises(PacketError) as caught:
        decode(wire)
    assert caught.value.reason == MALFORMED_REASON.get(why, Reason.BAD_REQUEST)
    assert caught.value.reason == _label_from_text(str(caught.value))


# How the malformed-packet metric read the reason before PacketError carried one: regular
# expressions over the message. Kept here as the oracle that exc.reason agrees with.
_OLD_PATTERNS = ((r"shorter|short", "too_short"), (r"truncat", "truncated"), (r"larger", "too_long"),
                 (r"opcode", "bad_opcode"), (r"option", "bad_option"),
                 (r"mode|filename|nul-terminated", "bad_request"))


def _label_from_text(message: str) -> str:
    return next((label for pattern, label in _OLD_PATTERNS if re.search(pattern, message.lower())), "other")


def test_packet_error_is_a_value_error() -> None:
    assert issubclass(PacketError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("512", 512), ("8", 8), ("65464", 65464), ("100000", 65464), ("7", None), ("0", None),
     ("-1", None), ("abc", None), ("", None), ("1e3", None), ("²", None), ("9" * 40, None),
     (" 1468 ", 1468)],
)
def test_parse_blksize(value: str, expected: int | None) -> None:
    assert parse_blksize(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0), ("123456789012", 123456789012), ("-5", None), ("x", None)]
)
def test_parse_tsize(value: str, expected: int | None) -> None:
    assert parse_tsize(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("1", 1), ("255", 255), ("0", None), ("256", None), ("1.5", None)]
)
def test_parse_timeout(value: str, expected: int | None) -> None:
    assert parse_timeout(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("1", 1), ("64", 64), ("65535", 65535), ("0", None), ("65536", None)]
)
def test_parse_windowsize(value: str, expected: int | None) -> None:
    assert parse_windowsize(value) == expected


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        if action == 0 and buf:  # flip a byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif action == 1 and buf:  # delete a byte
            del buf[rng.randrange(len(buf))]
        elif action == 2:  # insert a byte, NUL often
            buf.insert(rng.randrange(len(buf) + 1), rng.choice((0, rng.randrange(256))))
        elif action == 3 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        else:  # append junk
            buf += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(buf)


def test_fuzz_raises_only_packet_error() -> None:
    rng = random.Random(20240601)
    seeds = [wire for wire, _ in GOLDEN] + [wire for wire, _ in MALFORMED[:-1]]
    decoded = 0
    for _ in range(12_000):
        sample = _mutate(rng, rng.choice(seeds))
        try:
            packet = decode(sample)
        except PacketError as exc:
            assert isinstance(exc.reason, Reason) and exc.reason == _label_from_text(str(exc))
            continue
        decoded += 1
        # Whatever decodes must encode again without raising.
        packet.encode()
    assert decoded > 1000  # the fuzz exercised the success paths too
