"""DHCP codec edges pinned down by mutation testing (tests/mutation.sh): exact bounds of the
TLV walkers, sub-options, the vendor class, and the reasons errors give (they reach the log).
RFC 2131 §2, RFC 2132 §2-§3 and §9.3, RFC 3396, PXE 2.1.

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``_uint``: ``to_bytes(size)`` without ``"big"`` (big is the default byte order since 3.11).
* ``arch_from_vendor_class``: ``split(":")`` and ``split(":", 4)`` for ``split(":", 3)``
  (only the first three fields are read).
* ``python_encode``: ``0 <= code`` and ``code <= 255`` in the option range check (PAD and END are
  skipped just before it); ``n < 255`` for ``n <= 255`` (a 255-byte value split in 255-byte
  pieces is one piece); ``len(out) <= min_size`` (padding by zero bytes adds nothing).
* ``python_decode``: ``strict=True`` of the ``zip`` that fills the slots made ``False``,
  ``None`` or left out (the two tuples it zips always have 17 items); the all-zero address
  shortcut disabled (``inet_ntoa`` of four zero bytes is ``"0.0.0.0"`` too: the shortcut only
  spares the call).
"""

from __future__ import annotations

import pytest

from massboot.dhcp import packet as dp


@pytest.fixture(autouse=True)
def _both_codecs(dhcp_codec, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs against the compiled codec and the Python one (conftest.dhcp_codec):
    the mutants are mutants of the Python one."""
    monkeypatch.setattr(dp, "decode", dhcp_codec[0])
    monkeypatch.setattr(dp, "encode", dhcp_codec[1])


def raw(options: bytes, *, sname: bytes = b"", file: bytes = b"", op: int = dp.BOOTREQUEST,
        hlen: int = 6) -> bytes:
    """A request with the given bytes after the magic cookie (no END added)."""
    header = dp.encode(dp.BootpPacket(op=op, hlen=hlen, chaddr=b"\x52\x54\x00\x00\x00\x01", sname=sname,
                                file=file, vendor=False), min_size=0)
    assert len(header) == dp.HEADER_SIZE
    return header + dp.MAGIC_COOKIE + options


# -- sub-options (option 43, PXE 2.1 §2.4) ----------------------------------------------


def test_suboption_code_one_and_a_255_byte_value_are_allowed() -> None:
    value = bytes(range(255))
    assert dp.encode_suboptions([(1, value)]) == b"\x01\xff" + value + b"\xff"
    assert dp.decode_suboptions(dp.encode_suboptions([(1, value)])) == ((1, value),)


def test_suboption_errors() -> None:
    with pytest.raises(ValueError, match=r"^sub-option code out of 1\.\.254: 0$"):
        dp.encode_suboptions([(0, b"x")])
    with pytest.raises(ValueError, match=r"^sub-option 6 is 256 bytes, more than 255$"):
        dp.encode_suboptions([(6, bytes(256))])
    with pytest.raises(dp.PacketError, match=r"^sub-option 6 truncated: no length octet$") as no_length:
        dp.decode_suboptions(b"\x01\x01a\x06")
    with pytest.raises(dp.PacketError, match=r"^sub-option 6 truncated: length 9 past the end$") as past:
        dp.decode_suboptions(b"\x01\x01a\x06\x09abc")
    assert no_length.value.reason is past.value.reason is dp.Reason.TRUNCATED


def test_the_option_index_is_made_once_and_kept() -> None:
    """A packet built by its constructor indexes its options at the first lookup and keeps the
    index (issue #14: a request's options are read about ten times)."""
    packet = dp.BootpPacket(op=dp.BOOTREQUEST, options=((12, b"a"), (53, b"\x01"), (12, b"b")))
    assert packet._index is None
    assert packet.option(12) == b"a"
    assert packet._index == {12: b"a", 53: b"\x01"}


def test_pad_between_suboptions_is_skipped() -> None:
    assert dp.decode_suboptions(b"\x01\x01a\x00\x00\x02\x01b\xff") == ((1, b"a"), (2, b"b"))


def test_empty_suboption_at_the_very_end() -> None:
    assert dp.decode_suboptions(b"\x05\x00") == ((5, b""),)


# -- the vendor class (PXE 2.1: PXEClient:Arch:NNNNN:UNDI:yyyzzz) -----------------------


def test_vendor_class_needs_both_leading_fields() -> None:
    assert dp.arch_from_vendor_class("PXEClient:Arch:00007:UNDI:003016") == 7
    assert dp.arch_from_vendor_class("PXEClient:Foo:00007") is None
    assert dp.arch_from_vendor_class("Other:Arch:00007") is None


# -- options walker ----------------------------------------------------------------------


def test_empty_option_at_the_very_end_without_end() -> None:
    packet = dp.decode(raw(b"\x35\x01\x01\x0c\x00"))
    assert packet.option(dp.Opt.HOSTNAME) == b""


@pytest.mark.parametrize(
    ("options", "sname", "file", "reason"),
    [
        (b"\x35\x01\x01\x0c", b"", b"", "option 12 in options truncated: no length octet"),
        (b"\x35\x01\x01\x0c\x05ab", b"", b"", "option 12 in options truncated: length 5 past the end"),
        (b"\x34\x01\x01\xff", b"", b"\x0c\x7fab",
         "option 12 in file truncated: length 127 past the end"),
        (b"\x34\x01\x02\xff", b"\x0c\x3fab", b"",
         "option 12 in sname truncated: length 63 past the end"),
        (b"\x34\x01\x04\xff", b"", b"", "bad overload option value 04"),
        (b"\x34\x02\x01\x01\xff", b"", b"", "bad overload option value 0101"),
    ],
)
def test_option_error_reasons(options: bytes, sname: bytes, file: bytes, reason: str) -> None:
    with pytest.raises(dp.PacketError) as info:
        dp.decode(raw(options, sname=sname, file=file))
    assert str(info.value) == reason


def test_header_error_reasons() -> None:
    good = raw(b"\xff")
    with pytest.raises(dp.PacketError, match=r"^not a byte string: str$"):
        dp.decode("text")  # type: ignore[arg-type]
    with pytest.raises(dp.PacketError, match=r"^235 bytes: shorter than the 236-byte BOOTP header$"):
        dp.decode(good[:235])
    with pytest.raises(dp.PacketError, match=r"^bad op 3$"):
        dp.decode(bytes([3]) + good[1:])
    with pytest.raises(dp.PacketError, match=r"^bad hlen 17$"):
        dp.decode(good[:2] + bytes([17]) + good[3:])


def test_an_overload_option_inside_file_is_not_listed() -> None:
    # RFC 2132 §9.3: option 52 only makes sense in the options field; one inside 'file' is dropped
    packet = dp.decode(raw(b"\x35\x01\x01\x34\x01\x01\xff", file=b"\x34\x01\x02\x0c\x02hi\xff"))
    assert packet.option(dp.Opt.HOSTNAME) == b"hi"
    assert packet.option(dp.Opt.OVERLOAD) is None
    assert [code for code, _ in packet.options] == [dp.Opt.MESSAGE_TYPE, dp.Opt.HOSTNAME]


def test_sname_and_file_lose_only_their_nul_padding() -> None:
    packet = dp.decode(raw(b"\xff", sname=b"BOX", file=b"pxelinux.0.XX"))
    assert (packet.sname, packet.file) == (b"BOX", b"pxelinux.0.XX")


# -- value helpers and encode ------------------------------------------------------------


def test_value_helper_errors() -> None:
    with pytest.raises(ValueError, match=r"^not an IPv4 address: '10\.0\.0'$"):
        dp.ip_bytes("10.0.0")
    with pytest.raises(ValueError, match=r"^an IPv4 address is 4 bytes, not 3$"):
        dp.bytes_ip(b"\x0a\x00\x00")
    with pytest.raises(ValueError, match=r"^256 does not fit in 8 unsigned bits$"):
        dp.u8(256)
    with pytest.raises(ValueError, match=r"^65536 does not fit in 16 unsigned bits$"):
        dp.u16(65536)


def test_encode_names_the_bad_address_of_any_header_field() -> None:
    # encode packs the four addresses straight (issue #14); the error still names the one
    # that is wrong, as ip_bytes does, whichever field it is in
    for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
        with pytest.raises(ValueError, match=r"^not an IPv4 address: '10\.0\.0'$"):
            dp.encode(dp.BootpPacket(op=1, **{name: "10.0.0"}))
    with pytest.raises(ValueError, match=r"^not an IPv4 address: None$"):
        dp.encode(dp.BootpPacket(op=1, giaddr=None))       # type: ignore[arg-type]


def test_encode_options_split_and_skip_as_before() -> None:
    # the fast path (one check per option) writes what the general one did: long values split
    # (RFC 3396 §6), PAD, END and OVERLOAD entries dropped, codes 0 and 255 never an error
    packet = dp.BootpPacket(op=1, options=((0, b""), (12, b"h" * 300), (52, b"\x03"), (255, b""),
                                           (254, b"z")))
    body = dp.encode(packet, min_size=0)[dp.HEADER_SIZE + 4:]
    assert body == b"\x0c\xff" + b"h" * 255 + b"\x0c\x2d" + b"h" * 45 + b"\xfe\x01z\xff"


def test_encode_errors() -> None:
    with pytest.raises(ValueError, match=r"^chaddr is 17 bytes, more than 16$"):
        dp.encode(dp.BootpPacket(op=1, chaddr=bytes(17)))
    with pytest.raises(ValueError, match=r"^sname is 65 bytes, more than 64$"):
        dp.encode(dp.BootpPacket(op=1, sname=bytes(65)))
    with pytest.raises(ValueError, match=r"^file is 129 bytes, more than 128$"):
        dp.encode(dp.BootpPacket(op=1, file=bytes(129)))
    with pytest.raises(ValueError, match=r"^header field out of range: "):
        dp.encode(dp.BootpPacket(op=1, xid=1 << 32))
    with pytest.raises(ValueError, match=r"^option code out of 1\.\.254: 256$"):
        dp.encode(dp.BootpPacket(op=1, options=((256, b"x"),)))
    with pytest.raises(ValueError, match=r"^options need the magic cookie: vendor=False packets carry none$"):
        dp.encode(dp.BootpPacket(op=1, options=((12, b"x"),), vendor=False))
