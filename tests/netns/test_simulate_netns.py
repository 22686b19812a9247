"""bench/simulate.py --netns: the rack's DHCP is real broadcast across a veth pair.

massboot runs in a "server" namespace, the simulated clients in a "clients" namespace whose veth
end is unnumbered: DISCOVER/REQUEST leave 0.0.0.0:68 for 255.255.255.255:67 without giaddr and
with the broadcast flag, massboot answers at 255.255.255.255:68, and each client then reads TFTP
from the address it leased. The simulator creates and removes both namespaces itself.
Root only; under ``CI=true`` it must run.
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from bench.sim.netns import Namespaces
from bench.sim.options import Options
from bench.sim.rack import run
from bench.sim.servers import expected_bytes
from tests.conftest import require_root, require_tool

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SMALL = {"bootfile_size": 8 << 10, "kernel_size": 96 << 10, "initrd_size": 300 << 10}


def _namespaces() -> str:  # `ip netns list`
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_netns_rack_boots_by_broadcast_and_cleans_up(tmp_path):
    require_root()
    require_tool("ip")
    opts = Options(clients=24, mix={"bios": 1, "uefi": 1, "ipxe": 1, "plain": 1}, netns=True, seed=11,
                   ramp=0.5, loss=3.0, timeout_scale=0.5, release=True, duration=90, progress=False,
                   server_log_level="info", workdir=str(tmp_path / "run"), **SMALL)
    summary = run(opts)
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and summary.failed == 0, failures
    assert "netns" in summary.target
    pool = ipaddress.ip_network(Namespaces.pool_net)
    ips = [r.ip for r in summary.results]
    assert len(set(ips)) == 24 and all(ipaddress.ip_address(ip) in pool for ip in ips)
    total = 0
    for r in summary.results:
        assert r.os_ip == r.ip
        want = expected_bytes(r.profile, summary.files)
        assert r.bytes == want, (r.profile, r.files)
        total += want
    assert summary.bytes == total
    assert summary.dropped_out > 0 and summary.dropped_in > 0

    # massboot really answered by limited broadcast, and served TFTP to the leased addresses
    log = (tmp_path / "run" / "massboot.log").read_text()
    assert log.count("to=255.255.255.255:68") >= 4 * 24   # OFFER and ACK, PXE and OS phase
    for ip in ips:
        assert f"tftp done client={ip}:" in log, ip

    # both namespaces (and with them the veth pair) are gone
    ns = Namespaces()   # the names are derived from this process's pid
    left = _namespaces().split()
    assert ns.server not in left and ns.clients not in left, left


@pytest.mark.parametrize("http_server", ["nginx", "massboot"])
def test_netns_rack_with_http_clients_reads_kernel_and_initrd_over_http(tmp_path, http_server):
    """The http profile across the veth: TFTP for iPXE, then script, kernel and initrd over HTTP
    from a private nginx the simulator starts in the server's namespace (port 80 there), or
    from massboot's own -H (``check_ip`` on: each client connects from the address it leased)."""
    require_root()
    require_tool("ip", "nginx")
    opts = Options(clients=12, mix={"bios": 1, "http": 2}, netns=True, seed=12, ramp=0.3, timeout_scale=0.5,
                   duration=90, progress=False, http_server=http_server, workdir=str(tmp_path / "run"),
                   **SMALL)
    summary = run(opts)
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and summary.failed == 0, failures
    if http_server == "nginx":
        assert f"HTTP from nginx (started, http://{Namespaces.server_ip}:80/)" in summary.target
    else:
        assert f"HTTP {Namespaces.server_ip}:80)" in summary.target
    for r in summary.results:
        assert r.bytes == expected_bytes(r.profile, summary.files), (r.profile, r.files)
        if r.profile == "http":
            assert r.http_requests == 3 and r.http_connections == 1 and r.dhcp_exchanges == 3
    assert summary.http_requests == 3 * summary.profiles["http"]
    ns = Namespaces()
    left = _namespaces().split()
    assert ns.server not in left and ns.clients not in left, left
