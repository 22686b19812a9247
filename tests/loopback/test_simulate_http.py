"""bench/simulate.py's ``http`` profile: a PXE ROM that loads iPXE by TFTP, asks for an address
again as iPXE, gets an ``http://`` script and reads kernel and initrd over HTTP.

Pure parts first (the script parser, URI resolution, the mix), then the simulator's HTTP client
(bench/sim/http.py) against a private nginx and against a server that closes idle
connections, then small racks: against massboot for DHCP and TFTP with nginx serving HTTP
(nginx required under CI=true), and against massboot's own ``-H`` once this massboot has it
(skipped, with the reason, while ``-H`` is still a no-op). Behaviour only: speed is the
bench's business.
"""

from __future__ import annotations

import os

import gevent
import pytest
from gevent.server import StreamServer

from bench.nginx import Nginx, nginx_binary
from bench.sim import client, profiles, servers
from bench.sim.http import HttpConnection, HttpFailure, split_url
from bench.sim.options import PHASES, Options
from bench.sim.rack import run
from bench.sim.report import format_summary
from tests.conftest import require

SMALL = {"bootfile_size": 8 << 10, "kernel_size": 96 << 10, "initrd_size": 300 << 10}


# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------


def test_resolve_uri_like_ipxe():
    base = "http://10.0.0.1:8080/boot/menu.ipxe"
    assert client.resolve_uri(base, "vmlinuz") == "http://10.0.0.1:8080/boot/vmlinuz"
    assert client.resolve_uri(base, "/img/initrd") == "http://10.0.0.1:8080/img/initrd"
    assert client.resolve_uri(base, "../k") == "http://10.0.0.1:8080/k"
    assert client.resolve_uri(base, "tftp://10.0.0.2/k") == "tftp://10.0.0.2/k"
    assert client.resolve_uri(base, "http://other/k") == "http://other/k"
    assert client.resolve_uri("boot.ipxe", "vmlinuz") == "vmlinuz"
    assert client.resolve_uri("ipxe/boot.ipxe", "k/vmlinuz") == "ipxe/k/vmlinuz"
    assert client.resolve_uri("ipxe/boot.ipxe", "/vmlinuz") == "vmlinuz"
    assert client.resolve_uri("tftp://10.0.0.1/ipxe/boot.ipxe", "k") == "tftp://10.0.0.1/ipxe/k"


def test_parse_ipxe_script():
    text = servers.http_script_text("http://127.0.0.1:8080/")
    base = "http://127.0.0.1:8080/" + servers.HTTP_SCRIPT
    assert client.parse_ipxe_script(text, base) == ("http://127.0.0.1:8080/vmlinuz",
                                                    "http://127.0.0.1:8080/initrd.img")
    script = ("#!ipxe\n# a comment\n:retry\ndhcp\nkernel --name linux http://s/k/vmlinuz quiet initrd=r\n"
              "initrd -n r img/r.img\nimgfetch other.img\nboot || goto retry\n")
    assert client.parse_ipxe_script(script, "http://s/x/boot.ipxe") == ("http://s/k/vmlinuz",
                                                                        "http://s/x/img/r.img")
    assert client.parse_ipxe_script("#!ipxe\nchain http://s/next.ipxe\n", "http://s/a") == \
        ("http://s/next.ipxe", None)
    assert client.parse_ipxe_script("kernel vmlinuz\n", "http://s/a") == (None, None)  # not a script
    assert client.parse_ipxe_script(servers.IPXE_SCRIPT_TEXT, "boot.ipxe") == ("vmlinuz", "initrd.img")


def test_split_url():
    assert split_url("http://127.0.0.1:8080/boot/vmlinuz?x=1") == ("127.0.0.1", 8080, "/boot/vmlinuz?x=1")
    assert split_url("HTTP://host") == ("host", 80, "/")
    for bad in ("https://h/x", "tftp://h/x", "http:///x", "vmlinuz"):
        with pytest.raises(ValueError):
            split_url(bad)


def test_mix_with_http():
    assert profiles.parse_mix("bios:1,http:1") == {"bios": 1, "http": 1}
    assert profiles.needs_http({"bios": 1, "http": 1}) and not profiles.needs_http({"bios": 1, "ipxe": 1})
    assert not profiles.needs_http({"bios": 1, "http": 0})
    http = profiles.PROFILES["http"]
    assert http.chain == "ipxe" and http.arch == 0 and not http.ipxe
    files = {"pxelinux.0": 10, "bootx64.efi": 11, "boot.ipxe": 5, "pxelinux.cfg/default": 7, "vmlinuz": 100,
             "initrd.img": 1000}
    assert servers.expected_bytes("ipxe", files) == 1105
    files[servers.HTTP_SCRIPT] = 9  # iPXE gets the HTTP script when the run has one
    assert servers.expected_bytes("http", files) == 10 + 9 + 1100
    assert servers.expected_bytes("ipxe", files) == 1109


# ---------------------------------------------------------------------------------------------
# the simulator's HTTP client
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def nginx_root(tmp_path):
    require(nginx_binary() is not None, "nginx is not installed (apt-get install nginx)")
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "big.bin").write_bytes(os.urandom(3_000_000))
    (root / "small.txt").write_bytes(b"#!ipxe\nboot\n")
    with Nginx(str(tmp_path / "nginx"), str(root)) as nginx:
        yield nginx, root


def test_connection_keeps_alive_counts_and_fails_with_reasons(nginx_root):
    nginx, root = nginx_root
    counted: list[int] = []
    conn = HttpConnection(("127.0.0.1", nginx.port), "127.1.0.9", timeout=10)
    script = conn.get("/small.txt", keep=1 << 20, progress=counted.append)
    assert script.content == b"#!ipxe\nboot\n" and script.keep_alive
    big = conn.get("/big.bin", size=3_000_000, progress=counted.append)
    assert big.received == 3_000_000 and big.content == b""  # counted, not kept
    assert sum(counted) == 3_000_000 + len(b"#!ipxe\nboot\n")
    with pytest.raises(HttpFailure) as missing:
        conn.get("/nope")
    assert missing.value.reason == "http_status_404"
    with pytest.raises(HttpFailure) as short:
        conn.get("/big.bin", size=3_000_001)
    assert short.value.reason == "http_size"
    again = conn.get("/small.txt", keep=100)  # a failure closed the connection: a new one
    assert again.content.startswith(b"#!ipxe")
    assert conn.requests == 5 and conn.connections == 2  # the 404 kept it, the bad size closed it
    conn.close()
    refused = HttpConnection(("127.0.0.1", nginx.port), "", timeout=5)
    nginx.stop()
    with pytest.raises(HttpFailure) as nobody:
        refused.get("/small.txt")
    assert nobody.value.reason == "http_connect"


def test_connection_reopens_once_when_the_server_closed_it_while_idle():
    """A server that answers one request per connection without saying so (no Connection:
    close) and then closes: the client's next GET finds the connection dead before any byte
    and opens a new one, once; a server that never answers makes it time out."""
    accepted = []

    def one_answer(sock, _address):
        accepted.append(1)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        sock.close()

    server = StreamServer(("127.0.0.1", 0), one_answer)
    server.start()
    try:
        conn = HttpConnection(("127.0.0.1", server.server_port), "", timeout=5)
        for _ in range(3):
            assert conn.get("/x", keep=10).content == b"ok"
            gevent.sleep(0.05)  # the server has closed: the connection is dead when reused
        assert conn.connections == 3 and len(accepted) == 3
    finally:
        server.stop()

    def silent(sock, _address):
        gevent.sleep(5)

    mute = StreamServer(("127.0.0.1", 0), silent)
    mute.start()
    try:
        with pytest.raises(HttpFailure) as timed_out:
            HttpConnection(("127.0.0.1", mute.server_port), "", timeout=0.3).get("/x")
        assert timed_out.value.reason == "http_timeout"
    finally:
        mute.stop(timeout=0.1)


# ---------------------------------------------------------------------------------------------
# racks
# ---------------------------------------------------------------------------------------------


def _check_rack(summary, http_host_port: str) -> None:
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and summary.failed == 0, failures
    files = summary.files
    assert files[servers.HTTP_SCRIPT] == len(servers.http_script_text(f"http://{http_host_port}/"))
    for r in summary.results:
        assert r.bytes == servers.expected_bytes(r.profile, files), (r.profile, r.files)
        times = [r.marks[p] for p in PHASES]
        assert times == sorted(times), r.marks
        if r.profile == "http":
            # TFTP: the boot file (iPXE); HTTP: the script, kernel and initrd on one connection
            assert r.dhcp_exchanges == 3 and r.probes == 0
            assert r.http_requests == 3 and r.http_connections == 1
            assert set(r.files) == {"pxelinux.0", servers.HTTP_SCRIPT, "vmlinuz", "initrd.img"}
        elif r.profile == "ipxe":  # an iPXE ROM gets the same HTTP script
            assert r.http_requests == 3 and r.dhcp_exchanges == 2
        else:
            assert r.http_requests == 0 and r.probes == 11
    by = summary.by_profile
    assert by is not None and set(by) == set(summary.profiles)
    for name, row in by.items():
        assert row["booted"] == row["clients"] == summary.profiles[name]
        assert 0 < row["kernel_initrd"]["p50"] <= row["kernel_initrd"]["p95"] <= row["booted_time"]["max"]
    http_clients = sum(1 for r in summary.results if r.profile in ("http", "ipxe"))
    assert summary.http_requests == 3 * http_clients == summary.by_profile["http"]["http_requests"] + \
        summary.by_profile.get("ipxe", {}).get("http_requests", 0)
    text = format_summary(summary)
    assert "by profile" in text and "HTTP GETs" in text


def test_rack_with_http_clients_against_massboot_and_nginx():
    """massboot for DHCP and TFTP, a private nginx for HTTP (the simulator starts both)."""
    require(nginx_binary() is not None, "nginx is not installed (apt-get install nginx)")
    opts = Options(clients=12, mix={"bios": 1, "http": 2, "ipxe": 1}, seed=3, ramp=0.3, timeout_scale=0.5,
                   duration=60, progress=False, http_server="nginx", **SMALL)
    summary = run(opts)
    assert "HTTP from nginx (started, http://127.0.0.1:" in summary.target
    port = summary.target.split("http://127.0.0.1:", 1)[1].split("/", 1)[0]
    _check_rack(summary, f"127.0.0.1:{port}")
    assert summary.http_server is not None and summary.http_server["name"] == "nginx"
    assert summary.http_server["peak_rss_mb"] > 1


def test_rack_with_http_clients_against_massboot_http():
    """massboot serves DHCP, TFTP and HTTP (-H, [httpd] without root: the TFTP root)."""
    opts = Options(clients=10, mix={"bios": 1, "http": 3}, seed=4, ramp=0.3, timeout_scale=0.5,
                   duration=60, progress=False, **SMALL)
    summary = run(opts)
    port = summary.target.split(" http:", 1)[1].split(")", 1)[0]
    _check_rack(summary, f"127.0.0.1:{port}")


def test_remote_root_tftp_and_http_clients_share_one_upstream_copy():
    """--remote-root with massboot's -H: TFTP (bios) and HTTP (http) clients of the same kernel
    and initrd cause one upstream GET of each between them (the one file store)."""
    opts = Options(clients=12, mix={"bios": 1, "http": 1}, remote_root=True, seed=6, ramp=0.3,
                   timeout_scale=0.5, duration=60, progress=False, **SMALL)
    summary = run(opts)
    port = summary.target.split(" http:", 1)[1].split(")", 1)[0]
    _check_rack(summary, f"127.0.0.1:{port}")
    up = summary.upstream
    assert up is not None
    for name in ("vmlinuz", "initrd.img", servers.HTTP_SCRIPT, "pxelinux.0"):
        assert up["by_path"][name] == [1, summary.files[name]], (name, up["by_path"].get(name))
    assert up["copies"] == 1.0
