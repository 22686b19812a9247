"""``massboot -H`` as a real subprocess: with the DHCP server, with ``-t`` (check_ip reading the
lease database another massboot writes), with ``-p``, and its startup errors (README, "HTTP boot")."""

from __future__ import annotations

import re
import signal
import socket
import sys
import time

import requests

from massboot.dhcp.leases import SqliteLeaseStore
from tests.loopback.test_cli import ENV, REPO, Running, free_port, run, write

CONFIG = """
[bootpd]
address = 127.0.0.1
port = {dhcp}
pool_start = 127.0.0.100
pool_count = 10
lease_db = {lease_db}
[bootfile]
default = pxelinux.0
[tftpd]
port = {tftp}
root = .
[httpd]
address = 127.0.0.1
port = {http}
{extra}
[logger]
level = info
"""


def config(tmp_path, *, lease_db: str = ":memory:", extra: str = "") -> tuple[str, int]:
    http = free_port(socket.SOCK_STREAM)
    text = CONFIG.format(dhcp=free_port(), tftp=free_port(), http=http, lease_db=lease_db, extra=extra)
    return write(tmp_path, text), http


def test_all_three_with_check_ip(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 1000)
    path, port = config(tmp_path)
    mb = Running("-c", path, "-H")
    try:
        mb.wait_for("http listening on 127.0.0.1")
        assert "dhcp listening" in mb.log and "tftp listening" in mb.log
        r = requests.get(f"http://127.0.0.1:{port}/vmlinuz", timeout=10)
        assert r.status_code == 401          # 127.0.0.1 was never leased
        mb.wait_for("file=vmlinuz status=401 reason=not_leased")
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()


def test_tftp_and_http_only_read_the_lease_database(tmp_path):
    """-t -H: no DHCP server here; check_ip reads the database the -p massboot writes."""
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 1000)
    db = str(tmp_path / "leases.sqlite3")
    store = SqliteLeaseStore(db, ["127.0.0.10"])
    try:
        path, port = config(tmp_path, lease_db=db)
        mb = Running("-c", path, "-t", "-H")
        try:
            mb.wait_for("http listening on 127.0.0.1")
            assert "dhcp listening" not in mb.log
            url = f"http://127.0.0.1:{port}/vmlinuz"
            with requests.Session() as s:
                s.mount("http://", _SourceAdapter("127.0.0.10"))
                assert s.get(url, timeout=10).status_code == 401
                store.commit("AA:00:00:00:00:01", "127.0.0.10", lease_time=600)
                deadline = time.monotonic() + 10     # a refusal is remembered for a second
                while (status := s.get(url, timeout=10).status_code) != 200:
                    assert status == 401 and time.monotonic() < deadline, mb.log
                    time.sleep(0.1)
            mb.proc.send_signal(signal.SIGTERM)
            assert mb.exit_code() == 0, mb.log
        finally:
            mb.close()
    finally:
        store.close()


def test_pxe_and_http_serve_the_tftp_root(tmp_path):
    (tmp_path / "boot.ipxe").write_bytes(b"#!ipxe\n")
    path, port = config(tmp_path, extra="check_ip = no")
    mb = Running("-c", path, "-p", "-H")
    try:
        mb.wait_for("http listening on 127.0.0.1")
        assert "tftp listening" not in mb.log
        assert requests.get(f"http://127.0.0.1:{port}/boot.ipxe", timeout=10).content == b"#!ipxe\n"
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()


def test_startup_errors(tmp_path):
    path, _ = config(tmp_path, extra=f"root = {tmp_path / 'nowhere'}")
    result = run("-c", path, "-H")
    assert result.returncode == 2
    assert "[httpd] root = " in result.stderr and "not a directory" in result.stderr
    # without -H the [httpd] section is not used
    no_h = run("-c", path, "--check-config")
    assert no_h.returncode == 0, no_h.stderr
    text = "[tftpd]\nroot = .\n[httpd]\naddress = 127.0.0.1\nport = 1\n"
    result = run("-c", write(tmp_path, text), "-t", "-H")
    assert result.returncode == 2 and "[httpd] check_ip = 'yes': needs [bootpd] lease_db" in result.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        text = (f"[tftpd]\nroot = .\nport = {free_port()}\n[httpd]\naddress = 127.0.0.1\n"
                f"port = {taken}\ncheck_ip = no\n")
        result = run("-c", write(tmp_path, text), "-t", "-H")
    assert result.returncode == 1
    assert f"http: cannot listen on TCP 127.0.0.1:{taken}: Address already in use" in result.stderr
    assert "another web server" in result.stderr


class _SourceAdapter(requests.adapters.HTTPAdapter):
    """Connections from one local address (a leased client's)."""

    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):  # noqa: ANN002, ANN003
        kwargs["source_address"] = (self._source, 0)
        return super().init_poolmanager(*args, **kwargs)



def test_sighup_tunes_http_bounds_and_says_what_needs_a_restart(tmp_path):
    """README, "Reload": the HTTP timeouts and limits apply to what comes next; the listener,
    the root and check_ip need a restart."""
    (tmp_path / "f").write_bytes(b"x")
    path, port = config(tmp_path, extra="check_ip = no\nmax_request_bytes = 8192")
    mb = Running("-c", path, "-t", "-H")
    try:
        mb.wait_for("http listening on 127.0.0.1")
        head = b"GET /f HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        text = open(path).read().replace("max_request_bytes = 8192", "max_request_bytes = 1024")
        open(path, "w").write(text.replace("check_ip = no", "check_ip = yes"))
        mb.proc.send_signal(signal.SIGHUP)
        mb.wait_for("reload: [httpd] address/port/root/check_ip/max_connections changed: takes effect "
                    "at the next restart")
        mb.wait_for("applied")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            assert sock.recv(100).startswith(b"HTTP/1.1 431")
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
    finally:
        mb.close()


def test_out_of_file_descriptors_idle_connections_make_room(tmp_path):
    """A process limited to 64 descriptors, 120 idle connections: accept fails with EMFILE,
    an idle connection is closed for the newcomer (counted), and downloads go on."""
    import resource
    import subprocess

    (tmp_path / "f").write_bytes(b"x" * 100_000)
    metrics = free_port(socket.SOCK_STREAM)
    path, port = config(tmp_path, extra=f"check_ip = no\n[metrics]\naddress = 127.0.0.1\nport = {metrics}")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "massboot", "-c", path, "-t", "-H"], cwd=REPO, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while "http listening" not in (tmp_path / "log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.05)
        for _ in range(120):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(5):
            r = requests.get(f"http://127.0.0.1:{port}/f", timeout=10, headers={"Connection": "close"})
            assert r.status_code == 200 and len(r.content) == 100_000
        # the idle connections go first: while they hold every descriptor, the metrics server's
        # own accept may fail too (it has no idle connection to close), which is not under test
        for sock in idle:
            sock.close()
        idle.clear()
        text = ""
        deadline = time.monotonic() + 20
        while not text:
            try:
                text = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
            except requests.RequestException:
                assert time.monotonic() < deadline, "the metrics server never answered"
                time.sleep(0.2)
        refused = re.search(r'^massboot_http_connections_refused_total\{reason="fds"\} (\S+)', text, re.M)
        evicted = re.search(r"^massboot_http_connections_evicted_total (\S+)", text, re.M)
        assert refused and float(refused[1]) > 0, text
        assert evicted and float(evicted[1]) > 0, text
        assert proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0, (tmp_path / "log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
