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

And OVMF's UEFI HTTP Boot (``test_ovmf_http_boot_beside_dnsmasq``: PXE switched off with
QEMU's ``-fw_cfg opt/org.tianocore/IPv4PXESupport`` and ``IPv6PXESupport``, as in
``test_qemu_uefi``): its HTTPClient DISCOVER gets two OFFERs, dnsmasq's (an address, no boot
option: EDK2's HttpOfferTypeDhcpOnly) and massboot's proxy OFFER (yiaddr 0.0.0.0, option 60
``HTTPClient``, option 67 ``http://10.79.0.1:8080/ipxe.efi``: HttpOfferTypeProxyIpUri), which
HttpBootDxe combines; its REQUEST takes dnsmasq's address (option 54, option 50), which massboot
learns from it, so that ``[httpd] check_ip = yes`` lets the firmware's own HEAD and GET of
``ipxe.efi`` through. iPXE then asks again (dnsmasq's address, massboot's proxy OFFER and
port-4011 ACK with ``ipxe_boot_file``), loads the script, the kernel and the initrd over HTTP;
Linux's /init gets its lease from dnsmasq alone, fetches payload.bin from massboot by TFTP and
powers off. The pcap of the NIC (QEMU ``filter-dump``) shows which OFFER the firmware took; the
run prints the timeline.

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

from massboot.dhcp.exchange import classify
from massboot.dhcp.packet import BootpPacket, MessageType, decode
from tests.conftest import require, require_root, require_tool
from tests.e2e.test_qemu_pxe import (  # noqa: F401  (fixtures)
    MARK,
    NO_BOOT,
    PXE_CFG,
    PXELINUX_MILESTONES,
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
from tests.e2e.test_qemu_uefi import HTTP_BASE as UEFI_HTTP_BASE
from tests.e2e.test_qemu_uefi import (  # noqa: F401  (fixtures)
    HTTP_GET,
    IPXE_SCRIPT,
    UefiFiles,
    dhcp_frames,
    firmware_requests,
    first,
    ovmf_argv,
    uefi_accel,
    uefi_excerpt,
    uefi_files,
)
from tests.netns.sitelab import PROXY_CONFIG, PROXY_HEAD, REPLY, SERVER_IP, SITE_IP, SITE_RANGE, TAPS, SiteLab

pytestmark = pytest.mark.e2e

VM_MAC = "52:54:00:12:34:56"
DENIED_MAC = "52:54:00:65:43:21"
VM_UUID = "4d617373-626f-4f74-a5e2-652d65326521"
BOOT_TIMEOUT = 240
#: massboot in proxy mode (sitelab's PROXY_CONFIG) with the boot files of test_qemu_pxe
CONFIG = PROXY_CONFIG.format(mac="{mac}", root="tftp", filter="pxelinux.cfg/* = pxe.cfg")
MILESTONES = (
    ("pxe_dhcp", "net0: 10.79.0."),
    *PXELINUX_MILESTONES,
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


# ------------------------------------------------------------------------------------------
# UEFI HTTP Boot through the proxy OFFER
# ------------------------------------------------------------------------------------------

HTTP_PORT = 8080
HTTP_BASE = f"http://{SERVER_IP}:{HTTP_PORT}/"
METRICS_PORT = 9469
HTTP_BOOT_TIMEOUT = 300       # power-on to power-off under TCG: firmware, DHCP x3, downloads, Linux
HTTP_CONFIG = PROXY_HEAD + f"""\
ipxe_boot_file = {HTTP_BASE}boot.ipxe
[mac]
{{mac}} = yes
[bootfile]
default = undionly.kpxe
7 = ipxe.efi
[tftpd]
root = tftp
[httpd]
port = {HTTP_PORT}
check_ip = yes
[metrics]
address = 127.0.0.1
port = {METRICS_PORT}
"""
#: (name, text) on the serial console, timed from QEMU's start
HTTP_MILESTONES = (
    ("http_start", "Start HTTP Boot over IPv4"),
    ("ipxe", "iPXE initialising devices"),
    ("ipxe_dhcp", "net0: 10.79.0."),
    ("script", "massboot e2e: iPXE script over HTTP"),
    ("init", f"{MARK} init"),
    ("lease", f"{MARK} lease"),
    ("done", f"{MARK} done"),
)


def _http_log_milestones(mac: str, url: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(name, pattern) in massboot's log, timed from QEMU's start by the polling loop."""
    mac_re = re.escape(mac.upper())
    return (
        ("proxy_offer", re.compile(rf"proxy offer mac={mac_re} ip=0\.0\.0\.0 phase=pxe arch=16 "
                                   rf"file={re.escape(url)} ")),
        ("reported", re.compile(rf"ignored mac={mac_re} phase=pxe reason=site_server ip=\S+")),
        ("firmware_get", re.compile(r"http GET client=\S+ file=ipxe\.efi status=200 ")),
        ("ipxe_ack", re.compile(rf"proxy ack mac={mac_re} ip=\S+ phase=pxe arch=7 file=\S+boot\.ipxe ")),
        ("kernel_get", re.compile(r"http GET client=\S+ file=vmlinuz status=200 ")),
    )


def _replies(pcap: Path, xid: int) -> list[tuple[float, BootpPacket]]:
    """The DHCP replies in *pcap* (to port 68) of the exchange *xid*, with their capture times."""
    out = []
    for when, payload in dhcp_frames(pcap, 68):
        packet = decode(payload)
        if packet.xid == xid:
            out.append((when, packet))
    return out


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of *name* whose labels include *labels* (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        found = re.match(rf"{re.escape(name)}(?:{{(?P<labels>[^}}]*)}})? (?P<value>\S+)$", line)
        if found is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found["value"])
    return total


@pytest.mark.timeout(HTTP_BOOT_TIMEOUT + QEMU_EXIT + 110, func_only=True)
def test_ovmf_http_boot_beside_dnsmasq(uefi_files: UefiFiles, uefi_accel: str,  # noqa: F811
                                       lab: SiteLab, tmp_path: Path) -> None:
    """OVMF's UEFI HTTP Boot (PXE switched off) on the proxy segment: the address from dnsmasq's
    OFFER, the boot URL from massboot's proxy OFFER (option 60 ``HTTPClient``, option 67);
    ``ipxe.efi`` from massboot's ``-H`` with ``check_ip = yes`` (the address the firmware named
    in option 50 of its REQUEST to dnsmasq); iPXE's DHCP: dnsmasq's address again, massboot's
    proxy OFFER and port-4011 ACK with the script's URL; then the kernel and initrd over HTTP,
    Linux's /init (udhcpc answered by dnsmasq only) fetches payload.bin by TFTP and powers off."""
    root = tmp_path / "tftp"
    uefi_files.install(root)
    script = IPXE_SCRIPT.replace(UEFI_HTTP_BASE, HTTP_BASE)
    (root / "boot.ipxe").write_text(script.replace("tftp_file=payload.bin",
                                                   f"tftp_file=payload.bin tftp_server={SERVER_IP}"))
    config = tmp_path / "massboot.ini"
    config.write_text(HTTP_CONFIG.format(mac=OVMF_MAC.replace(":", "-")))
    lab.start_dnsmasq()
    lab.start_massboot(config, args=("-H",))
    name = "ovmf-http"
    argv = ovmf_argv(uefi_accel, lab.work, name, tap=TAPS[0], mac=OVMF_MAC, pxe=False)
    with open(lab.work / f"{name}.qemu.log", "wb") as out:
        proc = lab.popen(lab.lab, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    powered_on = time.time()
    vm = Vm(proc=proc, serial=lab.work / f"{name}.serial", started=time.monotonic())
    url = f"{HTTP_BASE}ipxe.efi"
    log_milestones = _http_log_milestones(OVMF_MAC, url)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + HTTP_BOOT_TIMEOUT
    while True:
        vm.note(HTTP_MILESTONES)
        log = lab.massboot_text()
        for key, pattern in log_milestones:
            if key not in seen and pattern.search(log):
                seen[key] = time.monotonic() - vm.started
        if vm.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    vm.note(HTTP_MILESTONES)
    metrics = lab.run(lab.lab, ["curl", "-sf", "--max-time", "10",
                                f"http://127.0.0.1:{METRICS_PORT}/metrics"]).stdout
    log, site = lab.massboot_text(), lab.dnsmasq_text()
    pcap = lab.work / f"{name}.pcap"
    requests = firmware_requests(pcap)
    discover = first(requests, b"HTTPClient:Arch:00016", MessageType.DISCOVER)
    exchange = [] if discover is None else [(when - powered_on, p)
                                            for when, p in _replies(pcap, discover.xid)]
    wire = " ".join(f"{p.message_type.name.lower()}@{t:.1f}s(from={p.server_id},yiaddr={p.yiaddr})"
                    for t, p in exchange)
    times = " ".join(f"{k}={v:.1f}s"
                     for k, v in sorted({**vm.milestones, **seen}.items(), key=lambda kv: kv[1]))
    print(f"\n--- OVMF UEFI HTTP Boot beside dnsmasq ({uefi_accel}): {times}\n"
          f"firmware's DHCP replies: {wire}\n{uefi_excerpt(vm)}\n---")
    diag = f"\nserial excerpt:\n{uefi_excerpt(vm)}\nmassboot log:\n{log}\ndnsmasq log:\n{site}"

    # the firmware: HTTP Boot only, its DISCOVER is an HTTP Boot client's (arch 16)
    assert "Start HTTP Boot over IPv4" in vm.text(), f"OVMF did not start HTTP Boot{diag}"
    assert "Start PXE over IPv4" not in vm.text(), f"PXE was tried: the fw_cfg switches failed{diag}"
    assert discover is not None, f"no OVMF HTTPClient DISCOVER captured{diag}"
    request = classify(discover, ("0.0.0.0", 68))
    assert (request.pxe, request.http_client, request.boot_client, request.arch) == (False, True, True, 16)

    # the two OFFERs it got: dnsmasq's (an address, no boot information) and massboot's (a proxy
    # OFFER: no address, HTTPClient and the URL: EDK2's HttpOfferTypeProxyIpUri)
    offers = [p for _t, p in exchange if p.message_type == MessageType.OFFER]
    site_offer = next((p for p in offers if p.server_id == SITE_IP), None)
    proxy_offer = next((p for p in offers if p.server_id == SERVER_IP), None)
    assert site_offer is not None and proxy_offer is not None, f"offers {wire}{diag}"
    assert site_offer.option(60) is None and site_offer.option(67) is None, f"dnsmasq sent boot options{diag}"
    assert SITE_RANGE[0].rsplit(".", 1)[0] == site_offer.yiaddr.rsplit(".", 1)[0]
    assert (proxy_offer.yiaddr, proxy_offer.option(60), proxy_offer.option(67)) == \
        ("0.0.0.0", b"HTTPClient", url.encode()), f"the proxy OFFER {proxy_offer}{diag}"
    # it took dnsmasq's address (its REQUEST names dnsmasq and that address) ...
    taken = next((p for p in requests if p.xid == discover.xid and p.message_type == MessageType.REQUEST),
                 None)
    assert taken is not None, f"no REQUEST after the HTTPClient DISCOVER{diag}"
    assert (taken.server_id, taken.requested_ip) == (SITE_IP, site_offer.yiaddr), f"{taken}{diag}"
    acks = [p for _t, p in exchange if p.message_type == MessageType.ACK]
    assert [p.server_id for p in acks] == [SITE_IP], f"the ACK is dnsmasq's alone: {wire}{diag}"
    firmware_ip = site_offer.yiaddr
    assert re.search(rf"DHCPACK\(ps0\) {re.escape(firmware_ip)} {OVMF_MAC}", site), diag
    # ... massboot learnt it from that REQUEST (option 50) and let it download (check_ip) ...
    assert re.search(rf"proxy offer mac={OVMF_MAC.upper()} ip=0\.0\.0\.0 phase=pxe arch=16 "
                     rf"file={re.escape(url)} ", log), f"no proxy OFFER for arch 16{diag}"
    assert re.search(rf"ignored mac={OVMF_MAC.upper()} phase=pxe reason=site_server "
                     rf"ip={re.escape(firmware_ip)}\b", log), f"the address was not learnt{diag}"
    # ... and the URL of massboot's OFFER: the firmware's own GET of ipxe.efi, whole
    gets = [m.groupdict() for m in HTTP_GET.finditer(log)]
    firmware_gets = [g for g in gets if g["file"] == "ipxe.efi"]
    size = uefi_files.ipxe_efi.stat().st_size
    assert firmware_gets and all(g["ip"] == firmware_ip for g in firmware_gets), f"{gets}{diag}"
    assert [g["status"] for g in firmware_gets if g["status"] == "200"] and \
        int(next(g for g in firmware_gets if g["status"] == "200")["bytes"]) == size, f"{gets}{diag}"
    assert not [g for g in gets if g["status"] == "401"], f"check_ip refused a download: {gets}{diag}"
    assert _metric(metrics, "massboot_http_requests_total", code="401") == 0, metrics
    assert _metric(metrics, "massboot_http_requests_total", method="GET", code="200") >= 4, metrics
    assert not tftp_done(log) or all(name != "ipxe.efi" for _l, _ip, name, _b in tftp_done(log)), diag
    assert not [m for m in REPLY.finditer(log) if not m["proxy"]], f"a non-proxy reply{diag}"

    # iPXE: dnsmasq's address, massboot's proxy OFFER then the 4011 ACK with the script's URL
    ipxe_acks = [m for m in REPLY.finditer(log) if m["mac"].lower() == OVMF_MAC and m["kind"] == "ack"
                 and m["proxy"]]
    assert ipxe_acks, f"no proxy ACK for iPXE{diag}"
    ipxe_ip = ipxe_acks[-1]["ip"]
    assert re.search(rf"proxy ack mac={OVMF_MAC.upper()} ip={re.escape(ipxe_ip)} phase=pxe arch=7 "
                     rf"file={re.escape(HTTP_BASE)}boot\.ipxe to={re.escape(ipxe_ip)}:\d+", log), diag
    assert "massboot e2e: iPXE script over HTTP" in vm.text(), f"the iPXE script did not run{diag}"
    sent = {g["file"]: int(g["bytes"]) for g in gets if g["ip"] == ipxe_ip and g["status"] == "200"}
    assert sent.get("vmlinuz") == uefi_files.vmlinuz.stat().st_size, f"{sent}{diag}"
    assert sent.get("initrd.img") == uefi_files.initrd.stat().st_size, f"{sent}{diag}"

    # Linux: its udhcpc answered by dnsmasq alone, payload.bin by TFTP from massboot
    markers = vm.markers()
    assert not [m for m in markers if m.startswith("FAIL")], f"/init failed: {markers}{diag}"
    lease = next((m for m in markers if m.startswith("lease ip=")), None)
    found = re.match(r"lease ip=(\S+) mask=\S+ server=(\S+)", lease or "")
    assert found is not None and found[2] == SITE_IP, f"the OS lease must come from dnsmasq: {lease}{diag}"
    assert f"sha256 {uefi_files.payload_sha256} file=payload.bin bytes={1 << 20}" in markers, diag
    assert "done" in markers, diag
    assert re.search(rf"ignored mac={OVMF_MAC.upper()} phase=os reason=not_boot_client", log), diag
    assert any(ip == found[1] and f == "payload.bin" for _l, ip, f, _b in tftp_done(log)), diag
    assert vm.proc.wait(timeout=QEMU_EXIT) == 0, "QEMU did not exit cleanly after poweroff"
