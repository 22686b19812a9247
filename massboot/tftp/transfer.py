"""Sans-IO TFTP read transfer: option negotiation, DATA/ACK windowing, retransmission timer.

:class:`ReadTransfer` owns no socket and no timer. The caller feeds it events and sends what
it returns::

    transfer = ReadTransfer(source.read, blksize=1468, windowsize=8, options=oack)
    send(transfer.start())
    while not transfer.finished:
        wait for a datagram until transfer.deadline
        on ACK n        -> send(transfer.on_ack(n))
        on ERROR        -> transfer.on_error(code, message)
        on the deadline -> send(transfer.on_timeout())

Behaviour (RFC 1350, RFC 2347-2349, RFC 7440, RFC 6298):

* Blocks are numbered 1, 2, ... on the wire modulo 2**16: after 65535 comes 0, as tftp-hpa,
  atftp and dnsmasq do, so files of any size can be sent. Internally blocks are counted
  without wrapping and an ACK is mapped back to the window it belongs to.
* The transfer ends with a block shorter than the block size, an empty one when the size is
  an exact multiple. That last block is retransmitted until it is acknowledged.
* An ACK that acknowledges nothing new (a duplicate, an old one, one for a block never sent)
  is ignored: no resend, which avoids the Sorcerer's Apprentice syndrome (RFC 1123 4.2.3.1).
* Windowsize (RFC 7440 section 4): up to ``windowsize`` blocks are in flight. An ACK for the
  last block sent opens the next window; an ACK for a block inside the window means the
  client dropped what followed, so sending restarts right after the acknowledged block
  (go-back-N). A timeout resends from the first unacknowledged block.
* Options: when ``options`` (the OACK contents) is not empty, the OACK is sent first and
  retransmitted until the client answers ACK 0 (RFC 2347). An ERROR from the client ends the
  transfer quietly (no answer), ERROR 8 after the OACK included (a client such as EDK2's PXE
  probes ``tsize`` this way).
* Retransmission timeout is adaptive like TCP's (RFC 6298 section 2): SRTT and RTTVAR from ACK
  samples, Karn's rule (no sample from a block that was retransmitted, section 3), exponential
  back-off on expiry (section 5.5), bounded by ``timeout_min`` and ``timeout_max``; the first
  value is ``min(1.0, timeout_max)``. After ``retries`` consecutive timeouts without progress
  the transfer fails and returns ERROR 0 "Transfer timed out" for the client (RFC 1350 has no
  code for a timeout; code 0 means "see the message").
* Netascii mode converts LF to CR LF and CR to CR NUL on the fly (RFC 764 via RFC 1350). The
  converted size is not known without reading the whole file, so :func:`negotiate` does not
  answer ``tsize`` in netascii mode.
* Memory is O(blksize * windowsize): one reusable buffer per window slot, never the file.

The DATA datagrams returned are ``memoryview`` slices of those slot buffers: send them before
the next call, or copy them with ``bytes()``. OACK and ERROR datagrams are ``bytes``.

A driver that must not wait (a callback on the event loop) can give a *read* function that
raises :class:`~massboot.sources.WouldBlock` when the bytes are not available at once. The
window then stops short of that block, :attr:`ReadTransfer.stalled` is true, and the driver calls
:meth:`ReadTransfer.resume` once *read* can deliver (or feeds the next event, which resumes
too). Nothing else changes: the same blocks go out in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from massboot.sources import WouldBlock
from massboot.tftp.packet import (
    BLKSIZE_DEFAULT,
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    DATA_HEADER,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    parse_blksize,
    parse_timeout,
    parse_tsize,
    parse_windowsize,
)

__all__ = ["Datagram", "Negotiation", "ReadTransfer", "negotiate", "window_memory"]

Datagram = bytes | memoryview
ReadFunc = Callable[[int, int], bytes]

_K = 4  # RFC 6298 section 2: RTO = SRTT + max(G, K * RTTVAR)
_ALPHA = 1 / 8  # RFC 6298 section 2.3
_BETA = 1 / 4  # RFC 6298 section 2.3
_GRANULARITY = 0.001  # G in RFC 6298: the clock is far finer, 1 ms keeps RTO above noise
_INITIAL_RTO = 1.0  # RFC 6298 section 2.1 (capped by timeout_max)
_BLOCK_MOD = 0x10000  # 16-bit block numbers, RFC 1350 section 5
_pack_header = DATA_HEADER.pack_into
_DATA = int(Opcode.DATA)  # a plain int packs twice as fast as the enum member, once per block

# Reasons a transfer failed; short tokens suitable for metrics labels.
REASON_TIMEOUT = "timeout"
REASON_CLIENT_ERROR = "client_error"
REASON_OPTIONS_REFUSED = "options_refused"
REASON_READ_ERROR = "read_error"

_WAIT_OACK, _SENDING, _DONE, _FAILED = range(4)


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The result of option negotiation for one read request.

    Attributes:
        blksize: the block size to use (512 when the client asked for none, RFC 1350).
        windowsize: the window size to use (1 when not negotiated, RFC 7440).
        timeout: the accepted ``timeout`` option in seconds, or ``None``.
        oack: the options to answer in an OACK, in the client's order; empty means no OACK
            and DATA 1 goes out straight away (RFC 2347).
    """

    blksize: int = BLKSIZE_DEFAULT
    windowsize: int = 1
    timeout: int | None = None
    oack: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def memory(self) -> int:
        """The most bytes the window buffers: ``windowsize × (blksize + 4)``."""
        return window_memory(self.blksize, self.windowsize)


def window_memory(blksize: int, windowsize: int) -> int:
    """Bytes a transfer's window slots take at most: one DATA datagram (4-byte header, RFC
    1350 section 5, and a block) per slot."""
    return windowsize * (blksize + DATA_HEADER.size)


def negotiate(
    requested: Mapping[str, str],
    *,
    size: int | None,
    max_blksize: int | None = None,
    max_windowsize: int = 64,
    netascii: bool = False,
    max_timeout: float | None = None,
    memory: int | None = None,
) -> Negotiation:
    """Decide which of a read request's options to accept (RFC 2347).

    Args:
        requested: the client's options, names lower-cased.
        size: the file size for ``tsize`` (RFC 2349), or ``None`` when unknown.
        max_blksize: the largest block size agreed to (``None``: 65464, RFC 2348).
        max_windowsize: the largest window agreed to (RFC 7440).
        netascii: netascii mode; the converted size is unknown, so ``tsize`` is not answered.
        max_timeout: the longest ``timeout`` agreed to (RFC 2349), our own longest wait: a
            client may shorten the retransmission timer, never lengthen it. A larger value is
            left out of the OACK (RFC 2349 allows only an echo of the client's value, not a
            smaller one) and our own timer is kept. ``None``: any valid value.
        memory: the most bytes the window may buffer, ``windowsize × (blksize + 4)`` (README
            ``[tftpd]`` ``transfer_memory``): the window, then the block size, are answered
            smaller to fit (RFC 7440 section 4 and RFC 2348 both let the OACK answer less than
            asked). ``None``: no bound. A bound below one 512-byte block is the caller's to
            refuse: a client without a ``blksize`` option gets 512-byte blocks regardless.

    Returns:
        The values to use and the OACK contents. Invalid and unknown options are ignored.
    """
    blksize, windowsize, timeout = BLKSIZE_DEFAULT, 1, None
    oack: dict[str, str] = {}
    limit_blksize = min(max_blksize or BLKSIZE_MAX, BLKSIZE_MAX)
    for name, value in requested.items():
        if name == "blksize":  # RFC 2348
            number = parse_blksize(value)
            if number is not None:
                blksize = min(number, limit_blksize)
                oack[name] = str(blksize)
        elif name == "tsize":  # RFC 2349: the client sends 0 in a read request
            # an empty file's tsize 0 is left out: curl (every version) rejects "tsize 0" in an OACK
            if parse_tsize(value) is not None and size and not netascii:
                oack[name] = str(size)
        elif name == "timeout":  # RFC 2349: echoed when accepted
            number = parse_timeout(value)
            if number is not None and (max_timeout is None or number <= max_timeout):
                timeout = number
                oack[name] = str(number)
        elif name == "windowsize":  # RFC 7440
            number = parse_windowsize(value)
            if number is not None:
                windowsize = max(1, min(number, max_windowsize))
                oack[name] = str(windowsize)
    if memory is not None and window_memory(blksize, windowsize) > memory:
        if "blksize" in oack and window_memory(blksize, 1) > memory:
            blksize = max(BLKSIZE_MIN, min(blksize, memory - DATA_HEADER.size))
            oack["blksize"] = str(blksize)
        windowsize = max(1, min(windowsize, memory // window_memory(blksize, 1)))
        if "windowsize" in oack:
            oack["windowsize"] = str(windowsize)
    return Negotiation(blksize, windowsize, timeout, oack)


class ReadTransfer:
    """One read transfer as a state machine; see the module docstring.

    Args:
        read: ``read(offset, length) -> bytes``, up to *length* bytes at *offset*, ``b""`` at
            the end of the file; may wait cooperatively; exceptions listed in *read_errors*
            end the transfer with an ERROR carrying their ``code`` (or *error_code*'s answer)
            and ``message``.
        blksize: negotiated block size (8..65464).
        windowsize: negotiated window size (1..65535).
        options: the OACK to send first; empty or ``None`` for none.
        netascii: convert LF -> CR LF and CR -> CR NUL.
        timeout_min: lower bound of the retransmission timeout, seconds.
        timeout_max: upper bound of the retransmission timeout computed from the round trip,
            seconds (a client's accepted ``timeout`` option belongs here).
        backoff_max: upper bound of the timeout as it doubles on consecutive expiries (RFC 6298
            section 5.5); at least *timeout_max*, which it is when ``None``. Longer than a
            client's own retry timer (atftp: 5 s), it lets a client whose ACK was lost resend
            it before the next window comes again.
        retries: consecutive timeouts without progress tolerated before giving up.
        first_timeout: the retransmission timer before the client's first ACK (ACK 0 of the
            OACK, or ACK 1), the same for each resend; ``None``: the ordinary timer. Until that
            ACK the peer is unproven (the RRQ's source address may be forged) and the round
            trip unknown. A client resends its own ACK 0 on its timer (atftp: 5 s) and aborts
            on a second OACK (atftp), so an OACK resent before the client's own timer fires,
            after its ACK 0 was lost, kills the transfer: a timer longer than the clients'
            keeps a resent OACK rare. A DATA 1 (no OACK) is resent no later than the ordinary
            first timer: a duplicate DATA is harmless (RFC 1350). A client that lost the first
            answer repeats its request, which :meth:`on_request_again` answers at once
            (README ``[tftpd]``).
        first_retries: resends before the client's first ACK; one more timer after the last,
            the transfer ends without an ERROR (nothing to tell an unproven peer). ``None``:
            the ordinary rule (*retries*).
        read_errors: exception types from *read* that are the file's fault, not a bug.
        error_code: the TFTP error code for one of those; None reads its ``code`` attribute.
        clock: monotonic clock in seconds (injectable for tests).
    """

    # Slots, not a __dict__: the compiled data path (massboot/tftp/_fastpath.c, README
    # "Performance") loads the lock-step state from these members and writes it back into
    # them before any Python code can look, so whichever path served a block, Python finds
    # the state on_ack_all would have left.
    __slots__ = (
        "_backoff_max", "_base", "_blksize", "_buffered", "_clock", "_datagrams", "_deadline",
        "_eof", "_error_code", "_first_resends", "_first_retries", "_first_timeout",
        "_first_wait", "_high", "_last", "_lengths", "_netascii", "_next", "_oack",
        "_oack_resent", "_oack_sent_at", "_offset", "_pending", "_progress_at", "_read_errors",
        "_resent", "_retries", "_rto", "_rttvar", "_sent_at", "_slots", "_srtt", "_started",
        "_state", "_timeout_max", "_timeout_min", "_timeouts", "_views", "_window",
        "bytes_acked", "bytes_sent", "detail", "first_data_at", "read", "reason",
        "retransmits", "stalled",
    )

    def __init__(
        self,
        read: ReadFunc,
        *,
        blksize: int = BLKSIZE_DEFAULT,
        windowsize: int = 1,
        options: Mapping[str, str] | None = None,
        netascii: bool = False,
        timeout_min: float = 0.02,
        timeout_max: float = 2.0,
        backoff_max: float | None = None,
        retries: int = 5,
        first_timeout: float | None = None,
        first_retries: int | None = None,
        read_errors: tuple[type[BaseException], ...] = (),
        error_code: Callable[[BaseException], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 8 <= blksize <= BLKSIZE_MAX:
            raise ValueError(f"blksize {blksize} outside 8..{BLKSIZE_MAX}")
        if not 1 <= windowsize < _BLOCK_MOD:
            raise ValueError(f"windowsize {windowsize} outside 1..65535")
        if timeout_max <= 0 or timeout_min <= 0:
            raise ValueError("timeouts must be positive")
        self.read = read
        """The read function; a driver may swap it (e.g. for a non-blocking one)."""
        self._blksize = blksize
        self._window = windowsize
        self._oack = OptionAck(dict(options)).encode() if options else None
        self._netascii = netascii
        self._timeout_max = float(timeout_max)
        self._timeout_min = min(float(timeout_min), self._timeout_max)
        self._backoff_max = max(self._timeout_max, float(backoff_max or 0.0))
        self._retries = retries
        if first_timeout is not None and first_timeout <= 0:
            raise ValueError("first_timeout must be positive")
        self._first_timeout = first_timeout
        self._first_retries = first_retries
        self._read_errors = read_errors
        self._error_code = error_code
        self._clock = clock

        self._state = _WAIT_OACK if self._oack else _SENDING
        self._started = False
        self.stalled = False
        """True when *read* raised :class:`WouldBlock`: the window waits for :meth:`resume`."""
        # Window slots: block n lives in slot n % windowsize while unacknowledged.
        self._slots: list[bytearray | None] = [None] * windowsize
        self._views: list[memoryview | None] = [None] * windowsize  # whole slot buffer
        self._datagrams: list[memoryview | None] = [None] * windowsize  # header + payload
        self._lengths = [0] * windowsize  # datagram length (4 + payload)
        self._sent_at = [0.0] * windowsize
        self._resent = [False] * windowsize
        self._base = 1  # first unacknowledged block (unwrapped)
        self._next = 1  # next block to put on the wire
        self._high = 0  # highest block read so far
        self._last: int | None = None  # the final (short) block, once read
        self._offset = 0  # file offset of the next read
        self._pending = bytearray()  # netascii output not yet in a block
        self._eof = False

        self._rto = max(self._timeout_min, min(_INITIAL_RTO, self._timeout_max))
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._timeouts = 0
        self._progress_at = 0.0  # last time the client made progress (or the start)
        self._deadline = float("inf")
        self._oack_sent_at = 0.0
        self._oack_resent = False
        self._first_wait = first_timeout or 0.0  # the pre-ACK timer
        if self._first_wait and self._oack is None:  # only a second OACK hurts a client
            self._first_wait = min(self._first_wait, self._rto)
        self._first_resends = 0
        self._buffered = 0

        self.bytes_sent = 0
        """Payload bytes of distinct blocks sent (retransmissions not counted)."""
        self.bytes_acked = 0
        """Payload bytes the client acknowledged."""
        self.retransmits = 0
        """Datagrams (DATA or OACK) sent again."""
        self.first_data_at: float | None = None
        """Clock time when DATA 1 was first handed out, or ``None``."""
        self.reason: str | None = None
        """Why the transfer failed (``timeout``, ``client_error``, ``options_refused``,
        ``read_error`` or the reason given to :meth:`abort`); ``None`` otherwise."""
        self.detail = ""
        """Human-readable detail of the failure."""

    # -- state ---------------------------------------------------------------------------

    @property
    def blksize(self) -> int:
        """The block size in use."""
        return self._blksize

    @property
    def windowsize(self) -> int:
        """The window size in use."""
        return self._window

    @property
    def done(self) -> bool:
        """True once the client acknowledged the last block."""
        return self._state == _DONE

    @property
    def failed(self) -> bool:
        """True once the transfer ended without the last ACK."""
        return self._state == _FAILED

    @property
    def finished(self) -> bool:
        """True once the transfer is over, either way."""
        return self._state >= _DONE

    @property
    def timeout(self) -> float:
        """The current retransmission timeout (RTO), seconds."""
        return self._rto

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time, or ``None`` before the first sample."""
        return self._srtt

    @property
    def deadline(self) -> float:
        """Clock time at which :meth:`on_timeout` is due (``inf`` when finished)."""
        return self._deadline if self._state < _DONE else float("inf")

    @property
    def blocks_acked(self) -> int:
        """Distinct DATA blocks the client acknowledged (the last, short one included)."""
        return self._base - 1

    @property
    def blocks_sent(self) -> int:
        """Distinct DATA blocks put on the wire at least once (resends are in ``retransmits``)."""
        return self._high

    @property
    def proven(self) -> bool:
        """True once the client acknowledged something (ACK 0 of the OACK, or a DATA block):
        it receives at the address the request came from."""
        return self._state != _WAIT_OACK if self._oack is not None else self._base > 1

    @property
    def buffered(self) -> int:
        """Bytes of window slot buffers allocated (they are allocated on first use)."""
        return self._buffered

    @property
    def read_offset(self) -> int:
        """File offset of the next read (what a stalled *read* was asked for)."""
        return self._offset

    # -- events --------------------------------------------------------------------------

    def start(self) -> list[Datagram]:
        """Begin: return the OACK, or the first window of DATA."""
        if self._started:
            raise RuntimeError("transfer already started")
        self._started = True
        now = self._progress_at = self._clock()
        if self._oack is not None:
            self._oack_sent_at = now
            self._deadline = now + (self._first_wait or self._rto)
            return [self._oack]
        out = self._fill(now)
        if self._first_wait and out:
            self._deadline = now + self._first_wait
        return out

    def on_ack(self, block: int) -> list[Datagram]:
        """Handle ACK *block* (the 16-bit wire number); return what to send next."""
        if self._state != _SENDING:
            if self._state != _WAIT_OACK or block != 0:
                return []
            now = self._clock()
            if not self._oack_resent:
                self._sample(now - self._oack_sent_at)
            self._state = _SENDING
            self._timeouts = 0
            self._progress_at = now
            return self._fill(now)
        base = self._base
        delta = (block - base + 1) & 0xFFFF
        acked = base - 1 + delta
        if delta == 0 or acked > self._high:
            return []  # duplicate, old, or for a block never sent: no resend
        now = self._clock()
        window = self._window
        slot = acked % window
        if not self._resent[slot]:  # Karn's rule, RFC 6298 section 3
            self._sample(now - self._sent_at[slot])
        self._base = acked + 1
        self._timeouts = 0
        self._progress_at = now
        if acked == self._last:
            # every block before the last one is full
            self.bytes_acked += (delta - 1) * self._blksize + self._lengths[slot] - 4
            self._state = _DONE
            return []
        self.bytes_acked += delta * self._blksize
        if acked < self._next - 1:
            # RFC 7440 section 4: an ACK inside the window means the client dropped the
            # blocks after it; go back and send the window from the block after it.
            self._next = acked + 1
        return self._fill(now)

    def on_acks(self, blocks: list[int]) -> list[Datagram]:
        """Handle ACKs that arrived together (in this order); return what to send next.

        The same as feeding them to :meth:`on_ack` one by one, except that only the ACK that
        acknowledges the most is acted on: what an earlier one would have sent is not sent (a
        go-back for a gap that a later ACK shows was filled), and ACKs for blocks that were not
        yet sent when the batch arrived are ignored.
        """
        if self._state != _SENDING:
            # before ACK 0 no DATA was out: the others of the batch acknowledge nothing
            return self.on_ack(0) if 0 in blocks else []
        base_minus_1 = self._base - 1
        high = self._high
        best = -1
        best_acked = base_minus_1
        for block in blocks:
            acked = base_minus_1 + ((block - base_minus_1) & 0xFFFF)
            if best_acked < acked <= high:
                best, best_acked = block, acked
        if best < 0:
            return []
        return self.on_ack(best)

    def sent_all(self, block: int) -> bool:
        """True when ACK *block* acknowledges every block sent so far (nothing is newer)."""
        return self._state == _SENDING and (block - self._next + 1) & 0xFFFF == 0 \
            and self._next > self._base

    def on_ack_all(self, block: int) -> list[Datagram] | None:
        """The fast path of :meth:`on_ack` for an ACK that acknowledges all that was sent.

        Returns ``None`` (and changes nothing) when ACK *block* is not that ACK, and the
        caller falls back to :meth:`on_ack`; otherwise exactly what :meth:`on_ack` would have
        returned. In lock-step (windowsize 1, octet) the next block is read and stored here,
        without the general window loop: this runs once per block in a PXE storm.
        """
        if self._state != _SENDING:
            return None
        number = self._next
        base = self._base
        if (block - number + 1) & 0xFFFF or number <= base:
            return None
        acked = number - 1
        now = self._clock()
        window = self._window
        slot = acked % window
        if not self._resent[slot]:  # Karn's rule, RFC 6298 section 3
            srtt = self._srtt
            if srtt is None:
                self._sample(now - self._sent_at[slot])
            else:  # _sample() inline: the lock-step fast path runs this for every ACK
                rtt = now - self._sent_at[slot]
                if rtt < 0.0:
                    rtt = 0.0
                err = srtt - rtt
                rttvar = self._rttvar = 0.75 * self._rttvar + 0.25 * (err if err >= 0.0 else -err)
                srtt = self._srtt = 0.875 * srtt + 0.125 * rtt
                var = _K * rttvar
                rto = srtt + (var if var > _GRANULARITY else _GRANULARITY)
                self._rto = (self._timeout_min if rto < self._timeout_min else
                             self._timeout_max if rto > self._timeout_max else rto)
        self._base = number
        self._timeouts = 0
        self._progress_at = now
        blksize = self._blksize
        if acked == self._last:
            self.bytes_acked += (acked - base) * blksize + self._lengths[slot] - 4
            self._state = _DONE
            return []
        self.bytes_acked += (number - base) * blksize
        if window != 1 or self._netascii or self._eof or number <= self._high:
            return self._fill(now)
        # lock-step: block `number` is new and goes in the only slot, as _fill() would do
        try:
            chunk = self.read(self._offset, blksize)
        except WouldBlock:
            self.stalled = True
            return []
        except self._read_errors:
            return self._fill(now)  # reads again and reports the error the usual way
        if len(chunk) != blksize:
            return self._fill(now)  # a short read (the end, or a source giving less): rare
        buf = self._slots[0]
        _pack_header(buf, 0, _DATA, number & 0xFFFF)  # type: ignore[arg-type]
        buf[4:] = chunk  # type: ignore[index]
        self._resent[0] = False
        self._high = number
        self._offset += blksize
        self.bytes_sent += blksize
        self._sent_at[0] = now
        self._next = number + 1
        self.stalled = False
        self._deadline = now + self._rto
        return [self._datagrams[0]]  # type: ignore[list-item]

    def on_error(self, code: int, message: str = "") -> None:
        """The client sent ERROR: end the transfer quietly (no ERROR is sent back)."""
        if self.finished:
            return
        if self._state == _WAIT_OACK and code == ErrorCode.OPTION_REFUSED:
            self._fail(REASON_OPTIONS_REFUSED, f"client refused the options: {message}")
        else:
            self._fail(REASON_CLIENT_ERROR, f"client error {code}: {message}")

    def on_timeout(self) -> list[Datagram]:
        """The deadline passed without progress: retransmit, or give up after ``retries``."""
        if not self._started or self._state >= _DONE:
            return []
        self._timeouts += 1
        if self._first_retries is not None and not self.proven:
            return self._unproven_timeout()
        # Give up after `retries` resends without progress AND `timeout_max × retries` seconds of
        # silence: on a fast LAN the adaptive timer is a few ms, and a client that pauses for a
        # second (a busy disk, a loaded host) must not lose its transfer for it.
        now = self._clock()
        silent = now - self._progress_at
        if self._timeouts > self._retries and silent >= self._timeout_max * self._retries:
            self._fail(REASON_TIMEOUT, f"no ACK after {self._timeouts - 1} retransmissions "
                                       f"and {silent:.1f}s")
            return [Error(ErrorCode.NOT_DEFINED, "Transfer timed out").encode()]
        self._rto = min(self._rto * 2, self._backoff_max)  # back off, RFC 6298 section 5.5
        if self._state == _WAIT_OACK:
            self._oack_resent = True
            self.retransmits += 1
            self._oack_sent_at = now
            self._deadline = now + self._rto
            return [self._oack]  # type: ignore[list-item]
        self._next = self._base
        return self._fill(now)

    def on_request_again(self) -> list[Datagram]:
        """The client sent its request again before any ACK: it lost our first answer (a PXE
        ROM retransmits its RRQ), so resend it now. The resend counts against
        ``first_retries`` like the timer's, so a flood of forged duplicates gets no more than
        one request does. Nothing once the client has ACKed, or without ``first_retries``."""
        if (self._first_retries is None or not self._started or self._state >= _DONE
                or self.proven or self._first_resends >= self._first_retries):
            return []
        return self._resend_first(self._clock())

    def resume(self) -> list[Datagram]:
        """After a :class:`WouldBlock` from *read*: go on filling the window; may stall again."""
        if not self.stalled or self._state != _SENDING:
            return []
        return self._fill(self._clock())

    def abort(self, code: int = ErrorCode.NOT_DEFINED, message: str = "Internal error",
              reason: str = "internal_error") -> bytes:
        """End the transfer from outside (shutdown, a bug); return the ERROR for the client."""
        if not self.finished:
            self._fail(reason, message)
        return Error(code, message).encode()

    # -- internals -----------------------------------------------------------------------

    def _unproven_timeout(self) -> list[Datagram]:
        """No ACK yet: resend the OACK (or the first window) on the pre-ACK timer,
        at most ``first_retries`` times, then end quietly. Bounds a forged RRQ to
        ``1 + first_retries`` datagrams of the first answer (README ``[tftpd]``)."""
        now = self._clock()
        if self._first_resends >= self._first_retries:  # type: ignore[operator]
            self._fail(REASON_TIMEOUT, f"no ACK to the first answer after {self._first_resends} "
                                       f"resends and {now - self._progress_at:.1f}s")
            return []
        return self._resend_first(now)

    def _resend_first(self, now: float) -> list[Datagram]:
        self._first_resends += 1
        # not doubled (RFC 6298 section 5.5 backs off from 1 s): the timer is already long
        # and there are few resends; the client's own retransmissions are expected first
        wait = self._first_wait or self._rto
        if self._state == _WAIT_OACK:
            self.retransmits += 1
            self._oack_resent = True
            self._oack_sent_at = now
            out: list[Datagram] = [self._oack]  # type: ignore[list-item]
        else:
            self._next = self._base
            out = self._fill(now)
        self._deadline = now + wait
        return out

    def _fail(self, reason: str, detail: str) -> None:
        self._state = _FAILED
        self.stalled = False
        self.reason = reason
        self.detail = detail

    def _sample(self, rtt: float) -> None:
        """Update SRTT/RTTVAR/RTO from one round-trip sample (RFC 6298 section 2)."""
        rtt = max(rtt, 0.0)
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = (1 - _BETA) * self._rttvar + _BETA * abs(self._srtt - rtt)
            self._srtt = (1 - _ALPHA) * self._srtt + _ALPHA * rtt
        rto = self._srtt + max(_GRANULARITY, _K * self._rttvar)
        self._rto = max(self._timeout_min, min(rto, self._timeout_max))

    def _fill(self, now: float) -> list[Datagram]:
        """Send blocks from ``_next`` to the end of the window; new ones are read."""
        self.stalled = False
        window = self._window
        end = self._base + window - 1
        last = self._last
        if last is not None and last < end:
            end = last
        number = self._next
        out: list[Datagram] = []
        datagrams, sent_at = self._datagrams, self._sent_at
        while number <= end:
            slot = number % window
            if number <= self._high:
                self._resent[slot] = True
                self.retransmits += 1
            else:
                try:
                    payload = self._read_netascii() if self._netascii else self._read_octet()
                except WouldBlock:
                    self.stalled = True
                    break
                except self._read_errors as exc:
                    if self._error_code is not None:
                        code = self._error_code(exc)
                    else:
                        code = getattr(exc, "code", ErrorCode.NOT_DEFINED)
                    message = str(getattr(exc, "message", exc))
                    if not isinstance(code, int) or not 0 <= code <= 8:
                        code = ErrorCode.NOT_DEFINED
                    self._next = number
                    self._fail(REASON_READ_ERROR, message)
                    return [Error(code, message).encode()]
                self._store(slot, number, payload)
                if len(payload) < self._blksize:
                    self._last = end = number
            out.append(datagrams[slot])  # type: ignore[arg-type]
            sent_at[slot] = now
            number += 1
        self._next = number
        if out:
            if self.first_data_at is None:
                self.first_data_at = now
            self._deadline = now + self._rto
        elif not self.stalled:
            self._deadline = now + self._rto
        return out

    def _store(self, slot: int, number: int, payload: bytes) -> None:
        buf = self._slots[slot]
        if buf is None:  # allocated on first use: a small file needs few slots
            buf = bytearray(4 + self._blksize)
            self._buffered += len(buf)
            self._slots[slot] = buf
            self._views[slot] = memoryview(buf)
        size = len(payload)
        _pack_header(buf, 0, _DATA, number & 0xFFFF)
        buf[4 : 4 + size] = payload
        if self._lengths[slot] != 4 + size or self._datagrams[slot] is None:
            self._lengths[slot] = 4 + size
            self._datagrams[slot] = self._views[slot][: 4 + size]  # type: ignore[index]
        self._resent[slot] = False
        self._high = number
        self.bytes_sent += size

    def _read_octet(self) -> bytes:
        """Read one block: up to blksize bytes, short only at the end of the file."""
        want = self._blksize
        if self._eof:
            return b""
        chunk = self.read(self._offset, want)
        if len(chunk) == want:
            self._offset += want
            return chunk
        if not chunk:
            self._eof = True
            return b""
        if len(chunk) < want:
            parts = bytearray(chunk)
            while len(parts) < want:
                more = self.read(self._offset + len(parts), want - len(parts))
                if not more:
                    self._eof = True
                    break
                parts += more
            chunk = bytes(parts)
        elif len(chunk) > want:  # a source that returns too much must not corrupt a block
            chunk = chunk[:want]
        self._offset += len(chunk)
        return chunk

    def _read_netascii(self) -> bytes:
        """Read one block of netascii: LF -> CR LF, CR -> CR NUL (RFC 764)."""
        want = self._blksize
        pending = self._pending
        while len(pending) < want and not self._eof:
            raw = self.read(self._offset, want)
            if not raw:
                self._eof = True
                break
            self._offset += len(raw)
            pending += bytes(raw).replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        chunk = bytes(pending[:want])
        del pending[:want]
        return chunk
