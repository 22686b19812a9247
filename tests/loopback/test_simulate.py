"""bench/simulate.py at small scale: its own logic, against a massboot it starts itself.

Behaviour only: every client boots, the figures add up, the phases come in order. Speed is the
bench's business (printed, never asserted here).
"""

from __future__ import annotations

import json
import random

import pytest

from bench.sim import client, profiles, report, servers
from bench.sim.cli import main
from bench.sim.options import PHASES, Options, parse_size
from bench.sim.rack import run

SMALL = {"bootfile_size": 8 << 10, "kernel_size": 96 << 10, "initrd_size": 300 << 10}


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------


def test_parse_size_and_mix():
    assert parse_size("40K") == 40 * 1024
    assert parse_size("16M") == 16 << 20
    assert parse_size("1234") == 1234
    assert profiles.parse_mix("bios=60,uefi=30,ipxe=10") == {"bios": 60, "uefi": 30, "ipxe": 10}
    assert profiles.parse_mix("plain") == {"plain": 1}
    with pytest.raises(ValueError):
        profiles.parse_mix("bios=60,arm=3")
    with pytest.raises(ValueError):
        parse_size("lots")


def test_allocate_profiles_is_exact_and_covers_the_mix():
    rng = random.Random(3)
    names = profiles.allocate_profiles({"bios": 60, "uefi": 30, "ipxe": 10}, 500, rng)
    assert len(names) == 500
    assert names.count("bios") == 300 and names.count("uefi") == 150 and names.count("ipxe") == 50
    small = profiles.allocate_profiles({"bios": 98, "uefi": 1, "ipxe": 1}, 5, rng)
    assert len(small) == 5 and {"bios", "uefi", "ipxe"} <= set(small)


def test_pxelinux_probe_order():
    probes = client.pxelinux_probes("b8945908-d6a6-41a9-611d-74a6ab80b83d", "88:99:aa:bb:cc:dd",
                                      "192.168.2.91")
    assert probes == ["pxelinux.cfg/" + n for n in (
        "b8945908-d6a6-41a9-611d-74a6ab80b83d", "01-88-99-aa-bb-cc-dd", "C0A8025B", "C0A8025",
        "C0A802", "C0A80", "C0A8", "C0A", "C0", "C", "default")]


def test_parse_boot_config():
    assert client.parse_boot_config(servers.PXELINUX_DEFAULT, ipxe=False) == ("vmlinuz", "initrd.img")
    assert client.parse_boot_config("LABEL x\n  LINUX k\n  INITRD i1,i2\n", ipxe=False) == ("k", "i1")
    script = "#!ipxe\nkernel tftp://10.0.0.1/boot/k quiet\ninitrd --name r boot/r.img\nboot\n"
    assert client.parse_boot_config(script, ipxe=True) == ("boot/k", "boot/r.img")


# ---------------------------------------------------------------------------------------------
# against massboot
# ---------------------------------------------------------------------------------------------


def test_mixed_rack_with_loss_boots_and_adds_up():
    """20 clients, five of each profile, 5 % loss each way: all boot and the figures add up."""
    opts = Options(clients=20, mix={"bios": 1, "uefi": 1, "ipxe": 1, "plain": 1}, loss=5.0, seed=7,
                   ramp=0.5, timeout_scale=0.5, release=True, duration=50, progress=False, **SMALL)
    summary = run(opts)
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and summary.failed == 0, failures
    assert summary.profiles == {"bios": 5, "uefi": 5, "ipxe": 5, "plain": 5}

    files = summary.files
    assert files["vmlinuz"] == SMALL["kernel_size"] and files["initrd.img"] == SMALL["initrd_size"]
    total = 0
    for r in summary.results:
        want = servers.expected_bytes(r.profile, files)
        assert r.bytes == want, (r.profile, r.files)
        total += want
        times = [r.marks[p] for p in PHASES]
        assert times == sorted(times), r.marks
        assert r.ip is not None and r.ip.startswith("127.1.")
        assert r.os_ip == r.ip  # the OS phase gets the PXE phase's (sticky) address
        assert r.files["vmlinuz"] == files["vmlinuz"] and r.files["initrd.img"] == files["initrd.img"]
        if r.profile == "ipxe":
            assert r.probes == 0 and "boot.ipxe" in r.files
        else:
            assert r.probes == 11 and "pxelinux.cfg/default" in r.files  # uuid, mac, 8 hex, default
        assert r.dhcp_exchanges == 2
    assert summary.bytes == total
    assert summary.tftp_transfers == sum(1 + r.probes + 2 for r in summary.results)
    assert summary.dhcp_exchanges == 40
    # the loss was really injected, and recovered from by retransmission
    assert summary.dropped_out > 0 and summary.dropped_in > 0
    assert summary.dhcp_resends + summary.tftp_resends > 0
    # the figures of the server it started
    assert summary.server_cpu_s is not None and summary.server_cpu_s > 0
    assert summary.server_peak_rss_mb is not None and summary.server_peak_rss_mb > 10
    for key in ("address", "bootfile", "booted"):
        stats = summary.latency[key]
        assert 0 < stats["p50"] <= stats["p95"] <= stats["max"]
    assert summary.latency["address"]["max"] <= summary.latency["booted"]["max"]


def test_dhcp_only_rounds_with_a_socket_per_client():
    opts = Options(clients=12, mix={"bios": 1, "ipxe": 1}, dhcp_only=True, rounds=3,
                   relay_socket="per-client", timeout_scale=0.1, duration=30, progress=False, **SMALL)
    summary = run(opts)
    assert summary.all_booted, summary.failures
    assert summary.mode == "dhcp-only"
    assert summary.dhcp_exchanges == 36 and summary.bytes == 0 and summary.tftp_transfers == 0
    assert len({r.ip for r in summary.results}) == 12
    assert summary.latency["dora"]["count"] == 36


def test_main_writes_json_and_exits_zero(tmp_path, capsys):
    out = tmp_path / "summary.json"
    status = main(["--clients", "3", "--mix", "uefi", "--bootfile-size", "4K", "--kernel-size",
                            "20K", "--initrd-size", "50K", "--json", str(out), "-q"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "clients booted: 3/3" in printed and "time to fully booted" in printed
    data = json.loads(out.read_text())
    assert data["all_booted"] and data["booted"] == 3 and len(data["results"]) == 3
    assert data["bytes"] == 3 * (4096 + len(servers.PXELINUX_DEFAULT) + 20 * 1024 + 50 * 1024)


def test_no_server_fails_every_client_with_the_reason():
    """Nothing listens: every client gives up after the PXE schedule; exit status 1."""
    port = servers.free_udp_port()
    opts = Options(clients=3, mix={"bios": 1}, server="127.0.0.1", dhcp_port=port, tftp_port=port,
                   timeout_scale=0.01, duration=20, progress=False)
    summary = run(opts)
    assert summary.booted == 0 and summary.failed == 3
    assert summary.failures == {"dhcp_timeout after power_on": 3}
    assert summary.dhcp_resends == 3 * (len(profiles.PXE_DHCP_WAITS) - 1)
    status = main(["--clients", "2", "--server", "127.0.0.1", "--dhcp-port", str(port),
                            "--timeout-scale", "0.01", "-q"])
    assert status == 1


def test_remote_root_fetches_one_copy_of_each_file_upstream():
    """--remote-root: massboot reads the generated root over HTTP through its shared cache, so the
    simulator's upstream server sends each file it is asked for exactly once."""
    opts = Options(clients=12, mix={"bios": 1, "uefi": 1, "ipxe": 1}, remote_root=True, seed=5,
                   ramp=0.3, timeout_scale=0.5, duration=50, progress=False, **SMALL)
    summary = run(opts)
    failures = {r.mac: r.failure for r in summary.results if not r.ok}
    assert summary.all_booted and summary.failed == 0, failures
    assert "root http://127.0.0.1:" in summary.target
    for r in summary.results:
        assert r.bytes == servers.expected_bytes(r.profile, summary.files), (r.profile, r.files)

    up = summary.upstream
    assert up is not None
    served = set()  # every file some client read to the end
    for r in summary.results:
        served.update(name for name, size in r.files.items() if size == summary.files.get(name))
    assert set(up["distinct_files"]) == served
    assert served == {"pxelinux.0", "bootx64.efi", "boot.ipxe", "pxelinux.cfg/default", "vmlinuz",
                      "initrd.img"}
    assert up["gets_ok"] == len(served)
    assert up["bytes"] == up["distinct_bytes"] == sum(summary.files[name] for name in served)
    for name in served:
        assert up["by_path"][name] == [1, summary.files[name]], name
    # the probes for configs that do not exist went upstream too, and came back 404
    assert up["not_found"] > 0 and up["gets"] == up["gets_ok"] + up["not_found"]
    assert "upstream: 6 GETs" in report.format_summary(summary)


def test_proxy_rack_gets_addresses_from_the_site_server_and_files_from_massboot():
    """--proxy: massboot in proxy mode beside the simulator's own site server, 2 % loss."""
    opts = Options(clients=12, mix={"bios": 1, "uefi": 1, "ipxe": 1}, proxy=True, loss=2.0, seed=3,
                   timeout_scale=0.5, duration=60, progress=False, **SMALL)
    summary = run(opts)
    assert summary.all_booted, summary.failures
    assert "proxy mode" in summary.target and "12 boot-server (port 4011) exchanges" in summary.target
    for r in summary.results:
        assert r.ip is not None and r.ip.startswith("127.1.") and r.os_ip == r.ip   # the site's
        assert r.bytes == servers.expected_bytes(r.profile, summary.files), (r.profile, r.files)
        times = [r.marks[p] for p in PHASES]
        assert times == sorted(times), r.marks


def test_proxy_option_conflicts():
    from bench.sim.options import SetupError

    for bad in ({"proxy": True, "server": "127.0.0.1"}, {"proxy": True, "dhcp_only": True},
                {"site_server": "127.0.0.1:67"}):
        with pytest.raises(SetupError):
            run(Options(clients=1, progress=False, **bad))
