"""bench/tftpcore.py: the sans-IO TFTP read client of the simulator and the load generator.

No sockets: datagrams are built with massboot's codec, or come from massboot's own sans-IO
server transfer (massboot.tftp.transfer) wired straight to the client.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from bench.tftpcore import ACKS, DONE, FAILED, RUNNING, WAITING, ReadClient, unknown_tid_error
from massboot.tftp.packet import Ack, Data, Error, ErrorCode, Opcode, OptionAck, Request, decode
from massboot.tftp.transfer import ReadTransfer, negotiate

WAITS = (1.0, 2.0, 4.0)


def data(block: int, payload: bytes) -> bytes:
    return Data(block & 0xFFFF, payload).encode()


def feed(client: ReadClient, datagram: bytes, now: float = 0.0) -> bytes | None:
    return client.on_packet(memoryview(datagram), len(datagram), now)


def ack_of(reply: bytes | None) -> int | None:
    if reply is None:
        return None
    packet = decode(reply)
    assert isinstance(packet, Ack)
    return packet.block


def test_rrq_carries_the_options_in_order():
    client = ReadClient("pxelinux.0", {"tsize": "0", "blksize": "1432", "windowsize": "4"}, waits=WAITS)
    rrq = client.start(10.0)
    assert rrq == (b"\0\1pxelinux.0\0octet\0tsize\0" + b"0\0blksize\0" + b"1432\0windowsize\0" + b"4\0")
    assert decode(rrq) == Request(Opcode.RRQ, "pxelinux.0", "octet",
                                  {"tsize": "0", "blksize": "1432", "windowsize": "4"})
    assert client.state == WAITING and not client.answered and client.deadline == 11.0


def test_oack_is_answered_with_ack_0_and_sets_the_options():
    client = ReadClient("f", {"tsize": "0", "blksize": "1000", "windowsize": "4"}, waits=WAITS)
    client.start(0.0)
    reply = feed(client, OptionAck({"blksize": "800", "tsize": "2000", "windowsize": "2"}).encode(), 0.5)
    assert ack_of(reply) == 0
    assert (client.blksize, client.windowsize, client.tsize) == (800, 2, 2000)
    assert client.state == RUNNING and client.answered and client.deadline == 1.5
    # our ACK 0 was lost: the server repeats its OACK, we answer again
    assert ack_of(feed(client, OptionAck({"blksize": "800"}).encode())) == 0
    assert client.oack_repeats == 1
    assert feed(client, data(1, b"a" * 800)) is None  # window of 2: no ACK yet
    assert ack_of(feed(client, data(2, b"b" * 800))) == 2
    assert feed(client, OptionAck({"blksize": "800"}).encode()) is None  # too late: ignored
    assert ack_of(feed(client, data(3, b"c" * 400))) == 3
    assert client.state == DONE and client.received == 2000 and client.deadline == float("inf")


def test_no_options_rfc1350_lock_step_and_size_checked_against_tsize():
    client = ReadClient("f", waits=WAITS, keep=1 << 20)
    client.start(0.0)
    assert ack_of(feed(client, data(1, b"x" * 512))) == 1
    assert ack_of(feed(client, data(2, b"y" * 10))) == 2
    assert client.state == DONE and client.content == b"x" * 512 + b"y" * 10

    short = ReadClient("f", {"tsize": "0"}, waits=WAITS)
    short.start(0.0)
    feed(short, OptionAck({"tsize": "1000"}).encode())
    assert ack_of(feed(short, data(1, b"z" * 100))) == 1  # the last ACK still goes out
    assert short.state == FAILED and short.reason == "size" and short.detail == "tsize 1000, received 100"


def test_rollover_past_65535_with_a_window():
    """A file of more than 65535 blocks: block 65535 is followed by block 0 (then 1...)."""
    blksize, window, total_blocks = 8, 4, 70_001
    content = random.Random(1).randbytes(blksize * (total_blocks - 1) + 3)
    client = ReadClient("big", {"blksize": str(blksize), "windowsize": str(window)}, waits=WAITS,
                        sha256=hashlib.sha256(content).hexdigest(), size=len(content))
    client.start(0.0)
    assert ack_of(feed(client, OptionAck({"blksize": "8", "windowsize": "4"}).encode())) == 0
    acks = []
    for number in range(1, total_blocks + 1):
        reply = feed(client, data(number, content[(number - 1) * blksize:number * blksize]))
        if reply is not None:
            acks.append(ack_of(reply))
    assert client.state == DONE, (client.reason, client.detail)
    assert client.received == len(content) and client.duplicates == 0
    assert acks[-1] == total_blocks & 0xFFFF
    wrap = acks.index(65532)  # windows of 4: 65532, then 65536 which is 0 on the wire, then 4
    assert acks[wrap:wrap + 3] == [65532, 0, 4]


def test_duplicate_of_the_previous_block_is_acked_again_and_old_ones_ignored():
    client = ReadClient("f", waits=WAITS)
    client.start(0.0)
    feed(client, data(1, b"a" * 512))
    feed(client, data(2, b"b" * 512))
    assert ack_of(feed(client, data(2, b"b" * 512))) == 2  # our ACK 2 was lost
    assert feed(client, data(1, b"a" * 512)) is None  # older: counted, ignored
    assert client.duplicates == 2 and client.received == 1024 and client.expected == 3


def test_gap_in_a_window_acks_the_last_block_in_order_once():
    client = ReadClient("f", {"windowsize": "4"}, waits=WAITS)
    client.start(0.0)
    feed(client, OptionAck({"windowsize": "4"}).encode())
    assert feed(client, data(1, b"a" * 512)) is None
    # block 2 lost: 3 and 4 arrive; only the first of them is answered, with ACK 1 (RFC 7440)
    assert ack_of(feed(client, data(3, b"c" * 512))) == 1
    assert feed(client, data(4, b"d" * 512)) is None
    assert client.duplicates == 2
    # the server goes back to block 2: a window counts from there
    for number in (2, 3, 4):
        assert feed(client, data(number, b"x" * 512)) is None
    assert ack_of(feed(client, data(5, b"e" * 512))) == 5
    assert ack_of(feed(client, data(6, b""))) == 6 and client.state == DONE
    assert client.received == 5 * 512


def test_lock_step_ignores_a_block_ahead():
    client = ReadClient("f", waits=WAITS)
    client.start(0.0)
    assert feed(client, data(3, b"c" * 512)) is None
    assert client.duplicates == 1 and client.expected == 1


def test_error_ends_the_transfer():
    client = ReadClient("missing", {"tsize": "0"}, waits=WAITS)
    client.start(0.0)
    assert feed(client, Error(ErrorCode.FILE_NOT_FOUND, "File not found").encode()) is None
    assert client.state == FAILED and client.reason == "error"
    assert (client.error_code, client.error_message) == (1, "File not found")
    assert client.on_timeout(100.0) is None and client.resends == 0

    midway = ReadClient("f", waits=WAITS)
    midway.start(0.0)
    feed(midway, data(1, b"a" * 512))
    feed(midway, Error(ErrorCode.NOT_DEFINED, "Transfer timed out").encode())
    assert midway.state == FAILED and midway.error_code == 0 and midway.received == 512


def test_timeouts_resend_the_rrq_then_the_last_ack_and_give_up():
    client = ReadClient("f", waits=(1.0, 2.0, 4.0))
    rrq = client.start(0.0)
    assert client.on_timeout(1.0) == rrq and client.deadline == 3.0
    feed(client, data(1, b"a" * 512), 3.5)  # progress: the waits start again
    assert client.deadline == 4.5
    assert client.on_timeout(4.5) == ACKS[1] and client.deadline == 6.5
    assert client.on_timeout(6.5) == ACKS[1] and client.deadline == 10.5
    assert client.on_timeout(10.5) is None
    assert client.state == FAILED and client.reason == "timeout" and client.detail == "at block 2"
    assert client.resends == 3


def test_finished_client_dallies_on_a_repeated_last_block():
    client = ReadClient("f", waits=WAITS)
    client.start(0.0)
    last = data(1, b"short")
    assert ack_of(feed(client, last)) == 1 and client.state == DONE
    assert ack_of(feed(client, last)) == 1  # our last ACK was lost
    assert feed(client, data(7, b"")) is None and client.state == DONE


def test_require_oack_checks_blksize_tsize_and_refuses_plain_data():
    def strict(**kwargs: object) -> ReadClient:
        client = ReadClient("f", {"blksize": "1428", "tsize": "0"}, waits=WAITS, require_oack=True,
                            **kwargs)  # type: ignore[arg-type]
        client.start(0.0)
        return client

    client = strict()
    feed(client, data(1, b"x" * 512))
    assert client.state == FAILED and client.reason == "no_oack"
    client = strict()
    feed(client, OptionAck({"blksize": "1024", "tsize": "5"}).encode())
    assert client.reason == "blksize" and client.detail == "1024"
    client = strict(size=6)
    feed(client, OptionAck({"blksize": "1428", "tsize": "5"}).encode())
    assert client.reason == "tsize" and client.detail == "5"
    client = strict()
    feed(client, Ack(3).encode())
    assert client.reason == "opcode" and client.detail == "4"


def test_sha256_and_size_are_checked_at_the_end():
    content = b"k" * 3000
    good = hashlib.sha256(content).hexdigest()
    for sha, size, reason in ((good, 3000, None), ("0" * 64, 3000, "sha256"), (good, 2999, "size")):
        client = ReadClient("f", {"blksize": "1428"}, waits=WAITS, sha256=sha, size=size)
        client.start(0.0)
        feed(client, OptionAck({"blksize": "1428"}).encode())
        for number, offset in enumerate(range(0, 3001, 1428), start=1):
            feed(client, data(number, content[offset:offset + 1428]))
        assert client.finished and client.reason == reason


def test_bad_oack_fails():
    client = ReadClient("f", {"blksize": "1428"}, waits=WAITS)
    client.start(0.0)
    assert feed(client, b"\0\6blksize\0lots\0") is None
    assert client.reason == "bad_oack"


def test_runts_and_unknown_tid_error():
    client = ReadClient("f", waits=WAITS)
    client.start(0.0)
    assert client.on_packet(b"\0\3", 2, 0.0) is None and client.state == WAITING
    assert decode(unknown_tid_error()) == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
    with pytest.raises(ValueError):
        ReadClient("f", waits=())


@pytest.mark.parametrize("windowsize", [1, 4, 16])
@pytest.mark.parametrize("loss_seed", [None, 3, 8])
def test_against_massboots_own_transfer_engine(windowsize, loss_seed):
    """The client wired to massboot.tftp.transfer.ReadTransfer, both sans-IO, with optional loss
    both ways and a hand-driven clock: the file arrives whole, across a block-number rollover."""
    content = random.Random(windowsize).randbytes(8 * 66_000 + 5)  # > 65535 blocks of 8 bytes
    rng = random.Random(loss_seed)
    loss = 0.0 if loss_seed is None else 0.02
    now = [0.0]
    requested = {"blksize": "8", "tsize": "0", "windowsize": str(windowsize)}
    client = ReadClient("f", requested, waits=(0.5,) * 8, sha256=hashlib.sha256(content).hexdigest())
    agreed = negotiate(requested, size=len(content))
    server = ReadTransfer(lambda offset, length: content[offset:offset + length], blksize=agreed.blksize,
                          windowsize=agreed.windowsize, options=agreed.oack, timeout_min=0.1,
                          timeout_max=0.4, retries=50, clock=lambda: now[0])
    client.start(now[0])
    to_client = [bytes(d) for d in server.start()]
    steps = 0
    while not (client.finished and server.finished) and steps < 2_000_000:
        steps += 1
        to_server: list[bytes] = []
        for datagram in to_client:
            if loss and rng.random() < loss:
                continue
            reply = client.on_packet(memoryview(datagram), len(datagram), now[0])
            if reply is not None and not (loss and rng.random() < loss):
                to_server.append(reply)
        to_client = []
        for datagram in to_server:
            to_client += [bytes(d) for d in server.on_ack(decode(datagram).block)]  # type: ignore[union-attr]
        if not to_client and not to_server:
            now[0] = min(client.deadline, server.deadline)
            if server.deadline <= now[0] and not server.finished:
                to_client = [bytes(d) for d in server.on_timeout()]
            if client.deadline <= now[0]:
                again = client.on_timeout(now[0])
                if again is not None and again != client.rrq:
                    to_client += [bytes(d) for d in server.on_ack(decode(again).block)]  # type: ignore[union-attr]
    assert client.state == DONE, (client.reason, client.detail)
    assert client.received == len(content) and client.windowsize == windowsize
    if loss_seed is None:
        assert client.duplicates == 0 and client.resends == 0 and server.retransmits == 0
    else:  # the loss was recovered from, by one side or the other
        assert server.retransmits > 0 and client.duplicates + client.resends > 0
