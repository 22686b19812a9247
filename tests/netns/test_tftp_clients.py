"""Real third-party TFTP clients against massboot across a veth pair in network namespaces.

massboot runs TFTP only (``python -m massboot -t``) in a "server" namespace on 10.78.0.1:69;
the clients run in a "client" namespace at 10.78.0.2. One server serves the whole module; its
root is a tmp dir filled once with random files of 0, 511, 512 bytes, 64 KiB, 1, 8 and 40 MiB.

* Downloads: curl (tsize + blksize 512 by default, and ``--tftp-blksize 1468``), atftp
  (``blksize``, ``tsize``, ``windowsize``), busybox tftp (with and without ``-b``) and tftp-hpa
  (RFC 1350 only): every download's sha256 must match, and massboot's own log line for the
  transfer must show the block and window sizes the options asked for. The 40 MiB file goes to
  tftp-hpa (81,920 blocks of 512 bytes: the block number rolls over past 65535) and to atftp
  asking for the PXE ROM shape (blksize 1468, tsize, windowsize 8).
* Confinement: a table of names that try to leave the root (``..``, absolute paths, symlinks
  to a file or a directory outside) sent verbatim in a hand-written RRQ from the client
  namespace (curl would normalise ``../`` away): each gets ERROR 2 on the wire, and a log line.
  Percent-encoded names are literal for a local root: ``%2e%2e/etc/passwd`` is a missing file
  (ERROR 1), and a real directory named ``%2e%2e`` inside the root is served.
* A missing file gets ERROR 1 at once (curl exits 68); a write request gets ERROR 2.
* A storm: 24 curl downloads (blksize 1468) begun together and the server stopped for 0.3 s in
  the middle of them: every sha256 right, and the compiled path counts a storm scan (README
  "TFTP busy poll") in ``/metrics`` (``[metrics]`` on the server namespace's loopback).
* Loss: nftables drops about 5 % of the DATA packets arriving in the client namespace and of
  the ACKs arriving in the server namespace (input hooks only: a drop on an output hook makes
  ``sendto`` fail with EPERM, which clients treat as fatal); curl still gets the right bytes.
  At ~20 % both ways, atftp asking ``windowsize 8`` gets a 64 KiB file within 5 attempts (README
  ``[tftpd]``, "Loss and the clients' own timers").

Root only (``ip netns``); under ``CI=true`` they must run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from massboot.sources import client_text
from massboot.tftp.packet import Data, Error, ErrorCode, Opcode, OptionAck, Packet, Request, decode
from tests.conftest import fast_path_option, require, require_root, require_tool
from tests.netns.netns import Massboot, NetnsPair, namespace_pair, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SERVER_IP = "10.78.0.1"
CLIENT_IP = "10.78.0.2"
CONFIG = """\
[logger]
level = info
[tftpd]
address = {address}
port = 69
root = {root}
processes = {processes}
fast_path = {fast_path}
[metrics]
address = 127.0.0.1
port = {metrics_port}
"""
#: the whole module runs against each TFTP data path in one process, and against two worker
#: processes on the compiled path (README, "TFTP worker processes"; the Python path's workers are
#: the same code): CLIENT_IP goes to worker 0 (its address is even), OTHER_IP to 1
SERVERS = (("compiled", 1), ("python", 1), ("compiled", 2))
OTHER_IP = "10.78.0.3"
#: name -> size; random content, generated once per module.
FILES = {"empty.bin": 0, "b511.bin": 511, "b512.bin": 512, "64k.bin": 64 << 10, "1m.bin": 1 << 20,
         "8m.bin": 8 << 20, "40m.bin": 40 << 20}
SMALL = ["empty.bin", "b511.bin", "b512.bin", "1m.bin"]
BIG = "40m.bin"
LITERAL_CONTENT = b"a directory really named %2e%2e, inside the root\n"
CLIENT_TIMEOUT = 30       # seconds for one small download (they take well under a second)
BIG_TIMEOUT = 150         # the 40 MiB downloads (a few seconds each on an idle machine)
REPLY_TIMEOUT = 5.0       # a hand-written client's wait for the first reply
METRICS_PORT = 9178       # /metrics on the server namespace's own loopback

# client id -> (blksize, windowsize) that massboot must report for the transfer
NEGOTIATED = {
    "curl": (512, 1),
    "curl-blksize": (1468, 1),
    "atftp-blksize": (1468, 1),
    "atftp-tsize": (512, 1),
    "atftp-windowsize": (512, 8),
    "atftp-pxe": (1468, 8),
    "busybox": (512, 1),
    "busybox-blksize": (1468, 1),
    "tftp-hpa": (512, 1),
}
ATFTP_OPTIONS = {
    "atftp-blksize": ["blksize 1468"],
    "atftp-tsize": ["tsize 0"],
    "atftp-windowsize": ["windowsize 8"],
    "atftp-pxe": ["blksize 1468", "tsize 0", "windowsize 8"],
}
TOOL = {"curl": "curl", "atftp": "atftp", "busybox": "busybox", "tftp": "tftp"}   # client id prefix -> binary

def _download_params() -> list[object]:
    params: list[object] = []
    for client in NEGOTIATED:
        if client == "atftp-pxe":
            continue
        for name in SMALL:
            params.append(pytest.param(client, name, id=f"{client}-{name}"))
    params.append(pytest.param("tftp-hpa", BIG, id=f"tftp-hpa-{BIG}-rollover"))
    params.append(pytest.param("atftp-pxe", BIG, id=f"atftp-pxe-{BIG}"))
    return params


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@dataclass
class TftpEnv:
    pair: NetnsPair
    server: Massboot
    root: Path
    digests: dict[str, str]     # file name in the root -> sha256 hex
    processes: int = 1
    data_path: str = "compiled"


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module", params=SERVERS, ids=[f"{path}-processes{n}" for path, n in SERVERS])
def tftp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[TftpEnv]:
    """massboot in a namespace, per data path (``[tftpd] fast_path``, README Performance) and
    number of TFTP processes (README, "TFTP worker processes")."""
    data_path, processes = request.param
    require_root()
    require_tool("ip")
    if data_path == "compiled":
        from massboot.tftp.server import fast_path_available

        require(fast_path_available(), "the compiled TFTP data path is not built: apt-get install "
                "gcc python3-dev, then pip install -e .")
    base = tmp_path_factory.mktemp("tftp-clients")
    root = base / "root"
    root.mkdir()
    digests = {name: _write_random(root / name, size) for name, size in FILES.items()}
    # escape material: a symlink to a file outside, one to a directory outside, one to the
    # root's parent (where a real file waits), and controls that stay inside
    (base / "secret.txt").write_text("outside the root\n")
    (root / "passwd-link").symlink_to("/etc/passwd")
    (root / "etc-link").symlink_to("/etc")
    (root / "up").symlink_to("..")
    (root / "inside-link").symlink_to("b511.bin")
    (root / "sub").mkdir()
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "inside.bin").write_bytes(LITERAL_CONTENT)
    conf_dir = base / "etc"
    conf_dir.mkdir()
    config = conf_dir / "massboot.ini"
    config.write_text(CONFIG.format(address=SERVER_IP, root=root, processes=processes,
                                    fast_path=fast_path_option(data_path), metrics_port=METRICS_PORT))
    with namespace_pair("tftpcli", server_addr=f"{SERVER_IP}/24", client_addr=f"{CLIENT_IP}/24",
                        server_if="mts0", client_if="mtc0") as pair:
        pair.run(pair.client, ["ip", "addr", "add", f"{OTHER_IP}/24", "dev", "mtc0"], timeout=10)
        server = Massboot(pair, config, base, args=("-t",), ready="tftp listening on").start(timeout=30)
        # the parent's line, then each worker's
        wait_until(lambda: server.log_text().count("tftp listening on") >= 1 + (processes > 1) * processes,
                   30, "every TFTP worker listening")
        try:
            assert f"data_path={data_path}" in server.log_text(), server.log_text()
            yield TftpEnv(pair, server, root, digests, processes, data_path)
        finally:
            status = server.stop()
        # a graceful stop (SIGTERM), with transfers still running (curl's abandoned ones)
        assert status == 0, f"massboot exited {status} on SIGTERM:\n{server.log_text()}"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def run_client(env: TftpEnv, argv: list[str],
               timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return env.pair.run(env.pair.client, argv, timeout=timeout)


def run_atftp(env: TftpEnv, options: list[str], args: list[str],
              timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """atftp with ``--trace`` (it shows the OACK really received) and *options*.

    One retry, and only for "unexpected OACK": atftp 0.8 aborts so when its ACK of the OACK is
    lost and the server, rightly, sends the OACK again. That is the client's flaw, not the
    server's; a second failure of any kind fails the test.
    """
    argv = ["atftp", "--trace"]
    for option in options:
        argv += ["--option", option]
    argv += args
    result = run_client(env, argv, timeout)
    if result.returncode != 0 and "unexpected OACK" in result.stdout + result.stderr:
        result = run_client(env, argv, timeout)
    return result


def download_argv(client: str, name: str, out: Path) -> list[str]:
    if client == "curl":
        return ["curl", "-sS", "-o", str(out), f"tftp://{SERVER_IP}/{name}"]
    if client == "curl-blksize":
        return ["curl", "-sS", "--tftp-blksize", "1468", "-o", str(out), f"tftp://{SERVER_IP}/{name}"]
    if client == "busybox":
        return ["busybox", "tftp", "-g", "-r", name, "-l", str(out), SERVER_IP]
    if client == "busybox-blksize":
        return ["busybox", "tftp", "-g", "-b", "1468", "-r", name, "-l", str(out), SERVER_IP]
    if client == "tftp-hpa":
        return ["tftp", SERVER_IP, "-m", "binary", "-c", "get", name, str(out)]
    raise AssertionError(f"no argv for {client}")


def require_client(client: str) -> None:
    require_tool(TOOL[client.split("-")[0]])


DONE_LINE = r"tftp done client={ip}:\d+ file={name} bytes=(?P<bytes>\d+) .*blksize=(?P<blksize>\d+) " \
            r"windowsize=(?P<windowsize>\d+)$"


def done_lines(env: TftpEnv, name: str) -> list[re.Match[str]]:
    pattern = re.compile(DONE_LINE.format(ip=re.escape(CLIENT_IP), name=re.escape(name)), re.M)
    return list(pattern.finditer(env.server.log_text()))


def denied_logged(env: TftpEnv, port: int, name: str, code: int) -> bool:
    # a name that is not plain (a backslash, a space...) is logged repr-quoted (massboot.eventlog)
    line = f"tftp denied client={CLIENT_IP}:{port} file={client_text(name)} code={code} "
    return line in env.server.log_text()


def first_reply(env: TftpEnv, request: Request) -> tuple[Packet, int]:
    """Send *request* once from a fresh port in the client namespace; return the first datagram
    that comes back (decoded) and our port. A transfer that starts is ended with an ERROR."""

    def bind(sock: object) -> None:
        sock.bind((CLIENT_IP, 0))  # type: ignore[attr-defined]

    sock = env.pair.socket(env.pair.client, setup=bind)
    try:
        port = sock.getsockname()[1]
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendto(request.encode(), (SERVER_IP, 69))
        try:
            data, peer = sock.recvfrom(65536)
        except TimeoutError:
            raise AssertionError(f"no reply to {request} within {REPLY_TIMEOUT} s") from None
        reply = decode(data)
        if isinstance(reply, (Data, OptionAck)):
            sock.sendto(Error(ErrorCode.NOT_DEFINED, "test client done").encode(), peer)
        return reply, port
    finally:
        sock.close()


def assert_error(reply: Packet, code: int) -> None:
    assert isinstance(reply, Error), f"expected ERROR {code}, got {reply}"
    assert reply.code == code, f"expected ERROR {code}, got ERROR {reply.code} {reply.message!r}"


def nothing_leaked(out: Path) -> bool:
    return not out.exists() or out.stat().st_size == 0


# ------------------------------------------------------------------------------------------
# downloads
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "name"), _download_params())
def test_download_sha256(tftp: TftpEnv, tmp_path: Path, client: str, name: str) -> None:
    require_client(client)
    out = tmp_path / "out.bin"
    size = FILES[name]
    timeout = BIG_TIMEOUT if name == BIG else CLIENT_TIMEOUT
    before = len(done_lines(tftp, name))
    if client.startswith("atftp"):
        result = run_atftp(tftp, ATFTP_OPTIONS[client], ["--get", "-r", name, "-l", str(out), SERVER_IP],
                           timeout)
    else:
        result = run_client(tftp, download_argv(client, name, out), timeout)
    trace = result.stdout + result.stderr
    assert result.returncode == 0, f"{client} exited {result.returncode}:\n{trace[-3000:]}"
    assert out.exists(), f"{client} wrote no file:\n{trace[-3000:]}"
    assert out.stat().st_size == size
    assert sha256_file(out) == tftp.digests[name]
    if client in ("atftp-tsize", "atftp-pxe") and size:
        # atftp --trace prints the OACK it received: RFC 2349 tsize is the file's size (an empty
        # file's tsize is left out: curl rejects "tsize 0" in an OACK)
        assert f"received OACK <tsize: {size}," in trace, trace[:2000]

    # massboot's view of the same transfer: the options took effect (the client exits right
    # after its last ACK, so the server's line may follow a moment later)
    matches = wait_until(lambda: done_lines(tftp, name)[before:], 10,
                         f"massboot's 'tftp done' line for {name}")
    assert isinstance(matches, list)
    line = matches[-1]
    blksize, windowsize = NEGOTIATED[client]
    assert int(line["bytes"]) == size
    assert (int(line["blksize"]), int(line["windowsize"])) == (blksize, windowsize), line.group(0)
    if client == "tftp-hpa" and name == BIG:
        assert size // 512 + 1 > 0xFFFF, "the rollover case must need more than 65535 blocks"


def test_both_client_addresses_served_at_once(tftp: TftpEnv, tmp_path: Path) -> None:
    """curl from CLIENT_IP and from OTHER_IP at once (with processes = 2: one client per worker,
    steered by source address), 1 MiB each, right bytes; and tftp-hpa after them."""
    require_client("curl")
    outs = {ip: tmp_path / f"{ip}.bin" for ip in (CLIENT_IP, OTHER_IP)}
    procs = [tftp.pair.popen(tftp.pair.client, ["curl", "-sS", "--interface", ip, "-o", str(out),
                                                 f"tftp://{SERVER_IP}/1m.bin"])
             for ip, out in outs.items()]
    for proc in procs:
        assert proc.wait(timeout=CLIENT_TIMEOUT) == 0
    for out in outs.values():
        assert sha256_file(out) == tftp.digests["1m.bin"]
    for ip in outs:
        line = re.compile(DONE_LINE.format(ip=re.escape(ip), name=re.escape("1m.bin")), re.M)
        wait_until(lambda line=line: line.search(tftp.server.log_text()), 10, f"the done line of {ip}")


STORM_CLIENTS = 24      # curl processes at once; a storm scan needs 16 ready (README "TFTP busy poll")
#: one address per client (``[tftpd] max_per_client`` is 8), all even: with processes = 2 the
#: source-address steering sends them all to worker 0, where the storm must happen
STORM_IPS = [f"10.78.0.{100 + 2 * i}" for i in range(STORM_CLIENTS)]
STORM_FILE = "8m.bin"
STORM_PAUSE = 0.3       # seconds the server is stopped (curl resends after 1 s at the soonest)


def scrape(env: TftpEnv) -> str:
    """The server's /metrics (the parent's, workers summed), from inside its namespace."""
    result = env.pair.run(env.pair.server, ["curl", "-sS", f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                          timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics:\n{text}"
    return float(m.group(1))


def server_pids(env: TftpEnv) -> list[int]:
    """massboot's pid and its worker processes' (``[tftpd] processes``)."""
    assert env.server.proc is not None
    pids, todo = [], [env.server.proc.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """The server's processes stopped (SIGSTOP) for the block, resumed (SIGCONT) after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def client_sockets(env: TftpEnv) -> int:
    """UDP sockets bound to the storm's client addresses (a curl's, once it has started)."""
    result = env.pair.run(env.pair.client, ["ss", "-Huan"], timeout=10)
    locals_ = {line.split()[3] for line in result.stdout.splitlines() if len(line.split()) > 4}
    return sum(1 for local in locals_ if local.rpartition(":")[0] in STORM_IPS)


def transfer_sockets(env: TftpEnv) -> int:
    """The server's transfer sockets to the storm's clients (each connected to its client)."""
    result = env.pair.run(env.pair.server, ["ss", "-Hun", "state", "established"], timeout=10)
    peers = {line.split()[-1] for line in result.stdout.splitlines() if line.strip()}
    return sum(1 for peer in peers if peer.rpartition(":")[0] in STORM_IPS)


def test_a_storm_of_real_clients(tftp: TftpEnv) -> None:
    """24 curl downloads at once in the PXE ROMs' shape (blksize 1468, lock-step), and the server
    stopped (SIGSTOP) for 0.3 s in the middle of them, as a loaded boot server is by its
    scheduler: every client's ACK is waiting when it runs again. The compiled data path then
    finds 24 transfer sockets ready in one wake-up and serves them in a storm scan (README
    "TFTP busy poll"), counted in ``massboot_tftp_storm_scans_total``; every download's sha256
    must be right, on both data paths and with two worker processes."""
    require_client("curl")
    require_tool("ss", "bash")
    scans_before = metric(scrape(tftp), "massboot_tftp_storm_scans_total")
    done = re.compile(DONE_LINE.format(ip=r"10\.78\.0\.\d+", name=re.escape(STORM_FILE)), re.M)
    before = len(done.findall(tftp.server.log_text()))
    for ip in STORM_IPS:
        tftp.pair.run(tftp.pair.client, ["ip", "addr", "add", f"{ip}/24", "dev", "mtc0"], timeout=10)
    url = f"tftp://{SERVER_IP}/{STORM_FILE}"
    pids = server_pids(tftp)
    procs: list[subprocess.Popen] = []
    try:
        # the clients start together: their RRQs wait for the stopped server, which answers them
        # all in its first wake-up (a rack powered on at once), so the transfers overlap fully
        with stopped(pids):
            procs = [tftp.pair.popen(tftp.pair.client,
                                     ["bash", "-o", "pipefail", "-c",
                                      f"curl -sS --interface {ip} --tftp-blksize 1468 {url} | sha256sum"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for ip in STORM_IPS]
            wait_until(lambda: client_sockets(tftp) >= STORM_CLIENTS, 30, "every curl's socket")
            time.sleep(0.05)   # its RRQ follows at once
        wait_until(lambda: transfer_sockets(tftp) >= STORM_CLIENTS - 4, 30, "the transfers running")
        # the storm: every client's ACK waits for the stopped server
        with stopped(pids):
            time.sleep(STORM_PAUSE)
            running = transfer_sockets(tftp)
        # the premise: the stop fell in the middle of the storm, not after it
        assert running >= 16, f"only {running} transfers were running when the server was stopped"
        for proc in procs:
            out, err = proc.communicate(timeout=BIG_TIMEOUT)
            assert proc.returncode == 0, f"curl exited {proc.returncode}: {err}"
            assert out.split()[0] == tftp.digests[STORM_FILE], out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ip in STORM_IPS:
            tftp.pair.run(tftp.pair.client, ["ip", "addr", "del", f"{ip}/24", "dev", "mtc0"], timeout=10)
    wait_until(lambda: len(done.findall(tftp.server.log_text())) - before >= STORM_CLIENTS, 10,
               f"massboot's {STORM_CLIENTS} 'tftp done' lines")
    if tftp.data_path == "compiled":
        wait_until(lambda: metric(scrape(tftp), "massboot_tftp_storm_scans_total") > scans_before, 10,
                   "a storm scan counted in /metrics")
    else:   # the Python path has no scan: the metric stays at 0
        assert metric(scrape(tftp), "massboot_tftp_storm_scans_total") == scans_before == 0


# ------------------------------------------------------------------------------------------
# confinement
# ------------------------------------------------------------------------------------------

ESCAPES = [
    ("../etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("../../etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("../../../../../../../../etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("/etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("//etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("a/../../etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("./../etc/passwd", ErrorCode.ACCESS_VIOLATION),
    ("sub/../b511.bin", ErrorCode.ACCESS_VIOLATION),         # any '..' is refused, even one that stays in
    ("..\\..\\etc\\passwd", ErrorCode.ACCESS_VIOLATION),     # backslash separators (Windows-style clients)
    ("<root>/b511.bin", ErrorCode.ACCESS_VIOLATION),         # absolute, even when it points into the root
    ("passwd-link", ErrorCode.ACCESS_VIOLATION),             # symlink -> /etc/passwd
    ("etc-link/passwd", ErrorCode.ACCESS_VIOLATION),         # symlink -> /etc, a directory outside
    ("up/secret.txt", ErrorCode.ACCESS_VIOLATION),           # symlink -> .., to a file that exists
    # A local root takes names literally: percent-encoding is not decoded, so these are names
    # of files that do not exist under the root (a remote root checks the decoded name too).
    ("%2e%2e/etc/passwd", ErrorCode.FILE_NOT_FOUND),
    ("%2e%2e%2fetc%2fpasswd", ErrorCode.FILE_NOT_FOUND),
    ("%2E%2E/%2E%2E/etc/passwd", ErrorCode.FILE_NOT_FOUND),
]


@pytest.mark.parametrize(("name", "code"), ESCAPES, ids=[name for name, _ in ESCAPES])
def test_escape_refused_on_the_wire(tftp: TftpEnv, name: str, code: int) -> None:
    name = name.replace("<root>", str(tftp.root))
    reply, port = first_reply(tftp, Request(Opcode.RRQ, name, "octet"))
    assert_error(reply, code)
    # every refusal is logged, with the name as sent
    wait_until(lambda: denied_logged(tftp, port, name, code), 5, f"the denial of {name!r} in massboot's log")


@pytest.mark.parametrize(("name", "content"), [
    ("inside-link", None),                      # a symlink that stays inside the root is fine
    ("%2e%2e/inside.bin", LITERAL_CONTENT),     # the literal directory named %2e%2e
])
def test_confined_names_served(tftp: TftpEnv, name: str, content: bytes | None) -> None:
    expected = (tftp.root / "b511.bin").read_bytes() if content is None else content
    reply, _port = first_reply(tftp, Request(Opcode.RRQ, name, "octet"))
    assert isinstance(reply, Data), f"expected DATA 1 for {name!r}, got {reply}"
    assert reply.block == 1
    assert reply.payload == expected


CLIENT_ESCAPE_NAMES = ["../etc/passwd", "/etc/passwd", "passwd-link", "etc-link/passwd"]


@pytest.mark.parametrize("name", CLIENT_ESCAPE_NAMES)
@pytest.mark.parametrize("client", ["atftp", "busybox", "tftp-hpa"])
def test_escape_refused_real_clients(tftp: TftpEnv, tmp_path: Path, client: str, name: str) -> None:
    """atftp, busybox and tftp-hpa send the name verbatim; each reports the access violation."""
    require_client(client)
    out = tmp_path / "out"
    if client == "atftp":
        result = run_atftp(tftp, [], ["--get", "-r", name, "-l", str(out), SERVER_IP])
        assert result.returncode != 0
        assert "error received from server <Access violation" in result.stderr, result.stderr
    elif client == "busybox":
        result = run_client(tftp, download_argv(client, name, out))
        assert result.returncode != 0
        assert "server error: (2)" in result.stderr, result.stderr
    else:
        # tftp-hpa exits 0 whatever happens: its message is the only verdict
        result = run_client(tftp, download_argv(client, name, out))
        assert "Error code 2:" in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert nothing_leaked(out), f"{client} received bytes for {name!r}"


# ------------------------------------------------------------------------------------------
# missing files, write requests
# ------------------------------------------------------------------------------------------


def test_missing_file_error_1_at_once(tftp: TftpEnv) -> None:
    """The first (and only) answer to one RRQ is ERROR 1: no client waits for a timeout."""
    reply, port = first_reply(tftp, Request(Opcode.RRQ, "no-such-file.bin", "octet",
                                            {"tsize": "0", "blksize": "1468"}))
    assert_error(reply, ErrorCode.FILE_NOT_FOUND)
    wait_until(lambda: denied_logged(tftp, port, "no-such-file.bin", 1), 5, "the denial in massboot's log")


@pytest.mark.parametrize("client", ["curl", "atftp", "busybox", "tftp-hpa"])
def test_missing_file_real_clients(tftp: TftpEnv, tmp_path: Path, client: str) -> None:
    require_client(client)
    out = tmp_path / "out"
    name = "no-such-file.bin"
    if client == "curl":
        result = run_client(tftp, download_argv(client, name, out))
        assert result.returncode == 68, (result.returncode, result.stderr)   # CURLE_TFTP_NOTFOUND
    elif client == "atftp":
        result = run_atftp(tftp, ["tsize 0"], ["--get", "-r", name, "-l", str(out), SERVER_IP])
        assert result.returncode != 0
        assert "error received from server <File not found" in result.stderr, result.stderr
    elif client == "busybox":
        result = run_client(tftp, download_argv(client, name, out))
        assert result.returncode != 0
        assert "server error: (1)" in result.stderr, result.stderr
    else:
        result = run_client(tftp, download_argv(client, name, out))
        assert "Error code 1:" in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert nothing_leaked(out)


def test_write_request_error_2(tftp: TftpEnv, tmp_path: Path) -> None:
    reply, _port = first_reply(tftp, Request(Opcode.WRQ, "uploaded-raw.bin", "octet"))
    assert_error(reply, ErrorCode.ACCESS_VIOLATION)
    assert not (tftp.root / "uploaded-raw.bin").exists()


def test_put_with_tftp_hpa_refused(tftp: TftpEnv, tmp_path: Path) -> None:
    require_tool("tftp")
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(1000))
    result = run_client(tftp, ["tftp", SERVER_IP, "-m", "binary", "-c", "put", str(local), "uploaded.bin"])
    assert "Error code 2:" in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert not (tftp.root / "uploaded.bin").exists()


# ------------------------------------------------------------------------------------------
# loss
# ------------------------------------------------------------------------------------------

LOSS_TABLE = "massboot_loss"
# Input hooks only: a drop on an output hook makes the sender's sendto() fail with EPERM,
# which curl, busybox and tftp-hpa treat as fatal; that is not what a lost packet looks like.
LOSS_RULES = """\
table inet {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        udp {port} != 69 numgen random mod 100 < {percent} counter drop
    }}
}}
"""
DROPPED = re.compile(r"counter packets (\d+)")


def _nft(env: TftpEnv, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return env.pair.run(ns, ["nft", *args], timeout=20)


@contextlib.contextmanager
def packet_loss(env: TftpEnv, tmp_path: Path, percent: int) -> Iterator[list[str]]:
    """Drop ~*percent* % of what the transfers' TIDs send into the client namespace (DATA,
    OACK) and of what arrives at them in the server namespace (ACKs); yields the namespaces
    whose rules are installed, and removes the rules afterwards."""
    pair = env.pair
    rules = {
        pair.client: LOSS_RULES.format(table=LOSS_TABLE, port="sport", percent=percent),   # DATA, OACK
        pair.server: LOSS_RULES.format(table=LOSS_TABLE, port="dport", percent=percent),   # ACKs
    }
    installed: list[str] = []
    try:
        for ns, text in rules.items():
            path = tmp_path / f"loss-{len(installed)}.nft"
            path.write_text(text)
            result = _nft(env, ns, "-f", str(path))
            require(result.returncode == 0, f"nftables unusable in a namespace: {result.stderr.strip()}")
            installed.append(ns)
        yield installed
    finally:
        for ns in installed:
            _nft(env, ns, "delete", "table", "inet", LOSS_TABLE)


def test_curl_through_packet_loss(tftp: TftpEnv, tmp_path: Path) -> None:
    """~5 % of DATA (into the client) and ~5 % of ACKs (into the server) are dropped at random:
    retransmission still delivers the exact bytes."""
    require_tool("curl", "nft")
    with packet_loss(tftp, tmp_path, 5) as installed:
        out = tmp_path / "out.bin"
        result = run_client(tftp, download_argv("curl-blksize", "1m.bin", out), timeout=120)
        assert result.returncode == 0, (result.returncode, result.stderr)
        assert sha256_file(out) == tftp.digests["1m.bin"]
        for ns in installed:
            listing = _nft(tftp, ns, "list", "table", "inet", LOSS_TABLE).stdout
            dropped = sum(int(n) for n in DROPPED.findall(listing))
            assert dropped > 0, f"the loss rule in {ns} dropped nothing:\n{listing}"


ATFTP_LOSS_PERCENT = 20
ATFTP_LOSS_ATTEMPTS = 5
ATFTP_LOSS_FILE = "64k.bin"   # 16 windows of 8 blocks: 1m.bin's 256 take minutes (see below)


@pytest.mark.timeout(1200)   # a lost window-end ACK costs atftp 10-15 s: an attempt may take minutes
def test_atftp_windowsize_through_heavy_loss(tftp: TftpEnv, tmp_path: Path) -> None:
    """~20 % of everything a transfer's TID sends and receives is dropped (the RRQ to port 69
    is not): atftp asking ``windowsize 8`` gets the exact bytes within 5 attempts.

    atftp 0.8 aborts ("unexpected OACK") on any second OACK, and resends its ACK 0 (or its
    RRQ, when the OACK was lost) only after its own 5 s timeout: an OACK resent by the server's
    timer after an ACK 0 was lost kills the transfer. The server's conservative pre-ACK timer
    (README ``[tftpd]`` ``first_timeout``) keeps that rare, and a repeated RRQ gets the OACK at
    once. atftp also ignores blocks out of order or already received and ACKs nothing until
    5 s pass without a datagram: after a lost window-end ACK, the server's resends must outgrow
    that wait (``timeout``, 6 s) for atftp to resend its ACK. So a lost ACK costs several
    seconds: a 1 MiB file (256 windows) takes minutes at this loss, hence 64 KiB.
    """
    require_tool("atftp", "nft")
    outcomes: list[str] = []
    with packet_loss(tftp, tmp_path, ATFTP_LOSS_PERCENT):
        out = tmp_path / "out.bin"
        argv = ["atftp", "--trace", "--option", "windowsize 8", "--get", "-r", ATFTP_LOSS_FILE,
                "-l", str(out), SERVER_IP]
        for _attempt in range(ATFTP_LOSS_ATTEMPTS):
            out.unlink(missing_ok=True)
            try:
                result = run_client(tftp, argv, timeout=230)
            except TimeoutError:   # still crawling: a failed attempt, not a failed test
                outcomes.append("did not finish in 230 s")
                continue
            if result.returncode == 0 and out.exists() and sha256_file(out) == tftp.digests[ATFTP_LOSS_FILE]:
                outcomes.append("ok")
                break
            lines = (result.stdout + result.stderr).splitlines()
            last = [line for line in lines if not line.startswith(("received DATA", "sent ACK"))]
            outcomes.append(f"exit {result.returncode}: {' | '.join(last[-4:])}")
    print(f"atftp windowsize 8 at {ATFTP_LOSS_PERCENT} % loss: {outcomes}")
    assert outcomes[-1] == "ok", outcomes


# ------------------------------------------------------------------------------------------
# the server itself
# ------------------------------------------------------------------------------------------


def test_server_log_clean(tftp: TftpEnv) -> None:
    """After everything above: massboot still runs and logged no traceback or error."""
    assert tftp.server.proc is not None and tftp.server.proc.poll() is None, tftp.server.log_text()
    text = tftp.server.log_text()
    assert "Traceback" not in text, text
    assert not re.search(r"^\S+ PXE\[\w+\] (ERROR|CRITICAL):", text, re.M), text

