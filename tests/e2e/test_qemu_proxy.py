"""A real PXE machine boots Linux through massboot's proxyDHCP beside a site DHCP server.

The segment is tests/netns/sitelab.py's: dnsmasq (the site server: addresses, no PXE option)
and massboot (``mode = proxy``, ``access = mac``) on one bridge, with two taps for QEMU. Two
machines power on at once, so that one boot carries every check (README, "proxyDHCP"):

* the listed one (SeaBIOS + the e1000's iPXE ROM, test_qemu_pxe's boot files) gets its address
  from dnsmasq and its boot file from massboot (a proxy OFFER, then iPXE's REQUEST to port 4011
  and the proxy ACK), boots pxelinux.0 -> ldlinux.c32 -> pxe.cfg -> vmlinuz + initrd.img from
  massboot's TFTP, and its /init's udhcpc (the OS phase) is answered by dnsmasq only (massboot
  logs it as not_boot_client and sends nothing); /init fetches payload.bin from massboot
  (``tftp_server=``) and checks its sha256;
* the other MAC, not in ``[mac]``, gets its address from dnsmasq and nothing from massboot: it
  never loads a boot program.

And an OVMF machine (Debian ``ovmf``; virtio-net with no option ROM, so EDK2's own UEFI PXE
asks, architecture 7) gets its address from dnsmasq and the EFI boot file of ``[bootfile]
00007`` from massboot: the proxy OFFER, its REQUEST to port 4011, the ACK, the TFTP transfer of
the whole file to the address dnsmasq gave. What the firmware does with the file is not the
test's business (it is random bytes).

Root only; under ``CI=true`` a missing tool or package fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require, require_root, require_tool
from tests.e2e.test_qemu_pxe import (  # noqa: F401  (fixtures)
    MARK,
    NO_BOOT,
    PXE_CFG,
    QEMU_EXIT,
    BootFiles,
    Vm,
    accel,
    boot_files,
    excerpt,
    qemu_base,
    tftp_done,
    within,
)
from tests.netns.sitelab import SERVER_IP, SITE_IP, TAPS, SiteLab

pytestmark = pytest.mark.e2e

VM_MAC = "52:54:00:12:34:56"
DENIED_MAC = "52:54:00:65:43:21"
VM_UUID = "4d617373-626f-4f74-a5e2-652d65326521"
BOOT_TIMEOUT = 240
CONFIG = """\
[logger]
type = stderr
level = debug
[bootpd]
mode = proxy
access = mac
[mac]
{mac} = yes
[bootfile]
default = pxelinux.0
[tftpd]
root = tftp
[filters]
pxelinux.cfg/* = pxe.cfg
"""
REPLY = re.compile(r"PXE\[server\] INFO: (?P<proxy>proxy )?(?P<kind>offer|ack|nak|bootp) mac=(?P<mac>\S+) "
                   r"ip=(?P<ip>\S+) phase=(?P<phase>\S+) ")
MILESTONES = (
    ("pxe_dhcp", "net0: 10.79.0."),
    ("nbp", "[PXE-NBP]"),
    ("pxelinux", "PXELINUX 6"),
    ("loaded", "Loading initrd.img"),
    ("init", f"{MARK} init"),
    ("lease", f"{MARK} lease"),
    ("sha256", f"{MARK} sha256"),
    ("done", f"{MARK} done"),
    ("no_boot_device", NO_BOOT),
)


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
OVMF_MAC = "52:54:00:12:34:57"
OVMF_TIMEOUT = 150


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[SiteLab]:
    require_root()
    require_tool("ip", "dnsmasq", "qemu-system-x86_64")
    with SiteLab(tmp_path / "lab", taps=2) as made:
        yield made


def start_vm(lab: SiteLab, name: str, accel_name: str, tap: str, mac: str) -> Vm:
    serial = lab.work / f"{name}.serial"
    argv = [*qemu_base(accel_name), "-boot", "n",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"e1000,netdev=n0,mac={mac}", "-smbios", f"type=1,uuid={VM_UUID}",
            "-serial", f"file:{serial}"]
    with open(lab.work / f"{name}.qemu.log", "wb") as out:
        proc = lab.popen(lab.lab, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Vm(proc=proc, serial=serial, started=time.monotonic())


@within(BOOT_TIMEOUT, QEMU_EXIT)
def test_proxy_boot_beside_dnsmasq(boot_files: BootFiles, accel: str, lab: SiteLab,  # noqa: F811
                                   tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    boot_files.install(root)
    # /init fetches payload.bin from massboot: the DHCP server (option 54) is the site's
    (root / "pxe.cfg").write_text(PXE_CFG.replace("tftp_file=payload.bin",
                                                  f"tftp_file=payload.bin tftp_server={SERVER_IP}"))
    config = tmp_path / "massboot.ini"
    config.write_text(CONFIG.format(mac=VM_MAC.replace(":", "-")))
    lab.start_dnsmasq()
    lab.start_massboot(config)
    vm = start_vm(lab, "listed", accel, TAPS[0], VM_MAC)
    denied = start_vm(lab, "denied", accel, TAPS[1], DENIED_MAC)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline and (vm.proc.poll() is None or NO_BOOT not in denied.text()):
        vm.note(MILESTONES)
        denied.note(MILESTONES)
        time.sleep(0.25)
    vm.note(MILESTONES)
    denied.note(MILESTONES)
    log, site = lab.massboot_text(), lab.dnsmasq_text()
    for name, machine in (("listed", vm), ("denied", denied)):
        times = " ".join(f"{k}={v:.1f}s" for k, v in machine.milestones.items())
        print(f"\n--- proxy boot, {name} ({accel}): {times}\n{excerpt(machine)}\n---")
    diag = f"\nserial excerpt:\n{excerpt(vm)}\nmassboot log:\n{log}\ndnsmasq log:\n{site}"

    # the listed machine booted to its /init and fetched payload.bin from massboot
    markers = vm.markers()
    assert not [m for m in markers if m.startswith("FAIL")], f"/init failed: {markers}{diag}"
    lease = next((m for m in markers if m.startswith("lease ip=")), None)
    found = re.match(r"lease ip=(\S+) mask=\S+ server=(\S+)", lease or "")
    assert found is not None and found[2] == SITE_IP, f"the OS lease must come from dnsmasq: {lease}{diag}"
    os_ip = found[1]
    assert f"sha256 {boot_files.payload_sha256} file=payload.bin bytes={1 << 20}" in markers, diag
    assert "done" in markers, diag
    assert vm.proc.wait(timeout=QEMU_EXIT) == 0, "QEMU did not exit cleanly after poweroff"

    # massboot: a proxy OFFER, the proxy ACK on 4011 from the address dnsmasq gave, never more
    mine = [m for m in REPLY.finditer(log) if m["mac"].lower() == VM_MAC]
    kinds = [(m["proxy"], m["kind"]) for m in mine]
    assert ("proxy ", "offer") in kinds and ("proxy ", "ack") in kinds, f"{kinds}{diag}"
    assert not [m for m in REPLY.finditer(log) if not m["proxy"]], f"a non-proxy reply{diag}"
    pxe_ip = next(m["ip"] for m in mine if m["kind"] == "ack")
    assert re.search(rf"DHCPACK\(ps0\) {re.escape(pxe_ip)} {VM_MAC}", site), f"{pxe_ip} not dnsmasq's{diag}"
    assert re.search(rf"ignored mac={VM_MAC.upper()} phase=os reason=not_boot_client", log), diag
    done = tftp_done(log)
    by_pxe = {name for _n, ip, name, _b in done if ip == pxe_ip}
    assert {"pxelinux.0", "ldlinux.c32", "vmlinuz", "initrd.img"} <= by_pxe, f"{done}{diag}"
    assert any(ip == os_ip and name == "payload.bin" for _n, ip, name, _b in done), f"{done}{diag}"

    # the denied machine: an address from dnsmasq, nothing from massboot, no boot program
    denied_log = f"\ndenied serial:\n{excerpt(denied)}\nmassboot log:\n{log}"
    assert NO_BOOT in denied.text(), f"the denied VM did not give up{denied_log}"
    assert re.search(rf"denied mac={DENIED_MAC.upper()} by mac acl", log, re.I), denied_log
    assert not [m for m in REPLY.finditer(log) if m["mac"].lower() == DENIED_MAC], denied_log
    assert re.search(rf"DHCPACK\(ps0\) \S+ {DENIED_MAC}", site), f"dnsmasq did not serve it{denied_log}"
    assert "PXELINUX" not in denied.text() and not denied.markers(), denied_log


@pytest.mark.parametrize("offer", ["redirect", "bootfile"])
@pytest.mark.timeout(OVMF_TIMEOUT + 90)
def test_ovmf_gets_efi_boot_file_beside_dnsmasq(lab: SiteLab, tmp_path: Path, offer: str) -> None:
    """proxy_offer = redirect: EDK2 asks port 4011 from its address and gets the file there;
    bootfile: it takes the file from the OFFER, and massboot learns its address from option 50
    of its REQUEST to dnsmasq."""
    require_root()
    require_tool("qemu-system-x86_64")
    require(OVMF_CODE.exists() and OVMF_VARS.exists(), "OVMF is missing (Debian package ovmf)")
    root = tmp_path / "tftp"
    root.mkdir()
    efi = os.urandom(300 * 1024)
    (root / "bootx64.efi").write_bytes(efi)
    config = tmp_path / "massboot.ini"
    text = CONFIG.format(mac=OVMF_MAC.replace(":", "-"))
    text = text.replace("default = pxelinux.0", "default = pxelinux.0\n00007 = bootx64.efi")
    text = text.replace("mode = proxy", f"mode = proxy\nproxy_offer = {offer}")
    config.write_text(text.replace("root = tftp", f"root = {root}"))
    lab.start_dnsmasq()
    lab.start_massboot(config)
    variables = lab.work / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, variables)
    serial = lab.work / "ovmf.serial"
    argv = ["qemu-system-x86_64", "-nographic", "-nodefaults", "-m", "512", "-no-reboot", "-accel", "tcg",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={variables}",
            "-netdev", f"tap,id=n0,ifname={TAPS[0]},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={OVMF_MAC},disable-legacy=on,romfile=",
            "-serial", f"file:{serial}"]
    with open(lab.work / "ovmf.qemu.log", "wb") as out:
        vm = lab.popen(lab.lab, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    done = re.compile(rf"tftp done client=(?P<ip>[\d.]+):\d+ file=bootx64.efi bytes={len(efi)} ")
    while time.monotonic() - started < OVMF_TIMEOUT and vm.poll() is None:
        if done.search(lab.massboot_text()):
            break
        time.sleep(0.5)
    took = time.monotonic() - started
    log, site = lab.massboot_text(), lab.dnsmasq_text()
    diag = f"\nmassboot log:\n{log}\ndnsmasq log:\n{site}"
    found = done.search(log)
    print(f"\n--- OVMF UEFI PXE (tcg), proxy_offer = {offer}: bootx64.efi fetched {took:.1f}s after power-on")
    assert found is not None, f"OVMF did not fetch bootx64.efi in {OVMF_TIMEOUT} s{diag}"
    ip = found["ip"]
    mine = [m for m in REPLY.finditer(log) if m["mac"].lower() == OVMF_MAC]
    assert [(m["proxy"], m["kind"]) for m in mine][:1] == [("proxy ", "offer")], diag
    assert re.search(rf"DHCPACK\(ps0\) {re.escape(ip)} {OVMF_MAC}", site), f"{ip} is not dnsmasq's{diag}"
    assert not [m for m in REPLY.finditer(log) if not m["proxy"]], f"a non-proxy reply{diag}"
    if offer == "bootfile":
        assert re.search(rf"proxy offer mac={OVMF_MAC.upper()} ip=0.0.0.0 phase=pxe arch=7 file=bootx64.efi",
                         log), diag
        assert re.search(rf"ignored mac={OVMF_MAC.upper()} phase=pxe reason=site_server ip={re.escape(ip)}",
                         log), f"the address was not learnt from the site REQUEST{diag}"
        return
    acks = [m for m in mine if m["kind"] == "ack"]
    assert acks and acks[0]["ip"] == ip and acks[0]["proxy"], f"the 4011 ACK{diag}"
    assert re.search(rf"proxy ack mac={OVMF_MAC.upper()} ip={re.escape(ip)} phase=pxe arch=7 "
                     rf"file=bootx64.efi to={re.escape(ip)}:\d+", log), diag
