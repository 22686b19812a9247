"""A real UEFI machine boots Linux from massboot: QEMU + OVMF (Debian ``ovmf``), in CI.

The firmware is Debian 12's OVMF (``OVMF_CODE_4M.fd`` read-only in pflash unit 0, a copy of
``OVMF_VARS_4M.fd`` per run in unit 1), with its own network stack: a ``virtio-net-pci`` NIC
with ``romfile=`` (no iPXE option ROM), so the DHCP and the first download are EDK2's own
(PxeBcDxe, HttpBootDxe). The machine, the namespace and the processes are those of
``test_qemu_pxe`` (:class:`~tests.e2e.test_qemu_pxe.Lab`); massboot runs with ``-H`` so it
serves TFTP and HTTP from the same root.

Two boots (README, "UEFI: ipxe.efi and UEFI HTTP Boot"):

* ``test_uefi_pxe_ipxe_http``: UEFI PXE. OVMF's PXEv4 (option 60 ``PXEClient:Arch:00007``)
  gets ``ipxe.efi`` by TFTP; iPXE asks again (user class ``iPXE``) and gets ``ipxe_boot_file``,
  an ``http://`` URL: an iPXE script, then ``vmlinuz`` and ``initrd.img`` over HTTP; Linux's
  /init gets the same address (OS phase), fetches ``payload.bin`` by TFTP, checks its sha256 and
  powers off.
* ``test_uefi_http_boot``: UEFI HTTP Boot. With ``opt/org.tianocore/IPv4PXESupport`` and
  ``IPv6PXESupport`` off (OVMF reads them from QEMU's fw_cfg), the first boot option the
  firmware tries is ``UEFI HTTPv4``: its DHCP carries option 60 ``HTTPClient:Arch:00016``;
  massboot answers ``HTTPClient`` and ``http://10.78.0.1:8080/ipxe.efi`` (``[bootfile] 7``,
  arch 16's PXE twin), the firmware downloads it by HTTP and runs it; the rest is the first
  boot's chain. Without those two switches OVMF tries its boot options in their order,
  PXEv4, PXEv6, HTTPv4, HTTPv6: here PXEv4 would succeed first. Where only HTTP Boot works,
  PXEv4 gives up at once when its TFTP fails (else after about 60 s of DHCP retries) and PXEv6
  after about 64 s; measured by hand with ``00016 = ipxe.efi`` and no ``00007``: HTTPv4 at 78 s,
  /init at 111 s, against 9 s and 46 s with the switches (README).

Both record every frame of the NIC (QEMU ``filter-dump``) and check the firmware's own DHCP
packets: decoded and classified as massboot does (``tests/unit/golden/ovmf_*.hex`` are such
packets, written by ``python -m tests.e2e.test_qemu_uefi --capture DIR PCAP...`` from the
``.pcap`` files of these two boots).

QEMU uses KVM when ``/dev/kvm`` really runs OVMF (:func:`probe_uefi_accel`), else TCG
(``MASSBOOT_E2E_ACCEL=tcg|kvm`` forces one). Root only; under ``CI=true`` a missing tool or
package fails instead of skipping.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from massboot.dhcp.exchange import Classification, classify
from massboot.dhcp.packet import BootpPacket, MessageType, PacketError, decode
from tests.conftest import require, require_root, require_tool
from tests.e2e.test_qemu_pxe import (  # noqa: F401  (the lab fixture)
    DEFAULT_CACHE,
    MARK,
    POOL_START,
    SERVER_IP,
    TAP,
    VM_MAC,
    VM_UUID,
    Lab,
    LinuxFiles,
    Vm,
    accel_override,
    check_markers,
    excerpt,
    extract,
    fetch_debs,
    initramfs_base,
    kill,
    lab_fixture,
    once,
    qemu_base,
    replies,
    tftp_done,
    wait_until,
    write_payload,
)

pytestmark = pytest.mark.e2e

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
HTTP_PORT = 8080
HTTP_BASE = f"http://{SERVER_IP}:{HTTP_PORT}/"
METRICS_PORT = 9469       # /clients, inside the namespace
#: virtio-net for Linux, in load order (Debian 12's kernel builds them as modules)
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                  "failover", "net_failover", "virtio_net")
#: QEMU's virtio-net device header before each frame of a filter-dump of this NIC
VNET_HEADER = 10

BOOT_TIMEOUT = 300        # power-on to power-off under TCG: firmware, DHCP x3, downloads, Linux
QEMU_EXIT = 30
STARTUP = 30 + 20
SLACK = 60

#: (name, text) timed from QEMU's start: the firmware starts its boot option, iPXE runs, its
#: DHCP is done, the script runs, then /init's markers
MILESTONES = (
    ("pxe_start", "Start PXE over IPv4"),
    ("http_start", "Start HTTP Boot over IPv4"),
    ("ipxe", "iPXE initialising devices"),
    ("ipxe_dhcp", "net0: 10.78.0."),
    ("script", "massboot e2e: iPXE script over HTTP"),
    ("init", f"{MARK} init"),
    ("lease", f"{MARK} lease"),
    ("sha256", f"{MARK} sha256"),
    ("done", f"{MARK} done"),
)

IPXE_SCRIPT = f"""#!ipxe
echo massboot e2e: iPXE script over HTTP
kernel {HTTP_BASE}vmlinuz initrd=initrd.img console=ttyS0,115200 loglevel=4 panic=-1 tftp_file=payload.bin
initrd {HTTP_BASE}initrd.img
boot
"""
HTTP_GET = re.compile(r"http GET client=(?P<ip>[\d.]+):\d+ file=(?P<file>\S+) status=(?P<status>\d+) "
                      r"bytes=(?P<bytes>\d+)")
REPLY_URL = re.compile(r"(offer|ack) mac=(?P<mac>\S+) ip=(?P<ip>\S+) phase=(?P<phase>\S+) arch=(?P<arch>\S+) "
                       r"file=(?P<file>\S+)")


def within(*waits: float) -> pytest.MarkDecorator:
    """A test's pytest-timeout: its waits, plus startup and slack (boot files built outside)."""
    return pytest.mark.timeout(sum(waits) + STARTUP + SLACK, func_only=True)


# ------------------------------------------------------------------------------------------
# Boot files: ipxe.efi (Debian ipxe), vmlinuz and an initramfs with virtio-net
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UefiFiles(LinuxFiles):
    """What the UEFI boots serve, built once per session."""

    ipxe_efi: Path

    def install(self, root: Path) -> None:
        """Copy the served files into *root* (TFTP and HTTP share it)."""
        root.mkdir(parents=True, exist_ok=True)
        for src, name in ((self.ipxe_efi, "ipxe.efi"), (self.vmlinuz, "vmlinuz"),
                          (self.initrd, "initrd.img"), (self.payload, "payload.bin")):
            shutil.copyfile(src, root / name)
        (root / "boot.ipxe").write_text(IPXE_SCRIPT)


def build_initramfs(busybox: Path, modules: dict[str, Path]) -> bytes:
    """gzip'd newc cpio: busybox, /init from ``tests/e2e/initramfs`` and the virtio-net modules
    with ``/lib/modules/order`` (the order /init loads them in)."""
    cpio = initramfs_base(busybox)
    for name in VIRTIO_MODULES:
        cpio.file(f"lib/modules/{name}.ko", modules[name].read_bytes())
    cpio.file("lib/modules/order", "".join(f"{name}.ko\n" for name in VIRTIO_MODULES).encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def build_uefi_files(cache: Path, work: Path) -> UefiFiles:
    """Fetch (or reuse) the kernel and busybox packages; unpack; build the initramfs."""
    debs = fetch_debs(cache)
    unpacked = work / "unpacked"
    wanted = {f"{name}.ko" for name in VIRTIO_MODULES}
    kernel_files = extract(debs["kernel"], unpacked, lambda n: bool(
        re.fullmatch(r"\./boot/vmlinuz-.*", n)) or (n.rsplit("/", 1)[-1] in wanted and "/kernel/" in n))
    vmlinuz = next((p for p in kernel_files if p.name.startswith("vmlinuz-")), None)
    modules = {p.name.removesuffix(".ko"): p for p in kernel_files if p.name.endswith(".ko")}
    missing = [m for m in VIRTIO_MODULES if m not in modules]
    if vmlinuz is None or missing:
        raise RuntimeError(f"{debs['kernel'].name} lacks vmlinuz or modules {missing}")
    busybox = extract(debs["busybox-static"], unpacked, lambda n: n == "./bin/busybox")
    if not busybox:
        raise RuntimeError("busybox missing from busybox-static")
    initrd = work / "initrd.img"
    initrd.write_bytes(build_initramfs(busybox[0], modules))
    payload, sha256 = write_payload(work)
    return UefiFiles(ipxe_efi=IPXE_EFI.resolve(), vmlinuz=vmlinuz, initrd=initrd,
                     kernel_release=vmlinuz.name.removeprefix("vmlinuz-"), payload=payload,
                     payload_sha256=sha256)


# ------------------------------------------------------------------------------------------
# The machine and what it sent
# ------------------------------------------------------------------------------------------


def start_uefi_vm(lab: Lab, name: str, accel: str, *, pxe: bool = True) -> Vm:
    """Power on the UEFI machine: OVMF, virtio-net without option ROM, serial to a file, every
    frame to ``NAME.pcap``. *pxe* False turns OVMF's PXEv4 and PXEv6 boot options off, so that
    UEFI HTTPv4 comes first."""
    argv = ovmf_argv(accel, lab.work, name, tap=TAP, mac=VM_MAC, pxe=pxe)
    proc = lab.popen(argv, lab.work / f"{name}.qemu.log")
    return Vm(proc=proc, serial=lab.work / f"{name}.serial", started=time.monotonic())


def ovmf_argv(accel: str, work: Path, name: str, *, tap: str, mac: str, pxe: bool = True) -> list[str]:
    """QEMU's command line for the UEFI machine (see :func:`start_uefi_vm`): its serial console
    goes to ``WORK/NAME.serial``, every frame of its NIC on *tap* to ``WORK/NAME.pcap``, its
    variables to a copy of ``OVMF_VARS_4M.fd``."""
    variables = work / f"{name}.vars.fd"
    shutil.copyfile(OVMF_VARS, variables)
    argv = [*qemu_base(accel),
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
            "-object", f"filter-dump,id=dump0,netdev=n0,file={work / f'{name}.pcap'}",
            "-smbios", f"type=1,uuid={VM_UUID}",
            "-serial", f"file:{work / f'{name}.serial'}"]
    if not pxe:
        argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                 "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]
    return argv


def probe_uefi_accel(work: Path) -> str:
    """``kvm`` when /dev/kvm runs OVMF to its boot manager, else ``tcg``; ``MASSBOOT_E2E_ACCEL``
    overrides. (On this project's CI machines KVM runs SeaBIOS and Linux but stops OVMF with
    an "emulation failure" early in its SEC phase: the probe must boot this firmware.)"""
    known = accel_override()
    if known is not None:
        return known
    serial = work / "probe.serial"
    variables = work / "probe.vars.fd"
    shutil.copyfile(OVMF_VARS, variables)
    argv = [*qemu_base("kvm"), "-nic", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}", "-serial", f"file:{serial}"]
    log = work / "probe.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def verdict() -> str | None:      # KVM's failure shows in QEMU's output at once
        if serial.exists() and b"BdsDxe" in serial.read_bytes():
            return "kvm"
        if proc.poll() is not None or b"KVM internal error" in log.read_bytes():
            return "tcg"
        return None

    try:
        chosen = wait_until(verdict, 30, interval=0.25)
    finally:
        kill(proc, signal.SIGKILL)
    return chosen if isinstance(chosen, str) else "tcg"


def dhcp_payloads(pcap: Path, port: int = 67) -> Iterator[bytes]:
    """The UDP payloads to *port* (67: the machine's requests; 68: the servers' replies) in a
    QEMU ``filter-dump`` of a virtio-net NIC (libpcap format; each frame starts with the
    virtio-net header)."""
    return (payload for _when, payload in dhcp_frames(pcap, port))


def dhcp_frames(pcap: Path, port: int = 67) -> Iterator[tuple[float, bytes]]:
    """``(capture time, UDP payload)`` of every frame to *port* in *pcap* (see :func:`dhcp_payloads`)."""
    data = pcap.read_bytes()
    if len(data) < 24:
        return
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, length, _orig = struct.unpack(endian + "IIII", data[offset:offset + 16])
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        for start in (VNET_HEADER, 0):           # with the header, or without (another NIC model)
            eth = frame[start:]
            if len(eth) < 42 or eth[12:14] != b"\x08\x00" or eth[23] != 17:
                continue
            ihl = (eth[14] & 0x0F) * 4
            udp = eth[14 + ihl:]
            if len(udp) >= 8 and struct.unpack("!H", udp[2:4])[0] == port:
                yield sec + usec / 1e6, bytes(udp[8:struct.unpack("!H", udp[4:6])[0]])
            break


def firmware_requests(pcap: Path) -> list[BootpPacket]:
    """The DHCP requests in *pcap*, decoded by massboot's codec (undecodable ones fail)."""
    out = []
    for payload in dhcp_payloads(pcap):
        try:
            out.append(decode(payload))
        except PacketError as exc:   # a real firmware's packet must decode
            raise AssertionError(f"massboot cannot decode a DHCP request of the VM: {exc}") from exc
    return out


def first(requests: Sequence[BootpPacket], vendor: bytes, msgtype: MessageType) -> BootpPacket | None:
    """The first request of *msgtype* whose option 60 begins with *vendor*."""
    return next((p for p in requests if (p.option(60) or b"").startswith(vendor)
                 and p.message_type == msgtype), None)


def classified_discover(requests: Sequence[BootpPacket], vendor: bytes, diag: str) -> Classification:
    """The firmware's first DISCOVER whose option 60 begins with *vendor* (asserted present), as
    massboot's classify() sees it."""
    discover = first(requests, vendor, MessageType.DISCOVER)
    assert discover is not None, f"no OVMF {vendor.split(b':')[0].decode()} DISCOVER captured{diag}"
    return classify(discover, ("0.0.0.0", 68))


# ------------------------------------------------------------------------------------------
# massboot
# ------------------------------------------------------------------------------------------


def write_config(directory: Path, *, ipxe_boot_file: str = f"{HTTP_BASE}boot.ipxe") -> Path:
    """massboot's ini: ``[bootfile] 7 = ipxe.efi`` (UEFI PXE by TFTP, and arch 16's twin for
    HTTP Boot), iPXE gets the script by URL, ``-H`` on port 8080 serving the same root."""
    lines = [
        "[logger]", "type = stderr", "level = info",
        "[bootpd]", f"pool_start = {POOL_START}", "pool_count = 20", "lease_db = leases.sqlite3",
        f"ipxe_boot_file = {ipxe_boot_file}",
        "[bootfile]", "default = undionly.kpxe", "7 = ipxe.efi",
        "[tftpd]", "root = tftp",
        "[httpd]", f"port = {HTTP_PORT}",
        "[metrics]", "address = 127.0.0.1", f"port = {METRICS_PORT}",
    ]
    config = directory / "massboot.ini"
    config.write_text("\n".join(lines) + "\n")
    return config


def start_massboot(lab: Lab, config: Path, timeout: float = 30) -> subprocess.Popen:
    """``python -m massboot -H -c CONFIG`` in the namespace; returns once DHCP, TFTP and HTTP
    listen."""
    return lab.start_massboot(config, timeout, args=("-H",))


def check_linux(vm: Vm, log: str, files: UefiFiles) -> str:
    """The Linux half of a boot on the serial console and in massboot's log; returns the address."""
    diag = f"\nserial excerpt:\n{uefi_excerpt(vm)}\nmassboot log:\n{log}"
    os_ip = check_markers(vm, files, diag)
    mine = replies(log)
    os_acks = [r for r in mine if r.kind == "ack" and r.phase == "os"]
    assert os_acks and os_acks[0].ip == os_ip[1], f"no OS-phase ack for {os_ip[1]}{diag}"
    assert not [r for r in mine if r.kind == "nak"], f"massboot sent a NAK{diag}"
    assert {r.ip for r in mine if r.kind in ("offer", "ack")} == {os_ip[1]}, f"several addresses{diag}"
    return os_ip[1]


def http_sent(log: str, ip: str) -> dict[str, int]:
    """``file: bytes`` of every ``200`` massboot's HTTP server sent to *ip* (its log lines)."""
    return {m["file"]: int(m["bytes"]) for m in HTTP_GET.finditer(log)
            if m["ip"] == ip and m["status"] == "200"}


def boot_record(lab: Lab) -> dict | None:
    """The VM's ``/clients`` record (boot progress), read with curl inside the namespace."""
    out = subprocess.run(["ip", "netns", "exec", lab.ns, "curl", "-sf", "--max-time", "10",
                          f"http://127.0.0.1:{METRICS_PORT}/clients"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"GET /clients failed ({out.returncode}): {out.stderr}")
    return next((r for r in json.loads(out.stdout) if r["mac"].lower() == VM_MAC), None)


def check_progress(lab: Lab, files: UefiFiles, diag: str) -> None:
    """Boot progress saw one whole boot: the firmware's download (TFTP or HTTP), iPXE's over
    HTTP and /init's by TFTP, done."""
    record = boot_record(lab)
    assert record is not None, f"no /clients record for {VM_MAC}{diag}"
    least = sum(p.stat().st_size for p in (files.ipxe_efi, files.vmlinuz, files.initrd, files.payload))
    assert (record["phase"], record["boots"]) == ("done", 1) and record["bytes"] >= least, \
        f"boot progress {record}{diag}"


def uefi_excerpt(vm: Vm) -> str:
    keep = ("PXE", "HTTP", "Boot", "iPXE", "net0", "http://", "tftp://", "massboot e2e", MARK,
            "Kernel panic", "Error", "error", "Downloading", "URI", "File Size")
    return "\n".join(line.strip() for line in vm.text().splitlines()
                     if line.strip() and any(k in line for k in keep)) or excerpt(vm)


def report(name: str, vm: Vm, accel: str) -> str:
    times = " ".join(f"{k}={v:.1f}s" for k, v in vm.milestones.items())
    return f"\n--- {name} ({accel}): {times}\n{uefi_excerpt(vm)}\n---"


def follow(vm: Vm, timeout: float) -> None:
    """Follow *vm* until it powers off or *timeout*; record this module's milestones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and vm.proc.poll() is None:
        vm.note(MILESTONES)
        time.sleep(0.25)
    vm.note(MILESTONES)


# ------------------------------------------------------------------------------------------
# Fixtures and tests
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def uefi_files(tmp_path_factory: pytest.TempPathFactory) -> UefiFiles:
    require_root()
    require_tool("ip", "qemu-system-x86_64", "apt-get", "dpkg-deb")
    require(OVMF_CODE.exists() and OVMF_VARS.exists(), "OVMF is missing (Debian package ovmf)")
    require(IPXE_EFI.exists(), "ipxe.efi is missing (Debian package ipxe)")
    cache = Path(os.environ.get("MASSBOOT_E2E_CACHE", DEFAULT_CACHE))
    try:
        files = once("uefi_files", lambda: build_uefi_files(cache, tmp_path_factory.mktemp("e2e-uefi")))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        require(False, f"boot files unavailable: {exc}")
    return files


@pytest.fixture(scope="session")
def uefi_accel(uefi_files: UefiFiles, tmp_path_factory: pytest.TempPathFactory) -> str:
    chosen = once("uefi_accel", lambda: probe_uefi_accel(tmp_path_factory.mktemp("uefi-accel")))
    print(f"\nQEMU accelerator (UEFI): {chosen}")
    return chosen


def boot_uefi(lab: Lab, files: UefiFiles, accel: str, tmp_path: Path, name: str, title: str, *,
              pxe: bool = True) -> tuple[Vm, str, str]:
    """Serve *files* from ``tmp_path/tftp``, start massboot (``-H``) and the OVMF machine *name*
    (:func:`start_uefi_vm`), follow it to power-off or BOOT_TIMEOUT and print its timing under
    *title*; return the VM, massboot's log and the diagnostics every assertion ends with."""
    files.install(tmp_path / "tftp")
    start_massboot(lab, write_config(tmp_path))
    vm = start_uefi_vm(lab, name, accel, pxe=pxe)
    follow(vm, BOOT_TIMEOUT)
    print(report(title, vm, accel))
    log = lab.massboot_text()
    return vm, log, f"\nserial excerpt:\n{uefi_excerpt(vm)}\nmassboot log:\n{log}"


@within(BOOT_TIMEOUT, QEMU_EXIT)
def test_uefi_pxe_ipxe_http(uefi_files: UefiFiles, uefi_accel: str, lab: Lab, tmp_path: Path) -> None:
    """OVMF PXE: ipxe.efi by TFTP, then the iPXE script, kernel and initrd by HTTP, Linux."""
    vm, log, diag = boot_uefi(lab, uefi_files, uefi_accel, tmp_path, "uefi-pxe",
                              "UEFI PXE -> ipxe.efi -> HTTP")
    ip = check_linux(vm, log, uefi_files)
    assert vm.proc.wait(timeout=QEMU_EXIT) == 0, "QEMU did not exit cleanly after poweroff"

    # the firmware's own DHCP: PXEClient arch 7, classified as PXE boot firmware
    requests = firmware_requests(tmp_path / "uefi-pxe.pcap")
    request = classified_discover(requests, b"PXEClient:Arch:00007", diag)
    assert (request.pxe, request.http_client, request.arch, request.ipxe) == (True, False, 7, False)
    # massboot's view: the PXE ack gives ipxe.efi, TFTP sends it, iPXE gets the script URL
    urls = [m.groupdict() for m in REPLY_URL.finditer(log)]
    assert any(u["file"] == "ipxe.efi" and u["phase"] == "pxe" for u in urls), f"no ipxe.efi reply{diag}"
    assert any(u["file"] == f"{HTTP_BASE}boot.ipxe" for u in urls), f"iPXE never got the script URL{diag}"
    sent = {name: size for _line, client, name, size in tftp_done(log) if client == ip}
    assert sent.get("ipxe.efi") == uefi_files.ipxe_efi.stat().st_size, f"ipxe.efi by TFTP{diag}"
    assert "payload.bin" in sent and "vmlinuz" not in sent, f"kernel not over HTTP{diag}"
    assert "massboot e2e: iPXE script over HTTP" in vm.text(), f"the iPXE script did not run{diag}"
    got = http_sent(log, ip)
    assert got.get("vmlinuz") == uefi_files.vmlinuz.stat().st_size, f"vmlinuz over HTTP: {got}{diag}"
    assert got.get("initrd.img") == uefi_files.initrd.stat().st_size, f"initrd.img over HTTP: {got}{diag}"
    assert "boot.ipxe" in got and "ipxe.efi" not in got, f"HTTP downloads {got}{diag}"
    check_progress(lab, uefi_files, diag)


@within(BOOT_TIMEOUT, QEMU_EXIT)
def test_uefi_http_boot(uefi_files: UefiFiles, uefi_accel: str, lab: Lab, tmp_path: Path) -> None:
    """OVMF HTTP Boot: HTTPClient DHCP, ipxe.efi by HTTP from the firmware itself, then Linux."""
    vm, log, diag = boot_uefi(lab, uefi_files, uefi_accel, tmp_path, "uefi-http",
                              "UEFI HTTP Boot -> ipxe.efi -> HTTP", pxe=False)
    assert "Start PXE over IPv4" not in vm.text(), f"PXE was tried: the fw_cfg switches failed{diag}"
    ip = check_linux(vm, log, uefi_files)
    assert vm.proc.wait(timeout=QEMU_EXIT) == 0, "QEMU did not exit cleanly after poweroff"

    requests = firmware_requests(tmp_path / "uefi-http.pcap")
    request = classified_discover(requests, b"HTTPClient:Arch:00016", diag)
    assert (request.pxe, request.http_client, request.boot_client, request.arch) == (False, True, True, 16)
    assert first(requests, b"HTTPClient", MessageType.REQUEST) is not None, f"no HTTPClient REQUEST{diag}"
    urls = [m.groupdict() for m in REPLY_URL.finditer(log)]
    firmware = [u for u in urls if u["arch"] == "16"]
    assert firmware and all(u["file"] == f"{HTTP_BASE}ipxe.efi" and u["phase"] == "pxe" for u in firmware), \
        f"arch 16 did not get ipxe.efi's URL{diag}"
    assert not [d for d in tftp_done(log) if d[2] == "ipxe.efi"], f"ipxe.efi went by TFTP{diag}"
    assert "massboot e2e: iPXE script over HTTP" in vm.text(), f"the iPXE script did not run{diag}"
    got = http_sent(log, ip)     # the firmware's own download, then iPXE's three
    expected = {"ipxe.efi": uefi_files.ipxe_efi.stat().st_size, "boot.ipxe": len(IPXE_SCRIPT),
                "vmlinuz": uefi_files.vmlinuz.stat().st_size, "initrd.img": uefi_files.initrd.stat().st_size}
    assert got == expected, f"HTTP downloads {got}{diag}"
    check_progress(lab, uefi_files, diag)


# ------------------------------------------------------------------------------------------
# By hand: capture the firmware's DHCP packets as golden files
# ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write the DHCP DISCOVER and REQUEST of OVMF's PXE and HTTP Boot, as one line of hex
    each, from the ``.pcap`` files two boots of this module left (``pytest --basetemp DIR``);
    with ``--only http --prefix ovmf_proxy_``, those of the HTTP Boot of
    ``test_qemu_proxy.test_ovmf_http_boot_beside_dnsmasq`` (``ovmf-http.pcap``)."""
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.test_qemu_uefi", description=main.__doc__)
    parser.add_argument("--capture", type=Path, required=True, help="where to write the .hex files")
    parser.add_argument("--only", choices=("pxe", "http"), help="only this boot's packets")
    parser.add_argument("--prefix", default="ovmf_", help="the files' name prefix (default ovmf_)")
    parser.add_argument("pcaps", type=Path, nargs="+")
    args = parser.parse_args(argv)
    wanted = {(f"{args.prefix}{kind}_{what}", vendor, msgtype)
              for kind, vendor in (("pxe", b"PXEClient"), ("http", b"HTTPClient"))
              if args.only in (None, kind)
              for what, msgtype in (("discover", MessageType.DISCOVER), ("request", MessageType.REQUEST))}
    found: dict[str, bytes] = {}
    for pcap in args.pcaps:
        for payload in dhcp_payloads(pcap):
            packet = decode(payload)
            for name, vendor, msgtype in wanted:
                if name not in found and (packet.option(60) or b"").startswith(vendor) and \
                        packet.message_type == msgtype and not packet.is_ipxe:
                    found[name] = payload
    args.capture.mkdir(parents=True, exist_ok=True)
    for name, payload in sorted(found.items()):
        (args.capture / f"{name}.hex").write_text(payload.hex() + "\n")
        print(f"{name}.hex: {len(payload)} bytes")
    return 0 if len(found) == len(wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
