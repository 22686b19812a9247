"""Sans-IO read transfer: loss, duplicates, windows, rollover, options, timer; no sockets."""

from __future__ import annotations

import hashlib

import pytest

from massboot.tftp.packet import Data, Error, ErrorCode, OptionAck, decode
from massboot.tftp.transfer import Datagram, ReadTransfer, WouldBlock, negotiate


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ReadError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def reader(content: bytes, chunk: int | None = None, fail_at: int | None = None):
    """read(offset, length) over *content*; optionally short reads and a failure offset."""
    calls: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        if fail_at is not None and offset + length > fail_at:
            raise ReadError(0, "upstream went away")
        if chunk is not None:
            length = min(length, chunk)
        return content[offset : offset + length]

    read.calls = calls  # type: ignore[attr-defined]
    return read


def packets(datagrams: list[Datagram]) -> list[object]:
    return [decode(bytes(d)) for d in datagrams]


def blocks(datagrams: list[Datagram]) -> list[int]:
    out = []
    for packet in packets(datagrams):
        assert isinstance(packet, Data)
        out.append(packet.block)
    return out


def run_lockstep(transfer: ReadTransfer, clock: Clock, *, rtt: float = 0.001) -> bytes:
    """A perfect lock-step client; returns what it received."""
    received = bytearray()
    expected = 1
    out = transfer.start()
    while out:
        clock.advance(rtt)
        (packet,) = packets(out)
        assert isinstance(packet, Data)
        assert packet.block == expected % 65536
        received += packet.payload
        expected += 1
        out = transfer.on_ack(packet.block)
    return bytes(received)


def test_lockstep_small_file() -> None:
    clock = Clock()
    content = bytes(range(256)) * 5  # 1280 bytes: 512 + 512 + 256
    transfer = ReadTransfer(reader(content), clock=clock)
    assert run_lockstep(transfer, clock) == content
    assert transfer.done and not transfer.failed and transfer.finished
    assert transfer.bytes_sent == transfer.bytes_acked == len(content)
    assert transfer.retransmits == 0


def test_empty_file_sends_one_empty_block() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b""), clock=clock)
    out = transfer.start()
    assert packets(out) == [Data(1, b"")]
    assert transfer.on_ack(1) == []
    assert transfer.done


def test_exact_multiple_ends_with_an_empty_block() -> None:
    clock = Clock()
    content = b"x" * 1024
    transfer = ReadTransfer(reader(content), clock=clock)
    out = transfer.start()
    assert packets(out) == [Data(1, b"x" * 512)]
    assert packets(transfer.on_ack(1)) == [Data(2, b"x" * 512)]
    assert packets(transfer.on_ack(2)) == [Data(3, b"")]
    assert not transfer.done
    # The empty last block is retransmitted until it is acknowledged.
    clock.advance(transfer.timeout)
    assert packets(transfer.on_timeout()) == [Data(3, b"")]
    assert transfer.on_ack(3) == []
    assert transfer.done and transfer.bytes_acked == 1024


def test_short_reads_still_fill_blocks() -> None:
    clock = Clock()
    content = bytes(range(256)) * 9
    transfer = ReadTransfer(reader(content, chunk=100), clock=clock)
    assert run_lockstep(transfer, clock) == content


def test_lost_data_is_resent_after_the_timeout() -> None:
    clock = Clock()
    content = b"a" * 512 + b"b" * 100
    transfer = ReadTransfer(reader(content), clock=clock)
    assert blocks(transfer.start()) == [1]
    # DATA 1 lost: nothing comes back until the deadline.
    assert transfer.deadline == pytest.approx(clock.now + 1.0)
    clock.advance(1.0)
    assert packets(transfer.on_timeout()) == [Data(1, b"a" * 512)]
    assert transfer.retransmits == 1
    assert transfer.timeout == pytest.approx(2.0)  # backed off, capped at timeout_max
    assert packets(transfer.on_ack(1)) == [Data(2, b"b" * 100)]
    assert transfer.on_ack(2) == []
    assert transfer.done


def test_back_off_grows_past_timeout_max_up_to_backoff_max() -> None:
    """``timeout`` (pybootd's 2 s) bounds the round-trip timer; consecutive losses double it up
    to ``backoff_max`` (README, [tftpd]: loss and the clients' own timers)."""
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 2000), timeout_max=2.0, backoff_max=6.0, retries=10,
                            clock=clock)
    transfer.start()
    waits = []
    for _ in range(4):
        clock.advance(transfer.timeout)
        assert blocks(transfer.on_timeout()) == [1]
        waits.append(transfer.timeout)
    assert waits == pytest.approx([2.0, 4.0, 6.0, 6.0])
    # the ACK of a resent block gives no sample (Karn); the next block's ACK does, and brings
    # the timer back within timeout_max
    clock.advance(0.01)
    assert blocks(transfer.on_ack(1)) == [2]
    clock.advance(0.01)
    transfer.on_ack(2)
    assert transfer.timeout <= 2.0


def test_backoff_max_below_timeout_max_is_timeout_max() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 2000), timeout_max=2.0, backoff_max=0.5, clock=clock)
    transfer.start()
    for expected in (2.0, 2.0):
        clock.advance(transfer.timeout)
        transfer.on_timeout()
        assert transfer.timeout == pytest.approx(expected)


def test_lost_ack_resends_and_the_late_duplicate_is_ignored() -> None:
    clock = Clock()
    content = b"a" * 512 + b"b" * 512 + b"c"
    transfer = ReadTransfer(reader(content), clock=clock)
    transfer.start()
    assert blocks(transfer.on_ack(1)) == [2]
    # ACK 2 lost: DATA 2 goes again; the client answers it with a second ACK 2.
    clock.advance(transfer.timeout)
    assert blocks(transfer.on_timeout()) == [2]
    assert blocks(transfer.on_ack(2)) == [3]
    assert transfer.on_ack(2) == []  # the duplicate: no Sorcerer's Apprentice resend
    assert transfer.on_ack(3) == []
    assert transfer.done and transfer.retransmits == 1


def test_duplicate_and_stray_acks_never_resend() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"z" * 5000), clock=clock)
    transfer.start()
    assert blocks(transfer.on_ack(1)) == [2]
    deadline = transfer.deadline
    assert transfer.on_ack(1) == []  # duplicate
    assert transfer.on_ack(0) == []  # old
    assert transfer.on_ack(7) == []  # a block never sent
    assert transfer.on_ack(40000) == []
    assert transfer.deadline == deadline  # none of them restarted the timer
    assert transfer.retransmits == 0
    assert blocks(transfer.on_ack(2)) == [3]


def test_window_of_four_with_a_loss_mid_window() -> None:
    clock = Clock()
    content = bytes(range(256)) * 48  # 12288 bytes = 24 blocks of 512, then an empty block 25
    transfer = ReadTransfer(reader(content), windowsize=4, clock=clock)
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    assert blocks(transfer.on_ack(4)) == [5, 6, 7, 8]
    # DATA 6 is lost: the RFC 7440 client ACKs 5, the last block it got in order.
    assert blocks(transfer.on_ack(5)) == [6, 7, 8, 9]
    assert transfer.retransmits == 3  # 6, 7 and 8 went again
    assert transfer.on_ack(5) == []  # the client's duplicate ACK 5 changes nothing
    assert blocks(transfer.on_ack(9)) == [10, 11, 12, 13]
    # A whole window is lost: the timeout resends it from the first unacknowledged block.
    clock.advance(transfer.timeout)
    assert blocks(transfer.on_timeout()) == [10, 11, 12, 13]
    received = {}
    out = transfer.on_ack(13)
    while out:
        for packet in packets(out):
            assert isinstance(packet, Data)
            received[packet.block] = packet.payload
        out = transfer.on_ack(max(received))
    assert sorted(received) == list(range(14, 26))
    assert received[25] == b""
    assert transfer.done and transfer.bytes_acked == len(content)


def test_window_larger_than_the_file() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"q" * 1100), windowsize=8, clock=clock)
    assert [len(p.payload) for p in packets(transfer.start())] == [512, 512, 76]  # type: ignore[attr-defined]
    assert transfer.on_ack(3) == []
    assert transfer.done


def test_rollover_past_65535() -> None:
    clock = Clock()
    content = hashlib.sha256(b"seed").digest() * 17500 + b"tail"  # 560,004 bytes
    count = len(content) // 8 + 1  # 70,001 blocks of 8 bytes, the last one 4 bytes
    assert count > 70_000
    transfer = ReadTransfer(reader(content), blksize=8, clock=clock)
    received = bytearray()
    wire_numbers = []
    out = transfer.start()
    while out:
        block = int.from_bytes(bytes(out[0][2:4]), "big")
        received += bytes(out[0][4:])
        if len(wire_numbers) < 65540:
            wire_numbers.append(block)
        out = transfer.on_ack(block)
    assert transfer.done
    assert bytes(received) == content
    assert wire_numbers[65533:65538] == [65534, 65535, 0, 1, 2]
    assert transfer.bytes_acked == len(content)


def test_stale_ack_after_rollover_is_ignored() -> None:
    clock = Clock()
    content = b"r" * (8 * 65540)
    transfer = ReadTransfer(reader(content), blksize=8, clock=clock)
    out = transfer.start()
    for number in range(1, 65538):  # acknowledge through wire block 1 of the second round
        out = transfer.on_ack(number % 65536)
    assert blocks(out) == [65538 % 65536]
    assert transfer.on_ack(65535) == []  # an old ACK from before the wrap
    assert transfer.on_ack(0) == []
    assert transfer.retransmits == 0


def test_oack_then_ack_zero_then_data() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"d" * 700), blksize=1024, options={"blksize": "1024", "tsize": "700"},
                            clock=clock)
    assert packets(transfer.start()) == [OptionAck({"blksize": "1024", "tsize": "700"})]
    assert transfer.first_data_at is None
    assert transfer.on_ack(1) == []  # only ACK 0 answers an OACK
    clock.advance(0.01)
    assert packets(transfer.on_ack(0)) == [Data(1, b"d" * 700)]
    assert transfer.first_data_at == clock.now
    assert transfer.srtt == pytest.approx(0.01)
    assert transfer.on_ack(1) == []
    assert transfer.done


def test_lost_oack_is_retransmitted() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x"), options={"tsize": "1"}, clock=clock)
    first = transfer.start()
    clock.advance(transfer.timeout)
    assert [bytes(d) for d in transfer.on_timeout()] == [bytes(d) for d in first]
    assert transfer.retransmits == 1
    clock.advance(0.2)
    assert packets(transfer.on_ack(0)) == [Data(1, b"x")]
    assert transfer.srtt is None  # Karn: no sample from the retransmitted OACK


def test_oack_answered_by_error_8_ends_quietly() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 10), options={"tsize": "10"}, clock=clock)
    transfer.start()
    transfer.on_error(ErrorCode.OPTION_REFUSED, "tsize probe")
    assert transfer.failed and transfer.reason == "options_refused"
    assert transfer.on_timeout() == []  # nothing more is sent, not even an ERROR
    assert transfer.on_ack(0) == []


def test_client_error_mid_transfer_ends_quietly() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), clock=clock)
    transfer.start()
    transfer.on_error(0, "disk full")
    assert transfer.failed and transfer.reason == "client_error"


def test_retries_exhausted() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), retries=3, timeout_max=0.5, clock=clock)
    transfer.start()
    for _ in range(3):
        clock.advance(transfer.timeout)
        assert blocks(transfer.on_timeout()) == [1]
    clock.advance(transfer.timeout)
    out = transfer.on_timeout()
    assert transfer.failed and transfer.reason == "timeout"
    (packet,) = packets(out)
    assert isinstance(packet, Error) and packet.code == ErrorCode.NOT_DEFINED
    assert "timed out" in packet.message
    assert transfer.retransmits == 3


def test_progress_resets_the_retry_count() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), retries=2, clock=clock)
    transfer.start()
    for number in range(1, 6):
        for _ in range(2):
            clock.advance(transfer.timeout)
            assert blocks(transfer.on_timeout()) == [number]
        transfer.on_ack(number)
    assert not transfer.failed


def test_timer_backs_off_and_is_bounded() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), timeout_min=0.05, timeout_max=3.0, retries=10, clock=clock)
    assert transfer.timeout == pytest.approx(1.0)  # RFC 6298 initial value
    transfer.start()
    seen = []
    for _ in range(4):
        clock.advance(transfer.timeout)
        transfer.on_timeout()
        seen.append(transfer.timeout)
    assert seen == pytest.approx([2.0, 3.0, 3.0, 3.0])
    assert ReadTransfer(reader(b""), timeout_max=0.3).timeout == pytest.approx(0.3)


def test_rto_adapts_to_fast_acks() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 512 * 100), timeout_min=0.02, timeout_max=2.0, clock=clock)
    out = transfer.start()
    assert transfer.timeout == pytest.approx(1.0)
    number = 1
    while out:
        clock.advance(0.0005)
        out = transfer.on_ack(number)
        number += 1
    assert transfer.done
    assert transfer.srtt == pytest.approx(0.0005)
    assert transfer.timeout == pytest.approx(0.02)  # shrank to timeout_min


def test_karn_no_sample_from_a_retransmitted_block() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 2000), clock=clock)
    transfer.start()
    clock.advance(transfer.timeout)
    transfer.on_timeout()
    clock.advance(0.001)
    transfer.on_ack(1)
    assert transfer.srtt is None
    assert transfer.timeout == pytest.approx(2.0)  # the backed-off value stays
    clock.advance(0.004)
    transfer.on_ack(2)
    assert transfer.srtt == pytest.approx(0.004)


def test_read_error_becomes_an_error_packet() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000, fail_at=1500), read_errors=(ReadError,), clock=clock)
    transfer.start()
    assert blocks(transfer.on_ack(1)) == [2]
    out = transfer.on_ack(2)
    assert packets(out) == [Error(0, "upstream went away")]
    assert transfer.failed and transfer.reason == "read_error"


def test_unexpected_read_exceptions_propagate() -> None:
    def read(offset: int, length: int) -> bytes:
        raise RuntimeError("bug")

    transfer = ReadTransfer(read, read_errors=(ReadError,))
    with pytest.raises(RuntimeError):
        transfer.start()
    assert decode(transfer.abort()) == Error(0, "Internal error")
    assert transfer.failed and transfer.reason == "internal_error"


def test_netascii_conversion_across_blocks() -> None:
    clock = Clock()
    text = b"line one\nline two\r\nbare\rcr\n" * 40
    transfer = ReadTransfer(reader(text, chunk=7), blksize=64, netascii=True, clock=clock)
    got = run_lockstep(transfer, clock)
    assert got == text.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    assert transfer.bytes_acked == len(got)


def test_memory_is_bounded_by_the_window() -> None:
    """A big file is never held whole: reads are block-sized and slots are reused."""
    clock = Clock()
    read = reader(b"m" * 1_000_000)
    transfer = ReadTransfer(read, blksize=1000, windowsize=4, clock=clock)
    out = transfer.start()
    while out:
        last = int.from_bytes(bytes(out[-1][2:4]), "big")
        out = transfer.on_ack(last)
    assert transfer.done
    assert max(length for _, length in read.calls) == 1000  # type: ignore[attr-defined]
    assert sum(1 for slot in transfer._slots if slot is not None) == 4


def test_datagrams_are_valid_until_the_next_call() -> None:
    transfer = ReadTransfer(reader(b"abc"))
    (datagram,) = transfer.start()
    assert bytes(datagram) == Data(1, b"abc").encode()


class TestNegotiate:
    def test_no_options_no_oack(self) -> None:
        deal = negotiate({}, size=100)
        assert (deal.blksize, deal.windowsize, deal.timeout, deal.oack) == (512, 1, None, {})

    def test_all_options(self) -> None:
        deal = negotiate({"blksize": "1468", "tsize": "0", "timeout": "3", "windowsize": "16",
                          "multicast": ""}, size=4242)
        assert deal.oack == {"blksize": "1468", "tsize": "4242", "timeout": "3", "windowsize": "16"}
        assert list(deal.oack) == ["blksize", "tsize", "timeout", "windowsize"]
        assert (deal.blksize, deal.windowsize, deal.timeout) == (1468, 16, 3)

    def test_limits(self) -> None:
        deal = negotiate({"blksize": "65464", "windowsize": "1000"}, size=None, max_blksize=1400,
                         max_windowsize=8)
        assert deal.oack == {"blksize": "1400", "windowsize": "8"}
        assert negotiate({"blksize": "99999"}, size=None).blksize == 65464

    def test_invalid_values_are_ignored(self) -> None:
        deal = negotiate({"blksize": "4", "timeout": "0", "windowsize": "0", "tsize": "x"}, size=9)
        assert deal.oack == {} and deal.blksize == 512

    def test_tsize_needs_a_known_size_and_octet(self) -> None:
        assert negotiate({"tsize": "0"}, size=None).oack == {}
        assert negotiate({"tsize": "0"}, size=10, netascii=True).oack == {}
        assert negotiate({"tsize": "0"}, size=0).oack == {}     # curl rejects "tsize 0" in an OACK


def test_a_short_pause_on_a_fast_lan_does_not_fail_the_transfer() -> None:
    """The adaptive timer shrinks to a few ms on a LAN; giving up still needs `retries` resends
    AND timeout_max × retries seconds of silence, so a client pausing ~1.3 s keeps its transfer."""
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), timeout_min=0.01, timeout_max=2.0, retries=5, clock=clock)
    transfer.start()
    for _ in range(20):                        # fast ACKs: the timer converges to timeout_min
        clock.advance(0.0005)
        transfer.on_ack(1)
    transfer = ReadTransfer(reader(b"x" * 50000), timeout_min=0.01, timeout_max=2.0, retries=5, clock=clock)
    transfer.start()
    clock.advance(0.0005)
    transfer.on_ack(1)
    silent = 0.0
    while silent < 1.5:                        # the client goes quiet for 1.5 s
        step = transfer.timeout
        clock.advance(step)
        silent += step
        transfer.on_timeout()
    assert not transfer.failed and transfer.retransmits >= 5
    assert blocks(transfer.on_ack(2))          # it comes back: the transfer goes on
    while not transfer.failed:                 # and silence for good ends it, after about 10 s
        clock.advance(transfer.timeout)
        transfer.on_timeout()
        silent += transfer.timeout
    assert transfer.reason == "timeout"


# -- non-blocking reads (WouldBlock) and batches of ACKs ------------------------------------


def stalling_reader(content: bytes, every: int):
    """read() that raises WouldBlock on every *every*-th new offset until ``warm`` is set."""
    state = {"warm": False, "stalls": 0, "seen": set()}

    def read(offset: int, length: int) -> bytes:
        if not state["warm"] and offset not in state["seen"] and len(state["seen"]) % every == every - 1:
            state["seen"].add(-offset - 1)  # count it once
            state["stalls"] += 1
            raise WouldBlock
        state["seen"].add(offset)
        state["warm"] = False
        return content[offset : offset + length]

    read.state = state  # type: ignore[attr-defined]
    return read


@pytest.mark.parametrize("windowsize", [1, 4])
def test_a_read_that_would_block_stalls_the_window_and_resume_goes_on(windowsize: int) -> None:
    content = bytes(range(256)) * 40  # 10240 bytes: 20 blocks of 512 and an empty one
    clock = Clock()
    read = stalling_reader(content, every=3)
    transfer = ReadTransfer(read, windowsize=windowsize, clock=clock)
    received: dict[int, bytes] = {}
    out = transfer.start()
    rounds = 0
    while not transfer.finished:
        rounds += 1
        assert rounds < 500
        if transfer.stalled:
            assert not out or len(out) < windowsize
            read.state["warm"] = True  # type: ignore[attr-defined]
            out = out + transfer.resume()
            continue
        assert out, "a transfer that is not stalled always has something in flight"
        last = 0
        for packet in packets(out):
            assert isinstance(packet, Data)
            received.setdefault(packet.block, packet.payload)
            last = packet.block
        clock.advance(0.001)
        out = transfer.on_ack(last)
    assert transfer.done and read.state["stalls"] >= 5  # type: ignore[attr-defined]
    assert b"".join(received[n] for n in sorted(received)) == content
    assert transfer.retransmits == 0 and transfer.bytes_acked == len(content)


def test_a_stall_is_not_a_timeout_and_resume_is_idempotent() -> None:
    clock = Clock()
    calls = {"n": 0}

    def read(offset: int, length: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise WouldBlock
        return b"x" * min(length, 1000 - offset)

    transfer = ReadTransfer(read, clock=clock)
    assert blocks(transfer.start()) == [1]
    assert transfer.on_ack(1) == [] and transfer.stalled and not transfer.finished
    assert transfer.read_offset == 512
    assert blocks(transfer.resume()) == [2]
    assert not transfer.stalled and transfer.resume() == []
    assert transfer.on_ack(2) == [] and transfer.done


def test_on_acks_acts_on_the_ack_that_acknowledges_the_most() -> None:
    content = bytes(512 * 12)
    clock = Clock()
    transfer = ReadTransfer(reader(content), windowsize=4, clock=clock)
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    clock.advance(0.001)
    # ACK 2 (a gap) then ACK 4 (the whole window) arrive together: no go-back to 3
    assert blocks(transfer.on_acks([2, 4])) == [5, 6, 7, 8]
    assert transfer.retransmits == 0
    # a duplicate and a stale ACK next to the real one change nothing
    assert blocks(transfer.on_acks([4, 8, 3])) == [9, 10, 11, 12]
    assert transfer.on_acks([8, 4]) == []
    assert blocks(transfer.on_acks([12])) == [13]
    assert transfer.on_acks([13, 13]) == [] and transfer.done
    assert transfer.bytes_acked == len(content)


def test_on_acks_before_the_oack_is_answered() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"y" * 2000), options={"blksize": "512"}, windowsize=2,
                            clock=clock)
    assert isinstance(packets(transfer.start())[0], OptionAck)
    assert transfer.on_acks([5, 7]) == []
    assert blocks(transfer.on_acks([0, 1, 0])) == [1, 2]  # ACK 1 came before DATA 1: ignored
    assert blocks(transfer.on_acks([2])) == [3, 4]


def _state(transfer: ReadTransfer) -> tuple[object, ...]:
    return (transfer.done, transfer.failed, transfer.stalled, transfer.timeout, transfer.srtt,
            transfer.deadline, transfer.bytes_acked, transfer.bytes_sent, transfer.retransmits,
            transfer.read_offset, transfer.first_data_at)


@pytest.mark.parametrize(("windowsize", "netascii"), [(1, False), (1, True), (4, False)])
def test_on_ack_all_matches_on_ack(windowsize: int, netascii: bool) -> None:
    """The fast path gives the same datagrams and state as on_ack, stalls and losses included."""
    content = hashlib.sha256(b"fast").digest() * 2100 + b"\n\rtail"  # 8406 blocks of 8 bytes
    clocks = Clock(), Clock()
    stall_at = {40, 41, 3000}  # read offsets that raise WouldBlock once
    transfers = []
    for clock in clocks:
        plain = reader(content)
        stalled: set[int] = set()

        def read(offset: int, length: int, plain=plain, stalled=stalled) -> bytes:
            if offset in stall_at and offset not in stalled:
                stalled.add(offset)
                raise WouldBlock
            return plain(offset, length)

        transfers.append(ReadTransfer(read, blksize=8, windowsize=windowsize, netascii=netascii,
                                      options={"blksize": "8"}, clock=clock))
    slow, fast = transfers
    assert fast.on_ack_all(0) is None  # before the OACK is answered: not the fast path
    outs = [slow.start(), fast.start()]
    outs = [slow.on_ack(0), fast.on_ack(0)]
    step = 0
    while not slow.finished:
        step += 1
        assert [bytes(d) for d in outs[0]] == [bytes(d) for d in outs[1]]
        assert _state(slow) == _state(fast)
        if slow.stalled:
            outs = [slow.resume(), fast.resume()]
            continue
        for clock in clocks:
            clock.advance(0.001 + (step % 7) * 0.0003)
        if step % 97 == 0:  # a lost window: both time out and resend
            for clock in clocks:
                clock.advance(5.0)
            outs = [slow.on_timeout(), fast.on_timeout()]
            continue
        block = int.from_bytes(bytes(outs[0][-1][2:4]), "big")
        if step % 53 == 0 and len(outs[0]) > 1:  # an ACK inside the window: not the fast path
            inner = int.from_bytes(bytes(outs[0][0][2:4]), "big")
            assert fast.on_ack_all(inner) is None
            outs = [slow.on_ack(inner), fast.on_ack(inner)]
            continue
        assert fast.on_ack_all((block - 1) & 0xFFFF) is None  # an older ACK: nothing changes
        assert _state(slow) == _state(fast)
        fast_out = fast.on_ack_all(block)
        assert fast_out is not None
        outs = [slow.on_ack(block), fast_out]
    assert fast.finished and slow.done and fast.done
    assert _state(slow) == _state(fast)


def test_on_ack_all_read_error_is_reported_like_on_ack() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 64, fail_at=20), blksize=8, clock=clock,
                            read_errors=(ReadError,))
    out = transfer.start()
    while out and not transfer.finished:
        block = int.from_bytes(bytes(out[-1][2:4]), "big")
        result = transfer.on_ack_all(block)
        assert result is not None
        out = result
    assert transfer.failed and transfer.reason == "read_error"
    (packet,) = packets(out)
    assert isinstance(packet, Error) and packet.message == "upstream went away"


# -- issue #11: what a client (or a forged source address) may make the server do -------------


def test_timeout_option_can_only_shorten_the_wait() -> None:
    """RFC 2349 timeout: a value above our longest wait is left out of the OACK (the RFC allows
    only an echo) and our timer is kept; a value within it is echoed and used."""
    deal = negotiate({"timeout": "255", "blksize": "1468"}, size=None, max_timeout=2.0)
    assert deal.timeout is None and deal.oack == {"blksize": "1468"}
    deal = negotiate({"timeout": "3"}, size=None, max_timeout=2.0)
    assert deal.timeout is None and deal.oack == {}
    deal = negotiate({"timeout": "2"}, size=None, max_timeout=2.0)
    assert deal.timeout == 2 and deal.oack == {"timeout": "2"}
    deal = negotiate({"timeout": "1"}, size=None, max_timeout=2.5)
    assert deal.timeout == 1 and deal.oack == {"timeout": "1"}


@pytest.mark.parametrize(("asked", "memory", "agreed"), [
    # (blksize, windowsize) asked, the per-transfer bound, (blksize, windowsize) agreed
    ((65464, 64), 1 << 20, (65464, 16)),        # the window shrinks first
    ((1468, 8), 1 << 20, (1468, 8)),            # a PXE ROM's ask fits as it is
    ((1468, 64), 16 * 1472, (1468, 16)),
    ((65464, 1), 8192, (8188, 1)),              # one block larger than the bound: blksize shrinks
    ((65464, 64), 8192, (8188, 1)),
    ((None, 64), 4096, (512, 7)),               # no blksize option: 512-byte blocks (RFC 1350)
    ((8, 65535), 1200, (8, 100)),
])
def test_window_and_blksize_are_negotiated_down_to_the_memory_bound(
        asked: tuple[int | None, int], memory: int, agreed: tuple[int, int]) -> None:
    requested = {"windowsize": str(asked[1])}
    if asked[0] is not None:
        requested = {"blksize": str(asked[0]), **requested}
    deal = negotiate(requested, size=None, max_windowsize=65535, memory=memory)
    assert (deal.blksize, deal.windowsize) == agreed
    assert deal.memory == agreed[1] * (agreed[0] + 4) <= memory
    assert deal.oack["windowsize"] == str(agreed[1])
    if asked[0] is not None:
        assert deal.oack["blksize"] == str(agreed[0])
    else:
        assert "blksize" not in deal.oack


def test_buffered_bytes_stay_within_the_negotiated_memory() -> None:
    clock = Clock()
    deal = negotiate({"blksize": "65464", "windowsize": "64"}, size=None, memory=1 << 20)
    transfer = ReadTransfer(reader(b"z" * (8 << 20)), blksize=deal.blksize, windowsize=deal.windowsize,
                            options=deal.oack, clock=clock)
    transfer.start()
    assert transfer.buffered == 0                   # nothing buffered before ACK 0
    assert len(transfer.on_ack(0)) == 16            # the client goes silent after ACK 0
    assert transfer.buffered == deal.memory <= 1 << 20


def test_unproven_oack_is_resent_few_times_on_a_conservative_timer_then_dropped_quietly() -> None:
    """Before ACK 0 the peer is unproven: first_retries resends, first_timeout apart,
    then the transfer ends without an ERROR, whatever timeout the client asked for."""
    clock = Clock()
    deal = negotiate({"timeout": "255", "tsize": "0"}, size=1000, max_timeout=2.0)
    transfer = ReadTransfer(reader(b"x" * 1000), options=deal.oack, timeout_max=2.0, retries=5,
                            first_timeout=1.0, first_retries=2, clock=clock)
    sent = [transfer.start()]
    start = clock.now
    times = []
    while not transfer.finished:
        clock.now = transfer.deadline
        out = transfer.on_timeout()
        times.append(clock.now - start)
        if out:
            sent.append(out)
    assert times == [1.0, 2.0, 3.0]                 # resends at 1 s and 2 s, given up at 3 s
    assert [packets(d) for d in sent] == [[OptionAck({"tsize": "1000"})]] * 3
    assert transfer.failed and transfer.reason == "timeout" and transfer.retransmits == 2


def test_unproven_first_data_is_resent_few_times_then_dropped_quietly() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 1000), timeout_min=0.01, timeout_max=2.0, retries=5,
                            first_timeout=6.0, first_retries=2, clock=clock)
    sent = [transfer.start()]
    assert transfer.deadline == clock.now + 1.0     # no OACK: the ordinary first timer (1 s)
    while not transfer.finished:
        clock.now = transfer.deadline
        out = transfer.on_timeout()
        if out:
            sent.append(out)
    assert [blocks(d) for d in sent] == [[1], [1], [1]]
    assert transfer.failed and transfer.retransmits == 2


def test_after_the_first_ack_the_ordinary_timer_and_retries_apply() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 5000), options={"tsize": "5000"}, timeout_min=0.01,
                            timeout_max=0.05, retries=3, first_timeout=1.0, first_retries=2, clock=clock)
    transfer.start()
    clock.now = transfer.deadline                   # one OACK resend, then ACK 0 arrives
    assert len(transfer.on_timeout()) == 1
    clock.advance(0.001)
    assert blocks(transfer.on_ack(0)) == [1]
    assert transfer.proven
    assert transfer.deadline - clock.now <= 0.05    # the ordinary (bounded) timer, not 2 s
    resends = 0
    while not transfer.finished:
        clock.now = transfer.deadline
        out = transfer.on_timeout()
        resends += 1
    assert packets(out) == [Error(ErrorCode.NOT_DEFINED, "Transfer timed out")]   # proven: told
    assert resends >= 4


def test_a_client_ack_within_the_first_timer_is_a_plain_transfer() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"q" * 2000), first_timeout=1.0, first_retries=2, clock=clock)
    assert run_lockstep(transfer, clock) == b"q" * 2000
    assert transfer.done and transfer.retransmits == 0


def test_a_repeated_request_resends_the_first_answer_within_the_same_budget() -> None:
    """A client that lost our OACK repeats its RRQ: it gets the OACK again at once, but a flood
    of repeats (forged or not) gets no more resends than first_retries."""
    clock = Clock()
    transfer = ReadTransfer(reader(b"x" * 1000), options={"tsize": "1000"}, first_timeout=1.0,
                            first_retries=2, clock=clock)
    first = transfer.start()
    clock.advance(0.3)
    again = [transfer.on_request_again() for _ in range(10)]
    assert [len(d) for d in again] == [1, 1] + [0] * 8
    assert [bytes(d[0]) for d in again[:2]] == [bytes(first[0])] * 2
    assert transfer.retransmits == 2
    clock.now = transfer.deadline                   # the budget is spent: the timer ends it
    assert transfer.on_timeout() == [] and transfer.failed
    proven = ReadTransfer(reader(b"x" * 1000), options={"tsize": "1000"}, first_timeout=1.0,
                          first_retries=2, clock=clock)
    proven.start()
    proven.on_ack(0)
    assert proven.on_request_again() == []          # once ACKed, a late duplicate RRQ is ignored
