"""Sans-IO TFTP read client: one RRQ to its end, as a state machine with no socket and no timer.

Shared by the rack simulator (``bench/sim/client.py``, gevent watchers) and the TFTP load
generator (``bench/tftp_client.py``, forked epoll loops): each driver owns its sockets and its
clock, and feeds this core what it receives::

    core = ReadClient("pxelinux.0", {"tsize": "0", "blksize": "1432"}, waits=(1.0, 2.0, 4.0))
    send(core.start(now), server)
    while not core.finished:
        wait for a datagram until core.deadline
        on a datagram (from the server's TID) -> reply = core.on_packet(view, n, now)
        on the deadline                        -> reply = core.on_timeout(now)
        send reply (when not None) to the server's TID, or to its port 69 while not core.answered

Behaviour (RFC 1350, RFC 2347-2349, RFC 7440):

* The RRQ carries the options given, in their order (RFC 2347). An OACK is answered with
  ACK 0 (again, when the server repeats it because our ACK 0 was lost); ``blksize``,
  ``windowsize`` and ``tsize`` are taken from it. A server that ignores the options answers
  DATA 1 straight away, which is accepted (RFC 2347, "Negotiation Protocol"), unless
  ``require_oack``.
* DATA blocks are numbered modulo 2**16 on the wire: after 65535 comes 0 (as massboot,
  tftp-hpa, atftp and dnsmasq send it). Blocks are counted here without wrapping.
* In-order DATA is acknowledged every ``windowsize`` blocks and at the last (short) block
  (RFC 7440 section 4; lock-step, every block, for a window of 1). A repeat of the block
  just before the expected one means our ACK was lost: it is acknowledged again. A block
  ahead of the expected one with a window above 1 is a gap: the last block received in order
  is acknowledged, once per gap (RFC 7440 section 4), so that the rest of a broken window is
  not a storm of ACKs. Anything else out of order is counted and ignored.
* The waits (seconds, one per attempt) are the firmware's retransmission schedule: the
  timer is reset on progress (a DATA in order, an OACK); when it expires the RRQ (nothing
  heard yet) or the ACK of the last block in order is sent again; when the waits are used up
  the transfer fails (``timeout``).
* ERROR ends the transfer (``error``, with ``error_code`` and ``error_message``).
* Checked at the end: the size received against the OACK's ``tsize`` (RFC 2349) and against
  ``size`` when given; the sha256 when ``sha256`` is given. ``size`` is also checked against
  the OACK's ``tsize`` as soon as it arrives.
* After the last block, a repeat of it (our last ACK was lost) is acknowledged again, so a
  driver that keeps its socket a little while can dally (RFC 1350 section 6).

Failure reasons (:attr:`ReadClient.reason`): ``timeout``, ``error``, ``bad_oack``,
``blksize`` and ``no_oack`` and ``opcode`` (only with ``require_oack``), ``tsize``, ``size``,
``sha256``; :attr:`ReadClient.detail` says more.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence

from massboot.tftp import packet as tftp

__all__ = ["ACKS", "DONE", "FAILED", "RUNNING", "WAITING", "ReadClient", "unknown_tid_error"]

OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 3, 4, 5, 6
_HEADER = struct.Struct("!HH")

#: ACK n for every 16-bit block number: no struct call per ACK in a hot loop.
ACKS: tuple[bytes, ...] = tuple(_HEADER.pack(OP_ACK, n) for n in range(0x10000))

#: States (:attr:`ReadClient.state`), in order: ``state >= DONE`` means finished.
WAITING, RUNNING, DONE, FAILED = range(4)

Buffer = bytes | bytearray | memoryview


def unknown_tid_error() -> bytes:
    """ERROR 5 for a datagram from a TID that is not this transfer's (RFC 1350 section 4)."""
    return tftp.Error(tftp.ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode()


class ReadClient:
    """One read transfer, client side; see the module docstring.

    Args:
        filename: the name asked for.
        options: RRQ options in the order they are sent (names as sent, values as strings).
        waits: seconds to wait for the next packet, one entry per attempt (at least one).
        mode: the transfer mode (``octet``).
        size: the expected size, checked against ``tsize`` and at the end; None: not checked.
        sha256: the expected hex digest, checked at the end; None: not computed.
        keep: keep up to this many bytes of the content (:attr:`content`); 0: none.
        require_oack: the first answer must be an OACK agreeing to the ``blksize`` asked (a
            load generator measuring a server's option path); otherwise DATA 1 is accepted.

    Attributes:
        state: ``WAITING`` (RRQ sent), ``RUNNING``, ``DONE`` or ``FAILED``.
        deadline: the driver's clock time at which :meth:`on_timeout` is due.
        received: payload bytes received in order.
        blksize, windowsize, tsize: as agreed (512, 1 and None without an OACK).
        resends: RRQs and ACKs sent again on a timeout.
        duplicates: DATA out of order or repeated (the server's retransmissions as seen here).
        oack_repeats: OACKs received after the first.
        reason, detail: why the transfer failed (None and ``""`` otherwise).
        error_code, error_message: the server's ERROR, when it sent one.
        expected: the next block wanted, unwrapped (1 before any DATA).
    """

    def __init__(self, filename: str, options: Mapping[str, str] | None = None, *,
                 waits: Sequence[float], mode: str = "octet", size: int | None = None,
                 sha256: str | None = None, keep: int = 0, require_oack: bool = False) -> None:
        if not waits:
            raise ValueError("waits must not be empty")
        self.options = dict(options or {})
        self.rrq = tftp.Request(tftp.Opcode.RRQ, filename, mode, self.options).encode()
        self._waits = tuple(waits)
        self._wait0 = self._waits[0]
        self._size = size
        self._sha256 = sha256
        self._hasher = hashlib.sha256() if sha256 is not None else None
        self._keep = keep
        self._content = bytearray() if keep else None
        self._require_oack = require_oack
        self.state = WAITING
        self.deadline = float("inf")
        self.received = 0
        self.blksize = tftp.BLKSIZE_DEFAULT
        self.windowsize = 1
        self.tsize: int | None = None
        self.resends = 0
        self.duplicates = 0
        self.oack_repeats = 0
        self.reason: str | None = None
        self.detail = ""
        self.error_code: int | None = None
        self.error_message = ""
        self.expected = 1  # next block wanted, unwrapped
        self._since_ack = 0  # in-order blocks since the last ACK
        self._gap_acked = False  # a gap was acknowledged since the last block in order
        self._attempt = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def answered(self) -> bool:
        """True once the server answered (replies then go to its TID, not to port 69)."""
        return self.state != WAITING

    @property
    def content(self) -> bytes:
        """The first ``keep`` bytes (at least) of what was received."""
        return bytes(self._content) if self._content is not None else b""

    @property
    def finished(self) -> bool:
        """True once the transfer is over, either way (``state`` says which: DONE or FAILED)."""
        return self.state >= DONE

    # -- events --------------------------------------------------------------------------

    def start(self, now: float) -> bytes:
        """The RRQ to send to the server's port; the timer starts."""
        self.deadline = now + self._wait0
        return self.rrq

    def on_timeout(self, now: float) -> bytes | None:
        """The deadline passed: what to send again, or None when the waits are used up (failed)."""
        if self.state >= DONE:
            return None
        self._attempt += 1
        if self._attempt >= len(self._waits):
            self._fail("timeout", f"at block {self.expected}")
            return None
        self.resends += 1
        self.deadline = now + self._waits[self._attempt]
        if self.state == WAITING:
            return self.rrq
        return ACKS[(self.expected - 1) & 0xFFFF]

    def on_packet(self, data: Buffer, n: int, now: float) -> bytes | None:
        """A datagram of ``n`` bytes in ``data`` from the server's TID; returns what to send.

        Pass a memoryview over the receive buffer: the payload is then never copied unless
        it is hashed or kept.
        """
        if n < 4:
            return None
        opcode, block = _HEADER.unpack_from(data)
        state = self.state
        if state != RUNNING:
            if state == WAITING:
                return self._first(opcode, block, data, n, now)
            if state == DONE and opcode == OP_DATA and block == (self.expected - 1) & 0xFFFF:
                return ACKS[block]  # our last ACK was lost: dally
            return None
        if opcode == OP_DATA:
            expected = self.expected
            if block == expected & 0xFFFF:
                payload = n - 4
                self.received += payload
                if self._hasher is not None:
                    self._hasher.update(data[4:n])
                if self._content is not None and len(self._content) < self._keep:
                    self._content += data[4:n]
                self.expected = expected + 1
                self._gap_acked = False
                self._attempt = 0
                self.deadline = now + self._wait0
                if payload < self.blksize:
                    self._finish()
                    return ACKS[block]
                since = self._since_ack + 1
                if since >= self.windowsize:
                    self._since_ack = 0
                    return ACKS[block]
                self._since_ack = since
                return None
            self.duplicates += 1
            ahead = (block - expected) & 0xFFFF < 0x8000
            if block == (expected - 1) & 0xFFFF or (ahead and self.windowsize > 1 and not self._gap_acked):
                # Our ACK was lost (the server resent its last block), or a window arrived with
                # a gap (RFC 7440: acknowledge the last block received in order).
                self._since_ack = 0
                self._gap_acked = ahead
                return ACKS[(expected - 1) & 0xFFFF]
            return None
        if opcode == OP_OACK:
            if self.expected != 1:
                return None
            self.oack_repeats += 1  # our ACK 0 was lost or late
            self._attempt = 0
            self.deadline = now + self._wait0
            return ACKS[0]
        if opcode == OP_ERROR:
            self._server_error(block, data, n)
        return None

    # -- internals -----------------------------------------------------------------------

    def _first(self, opcode: int, block: int, data: Buffer, n: int, now: float) -> bytes | None:
        """The server's first answer."""
        if opcode == OP_ERROR:
            self.state = RUNNING
            self._server_error(block, data, n)
            return None
        if opcode == OP_OACK:
            self.state = RUNNING
            return self._oack(bytes(data[:n]), now)
        if self._require_oack:
            if opcode == OP_DATA:
                self._fail("no_oack", "DATA 1 without an OACK: the server ignored the options")
            else:
                self._fail("opcode", str(opcode))
            return None
        self.state = RUNNING
        return self.on_packet(data, n, now)

    def _oack(self, datagram: bytes, now: float) -> bytes | None:
        """RFC 2347: take the agreed options, answer ACK 0."""
        try:
            oack = tftp.decode(datagram)
            if not isinstance(oack, tftp.OptionAck):
                raise tftp.PacketError("not an OACK")
            options = oack.options
            blksize = int(options.get("blksize", self.blksize))
            windowsize = int(options.get("windowsize", self.windowsize))
            tsize = int(options["tsize"]) if "tsize" in options else None
        except (tftp.PacketError, ValueError) as exc:
            self._fail("bad_oack", str(exc))
            return None
        if self._require_oack and str(blksize) != self.options.get("blksize", str(tftp.BLKSIZE_DEFAULT)):
            self._fail("blksize", options.get("blksize", "None"))
            return None
        if self._size is not None and tsize is not None and tsize != self._size:
            self._fail("tsize", str(tsize))
            return None
        self.blksize, self.windowsize, self.tsize = blksize, max(1, windowsize), tsize
        self._attempt = 0
        self.deadline = now + self._wait0
        return ACKS[0]

    def _server_error(self, code: int, data: Buffer, n: int) -> None:
        self.error_code = code
        self.error_message = bytes(data[4:n]).split(b"\0", 1)[0].decode("latin-1")
        self._fail("error", f"{code} {self.error_message}")

    def _finish(self) -> None:
        """The last block arrived: check what was received."""
        received = self.received
        if self.tsize is not None and self.tsize != received:
            self._fail("size", f"tsize {self.tsize}, received {received}")
        elif self._size is not None and self._size != received:
            self._fail("size", f"expected {self._size}, received {received}")
        elif self._hasher is not None and self._hasher.hexdigest() != self._sha256:
            self._fail("sha256", "content differs")
        else:
            self.state = DONE
            self.deadline = float("inf")

    def _fail(self, reason: str, detail: str) -> None:
        self.state = FAILED
        self.reason = reason
        self.detail = detail
        self.deadline = float("inf")
