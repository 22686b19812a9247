"""Real HTTP clients (curl, wget) against ``massboot -H`` across a veth pair in namespaces.

massboot runs all three servers (``-H``) in a "server" namespace on 10.79.0.1 with
``check_ip = yes``: the client namespace starts with an address massboot never leased and gets
401; busybox udhcpc then gets a lease from massboot, the client takes that address, and curl and
wget fetch a 40 MiB file (sha256 compared), resume a cut download (``Range``), and try to leave
the root (``--path-as-is``: the request line carries the ``..`` as typed). massboot's own log
line must show each outcome.

Root only (``ip netns``); under ``CI=true`` they must run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.netns.netns import Massboot, NetnsPair, namespace_pair, wait_until
from tests.netns.test_dhcp_clients import run_udhcpc
from tests.netns.test_tftp_clients import _write_random, sha256_file

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

SERVER_IP = "10.79.0.1"
STRANGER_IP = "10.79.0.250"     # never leased by massboot
CONFIG = """\
[logger]
level = info
[bootpd]
pool_start = 10.79.0.100
pool_count = 10
lease_db = leases.sqlite3
allow_simple_dhcp = yes
[bootfile]
default = pxelinux.0
[tftpd]
root = {root}
[httpd]
port = 80
check_ip = yes
"""
BIG = "40m.bin"
TIMEOUT = 150


@dataclass
class HttpEnv:
    pair: NetnsPair
    server: Massboot
    root: Path
    digest: str
    work: Path
    leased_ip: str = ""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpEnv]:
    require_root()
    require_tool("ip")
    require_tool("curl")
    require_tool("wget")
    require_tool("busybox")
    base = tmp_path_factory.mktemp("http-clients")
    root = base / "root"
    root.mkdir()
    digest = _write_random(root / BIG, 40 << 20)
    (base / "secret.txt").write_text("outside the root\n")
    (root / "out-link").symlink_to(base / "secret.txt")
    conf_dir = base / "etc"
    conf_dir.mkdir()
    config = conf_dir / "massboot.ini"
    config.write_text(CONFIG.format(root=root))
    with namespace_pair("httpcli", server_addr=f"{SERVER_IP}/24", server_if="mhs0",
                        client_if="mhc0") as pair:
        server = Massboot(pair, config, base, args=("-H",), ready="http listening on").start(timeout=30)
        try:
            yield HttpEnv(pair, server, root, digest, base)
        finally:
            status = server.stop()
        assert status == 0, f"massboot exited {status} on SIGTERM:\n{server.log_text()}"


def client(env: HttpEnv, argv: list[str], timeout: float = TIMEOUT):  # noqa: ANN201
    return env.pair.run(env.pair.client, argv, timeout=timeout)


def url(name: str) -> str:
    return f"http://{SERVER_IP}/{name}"


def logged(env: HttpEnv, pattern: str) -> bool:
    """A line of massboot's log matches *pattern* (waiting a few seconds for it)."""
    return re.search(pattern, env.server.log_text(until=pattern, timeout=5), re.M) is not None


@pytest.fixture(scope="module")
def leased(env: HttpEnv) -> HttpEnv:
    """First refused as a stranger, then leased by massboot (udhcpc) and using that address."""
    ifname = env.pair.client_if
    client(env, ["ip", "addr", "add", f"{STRANGER_IP}/24", "dev", ifname])
    result = client(env, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url(BIG)])
    assert result.stdout == "401", (result.stdout, result.stderr)
    assert logged(env, rf"http GET client={re.escape(STRANGER_IP)}:\d+ file={BIG} status=401 "
                       r"reason=not_leased$")
    client(env, ["ip", "addr", "del", f"{STRANGER_IP}/24", "dev", ifname])
    lease = run_udhcpc(env.pair, env.work / "udhcpc", "lease")
    ip = lease["ip"]
    client(env, ["ip", "addr", "add", f"{ip}/24", "dev", ifname])
    env.leased_ip = ip
    return env


def test_curl_and_wget_fetch_40_mib(leased: HttpEnv, tmp_path: Path) -> None:
    env = leased
    out = tmp_path / "curl.bin"
    result = client(env, ["curl", "-sS", "--fail", "-o", str(out), url(BIG)])
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == env.digest
    out = tmp_path / "wget.bin"
    result = client(env, ["wget", "-q", "-O", str(out), url(BIG)])
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == env.digest
    ip = re.escape(env.leased_ip)
    wait_until(lambda: len(re.findall(rf"http GET client={ip}:\d+ file={BIG} status=200 bytes={40 << 20} ",
                                      env.server.log_text())) >= 2, 10, "two 200 lines")


def test_resume_with_range(leased: HttpEnv, tmp_path: Path) -> None:
    """A download cut after 5 MiB is resumed: curl ``-C -`` and wget ``-c`` send ``Range``."""
    env = leased
    for tool in ("curl", "wget"):
        part = tmp_path / f"{tool}.part"
        result = client(env, ["curl", "-sS", "--fail", "--range", "0-5242879", "-o", str(part), url(BIG)])
        assert result.returncode == 0 and part.stat().st_size == 5 << 20, result.stderr
        if tool == "curl":
            argv = ["curl", "-sS", "--fail", "-C", "-", "-o", str(part), url(BIG)]
        else:
            argv = ["wget", "-q", "-c", "-O", str(part), url(BIG)]
        result = client(env, argv)
        assert result.returncode == 0, result.stderr
        assert sha256_file(part) == env.digest, tool
    assert logged(env, rf"file={BIG} status=206 bytes={(40 << 20) - (5 << 20)} ")


def test_head_and_missing(leased: HttpEnv) -> None:
    env = leased
    result = client(env, ["curl", "-sS", "-I", url(BIG)])
    assert result.stdout.startswith("HTTP/1.1 200")
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines()[1:] if ": " in line)
    assert headers["Content-Length"] == str(40 << 20) and headers["ETag"].startswith('"')
    result = client(env, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url("nope.bin")])
    assert result.stdout == "404"


@pytest.mark.parametrize("path", ["../secret.txt", "%2e%2e/secret.txt", "..%5csecret.txt", "out-link",
                                  "%2f..%2fsecret.txt"])
def test_traversal_refused(leased: HttpEnv, path: str) -> None:
    result = client(leased, ["curl", "-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", url(path)])
    body, _, code = result.stdout.rpartition("\n")
    assert code == "403" and "outside the root" not in body, result.stdout

