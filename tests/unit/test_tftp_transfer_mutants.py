"""Read-transfer behaviour pinned down by mutation testing (tests/mutation.sh): RFC 6298
arithmetic on the lock-step fast path, the exact bounds of negotiation, batches of ACKs,
failure details, and reads that stay block-sized. Sans-IO, a hand-driven clock.

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``__init__``: initial values that are always overwritten before being read (``_lengths``,
  ``_sent_at``, ``_resent``, ``_rttvar``, ``_progress_at``, ``_oack_sent_at``) or replaced by a
  value that is just as falsy (``None`` for ``False``: ``_started``, ``_eof``,
  ``_oack_resent``); ``float("INF")``.
* ``on_ack``: ``acked <= next - 1`` and ``acked < next + 1`` for ``acked < next - 1`` (the
  extra case sets ``_next`` to the value it already has).
* ``on_ack_all``: ``srtt = None`` (falls back to ``_sample()``, the same arithmetic);
  ``rtt <= 0.0`` for ``rtt < 0.0``, ``err > 0.0`` for ``err >= 0.0``, ``var >= G`` for
  ``var > G``, ``rto <= min`` / ``rto >= max`` (the two branches agree at equality);
  ``_resent[0] = None`` (falsy like False); ``_fill(None)`` on a read error (the error path
  never reads the clock); ``number < self._high`` and ``eof and number <= high`` (with a
  window of 1 every block sent is acknowledged when this runs, so ``number == high + 1``).
* ``on_acks``: ``best = -2``, ``base - 2`` for ``base - 1`` and ``best_acked <= acked`` (a
  duplicate then wins the batch only when nothing newer is in it, and ``on_ack`` ignores it).
* ``on_timeout``: ``_oack_sent_at = None`` on an OACK resend (after a resend no RTT sample is
  taken from the OACK, Karn's rule).
* ``_fill``: ``last <= end`` (then ``end = last`` changes nothing); ``getattr(exc, "code",
  None)``, ``1 <= code`` and ``0 < code`` (code 0 and a missing code both end up 0);
  ``_next = None`` once failed (never read again); the deadline of a fill that sends nothing
  without stalling (unreachable: a fill always sends or stalls before the end).
* ``_store``: rebuilding the datagram view when it could be reused (same bytes).
* ``_read_octet`` and ``_read_netascii``: ``_eof`` left unset, ``b"XXXX"`` once at the end
  (after the end no read is made: the short block that follows ends the transfer);
  ``<=``/``>=`` for ``<``/``>`` where equality returned earlier.
"""

from __future__ import annotations

import pytest

from massboot.tftp.packet import Data, Error, OptionAck, decode
from massboot.tftp.transfer import ReadTransfer, WouldBlock, negotiate
from tests.unit.test_tftp_transfer import Clock, blocks, reader


def stall_once(size: int, at_call: int = 2):
    """read() over *size* zero bytes that raises WouldBlock on its *at_call*-th call only."""
    calls = {"n": 0}

    def read(offset: int, length: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == at_call:
            raise WouldBlock
        return bytes(min(length, size - offset))

    return read


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
def test_rto_never_adds_less_than_the_granularity(fast: bool) -> None:
    # steady 0.4 ms round trips: K × RTTVAR falls under G (1 ms), RTO = SRTT + G (RFC 6298 §2)
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(8 * 16)), blksize=8, timeout_min=0.0001, clock=clock)
    ref = Rfc6298(0.0001, 2.0)
    transfer.start()
    for number in range(1, 6):
        clock.advance(0.0004)
        out = transfer.on_ack_all(number) if fast else transfer.on_ack(number)
        assert out is not None
        assert transfer.timeout == pytest.approx(ref.sample(0.0004), rel=1e-9)
    assert transfer.timeout == pytest.approx(0.0014, rel=1e-6)


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
    transfer = ReadTransfer(stall_once(4096), clock=Clock())
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


# -- construction and defaults ------------------------------------------------------------


def test_constructor_bounds_and_messages() -> None:
    read = reader(b"")
    assert ReadTransfer(read, blksize=65464).blksize == 65464          # RFC 2348's largest
    assert ReadTransfer(read, windowsize=65535).windowsize == 65535    # RFC 7440's largest
    with pytest.raises(ValueError, match=r"^blksize 65465 outside 8\.\.65464$"):
        ReadTransfer(read, blksize=65465)
    with pytest.raises(ValueError, match=r"^windowsize 65536 outside 1\.\.65535$"):
        ReadTransfer(read, windowsize=65536)
    for lo, hi in ((0.02, 0.0), (0.0, 2.0), (1.0, -1.0), (-1.0, 1.0)):
        with pytest.raises(ValueError, match=r"^timeouts must be positive$"):
            ReadTransfer(read, timeout_min=lo, timeout_max=hi)


def test_a_new_transfer_has_no_state_yet() -> None:
    transfer = ReadTransfer(reader(b"abc"))
    assert transfer.stalled is False
    assert transfer.reason is None and transfer.detail == ""
    assert transfer.deadline == float("inf")
    assert transfer.on_timeout() == []                 # nothing to resend before start()
    transfer.start()
    with pytest.raises(RuntimeError, match=r"^transfer already started$"):
        transfer.start()


def test_default_timer_and_retries() -> None:
    # timeout_max 2 s and 5 retries by default: back-off 1, 2, 2, ... and the 6th timeout
    # after 10 s of silence gives up
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(5000)), clock=clock)
    transfer.start()
    seen = []
    while not transfer.failed:
        clock.advance(transfer.timeout)
        out = transfer.on_timeout()
        seen.append(transfer.timeout)
    assert seen[:3] == [2.0, 2.0, 2.0]
    assert transfer.retransmits == 5
    assert transfer.detail == "no ACK after 5 retransmissions and 11.0s"
    assert decode(bytes(out[0])) == Error(0, "Transfer timed out")


# -- timer details ------------------------------------------------------------------------


def test_deadlines_follow_the_rto() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(5000)), clock=clock)
    transfer.start()
    assert transfer.deadline == clock.now + 1.0
    with_oack = ReadTransfer(reader(bytes(5000)), options={"blksize": "512"}, clock=clock)
    with_oack.start()
    assert with_oack.deadline == clock.now + 1.0
    clock.advance(1.0)
    with_oack.on_timeout()                               # OACK resent, back-off to 2 s
    assert with_oack.deadline == clock.now + 2.0
    with_oack.on_timeout()
    assert with_oack.retransmits == 2


def test_giving_up_needs_exactly_the_silence() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(5000)), retries=2, timeout_min=0.25, timeout_max=0.5,
                            clock=clock)
    transfer.start()
    for _ in range(3):
        clock.advance(0.25)
        assert blocks(transfer.on_timeout()) == [1]
    clock.advance(0.25)                                  # 4 > 2 timeouts and 1.0 s >= 2 × 0.5 s
    transfer.on_timeout()
    assert transfer.failed and transfer.detail == "no ACK after 3 retransmissions and 1.0s"


def test_ack_zero_resets_the_retry_count_and_progress() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(5000)), options={"blksize": "512"}, retries=2,
                            timeout_min=0.5, timeout_max=0.5, clock=clock)
    transfer.start()
    for _ in range(2):
        clock.advance(0.5)
        transfer.on_timeout()
    assert blocks(transfer.on_ack(0)) == [1]
    for _ in range(2):
        clock.advance(0.5)
        assert blocks(transfer.on_timeout()) == [1]
    assert not transfer.failed


def test_timeout_after_the_end_sends_nothing() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(b"short"), clock=clock)
    transfer.start()
    transfer.on_ack(1)
    assert transfer.done
    rto = transfer.timeout
    clock.advance(5.0)
    assert transfer.on_timeout() == []
    assert transfer.retransmits == 0
    assert transfer.timeout == rto                       # no back-off after the end either


# -- windows ------------------------------------------------------------------------------


def test_ack_of_the_second_to_last_block_goes_back_one() -> None:
    transfer = ReadTransfer(reader(bytes(512 * 10)), windowsize=4, clock=Clock())
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    assert blocks(transfer.on_ack(3)) == [4, 5, 6, 7]   # block 4 was lost: RFC 7440 §4


def test_a_resend_never_goes_past_the_last_block() -> None:
    clock = Clock()
    transfer = ReadTransfer(reader(bytes(768)), windowsize=4, clock=clock)
    assert blocks(transfer.start()) == [1, 2]
    clock.advance(transfer.timeout)
    assert blocks(transfer.on_timeout()) == [1, 2]
    assert blocks(transfer.on_ack(1)) == [2]             # inside the window: 2 again, never 3
    assert transfer.on_ack(2) == [] and transfer.done


def test_a_source_returning_too_much_is_cut_to_the_block() -> None:
    content = bytes(range(200)) * 5

    def read(offset: int, length: int) -> bytes:
        return content[offset : offset + length + 100]  # ignores length

    transfer = ReadTransfer(read, blksize=256, clock=Clock())
    got = bytearray()
    out = transfer.start()
    while out:
        (datagram,) = out
        packet = decode(bytes(datagram))
        assert isinstance(packet, Data) and len(packet.payload) <= 256
        got += packet.payload
        out = transfer.on_ack(packet.block)
    assert bytes(got) == content


# -- read errors --------------------------------------------------------------------------


class Coded(Exception):
    """A read error with a TFTP code and a message that differs from str()."""

    def __init__(self, code: object, message: str) -> None:
        super().__init__(f"str of {message}")
        self.code = code
        self.message = message


class Plain(Exception):
    """A read error with neither ``code`` nor ``message``."""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Coded(1, "File not found"), Error(1, "File not found")),
        (Coded(8, "eight"), Error(8, "eight")),
        (Coded(9, "nine"), Error(0, "nine")),
        (Coded(99, "ninety-nine"), Error(0, "ninety-nine")),
        (Coded("bogus", "not a number"), Error(0, "not a number")),
        (Plain("no attributes"), Error(0, "no attributes")),
    ],
)
def test_read_error_code_and_message(exc: Exception, expected: Error) -> None:
    def read(offset: int, length: int) -> bytes:
        raise exc

    transfer = ReadTransfer(read, read_errors=(Coded, Plain), clock=Clock())
    (out,) = transfer.start()
    assert decode(bytes(out)) == expected
    assert transfer.failed and transfer.reason == "read_error"
    assert transfer.detail == expected.message


def test_sent_all_is_true_only_for_the_ack_of_everything_in_flight() -> None:
    clock = Clock()
    waiting = ReadTransfer(reader(bytes(5000)), options={"blksize": "512"}, clock=clock)
    assert not waiting.sent_all(0)                       # not started
    waiting.start()
    assert not waiting.sent_all(0)                       # the OACK is out, not DATA
    transfer = ReadTransfer(reader(bytes(512 * 6)), windowsize=4, clock=clock)
    assert blocks(transfer.start()) == [1, 2, 3, 4]
    assert transfer.sent_all(4)
    assert not transfer.sent_all(3) and not transfer.sent_all(5) and not transfer.sent_all(0)
    assert blocks(transfer.on_ack(4)) == [5, 6, 7]       # 7 is the empty last block
    assert transfer.sent_all(7) and not transfer.sent_all(4) and not transfer.sent_all(8)
    transfer.on_ack(7)
    assert transfer.done and not transfer.sent_all(7)


def test_sent_all_is_false_while_a_stall_left_nothing_in_flight() -> None:
    transfer = ReadTransfer(stall_once(2048), clock=Clock())
    transfer.start()
    assert transfer.sent_all(1)
    assert transfer.on_ack(1) == [] and transfer.stalled
    assert not transfer.sent_all(1) and not transfer.sent_all(2)


def test_sent_all_across_the_rollover() -> None:
    transfer = ReadTransfer(reader(bytes(8 * 65540)), blksize=8, clock=Clock())
    out = transfer.start()
    for _ in range(65536):
        (datagram,) = out
        block = int.from_bytes(bytes(datagram[2:4]), "big")
        out = transfer.on_ack(block)
    (datagram,) = out                                    # block 65537 goes out as 1
    assert int.from_bytes(bytes(datagram[2:4]), "big") == 1
    assert transfer.sent_all(1) and not transfer.sent_all(0) and not transfer.sent_all(2)
