"""A real PXE machine boots Linux from massboot: QEMU (SeaBIOS + the e1000's iPXE ROM) in CI.

Each test builds one network namespace holding a bridge (``10.78.0.1/24``, massboot's address)
and a tap port on it for the virtual machine; massboot (``python -m massboot -c CONFIG``), the
HTTP "mirror" and ``qemu-system-x86_64`` all run inside that namespace (``ip netns exec``), so
nothing touches the host's interfaces. Every process is killed by its pid, then the namespace is
deleted (which removes the bridge and the tap).

The boot chain, every step served by massboot::

    iPXE DHCP (phase=pxe, option 97 = the SMBIOS UUID) -> TFTP pxelinux.0 -> ldlinux.c32
    -> pxelinux.cfg/<uuid>  (answered by the [filters] line  pxelinux.cfg/* = pxe.cfg)
    -> vmlinuz (Debian's kernel) + initrd.img (busybox-static, e1000.ko, tests/e2e/initramfs)
    -> /init: udhcpc (phase=os, the same sticky address) -> busybox tftp payload.bin -> sha256
    -> poweroff -f

The Debian packages (the kernel ``linux-image-amd64`` depends on, ``pxelinux``,
``syslinux-common``, ``busybox-static``) are fetched with ``apt-get download`` into a cache
(``$MASSBOOT_E2E_CACHE``, default ``/var/cache/massboot-e2e``; a package already there is not
fetched again), unpacked and the initramfs built once per pytest session. Nothing binary is
committed.

The tests:

* ``test_unlisted_mac_gets_nothing``: ``access = mac``, the VM's MAC not in ``[mac]``: massboot
  logs the denials, sends no offer, the VM never starts a boot loader.
* ``test_boot_local_root_ipxe_http``: ``access = mac`` with the MAC listed, a local root, and
  ``massboot -H`` (README, "HTTP boot"): the e1000's iPXE gets ``ipxe_boot_file``, a URL, and
  loads that iPXE script, then the kernel and the initrd over HTTP from massboot (``check_ip``
  on: the VM's leased address may download); /init then fetches payload.bin by TFTP. The markers,
  the address (PXE ack == udhcpc lease == OS ack) and the sha256 on the serial console, and
  massboot's log shows the steps in order. (The pxelinux chain by TFTP is the mirror test's.)
* ``test_boot_mirror_root``: ``[tftpd] root = http://10.78.0.1:8081/``: EVERY file (pxelinux.0,
  ldlinux.c32, pxe.cfg, vmlinuz, initrd.img, payload.bin) comes from a ``python -m http.server``
  mirror through massboot's cache. The VM boots twice (two power-ons of the same machine, as
  two machines of a rack would): the mirror's log must show exactly one GET per file. massboot
  runs with ``[tftpd] processes = 2``: the parent's prefetch of the boot file and the worker
  that serves it share one download.

QEMU uses KVM when ``/dev/kvm`` really runs a guest (probed once: a direct ``-kernel`` boot of
the same initramfs in ``massboot_e2e=probe`` mode), else TCG; ``MASSBOOT_E2E_ACCEL=tcg|kvm``
forces one. Root only; under ``CI=true`` a missing tool or package fails instead of skipping.

Running this module as a script builds the same boot files and a sample config into a
directory, for booting the VM by hand (README.rst, "See it boot")::

    python -m tests.e2e.test_qemu_pxe DIR
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import itertools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_root, require_tool
from tests.netns.netns import NamespaceLayout, add_namespace, delete_namespace, run_ip

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INITRAMFS_SRC = HERE / "initramfs"
DEFAULT_CACHE = "/var/cache/massboot-e2e"
PACKAGES = ("pxelinux", "syslinux-common", "busybox-static")   # + the kernel linux-image-amd64 depends on

BRIDGE = "mbbr0"
TAP = "mbtap0"
SERVER_IP = "10.78.0.1"
SERVER_ADDR = f"{SERVER_IP}/24"
POOL_START = "10.78.0.100"
MIRROR_PORT = 8081
VM_MAC = "52:54:00:12:34:56"
VM_MAC_INI = VM_MAC.replace(":", "-")
OTHER_MAC_INI = "52-54-00-65-43-21"
VM_UUID = "4d617373-626f-4f74-a5e2-652d65326521"

BOOT_TIMEOUT = 240        # seconds for one whole boot, power-on to power-off
DENIED_WAIT = 60          # at most this long for iPXE to give up its DHCP (it takes ~15-20 s)
QEMU_EXIT = 30            # seconds for QEMU to exit after the guest powered off
STARTUP = 30 + 20         # the bounds of start_massboot and start_mirror
SLACK = 60                # log reading, assertions, namespace teardown


def within(*waits: float) -> pytest.MarkDecorator:
    """A test's pytest-timeout: the sum of the waits it may make, plus startup and slack.

    ``func_only``: the session's boot files (package downloads, each with its own subprocess
    timeout) are built in a fixture, outside this budget.
    """
    return pytest.mark.timeout(sum(waits) + STARTUP + SLACK, func_only=True)

IPXE_GAVE_UP = "No configuration methods"   # iPXE: "... succeeded" (cut by cursor codes on serial)
NO_BOOT = "No bootable device"              # SeaBIOS: every boot device failed
MARK = "MASSBOOT-E2E:"
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>c78])")
REPLY = re.compile(r"PXE\[server\] INFO: (?P<kind>offer|ack|nak|bootp) mac=(?P<mac>\S+) ip=(?P<ip>\S+) "
                   r"phase=(?P<phase>\S+) ")
TFTP_DONE = re.compile(r"tftp done client=(?P<ip>[\d.]+):\d+ file=(?P<file>\S+) bytes=(?P<bytes>\d+)")
HTTP_DONE = re.compile(r"http GET client=(?P<ip>[\d.]+):\d+ file=(?P<file>\S+) status=200 "
                       r"bytes=(?P<bytes>\d+)")
GET = re.compile(r'"GET (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3})')

# No "serial" line: with -nographic SeaBIOS already copies the VGA text to the serial port, and
# pxelinux writing to both would print every line twice.
PXE_CFG = """\
# massboot end-to-end test: every pxelinux.cfg/* probe gets this file ([filters])
prompt 0
timeout 0
default linux
label linux
  kernel vmlinuz
  initrd initrd.img
  append console=ttyS0,115200 loglevel=4 panic=-1 tftp_file=payload.bin
"""

# README, "HTTP boot": the script iPXE gets as ipxe_boot_file; ${next-server} is massboot
IPXE_SCRIPT = """\
#!ipxe
kernel http://${next-server}/vmlinuz console=ttyS0,115200 loglevel=4 panic=-1 tftp_file=payload.bin
initrd http://${next-server}/initrd.img
boot
"""

_counter = itertools.count(1)


# ------------------------------------------------------------------------------------------
# Boot files: Debian packages -> pxelinux.0, ldlinux.c32, vmlinuz, initrd.img
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinuxFiles:
    """What every e2e Linux boot serves: the kernel, the initramfs (:func:`initramfs_base`) and
    the payload its /init fetches (:func:`write_payload`)."""

    vmlinuz: Path
    initrd: Path
    kernel_release: str
    payload: Path
    payload_sha256: str


@dataclass(frozen=True)
class BootFiles(LinuxFiles):
    """Everything a boot serves, built once per session (see :func:`build_boot_files`)."""

    pxelinux: Path
    ldlinux: Path
    busybox: Path

    def install(self, root: Path) -> None:
        """Copy the served files into *root* under the names pxe.cfg uses."""
        root.mkdir(parents=True, exist_ok=True)
        for src, name in ((self.pxelinux, "pxelinux.0"), (self.ldlinux, "ldlinux.c32"),
                          (self.vmlinuz, "vmlinuz"), (self.initrd, "initrd.img"),
                          (self.payload, "payload.bin")):
            shutil.copyfile(src, root / name)
        (root / "pxe.cfg").write_text(PXE_CFG)


def kernel_package() -> str | None:
    """The real kernel package ``linux-image-amd64`` depends on (``linux-image-6.1.0-N-amd64``)."""
    try:
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
    return match.group(1) if match else None


def fetch_debs(cache: Path) -> dict[str, Path]:
    """The four .deb files, from *cache* when there, else ``apt-get download`` into it.

    Returns:
        ``{"kernel": ..., "pxelinux": ..., "syslinux-common": ..., "busybox-static": ...}``.

    Raises:
        RuntimeError: a package is neither cached nor downloadable.
    """
    cache.mkdir(parents=True, exist_ok=True)
    kernel = kernel_package()
    wanted: dict[str, str | None] = {"kernel": kernel, **{p: p for p in PACKAGES}}
    debs: dict[str, Path] = {}
    for role, package in wanted.items():
        if package is None:      # apt knows no linux-image-amd64 (no `apt-get update`): use a cached one
            found = sorted(cache.glob("linux-image-[0-9]*-amd64_*.deb"))
        else:
            found = sorted(cache.glob(f"{glob.escape(package)}_*.deb"))
            if not found:
                result = subprocess.run(["apt-get", "download", "-q", package], cwd=cache,
                                        capture_output=True, text=True, timeout=600)
                found = sorted(cache.glob(f"{glob.escape(package)}_*.deb"))
                if not found:
                    raise RuntimeError(f"apt-get download {package} failed ({result.returncode}): "
                                       f"{result.stderr.strip()}")
        if not found:
            raise RuntimeError("apt-cache knows no linux-image-amd64 (run apt-get update) and "
                               f"{cache} holds no linux-image-*-amd64 package")
        debs[role] = found[-1]
    if kernel is not None:       # keep one kernel in the cache, the one apt wants now
        for old in cache.glob("linux-image-[0-9]*-amd64_*.deb"):
            if old != debs["kernel"]:
                old.unlink()
    return debs


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> Path:
    """Write one regular file of *tar* below *dest*, refusing names that would leave it.

    Written by hand rather than with ``TarFile.extract(filter="data")``: that argument arrived in
    Python 3.11.4, and Debian 12's own interpreter is 3.11.2.
    """
    parts = Path(member.name).parts
    if Path(member.name).is_absolute() or ".." in parts:
        raise RuntimeError(f"unsafe member name in package: {member.name!r}")
    target = dest.joinpath(*[p for p in parts if p != "."])
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None
    with source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink)
    target.chmod(member.mode & 0o755)
    return target


def extract(deb: Path, dest: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """Unpack the regular files of *deb* whose path (``./boot/...``) passes *wanted* into *dest*.

    Like ``dpkg -x`` restricted to a few members, so the kernel package's 400 MB of modules
    are never written out.
    """
    out: list[Path] = []
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    out.append(_write_member(tar, member, dest))
    except BaseException:
        kill(proc, signal.SIGKILL)
        raise
    finally:
        proc.stdout.close()
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed ({proc.returncode})")
    return out


class Cpio:
    """A ``newc`` cpio archive (what the kernel unpacks as an initramfs), built in memory."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = itertools.count(1)

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        raw = name.encode() + b"\0"
        fields = (next(self._ino), mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + raw)
        self._out.write(b"\0" * (-(110 + len(raw)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive with its trailer."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def initramfs_base(busybox: Path) -> Cpio:
    """The newc cpio every e2e initramfs starts with: busybox-static as /bin/busybox (and
    /bin/sh), /init and udhcpc's script from ``tests/e2e/initramfs``, the /dev/console the kernel
    opens for /init; the caller adds the NIC's modules under /lib/modules."""
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", (INITRAMFS_SRC / "init").read_bytes(), 0o755)
    cpio.file("etc/udhcpc.script", (INITRAMFS_SRC / "udhcpc.script").read_bytes(), 0o755)
    return cpio


def build_initramfs(busybox: Path, e1000: Path) -> bytes:
    """gzip'd newc cpio: :func:`initramfs_base` and e1000.ko."""
    cpio = initramfs_base(busybox)
    cpio.file("lib/modules/e1000.ko", e1000.read_bytes())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def write_payload(work: Path) -> tuple[Path, str]:
    """``work/payload.bin``: 1 MiB of random bytes the VM's /init fetches by TFTP and whose
    sha256 it prints; returns the path and that sha256 (hex)."""
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(1 << 20))
    return payload, hashlib.sha256(payload.read_bytes()).hexdigest()


def build_boot_files(cache: Path, work: Path) -> BootFiles:
    """Fetch (or reuse) the packages in *cache*; unpack them and build the initramfs in *work*."""
    debs = fetch_debs(cache)
    unpacked = work / "unpacked"
    kernel_files = extract(debs["kernel"], unpacked, lambda n: bool(
        re.fullmatch(r"\./boot/vmlinuz-.*", n) or n.endswith("/drivers/net/ethernet/intel/e1000/e1000.ko")))
    vmlinuz = next((p for p in kernel_files if p.name.startswith("vmlinuz-")), None)
    e1000 = next((p for p in kernel_files if p.name == "e1000.ko"), None)
    if vmlinuz is None or e1000 is None:
        raise RuntimeError(f"{debs['kernel'].name} has no vmlinuz or e1000.ko")
    pxelinux = extract(debs["pxelinux"], unpacked, lambda n: n.endswith("/PXELINUX/pxelinux.0"))
    ldlinux = extract(debs["syslinux-common"], unpacked, lambda n: n.endswith("/modules/bios/ldlinux.c32"))
    busybox = extract(debs["busybox-static"], unpacked, lambda n: n == "./bin/busybox")
    if not (pxelinux and ldlinux and busybox):
        raise RuntimeError("pxelinux.0, ldlinux.c32 or busybox missing from the packages")
    initrd = work / "initrd.img"
    initrd.write_bytes(build_initramfs(busybox[0], e1000))
    payload, sha256 = write_payload(work)
    return BootFiles(pxelinux=pxelinux[0], ldlinux=ldlinux[0], vmlinuz=vmlinuz, initrd=initrd,
                     busybox=busybox[0], kernel_release=vmlinuz.name.removeprefix("vmlinuz-"),
                     payload=payload, payload_sha256=sha256)


# ------------------------------------------------------------------------------------------
# Processes and the namespace
# ------------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    """Poll *condition* until truthy (returned) or *timeout* seconds passed (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def kill(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    """Stop *proc* by its pid (*sig*, then SIGKILL after *timeout* s); reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def clean_env() -> dict[str, str]:
    """This process's environment without proxies (the mirror is local to the namespace)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def strip_ansi(text: str) -> str:
    """Serial output without SeaBIOS/iPXE cursor codes and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


@dataclass
class Vm:
    """One QEMU run: its process, its serial log, milestones seen on it."""

    proc: subprocess.Popen
    serial: Path
    started: float
    milestones: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        """The serial console so far, ANSI codes stripped."""
        try:
            return strip_ansi(self.serial.read_bytes().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def markers(self) -> list[str]:
        """The ``MASSBOOT-E2E:`` lines printed by /init, marker removed."""
        return [line.split(MARK, 1)[1].strip() for line in self.text().splitlines() if MARK in line]

    def note(self, milestones: Sequence[tuple[str, str]]) -> None:
        """Record the first time each (name, text) milestone shows on the console."""
        text = self.text()
        for name, needle in milestones:
            if name not in self.milestones and needle in text:
                self.milestones[name] = time.monotonic() - self.started


#: (name, text) pairs of the pxelinux chain to Linux: pxelinux.0 is loaded, pxelinux runs, the
#: kernel and initrd are loaded, then /init's markers
PXELINUX_MILESTONES = (
    ("nbp", "[PXE-NBP]"),
    ("pxelinux", "PXELINUX 6"),
    ("loaded", "Loading initrd.img"),
    ("init", f"{MARK} init"),
    ("lease", f"{MARK} lease"),
    ("sha256", f"{MARK} sha256"),
    ("done", f"{MARK} done"),
)
#: (name, text) pairs timed from QEMU's start: iPXE has an address (or gives up), then the chain
MILESTONES = (
    ("ipxe_gave_up", "No configuration methods"),
    ("no_boot_device", "No bootable device"),
    ("pxe_dhcp", "net0: 10.78.0."),
    *PXELINUX_MILESTONES,
)


class Lab(NamespaceLayout):
    """One network namespace: a bridge with massboot's address and a tap for the VM.

    Every process started here runs inside the namespace and is stopped by its pid in
    :meth:`close`, which then deletes the namespace (and with it the bridge and the tap) with
    :func:`tests.netns.netns.delete_namespace`.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.ns = f"mb-e2e-{os.getpid()}-{next(_counter)}"
        self.procs: list[subprocess.Popen] = []
        self.massboot_log = work / "massboot.log"
        self.mirror_log = work / "mirror.log"

    def _create(self) -> None:
        add_namespace(self.ns)
        run_ip("-n", self.ns, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        run_ip("-n", self.ns, "addr", "add", SERVER_ADDR, "dev", BRIDGE)
        run_ip("-n", self.ns, "tuntap", "add", "dev", TAP, "mode", "tap")
        run_ip("-n", self.ns, "link", "set", TAP, "master", BRIDGE)
        run_ip("-n", self.ns, "link", "set", TAP, "up")
        run_ip("-n", self.ns, "link", "set", BRIDGE, "up")

    def popen(self, argv: Sequence[str], log: Path, **kwargs: object) -> subprocess.Popen:
        """Start *argv* in the namespace, stdout and stderr to *log*; stopped in :meth:`close`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=out,  # type: ignore[call-overload]
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process by pid, then delete the namespace (any process left in it killed
        by pid first)."""
        for proc in reversed(self.procs):
            kill(proc)
        delete_namespace(self.ns)

    # -- massboot ------------------------------------------------------------------------
    def start_massboot(self, config: Path, timeout: float = 30, args: Sequence[str] = ()) -> subprocess.Popen:
        """``python -m massboot -c CONFIG [ARGS]`` in the namespace; returns once DHCP and TFTP
        (and with ``-H`` HTTP) listen."""
        env = clean_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        proc = self.popen([sys.executable, "-m", "massboot", "-c", str(config), *args], self.massboot_log,
                          cwd=str(config.parent), env=env)
        wanted = ["dhcp listening on", "tftp listening on"] + (["http listening on"] if "-H" in args else [])

        def ready() -> bool:
            text = self.massboot_log.read_text(errors="replace")
            if proc.poll() is not None:
                raise RuntimeError(f"massboot exited with {proc.returncode}:\n{text}")
            return all(needle in text for needle in wanted)

        if not wait_until(ready, timeout):
            raise TimeoutError(f"massboot not listening after {timeout} s:\n{self.massboot_log.read_text()}")
        return proc

    def massboot_text(self) -> str:
        return self.massboot_log.read_text(errors="replace") if self.massboot_log.exists() else ""

    # -- the HTTP mirror -----------------------------------------------------------------
    def start_mirror(self, directory: Path, timeout: float = 20) -> subprocess.Popen:
        """``python -m http.server`` on SERVER_IP:MIRROR_PORT in the namespace, serving *directory*."""
        proc = self.popen([sys.executable, "-u", "-m", "http.server", str(MIRROR_PORT), "--bind", SERVER_IP,
                           "--directory", str(directory)], self.mirror_log, env=clean_env())

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"http.server exited with {proc.returncode}:\n"
                                   f"{self.mirror_log.read_text()}")
            return "Serving HTTP" in self.mirror_log.read_text(errors="replace")

        if not wait_until(ready, timeout):
            raise TimeoutError(f"http.server not ready after {timeout} s")
        return proc

    def mirror_gets(self) -> list[tuple[str, int]]:
        """(path, status) of every GET the mirror answered."""
        text = self.mirror_log.read_text(errors="replace")
        return [(m["path"], int(m["status"])) for m in GET.finditer(text)]

    # -- QEMU ----------------------------------------------------------------------------
    def start_vm(self, name: str, accel: str) -> Vm:
        """Power on the PXE machine: e1000 (iPXE ROM) on the tap, serial console to a file."""
        serial = self.work / f"{name}.serial"
        argv = [*qemu_base(accel), "-boot", "n",
                "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                "-device", f"e1000,netdev=n0,mac={VM_MAC}",
                "-smbios", f"type=1,uuid={VM_UUID}",
                "-serial", f"file:{serial}"]
        proc = self.popen(argv, self.work / f"{name}.qemu.log")
        return Vm(proc=proc, serial=serial, started=time.monotonic())


def qemu_base(accel: str) -> list[str]:
    """The QEMU command line every run shares."""
    return ["qemu-system-x86_64", "-nographic", "-monitor", "none", "-no-reboot", "-m", "512",
            "-accel", accel, *(["-cpu", "host"] if accel == "kvm" else [])]


def watch(vm: Vm, timeout: float, until: Callable[[Vm], bool] | None = None) -> None:
    """Follow *vm* until it powers off (or *until* says so, or *timeout*); record milestones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and vm.proc.poll() is None:
        vm.note(MILESTONES)
        if until is not None and until(vm):
            break
        time.sleep(0.25)
    vm.note(MILESTONES)


def accel_override() -> str | None:
    """The accelerator known without a probe boot: ``MASSBOOT_E2E_ACCEL`` when it says ``kvm`` or
    ``tcg``, ``tcg`` when /dev/kvm is not usable; None when KVM must be probed."""
    forced = os.environ.get("MASSBOOT_E2E_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return None


def probe_accel(files: BootFiles, work: Path) -> str:
    """``kvm`` when /dev/kvm boots this kernel and initramfs to /init (a direct ``-kernel`` boot
    in ``massboot_e2e=probe`` mode), else ``tcg``. ``MASSBOOT_E2E_ACCEL`` overrides."""
    known = accel_override()
    if known is not None:
        return known
    serial = work / "kvm-probe.serial"
    argv = [*qemu_base("kvm"), "-nic", "none", "-kernel", str(files.vmlinuz), "-initrd", str(files.initrd),
            "-append", "console=ttyS0 loglevel=1 panic=-1 massboot_e2e=probe", "-serial", f"file:{serial}"]
    with open(work / "kvm-probe.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill(proc, signal.SIGKILL)
    ok = serial.exists() and f"{MARK} init" in strip_ansi(serial.read_bytes().decode(errors="replace"))
    return "kvm" if ok else "tcg"


# ------------------------------------------------------------------------------------------
# Configs and log checks
# ------------------------------------------------------------------------------------------


def write_config(directory: Path, root: str, mac_listed: bool | None, http: bool = False,
                 processes: int = 1) -> Path:
    """massboot's ini for one test: *root* for [tftpd]; *mac_listed* None means no ACL, True
    ``access = mac`` with the VM's MAC listed, False ``access = mac`` with another MAC only;
    *http*: iPXE gets ``boot.ipxe`` over HTTP (``ipxe_boot_file``; run massboot with ``-H``);
    *processes*: ``[tftpd] processes`` (README, "TFTP worker processes")."""
    acl = ""
    if mac_listed is not None:
        acl = "access = mac\n"
    lines = [
        "[logger]", "type = stderr", "level = info",
        "[bootpd]", f"pool_start = {POOL_START}", "pool_count = 20", "lease_db = leases.sqlite3",
        acl.strip(),
        f"ipxe_boot_file = http://{SERVER_IP}/boot.ipxe" if http else "",
        "[bootfile]", "default = pxelinux.0",
        # cache_revalidate: no conditional GET between the mirror test's two boots, however slow
        "[tftpd]", f"root = {root}", "cache_dir = cache", "cache_revalidate = 3600",
        f"processes = {processes}",
        "[filters]", "pxelinux.cfg/* = pxe.cfg",
        *(["[httpd]", "port = 80", "check_ip = yes"] if http else []),
    ]
    if mac_listed is not None:
        lines += ["[mac]", f"{OTHER_MAC_INI} = yes"]
        if mac_listed:
            lines.append(f"{VM_MAC_INI} = yes")
    config = directory / "massboot.ini"
    config.write_text("\n".join(line for line in lines if line) + "\n")
    return config


@dataclass(frozen=True)
class Reply:
    """One DHCP reply line of massboot's log."""

    line: int
    kind: str
    mac: str
    ip: str
    phase: str


def replies(log: str, mac: str = VM_MAC) -> list[Reply]:
    """massboot's offer/ack/nak lines for *mac*, in order."""
    out = []
    for n, line in enumerate(log.splitlines()):
        m = REPLY.search(line)
        if m and m["mac"].lower() == mac.lower():
            out.append(Reply(n, m["kind"], m["mac"], m["ip"], m["phase"]))
    return out


def _files_sent(log: str, pattern: re.Pattern[str]) -> list[tuple[int, str, str, int]]:
    """(line, client ip, file, bytes) of every line of massboot's log *pattern* matches."""
    out = []
    for n, line in enumerate(log.splitlines()):
        m = pattern.search(line)
        if m:
            out.append((n, m["ip"], m["file"], int(m["bytes"])))
    return out


def tftp_done(log: str) -> list[tuple[int, str, str, int]]:
    """(line, client ip, file, bytes) of every completed TFTP transfer."""
    return _files_sent(log, TFTP_DONE)


def http_done(log: str) -> list[tuple[int, str, str, int]]:
    """(line, client ip, file, bytes) of every GET answered 200 by massboot -H."""
    return _files_sent(log, HTTP_DONE)


def first_line(entries: Sequence[tuple[int, str, str, int]], pred: Callable[[str], bool]) -> int | None:
    return next((n for n, _ip_, name, _b in entries if pred(name)), None)


def excerpt(vm: Vm) -> str:
    """The serial console's interesting lines: iPXE, pxelinux, the kernel banner, /init."""
    keep = ("iPXE", "net0", "Next server", "Filename", "tftp://", "PXE-NBP", "PXELINUX", "Loading", MARK,
            "Power down", "Booting from", "No bootable", "Kernel panic")
    lines = [line.strip() for line in vm.text().splitlines()]
    return "\n".join(line for line in lines if line and any(k in line for k in keep))


def report(name: str, vm: Vm, accel: str) -> str:
    """A timing line and the serial excerpt, printed under ``pytest -s``."""
    times = " ".join(f"{k}={v:.1f}s" for k, v in vm.milestones.items())
    return f"\n--- {name} ({accel}): {times}\n{excerpt(vm)}\n---"


def check_markers(vm: Vm, files: LinuxFiles, diag: str) -> re.Match[str]:
    """Assert /init's serial markers of one Linux boot: no FAIL, the kernel, eth0 with VM_MAC, a
    lease from massboot (SERVER_IP), payload.bin's sha256, done; return the lease's match (group
    1 the address, 2 the server). *diag* ends every failure message."""
    markers = vm.markers()
    failed = [m for m in markers if m.startswith("FAIL")]
    assert not failed, f"/init failed: {failed}{diag}"
    assert any(m.startswith("init kernel=" + files.kernel_release) for m in markers), f"no /init marker{diag}"
    assert f"eth0 mac={VM_MAC.lower()}" in markers, f"no eth0 marker{diag}"
    lease = next((m for m in markers if m.startswith("lease ip=")), None)
    assert lease is not None, f"no lease marker{diag}"
    os_ip = re.match(r"lease ip=(\S+) mask=\S+ server=(\S+)", lease)
    assert os_ip is not None and os_ip[2] == SERVER_IP, f"bad lease marker {lease!r}{diag}"
    assert f"sha256 {files.payload_sha256} file=payload.bin bytes={1 << 20}" in markers, \
        f"sha256 of payload.bin not seen{diag}"
    assert "done" in markers, f"no done marker{diag}"
    return os_ip


def check_boot(vm: Vm, log: str, files: BootFiles, http: bool = False) -> str:
    """Assert one whole boot on the serial console and in massboot's log; return the address.

    *http*: the iPXE script, the kernel and the initrd came by HTTP (README, "HTTP boot"), not
    the pxelinux chain by TFTP.
    """
    diag = f"\nserial excerpt:\n{excerpt(vm)}\nmassboot log:\n{log}"
    os_ip = check_markers(vm, files, diag)

    # massboot's view: PXE ack -> pxelinux.0 -> ldlinux.c32 -> pxelinux.cfg -> vmlinuz -> initrd
    # -> OS ack (same address) -> payload.bin
    mine = replies(log)
    pxe_acks = [r for r in mine if r.kind == "ack" and r.phase == "pxe"]
    os_acks = [r for r in mine if r.kind == "ack" and r.phase == "os"]
    assert pxe_acks, f"no ack phase=pxe for {VM_MAC}{diag}"
    assert os_acks, f"no ack phase=os for {VM_MAC}{diag}"
    ip = pxe_acks[0].ip
    assert {r.ip for r in mine if r.kind in ("offer", "ack")} == {ip}, f"the VM got several addresses{diag}"
    assert os_ip[1] == ip, f"OS phase got {os_ip[1]}, PXE phase {ip}: lease not sticky{diag}"
    assert not [r for r in mine if r.kind == "nak"], f"massboot sent a NAK{diag}"
    done = [d for d in tftp_done(log) if d[1] == ip]
    if http:
        fetched = [d for d in http_done(log) if d[1] == ip]
        assert not [d for d in done if d[2] != "payload.bin"], f"a boot file came by TFTP{diag}"
        order = [
            ("pxe ack", pxe_acks[0].line),
            ("boot.ipxe (http)", first_line(fetched, lambda n: n == "boot.ipxe")),
            ("vmlinuz (http)", first_line(fetched, lambda n: n == "vmlinuz")),
            ("initrd.img (http)", first_line(fetched, lambda n: n == "initrd.img")),
            ("os ack", os_acks[0].line),
            ("payload.bin", first_line(done, lambda n: n == "payload.bin")),
        ]
        done = fetched
    else:
        order = [
            ("pxe ack", pxe_acks[0].line),
            ("pxelinux.0", first_line(done, lambda n: n == "pxelinux.0")),
            ("ldlinux.c32", first_line(done, lambda n: n == "ldlinux.c32")),
            ("pxelinux.cfg/...", first_line(done, lambda n: n.startswith("pxelinux.cfg/"))),
            ("vmlinuz", first_line(done, lambda n: n == "vmlinuz")),
            ("initrd.img", first_line(done, lambda n: n == "initrd.img")),
            ("os ack", os_acks[0].line),
            ("payload.bin", first_line(done, lambda n: n == "payload.bin")),
        ]
    missing = [name for name, line in order if line is None]
    assert not missing, f"massboot's log lacks {missing}{diag}"
    lines = [line for _name, line in order]
    assert lines == sorted(lines), f"phases out of order: {order}{diag}"
    sizes = {name: b for _n, _ip_, name, b in done}
    assert sizes["vmlinuz"] == files.vmlinuz.stat().st_size, f"vmlinuz transfer size{diag}"
    assert sizes["initrd.img"] == files.initrd.stat().st_size, f"initrd.img transfer size{diag}"
    return ip


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------

#: what the session fixtures made, by name: pytest keeps one instance of a session fixture per
#: module that defines *or imports* it (test_qemu_proxy imports them), so each is made here once
_SESSION: dict[str, Any] = {}


def once(name: str, make: Callable[[], Any]) -> Any:
    """*make*'s value, made once per pytest process (see :data:`_SESSION`); a failure is not kept."""
    if name not in _SESSION:
        _SESSION[name] = make()
    return _SESSION[name]


@pytest.fixture(scope="session")
def boot_files(tmp_path_factory: pytest.TempPathFactory) -> BootFiles:
    """The Debian packages fetched (or taken from the cache) and the boot files built, once."""
    require_root()
    require_tool("ip", "qemu-system-x86_64", "apt-get", "dpkg-deb")
    require(Path("/usr/lib/ipxe/qemu/efi-e1000.rom").exists(),
            "the e1000 iPXE ROM is missing (Debian package ipxe-qemu)")
    cache = Path(os.environ.get("MASSBOOT_E2E_CACHE", DEFAULT_CACHE))
    started = time.monotonic()
    try:
        files = once("boot_files", lambda: build_boot_files(cache, tmp_path_factory.mktemp("e2e-boot")))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        require(False, f"boot files unavailable: {exc}")
    print(f"\nboot files: kernel {files.kernel_release}, initrd {files.initrd.stat().st_size} bytes, "
          f"built in {time.monotonic() - started:.1f} s (cache {cache})")
    return files


@pytest.fixture(scope="session")
def accel(boot_files: BootFiles, tmp_path_factory: pytest.TempPathFactory) -> str:
    """QEMU's accelerator for the session (KVM only when it really boots a guest)."""
    chosen = once("accel", lambda: probe_accel(boot_files, tmp_path_factory.mktemp("e2e-accel")))
    print(f"\nQEMU accelerator: {chosen}")
    return chosen


@pytest.fixture(name="lab")
def lab_fixture(tmp_path: Path) -> Iterator[Lab]:
    """A fresh namespace (bridge + tap) for one test; everything in it is stopped afterwards
    (test_qemu_uefi's tests use it too)."""
    require_root()
    with Lab(tmp_path) as created:
        yield created


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


@within(DENIED_WAIT)
def test_unlisted_mac_gets_nothing(boot_files: BootFiles, accel: str, lab: Lab, tmp_path: Path) -> None:
    """access = mac, the VM's MAC not listed: its DISCOVERs are denied, it never boots."""
    root = tmp_path / "tftp"
    boot_files.install(root)
    lab.start_massboot(write_config(tmp_path, "tftp", mac_listed=False))
    vm = lab.start_vm("denied", accel)
    # iPXE resends its DISCOVER for about 15-20 s, then gives up and SeaBIOS tries its other
    # (absent) boot devices: the whole attempt is watched, and it must end without an answer
    watch(vm, DENIED_WAIT, until=lambda v: NO_BOOT in v.text())
    print(report("unlisted MAC", vm, accel))
    log = lab.massboot_text()
    diag = f"\nserial excerpt:\n{excerpt(vm)}\nmassboot log:\n{log}"
    assert vm.proc.poll() is None, f"QEMU exited early ({vm.proc.returncode}){diag}"
    assert IPXE_GAVE_UP in vm.text() and NO_BOOT in vm.text(), \
        f"iPXE did not give up its DHCP within {DENIED_WAIT} s{diag}"
    denials = re.findall(rf"denied mac={re.escape(VM_MAC)} by mac acl", log, re.I)
    assert denials, f"massboot never saw (and denied) the VM's DHCP{diag}"
    assert not replies(log), f"massboot answered an unlisted MAC{diag}"
    assert not tftp_done(log), f"a TFTP transfer happened{diag}"
    assert "PXELINUX" not in vm.text() and not vm.markers(), f"the VM booted{diag}"


@within(BOOT_TIMEOUT, QEMU_EXIT)
def test_boot_local_root_ipxe_http(boot_files: BootFiles, accel: str, lab: Lab, tmp_path: Path) -> None:
    """access = mac with the MAC listed, local root, ``-H``: iPXE loads its script, the kernel and
    the initrd over HTTP from massboot (README, "HTTP boot", the BIOS recipe), then the OS."""
    boot_files.install(tmp_path / "tftp")
    (tmp_path / "tftp" / "boot.ipxe").write_text(IPXE_SCRIPT)
    lab.start_massboot(write_config(tmp_path, "tftp", mac_listed=True, http=True), args=("-H",))
    vm = lab.start_vm("local", accel)
    watch(vm, BOOT_TIMEOUT)
    print(report("local root, iPXE over HTTP", vm, accel))
    ip = check_boot(vm, lab.massboot_text(), boot_files, http=True)
    assert vm.proc.wait(timeout=30) == 0, "QEMU did not exit cleanly after poweroff"
    assert ip.startswith("10.78.0.")


@within(BOOT_TIMEOUT, QEMU_EXIT, BOOT_TIMEOUT, QEMU_EXIT)   # two boots
def test_boot_mirror_root(boot_files: BootFiles, accel: str, lab: Lab, tmp_path: Path) -> None:
    """Every file from an HTTP mirror through massboot's URL root and cache; two boots, one GET
    per file."""
    mirror = tmp_path / "mirror"
    boot_files.install(mirror)
    lab.start_mirror(mirror)
    # two TFTP worker processes: the parent's DHCP side prefetches the boot file (option 13)
    # while a worker serves it, one flight for both (README, "TFTP worker processes")
    config = write_config(tmp_path, f"http://{SERVER_IP}:{MIRROR_PORT}/", mac_listed=None, processes=2)
    lab.start_massboot(config)
    served = ["/pxelinux.0", "/ldlinux.c32", "/pxe.cfg", "/vmlinuz", "/initrd.img", "/payload.bin"]
    addresses = []
    for n in (1, 2):
        skip = len(lab.massboot_text().splitlines())   # this boot's lines only (line numbers kept)
        vm = lab.start_vm(f"mirror-{n}", accel)
        watch(vm, BOOT_TIMEOUT)
        print(report(f"mirror root, boot {n}", vm, accel))
        log = "\n".join(line if i >= skip else "" for i, line in enumerate(lab.massboot_text().splitlines()))
        addresses.append(check_boot(vm, log, boot_files))
        assert vm.proc.wait(timeout=30) == 0, "QEMU did not exit cleanly after poweroff"
        gets = lab.mirror_gets()
        counts = {path: sum(1 for p, _s in gets if p == path) for path in served}
        assert counts == dict.fromkeys(served, 1), \
            f"boot {n}: expected one GET per file, mirror saw {gets}\n{lab.mirror_log.read_text()}"
        assert all(status == 200 for _p, status in gets), f"mirror answered {gets}"
    assert addresses[0] == addresses[1], f"the second boot got another address: {addresses}"
    cached = re.findall(r"cached url=(\S+) bytes=", lab.massboot_text())
    assert sorted(cached) == sorted(f"http://{SERVER_IP}:{MIRROR_PORT}{p}" for p in served), cached


# ------------------------------------------------------------------------------------------
# By hand: build the boot files and a config for README.rst's "See it boot"
# ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write pxelinux.0, ldlinux.c32, pxe.cfg, vmlinuz, initrd.img, payload.bin and massboot.ini
    into a directory, for booting the test's VM by hand."""
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.test_qemu_pxe", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("MASSBOOT_E2E_CACHE", DEFAULT_CACHE)))
    args = parser.parse_args(argv)
    work = args.directory.resolve() / "build"
    work.mkdir(parents=True, exist_ok=True)
    files = build_boot_files(args.cache, work)
    files.install(args.directory / "tftp")
    config = write_config(args.directory.resolve(), "tftp", mac_listed=None)
    print(f"{config}\nroot {args.directory / 'tftp'}: kernel {files.kernel_release}, "
          f"payload.bin sha256 {files.payload_sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
