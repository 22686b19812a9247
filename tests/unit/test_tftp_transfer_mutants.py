"""Read-transfer behaviour pinned down by mutation testing (tests/mutation.sh): RFC 6298
arithmetic on the lock-step fast path, the exact bounds of negotiation, batches of ACKs,
failure details, and reads that stay block-sized. Sans-IO, a hand-driven clock.

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``on_ack_all``: ``srtt = None`` (falls back to ``_sample()``, the same arithmetic);
  ``rtt <= 0.0`` for ``rtt < 0.0``, ``err > 0.0`` for ``err >= 0.0``, ``var >= G`` for
  ``var > G``, ``rto <= min`` / ``rto >= max`` (the two branches agree at equality);
  ``_resent[0] = None`` (falsy like False); ``_fill(None)`` on a read error (the error path
  never reads the clock); ``window != 2`` (a window of 1 then takes ``_fill()``, same output);
  ``number < self._high`` and ``eof and number <= high`` (with a window of 1 every block sent
  is acknowledged when this runs, so ``number == high + 1``).
* ``on_acks``: ``best = -2``, ``base - 2`` for ``base - 1`` and ``best_acked <= acked`` (a
  duplicate then wins the batch only when nothing newer is in it, and ``on_ack`` ignores it).
* ``_read_netascii``: ``_eof = None/False`` at the end (the loop breaks on ``b""`` anyway and
  the short block that follows ends the transfer).
"""

from __future__ import annotations

import pytest

from massboot.tftp.packet import Data, OptionAck, decode
from massboot.tftp.transfer import Datagram, ReadTransfer, WouldBlock, negotiate


class Clock:
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


def reader(content: bytes):
    calls: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return content[offset : offset + length]

    read.calls = calls  # type: ignore[attr-defined]
    return read


def blocks(datagrams: list[Datagram]) -> list[int]:
    out = []
    for datagram in datagrams:
        packet = decode(bytes(datagram))
        assert isinstance(packet, Data)
        out.append(packet.block)
    return out


class Rfc6298:
    """The reference: RFC 6298 section 2 with G = 1 ms, K = 4, bounded by min and max."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, rtt: float) -> float:
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        return min(max(self.srtt + max(0.001, 4 * self.rttvar), self.lo), self.hi)


# RTTs that move RTTVAR both ways, cross G (1 ms) and both bounds
RTTS = [0.004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004,
        0.0004, 0.030, 0.002, 0.9, 0.9, 0.9, 0.001, 0.2, 0.0005, 0.0005]


@pytest.mark.parametrize("fast", [False, True], ids=["on_ack", "on_ack_all"])
def test_rto_follows_rfc_6298_on_both_ack_paths(fast: bool) -> None:
    clock = Clock()
    lo, hi = 0.0001, 0.5
    transfer = ReadTransfer(reader(bytes(8 * 64)), blksize=8, timeout_min=lo, timeout_max=hi,
                            clock=clock)
    ref = Rfc6298(lo, hi)
    assert blocks(transfer.start()) == [1]
    for number, rtt in enumerate(RTTS, start=1):
        clock.advance(rtt)
        out = transfer.on_ack_all(number) if fast else transfer.on_ack(number)
        assert out is not None and blocks(out) == [number + 1]
        expected = ref.sample(rtt)
        assert transfer.srtt == pytest.approx(ref.srtt, rel=1e-9)
        assert transfer.timeout == pytest.approx(expected, rel=1e-9), f"after ACK {number} (rtt {rtt})"


@pytest.mark.parametrize("fast", [False, True], ids=["on_ack", "on_ack_all"])
def test_a_clock_that_steps_back_counts_as_a_zero_rtt(fast: bool) -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(8 * 8)), blksize=8, timeout_min=0.0001, clock=clock)
    transfer.start()
    clock.advance(0.008)
    transfer.on_ack(1)
    clock.advance(-0.005)                        # sent at t, acknowledged "before" t
    out = transfer.on_ack_all(2) if fast else transfer.on_ack(2)
    assert out is not None and blocks(out) == [3]
    assert transfer.srtt == pytest.approx(0.875 * 0.008)


def test_fast_path_progress_resets_the_retry_count() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(8 * 20)), blksize=8, retries=2, timeout_min=0.5,
                            timeout_max=0.5, clock=clock)
    transfer.start()
    for _ in range(2):
        clock.advance(0.5)
        assert blocks(transfer.on_timeout()) == [1]
    assert blocks(transfer.on_ack_all(1) or []) == [2]
    for _ in range(2):                           # two more timeouts, 1 s of silence: still alive
        clock.advance(0.5)
        assert blocks(transfer.on_timeout()) == [2]
    assert not transfer.failed
    clock.advance(0.5)
    transfer.on_timeout()
    assert transfer.failed and transfer.reason == "timeout"


def test_fast_path_counts_the_bytes_of_a_whole_window() -> None:
    content = bytes(range(8)) * 3 + b"tail"     # blocks 1-3 full, block 4 short
    transfer = ReadTransfer(reader(content), blksize=8, windowsize=4, clock=Clock())
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    assert transfer.on_ack_all(4) == []
    assert transfer.done
    assert transfer.bytes_acked == len(content) and isinstance(transfer.bytes_acked, int)


def test_fast_path_with_a_window_of_two_sends_the_whole_next_window() -> None:
    content = bytes(range(256)) * 4
    transfer = ReadTransfer(reader(content), blksize=64, windowsize=2, clock=Clock())
    got = bytearray()
    out = transfer.start()
    while out:
        for datagram in out:
            packet = decode(bytes(datagram))
            assert isinstance(packet, Data)
            got += packet.payload
        if not transfer.finished:
            assert len(out) == 2 or transfer.done or len(got) == len(content)
        result = transfer.on_ack_all(blocks(out)[-1])
        assert result is not None
        out = result
    assert transfer.done and bytes(got) == content


def test_fast_path_netascii_converts() -> None:
    text = b"a\nb\rc\r\nd" * 20
    clock = Clock()
    transfer = ReadTransfer(reader(text), blksize=16, netascii=True, clock=clock)
    got = bytearray()
    out = transfer.start()
    while out:
        (datagram,) = out
        packet = decode(bytes(datagram))
        assert isinstance(packet, Data)
        got += packet.payload
        result = transfer.on_ack_all(packet.block)
        assert result is not None
        out = result
    assert bytes(got) == text.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def test_fast_path_refuses_an_ack_for_a_block_not_sent_yet() -> None:
    transfer = ReadTransfer(reader(bytes(512 * 8)), windowsize=2, clock=Clock())
    assert blocks(transfer.start()) == [1, 2]
    assert transfer.on_ack_all(3) is None
    assert transfer.on_ack_all(1) is None
    assert transfer.bytes_acked == 0


def test_fast_path_refuses_a_duplicate_while_stalled() -> None:
    calls = {"n": 0}

    def read(offset: int, length: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise WouldBlock
        return b"x" * min(length, 4096 - offset)

    transfer = ReadTransfer(read, clock=Clock())
    assert blocks(transfer.start()) == [1]
    assert transfer.on_ack_all(1) == [] and transfer.stalled
    assert transfer.on_ack_all(1) is None           # nothing sent since: a duplicate
    assert transfer.bytes_acked == 512


def test_negotiate_window_bounds() -> None:
    assert negotiate({"windowsize": "100"}, size=10).oack == {"windowsize": "64"}
    assert negotiate({"windowsize": "100"}, size=10).windowsize == 64
    assert negotiate({"windowsize": "1"}, size=10).windowsize == 1
    assert negotiate({"windowsize": "1"}, size=10).oack == {"windowsize": "1"}


def test_on_acks_ack_zero_alone_answers_the_oack() -> None:
    transfer = ReadTransfer(reader(bytes(100)), options={"tsize": "100"}, clock=Clock())
    assert isinstance(decode(bytes(transfer.start()[0])), OptionAck)
    assert blocks(transfer.on_acks([0])) == [1]


def test_on_acks_with_nothing_new_changes_nothing() -> None:
    transfer = ReadTransfer(reader(bytes(512 * 8)), windowsize=4, clock=Clock())
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    assert transfer.on_acks([9, 7]) == []
    assert transfer.bytes_acked == 0
    assert blocks(transfer.on_acks([1])) == [2, 3, 4, 5]   # inside the window: go back (RFC 7440)


def test_on_acks_across_the_rollover_to_block_zero() -> None:
    content = bytes(8 * 65537)                      # blocks 1..65537 full, 65538 empty
    transfer = ReadTransfer(reader(content), blksize=8, clock=Clock())
    out = transfer.start()
    while out:
        (datagram,) = out
        block = int.from_bytes(bytes(datagram[2:4]), "big")
        out = transfer.on_acks([block])
    assert transfer.done and transfer.bytes_acked == len(content)


def test_error_8_after_the_oack_is_a_client_error_once_data_flows() -> None:
    transfer = ReadTransfer(reader(bytes(2000)), options={"blksize": "512"}, clock=Clock())
    transfer.start()
    transfer.on_ack(0)
    transfer.on_error(8, "changed my mind")
    assert transfer.failed and transfer.reason == "client_error"
    assert transfer.detail == "client error 8: changed my mind"


def test_failure_details() -> None:
    refused = ReadTransfer(reader(bytes(10)), options={"blksize": "512"}, clock=Clock())
    refused.start()
    refused.on_error(8, "no tsize please")
    assert refused.reason == "options_refused"
    assert refused.detail == "client refused the options: no tsize please"
    aborted = ReadTransfer(reader(bytes(10)), clock=Clock())
    aborted.start()
    aborted.abort(message="shutting down", reason="shutdown")
    assert (aborted.reason, aborted.detail) == ("shutdown", "shutting down")


def test_failing_while_stalled_clears_the_stall() -> None:
    def read(offset: int, length: int) -> bytes:
        raise WouldBlock

    transfer = ReadTransfer(read, clock=Clock())
    assert transfer.start() == [] and transfer.stalled
    transfer.on_error(0, "bye")
    assert transfer.failed and transfer.stalled is False


def test_resume_without_a_stall_does_not_move_the_deadline() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(5000)), clock=clock)
    transfer.start()
    deadline = transfer.deadline
    clock.advance(0.3)
    assert transfer.resume() == []
    assert transfer.deadline == deadline


def test_netascii_reads_only_what_a_block_needs() -> None:
    read = reader(b"abcdefgh" * 100)                 # nothing to convert: 8 bytes make a block
    transfer = ReadTransfer(read, blksize=8, netascii=True, clock=Clock())
    assert blocks(transfer.start()) == [1]
    assert read.calls == [(0, 8)]                    # type: ignore[attr-defined]
    transfer.on_ack(1)
    assert read.calls == [(0, 8), (8, 8)]            # type: ignore[attr-defined]
