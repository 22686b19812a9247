"""TftpServer on 127.0.0.1 port 0: tftpy downloads and a scripted raw-socket client."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import gevent
import pytest
import tftpy

from massboot.eventlog import EventLog
from massboot.events import EventBus, EventRecorder
from massboot.sources import FileError, FileReason
from massboot.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    Request,
    decode,
)
from massboot.tftp.server import TftpServer
from massboot.tftp.transfer import WouldBlock
from tests.conftest import fast_path_option
from tests.loopback.outcomelog import lines, one_line_per_event

HOST = "127.0.0.1"
WAIT = 5.0  # upper bound for anything the server should do "at once"


def pattern(size: int, seed: bytes = b"massboot") -> bytes:
    """Deterministic, non-repeating-looking content of *size* bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:size])


FILES = {
    "empty": b"",
    "f511": pattern(511),
    "f512": pattern(512),
    "f513": pattern(513),
    "f1m": pattern(1024 * 1024),
    "dir/kernel": pattern(70_000),
    "f600k": pattern(600_000),
}


class MemSource:
    """A file in memory; with *path* (the same bytes on disk) it also offers ``fast_file``, as
    massboot.files' local sources do, so the compiled data path serves it (up to *fail_at*)."""

    def __init__(self, data: bytes, size_known: bool, fail_at: int | None, crash: bool,
                 path: str | None = None) -> None:
        self.data = data
        self.size = len(data) if size_known else None
        self.fail_at = fail_at
        self.crash = crash
        self.closed = False
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path is not None else None

    def fast_file(self) -> tuple[int, int] | None:
        if self._fd is None or self.crash:
            return None
        return self._fd, len(self.data) if self.fail_at is None else min(self.fail_at, len(self.data))

    def read(self, offset: int, length: int) -> bytes:
        if self.crash:
            raise RuntimeError("a bug in the store")
        if self.fail_at is not None and offset + length > self.fail_at:
            raise FileError(FileReason.UPSTREAM, "upstream download failed")
        return self.data[offset : offset + length]

    def close(self) -> None:
        self.closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class MemStore:
    """In-memory files; names starting with ``deny`` are refused, ``broken`` raises a bug."""

    def __init__(self, files: dict[str, bytes], disk: str | None = None) -> None:
        self.files = files
        self.disk = disk  # a copy of the files on disk: the sources offer fast_file
        self.opened: list[tuple[str, str]] = []
        self.sources: list[MemSource] = []
        self.size_known = True
        self.fail_at: int | None = None
        self.crash_on_read = False

    def open(self, name: str, client_ip: str) -> MemSource:
        self.opened.append((name, client_ip))
        if name.startswith("deny"):
            raise FileError(FileReason.ACCESS, "Access violation")
        if name == "broken":
            raise RuntimeError("a bug while opening")
        if name not in self.files:
            raise FileError(FileReason.NOT_FOUND, "File not found")
        path = None
        if self.disk is not None:  # written at the first open (tests add files to self.files)
            path = os.path.join(self.disk, name)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(self.files[name])
        source = MemSource(self.files[name], self.size_known, self.fail_at, self.crash_on_read, path)
        self.sources.append(source)
        return source


ServerFactory = Callable[..., tuple[TftpServer, MemStore, EventRecorder]]


@pytest.fixture
def make_server(tftp_data_path: str, tmp_path) -> Iterator[ServerFactory]:
    """Servers on both data paths (tests/conftest.py ``tftp_data_path``): for the compiled one
    the files are on disk too, so its lanes serve them."""
    servers: list[TftpServer] = []
    disk: str | None = None
    if tftp_data_path == "compiled":
        disk = str(tmp_path / "files")
        os.mkdir(disk)

    def factory(**kwargs: object) -> tuple[TftpServer, MemStore, EventRecorder]:
        store = MemStore(FILES, disk)
        bus = EventBus()
        recorder = EventRecorder()
        bus.subscribe(recorder)
        options: dict[str, object] = {"timeout_min": 0.01, "timeout_max": 0.5, "retries": 5,
                                      "fast_path": fast_path_option(tftp_data_path)}
        options.update(kwargs)
        server = TftpServer(HOST, 0, store, bus, **options)  # type: ignore[arg-type]
        server.start()
        assert server.data_path == tftp_data_path
        servers.append(server)
        return server, store, recorder

    yield factory
    for server in servers:
        server.stop(timeout=0)


@pytest.fixture
def served(make_server: ServerFactory) -> tuple[TftpServer, MemStore, EventRecorder]:
    return make_server()


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll (cooperatively) until *predicate* holds; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        gevent.sleep(0.002)


def nothing_pending(sock: socket.socket, timeout: float) -> bool:
    """No datagram waits on *sock* (a non-blocking read); *timeout* is set again afterwards."""
    sock.setblocking(False)
    try:
        sock.recvfrom(65536)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def udp_receive_queue(port: int) -> int:
    """Bytes queued in the kernel for the IPv4 UDP socket bound to *port* (/proc/net/udp)."""
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no UDP socket on port {port}")


class Client:
    """A scripted TFTP client on a plain UDP socket."""

    def __init__(self, server_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(WAIT)
        self.server = (HOST, server_port)
        self.tid: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(data, to or self.server)

    def rrq(self, name: str, mode: str = "octet", **options: object) -> None:
        self.send_raw(Request(Opcode.RRQ, name, mode, {k: str(v) for k, v in options.items()}).encode())

    def recv(self, timeout: float = WAIT) -> tuple[Packet, tuple[str, int]]:
        self.sock.settimeout(timeout)
        data, peer = self.sock.recvfrom(65536)
        return decode(data), peer

    def recv_from_tid(self) -> Packet:
        packet, peer = self.recv()
        if self.tid is None:
            assert peer != self.server, "the transfer must come from its own port (TID)"
            self.tid = peer
        assert peer == self.tid
        return packet

    def ack(self, block: int) -> None:
        assert self.tid is not None
        self.send_raw(Ack(block % 65536).encode(), self.tid)

    def probe_listener(self) -> None:
        """A WRQ answered by the listener: the listener handles datagrams in order, so every
        request sent before it has been read and dispatched (and any transfer it started has
        run up to its first send) once the answer is here."""
        self.send_raw(Request(Opcode.WRQ, "probe", "octet", {}).encode())
        reply, peer = self.recv()
        while peer == self.tid:  # a late resend of the known transfer's last DATA: not new
            reply, peer = self.recv()
        assert peer == self.server and reply == Error(ErrorCode.ACCESS_VIOLATION, "Access violation")

    def nothing_pending(self) -> bool:
        return nothing_pending(self.sock, WAIT)

    def download(self, name: str, *, windowsize: int = 1, **options: object) -> bytes:
        """Lock-step (or RFC 7440 windowed) download; returns the content."""
        if windowsize > 1:
            options["windowsize"] = windowsize
        self.rrq(name, **options)
        blksize = int(options.get("blksize", 512))  # type: ignore[call-overload]
        received = bytearray()
        expected = 1
        first = self.recv_from_tid()
        if options:
            assert isinstance(first, OptionAck)
            blksize = int(first.options.get("blksize", 512))
            windowsize = int(first.options.get("windowsize", 1))
            self.ack(0)
            packet = self.recv_from_tid()
        else:
            packet = first
        in_window = 0
        while True:
            assert isinstance(packet, Data), packet
            if packet.block == expected % 65536:
                received += packet.payload
                expected += 1
                in_window += 1
                last = len(packet.payload) < blksize
                if last or in_window == windowsize:
                    self.ack(packet.block)
                    in_window = 0
                if last:
                    return bytes(received)
            packet = self.recv_from_tid()


@pytest.fixture
def client_factory() -> Iterator[Callable[[int], Client]]:
    clients: list[Client] = []

    def factory(port: int) -> Client:
        client = Client(port)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tftpy, a third-party client -------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty", "f511", "f512", "f513", "f1m"])
@pytest.mark.parametrize(
    "options", [{}, {"tsize": 0}, {"blksize": 1428}, {"blksize": 8192, "tsize": 0}], ids=str
)
def test_tftpy_download(served, name: str, options: dict[str, int]) -> None:
    server, store, recorder = served
    output = io.BytesIO()
    tftpy.TftpClient(HOST, server.port, options=dict(options)).download(name, output, timeout=2)
    assert sha(output.getvalue()) == sha(FILES[name])
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    (done,) = recorder.of("tftp.done")
    assert done.get("name") == name and done.get("bytes") == len(FILES[name])
    assert done.get("ip") == HOST
    assert done.get("ttfb") <= done.get("duration")
    (start,) = recorder.of("tftp.start")
    assert start.get("blksize") == options.get("blksize", 512)
    assert store.sources[0].closed
    wait_for(lambda: server.active == 0)


def test_tftpy_missing_file(served) -> None:
    server, _, recorder = served
    with pytest.raises(tftpy.TftpException):
        tftpy.TftpClient(HOST, server.port).download("nope", io.BytesIO(), timeout=2, retries=1)
    assert recorder.of("tftp.denied")[0].get("reason") == "not_found"


# -- scripted client -------------------------------------------------------------------------


def test_oack_negotiation_values(make_server, client_factory) -> None:
    server, _, recorder = make_server(timeout_max=3.0)   # a client's timeout 3 is no longer
    client = client_factory(server.port)
    client.rrq("dir/kernel", blksize=1468, tsize=0, timeout=3, windowsize=4, multicast="", foo="bar")
    oack = client.recv_from_tid()
    assert oack == OptionAck({"blksize": "1468", "tsize": "70000", "timeout": "3", "windowsize": "4"})
    client.ack(0)
    window = [client.recv_from_tid() for _ in range(4)]
    assert [p.block for p in window] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert all(len(p.payload) == 1468 for p in window)  # type: ignore[union-attr]
    (start,) = recorder.of("tftp.start")
    assert (start.get("blksize"), start.get("windowsize"), start.get("name")) == (1468, 4, "dir/kernel")


def test_oack_respects_server_limits(make_server, client_factory) -> None:
    server, _, _ = make_server(max_blksize=1024, max_windowsize=2)
    client = client_factory(server.port)
    client.rrq("f1m", blksize=65464, windowsize=64, timeout=0, tsize=0)
    assert client.recv_from_tid() == OptionAck({"blksize": "1024", "windowsize": "2", "tsize": "1048576"})


def test_no_options_means_512_byte_blocks_and_no_oack(served, client_factory) -> None:
    server, _, _ = served
    client = client_factory(server.port)
    client.rrq("f1m")
    first = client.recv_from_tid()
    assert isinstance(first, Data) and first.block == 1 and len(first.payload) == 512


def test_unknown_size_omits_tsize(served, client_factory) -> None:
    server, store, _ = served
    store.size_known = False
    client = client_factory(server.port)
    client.rrq("f513", tsize=0)
    first = client.recv_from_tid()  # tsize was the only option: no OACK, DATA at once
    assert first == Data(1, FILES["f513"][:512])


def test_stranger_gets_error_5_and_the_transfer_goes_on(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    stranger = client_factory(server.port)
    client.rrq("f1m", blksize=1024)
    assert isinstance(client.recv_from_tid(), OptionAck)
    client.ack(0)
    received = bytearray()
    packet = client.recv_from_tid()
    assert isinstance(packet, Data) and packet.block == 1
    received += packet.payload
    assert client.tid is not None
    stranger.send_raw(Ack(1).encode(), client.tid)
    reply, peer = stranger.recv()
    assert reply == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID") and peer == client.tid
    client.ack(1)
    expected = 2
    while True:
        packet = client.recv_from_tid()
        assert isinstance(packet, Data)
        if packet.block != expected:  # a resend of what the stranger's exchange delayed
            continue
        received += packet.payload
        expected += 1
        client.ack(packet.block)
        if len(packet.payload) < 1024:
            break
    assert received == FILES["f1m"]
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert not recorder.of("tftp.fail")


def test_duplicate_rrq_starts_one_transfer(served, client_factory) -> None:
    server, store, recorder = served
    client = client_factory(server.port)
    client.rrq("f513")
    client.rrq("f513")
    client.rrq("f513")
    first = client.recv_from_tid()
    assert first == Data(1, FILES["f513"][:512])
    client.ack(1)
    assert client.recv_from_tid() == Data(2, FILES["f513"][512:])
    client.ack(2)
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    client.probe_listener()  # the two duplicates were read before this: no outcome is pending
    assert len(recorder.of("tftp.start")) == 1
    assert store.opened == [("f513", HOST)]
    assert client.nothing_pending()
    # Once that transfer is over, the same (ip, port) may ask again.
    client.tid = None
    assert client.download("f512") == FILES["f512"]


def test_wrq_is_refused_with_access_violation(served, client_factory) -> None:
    server, store, recorder = served
    client = client_factory(server.port)
    client.send_raw(Request(Opcode.WRQ, "upload.bin", "octet", {}).encode())
    reply, _ = client.recv()
    assert reply == Error(ErrorCode.ACCESS_VIOLATION, "Access violation")
    assert recorder.of("tftp.denied")[0].fields == {"ip": HOST, "port": client.sock.getsockname()[1],
                                                    "name": "upload.bin",
                                                    "reason": "write", "code": 2,
                                                    "message": "Access violation"}
    assert store.opened == []


def test_non_request_first_packet_gets_error_4(served, client_factory) -> None:
    server, _, _ = served
    client = client_factory(server.port)
    client.send_raw(Ack(1).encode())
    reply, peer = client.recv()
    assert isinstance(reply, Error) and reply.code == ErrorCode.ILLEGAL_OPERATION
    assert peer == client.server


def test_garbage_is_dropped_and_counted(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    for junk in (b"\x00", b"\x00\x01no-terminator", b"\xde\xad\xbe\xef", b"\x00\x05\x00\x00stray error\x00"):
        client.send_raw(junk)
    # The listener handles datagrams in order: the first reply must answer this WRQ.
    client.send_raw(Request(Opcode.WRQ, "x", "octet", {}).encode())
    reply, _ = client.recv()
    assert isinstance(reply, Error) and reply.code == ErrorCode.ACCESS_VIOLATION
    assert len(recorder.of("tftp.malformed")) == 3  # the stray ERROR is valid, just ignored
    assert client.nothing_pending()


def test_missing_file_gets_error_1_at_once(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    client.rrq("no/such/file", tsize=0)
    reply, _ = client.recv(timeout=WAIT)
    assert reply == Error(ErrorCode.FILE_NOT_FOUND, "File not found")
    (denied,) = recorder.of("tftp.denied")
    assert denied.fields == {"ip": HOST, "port": client.sock.getsockname()[1], "name": "no/such/file",
                             "reason": "not_found", "code": 1, "message": "File not found"}
    assert not recorder.of("tftp.start")


def test_requests_in_turn_share_one_kept_worker_that_stop_ends(served, client_factory) -> None:
    """A transfer's greenlet is kept for the next request (README "Per-transfer cost, second
    round"), and a stopped server keeps none."""
    server, _, recorder = served
    client = client_factory(server.port)
    for n in range(1, 4):
        client.rrq(f"no/such/file{n}")
        reply, _ = client.recv(timeout=WAIT)
        assert reply == Error(ErrorCode.FILE_NOT_FOUND, "File not found")
        wait_for(lambda: server._pool.idle == 1)
    assert len(server._pool._workers) == 1 and len(recorder.of("tftp.denied")) == 3
    server.stop(timeout=1)
    assert not server._pool._workers and server._pool.idle == 0


def test_access_violation_from_the_store(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    client.rrq("deny/secret")
    reply, _ = client.recv()
    assert reply == Error(ErrorCode.ACCESS_VIOLATION, "Access violation")
    assert recorder.of("tftp.denied")[0].get("reason") == "access"


def test_client_stops_acking_server_gives_up(make_server, client_factory) -> None:
    server, store, recorder = make_server(timeout_min=0.01, timeout_max=0.05, retries=3)
    client = client_factory(server.port)
    client.rrq("f1m")
    assert client.recv_from_tid() == Data(1, FILES["f1m"][:512])
    client.ack(1)                                            # proven: the ordinary timer from here
    packets = []
    while True:
        packet = client.recv_from_tid()
        packets.append(packet)
        if isinstance(packet, Error):
            break
    # the first send plus at least 3 retries (more when the adaptive timer, fast on loopback,
    # runs them before timeout_max × retries of silence)
    *resent, last = packets
    assert len(resent) >= 4 and resent == [Data(2, FILES["f1m"][512:1024])] * len(resent)
    assert last == Error(ErrorCode.NOT_DEFINED, "Transfer timed out")
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    (fail,) = recorder.of("tftp.fail")
    assert fail.get("reason") == "timeout" and fail.get("retransmits") == len(resent) - 1
    assert fail.get("bytes") == 512
    assert store.sources[0].closed
    wait_for(lambda: server.active == 0)


def test_error_8_after_oack_ends_quietly(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    client.rrq("f1m", tsize=0)
    assert client.recv_from_tid() == OptionAck({"tsize": str(len(FILES["f1m"]))})
    client.send_raw(Error(ErrorCode.OPTION_REFUSED, "tsize probe").encode(), client.tid)
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    assert recorder.of("tftp.fail")[0].get("reason") == "options_refused"
    assert client.nothing_pending()


def test_windowsize_8_transfer_completes(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    data = client.download("f1m", windowsize=8, blksize=1400)
    assert sha(data) == sha(FILES["f1m"])
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert recorder.of("tftp.start")[0].get("windowsize") == 8


def test_windowsize_with_a_dropped_block(served, client_factory) -> None:
    """The client drops DATA 6 once; it ACKs 5 and the server goes back (RFC 7440)."""
    server, _, recorder = served
    client = client_factory(server.port)
    client.rrq("dir/kernel", blksize=1000, windowsize=4)
    assert isinstance(client.recv_from_tid(), OptionAck)
    client.ack(0)
    received = bytearray()
    expected, in_window, dropped = 1, 0, False
    while True:
        packet = client.recv_from_tid()
        assert isinstance(packet, Data)
        if packet.block == 6 and not dropped:
            dropped = True
            continue
        if packet.block != expected:
            if in_window or packet.block > expected:
                client.ack(expected - 1)  # out of order: ACK the last in-order block
                in_window = 0
            continue
        received += packet.payload
        expected += 1
        in_window += 1
        if len(packet.payload) < 1000:
            client.ack(packet.block)
            break
        if in_window == 4:
            client.ack(packet.block)
            in_window = 0
    assert received == FILES["dir/kernel"]
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert recorder.of("tftp.done")[0].get("retransmits") >= 1


def test_rollover_with_blksize_8(served, client_factory) -> None:
    server, _, recorder = served
    client = client_factory(server.port)
    data = client.download("f600k", blksize=8)  # 75,001 blocks: wraps past 65535 to 0
    assert sha(data) == sha(FILES["f600k"])
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert recorder.of("tftp.done")[0].get("bytes") == 600_000


def test_read_error_mid_transfer_sends_its_code(served, client_factory) -> None:
    server, store, recorder = served
    store.fail_at = 1000
    client = client_factory(server.port)
    client.rrq("f1m")
    assert isinstance(client.recv_from_tid(), Data)
    client.ack(1)
    assert client.recv_from_tid() == Error(0, "upstream download failed")
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    assert recorder.of("tftp.fail")[0].get("reason") == "read_error"


def test_unexpected_exceptions_answer_error_0_and_the_server_goes_on(
    served, client_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server, store, recorder = served
    caplog.set_level(logging.ERROR, logger="massboot.tftp.server")
    client = client_factory(server.port)
    client.rrq("broken")
    reply, _ = client.recv()
    assert reply == Error(ErrorCode.NOT_DEFINED, "Internal error")
    store.crash_on_read = True
    other = client_factory(server.port)
    other.rrq("f513")
    assert other.recv_from_tid() == Error(ErrorCode.NOT_DEFINED, "Internal error")
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    assert recorder.of("tftp.fail")[0].get("reason") == "internal_error"
    assert sum(1 for r in caplog.records if r.exc_info) == 2  # each logged once, with traceback
    store.crash_on_read = False
    third = client_factory(server.port)
    assert third.download("f513") == FILES["f513"]


def test_stop_aborts_running_transfers(make_server, client_factory) -> None:
    server, _, recorder = make_server(timeout_max=5.0)
    client = client_factory(server.port)
    client.rrq("f1m")
    assert isinstance(client.recv_from_tid(), Data)
    server.stop(timeout=0)
    packet = client.recv_from_tid()
    assert packet == Error(ErrorCode.NOT_DEFINED, "Server shutting down")
    (fail,) = recorder.of("tftp.fail")
    assert fail.get("reason") == "shutdown"
    assert server.active == 0


def test_persistent_receive_error_ends_the_listener(make_server, client_factory, monkeypatch) -> None:
    """A receive error that keeps coming back is a dead listener (the CLI exits 1, README
    Command line), not an endless loop of warnings."""
    import errno

    import gevent.socket as gsocket

    import massboot.tftp.server as tftp_server

    class FailingSocket(gsocket.socket):
        failing = False

        def recvfrom(self, *args):  # type: ignore[no-untyped-def, override]
            if FailingSocket.failing:
                raise OSError(errno.ENOBUFS, "No buffer space available")
            data, address = super().recvfrom(*args)
            if data == b"FAIL":
                FailingSocket.failing = True
            return data, address

    monkeypatch.setattr(tftp_server, "gsocket", SimpleNamespace(**{
        **{name: getattr(gsocket, name) for name in dir(gsocket) if name.isupper()},
        "socket": FailingSocket}))
    server, _, _ = make_server()
    client_factory(server.port).send_raw(b"FAIL")
    wait_for(lambda: not server.alive)
    assert server.error == "receive failed: [Errno 105] No buffer space available (100 times in a row)"


def test_netascii_mode(served, client_factory) -> None:
    server, store, _ = served
    store.files = dict(FILES, text=b"a\nb\r\nc\r" * 300)
    client = client_factory(server.port)
    client.rrq("text", "netascii")
    received = bytearray()
    expected = 1
    while True:
        packet = client.recv_from_tid()
        assert isinstance(packet, Data)
        if packet.block != expected:  # a resend (10 ms timeouts on a busy machine): seen already
            continue
        received += packet.payload
        expected += 1
        client.ack(packet.block)
        if len(packet.payload) < 512:
            break
    assert bytes(received) == (b"a\r\nb\r\0\r\nc\r\0") * 300


# -- the callback-driven path: sources that can read without waiting -------------------------


class NowaitSource(MemSource):
    """A source with ``read_nowait`` (as massboot.files' are) that would block now and then."""

    def __init__(self, data: bytes, every: int) -> None:
        super().__init__(data, True, None, False)
        self.every = every
        self.nowait_calls = 0
        self.waited: list[int] = []
        self.warm: set[int] = set()

    def read(self, offset: int, length: int) -> bytes:
        self.waited.append(offset)
        self.warm.add(offset)
        return super().read(offset, length)

    def read_nowait(self, offset: int, length: int) -> memoryview:
        self.nowait_calls += 1
        if offset not in self.warm and self.nowait_calls % self.every == 0:
            raise WouldBlock
        return memoryview(self.data)[offset : offset + length]


@pytest.mark.parametrize("windowsize", [1, 8])
def test_reads_that_would_block_go_through_the_greenlet(make_server, client_factory,
                                                        windowsize: int) -> None:
    # A read that would block must be done by the transfer's greenlet at once, never wait for a
    # resend timer. A 1 s floor on the resend timeout keeps a busy machine's scheduling delays
    # from causing resends, so any resend below means the stalled transfer waited for its timer.
    server, store, recorder = make_server(timeout_min=1.0, timeout_max=1.0)
    sources: list[NowaitSource] = []

    def open_nowait(name: str, client_ip: str) -> NowaitSource:
        source = NowaitSource(FILES[name], every=7)
        sources.append(source)
        return source

    store.open = open_nowait  # type: ignore[method-assign]
    client = client_factory(server.port)
    data = client.download("f600k", windowsize=windowsize, blksize=1428)
    assert sha(data) == sha(FILES["f600k"])
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    (source,) = sources
    assert source.nowait_calls > 300 and 20 < len(source.waited) < 200
    assert recorder.of("tftp.done")[0].get("retransmits") == 0


class FailingNowaitSource(NowaitSource):
    """Reads without waiting until *fail_at*, then fails there (a mirror cut mid-file)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data, every=1 << 30)
        self.fail_at = fail_at

    def read_nowait(self, offset: int, length: int) -> memoryview:
        if offset + length > self.fail_at:
            raise FileError(0, "upstream download failed")
        return super().read_nowait(offset, length)


def test_read_error_in_the_event_loop_path_ends_the_transfer(make_server, client_factory) -> None:
    """A read error met by the ACK callback sends ERROR and ends the transfer at once: the
    greenlet is woken, the outcome reported and the pool slot freed (no resend timer needed)."""
    server, store, recorder = make_server(timeout_min=5.0, timeout_max=5.0)
    store.open = lambda name, ip: FailingNowaitSource(FILES[name], 10 * 512)  # type: ignore[method-assign]
    client = client_factory(server.port)
    client.rrq("f1m")
    for block in range(1, 11):
        assert client.recv_from_tid() == Data(block, FILES["f1m"][(block - 1) * 512:block * 512])
        client.ack(block)
    assert client.recv_from_tid() == Error(0, "upstream download failed")
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)     # within WAIT, well before a resend
    assert recorder.of("tftp.fail")[0].get("reason") == "read_error"
    assert server.active == 0


def test_local_files_through_the_file_store(client_factory, tmp_path, tftp_data_path) -> None:
    from massboot.files import FileStore

    content = pattern(3 * 128 * 1024 + 777)
    (tmp_path / "kernel").write_bytes(content)
    bus, recorder = EventBus(), EventRecorder()
    bus.subscribe(recorder)
    with TftpServer(HOST, 0, FileStore(str(tmp_path)), bus, timeout_min=0.01,
                    fast_path=fast_path_option(tftp_data_path)) as server:
        for windowsize in (1, 16):
            client = client_factory(server.port)
            got = client.download("kernel", windowsize=windowsize, blksize=1428, tsize=0)
            assert got == content
        wait_for(lambda: len(recorder.of("tftp.done")) == 2)


# -- the outcome log and the transfer events ----------------------------------------------------


def test_tftp_one_line_per_event(make_server, client_factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="massboot")
    server, _, recorder = make_server()
    server._events.subscribe(EventLog())
    caplog.clear()     # the "listening" line
    client = client_factory(server.port)

    assert client.download("f513", blksize=1024, tsize=0) == FILES["f513"]          # start, done
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    client.rrq("no/such/file")                                                     # denied
    assert isinstance(client.recv()[0], Error)
    client.send_raw(Request(Opcode.WRQ, "upload.bin", "octet", {}).encode())       # denied, write
    assert isinstance(client.recv()[0], Error)
    client.send_raw(b"\x00\x09junk")                                               # malformed
    failing = client_factory(server.port)
    failing.rrq("f1m")                                                             # start
    assert isinstance(failing.recv_from_tid(), Data)
    failing.send_raw(b"\x00\x07", failing.tid)                                     # malformed, in transfer
    failing.send_raw(Error(0, "cancelled").encode(), failing.tid)                  # fail
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1 and len(recorder.of("tftp.malformed")) == 2)

    records = lines(caplog, "massboot.tftp.server")
    one_line_per_event(records, recorder, "tftp.")
    assert [e.kind for e in recorder.events] == ["tftp.start", "tftp.done", "tftp.denied", "tftp.denied",
                                                 "tftp.malformed", "tftp.start", "tftp.malformed",
                                                 "tftp.fail"]
    text = [r.getMessage() for r in records]
    port, other = client.sock.getsockname()[1], failing.sock.getsockname()[1]
    assert text[0] == (f"tftp RRQ client=127.0.0.1:{port} file=f513 mode=octet options={{'blksize': "
                       "'1024', 'tsize': '0'} oack={'blksize': '1024', 'tsize': '513'}")
    assert re.fullmatch(rf"tftp done client=127\.0\.0\.1:{port} file=f513 bytes=513 duration=\d+\.\d{{3}}s "
                        r"rate=\d+\.\d\dMB/s retransmits=0 blksize=1024 windowsize=1", text[1])
    assert text[2] == (f"tftp denied client=127.0.0.1:{port} file=no/such/file code=1 reason=not_found: "
                       "File not found")
    assert text[3] == f"tftp denied write client=127.0.0.1:{port} file=upload.bin"
    assert text[4] == f"tftp malformed request from 127.0.0.1:{port}: unknown opcode 9"
    assert text[6] == f"tftp malformed datagram client=127.0.0.1:{other}: unknown opcode 7"
    assert re.fullmatch(rf"tftp failed client=127\.0\.0\.1:{other} file=f1m reason=client_error bytes=0 "
                        r"duration=\d+\.\d{3}s rate=\d+\.\d\dMB/s retransmits=0: client error 0: cancelled",
                        text[7])
    assert [r.levelname for r in records] == ["DEBUG", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "DEBUG",
                                              "INFO"]
    assert {r.module for r in records} == {"server"}      # PXE[server], as before


def test_tftp_events_carry_block_counts(make_server, client_factory) -> None:
    server, _, recorder = make_server()
    client = client_factory(server.port)
    assert client.download("f512") == FILES["f512"]          # one full block and an empty one
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    (done,) = recorder.of("tftp.done")
    assert (done.get("blocks"), done.get("blocks_sent"), done.get("bytes")) == (2, 2, 512)
    failing = client_factory(server.port)
    failing.rrq("f1m", windowsize=4)
    assert isinstance(failing.recv_from_tid(), OptionAck)
    failing.ack(0)
    for _ in range(4):
        assert isinstance(failing.recv_from_tid(), Data)
    failing.send_raw(Ack(2).encode(), failing.tid)            # two delivered, then gone
    failing.send_raw(Error(0, "bye").encode(), failing.tid)
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    (fail,) = recorder.of("tftp.fail")
    assert fail.get("blocks") == 2 and fail.get("bytes") == 1024
    assert fail.get("blocks_sent") >= 4


# -- issue #11: what forged, silent and greedy clients can make the server hold ----------------

#: A pre-ACK schedule fast enough for a test: resends after 50 and 100 ms, free after 150 ms.
FAST_FIRST = {"first_timeout": 0.05, "first_retries": 2}


def received_until_quiet(client: Client, quiet: float) -> list[bytes]:
    """Every datagram *client* receives until none came for *quiet* seconds."""
    out = []
    client.sock.settimeout(quiet)
    while True:
        try:
            data, _ = client.sock.recvfrom(65536)
        except TimeoutError:
            return out
        out.append(data)


def test_silent_rrq_with_timeout_255_frees_its_slot_after_the_pre_ack_schedule(
        make_server, client_factory) -> None:
    """Before: a client's ``timeout 255`` replaced our longest wait and a never-ACKed RRQ held
    its slot timeout × retries = 1,275 s. Now the option is not agreed (left out of the OACK)
    and the unproven transfer gets first_retries resends, then its slot is freed, silently."""
    server, _, recorder = make_server(timeout_max=0.5, **FAST_FIRST)
    silent = client_factory(server.port)
    silent.rrq("f1m", timeout=255, tsize=0, blksize=1468)
    wait_for(lambda: len(recorder.of("tftp.fail")) == 1)
    (fail,) = recorder.of("tftp.fail")
    assert fail.get("reason") == "timeout" and fail.get("retransmits") == 2
    assert server.active == 0 and server.memory()[0] == 0
    got = [decode(d) for d in received_until_quiet(silent, 0.2)]
    assert got == [OptionAck({"tsize": str(len(FILES["f1m"])), "blksize": "1468"})] * 3  # no ERROR
    (start,) = recorder.of("tftp.start")
    assert "timeout" not in start.get("oack")


def test_a_repeated_rrq_gets_the_lost_first_answer_at_once(make_server, client_factory) -> None:
    """A PXE ROM that lost our OACK repeats its RRQ: the OACK comes again without waiting for
    our (conservative) timer, from the transfer's own port."""
    server, _, recorder = make_server(first_timeout=30.0, first_retries=2)
    client = client_factory(server.port)
    client.rrq("f513", tsize=0)
    first = client.recv_from_tid()
    client.rrq("f513", tsize=0)                     # as if the OACK had been lost
    assert client.recv_from_tid() == first == OptionAck({"tsize": "513"})
    client.ack(0)
    assert client.recv_from_tid() == Data(1, FILES["f513"][:512])
    client.ack(1)
    assert client.recv_from_tid() == Data(2, FILES["f513"][512:])
    client.ack(2)
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert len(recorder.of("tftp.start")) == 1


def test_amplification_of_a_forged_rrq_is_bounded(make_server, client_factory) -> None:
    """Before: a forged 19-byte RRQ made the server send 7 datagrams, 3,119 bytes (×164), to the
    victim. Now: at most 1 + first_retries datagrams of the first answer, whatever the
    forger repeats: with options 3 OACKs (×3 or less), without 3 × DATA 1 (516 bytes)."""
    server, _, recorder = make_server(**FAST_FIRST)
    with_options = Request(Opcode.RRQ, "f1m", "octet", {"blksize": "65464", "windowsize": "64",
                                                       "tsize": "0", "timeout": "255"}).encode()
    plain = Request(Opcode.RRQ, "f1m", "octet", {}).encode()
    for rrq, bound in ((with_options, 3.0), (plain, 3 * 516 / len(plain))):
        victim = client_factory(server.port)
        ended = len(recorder.of("tftp.fail")) + 1
        for _ in range(10):                         # the forger repeats the request
            victim.send_raw(rrq)
        wait_for(lambda ended=ended: len(recorder.of("tftp.fail")) == ended)
        datagrams = received_until_quiet(victim, 0.2)
        sent = sum(len(d) for d in datagrams)
        print(f"forged RRQ of {len(rrq)} bytes (x10): {len(datagrams)} datagrams, {sent} bytes, "
              f"x{sent / len(rrq):.1f} of one RRQ")
        assert len(datagrams) <= 1 + FAST_FIRST["first_retries"]
        assert sent <= bound * len(rrq)


def test_a_full_pool_drops_new_requests_counts_them_and_keeps_reading(make_server, client_factory) -> None:
    """Before: with the pool full the listener stopped reading (a real client waited 10.5 s
    behind 5 silent ones with pool_size = 5). Now new RRQs are dropped and counted, the listener
    answers everything else, and the real client, retrying, is served once a slot frees."""
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.metrics import Metrics

    server, _, recorder = make_server(pool_size=5, max_per_client=100, **FAST_FIRST)
    registry = CollectorRegistry()
    Metrics(MetricsConfig(port=0), server._events, tftp=server, registry=registry)
    silent = [client_factory(server.port) for _ in range(5)]
    for client in silent:
        client.rrq("f1m", timeout=255, blksize=1468)
    wait_for(lambda: server.active == 5)
    real = client_factory(server.port)
    real.rrq("f513")
    wait_for(lambda: len(recorder.of("tftp.dropped")) == 1)
    assert recorder.of("tftp.dropped")[0].get("reason") == "pool_full"
    assert registry.get_sample_value("massboot_tftp_requests_dropped_total", {"reason": "pool_full"}) == 1
    real.probe_listener()                           # the listener still reads and answers
    silent[0].rrq("f1m", timeout=255, blksize=1468)  # a duplicate is still seen as one
    assert len(recorder.of("tftp.start")) == 5
    # the real client retries its RRQ (as PXE ROMs do) until a slot is free and it is served
    deadline = time.monotonic() + WAIT
    while True:
        real.rrq("f513")
        try:
            packet, peer = real.recv(timeout=0.05)
        except TimeoutError:
            assert time.monotonic() < deadline, "never served"
            continue
        if peer != real.server:
            break
    real.tid = peer
    assert packet == Data(1, FILES["f513"][:512])
    real.ack(1)
    assert real.recv_from_tid() == Data(2, FILES["f513"][512:])
    real.ack(2)
    wait_for(lambda: len(recorder.of("tftp.done")) == 1)
    assert registry.get_sample_value("massboot_tftp_requests_dropped_total", {"reason": "pool_full"}) >= 1


def test_transfers_per_source_address_are_capped(make_server, client_factory) -> None:
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.metrics import Metrics

    server, _, recorder = make_server(max_per_client=2, first_timeout=30.0)
    registry = CollectorRegistry()
    Metrics(MetricsConfig(port=0), server._events, tftp=server, registry=registry)
    first, second, third = (client_factory(server.port) for _ in range(3))
    first.rrq("f1m")
    second.rrq("f1m")
    assert isinstance(first.recv_from_tid(), Data) and isinstance(second.recv_from_tid(), Data)
    third.rrq("f513")
    reply, peer = third.recv()
    assert peer == third.server
    assert reply == Error(ErrorCode.NOT_DEFINED, "Too many transfers from this address")
    (denied,) = recorder.of("tftp.denied")
    assert denied.get("reason") == "busy"
    assert registry.get_sample_value("massboot_tftp_requests_denied_total", {"reason": "busy"}) == 1
    first.send_raw(Error(0, "done").encode(), first.tid)  # a slot of this address frees
    wait_for(lambda: server.active == 1)
    third.tid = None
    assert third.download("f513") == FILES["f513"]
    other = Client(server.port)                     # another address is not affected
    other.sock.close()
    other.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.sock.bind(("127.0.0.2", 0))
    other.sock.settimeout(WAIT)
    try:
        assert other.download("f513") == FILES["f513"]
    finally:
        other.close()


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_is_bounded_under_a_thousand_silent_large_window_clients(make_server) -> None:
    """Before: blksize 65464 × windowsize 64, silent after ACK 0, held 4.4 MiB per client (4.3
    GiB for 1,000). Now windows are negotiated down to transfer_memory and to what is left of
    memory_budget; past the budget, RRQs are dropped (counted) and the clients may retry."""
    budget = 16 << 20
    server, _, recorder = make_server(max_per_client=2000, transfer_memory=1 << 20, memory_budget=budget,
                                      first_timeout=30.0, timeout_max=30.0, retries=2)
    rss_before = _rss()
    clients = []
    for i in range(1000):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))   # 1,000 source addresses
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        clients.append(sock)
    rrq = Request(Opcode.RRQ, "f1m", "octet", {"blksize": "65464", "windowsize": "64"}).encode()
    try:
        for sock in clients:
            sock.sendto(rrq, (HOST, server.port))
        wait_for(lambda: len(recorder.of("tftp.start")) + len(recorder.of("tftp.dropped")) == 1000,
                 timeout=60)
        windows = []
        for sock in clients:
            sock.setblocking(False)
            try:
                data, peer = sock.recvfrom(65536)
            except BlockingIOError:
                continue
            oack = decode(data)
            assert isinstance(oack, OptionAck)
            windows.append(int(oack.options["windowsize"]) * (int(oack.options["blksize"]) + 4))
            sock.sendto(Ack(0).encode(), peer)      # proven, then silent: the window stays buffered
        wait_for(lambda: server.buffered_bytes() >= server.memory()[0] * 0.9, timeout=60)
        reserved, total = server.memory()
        buffered = server.buffered_bytes()
        rss_growth = _rss() - rss_before
        dropped = recorder.of("tftp.dropped")
        print(f"1000 silent clients: {len(windows)} transfers, buffered {buffered >> 10} KiB, "
              f"reserved {reserved >> 10} KiB of {total >> 10} KiB, {len(dropped)} dropped, "
              f"RSS +{rss_growth >> 20} MiB")
        assert max(windows) <= 1 << 20 and sum(windows) <= budget
        assert buffered <= reserved <= budget
        assert dropped and {e.get("reason") for e in dropped} == {"memory"}
        assert rss_growth < budget + (64 << 20)     # sockets and greenlets included
    finally:
        for sock in clients:
            sock.close()


def test_client_text_in_log_lines_is_quoted_and_cut(make_server, client_factory,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Before: a newline in a requested name forged a log line; a 60 KB name made a 60 KB line."""
    caplog.set_level(logging.DEBUG, logger="massboot")
    server, _, recorder = make_server()
    server._events.subscribe(EventLog())
    caplog.clear()
    client = client_factory(server.port)
    forged = "pxelinux.0\n2026-01-01 PXE[server] INFO: tftp done client=10.0.0.9:1 file=x"
    for name in (forged, "a" * 60_000):
        client.rrq(name)
        assert client.recv()[0] == Error(ErrorCode.FILE_NOT_FOUND, "File not found")
    wait_for(lambda: len(recorder.of("tftp.denied")) == 2)
    text = [r.getMessage() for r in lines(caplog, "massboot.tftp.server")]
    assert len(text) == 2 and all("\n" not in line for line in text)
    assert text[0].startswith(f"tftp denied client=127.0.0.1:{client.sock.getsockname()[1]} file="
                              + repr(forged) + " code=1")
    assert len(text[1]) < 300 and "...(60000 chars)" in text[1]


def test_reload_tunes_the_bounds_for_the_next_requests(make_server, client_factory) -> None:
    """SIGHUP (README, Reload): the new per-address cap and memory bounds apply to new RRQs."""
    server, _, recorder = make_server(first_timeout=30.0)
    server.tune(max_blksize=None, max_windowsize=64, timeout_min=0.01, timeout_max=0.5, retries=5,
                max_per_client=1, transfer_memory=4 * 1472, memory_budget=1 << 20)
    first, second = client_factory(server.port), client_factory(server.port)
    first.rrq("f1m", blksize=1468, windowsize=64)
    assert first.recv_from_tid() == OptionAck({"blksize": "1468", "windowsize": "4"})
    second.rrq("f1m")
    assert second.recv()[0] == Error(ErrorCode.NOT_DEFINED, "Too many transfers from this address")
    assert [e.get("reason") for e in recorder.of("tftp.denied")] == ["busy"]
