"""The TFTP data path under attack and at its edges, on both paths (``[tftpd] fast_path``).

Every test runs against the compiled data path (massboot/tftp/_fastpath.c, its lanes serving
lock-step transfers of local files) and the pure-Python one, with real files through
:class:`massboot.files.FileStore` and a scripted client on 127.0.0.1. The compiled half is
checked to have served the blocks itself (``fast_path_counters``), so a lane that silently
handed everything to Python would fail here. ``test_lane_updates_the_transfer_as_on_ack_all``
checks the C code against ReadTransfer.on_ack_all member by member, bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from massboot.events import EventBus, EventRecorder
from massboot.files import FileStore
from massboot.tftp.packet import Ack, Data, Error, ErrorCode, OptionAck
from massboot.tftp.server import TftpServer, fast_path_available, fast_path_counters, read_ahead_counters
from massboot.tftp.transfer import ReadTransfer
from tests.conftest import fast_path_option, massboot_script, require
from tests.loopback.test_tftp_server import HOST, WAIT, Client, pattern, wait_for

QUIET = 0.3  # seconds a client listens to be sure nothing more comes (resends are >= 1 s here)


class Served:
    def __init__(self, server: TftpServer, root: str, recorder: EventRecorder, data_path: str) -> None:
        self.server, self.root, self.recorder, self.data_path = server, root, recorder, data_path
        self.counters = fast_path_counters()

    @property
    def compiled(self) -> bool:
        return self.data_path == "compiled"

    def put(self, name: str, data: bytes) -> str:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def lane_blocks(self) -> int:
        """Blocks the compiled path sent since the server started."""
        return fast_path_counters()[0] - self.counters[0]

    def would_block(self) -> int:
        return fast_path_counters()[2] - self.counters[2]


class ReadAhead:
    """The read-ahead counters from now on: (shared, read, own), see read_ahead_counters()."""

    def __init__(self) -> None:
        self.start = read_ahead_counters()

    def since(self) -> tuple[int, ...]:
        return tuple(a - b for a, b in zip(read_ahead_counters(), self.start, strict=True))


@pytest.fixture
def served(tftp_data_path: str, tmp_path) -> Iterator[Served]:
    bus, recorder = EventBus(), EventRecorder()
    bus.subscribe(recorder)
    root = tmp_path / "root"
    root.mkdir()
    # a resend only after 1 s: a test that listens for QUIET seconds hears none
    server = TftpServer(HOST, 0, FileStore(str(root)), bus, timeout_min=1.0, timeout_max=2.0,
                        fast_path=fast_path_option(tftp_data_path))
    server.start()
    try:
        yield Served(server, str(root), recorder, tftp_data_path)
    finally:
        server.stop(timeout=0)


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    c = Client(served.server.port)
    yield c
    c.close()


def quiet(client: Client, seconds: float = QUIET) -> bool:
    """True when nothing arrives for *seconds*."""
    client.sock.settimeout(seconds)
    try:
        client.sock.recvfrom(65536)
    except TimeoutError:
        return True
    finally:
        client.sock.settimeout(WAIT)
    return False


def start(client: Client, name: str, blksize: int = 512) -> None:
    """RRQ with blksize (an OACK), ACK 0: DATA 1 is on its way."""
    client.rrq(name, blksize=blksize)
    assert isinstance(client.recv_from_tid(), OptionAck)
    client.ack(0)


def blocks(client: Client, content: bytes, first: int, last: int, blksize: int = 512) -> None:
    """Receive DATA first..last (ACKing each but the last) and check them."""
    for block in range(first, last + 1):
        packet = client.recv_from_tid()
        assert packet == Data(block % 65536, content[(block - 1) * blksize:block * blksize]), block
        if block < last:
            client.ack(block)


def finish(client: Client, content: bytes, first: int, blksize: int = 512) -> bytes:
    """ACK first - 1, then lock-step to the end; the bytes received from block *first* on."""
    client.ack(first - 1)
    got = bytearray()
    block = first
    while True:
        packet = client.recv_from_tid()
        assert isinstance(packet, Data) and packet.block == block % 65536, (packet, block)
        got += packet.payload
        client.ack(packet.block)
        if len(packet.payload) < blksize:
            return bytes(got)
        block += 1


@pytest.mark.parametrize("windowsize", [1, 16])
def test_the_chosen_path_serves_the_blocks(served: Served, client: Client, windowsize: int) -> None:
    content = pattern(700_000)
    served.put("kernel", content)
    assert client.download("kernel", blksize=1428, tsize=0, windowsize=windowsize) == content
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    done = served.recorder.of("tftp.done")[0]
    assert done.get("bytes") == len(content) and done.get("retransmits") == 0
    blocks_total = len(content) // 1428 + 1
    if served.compiled:
        # Python takes ACK 0, the first window (the first RTT sample) and the last one; C the rest
        assert served.lane_blocks() >= blocks_total - 3 * windowsize
    else:
        assert served.lane_blocks() == 0


def test_acks_for_blocks_never_sent_are_ignored(served: Served, client: Client) -> None:
    content = pattern(100 * 512 + 17)
    served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 20)
    # DATA 20 is out: ACKs for blocks never sent, far ahead, wrapped, old, and 0
    for block in (21, 22, 60, 65535, 20 + 32768, 19, 1, 0):
        client.ack(block)
    assert quiet(client), "an ACK for a block never sent was answered"
    got = finish(client, content, 21)
    assert got == content[20 * 512:]
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("retransmits") == 0


def test_a_duplicate_ack_sends_nothing_twice(served: Served, client: Client) -> None:
    """RFC 1123 4.2.3.1 (Sorcerer's Apprentice): a duplicate ACK gets no second DATA."""
    content = pattern(50 * 512 + 1)
    served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 10)
    client.ack(10)
    assert client.recv_from_tid() == Data(11, content[10 * 512:11 * 512])
    client.ack(10)   # the same ACK again, while DATA 11 is out
    client.ack(10)
    assert quiet(client)
    assert finish(client, content, 12) == content[11 * 512:]
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("retransmits") == 0


def test_block_numbers_roll_over_past_65535_at_blksize_512(served: Served) -> None:
    """A 32 MiB + 1000 byte file at 512 bytes a block: 65,538 blocks, numbers wrap to 0."""
    content = pattern(32 * 1024 * 1024 + 1000)
    served.put("big", content)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    try:
        sock.sendto(b"\x00\x01big\x00octet\x00", (HOST, served.server.port))  # no options: 512
        digest = hashlib.sha256()
        expected = 1
        numbers = []
        while True:
            data, peer = sock.recvfrom(1024)
            assert data[:2] == b"\x00\x03"
            number = data[2] << 8 | data[3]
            if number != expected & 0xFFFF:  # a resend of the previous block: ACK it again
                assert number == (expected - 1) & 0xFFFF
                sock.sendto(data[:4].replace(b"\x00\x03", b"\x00\x04", 1), peer)
                continue
            if expected in (65535, 65536, 65537):
                numbers.append(number)
            digest.update(data[4:])
            sock.sendto(b"\x00\x04" + data[2:4], peer)
            if len(data) - 4 < 512:
                break
            expected += 1
    finally:
        sock.close()
    assert numbers == [65535, 0, 1]
    assert expected == 65538
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    done = served.recorder.of("tftp.done")[0]
    assert done.get("bytes") == len(content) and done.get("blocks") == 65538
    if served.compiled:
        assert served.lane_blocks() >= 65538 - 3


@pytest.mark.parametrize("new_size", [0, 60_000])
def test_a_file_truncated_during_the_transfer(served: Served, client: Client, new_size: int) -> None:
    """The operator truncates a file being served: no crash (no mmap, no SIGBUS), the client
    gets a prefix of the file and a final short block, the transfer ends."""
    content = pattern(1024 * 1024)
    path = served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 100)
    os.truncate(path, new_size)
    got = content[:100 * 512] + finish(client, content, 101)
    assert got == content[:len(got)] and new_size <= len(got) < len(content)
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("bytes") == len(got)
    assert served.server.alive and served.server.active == 0


def test_an_error_mid_transfer_ends_it_quietly(served: Served, client: Client) -> None:
    content = pattern(300 * 512)
    served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 40)
    client.send_raw(Error(ErrorCode.DISK_FULL, "disk full").encode(), client.tid)
    assert quiet(client), "a DATA after the client's ERROR"
    wait_for(lambda: len(served.recorder.of("tftp.fail")) == 1)
    assert served.recorder.of("tftp.fail")[0].get("reason") == "client_error"
    assert served.server.active == 0
    if served.compiled:
        assert served.lane_blocks() >= 37


def test_strangers_on_the_transfer_port_get_error_5_mid_transfer(served: Served, client: Client) -> None:
    content = pattern(200 * 512 + 3)
    served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 30)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((HOST, 0))
    stranger.settimeout(WAIT)
    try:
        for datagram in (Ack(30).encode(), Ack(31).encode(), b"\x00\x09junk", b"\xff"):
            stranger.sendto(datagram, client.tid)
            data, peer = stranger.recvfrom(1024)
            assert peer == client.tid
            assert data == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode()
        stranger.sendto(Error(ErrorCode.NOT_DEFINED, "x").encode(), client.tid)  # never answered
        assert quiet(client)
        assert finish(client, content, 31) == content[30 * 512:]
        stranger.settimeout(QUIET)
        with pytest.raises(TimeoutError):
            stranger.recvfrom(1024)
    finally:
        stranger.close()
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("retransmits") == 0


def test_a_lost_ack_is_resent_on_time_after_blocks_from_the_lane(served: Served, client: Client) -> None:
    """After blocks the lane sent (its timer restarted from C), a lost ACK still gets its
    resend from the timer, then the transfer goes on."""
    content = pattern(400 * 512 + 9)
    served.put("f", content)
    start(client, "f")
    blocks(client, content, 1, 300)
    sent = time.monotonic()
    assert client.recv_from_tid() == Data(300, content[299 * 512:300 * 512])  # the resend
    assert time.monotonic() - sent >= 0.5   # the RTO (timeout_min 1 s), not a stray datagram
    assert finish(client, content, 301) == content[300 * 512:]
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("retransmits") == 1
    if served.compiled:
        assert served.lane_blocks() >= 390


def _page_cache_can_be_dropped(path: str, attempts: int = 20) -> bool:
    """Drop the file's pages and check that a read would wait for the disk (EAGAIN with
    RWF_NOWAIT). Tried several times: pages just written may still sit in another CPU's
    per-CPU LRU batch, which the kernel's DONTNEED does not always reach at the first call."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        for _ in range(attempts):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                os.preadv(fd, [bytearray(512)], 4096 * 8, os.RWF_NOWAIT)
            except BlockingIOError:
                return True
            time.sleep(0.05)
        return False
    finally:
        os.close(fd)


def test_blocks_not_in_the_page_cache_are_read_without_stalling_the_hub(served: Served,
                                                                         client: Client) -> None:
    """The client drops the file's pages before every 25th ACK: the next block's read would
    wait for the disk, so the lane hands it to Python, which reads it in the threadpool."""
    content = pattern(2 * 1024 * 1024)
    path = served.put("f", content)
    require(_page_cache_can_be_dropped(path),
            f"the file system of {path} keeps the pages (tmpfs?): no EAGAIN to provoke")
    start(client, "f")
    fd = os.open(path, os.O_RDONLY)
    try:
        received = bytearray()
        block = 1
        while True:
            packet = client.recv_from_tid()
            assert isinstance(packet, Data) and packet.block == block % 65536
            received += packet.payload
            if block % 25 == 0:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            client.ack(packet.block)
            if len(packet.payload) < 512:
                break
            block += 1
    finally:
        os.close(fd)
    assert bytes(received) == content
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 1)
    assert served.recorder.of("tftp.done")[0].get("retransmits") == 0
    if served.compiled:
        assert served.would_block() >= 10          # the lane met EAGAIN and handed over
        assert served.lane_blocks() >= 4096 * 3 // 4  # and served most of the rest itself


# -- the C code against ReadTransfer.on_ack_all, member by member ----------------------------

_SCALARS = [name for name in ReadTransfer.__slots__
            if name not in ("read", "_clock", "_slots", "_views", "_datagrams", "_read_errors",
                            "_error_code")]


def _copy_state(source: ReadTransfer, target: ReadTransfer) -> None:
    """Make *target* a twin of *source* (its own buffers)."""
    for name in _SCALARS:
        value = getattr(source, name)
        setattr(target, name, list(value) if isinstance(value, list) else
                bytearray(value) if isinstance(value, bytearray) else value)
    slots = [bytearray(b) if b is not None else None for b in source._slots]
    target._slots = slots
    target._views = [memoryview(b) if b is not None else None for b in slots]
    target._datagrams = [memoryview(b)[:n] if b is not None else None
                         for b, n in zip(slots, source._lengths, strict=True)]


def _exact(value: object) -> object:
    """A float as its bits (``float.hex``): equal only when bit for bit equal."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def _state(transfer: ReadTransfer) -> dict[str, object]:
    """Every member the lane may write, the floats bit for bit, the slots' bytes."""
    state = {name: _exact(getattr(transfer, name)) for name in _SCALARS}
    state["slots"] = [bytes(b) if b is not None else None for b in transfer._slots]
    state["datagrams"] = [bytes(d) if d is not None else None for d in transfer._datagrams]
    return state


# the points where Python may look at a running lane's transfer: each must find it written back
TOUCHES = ("sync", "remove", "handoff", "timer")


@pytest.mark.parametrize("window", [1, 16])
def test_lane_updates_the_transfer_as_on_ack_all(tmp_path, window: int) -> None:
    """Feed the same ACKs to a transfer served by a Lane and to its twin through
    on_ack_all (its clock set to the instant the C code used). The lane keeps the running
    state in C: at each point where Python can look (``sync()``, ``remove()`` from the
    dispatcher, a datagram handed to the pump, the timer's callback) the transfer must hold
    every member on_ack_all would have produced, the floats of the RTT estimate bit for bit,
    the slots' bytes included; and the datagrams sent are the twin's."""
    if not fast_path_available():
        from tests.conftest import require

        require(False, "the compiled TFTP data path is not built")
    from massboot.tftp import _fastpath

    content = pattern(70_000 * 8 + 5)  # blksize 8: the block numbers wrap
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = server_end.fileno()
    dispatcher = _fastpath.Dispatcher()
    try:
        def read(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        now = [0.0]
        lane_side = ReadTransfer(read, blksize=8, windowsize=window, timeout_min=0.001,
                                 timeout_max=2.0)
        python_side = ReadTransfer(read, blksize=8, windowsize=window, timeout_min=0.001,
                                   timeout_max=2.0, clock=lambda: now[0])
        handed: list[int] = []
        seen: list[dict[str, object]] = []  # the transfer as a Python callback found it
        timers: list[float] = []  # how late the dispatcher's timer called, past the deadline

        def handoff(size: int) -> None:
            handed.append(size)
            seen.append(_state(lane_side))

        def timer() -> None:
            timers.append(time.monotonic() - lane_side.deadline)
            seen.append(_state(lane_side))

        buf = bytearray(2048)
        lane = _fastpath.Lane(lane_side, sock, buf, fd, len(content), handoff, timer)
        assert dispatcher.add(sock, lane) == 1
        lane_side.start()                              # the first window (no OACK): Python's
        assert lane_side.on_ack_all(window) is not None  # the first RTT sample: Python's

        def step(block: int, touch: str) -> None:
            _copy_state(lane_side, python_side)
            del seen[:]
            client_end.send(Ack(block).encode())
            dispatcher.on_ready()
            assert not handed, "the lane handed a plain ACK to Python"
            fired = len(timers)
            if touch == "sync":
                lane.sync()
            elif touch == "remove":
                assert dispatcher.remove(sock) == 0
                assert dispatcher.add(sock, lane) == 1
            elif touch == "handoff":  # a datagram the lane does not take (RFC 1350: opcode 9)
                client_end.send(b"\x00\x09junk")
                dispatcher.on_ready()
                assert handed == [6] and bytes(buf[:6]) == b"\x00\x09junk"
                del handed[:]
            else:  # the deadline passes (RTO about 1 ms here)
                for _ in range(300):
                    if len(timers) > fired:
                        break
                    time.sleep(0.01)
                    dispatcher.on_ready()
                assert len(timers) > fired, "the timer did not call after the deadline"
            found = seen[-1] if touch in ("handoff", "timer") else _state(lane_side)
            now[0] = lane_side._progress_at   # the instant the C code took
            out = python_side.on_ack_all(block)
            assert out is not None and len(out) == window
            assert found == _state(python_side), touch
            assert _state(lane_side) == found  # and nothing moved after the callback
            assert [client_end.recv(64) for _ in out] == [bytes(d) for d in out]

        # full windows by the lane up to block 70,000, past block number 65535
        steps = 0
        while lane_side._next + window - 1 <= 70_000:
            touch = "timer" if steps % 1009 == 5 else TOUCHES[steps % 3]
            step((lane_side._next - 1) & 0xFFFF, touch)
            steps += 1
        assert lane_side._next == 70_001 and steps == 70_000 // window - 2
        assert lane.blocks == steps * window
        # the timer calls only once the deadline passed, never early
        assert timers and all(late >= 0.0 for late in timers), timers
        # the last (short) block is Python's: the ACK goes to the pump, nothing changed
        before = _state(lane_side)
        client_end.send(Ack(70_000 & 0xFFFF).encode())
        dispatcher.on_ready()
        assert handed == [4] and bytes(buf[:4]) == Ack(70_000 & 0xFFFF).encode()
        assert lane_side._next == 70_001
        assert before == _state(lane_side)
        # ACKs that are not the ACK of everything sent: handed over, nothing changed
        for block in (0, 5, (70_000 + 1) & 0xFFFF):
            client_end.send(Ack(block).encode())
            dispatcher.on_ready()
        assert handed == [4, 4, 4, 4]
        assert before == _state(lane_side)
    finally:
        dispatcher.close()
        server_end.close()
        client_end.close()
        os.close(fd)


def test_lanes_take_octet_transfers_with_windows_up_to_64_only(tmp_path) -> None:
    if not fast_path_available():
        from tests.conftest import require

        require(False, "the compiled TFTP data path is not built")
    from massboot.tftp import _fastpath

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for options in ({"windowsize": 65}, {"netascii": True}):
            transfer = ReadTransfer(lambda offset, length: b"", **options)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                _fastpath.Lane(transfer, sock.fileno(), bytearray(64), 0, 0, print, print)
        with pytest.raises(TypeError):
            _fastpath.Lane(object(), sock.fileno(), bytearray(64), 0, 0, print, print)
    finally:
        sock.close()


# -- selection: [tftpd] fast_path ----------------------------------------------------------


def test_fast_path_option_values() -> None:
    from massboot import config as cfg

    assert cfg.loads("[tftpd]\n").tftp.fast_path == "auto"
    assert cfg.loads("[tftpd]\nfast_path = OFF\n").tftp.fast_path == "off"
    with pytest.raises(cfg.ConfigError) as err:
        cfg.loads("[tftpd]\nfast_path = fast\n")
    assert "[tftpd] fast_path" in str(err.value) and "auto, on, off" in str(err.value)


def _on_exits_2_and_auto_starts_on_python(tmp_path, script: str, on_says: tuple[str, ...],
                                          auto_marker: str, auto_says: tuple[str, ...]) -> None:
    """massboot started after *script* (a ``python -c`` prelude; :func:`massboot_script`):
    ``fast_path = on`` exits 2 (start and ``--check-config``) naming the option and saying
    *on_says*; ``auto`` starts on the Python path, its start log up to *auto_marker* saying
    *auto_says*."""
    import subprocess
    import sys

    (tmp_path / "root").mkdir()
    ini = tmp_path / "m.ini"
    ini.write_text(f"[tftpd]\naddress = 127.0.0.1\nport = 0\nroot = root\nfast_path = on\n"
                   f"[massboot]\nstate_dir = {tmp_path / 'state'}\n")
    script = massboot_script(script)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo}
    for extra in ([], ["--check-config"]):
        proc = subprocess.run([sys.executable, "-c", script, "-t", "-c", str(ini), *extra], env=env,
                              capture_output=True, text=True, timeout=60, cwd=repo)
        assert proc.returncode == 2, proc.stderr
        assert "[tftpd] fast_path = 'on'" in proc.stderr
        for text in on_says:
            assert text in proc.stderr
    ini.write_text(ini.read_text().replace("fast_path = on", "fast_path = auto"))
    proc = subprocess.Popen([sys.executable, "-c", script, "-t", "-c", str(ini)], env=env, cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if auto_marker in line:
                break
        log_text = "".join(lines)
        assert "data_path=python" in log_text
        for text in auto_says:
            assert text in log_text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_fast_path_on_without_the_compiled_module_exits_2(tmp_path) -> None:
    """``fast_path = on`` where the extension was not built: exit code 2, the section,
    option and value, and the fix; ``auto`` starts on the Python path and says so."""
    # the module hidden as if never built (an entry of None makes its import fail)
    hide = "import sys; sys.modules['massboot.tftp._fastpath'] = None"
    _on_exits_2_and_auto_starts_on_python(tmp_path, hide, ("apt-get install gcc python3-dev",),
                                          "compiled data path is not built",
                                          ("apt-get install gcc python3-dev",))


def test_the_server_refuses_fast_path_on_without_the_module(monkeypatch) -> None:
    import massboot.tftp.server as server_module

    monkeypatch.setattr(server_module, "_fastpath", None)
    with pytest.raises(RuntimeError, match="apt-get install gcc python3-dev"):
        TftpServer(HOST, 0, FileStore("."), EventBus(), fast_path="on")
    assert TftpServer(HOST, 0, FileStore("."), EventBus()).data_path == "python"
    with pytest.raises(ValueError):
        TftpServer(HOST, 0, FileStore("."), EventBus(), fast_path="yes")


def test_metrics_say_which_data_path_runs(served: Served, client: Client) -> None:
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(MetricsConfig(port=0), EventBus(), tftp=served.server, registry=registry)
    v = registry.get_sample_value
    other = "python" if served.compiled else "compiled"
    assert v("massboot_tftp_data_path", {"path": served.data_path}) == 1
    assert v("massboot_tftp_data_path", {"path": other}) == 0
    before, chunks = v("massboot_tftp_compiled_blocks_total"), ReadAhead()
    content = pattern(200_000)
    served.put("f", content)
    assert client.download("f", blksize=1428) == content
    sent = v("massboot_tftp_compiled_blocks_total") - before
    assert sent >= 200_000 // 1428 - 3 if served.compiled else sent == 0
    # the read-ahead chunks by source, as the module counts them (none on the Python path)
    for source, value in zip(("shared", "read", "own"), read_ahead_counters(), strict=True):
        assert v("massboot_tftp_read_ahead_chunks_total", {"source": source}) == value
    shared, read, own = chunks.since()
    assert (read >= 200_000 // 15_708 - 2) if served.compiled else (shared, read, own) == (0, 0, 0)


def test_healthz_says_which_data_path_runs(served: Served) -> None:
    import requests
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.metrics import Metrics

    metrics = Metrics(MetricsConfig(address=HOST, port=0), EventBus(), tftp=served.server,
                      registry=CollectorRegistry())
    metrics.start()
    try:
        body = requests.get(f"http://{HOST}:{metrics.port}/healthz", timeout=5).json()
    finally:
        metrics.stop()
    assert body == {"status": "ok", "tftp": "up", "tftp_data_path": served.data_path}


def test_a_module_built_from_older_sources_is_not_used(tmp_path) -> None:
    """A checkout updated without rebuilding keeps the old ``_fastpath`` .so (no ``API``
    constant before API 2, another Lane contract): it must not serve a block. ``auto`` starts
    on the Python path and says why and how to rebuild; ``on`` exits 2 naming the option."""
    import massboot.tftp.server as server_module

    if not fast_path_available():
        require(False, "the compiled TFTP data path is not built")
    assert server_module._fast_path_mismatch(server_module._fastpath) is None   # this build
    # the real module as an old build presents itself: everything but the API constant
    stale = ("import importlib, sys, types; "
             "real = importlib.import_module('massboot.tftp._fastpath'); "
             "old = types.ModuleType(real.__name__); "
             "old.__dict__.update({k: v for k, v in vars(real).items() if k != 'API'}); "
             "sys.modules[real.__name__] = old; sys.modules['massboot.tftp']._fastpath = old")
    _on_exits_2_and_auto_starts_on_python(
        tmp_path, stale,
        ("does not match this massboot (module API 1, this massboot needs 4)",
         "reinstall massboot (pip install) to rebuild it"),
        "does not match this massboot", ("module API 1, this massboot needs 4", "rebuild it: pip install"))


# -- busy poll: [tftpd] busy_poll ----------------------------------------------------------


def test_busy_poll_option_values() -> None:
    from massboot import config as cfg

    assert cfg.loads("[tftpd]\n").tftp.busy_poll == 20
    assert cfg.loads("[tftpd]\nbusy_poll = 0\n").tftp.busy_poll == 0
    assert cfg.loads("[tftpd]\nbusy_poll = 1000\n").tftp.busy_poll == 1000
    for bad in ("1001", "-1", "fast"):
        with pytest.raises(cfg.ConfigError) as err:
            cfg.loads(f"[tftpd]\nbusy_poll = {bad}\n")
        assert "[tftpd] busy_poll" in str(err.value) and bad in str(err.value)
    with pytest.raises(ValueError, match="busy_poll 1001 outside 0..1000"):
        TftpServer(HOST, 0, FileStore("."), EventBus(), busy_poll=1001)


def _compiled_module():
    if not fast_path_available():
        require(False, "the compiled TFTP data path is not built")
    from massboot.tftp import _fastpath

    return _fastpath


class _Sockets:
    """*count* UDP sockets on 127.0.0.1 in a Dispatcher, each with a handler that reads one
    datagram and records which socket it was, and a sender."""

    def __init__(self, dispatcher, count: int) -> None:
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.served: list[int] = []
        self.hooks: dict[int, object] = {}
        for i, s in enumerate(self.socks):
            s.bind((HOST, 0))
            s.setblocking(False)
            dispatcher.add(s.fileno(), self._handler(i))

    def _handler(self, i: int):
        def handle() -> None:
            try:
                self.socks[i].recv(64)
            except BlockingIOError:
                return
            self.served.append(i)
            hook = self.hooks.get(i)
            if hook is not None:
                hook()
        return handle

    def send(self, i: int) -> None:
        self.sender.sendto(b"x", self.socks[i].getsockname())

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sender.close()


@pytest.mark.parametrize(("busy_poll", "sockets", "spins"),
                         [(1000, 16, True), (0, 16, False), (1000, 15, False)])
def test_busy_poll_serves_what_comes_while_it_polls_with_the_gil_released(
        busy_poll: int, sockets: int, spins: bool) -> None:
    """Socket 0's handler wakes a Python thread that sends to socket 1. Busy polling (16 or
    more sockets watched) serves socket 1 in the same on_ready() call, which needs the GIL
    released while it polls (the thread must run to send); without busy poll, or with fewer
    sockets, the call returns first (the GIL held throughout: the thread cannot send)."""
    from gevent import monkey

    # an OS thread and an OS lock (the suite runs monkey-patched: threading's would be greenlets)
    from massboot.tftp.server import busy_poll_counters

    start_thread = monkey.get_original("_thread", "start_new_thread")
    allocate_lock = monkey.get_original("_thread", "allocate_lock")
    fp = _compiled_module()
    for _attempt in range(5):   # a thread slower than the 1 ms window on a loaded machine
        before = busy_poll_counters()
        dispatcher = fp.Dispatcher(busy_poll_us=busy_poll)
        rig = _Sockets(dispatcher, sockets)
        go, done = allocate_lock(), allocate_lock()
        go.acquire()
        done.acquire()
        raw = monkey.get_original("socket", "socket")(socket.AF_INET, socket.SOCK_DGRAM)
        target = rig.socks[1].getsockname()

        def sender(go, done, raw, target) -> None:
            try:
                if go.acquire(True, 5):
                    raw.sendto(b"x", target)
            finally:
                done.release()

        start_thread(sender, (go, done, raw, target))
        try:
            rig.hooks[0] = go.release
            rig.send(0)
            time.sleep(0.05)   # socket 0's datagram is queued
            dispatcher.on_ready()
            served_in_call = list(rig.served)
            configured = dispatcher.busy_poll[0]
            hits, misses = (a - b for a, b in zip(busy_poll_counters()[:2], before[:2], strict=True))
        finally:
            if 0 not in rig.served:
                go.release()
            assert done.acquire(True, 5)
            raw.close()
            dispatcher.close()
            rig.close()
        assert served_in_call[:1] == [0]
        if not spins:
            assert served_in_call == [0]
            assert (hits, misses) == (0, 0)   # no busy poll at all
            return
        if served_in_call == [0, 1]:
            assert configured == busy_poll and hits == 1   # a poll found socket 1's datagram
            return
    pytest.fail(f"socket 1 never served while busy polling: {served_in_call}, {hits}, {misses}")


def test_busy_poll_hands_the_hub_back_under_endless_traffic() -> None:
    """A socket that is readable again as soon as it is served (its handler sends to it):
    busy polling serves it again and again, then returns within its budget (~1 ms) so that
    the hub's other work runs; without busy poll, once per call."""
    fp = _compiled_module()
    for busy_poll in (1000, 0):
        dispatcher = fp.Dispatcher(busy_poll_us=busy_poll)
        rig = _Sockets(dispatcher, 16)
        ran_away = 50_000   # served this often in one call: the budget failed; end the call

        def again(dispatcher=dispatcher, rig=rig, ran_away=ran_away) -> None:
            if len(rig.served) >= ran_away:
                dispatcher.close()   # on_ready stops at a closed set
            else:
                rig.send(3)

        rig.hooks[3] = again
        try:
            rig.send(3)
            time.sleep(0.05)
            began = time.monotonic()
            dispatcher.on_ready()
            took = time.monotonic() - began
        finally:
            dispatcher.close()
            rig.close()
        if busy_poll:
            assert 1 < len(rig.served) < ran_away, len(rig.served)
            assert took < 1.0   # returned (the budget is ~1 ms; generous for a loaded machine)
        else:
            assert rig.served == [3]


def test_busy_poll_window_shrinks_when_nothing_comes_and_grows_back() -> None:
    """Each spin that finds nothing halves the window (a trickle of traffic soon spins not at
    all); a wake-up within the configured window of the last hand-back doubles it again."""
    from massboot.tftp.server import busy_poll_counters

    fp = _compiled_module()
    before = busy_poll_counters()
    dispatcher = fp.Dispatcher(busy_poll_us=1000)
    rig = _Sockets(dispatcher, 16)
    try:
        windows = []
        for _ in range(12):
            rig.send(5)
            time.sleep(0.01)   # longer than the window: no growth at the next wake-up
            dispatcher.on_ready()
            windows.append(dispatcher.busy_poll[1])
        assert windows[:3] == [500, 250, 125]
        assert windows[-1] == 0
        hits, misses, spun = (a - b for a, b in zip(busy_poll_counters(), before, strict=True))
        assert dispatcher.busy_poll[0] == 1000 and (hits, misses) == (0, 9) and spun > 0
        for _attempt in range(10):   # two wake-ups in a row: the second within the window
            dispatcher.on_ready()
            dispatcher.on_ready()
            if dispatcher.busy_poll[1] > 0:
                break
        assert dispatcher.busy_poll[1] > 0
    finally:
        dispatcher.close()
        rig.close()
    with pytest.raises(ValueError, match="busy_poll_us 1001 outside 0..1000"):
        fp.Dispatcher(busy_poll_us=1001)


def test_a_storm_is_served_whole_and_its_busy_poll_is_counted(tftp_data_path: str, tmp_path) -> None:
    """24 lock-step clients at once (bench/tftp_client.py in another process, sha256 of every
    file checked) against both paths: every file whole; the compiled path busy polled (16 or
    more sockets watched) or scanned its lanes (16 ready at once) and
    ``massboot_tftp_busy_poll_seconds_total`` says how long, ``..._storm_scans_total`` how
    many scans; the Python path did not poll at all."""
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.metrics import Metrics
    from massboot.tftp.server import busy_poll_counters, scan_counters

    root = tmp_path / "root"
    root.mkdir()
    path = str(root / "storm.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
    # 24 clients from one address: max_per_client above that; busy_poll as configured by default
    server = TftpServer(HOST, 0, FileStore(str(root)), EventBus(), max_per_client=32,
                        fast_path=fast_path_option(tftp_data_path))
    server.start()
    served = Served(server, str(root), EventRecorder(), tftp_data_path)
    registry = CollectorRegistry()
    Metrics(MetricsConfig(port=0), EventBus(), tftp=served.server, registry=registry)
    before, scans_before = busy_poll_counters(), scan_counters()[0]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(   # cooperative (the suite is monkey-patched): the hub serves meanwhile
            [sys.executable, "-m", "bench.tftp_client", "--server", f"{HOST}:{served.server.port}",
             "--file", "storm.bin", "--local", path, "--clients", "24", "--workers", "1",
             "--verify-every", "1", "--deadline", "60"],
            cwd=repo, capture_output=True, text=True, timeout=120)
    finally:
        server.stop(timeout=0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "24/24 ok" in out.stdout and "sha256 checked 24" in out.stdout, out.stdout
    hits, misses, spun = (a - b for a, b in zip(busy_poll_counters(), before, strict=True))
    scans = scan_counters()[0] - scans_before
    if served.compiled:   # busy polls, or a storm scan (16 lanes ready at once) polling
        assert hits + misses + scans > 0 and spun > 0, (hits, misses, scans, spun)
        seconds = registry.get_sample_value("massboot_tftp_busy_poll_seconds_total")
        assert seconds == pytest.approx(busy_poll_counters()[2] / 1e9)
        assert seconds >= spun / 1e9 > 0
        assert registry.get_sample_value("massboot_tftp_storm_scans_total") == scan_counters()[0]
    else:
        assert (hits, misses, spun, scans) == (0, 0, 0, 0)


class _Lanes:
    """*count* transfers of one file, each served by a Lane over a datagram socketpair, started
    (DATA 1 sent, ACK 1 taken by Python: the first RTT sample) so that ACK 2 is a lane's."""

    def __init__(self, dispatcher, tmp_path, count: int) -> None:
        from massboot.tftp import _fastpath

        content = pattern(512 * 64)
        path = tmp_path / "scan.bin"
        path.write_bytes(content)
        self.fd = os.open(path, os.O_RDONLY)
        self.pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count)]
        self.handed: list[int] = []
        self.lanes = []
        for server_end, client_end in self.pairs:
            client_end.setblocking(False)
            transfer = ReadTransfer(lambda offset, length: os.pread(self.fd, length, offset),
                                    blksize=512, timeout_min=0.5, timeout_max=2.0)
            transfer.start()
            assert transfer.on_ack_all(1) is not None
            lane = _fastpath.Lane(transfer, server_end.fileno(), bytearray(2048), self.fd,
                                  len(content), self.handed.append, lambda: None)
            dispatcher.add(server_end.fileno(), lane)
            self.lanes.append(lane)

    def ack(self, i: int, block: int) -> None:
        self.pairs[i][1].send(Ack(block).encode())

    def data(self, i: int) -> list[int]:
        """The DATA block numbers client *i* received since last asked."""
        got = []
        while True:
            try:
                got.append(int.from_bytes(self.pairs[i][1].recv(2048)[2:4], "big"))
            except BlockingIOError:
                return got

    def close(self) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()
        os.close(self.fd)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_a_storm_scan_polls_the_lanes_and_ends_when_they_fall_silent(tmp_path) -> None:
    """16 or more lanes ready in one wake-up start a storm scan (README "TFTP busy poll"): the
    lane sockets leave the epoll set and are served in poll() passes while the set stays
    readable (the hub calls again instead of sleeping); once no lane had a datagram for the
    window the sockets are back in the set and the hub may sleep. Every ACK is answered with
    the next block in each phase, nothing handed to Python."""
    from massboot.tftp.server import scan_counters

    fp = _compiled_module()
    dispatcher = fp.Dispatcher(busy_poll_us=0, storm_scan_us=1000)
    rig = _Lanes(dispatcher, tmp_path, 20)
    try:
        before = scan_counters()
        for i in range(20):
            rig.ack(i, 2)
        assert _readable(dispatcher.fileno())
        dispatcher.on_ready()
        assert [rig.data(i) for i in range(20)] == [[3]] * 20   # served in the wake-up itself
        assert dispatcher.storm_scan == (1000, 1, 20)           # scanning, 20 lane sockets
        assert scan_counters()[0] - before[0] == 1
        assert _readable(dispatcher.fileno())                   # nothing queued: the eventfd
        for i in range(5):
            rig.ack(i, 3)
        dispatcher.on_ready()
        assert [rig.data(i) for i in range(20)] == [[4]] * 5 + [[]] * 15
        scans, passes, ready = (a - b for a, b in zip(scan_counters(), before, strict=True))
        assert scans == 1 and passes >= 1 and ready == 5
        for _ in range(200):   # silent for the 1 ms window: the scan ends (each call <= ~1 ms)
            time.sleep(0.002)
            dispatcher.on_ready()
            if dispatcher.storm_scan[1] == 0:
                break
        assert dispatcher.storm_scan == (1000, 0, 0)
        assert not _readable(dispatcher.fileno())               # the hub may sleep again
        rig.ack(7, 3)                                           # back in the epoll set
        assert _readable(dispatcher.fileno())
        dispatcher.on_ready()
        assert rig.data(7) == [4] and dispatcher.storm_scan[1] == 0   # one lane: no scan
        assert rig.handed == []
        assert scan_counters()[0] - before[0] == 1
    finally:
        dispatcher.close()
        rig.close()


def test_a_storm_scan_ends_with_its_last_transfer_and_needs_its_window(tmp_path) -> None:
    """Removing every lane during a scan ends it (the hub may sleep); storm_scan_us = 0 (what
    ``busy_poll = 0`` passes) never scans; 15 ready lanes do not start one; the bound holds."""
    fp = _compiled_module()
    for window, ready, scans in ((1000, 20, True), (0, 20, False), (1000, 15, False)):
        dispatcher = fp.Dispatcher(busy_poll_us=0, storm_scan_us=window)
        rig = _Lanes(dispatcher, tmp_path, 20)
        try:
            for i in range(ready):
                rig.ack(i, 2)
            dispatcher.on_ready()
            assert [rig.data(i) for i in range(ready)] == [[3]] * ready
            assert dispatcher.storm_scan[1] == int(scans), (window, ready)
            for lane_sock, _ in rig.pairs:
                dispatcher.remove(lane_sock.fileno())
            assert dispatcher.storm_scan == (window, 0, 0)
            assert not _readable(dispatcher.fileno())
        finally:
            dispatcher.close()
            rig.close()
    with pytest.raises(ValueError, match="storm_scan_us 1001 outside 0..1000"):
        fp.Dispatcher(storm_scan_us=1001)


# -- shared read-ahead (README "Performance", TFTP data path) ---------------------------------

@pytest.mark.parametrize("how", ["in_place", "renamed"])
def test_a_rewritten_file_is_never_served_from_chunks_of_the_old_one(served: Served, client: Client,
                                                                     how: str) -> None:
    """A transfer reads a file's chunks into the shared read-ahead; the operator then rewrites
    the file (in place, same size, or a new file renamed over it) and the next transfer, well
    within the second a shared chunk is handed out for, gets the new bytes, every one: a chunk
    is shared only between transfers that opened the same file version."""
    old, new = pattern(300_000, b"old"), pattern(300_000, b"new")
    path = served.put("f", old)
    before = ReadAhead()
    assert client.download("f", blksize=1428) == old
    if served.compiled:
        assert before.since()[1] >= 300_000 // 15_708 - 2   # read into the shared chunks
    time.sleep(0.05)    # past a coarse file-system clock tick: the rewrite changes the mtime
    if how == "in_place":
        with open(path, "r+b") as f:
            f.write(new)
    else:
        with open(path + ".new", "wb") as f:
            f.write(new)
        os.rename(path + ".new", path)
    again = ReadAhead()
    second = Client(served.server.port)
    try:
        assert second.download("f", blksize=1428) == new
    finally:
        second.close()
    assert again.since()[0] == 0    # nothing of the old version shared
    wait_for(lambda: len(served.recorder.of("tftp.done")) == 2)


def test_shared_chunks_are_handed_out_for_a_second_only(served: Served, client: Client) -> None:
    """Transfers of one file that follow each other closely share its chunks; a second after
    they were read they are read again (a shared chunk holds what the file held when it was
    read: no older than a second for a transfer that did not read it itself)."""
    content = pattern(200_000)
    served.put("f", content)
    assert client.download("f", blksize=1428) == content
    soon = ReadAhead()
    second, third = Client(served.server.port), Client(served.server.port)
    try:
        assert second.download("f", blksize=1428) == content
        shared, read, own = soon.since()
        assert (shared > 0) if served.compiled else (shared, read, own) == (0, 0, 0)
        time.sleep(1.2)
        late = ReadAhead()
        assert third.download("f", blksize=1428) == content
        shared, read, own = late.since()
        assert shared == 0 and ((read > 0) if served.compiled else read == 0), (shared, read, own)
    finally:
        second.close()
        third.close()


def test_transfers_beyond_the_shared_chunks_read_their_own(tftp_data_path: str, tmp_path) -> None:
    """160 transfers of 160 files hold a chunk each at once, more than the 128 shared places:
    those that find every place for their chunk in use read into their own buffer, and every
    transfer gets its own file's bytes, whichever way its blocks were read."""
    root = tmp_path / "root"
    root.mkdir()
    contents = [pattern(40_000, b"file %d" % i) for i in range(160)]
    for i, content in enumerate(contents):
        (root / f"f{i}").write_bytes(content)
    # no resend while the test client finishes the others one by one
    server = TftpServer(HOST, 0, FileStore(str(root)), EventBus(), timeout_min=10.0,
                        timeout_max=20.0, max_per_client=200, fast_path=fast_path_option(tftp_data_path))
    server.start()
    clients = [Client(server.port) for _ in contents]
    before = ReadAhead()
    try:
        for i, c in enumerate(clients):
            start(c, f"f{i}", blksize=1428)
            blocks(c, contents[i], 1, 2, blksize=1428)
            c.ack(2)     # the lane's: it reads the chunk of block 3 and holds it
        if tftp_data_path == "compiled":
            wait_for(lambda: sum(before.since()[1:]) >= len(clients))
            shared, read, own = before.since()
            assert read > 0 and own > 0 and read + own == len(clients), (shared, read, own)
        for i, c in enumerate(clients):
            assert contents[i][:2 * 1428] + finish(c, contents[i], 3, blksize=1428) == contents[i], i
    finally:
        for c in clients:
            c.close()
        server.stop(timeout=0)
    if tftp_data_path != "compiled":
        assert before.since() == (0, 0, 0)
