"""``[tftpd] processes = 2`` as a real subprocess on 127.0.0.0/8 (README, "TFTP worker processes").

Clients send from several 127.x addresses: the reuseport group steers each source address to
worker ``address mod 2`` (the kernel's BPF program), which the per-worker event counters of
/metrics show. Checked: steering, ``max_per_client`` for the whole server, the parent's
summed metrics, the boot progress and the filters' ``{mac}`` (the DHCP side's client map reaches
the workers), a worker killed and restarted, and one upstream GET per file for both workers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import time
from pathlib import Path

import gevent
import gevent.event
import pytest
import requests

from massboot.dhcp.packet import CODEC
from massboot.tftp.packet import Ack, Data, Error, ErrorCode, Opcode, OptionAck, Request, decode
from massboot.workers import share, steering_program
from tests.loopback.dhcpclient import RelayClient, pxe_options
from tests.loopback.test_cli import Running, free_port
from tests.mirror import Mirror

MAC_A = bytes.fromhex("525400000b01")
MAC_B = bytes.fromhex("525400000b02")
WAIT = 10.0

CONFIG = """
[logger]
level = info
[massboot]
state_dir = state
[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
probe = off
[bootfile]
default = pxelinux.0
[tftpd]
address = 127.0.0.1
port = {tftp}
root = {root}
processes = 2
max_per_client = 2
{tftpd}
[filters]
mac.txt = by-mac/{{mac}}.txt
[metrics]
address = 127.0.0.1
port = {metrics}
"""


def colon(mac: bytes) -> str:
    return ":".join(f"{b:02X}" for b in mac)


def worker_of(ip: str, count: int = 2) -> int:
    return int(ipaddress.IPv4Address(ip)) % count


def download(src: str, port: int, name: str, blksize: int = 1428, timeout: float = WAIT,
             progress: dict[str, int] | None = None) -> bytes:
    """A lock-step RRQ/ACK download from source address *src* (blksize and tsize asked);
    *progress*: bytes received so far, by source address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((src, 0))
        sock.settimeout(timeout)
        sock.sendto(Request(Opcode.RRQ, name, "octet",
                            {"blksize": str(blksize), "tsize": "0"}).encode(), ("127.0.0.1", port))
        out = bytearray()
        expected = 1
        while True:
            data, peer = sock.recvfrom(65536)
            packet = decode(data)
            if isinstance(packet, OptionAck):
                blksize = int(packet.options.get("blksize", 512))
                sock.sendto(Ack(0).encode(), peer)
                continue
            if isinstance(packet, Error):
                raise AssertionError(f"ERROR {packet.code}: {packet.message}")
            assert isinstance(packet, Data)
            if packet.block == expected % 65536:
                out += packet.payload
                expected += 1
                if progress is not None:
                    progress[src] = len(out)
            sock.sendto(Ack(packet.block).encode(), peer)
            if len(packet.payload) < blksize and packet.block == (expected - 1) % 65536:
                return bytes(out)
    finally:
        sock.close()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def worker_events(port: int) -> tuple[float, float]:
    text = scrape(port)
    return tuple(metric(text, "massboot_tftp_worker_events_total", f'{{worker="{w}"}}')
                 for w in (0, 1))  # type: ignore[return-value]


def pids(mb: Running) -> dict[int, int]:
    found = {}
    for m in re.finditer(r"tftp worker (\d) started \(pid (\d+)\)", mb.log):
        found[int(m.group(1))] = int(m.group(2))
    return found


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "files"
    (root / "by-mac").mkdir(parents=True)
    payload = os.urandom(1 << 20)
    (root / "1m.bin").write_bytes(payload)
    for mac in (MAC_A, MAC_B):
        (root / "by-mac" / f"{colon(mac)}.txt").write_text(f"config of {colon(mac)}\n")
    dhcp, tftp, metrics = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    path = tmp_path / "massboot.ini"
    path.write_text(CONFIG.format(dhcp=dhcp, tftp=tftp, metrics=metrics, root=root, tftpd=""))
    mb = Running("-c", str(path))
    try:
        mb.wait_for("tftp worker 0 started")
        mb.wait_for("tftp worker 1 started")
        deadline = time.monotonic() + 20
        while mb.log.count("tftp listening on 127.0.0.1") < 3:   # the parent and both workers
            assert time.monotonic() < deadline, mb.log
            time.sleep(0.05)
        yield mb, dhcp, tftp, metrics, payload
    finally:
        if mb.proc.poll() is None:
            mb.proc.send_signal(signal.SIGTERM)
            assert mb.exit_code() == 0, mb.log
        mb.close()


def test_budget_shares_sum_and_the_program():
    for total in (1, 2, 3, 1000, 256 << 20):
        for count in range(1, 9):
            if total >= count:
                assert sum(share(total, i, count) for i in range(count)) == total
    program = steering_program(3)
    assert len(program) == 24     # three struct sock_filter
    # ld [SKF_NET_OFF + 12]: the IPv4 source address
    assert program[:8] == bytes.fromhex("2000 0000") + (-0x100000 + 12 & 0xFFFFFFFF).to_bytes(4, "little")


def test_two_workers_steer_by_source_cap_sum_and_resolve_filters(server):
    mb, dhcp, tftp, metrics, payload = server
    relay = RelayClient(("127.0.0.1", dhcp))
    try:
        _, ack_a = relay.dora(MAC_A, pxe_options())
        _, ack_b = relay.dora(MAC_B, pxe_options())
    finally:
        relay.close()
    assert ack_a is not None and ack_b is not None
    ip_a, ip_b = ack_a.yiaddr, ack_b.yiaddr
    assert {worker_of(ip_a), worker_of(ip_b)} == {0, 1}     # consecutive addresses: both workers

    # the DHCP side's client map reaches each worker: {mac} resolves in both
    assert download(ip_a, tftp, "mac.txt") == f"config of {colon(MAC_A)}\n".encode()
    assert download(ip_b, tftp, "mac.txt") == f"config of {colon(MAC_B)}\n".encode()

    # steering: every transfer of one source address lands in worker (address mod 2)
    sources = [f"127.0.0.{n}" for n in range(1, 9)]
    finished = 2
    for worker in (0, 1):
        # a client is done at its last DATA, the worker at the last ACK: every earlier
        # transfer's tftp.done must be in before the count starts
        deadline = time.monotonic() + 5
        while metric(scrape(metrics), "massboot_tftp_transfers_completed_total") < finished:
            assert time.monotonic() < deadline, mb.log
            time.sleep(0.05)
        before = worker_events(metrics)
        group = [ip for ip in sources if worker_of(ip) == worker]
        jobs = [gevent.spawn(download, ip, tftp, "1m.bin") for ip in group for _ in range(2)]
        gevent.joinall(jobs, raise_error=True)
        assert all(job.value == payload for job in jobs)
        deadline = time.monotonic() + 5
        while True:
            after = worker_events(metrics)
            delta = (after[0] - before[0], after[1] - before[1])
            if delta[worker] >= 2 * len(jobs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert delta[worker] == 2 * len(jobs), (delta, mb.log)     # tftp.start + tftp.done each
        assert delta[1 - worker] == 0, delta
        finished += len(jobs)

    # one view: the parent's counters hold every worker's transfers
    text = scrape(metrics)
    assert metric(text, "massboot_tftp_transfers_completed_total") == 2 + 2 * len(sources)
    assert metric(text, "massboot_workers_capacity", '{pool="tftp"}') == 1000
    from massboot.tftp.server import fast_path_available

    path = "compiled" if fast_path_available() else "python"    # fast_path = auto
    health = requests.get(f"http://127.0.0.1:{metrics}/healthz", timeout=5).json()
    assert health == {"status": "ok", "tftp": "up", "dhcp": "up", "tftp_worker_0": "up",
                      "tftp_worker_1": "up", "tftp_data_path": path, "dhcp_codec": CODEC}
    # the workers' data path and the blocks their compiled path sent (summed), as one process's
    assert metric(text, "massboot_tftp_data_path", f'{{path="{path}"}}') == 1
    blocks = 2 * len(sources) * (len(payload) // 1428)       # the downloads' blocks, 1428 bytes
    deadline = time.monotonic() + 3     # the workers report every STATUS_PERIOD (0.5 s)
    while (compiled := metric(scrape(metrics), "massboot_tftp_compiled_blocks_total")) <= blocks // 2 \
            and path == "compiled" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (compiled > blocks // 2) if path == "compiled" else compiled == 0, (compiled, blocks)
    # and their read-ahead chunks (each download's lane reads one per 11 blocks, or shares it)
    text = scrape(metrics)
    chunks = sum(metric(text, "massboot_tftp_read_ahead_chunks_total", f'{{source="{source}"}}')
                 for source in ("shared", "read", "own"))
    assert (chunks >= blocks // 2 // 11) if path == "compiled" else chunks == 0, (chunks, blocks)

    # boot progress: the workers' transfers moved both clients past their boot file
    clients = {c["mac"]: c for c in requests.get(f"http://127.0.0.1:{metrics}/clients", timeout=5).json()}
    for mac in (MAC_A, MAC_B):
        assert clients[colon(mac)]["phase"] in ("loader", "kernel"), clients
        assert clients[colon(mac)]["bytes"] >= len(f"config of {colon(mac)}\n")

    # max_per_client = 2 for the whole server: a third transfer from one address, from another
    # port (the kernel's port hash could have sent it to the other worker), is refused
    held = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.3", 0))
            sock.settimeout(WAIT)
            sock.sendto(Request(Opcode.RRQ, "1m.bin", "octet", {}).encode(), ("127.0.0.1", tftp))
            assert isinstance(decode(sock.recvfrom(65536)[0]), Data)    # running, never ACKed
            held.append(sock)
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as third:
                third.bind(("127.0.0.3", 0))
                third.settimeout(WAIT)
                third.sendto(Request(Opcode.RRQ, "1m.bin", "octet", {}).encode(), ("127.0.0.1", tftp))
                reply = decode(third.recvfrom(65536)[0])
                assert reply == Error(ErrorCode.NOT_DEFINED, "Too many transfers from this address")
    finally:
        for sock in held:
            sock.close()


def test_a_killed_worker_is_restarted_on_its_socket(server):
    mb, _dhcp, tftp, metrics, payload = server
    victim = pids(mb)[1]
    os.kill(victim, signal.SIGKILL)
    seen_down = False
    deadline = time.monotonic() + 20
    while "tftp worker 1 started" not in mb.log.split("restarting it", 1)[-1] or \
            "restarting it" not in mb.log:
        health = requests.get(f"http://127.0.0.1:{metrics}/healthz", timeout=5)
        if health.json().get("tftp_worker_1") == "down":
            seen_down = True
            assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert time.monotonic() < deadline, mb.log
        time.sleep(0.05)
    assert seen_down
    assert re.search(rf"tftp worker 1 \(pid {victim}\) killed by signal SIGKILL; restarting it", mb.log)
    # the new worker reads the same socket: odd source addresses are served again
    assert download("127.0.0.1", tftp, "1m.bin", timeout=WAIT) == payload
    assert pids(mb)[1] != victim
    text = scrape(metrics)
    assert metric(text, "massboot_tftp_worker_restarts_total", '{worker="1"}') == 1
    assert metric(text, "massboot_tftp_worker_restarts_total", '{worker="0"}') == 0


def test_one_upstream_get_for_both_workers(tmp_path):
    mirror = Mirror()
    body = os.urandom(3 << 20)
    mirror.files["kernel"] = body
    mirror.hold_headers = gevent.event.Event()    # every client asks while the GET is held
    mirror.hold_at = 1 << 20                      # then the body stops at 1 MiB of 3 until gate
    (tmp_path / "files").mkdir()
    dhcp, tftp, metrics = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    path = tmp_path / "massboot.ini"
    path.write_text(CONFIG.format(dhcp=dhcp, tftp=tftp, metrics=metrics, root=mirror.root,
                                  tftpd="http_timeout = 10"))
    mb = Running("-t", "-c", str(path))
    try:
        deadline = time.monotonic() + 20
        while mb.log.count("tftp listening on 127.0.0.1") < 3:
            assert mb.proc.poll() is None and time.monotonic() < deadline, mb.log
            time.sleep(0.05)
        sources = [f"127.0.0.{n}" for n in range(1, 11)]
        assert {worker_of(ip) for ip in sources} == {0, 1}
        progress: dict[str, int] = {}
        jobs = [gevent.spawn(download, ip, tftp, "kernel", timeout=30, progress=progress)
                for ip in sources]
        deadline = time.monotonic() + 10
        while not mirror.gets("kernel"):
            assert time.monotonic() < deadline, mb.log
            gevent.sleep(0.05)
        gevent.sleep(1.0)      # the other worker's clients wait on the flight lock meanwhile
        mirror.hold_headers.set()
        # the body is held at 1 MiB: every client, of both workers, streams the part there is
        # (the other worker reads the downloader's growing .part file)
        deadline = time.monotonic() + 15
        while not all(progress.get(ip, 0) >= 512 << 10 for ip in sources):
            assert time.monotonic() < deadline, (progress, mb.log)
            gevent.sleep(0.05)
        assert all(progress[ip] < len(body) for ip in sources)
        mirror.gate.set()
        gevent.joinall(jobs, raise_error=True)
        assert all(job.value == body for job in jobs)
        assert len(mirror.gets("kernel")) == 1, mirror.requests
        # later clients of both workers: from the cache, still one GET
        for ip in ("127.0.0.20", "127.0.0.21"):
            assert download(ip, tftp, "kernel") == body
        assert len(mirror.gets("kernel")) == 1, mirror.requests
        text = scrape(metrics)
        assert metric(text, "massboot_tftp_transfers_completed_total") == len(sources) + 2
    finally:
        mb.proc.send_signal(signal.SIGTERM)
        code = mb.exit_code()
        mb.close()
        mirror.stop()
    assert code == 0, mb.log


def test_reload_reaches_both_workers(server, tmp_path):
    """SIGHUP: each worker reads the config again (max_per_client 2 → 1 applies in both);
    a changed ``processes`` is logged as needing a restart."""
    mb, _dhcp, tftp, _metrics, _payload = server
    path = tmp_path / "massboot.ini"
    path.write_text(path.read_text().replace("max_per_client = 2", "max_per_client = 1")
                    .replace("processes = 2", "processes = 3"))
    mb.proc.send_signal(signal.SIGHUP)
    mb.wait_for("reload: [tftpd] processes changed: takes effect at the next restart")
    mb.wait_for("tftp worker 0: reload applied")
    mb.wait_for("tftp worker 1: reload applied")
    for src in ("127.0.0.2", "127.0.0.3"):      # worker 0, worker 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
            for sock in (first, second):
                sock.bind((src, 0))
                sock.settimeout(WAIT)
            first.sendto(Request(Opcode.RRQ, "1m.bin", "octet", {}).encode(), ("127.0.0.1", tftp))
            assert isinstance(decode(first.recvfrom(65536)[0]), Data)
            second.sendto(Request(Opcode.RRQ, "1m.bin", "octet", {}).encode(), ("127.0.0.1", tftp))
            assert decode(second.recvfrom(65536)[0]) == \
                Error(ErrorCode.NOT_DEFINED, "Too many transfers from this address")


def test_workers_stop_when_the_parent_is_killed(server):
    """A worker whose parent died (SIGKILL: no cleanup) stops: it must not keep serving, or
    keep the port's group, without the parent."""
    mb, *_ = server
    workers = pids(mb)
    assert len(workers) == 2
    mb.proc.kill()
    mb.proc.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers.values()):
        assert time.monotonic() < deadline, mb.log
        time.sleep(0.1)
    assert "the parent is gone, stopping" in mb.log


def test_group_bound_in_index_order_and_a_refused_program_named(monkeypatch):
    import massboot.workers as workers

    socks = workers.reuseport_group("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1 and len(socks) == 3
    finally:
        for s in socks:
            s.close()
    good = workers.steering_program
    monkeypatch.setattr(workers, "steering_program", lambda n: good(n)[:8])   # no RET: invalid
    with pytest.raises(OSError) as err:
        workers.reuseport_group("127.0.0.1", 0, 2)
    assert "SO_ATTACH_REUSEPORT_CBPF" in str(err.value) and "processes = 1" in str(err.value)


def oack(src: str, port: int, name: str, timeout: float = WAIT) -> tuple[socket.socket, dict[str, str]]:
    """An RRQ from *src* asking blksize and tsize; the socket (the transfer left running) and
    the options of the OACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src, 0))
    sock.settimeout(timeout)
    sock.sendto(Request(Opcode.RRQ, name, "octet", {"blksize": "1428", "tsize": "0"}).encode(),
                ("127.0.0.1", port))
    reply = decode(sock.recvfrom(65536)[0])
    assert isinstance(reply, OptionAck), reply
    return sock, dict(reply.options)


def two_workers_on(mirror: Mirror, tmp_path: Path, tftpd: str = "http_timeout = 10"
                   ) -> tuple[Running, int, int]:
    """massboot -t with processes = 2 on *mirror*; (running, tftp port, metrics port)."""
    (tmp_path / "files").mkdir(exist_ok=True)
    dhcp, tftp, metrics = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    path = tmp_path / "massboot.ini"
    path.write_text(CONFIG.format(dhcp=dhcp, tftp=tftp, metrics=metrics, root=mirror.root,
                                  tftpd=tftpd))
    mb = Running("-t", "-c", str(path))
    deadline = time.monotonic() + 20
    while mb.log.count("tftp listening on 127.0.0.1") < 3:
        assert mb.proc.poll() is None and time.monotonic() < deadline, mb.log
        time.sleep(0.05)
    return mb, tftp, metrics


def stop(mb: Running) -> None:
    mb.proc.send_signal(signal.SIGTERM)
    code = mb.exit_code()
    mb.close()
    assert code == 0, mb.log


def test_tsize_of_a_download_in_flight_in_the_other_worker(tmp_path):
    """A client of the worker that does not download the file asks tsize while the other
    worker's download is held at 1 MiB: it gets the mirror's Content-Length (the downloader's
    announced length next to its .part), then the whole file."""
    mirror = Mirror()
    body = os.urandom(3 << 20)
    mirror.files["kernel"] = body
    mirror.hold_at = 1 << 20
    mb, tftp, _metrics = two_workers_on(mirror, tmp_path)
    try:
        leader, follower = "127.0.0.2", "127.0.0.3"        # worker 0 downloads, worker 1 follows
        assert (worker_of(leader), worker_of(follower)) == (0, 1)
        first, options = oack(leader, tftp, "kernel")
        assert options["tsize"] == str(len(body))            # the downloader's own client
        deadline = time.monotonic() + 10
        while mirror.sent < 1 << 20:
            assert time.monotonic() < deadline, mb.log
            gevent.sleep(0.05)
        second, options = oack(follower, tftp, "kernel")
        assert options["tsize"] == str(len(body)), (options, mb.log)
        assert mirror.sent < len(body)                       # still in flight when it asked
        second.close()
        first.close()
        job = gevent.spawn(download, follower, tftp, "kernel", timeout=30)
        gevent.sleep(0.5)
        mirror.gate.set()
        assert job.get(timeout=40) == body
        assert len(mirror.gets("kernel")) == 1, mirror.requests
    finally:
        stop(mb)
        mirror.stop()


def not_found(src: str, port: int, name: str) -> bool:
    """Whether an RRQ from *src* for *name* is answered ERROR 1 (File not found)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        sock.settimeout(WAIT)
        sock.sendto(Request(Opcode.RRQ, name, "octet", {"tsize": "0"}).encode(), ("127.0.0.1", port))
        reply = decode(sock.recvfrom(65536)[0])
    return isinstance(reply, Error) and reply.code == ErrorCode.FILE_NOT_FOUND


def test_a_404_is_asked_of_the_mirror_once_for_both_workers(tmp_path):
    """PXELINUX's config probes that do not exist: the first worker's 404 is shared through the
    cache directory, so the other worker's clients get File not found without a GET of their
    own (README, "TFTP worker processes")."""
    mirror = Mirror()
    mb, tftp, _metrics = two_workers_on(mirror, tmp_path)
    try:
        names = [f"pxelinux.cfg/01-52-54-00-00-0b-{n:02x}" for n in range(3)]
        for name in names:
            for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):   # 0, 1, 0, 1
                assert not_found(src, tftp, name), mb.log
            assert len(mirror.gets(name)) == 1, (name, mirror.requests)
        markers = os.listdir(tmp_path / "state" / "cache" / "missing")
        assert len(markers) == len(names) and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in markers)
        # a file that appears is found once the negative answer expired (not within it)
        mirror.files[names[0]] = b"default local\n"
        assert not_found("127.0.0.3", tftp, names[0])
        assert len(mirror.gets(names[0])) == 1
    finally:
        stop(mb)
        mirror.stop()
