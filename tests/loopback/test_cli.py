"""The massboot command: exit codes, --check-config, --version, signals (as a real subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import massboot
from tests.conftest import massboot_script, require, require_root, require_tool
from tests.faults import FAULT

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massboot", *args], cwd=REPO, env=ENV, text=True,
                          capture_output=True, timeout=timeout)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A massboot subprocess whose stderr is collected line by line as it comes."""

    def __init__(self, *argv: str, prefix: tuple[str, ...] = ("-m", "massboot"),
                 python: str = sys.executable, cwd: str | os.PathLike[str] = REPO,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([python, *prefix, *argv], cwd=cwd, env=ENV if env is None else env,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20) -> None:
        """Wait until a stderr line contains *text* (fail if massboot exits or time runs out)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or self._reader.is_alive(), \
                f"massboot exited {self.proc.returncode} before {text!r}:\n{self.log}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.log}"
            time.sleep(0.02)

    def exit_code(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "massboot.ini"
    path.write_text(text)
    return str(path)


GOOD = """
[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
lease_db = :memory:
[bootfile]
default = pxelinux.0
[tftpd]
port = {tftp}
root = .
"""


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"massboot {massboot.__version__}"


def test_check_config_ok_and_summary(tmp_path):
    result = run("-c", write(tmp_path, GOOD.format(dhcp=6767, tftp=6969)), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "pool 127.0.0.100 .. 127.0.0.109 (10 addresses)" in result.stdout
    assert "network: lo 127.0.0.1/8, server address 127.0.0.1" in result.stdout
    assert result.stdout.strip().endswith("config OK")


def test_bad_value_names_section_option_value(tmp_path):
    result = run("-c", write(tmp_path, GOOD.format(dhcp=6767, tftp=6969) + "pool_count = many\n"
                             .replace("pool_count", "[bootpd]\npool_count")), "--check-config")
    assert result.returncode == 2
    assert "[bootpd] pool_count = 'many': not an integer" in result.stderr


def test_pool_outside_every_network(tmp_path):
    # address (the fallback of the detection) left at 0.0.0.0, pool_start in no local network
    text = GOOD.format(dhcp=6767, tftp=6969).replace("127.0.0.100", "203.0.113.100").replace(
        "address = 127.0.0.1\n", "")
    result = run("-c", write(tmp_path, text), "--check-config")
    assert result.returncode == 2
    assert "Unable to detect network configuration" in result.stderr
    assert "pool_start 203.0.113.100" in result.stderr and "lo 127.0.0.1/8" in result.stderr
    result = run("-c", write(tmp_path, text), "-p")
    assert result.returncode == 1 and "Unable to detect network configuration" in result.stderr


def test_argument_errors(tmp_path):
    assert run("-c", str(tmp_path / "nope.ini")).returncode == 2
    result = run("-c", write(tmp_path, GOOD.format(dhcp=1, tftp=2)), "-p", "-t")
    assert result.returncode == 2 and "Cannot exclude PXE & TFTP servers altogether" in result.stderr


def test_serves_then_stops_cleanly_on_sigterm(tmp_path):
    dhcp, tftp = free_port(), free_port()
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp) + "[logger]\nlevel = info\n")
    mb = Running("-c", path)
    try:
        mb.wait_for("tftp listening")
        assert "dhcp listening on 127.0.0.1" in mb.log
        # a real transfer through the command: RRQ + DATA 1 + ACK
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"\x00\x01hello.txt\x00octet\x00", ("127.0.0.1", tftp))
            data, server = s.recvfrom(600)
            assert data == b"\x00\x03\x00\x01hello\n"
            s.sendto(b"\x00\x04\x00\x01", server)
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()
    assert mb.lines[-1].rstrip().endswith("INFO: stopped"), mb.log


@pytest.mark.parametrize("service", ["dhcp", "tftp", "metrics"])
def test_port_in_use_names_the_service_and_what_may_hold_it(tmp_path, service):
    kind = socket.SOCK_STREAM if service == "metrics" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        ports = {"dhcp": free_port(), "tftp": free_port(), "metrics": free_port(socket.SOCK_STREAM)}
        ports[service] = port
        text = GOOD.format(dhcp=ports["dhcp"], tftp=ports["tftp"]) + (
            f"[metrics]\naddress = 127.0.0.1\nport = {ports['metrics']}\n")
        result = run("-c", write(tmp_path, text))
    assert result.returncode == 1, result.stderr
    transport, ss = ("TCP", "ss -lntp") if service == "metrics" else ("UDP", "ss -lnup")
    assert f"Error: {service}: cannot listen on {transport} 127.0.0.1:{port}: Address already in use: " \
        in result.stderr
    holder = {"dhcp": "another DHCP server (dnsmasq", "tftp": "another TFTP server (tftpd-hpa",
              "metrics": "another exporter"}[service]
    assert holder in result.stderr and f"`{ss} 'sport = :{port}'` shows which process" in result.stderr


def test_privileged_port_without_root_says_what_is_needed(tmp_path):
    """As user nobody, port 69 fails with the service, the port and the remedy."""
    require_root()      # to switch to another user
    require_tool("setpriv")
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        require(int(f.read()) > 69, "net.ipv4.ip_unprivileged_port_start lets anyone bind port 69")
    path = write(tmp_path, "[tftpd]\naddress = 127.0.0.1\nport = 69\nroot = .\n")
    # nobody, keeping only CAP_DAC_READ_SEARCH: it reads this checkout and config wherever they
    # are (pytest's tmp_path is private to root), and may not bind below 1024
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                             sys.executable, "-m", "massboot", "-t", "-c", path],
                            cwd=REPO, env=ENV, text=True, capture_output=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert ("Error: tftp: cannot listen on UDP 127.0.0.1:69: Permission denied: ports below 1024 "
            "need root or the CAP_NET_BIND_SERVICE capability (deploy/massboot.service") in result.stderr


def test_tftp_listener_dying_exits_1(tmp_path):
    """A fatal socket error in the TFTP listener: the others stop and massboot exits 1."""
    dhcp, tftp = free_port(), free_port()
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp) + "[logger]\nlevel = info\n")
    mb = Running("tftp", "-c", path, prefix=("-m", "tests.faults"))
    try:
        mb.wait_for("tftp listening")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(FAULT, ("127.0.0.1", tftp))
        assert mb.exit_code() == 1, mb.log
    finally:
        mb.close()
    assert "tftp service died: receive failed: [Errno 9] Bad file descriptor; stopping" in mb.log
    assert mb.lines[-1].rstrip().endswith("INFO: stopped"), mb.log   # the DHCP side was stopped


def test_metrics_listener_dying_exits_1(tmp_path):
    dhcp, tftp, metrics = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp)
                 + f"[metrics]\naddress = 127.0.0.1\nport = {metrics}\n[logger]\nlevel = info\n")
    mb = Running("metrics", "-c", path, prefix=("-m", "tests.faults"))
    try:
        mb.wait_for("metrics on http://127.0.0.1")
        try:
            socket.create_connection(("127.0.0.1", metrics), timeout=5).close()
        except OSError:
            pass                            # reset by the failing listener: expected
        assert mb.exit_code() == 1, mb.log
    finally:
        mb.close()
    assert "metrics service died: accept failed: [Errno 22] Invalid argument; stopping" in mb.log


def test_second_signal_exits_at_once(tmp_path):
    """A transfer keeps the graceful stop busy; a second SIGTERM exits at once with 1."""
    dhcp, tftp = free_port(), free_port()
    (tmp_path / "two-blocks").write_bytes(b"x" * 700)
    # the client never ACKs; with a 30 s resend timeout the transfer outlives the 5 s grace
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp).replace(
        "root = .", "root = .\ntimeout = 30\ntimeout_min = 30") + "[logger]\nlevel = info\n")
    mb = Running("-c", path)
    try:
        mb.wait_for("tftp listening")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(b"\x00\x01two-blocks\x00octet\x00", ("127.0.0.1", tftp))
            data, _ = s.recvfrom(600)
            assert data[:4] == b"\x00\x03\x00\x01"            # the transfer runs
            mb.proc.send_signal(signal.SIGTERM)
            mb.wait_for("signal 15: stopping")
            mb.proc.send_signal(signal.SIGTERM)
            assert mb.exit_code() == 1, mb.log
    finally:
        mb.close()
    assert "second signal 15: exiting now" in mb.log
    # without the second signal the graceful stop would have ended the transfer and logged this
    assert not any(line.rstrip().endswith("INFO: stopped") for line in mb.lines), mb.log


def test_open_files_limit_fits_a_full_tftp_pool(tmp_path):
    """Started with the usual soft limit of 1024 open files, massboot raises it (within the hard
    limit) to what a full transfer pool holds: two sockets and a file per transfer."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 3 * 600 + 256
    require(hard == resource.RLIM_INFINITY or hard >= wanted, f"hard open files limit {hard}")
    path = write(tmp_path, f"[tftpd]\naddress = 127.0.0.1\nport = {free_port()}\nroot = .\n"
                           "pool_size = 600\n")

    def soft_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    proc = subprocess.Popen([sys.executable, "-m", "massboot", "-t", "-c", path], cwd=REPO, env=ENV,
                            stderr=subprocess.PIPE, text=True, preexec_fn=soft_1024)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "tftp listening" in line:
                break
        else:
            pytest.fail(f"massboot exited {proc.wait()} before listening")
        with open(f"/proc/{proc.pid}/limits") as f:
            soft = next(line.split()[3] for line in f if line.startswith("Max open files"))
        assert int(soft) >= wanted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# the module hidden as if never built (an entry of None makes its import fail), or an old build
# left in an updated checkout (another API number)
CODEC_NOT_BUILT = "import sys; sys.modules['massboot.dhcp._codec'] = None"
CODEC_STALE = ("import sys, types; m = types.ModuleType('massboot.dhcp._codec'); m.API = 0; "
                "sys.modules['massboot.dhcp._codec'] = m")


@pytest.mark.parametrize("prelude, codec, says", [
    ("", "compiled", None),
    (CODEC_NOT_BUILT, "python", "INFO: dhcp: the compiled DHCP codec "
     "(massboot.dhcp._codec) is not built: apt-get install gcc python3-dev"),
    (CODEC_STALE, "python", "WARNING: dhcp: the compiled DHCP codec "
     "(massboot.dhcp._codec) does not match this massboot (module API 0, this massboot needs 1): "
     "reinstall massboot (pip install) to rebuild it"),
], ids=["built", "not-built", "stale"])
def test_the_start_log_says_which_dhcp_codec_runs(tmp_path, prelude: str, codec: str,
                                                   says: str | None) -> None:
    """README, Quick start and Performance: the DHCP start line names the codec; without the
    compiled one (not built, or built from older sources) a line says why and how to build it,
    and the Python codec answers: a DORA still completes."""
    from massboot.dhcp.packet import BOOTREPLY, BootpPacket, MessageType, Opt, python_decode, python_encode

    if codec == "compiled":
        from massboot.dhcp.packet import CODEC, CODEC_PROBLEM

        require(CODEC == "compiled", str(CODEC_PROBLEM))
    dhcp, tftp = free_port(), free_port()
    path = write(tmp_path, GOOD.format(dhcp=dhcp, tftp=tftp).replace(
        "[bootfile]", "allow_simple_dhcp = on\n[bootfile]") + "[logger]\nlevel = info\n")
    mb = Running("-c", massboot_script(prelude or "pass"), "-p", "-c", path, prefix=())
    try:
        mb.wait_for("dhcp listening")
        assert f"pool=127.0.0.100+10 codec={codec}" in mb.log
        if says is None:
            assert "DHCP codec" not in mb.log
        else:
            assert says in mb.log
        mac = bytes.fromhex("525400c0dec0")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            request = BootpPacket(op=1, xid=7, chaddr=mac, giaddr="127.0.0.1",
                                  options=((Opt.MESSAGE_TYPE, bytes([MessageType.DISCOVER])),))
            s.sendto(python_encode(request), ("127.0.0.1", dhcp))
            offer = python_decode(s.recvfrom(2048)[0])
            assert offer.op == BOOTREPLY and offer.message_type is MessageType.OFFER
            assert offer.chaddr == mac and offer.yiaddr.startswith("127.0.0.")
    finally:
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
