"""The compiled DHCP codec (massboot/dhcp/_codec.c) against the Python one (README
"Performance", "DHCP: the compiled codec"): on the same input both give the same packet, the
same bytes or the same error. The compiled one hands what it does not serve to the Python one;
these tests are the proof that it hands over everything it could get wrong.

The codec's own behaviour (RFC 2131 §2, RFC 2132, RFC 3396) is tested against both in
test_dhcp_packet.py and test_dhcp_packet_mutants.py.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import tracemalloc
import types
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from massboot.dhcp import packet as dp
from massboot.dhcp.packet import BOOTREPLY, BOOTREQUEST, HEADER_SIZE, MAGIC_COOKIE, BootpPacket
from tests.conftest import require
from tests.unit.test_dhcp_packet import _mutate as _edit

GOLDEN = Path(__file__).parent / "golden"
MAC = bytes.fromhex("525400123456")


@pytest.fixture(scope="module")
def compiled() -> Any:
    require(dp.CODEC == "compiled", str(dp.CODEC_PROBLEM))
    return dp._codec


def _fields(packet: BootpPacket) -> tuple[Any, ...]:
    """Every slot with its type, the option index included (== on packets skips it)."""
    values = tuple(getattr(packet, f.name) for f in dataclasses.fields(packet))
    return (type(packet),) + tuple((type(v), v) for v in values)


def _decoded(decode: Any, data: Any) -> tuple[Any, ...]:
    try:
        packet = decode(data)
    except dp.PacketError as exc:
        return ("error", type(exc), str(exc), exc.reason)
    return ("ok",) + _fields(packet)


def _encoded(encode: Any, packet: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        data = encode(packet, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever one raises, the other must raise
        return ("error", type(exc), str(exc))
    return ("ok", type(data), data)


def _raw(options: bytes, *, sname: bytes = b"", file: bytes = b"", op: int = BOOTREQUEST) -> bytes:
    header = dp.python_encode(BootpPacket(op=op, chaddr=MAC, giaddr="10.0.0.1", sname=sname,
                                          file=file, vendor=False), min_size=0)
    return header + MAGIC_COOKIE + options


def _seeds() -> list[bytes]:
    seeds = [bytes.fromhex(p.read_text().strip()) for p in sorted(GOLDEN.glob("*.hex"))]
    seeds += [
        _raw(b"\x35\x01\x01\x34\x01\x03\xff", file=b"\x2b\x03abc\x43\x04boot\xff",
             sname=b"\x2b\x01d\x0c\x02hh\xff"),                             # overload both
        _raw(b"\x35\x01\x03\x52\x08\x01\x06eth0/1\x2b\x02ab\x2b\x01c\xff"),   # a repeated option
        _raw(b"\x34\x01\x01\x35\x01\x01\x00\x00\x37\x02\x01\x03",
             file=b"\x34\x01\x02\x0c\x01x"),                                # 52 again in file
        _raw(b"\x3c\x09PXEClient\x61\x11" + bytes(17) + b"\x5d\x02\x00\x07\xff",
             sname=b"boot-server", file=b"pxelinux.0"),
        _raw(b""),
        _raw(b"\xff") + bytes(40),
    ]
    return seeds


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """test_dhcp_packet's edits, and often a whole TLV inserted: a repeat, an overload."""
    buf = bytearray(_edit(rng, data))
    if rng.random() < 0.6:
        code = rng.choice((52, 53, 43, 12, 55, 0, 255, rng.randrange(1, 255)))
        value = rng.choice((b"\x01", b"\x02", b"\x03", b"")) if code == 52 and rng.random() < 0.7 \
            else rng.randbytes(rng.choice((0, 1, 2, 5, 40)))
        pos = rng.randrange(min(HEADER_SIZE + 4, len(buf)), len(buf) + 1)
        buf[pos:pos] = bytes([code, len(value)]) + value
    return bytes(buf)


def _random_tlvs(rng: random.Random, room: int) -> bytes:
    out = bytearray()
    while len(out) < room and rng.random() < 0.9:
        code = rng.choice((0, 0, 52, 255, 53, 12, 12, 43, rng.randrange(256)))
        if code in (0, 255):
            out.append(code)
            continue
        value = bytes([rng.randrange(1, 4)]) if code == 52 and rng.random() < 0.8 else \
            rng.randbytes(rng.choice((0, 1, 3, 16, 60, 255)))
        out += bytes([code, len(value)]) + value
    return bytes(out[:room] if rng.random() < 0.2 else out)


def _random_datagram(rng: random.Random) -> bytes:
    header = bytearray(rng.randbytes(HEADER_SIZE))
    header[0] = rng.choice((1, 2, 1, 2, 0, 3))
    header[2] = rng.choice((6, 6, 0, 16, 17, 255))
    for start, size in ((12, 16), (44, 64), (108, 128)):
        if rng.random() < 0.5:      # zero addresses; NUL-padded sname and file
            cut = rng.randrange(size + 1) if size > 16 else 0
            header[start + cut : start + size] = bytes(size - cut)
    if rng.random() < 0.3:
        header[44:108] = _random_tlvs(rng, 64).ljust(64, b"\0")[:64]
    if rng.random() < 0.3:
        header[108:236] = _random_tlvs(rng, 128).ljust(128, b"\0")[:128]
    cookie = MAGIC_COOKIE if rng.random() < 0.9 else rng.randbytes(4)
    return bytes(header) + cookie[: rng.choice((4, 4, 4, 2))] + _random_tlvs(rng, 600)


def test_decode_agrees_with_python_on_fuzzed_datagrams(compiled) -> None:
    rng = random.Random(20261202)
    seeds = _seeds()
    kinds: dict[str, int] = {"ok": 0, "error": 0}
    for i in range(40_000):
        data = _mutate(rng, seeds[i % len(seeds)]) if i % 2 else _random_datagram(rng)
        expected = _decoded(dp.python_decode, data)
        assert _decoded(compiled.decode, data) == expected, data.hex()
        kinds[expected[0]] += 1
    assert kinds["ok"] > 10_000 and kinds["error"] > 5_000, kinds


def test_decode_agrees_on_the_edges(compiled) -> None:
    long_value = bytes(range(200))
    cases = [
        b"", bytes(235), bytes(236), _raw(b"")[:238],                     # short, no cookie
        _raw(b"\x35"), _raw(b"\x35\x05\x01"),                             # truncated
        _raw(b"\x34\x01\x00"), _raw(b"\x34\x01\x04"), _raw(b"\x34\x00"),  # bad overload
        _raw(b"\x34\x01\x01\x34\x01\x01"), _raw(b"\x34\x00\x34\x01\x02"),  # two 52s: 2 bytes; 1
        _raw(b"\x34\x01\x02", sname=b"\x0c\x40"),                         # sname runs out
        _raw(b"\x0c\xc8" + long_value + b"\x0c\xc8" + long_value),       # 400 bytes concatenated
        _raw(b"\x01\x00" * 64), _raw(b"\x01\x00" * 65),                  # the walk's stack room
        _raw(b"\x01\x00" * 1024), _raw(b"\x01\x00" * 1025),              # the compiled walk's limit
        _raw(b"\x34\x01\x03" + b"\x0c\x00" * 63, file=b"\x0c\x01f" * 40),  # grows in 'file'
        _raw(bytes(x for c in range(1, 255) for x in (c, 1, c)) * 4),    # every code, four times
        _raw(b"\x35\x01\x01", op=BOOTREPLY), _raw(b"\x35\x01\x01", op=3),
        bytes([1, 1, 17]) + bytes(300), bytes([1, 1, 16]) + bytes(300),  # hlen
        _raw(b"\x35\x01\x01") + b"trailing after END",
    ]
    for data in cases:
        assert _decoded(compiled.decode, data) == _decoded(dp.python_decode, data), data.hex()
    for data in (bytearray(_raw(b"\x35\x01\x01")), memoryview(_raw(b"\x35\x01\x01")), "text", None, 7):
        assert _decoded(compiled.decode, data) == _decoded(dp.python_decode, data)

    class Sub(bytes):
        pass

    assert _decoded(compiled.decode, Sub(_raw(b"\x35\x01\x01"))) == \
        _decoded(dp.python_decode, Sub(_raw(b"\x35\x01\x01")))


class Code(IntEnum):
    A = 12


def _random_packet(rng: random.Random) -> BootpPacket:
    """A packet of valid fields, half of them with one field (or option) the codec refuses
    or that only the Python function takes (a bytearray, a list, an IntEnum, a bool)."""
    def options() -> Any:
        items: list[Any] = []
        for _ in range(rng.choice((0, 1, 3, 8, 20))):
            code = rng.choice((1, 3, 12, 43, 53, 0, 52, 255, 254, rng.randrange(256)))
            size = rng.choice((0, 1, 4, 16, 254, 255, 256, 510, 511, 700))
            items.append((code, rng.randbytes(size)))
        return items

    fields: dict[str, Any] = {
        "op": rng.choice((1, 2)), "xid": rng.randrange(1 << 32), "htype": rng.randrange(256),
        "hlen": rng.randrange(256), "hops": rng.randrange(256), "secs": rng.randrange(1 << 16),
        "flags": rng.randrange(1 << 16), "ciaddr": "0.0.0.0", "yiaddr": "10.1.2.3",
        "siaddr": "192.168.1.50", "giaddr": rng.choice(("0.0.0.0", "255.255.255.255")),
        "chaddr": rng.randbytes(rng.randrange(17)),
        "sname": rng.randbytes(rng.choice((0, 5, 64))),
        "file": rng.randbytes(rng.choice((0, 10, 128))),
        "options": options(), "vendor": True,
    }
    if rng.random() < 0.5:
        name = rng.choice(list(fields))
        if name in ("op", "htype", "hlen", "hops", "xid", "secs", "flags"):
            bits = 32 if name == "xid" else 16 if name in ("secs", "flags") else 8
            fields[name] = rng.choice((-1, 1 << bits, 2**80, True, Code.A, 1.0, "1", None))
        elif name.endswith("addr") and name != "chaddr":
            fields[name] = rng.choice(("1.2.3", "1.2.3.256", "01.2.3.4", " 1.2.3.4", "1.2.3.4\0",
                                       "::1", b"1.2.3.4", "é.1.1.1", "", None, 7))
        elif name in ("chaddr", "sname", "file"):
            limit = {"chaddr": 16, "sname": 64, "file": 128}[name]
            fields[name] = rng.choice((bytes(limit + 1), bytearray(3), memoryview(b"abc"), "text", None))
        elif name == "vendor":
            fields[name] = rng.choice((False, 0, 1, "yes", "", None))
            if rng.random() < 0.5:
                fields["options"] = []
        else:   # one odd option
            odd = rng.choice(((256, b"x"), (-1, b"x"), (Code.A, b"x"), (True, b"x"), (12.0, b"x"),
                              [12, b"x"], (12, bytearray(b"x")), (12, memoryview(b"xy")), (12, "x"),
                              (12, b"x", b"y"), (12,), "ab"))
            fields["options"].insert(rng.randrange(len(fields["options"]) + 1), odd)
    options_value = fields["options"]
    fields["options"] = tuple(options_value) if rng.random() < 0.95 else options_value
    return BootpPacket(**fields)


def test_encode_agrees_with_python_on_random_packets(compiled) -> None:
    rng = random.Random(20261203)
    kinds: dict[str, int] = {"ok": 0, "error": 0}
    for _ in range(20_000):
        packet = _random_packet(rng)
        kwargs = {} if rng.random() < 0.6 else {"min_size": rng.choice((0, 300, 576, 1000, -5, 2**70, 300.0))}
        expected = _encoded(dp.python_encode, packet, **kwargs)
        assert _encoded(compiled.encode, packet, **kwargs) == expected, (packet, kwargs)
        kinds[expected[0]] += 1
    assert kinds["ok"] > 8_000 and kinds["error"] > 2_000, kinds


def test_encode_agrees_on_what_decode_gave(compiled) -> None:
    """Every reply massboot sends is a decoded request changed by dataclasses.replace."""
    for path in sorted(GOLDEN.glob("*.hex")):
        packet = dp.python_decode(bytes.fromhex(path.read_text().strip()))
        reply = dataclasses.replace(packet, op=BOOTREPLY, yiaddr="10.0.0.9", siaddr="10.0.0.1")
        for kwargs in ({}, {"min_size": 0}, {"min_size": 548}):
            assert compiled.encode(reply, **kwargs) == dp.python_encode(reply, **kwargs)


def test_encode_hands_over_what_it_does_not_serve(compiled) -> None:
    """Not a BootpPacket (a look-alike), a subclass, bad calls: the Python function answers."""
    fields = {f.name: getattr(BootpPacket(op=1, chaddr=MAC), f.name) for f in dataclasses.fields(BootpPacket)}
    look_alike = types.SimpleNamespace(**fields)
    assert compiled.encode(look_alike) == dp.python_encode(look_alike)  # type: ignore[arg-type]

    @dataclasses.dataclass(frozen=True, slots=True)
    class Sub(BootpPacket):
        pass

    sub = Sub(op=2, chaddr=MAC, options=((53, b"\x02"),))
    assert compiled.encode(sub) == dp.python_encode(sub)
    for args, kwargs in (((), {}), ((sub, 300), {}), ((sub,), {"size": 1}),
                         ((sub,), {"min_size": 1, "x": 2})):
        with pytest.raises(TypeError) as ours:
            compiled.encode(*args, **kwargs)
        with pytest.raises(TypeError) as theirs:
            dp.python_encode(*args, **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_well_formed_messages_never_reach_python(compiled) -> None:
    """What the compiled codec serves it serves alone: the golden requests, overloaded and
    repeated options, replies as massboot builds them; Python only gets what is handed over."""
    handed: list[str] = []

    def decode_py(data: Any) -> BootpPacket:
        handed.append("decode")
        return dp.python_decode(data)

    def encode_py(packet: Any, **kwargs: Any) -> bytes:
        handed.append("encode")
        return dp.python_encode(packet, **kwargs)

    compiled.bind(BootpPacket, decode_py, encode_py, "0.0.0.0")
    try:
        for data in _seeds()[:-1]:
            packet = compiled.decode(data)
            reply = dataclasses.replace(packet, op=BOOTREPLY, yiaddr="10.0.0.9", options=(
                (53, b"\x02"), (54, bytes([10, 0, 0, 1])), (43, bytes(300))) + packet.options)
            compiled.encode(reply)
            compiled.encode(reply, min_size=0)
        top = BootpPacket(op=255, xid=2**32 - 1, htype=255, hlen=255, hops=255, secs=65535,
                          flags=65535, ciaddr="255.255.255.255", chaddr=bytes(16), sname=bytes(64),
                          file=bytes(128), options=((254, bytes(255)),))   # every field at its top
        assert compiled.encode(top) == dp.python_encode(top)
        assert handed == []
        with pytest.raises(dp.PacketError):
            compiled.decode(_raw(b"\x35\x05\x01"))
        with pytest.raises(ValueError):
            compiled.encode(BootpPacket(op=1, ciaddr="1.2.3"))
        assert handed == ["decode", "encode"]
    finally:
        assert dp._bind_codec(compiled) is None
    handed.clear()      # the real functions are bound again, the shared "0.0.0.0" with them
    with pytest.raises(dp.PacketError):
        compiled.decode(_raw(b"\x35\x05\x01"))
    with pytest.raises(ValueError):
        compiled.encode(BootpPacket(op=1, ciaddr="1.2.3"))
    assert handed == []
    assert compiled.decode(_raw(b"\x35\x01\x01")).ciaddr is dp._NO_ADDRESS


def test_the_compiled_codec_is_the_one_in_use(compiled) -> None:
    from massboot.dhcp import server

    assert dp.decode is compiled.decode and dp.encode is compiled.encode
    assert server.decode is compiled.decode and server.encode is compiled.encode
    assert dp.CODEC_PROBLEM is None and dp.CODEC_STALE is False


def test_a_stale_or_foreign_module_is_not_bound(compiled) -> None:
    """An old build left in an updated checkout (another API number), or one whose bind()
    refuses the class, is not used; a refused bind() leaves the bound class as it was."""
    assert dp._bind_codec(types.SimpleNamespace(API=0)) == "module API 0, this massboot needs 1"
    assert dp._bind_codec(types.SimpleNamespace()) == "module API None, this massboot needs 1"
    calls: list[tuple[Any, ...]] = []

    def refuse(*args: Any) -> None:
        calls.append(args)
        raise TypeError("BootpPacket.op is not a __slots__ member")

    assert dp._bind_codec(types.SimpleNamespace(API=1, bind=refuse)) == \
        "BootpPacket.op is not a __slots__ member"
    assert calls == [(BootpPacket, dp.python_decode, dp.python_encode, "0.0.0.0")]

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        op: int = 1

    with pytest.raises(TypeError, match="is not a __slots__ member"):
        compiled.bind(NoSlots, dp.python_decode, dp.python_encode, "0.0.0.0")
    with pytest.raises(TypeError, match="takes the Python decode and encode"):
        compiled.bind(BootpPacket, None, dp.python_encode, "0.0.0.0")
    data = _raw(b"\x35\x01\x01\x0c\x03box\xff")
    assert _decoded(compiled.decode, data) == _decoded(dp.python_decode, data)


def test_no_memory_kept_per_message(compiled) -> None:
    """Decoding and encoding, served or handed over, leave nothing behind (a missed reference
    in C would keep every packet: 10,000 of them are hundreds of kilobytes)."""
    messages = [_raw(b"\x35\x01\x01\x0c\x03box\x0c\x02es\x37\x03\x01\x03\x06\xff", file=b"x"),
                _raw(b"\x34\x01\x03\x35\x01\x03", file=b"\x2b\x02ab\xff", sname=b"\x43\x01f\xff"),
                _raw(b"\x35\x05\x01"), bytes(300), bytes(10)]
    replies = [dp.python_decode(messages[0]), dataclasses.replace(dp.python_decode(messages[1]), op=2),
               BootpPacket(op=1, ciaddr="bad"), BootpPacket(op=2, options=((12, bytes(600)),))]

    def round_(n: int) -> None:
        for _ in range(n):
            for data in messages:
                try:
                    compiled.decode(data)
                except dp.PacketError:
                    pass
            for reply in replies:
                try:
                    compiled.encode(reply)
                    compiled.encode(reply, min_size=0)
                except ValueError:
                    pass

    round_(200)     # warm: caches, interned strings, the first exception's traceback objects
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        round_(10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 10,000 rounds"
