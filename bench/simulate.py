"""A rack of simulated PXE clients booting from a DHCP/PXE + TFTP server, with figures.

Each client is a greenlet that boots like a real machine:

1. DHCP DISCOVER / OFFER / REQUEST / ACK with the PXE options of its firmware (60
   ``PXEClient:Arch:NNNNN:UNDI:...``, 93, 94, 97 UUID, 55 as the ROM sends it, 57; iPXE adds
   user class 77 ``iPXE``), retransmitted on the firmware's schedule (PXE spec: 4, 8, 16, 32 s;
   iPXE: 1, 2, 4, 8 s);
2. TFTP read of the boot file with the firmware's options (BIOS ROM: ``tsize`` and ``blksize``
   1432 or 1468; EDK2: ``blksize`` 1468, ``windowsize`` 4, ``tsize``; iPXE: ``blksize`` 1432,
   ``tsize``; plain: RFC 1350, no options);
3. PXELINUX-style config probes (``pxelinux.cfg/<uuid>``, ``01-<mac>``, the hex IP and its
   prefixes down to one digit, ``default``; the first that exists wins) with the second stage's
   options, or for iPXE the script the server names as its boot file;
4. the kernel and the initrd named by that config;
5. the booted OS's own DHCP exchange (no option 97, no ``PXEClient``), then optionally RELEASE.

The simulator talks to the server as a DHCP relay agent (``giaddr``), so replies come back by
unicast and it needs no root. By default it writes a boot root and a massboot config into a
temporary directory, starts ``python -m massboot`` as a subprocess on free loopback ports, runs
the rack, stops the server and reports its CPU time and peak RSS. ``--server HOST`` targets a
server that is already running (massboot, dnsmasq, pybootd...). ``--remote-root`` serves the
root over HTTP from the simulator (counting every GET and byte) and points massboot's
``[tftpd] root`` and ``cache_dir`` at it; ``--netns`` (root) runs massboot and the rack in two
network namespaces joined by a veth pair, with real broadcast DHCP (no ``giaddr``). Datagram
loss (``--loss``) is injected here, in both directions, never in the server.

Usage::

    python bench/simulate.py --clients 50
    python bench/simulate.py --clients 500 --mix bios=100 --json out.json
    python bench/simulate.py --dhcp-only --clients 500 --rounds 10

Importable: :func:`run` takes :class:`Options` and returns a :class:`Summary`; :func:`main` is
the command line. The exit status is 0 when every client booted, 1 otherwise, 2 on a usage or
startup error.
"""

from gevent import monkey

monkey.patch_all()

import _socket  # noqa: E402  (the C module: the TFTP loop waits on it with its own watchers)
import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid as uuidlib  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.queue import Empty, Queue  # noqa: E402

try:
    import massboot  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import massboot  # noqa: F401

from massboot.dhcp.packet import (  # noqa: E402
    BOOTREQUEST,
    FLAG_BROADCAST,
    BootpPacket,
    MessageType,
    Opt,
    PacketError,
    decode,
    encode,
    ip_bytes,
    u8,
    u16,
)
from massboot.tftp import packet as tftp  # noqa: E402

__all__ = ["PHASES", "PROFILES", "ClientResult", "Options", "Profile", "Stage", "Summary", "main",
           "make_root", "parse_mix", "parse_size", "run"]

#: Boot phases in order; a client's ``marks`` holds the time it reached each (seconds from the
#: start of the run). ``address`` is the PXE ACK, ``booted`` the OS-phase ACK.
PHASES = ("power_on", "address", "bootfile", "config", "kernel", "initrd", "booted")
DHCP_ONLY_PHASES = ("power_on", "address", "booted")

_TFTP_HEADER = struct.Struct("!HH")
_OP_DATA, _OP_ACK, _OP_ERROR, _OP_OACK = 3, 4, 5, 6
_KEEP_LIMIT = 1 << 20  # config files and scripts are read into memory, up to this size


# ---------------------------------------------------------------------------------------------
# firmware profiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """How one piece of boot software reads files by TFTP.

    Attributes:
        name: what it models.
        blksizes: ``blksize`` values it asks for (one is picked per client); () sends none.
        tsize: asks ``tsize 0`` (RFC 2349).
        windowsize: asks this ``windowsize`` (RFC 7440), or None.
        waits: seconds to wait for the next packet, one entry per attempt, reset on progress;
            when they are used up the transfer fails.
    """

    name: str
    blksizes: tuple[int, ...]
    tsize: bool
    windowsize: int | None
    waits: tuple[float, ...]

    def options(self, rng: random.Random) -> dict[str, str]:
        """The RRQ options of one client (RFC 2347 order: as the firmware sends them)."""
        opts: dict[str, str] = {}
        if self.tsize:
            opts["tsize"] = "0"
        if self.blksizes:
            opts["blksize"] = str(rng.choice(self.blksizes))
        if self.windowsize:
            opts["windowsize"] = str(self.windowsize)
        return opts


@dataclass(frozen=True)
class Profile:
    """A client firmware: its DHCP identity and timeouts, and its TFTP stages.

    Attributes:
        name: profile name used by ``--mix``.
        arch: RFC 4578 client architecture (options 93 and 60).
        vendor_class: option 60.
        ndi: option 94 (network interface type, UNDI major, minor).
        params: option 55 as the ROM sends it.
        max_size: option 57.
        dhcp_waits: seconds before each DISCOVER/REQUEST retransmission, then give up.
        firmware: the stage that reads the boot file.
        loader: the stage that reads configs, kernel and initrd.
        ipxe: sends user class ``iPXE`` and reads an iPXE script instead of PXELINUX configs.
    """

    name: str
    arch: int
    vendor_class: str
    ndi: bytes
    params: bytes
    max_size: int
    dhcp_waits: tuple[float, ...]
    firmware: Stage
    loader: Stage
    ipxe: bool = False


# Option 55 of an Intel-style BIOS PXE 2.1 ROM and of EDK2's PXE base code.
_BIOS_PARAMS = bytes([1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                      54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
_UEFI_PARAMS = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                      59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
_IPXE_PARAMS = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                      134, 135, 175, 203])
# The booted OS (an initramfs's ipconfig): subnet, router, DNS, host name, domain, broadcast, NTP.
_OS_PARAMS = bytes([1, 3, 6, 12, 15, 28, 42, 51, 54])

#: PXE 2.1 spec: DISCOVER and REQUEST are retransmitted after 4, 8, 16 and 32 seconds.
PXE_DHCP_WAITS = (4.0, 8.0, 16.0, 32.0)
#: iPXE's config/dhcp.h: 1 s doubling up to 10 s (DHCP_DISC_START/END_TIMEOUT_SEC).
IPXE_DHCP_WAITS = (1.0, 2.0, 4.0, 8.0)
#: The booted initramfs: initramfs-tools' configure_networking runs klibc ``ipconfig`` in
#: rounds of 2, 3, 4, 6, 9, 16... seconds (the first six are used here).
OS_DHCP_WAITS = (2.0, 3.0, 4.0, 6.0, 9.0, 16.0)
#: syslinux's TimeoutTable (core/fs/pxe), in 55 ms BIOS ticks, reset on every packet received.
PXELINUX_WAITS = tuple(t * 0.055 for t in (2, 2, 3, 3, 4, 5, 6, 7, 9, 10, 12, 15, 18, 21, 26, 31, 37, 44,
                                           53, 64, 77, 92, 110, 132, 159, 191, 229, 255, 255, 255, 255))

_BIOS_ROM = Stage("pxe-rom", (1432, 1468), True, None, (1.0, 2.0, 4.0, 8.0, 16.0))
_PXELINUX = Stage("pxelinux", (1408,), True, None, PXELINUX_WAITS)
# EDK2 PxeBcDxe: PXEBC_MTFTP_TIMEOUT 4 s, PXEBC_MTFTP_RETRIES 6.
_EDK2 = Stage("edk2", (1468,), True, 4, (4.0,) * 6)
# iPXE's retry timer: 1/4 s doubling, gives up past 10 s.
_IPXE = Stage("ipxe", (1432,), True, None, (0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
_RFC1350 = Stage("rfc1350", (), False, None, (1.0, 2.0, 4.0, 8.0, 16.0))

PROFILES: dict[str, Profile] = {
    "bios": Profile("bios", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _BIOS_PARAMS, 1260,
                    PXE_DHCP_WAITS, _BIOS_ROM, _PXELINUX),
    "uefi": Profile("uefi", 7, "PXEClient:Arch:00007:UNDI:003016", bytes([1, 3, 16]), _UEFI_PARAMS, 1472,
                    PXE_DHCP_WAITS, _EDK2, _EDK2),
    "ipxe": Profile("ipxe", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _IPXE_PARAMS, 1472,
                    IPXE_DHCP_WAITS, _IPXE, _IPXE, ipxe=True),
    "plain": Profile("plain", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _BIOS_PARAMS, 1260,
                     PXE_DHCP_WAITS, _RFC1350, _RFC1350),
}


# ---------------------------------------------------------------------------------------------
# options and results
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    """Everything a run depends on (the command line, as a dataclass)."""

    clients: int = 50
    mix: dict[str, float] = field(default_factory=lambda: {"bios": 60.0, "uefi": 30.0, "ipxe": 10.0})
    ramp: float = 0.0
    loss: float = 0.0
    duration: float = 900.0
    seed: int = 1
    dhcp_only: bool = False
    rounds: int = 1
    release: bool = False
    timeout_scale: float = 1.0
    bootfile_size: int = 40 << 10
    kernel_size: int = 4 << 20
    initrd_size: int = 16 << 20
    server: str | None = None
    dhcp_port: int = 67
    tftp_port: int = 69
    server_pid: int | None = None
    relay_ip: str = "127.0.0.2"
    relay_port: int = 0
    relay_socket: str = "shared"
    server_log_level: str = "info"
    remote_root: bool = False
    netns: bool = False
    keep: bool = False
    workdir: str | None = None
    json_path: str | None = None
    plot_path: str | None = None
    progress: bool = True


@dataclass
class ClientResult:
    """What one client did."""

    index: int
    mac: str
    uuid: str
    profile: str
    ip: str | None = None
    os_ip: str | None = None
    marks: dict[str, float] = field(default_factory=dict)
    ok: bool = False
    failure: str | None = None
    bytes: int = 0
    files: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    dhcp_exchanges: int = 0
    dhcp_resends: int = 0
    dhcp_lost: int = 0
    tftp_resends: int = 0
    tftp_duplicates: int = 0
    dora_times: list[float] = field(default_factory=list)


@dataclass
class Summary:
    """The figures of one run (``--json`` writes this, with every client's record).

    ``bytes`` counts every in-order DATA payload received, ``bytes_completed`` only the files
    read to the end (they differ when clients were still transferring at ``--duration``);
    ``mb_per_s`` is ``bytes`` over the span from the first power-on to the last client's last
    phase. ``dhcp_lost`` counts DORA exchanges that needed at least one retransmission.
    """

    mode: str
    target: str
    clients: int
    booted: int
    failed: int
    failures: dict[str, int]
    profiles: dict[str, int]
    loss_percent: float
    timeout_scale: float
    elapsed: float
    latency: dict[str, dict[str, float]]
    bytes: int
    bytes_completed: int
    mb_per_s: float
    dhcp_exchanges: int
    dhcp_exchanges_per_s: float
    dhcp_lost: int
    dhcp_resends: int
    tftp_transfers: int
    tftp_resends: int
    tftp_duplicates: int
    dropped_out: int
    dropped_in: int
    send_errors: int
    server_cpu_s: float | None
    server_peak_rss_mb: float | None
    simulator_cpu_s: float
    files: dict[str, int]
    throughput: list[tuple[float, float]]
    results: list[ClientResult]
    upstream: dict[str, Any] | None = None

    @property
    def all_booted(self) -> bool:
        """True when every client reached ``booted``."""
        return self.clients > 0 and self.booted == self.clients


class ClientFailure(Exception):
    """A client gave up: ``reason`` says why (``dhcp_timeout``, ``tftp_timeout``...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SetupError(Exception):
    """The run could not start (bad options, the server did not come up)."""


# ---------------------------------------------------------------------------------------------
# parsing helpers
# ---------------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``40K``, ``4M``, ``16M``, ``1G`` (powers of 1024) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit])


def parse_mix(text: str) -> dict[str, float]:
    """``bios=60,uefi=30,ipxe=10`` (weights, any scale); a bare name means weight 1."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip().lower()
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
        value = float(weight) if weight else 1.0
        if value < 0:
            raise ValueError(f"negative weight for {name}")
        mix[name] = mix.get(name, 0.0) + value
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"empty mix: {text!r}")
    return mix


def allocate_profiles(mix: dict[str, float], clients: int, rng: random.Random) -> list[str]:
    """Exactly ``clients`` profile names in proportion to ``mix`` (largest remainder), shuffled.

    Every profile with a positive weight gets at least one client when there are enough
    clients, so a small test run covers the whole mix.
    """
    total = sum(mix.values())
    names = [n for n, w in mix.items() if w > 0]
    shares = {n: mix[n] / total * clients for n in names}
    counts = {n: int(shares[n]) for n in names}
    by_remainder = sorted(names, key=lambda k: shares[k] - counts[k], reverse=True)
    for n in by_remainder[:clients - sum(counts.values())]:
        counts[n] += 1
    if clients >= len(names):
        for n in names:
            if counts[n] == 0:
                counts[max(names, key=lambda k: counts[k])] -= 1
                counts[n] = 1
    out = [n for n in names for _ in range(counts[n])]
    rng.shuffle(out)
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 (nearest rank) and max of ``values``; empty when there are none."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * n) - 1)]

    return {"p50": rank(0.50), "p95": rank(0.95), "max": ordered[-1], "count": float(n)}


def pxelinux_probes(uuid: str, mac: str, ip: str) -> list[str]:
    """PXELINUX's config search order: UUID, ``01-<mac>``, hex IP shortened to 1 digit, default."""
    hexip = "".join(f"{int(octet):02X}" for octet in ip.split("."))
    names = [uuid, "01-" + mac.replace(":", "-").lower()]
    names += [hexip[:n] for n in range(len(hexip), 0, -1)]
    names.append("default")
    return ["pxelinux.cfg/" + n for n in names]


def _strip_tftp_url(name: str) -> str:
    match = re.match(r"tftp://[^/]*/(.*)", name)
    return match.group(1) if match else name


def _arguments(words: list[str]) -> list[str]:
    """Positional arguments of a config line: iPXE's ``--name X``/``-n X`` style flags dropped."""
    args: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--name", "-n", "--timeout", "-t"):
            skip = True
        elif not word.startswith("-"):
            args.append(word)
    return args


def parse_boot_config(text: str, ipxe: bool) -> tuple[str | None, str | None]:
    """The kernel and initrd named by a PXELINUX config or an iPXE script (first label)."""
    kernel: str | None = None
    initrd: str | None = None
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].lower()
        args = _arguments(words[1:])
        if ipxe:
            if keyword in ("kernel", "chain", "imgexec") and args and kernel is None:
                kernel = _strip_tftp_url(args[0])
            elif keyword in ("initrd", "module", "imgfetch") and args and initrd is None:
                initrd = _strip_tftp_url(args[0])
            continue
        if keyword in ("kernel", "linux") and args and kernel is None:
            kernel = args[0]
        elif keyword == "initrd" and args and initrd is None:
            initrd = args[0].split(",")[0]
        elif keyword == "append" and initrd is None:
            for word in args:
                if word.startswith("initrd="):
                    initrd = word[len("initrd="):].split(",")[0]
                    break
    return kernel, initrd


# ---------------------------------------------------------------------------------------------
# the boot root and the massboot subprocess
# ---------------------------------------------------------------------------------------------

BOOTFILE_BIOS = "pxelinux.0"
BOOTFILE_UEFI = "bootx64.efi"
IPXE_SCRIPT = "boot.ipxe"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
PXELINUX_DEFAULT = (f"default linux\nprompt 0\ntimeout 0\nlabel linux\n  kernel {KERNEL}\n"
                    f"  append initrd={INITRD} console=ttyS0 quiet\n")
IPXE_SCRIPT_TEXT = f"#!ipxe\nkernel {KERNEL} console=ttyS0 quiet\ninitrd {INITRD}\nboot\n"


def _write_blob(path: str, size: int, seed: int) -> None:
    chunk = random.Random(seed).randbytes(min(size, 1 << 16)) if size else b""
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            piece = chunk[:left]
            handle.write(piece)
            left -= len(piece)


def make_root(root: str, bootfile_size: int, kernel_size: int, initrd_size: int) -> dict[str, int]:
    """Write a boot root: boot files, ``pxelinux.cfg/default``, an iPXE script, kernel, initrd.

    Returns:
        File name (relative to ``root``) → size in bytes.
    """
    os.makedirs(os.path.join(root, "pxelinux.cfg"), exist_ok=True)
    _write_blob(os.path.join(root, BOOTFILE_BIOS), bootfile_size, 1)
    _write_blob(os.path.join(root, BOOTFILE_UEFI), bootfile_size, 2)
    _write_blob(os.path.join(root, KERNEL), kernel_size, 3)
    _write_blob(os.path.join(root, INITRD), initrd_size, 4)
    with open(os.path.join(root, "pxelinux.cfg", "default"), "w", encoding="ascii") as handle:
        handle.write(PXELINUX_DEFAULT)
    with open(os.path.join(root, IPXE_SCRIPT), "w", encoding="ascii") as handle:
        handle.write(IPXE_SCRIPT_TEXT)
    sizes: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            sizes[os.path.relpath(path, root)] = os.path.getsize(path)
    return sizes


def expected_bytes(profile: str, files: dict[str, int]) -> int:
    """Bytes a client of ``profile`` reads from the generated root (for consistency checks)."""
    config = files["pxelinux.cfg/default"]
    if profile == "ipxe":
        return files[IPXE_SCRIPT] + files[KERNEL] + files[INITRD]
    bootfile = files[BOOTFILE_UEFI] if PROFILES[profile].arch in (7, 9) else files[BOOTFILE_BIOS]
    return bootfile + config + files[KERNEL] + files[INITRD]


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free right now on ``host`` (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


MASSBOOT_CONFIG = """\
[logger]
type = stderr
level = {log_level}

[bootpd]
{bootpd_address}port = {dhcp_port}
pool_start = {pool_start}
pool_count = {pool_count}
lease_time = 3600
lease_db = {lease_db}
ipxe_boot_file = {ipxe}

[bootfile]
default = {bios}
00007 = {uefi}
00009 = {uefi}

[tftpd]
{tftpd_address}port = {tftp_port}
root = {root}
"""

# ---------------------------------------------------------------------------------------------
# --remote-root: the generated root served over HTTP, every request counted
# ---------------------------------------------------------------------------------------------


class UpstreamHttp:
    """A small HTTP server on 127.0.0.1 serving ``root`` (GET and HEAD), counting what it sends.

    It runs in the simulator's own hub (gevent.pywsgi): with massboot's shared cache it should
    see one GET per distinct file, so it costs next to nothing. Counters: ``gets`` (GET
    requests, any status), ``status`` (status → count), ``bytes`` (body bytes actually
    written, partial bodies included), ``by_path`` (path → [GETs, bytes]).
    """

    def __init__(self, root: str) -> None:
        from gevent.pywsgi import WSGIServer

        self.root = os.path.realpath(root)
        self.gets = 0
        self.requests = 0
        self.bytes = 0
        self.status: Counter[int] = Counter()
        self.by_path: dict[str, list[int]] = {}
        self.ok_paths: set[str] = set()
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)
        self.server.start()
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        from urllib.parse import unquote

        self.requests += 1
        method = environ["REQUEST_METHOD"]
        path = unquote(environ.get("PATH_INFO", "/")).lstrip("/")
        if method not in ("GET", "HEAD"):
            return self._reply(start_response, 405, b"")
        if method == "GET":
            self.gets += 1
        counts = self.by_path.setdefault(path, [0, 0])
        if method == "GET":
            counts[0] += 1
        full = os.path.realpath(os.path.join(self.root, path))
        if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
            return self._reply(start_response, 404, b"not found\n")
        size = os.path.getsize(full)
        stat = os.stat(full)
        etag = f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return self._reply(start_response, 304, b"", [("ETag", etag)])
        self.status[200] += 1
        if method == "GET":
            self.ok_paths.add(path)
        start_response("200 OK", [("Content-Length", str(size)), ("ETag", etag),
                                  ("Content-Type", "application/octet-stream")])
        if method == "HEAD":
            return []
        return self._body(full, counts)

    def _reply(self, start_response: Callable[..., Any], code: int, body: bytes,
               headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        self.status[code] += 1
        reason = {304: "Not Modified", 404: "Not Found", 405: "Method Not Allowed"}[code]
        start_response(f"{code} {reason}", [("Content-Length", str(len(body)))] + (headers or []))
        return [body]

    def _body(self, path: str, counts: list[int]) -> Any:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 16)
                if not chunk:
                    return
                yield chunk
                # counted once handed to the socket: an aborted download counts what went out
                self.bytes += len(chunk)
                counts[1] += len(chunk)

    def figures(self, files: dict[str, int]) -> dict[str, Any]:
        """The counters, with ``distinct_bytes`` (one copy of each file fetched with 200) and
        ``copies`` (bytes over that)."""
        fetched = sorted(self.ok_paths)
        distinct = sum(files.get(p, 0) for p in fetched)
        return {"url": self.url, "requests": self.requests, "gets": self.gets,
                "gets_ok": self.status.get(200, 0), "not_found": self.status.get(404, 0),
                "not_modified": self.status.get(304, 0), "bytes": self.bytes,
                "distinct_files": fetched, "distinct_bytes": distinct,
                "copies": self.bytes / distinct if distinct else 0.0,
                "by_path": {p: list(v) for p, v in sorted(self.by_path.items())}}

    def close(self) -> None:
        self.server.stop(timeout=1)


# ---------------------------------------------------------------------------------------------
# --netns: real broadcast DHCP across a veth pair between two network namespaces
# ---------------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise SetupError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


class Namespaces:
    """Two namespaces, ``server`` and ``clients``, joined by a veth pair created inside them.

    The server end is ``10.213.0.1/16``; the clients' end is unnumbered, as a booting machine's
    is. The pool starts at ``10.213.128.1``, and the clients' namespace routes
    ``10.213.128.0/17`` as local (an "AnyIP" route on ``lo``): every leased address can be bound
    by a TFTP socket and is answered for in ARP without one ``ip addr add`` per client.
    ``enter()`` moves this process's thread into the clients' namespace (sockets created
    afterwards live there); ``close()`` comes back and deletes both namespaces (which removes
    the veth pair). Processes started in them are stopped by their owners, by pid.
    """

    server_ip = "10.213.0.1"
    pool_start = "10.213.128.1"
    pool_net = "10.213.128.0/17"
    client_route = "10.213.0.0/17"

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.server = f"mbsim-srv-{tag}"
        self.clients = f"mbsim-cli-{tag}"
        self.server_if = f"mbs{tag}"
        self.client_if = f"mbc{tag}"
        self._home: int | None = None
        self._created: list[str] = []

    def create(self) -> None:
        if os.geteuid() != 0:
            raise SetupError("--netns needs root")
        if shutil.which("ip") is None:
            raise SetupError("--netns needs iproute2 (ip)")
        rmem = "8388608"
        with contextlib.suppress(OSError, ValueError):
            with open("/proc/sys/net/core/rmem_max", encoding="ascii") as handle:
                rmem = str(min(int(handle.read()), 8 << 20))
        for ns in (self.server, self.clients):
            _ip("netns", "add", ns)
            self._created.append(ns)
            for setting in ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                            f"net.core.rmem_max={rmem}"):
                _ip("netns", "exec", ns, "sysctl", "-q", "-w", setting, check=False)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self.server_if, "netns", self.server, "type", "veth",
            "peer", "name", self.client_if, "netns", self.clients)
        _ip("-n", self.server, "addr", "add", f"{self.server_ip}/16", "dev", self.server_if)
        for ns, ifname in ((self.server, self.server_if), (self.clients, self.client_if)):
            _ip("netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv4.conf.{ifname}.rp_filter=0", check=False)
            _ip("-n", ns, "link", "set", ifname, "up")
        _ip("-n", self.clients, "route", "add", self.client_route, "dev", self.client_if)
        _ip("-n", self.clients, "route", "add", "local", self.pool_net, "dev", "lo")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait for the carrier on both ends
            out = subprocess.run(["ip", "-n", self.clients, "link", "show", self.client_if],
                                 capture_output=True, text=True).stdout
            if "LOWER_UP" in out:
                break
            time.sleep(0.05)

    def enter(self) -> None:
        """This thread into the clients' namespace (no greenlet may run in between)."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.clients}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)

    def close(self) -> None:
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None
        for ns in reversed(self._created):
            _ip("netns", "del", ns, check=False)
        self._created.clear()


class ServerProcess:
    """massboot started as a subprocess on loopback, with its CPU time and peak RSS."""

    def __init__(self, workdir: str, root: str, clients: int, log_level: str,
                 cache_dir: str | None = None, netns: Namespaces | None = None) -> None:
        self.workdir = workdir
        self.netns = netns
        if netns is not None:  # massboot alone in its namespace: the standard ports, any address
            self.dhcp_port, self.tftp_port = 67, 69
            address, pool_start = "", netns.pool_start
        else:
            self.dhcp_port = free_udp_port()
            self.tftp_port = free_udp_port()
            while self.tftp_port == self.dhcp_port:
                self.tftp_port = free_udp_port()
            address, pool_start = "address = 127.0.0.1\n", "127.1.0.1"
        self.config_path = os.path.join(workdir, "massboot.ini")
        self.log_path = os.path.join(workdir, "massboot.log")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(MASSBOOT_CONFIG.format(
                bootpd_address=address, tftpd_address=address, pool_start=pool_start,
                log_level=log_level, dhcp_port=self.dhcp_port, tftp_port=self.tftp_port,
                pool_count=max(clients + 16, 64), lease_db=os.path.join(workdir, "leases.sqlite3"),
                ipxe=IPXE_SCRIPT, bios=BOOTFILE_BIOS, uefi=BOOTFILE_UEFI, root=root))
            if cache_dir is not None:
                handle.write(f"cache_dir = {cache_dir}\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.cpu_at_ready = 0.0
        self.cpu_s: float | None = None
        self.peak_rss_mb: float | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start massboot and wait for both listeners' log lines.

        Raises:
            SetupError: it exited or did not log readiness in time (with its log's tail).
        """
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(massboot.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            argv = [sys.executable, "-m", "massboot", "-c", self.config_path]
            if self.netns is not None:  # `ip netns exec` execs massboot: the pid is massboot's
                argv = ["ip", "netns", "exec", self.netns.server, *argv]
            self.process = subprocess.Popen(argv,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if ("dhcp listening on" in text and "tftp listening on" in text) or self._bound():
                self.cpu_at_ready = proc_cpu_seconds(self.process.pid) or 0.0
                return
            if self.process.poll() is not None:
                raise SetupError(f"massboot exited with status {self.process.returncode}:\n"
                                 + self.log_tail())
            gevent.sleep(0.05)
        self.stop()
        raise SetupError("massboot did not report readiness in time:\n" + self.log_tail())

    def _bound(self) -> bool:
        """Both ports bound in massboot's namespace (readiness when the log level hides the INFO
        lines)."""
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/net/udp", encoding="ascii") as handle:
                ports = {line.split()[1].rsplit(":", 1)[1] for line in handle.readlines()[1:]}
        except (OSError, IndexError):
            return False
        return all(f"{port:04X}" in ports for port in (self.dhcp_port, self.tftp_port))

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def sample(self) -> None:
        """Record CPU seconds since readiness and the peak RSS (VmHWM), while it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        cpu = proc_cpu_seconds(self.process.pid)
        if cpu is not None:
            self.cpu_s = cpu - self.cpu_at_ready
        rss = proc_peak_rss_mb(self.process.pid)
        if rss is not None:
            self.peak_rss_mb = rss

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it lingers. Returns its exit status."""
        if self.process is None:
            return None
        self.sample()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` from /proc/PID/stat (fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of ``pid`` in MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# DHCP transport: relay mode, one shared socket or one socket per client
# ---------------------------------------------------------------------------------------------


class RelayMailbox:
    """A client's view of the DHCP relay: send a request, receive the replies of its xids."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> bytes | None:
        raise NotImplementedError

    def watch(self, xid: int) -> None:
        """Deliver replies with this transaction id to this mailbox."""

    def close(self) -> None:
        """Release the mailbox."""


class SharedRelay:
    """One relay socket for the whole rack; a reader greenlet routes replies by xid.

    This is how a real relay agent works, and it is the only way to reach a server that
    always answers relays on its own port (dnsmasq): bind ``relay_ip:relay_port``.
    """

    def __init__(self, relay_ip: str, relay_port: int, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if relay_port:  # share the port with a server bound to the wildcard address (dnsmasq)
            with contextlib.suppress(AttributeError, OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_rcvbuf(self.sock, 8 << 20)
        self.sock.bind((relay_ip, relay_port))
        self.routes: dict[int, Queue] = {}
        self.strays = 0
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        sock = self.sock
        routes = self.routes
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            if len(data) < 8:
                self.strays += 1
                continue
            box = routes.get(int.from_bytes(data[4:8], "big"))
            if box is None:
                self.strays += 1
            else:
                box.put(data)

    def mailbox(self) -> RelayMailbox:
        """A new client mailbox on this relay."""
        return _SharedMailbox(self)

    def close(self) -> None:
        self._reader.kill(block=False)
        self.sock.close()


class BroadcastPort(SharedRelay):
    """``--netns``: the clients' DHCP port, ``0.0.0.0:68`` on the unnumbered veth end
    (SO_BINDTODEVICE, SO_BROADCAST); requests go to ``255.255.255.255:67`` with the broadcast
    flag, so the server answers at ``255.255.255.255:68``. One socket for the rack (only one can
    own port 68 in a namespace); replies are routed by xid, as on the shared relay."""

    def __init__(self, ifname: str) -> None:  # not super().__init__: that binds a relay address
        self.server = ("255.255.255.255", 67)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        _set_rcvbuf(self.sock, 8 << 20)
        self.sock.bind(("0.0.0.0", 68))
        self.routes = {}
        self.strays = 0
        self._reader = gevent.spawn(self._read)


class _SharedMailbox(RelayMailbox):
    def __init__(self, relay: SharedRelay) -> None:
        self.relay = relay
        self.queue: Queue = Queue()
        self.xids: list[int] = []

    def send(self, data: bytes) -> None:
        self.relay.sock.sendto(data, self.relay.server)

    def recv(self, timeout: float) -> bytes | None:
        try:
            return self.queue.get(timeout=timeout)
        except Empty:
            return None

    def watch(self, xid: int) -> None:
        self.relay.routes[xid] = self.queue
        self.xids.append(xid)

    def close(self) -> None:
        for xid in self.xids:
            if self.relay.routes.get(xid) is self.queue:
                del self.relay.routes[xid]
        self.xids.clear()


class _SocketMailbox(RelayMailbox):
    """A relay socket of the client's own (``relay_ip:0``): replies come back to its port."""

    def __init__(self, relay_ip: str, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((relay_ip, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class LeanUdp:
    """A non-blocking UDP socket waited on with libev watchers, for the TFTP hot loop.

    gevent's socket builds a :class:`gevent.Timeout` for every wait; a lock-step transfer waits
    once per block, and that costs about a fifth of the simulator's time per packet. Here the
    io watcher is made once per socket and each wait only adds a C timer.
    """

    def __init__(self, bind: tuple[str, int]) -> None:
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(bind)
            self._loop = gevent.get_hub().loop
            self._io = self._loop.io(self.sock.fileno(), 1)
        except BaseException:
            self.sock.close()
            raise
        self.sendto = self.sock.sendto

    def recvfrom_into(self, buf: bytearray, timeout: float) -> tuple[int, tuple[str, int]] | None:
        """One datagram into ``buf``, or None after ``timeout`` seconds."""
        try:
            return self.sock.recvfrom_into(buf)
        except BlockingIOError:
            pass
        hub = gevent.get_hub()
        resume = gevent.getcurrent().switch
        timer = self._loop.timer(max(timeout, 0.0))
        self._io.start(resume, True)
        timer.start(resume, False)
        try:
            readable = hub.switch()
        finally:
            self._io.stop()
            timer.stop()
            timer.close()
        if not readable:
            return None
        try:
            return self.sock.recvfrom_into(buf)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self._io.close()
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# the rack
# ---------------------------------------------------------------------------------------------


class Rack:
    """The shared state of a run: options, counters, the relay, the clients' results."""

    def __init__(self, opts: Options, server_host: str, dhcp_port: int, tftp_port: int,
                 broadcast_if: str | None = None) -> None:
        self.opts = opts
        self.server_host = server_host
        self.dhcp_server = (server_host, dhcp_port)
        self.tftp_port = tftp_port
        self.loss = opts.loss / 100.0
        self.scale = opts.timeout_scale
        self.phases = DHCP_ONLY_PHASES if opts.dhcp_only else PHASES
        self.phase_counts: Counter[str] = Counter()
        self.failed = 0
        self.bytes = 0
        self.transfers = 0
        self.dropped_out = 0
        self.dropped_in = 0
        self.send_errors = 0
        self.dhcp_exchanges = 0
        self.t0 = time.monotonic()
        self.relay: SharedRelay | None = None
        self.broadcast = broadcast_if is not None
        if broadcast_if is not None:
            self.relay = BroadcastPort(broadcast_if)
        elif opts.relay_socket == "shared" or opts.relay_port:
            self.relay = SharedRelay(opts.relay_ip, opts.relay_port, self.dhcp_server)

    def now(self) -> float:
        """Seconds since the start of the run."""
        return time.monotonic() - self.t0

    def mailbox(self) -> RelayMailbox:
        if self.relay is not None:
            return self.relay.mailbox()
        return _SocketMailbox(self.opts.relay_ip, self.dhcp_server)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()


class SimClient:
    """One simulated machine: see the module docstring for what it does."""

    def __init__(self, rack: Rack, index: int, profile: Profile, rng: random.Random) -> None:
        self.rack = rack
        self.profile = profile
        self.rng = rng
        mac = bytes([0x02, 0x4D, 0x42]) + (index + 1).to_bytes(3, "big")
        self.mac = mac
        self.uuid = uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"massboot-sim-{mac.hex()}")
        self.result = ClientResult(index=index, mac=":".join(f"{b:02x}" for b in mac),
                                   uuid=str(self.uuid), profile=profile.name)
        self.firmware_options = profile.firmware.options(rng)
        self.loader_options = (self.firmware_options if profile.loader is profile.firmware
                               else profile.loader.options(rng))
        self.power_on = 0.0
        self.phase = "power_on"
        self.server_id: bytes | None = None
        self.tftp_host = rack.server_host
        self.bind_ip = "0.0.0.0"

    # -- bookkeeping ---------------------------------------------------------------------

    def mark(self, phase: str) -> None:
        self.result.marks[phase] = self.rack.now()
        self.rack.phase_counts[phase] += 1
        self.phase = phase

    def run(self) -> None:
        """Boot; on failure record the reason and the last phase reached."""
        try:
            self.power_on = time.monotonic()
            self.mark("power_on")
            if self.rack.opts.dhcp_only:
                self._dhcp_only()
            else:
                self._boot()
            self.result.ok = True
        except ClientFailure as exc:
            self._fail(exc.reason, exc.detail)
        except gevent.GreenletExit:
            self._fail("duration", "still running when --duration ran out")
            raise
        except Exception as exc:  # a bug in the simulator: say so, do not hide it as a boot failure
            self._fail("simulator_error", repr(exc))

    def _fail(self, reason: str, detail: str) -> None:
        self.result.ok = False
        self.result.failure = f"{reason} after {self.phase}" + (f" ({detail})" if detail else "")
        self.rack.failed += 1

    # -- the boot ------------------------------------------------------------------------

    def _boot(self) -> None:
        profile = self.profile
        ack = self._dora(pxe=True)
        self.result.ip = ack.yiaddr
        self.mark("address")
        if ack.siaddr != "0.0.0.0":
            self.tftp_host = ack.siaddr
        elif ack.option(Opt.TFTP_SERVER):
            self.tftp_host = (ack.option(Opt.TFTP_SERVER) or b"").decode("latin-1").strip("\0")
        if self.rack.broadcast or (ack.yiaddr.startswith("127.") and self.tftp_host.startswith("127.")):
            self.bind_ip = ack.yiaddr  # on loopback (or the AnyIP route of --netns) it owns its address
        bootfile = ack.file.decode("latin-1") or (ack.option(Opt.BOOTFILE) or b"").decode("latin-1")
        bootfile = bootfile.strip("\0")
        if not bootfile:
            raise ClientFailure("no_bootfile", "the ACK names no boot file")
        stage = profile.firmware
        got = self._fetch(bootfile, stage, self.firmware_options, keep=profile.ipxe)
        assert got is not None
        self.mark("bootfile")
        if profile.ipxe:
            config = got[1]
        else:
            stage = profile.loader
            config = None
            for name in pxelinux_probes(str(self.uuid), self.result.mac, ack.yiaddr):
                self.result.probes += 1
                got = self._fetch(name, stage, self.loader_options, keep=True, missing_ok=True)
                if got is not None:
                    config = got[1]
                    break
            if config is None:
                raise ClientFailure("no_config", "no pxelinux.cfg file found")
        self.mark("config")
        kernel, initrd = parse_boot_config(config.decode("latin-1"), profile.ipxe)
        if kernel is None:
            raise ClientFailure("no_kernel", "the config names no kernel")
        self._fetch(kernel, stage, self.loader_options)
        self.mark("kernel")
        if initrd is not None:
            self._fetch(initrd, stage, self.loader_options)
        self.mark("initrd")
        os_ack = self._dora(pxe=False)
        self.result.os_ip = os_ack.yiaddr
        if self.rack.opts.release:
            self._release(os_ack)
        self.mark("booted")

    def _dhcp_only(self) -> None:
        for round_ in range(max(1, self.rack.opts.rounds)):
            ack = self._dora(pxe=True)
            if round_ == 0:
                self.result.ip = ack.yiaddr
                self.mark("address")
        self.mark("booted")

    # -- DHCP ----------------------------------------------------------------------------

    def _options(self, pxe: bool) -> list[tuple[int, bytes]]:
        profile = self.profile
        if not pxe:
            return [(Opt.MAX_SIZE, u16(576)), (Opt.CLIENT_ID, b"\x01" + self.mac),
                    (Opt.VENDOR_CLASS, b"Linux ipconfig"), (Opt.PARAM_REQUEST, _OS_PARAMS)]
        options = [(Opt.MAX_SIZE, u16(profile.max_size)), (Opt.PARAM_REQUEST, profile.params),
                   (Opt.CLIENT_UUID, b"\0" + self.uuid.bytes), (Opt.CLIENT_NDI, profile.ndi),
                   (Opt.CLIENT_ARCH, u16(profile.arch)),
                   (Opt.VENDOR_CLASS, profile.vendor_class.encode("ascii"))]
        if profile.ipxe:
            options.append((Opt.USER_CLASS, b"iPXE"))
        return options

    def _packet(self, xid: int, msgtype: MessageType, options: list[tuple[int, bytes]],
                **fields: object) -> BootpPacket:
        relay, hops = ("0.0.0.0", 0) if self.rack.broadcast else (self.rack.opts.relay_ip, 1)
        return BootpPacket(op=BOOTREQUEST, xid=xid, hops=hops, flags=FLAG_BROADCAST, giaddr=relay,
                           chaddr=self.mac, options=((Opt.MESSAGE_TYPE, u8(msgtype)), *options),
                           **fields)  # type: ignore[arg-type]

    def _dora(self, pxe: bool) -> BootpPacket:
        """DISCOVER → OFFER, REQUEST → ACK, retransmitting on the firmware's schedule."""
        waits = (self.profile.dhcp_waits if pxe else OS_DHCP_WAITS)
        started = time.monotonic()
        box = self.rack.mailbox()
        try:
            xid = self.rng.getrandbits(32)
            box.watch(xid)
            options = self._options(pxe)
            resends_before = self.result.dhcp_resends
            offer = self._transact(box, self._packet(xid, MessageType.DISCOVER, options),
                                   (MessageType.OFFER,), waits)
            if offer.yiaddr == "0.0.0.0":
                raise ClientFailure("bad_offer", "OFFER without an address")
            server_id = offer.option(Opt.SERVER_ID) or ip_bytes(self.rack.server_host)
            request = self._packet(xid, MessageType.REQUEST, options + [
                (Opt.SERVER_ID, server_id), (Opt.REQUESTED_IP, ip_bytes(offer.yiaddr))])
            ack = self._transact(box, request, (MessageType.ACK, MessageType.NAK), waits)
            if ack.message_type == MessageType.NAK:
                raise ClientFailure("dhcp_nak", (ack.option(Opt.MESSAGE) or b"").decode("latin-1"))
            if ack.yiaddr != offer.yiaddr:
                raise ClientFailure("dhcp_mismatch", f"offered {offer.yiaddr}, acked {ack.yiaddr}")
            self.server_id = server_id
            self.rack.dhcp_exchanges += 1
            self.result.dhcp_exchanges += 1
            self.result.dora_times.append(time.monotonic() - started)
            if self.result.dhcp_resends > resends_before:
                self.result.dhcp_lost += 1
            return ack
        finally:
            box.close()

    def _transact(self, box: RelayMailbox, request: BootpPacket, wanted: tuple[MessageType, ...],
                  waits: tuple[float, ...]) -> BootpPacket:
        rack = self.rack
        for attempt, wait in enumerate(waits):
            if attempt:
                self.result.dhcp_resends += 1
            secs = min(int(time.monotonic() - self.power_on), 0xFFFF)
            self._send_dhcp(box, encode(replace(request, secs=secs)))
            deadline = time.monotonic() + wait * rack.scale
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                data = box.recv(remaining)
                if data is None:
                    break
                if rack.loss and self.rng.random() < rack.loss:
                    rack.dropped_in += 1
                    continue
                try:
                    reply = decode(data)
                except PacketError:
                    continue
                if reply.xid == request.xid and reply.chaddr[:6] == self.mac and reply.message_type in wanted:
                    return reply
        name = MessageType(request.message_type or 0).name if request.message_type else "request"
        raise ClientFailure("dhcp_timeout", f"no answer to {name} after {len(waits)} tries")

    def _send_dhcp(self, box: RelayMailbox, data: bytes) -> None:
        rack = self.rack
        if rack.loss and self.rng.random() < rack.loss:
            rack.dropped_out += 1
            return
        box.send(data)

    def _release(self, ack: BootpPacket) -> None:
        box = self.rack.mailbox()
        try:
            options = [(Opt.SERVER_ID, self.server_id or ip_bytes(self.rack.server_host)),
                       (Opt.CLIENT_ID, b"\x01" + self.mac)]
            packet = replace(self._packet(self.rng.getrandbits(32), MessageType.RELEASE, options),
                             ciaddr=ack.yiaddr, flags=0)
            self._send_dhcp(box, encode(packet))
        finally:
            box.close()

    # -- TFTP ----------------------------------------------------------------------------

    def _fetch(self, name: str, stage: Stage, options: dict[str, str], *, keep: bool = False,
               missing_ok: bool = False) -> tuple[int, bytes] | None:
        """Read one file (RFC 1350 with RFC 2347-2349 and 7440 options).

        Returns:
            ``(size, content)`` (content only when ``keep``), or None for a missing file when
            ``missing_ok`` (ERROR 1).

        Raises:
            ClientFailure: ``tftp_timeout``, ``tftp_error_N``, ``tftp_size``.
        """
        rack = self.rack
        result = self.result
        loss = rack.loss
        rng = self.rng
        scale = rack.scale
        waits = stage.waits
        clock = time.monotonic
        unpack = _TFTP_HEADER.unpack_from
        pack = _TFTP_HEADER.pack
        sock = LeanUdp((self.bind_ip, 0))
        try:
            server = (self.tftp_host, rack.tftp_port)
            rrq = tftp.Request(tftp.Opcode.RRQ, name, "octet", dict(options)).encode()
            rack.transfers += 1
            peer: tuple[str, int] | None = None
            blksize, window, tsize = tftp.BLKSIZE_DEFAULT, 1, None
            expected = 1  # next block wanted (unbounded; compared modulo 2**16)
            since_ack = 0
            gap_acked = False
            received = 0
            content = bytearray() if keep else None
            buf = bytearray(65536 + 4)
            view = memoryview(buf)
            attempt = 0

            def send(data: bytes, to: tuple[str, int]) -> None:
                if loss and rng.random() < loss:
                    rack.dropped_out += 1
                    return
                try:
                    sock.sendto(data, to)
                except OSError:  # a full socket buffer (EAGAIN) is a loss; the timer resends
                    rack.send_errors += 1

            send(rrq, server)
            deadline = clock() + waits[0] * scale
            while True:
                remaining = deadline - clock()
                if remaining <= 0:
                    attempt += 1
                    if attempt >= len(waits):
                        raise ClientFailure("tftp_timeout", f"{name} at block {expected}")
                    result.tftp_resends += 1
                    if peer is None:
                        send(rrq, server)
                    else:
                        send(pack(_OP_ACK, (expected - 1) & 0xFFFF), peer)
                    deadline = clock() + waits[attempt] * scale
                    continue
                try:
                    got = sock.recvfrom_into(buf, remaining)
                except OSError:  # e.g. ICMP port unreachable reported late: like a loss
                    continue
                if got is None:
                    continue
                size, addr = got
                if loss and rng.random() < loss:
                    rack.dropped_in += 1
                    continue
                if size < 4:
                    continue
                if peer is None:
                    peer = addr
                elif addr != peer:
                    send(tftp.Error(tftp.ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode(), addr)
                    continue
                opcode, block = unpack(buf)
                if opcode == _OP_DATA:
                    if block == expected & 0xFFFF:
                        payload = size - 4
                        received += payload
                        rack.bytes += payload
                        if content is not None and len(content) < _KEEP_LIMIT:
                            content += view[4:size]
                        expected += 1
                        since_ack += 1
                        gap_acked = False
                        attempt = 0
                        deadline = clock() + waits[0] * scale
                        if payload < blksize:
                            send(pack(_OP_ACK, block), peer)
                            break
                        if since_ack >= window:
                            send(pack(_OP_ACK, block), peer)
                            since_ack = 0
                        continue
                    result.tftp_duplicates += 1
                    ahead = (block - expected) & 0xFFFF < 0x8000
                    if block == (expected - 1) & 0xFFFF or (ahead and window > 1 and not gap_acked):
                        # Our ACK was lost (the server resent its last block), or a window
                        # arrived with a gap (RFC 7440: acknowledge the last block in order).
                        send(pack(_OP_ACK, (expected - 1) & 0xFFFF), peer)
                        since_ack = 0
                        gap_acked = ahead
                elif opcode == _OP_OACK:
                    if expected != 1:
                        continue
                    try:
                        oack = tftp.decode(bytes(view[:size]))
                    except tftp.PacketError as exc:
                        raise ClientFailure("tftp_bad_oack", str(exc)) from None
                    assert isinstance(oack, tftp.OptionAck)
                    blksize = int(oack.options.get("blksize", blksize))
                    window = int(oack.options.get("windowsize", window))
                    if "tsize" in oack.options:
                        tsize = int(oack.options["tsize"])
                    send(pack(_OP_ACK, 0), peer)
                    attempt = 0
                    deadline = clock() + waits[0] * scale
                elif opcode == _OP_ERROR:
                    try:
                        error = tftp.decode(bytes(view[:size]))
                    except tftp.PacketError:
                        error = tftp.Error(block, "")
                    assert isinstance(error, tftp.Error)
                    if error.code == tftp.ErrorCode.FILE_NOT_FOUND and missing_ok:
                        return None
                    raise ClientFailure(f"tftp_error_{error.code}", f"{name}: {error.message}")
            if tsize is not None and tsize != received:
                raise ClientFailure("tftp_size", f"{name}: tsize {tsize}, received {received}")
            result.bytes += received
            result.files[name] = received
            return received, bytes(content) if content is not None else b""
        finally:
            sock.close()


# ---------------------------------------------------------------------------------------------
# running, progress, summary
# ---------------------------------------------------------------------------------------------


def _progress_line(rack: Rack, total: int, last_bytes: int, interval: float) -> str:
    counts = rack.phase_counts
    rate = (rack.bytes - last_bytes) / interval / 1e6
    parts = [f"[{rack.now():6.1f}s] on {counts['power_on']}/{total}"]
    labels = {"address": "addr", "bootfile": "boot", "config": "cfg", "kernel": "kernel",
              "initrd": "initrd", "booted": "booted"}
    for phase in rack.phases[1:]:
        parts.append(f"{labels[phase]} {counts[phase]}")
    parts.append(f"failed {rack.failed}")
    if rack.opts.dhcp_only:
        parts.append(f"DORA {rack.dhcp_exchanges}")
    else:
        parts.append(f"{rate:7.1f} MB/s")
    return " | ".join(parts)


def _watch(rack: Rack, total: int, samples: list[tuple[float, float]], show: bool) -> None:
    """Sample throughput twice a second and draw the progress line on stderr."""
    interval = 0.5
    tty = sys.stderr.isatty()
    last_bytes = 0
    last_line = ""
    while True:
        gevent.sleep(interval)
        samples.append((round(rack.now(), 3), (rack.bytes - last_bytes) / interval / 1e6))
        line = _progress_line(rack, total, last_bytes, interval)
        last_bytes = rack.bytes
        if not show:
            continue
        if tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        elif line.split("|", 1)[1] != last_line:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        last_line = line.split("|", 1)[1]


def run(opts: Options) -> Summary:
    """Run one rack: start the server unless ``opts.server``, boot every client, summarise.

    Raises:
        SetupError: bad options or the server could not be started.
    """
    if opts.clients < 1:
        raise SetupError("--clients must be at least 1")
    if not 0 <= opts.loss < 100:
        raise SetupError("--loss must be in [0, 100)")
    if opts.timeout_scale <= 0:
        raise SetupError("--timeout-scale must be positive")
    if opts.remote_root and opts.server is not None:
        raise SetupError("--remote-root needs the massboot the simulator starts (no --server)")
    if opts.netns and (opts.server is not None or opts.remote_root):
        raise SetupError("--netns runs the massboot it starts from a local root (no --server, --remote-root)")
    _raise_fd_limit(opts.clients * 3 + 256)
    workdir = opts.workdir or tempfile.mkdtemp(prefix="massboot-sim-")
    os.makedirs(workdir, exist_ok=True)
    server: ServerProcess | None = None
    upstream: UpstreamHttp | None = None
    netns: Namespaces | None = None
    files: dict[str, int] = {}
    try:
        if opts.netns:
            netns = Namespaces()
            netns.create()
        if opts.server is None:
            root = os.path.join(workdir, "root")
            files = make_root(root, opts.bootfile_size, opts.kernel_size, opts.initrd_size)
            cache_dir = None
            if opts.remote_root:
                upstream = UpstreamHttp(root)
                root, cache_dir = upstream.url, os.path.join(workdir, "cache")
            server = ServerProcess(workdir, root, opts.clients * max(1, opts.rounds), opts.server_log_level,
                                   cache_dir, netns)
            server.start()
            host, dhcp_port, tftp_port = "127.0.0.1", server.dhcp_port, server.tftp_port
            target = f"massboot (started, {host} dhcp:{dhcp_port} tftp:{tftp_port})"
            if netns is not None:
                host = netns.server_ip
                target = (f"massboot (started in netns {netns.server}, {host}; broadcast DHCP from "
                          f"netns {netns.clients}, {netns.client_if})")
                netns.enter()
        else:
            host, dhcp_port, tftp_port = opts.server, opts.dhcp_port, opts.tftp_port
            target = f"{host} dhcp:{dhcp_port} tftp:{tftp_port}"
        summary = _run_rack(opts, host, dhcp_port, tftp_port, target, server, files,
                            netns.client_if if netns is not None else None)
        if upstream is not None:
            summary.target += f", root {upstream.url} (cache {cache_dir})"
            summary.upstream = upstream.figures(files)
        return summary
    finally:
        if server is not None:
            server.stop()
        if upstream is not None:
            upstream.close()
        if netns is not None:
            netns.close()
        if opts.workdir is None and not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif opts.keep and opts.progress:
            print(f"kept {workdir}", file=sys.stderr)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _run_rack(opts: Options, host: str, dhcp_port: int, tftp_port: int, target: str,
              server: ServerProcess | None, files: dict[str, int],
              broadcast_if: str | None = None) -> Summary:
    master = random.Random(opts.seed)
    profiles = allocate_profiles(opts.mix, opts.clients, master)
    rack = Rack(opts, host, dhcp_port, tftp_port, broadcast_if)
    clients = [SimClient(rack, i, PROFILES[name], random.Random(master.getrandbits(64)))
               for i, name in enumerate(profiles)]
    starts = [master.uniform(0, opts.ramp) if opts.ramp > 0 else 0.0 for _ in clients]
    samples: list[tuple[float, float]] = []
    cpu_before = _self_cpu()
    rack.t0 = time.monotonic()
    watcher = gevent.spawn(_watch, rack, len(clients), samples, opts.progress)
    greenlets = [gevent.spawn_later(start, client.run) for client, start in zip(clients, starts, strict=True)]
    try:
        gevent.joinall(greenlets, timeout=opts.duration)
        if server is not None:
            server.sample()
        late = [g for g in greenlets if not g.dead]
        gevent.killall(late, block=True, timeout=5)
        for client in clients:
            if not client.result.ok and client.result.failure is None:
                client._fail("duration", "never powered on")  # killed before its power-on time
    finally:
        watcher.kill()
        if opts.progress and sys.stderr.isatty():
            sys.stderr.write("\n")
        rack.close()
    elapsed = rack.now()
    results = [c.result for c in clients]
    summary = _summarise(opts, target, rack, results, elapsed, server, files, samples,
                         _self_cpu() - cpu_before)
    return summary


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summarise(opts: Options, target: str, rack: Rack, results: list[ClientResult], elapsed: float,
               server: ServerProcess | None, files: dict[str, int], samples: list[tuple[float, float]],
               sim_cpu: float) -> Summary:
    booted = [r for r in results if r.ok]
    failures: Counter[str] = Counter()
    for r in results:
        if not r.ok:
            failures[(r.failure or "unknown").split(" (", 1)[0]] += 1
    latency: dict[str, dict[str, float]] = {}
    for key, phase in (("address", "address"), ("bootfile", "bootfile"), ("booted", "booted")):
        values = [r.marks[phase] - r.marks["power_on"] for r in results if phase in r.marks]
        if values:
            latency[key] = percentiles(values)
    dora = [t for r in results for t in r.dora_times]
    if dora:
        latency["dora"] = percentiles(dora)
    ends = [max(r.marks.values()) for r in results if r.marks]
    starts = [r.marks["power_on"] for r in results if "power_on" in r.marks]
    span = (max(ends) - min(starts)) if ends and starts else elapsed
    dhcp_exchanges = sum(r.dhcp_exchanges for r in results)
    return Summary(
        mode="dhcp-only" if opts.dhcp_only else "boot",
        target=target,
        clients=len(results),
        booted=len(booted),
        failed=len(results) - len(booted),
        failures=dict(failures.most_common()),
        profiles=dict(Counter(r.profile for r in results)),
        loss_percent=opts.loss,
        timeout_scale=opts.timeout_scale,
        elapsed=round(elapsed, 3),
        latency=latency,
        bytes=rack.bytes,
        bytes_completed=sum(r.bytes for r in results),
        mb_per_s=(rack.bytes / span / 1e6) if span > 0 else 0.0,
        dhcp_exchanges=dhcp_exchanges,
        dhcp_exchanges_per_s=dhcp_exchanges / span if span > 0 else 0.0,
        dhcp_lost=sum(r.dhcp_lost for r in results),
        dhcp_resends=sum(r.dhcp_resends for r in results),
        tftp_transfers=rack.transfers,
        tftp_resends=sum(r.tftp_resends for r in results),
        tftp_duplicates=sum(r.tftp_duplicates for r in results),
        dropped_out=rack.dropped_out,
        dropped_in=rack.dropped_in,
        send_errors=rack.send_errors,
        server_cpu_s=server.cpu_s if server is not None else None,
        server_peak_rss_mb=server.peak_rss_mb if server is not None else None,
        simulator_cpu_s=round(sim_cpu, 3),
        files=files,
        throughput=samples,
        results=results,
    )


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_summary(s: Summary) -> str:
    """The summary table printed at the end of a run."""
    lines = []
    mix = ", ".join(f"{name} {count}" for name, count in sorted(s.profiles.items()))
    lines.append(f"massboot simulator: {s.clients} clients ({mix}), {s.mode}, loss {s.loss_percent:g} %, "
                 f"timeout scale {s.timeout_scale:g}")
    lines.append(f"target: {s.target}")
    verb = "done" if s.mode == "dhcp-only" else "booted"
    lines.append(f"clients {verb}: {s.booted}/{s.clients}, failed: {s.failed}")
    for reason, count in s.failures.items():
        lines.append(f"    {count:5d}  {reason}")
    lines.append("")
    lines.append(f"{'':26}{'p50':>10}{'p95':>10}{'max':>10}")
    labels = (("address", "time to address"), ("bootfile", "time to boot file"),
              ("booted", "time to fully booted" if s.mode == "boot" else "time to last DORA"),
              ("dora", "one DORA exchange"))
    for key, label in labels:
        stats = s.latency.get(key)
        if stats:
            lines.append(f"{label:26}{_fmt_s(stats['p50']):>10}{_fmt_s(stats['p95']):>10}"
                         f"{_fmt_s(stats['max']):>10}")
    lines.append("")
    if s.mode == "boot":
        partial = s.bytes - s.bytes_completed
        lines.append(f"transferred: {s.bytes / 1e6:,.1f} MB in {s.tftp_transfers} TFTP transfers, "
                     f"{s.mb_per_s:,.1f} MB/s aggregate"
                     + (f" ({partial / 1e6:,.1f} MB of unfinished files)" if partial else ""))
    lost_pct = 100.0 * s.dhcp_lost / s.dhcp_exchanges if s.dhcp_exchanges else 0.0
    lines.append(f"DHCP: {s.dhcp_exchanges} DORA exchanges, {s.dhcp_exchanges_per_s:,.0f}/s, "
                 f"{s.dhcp_lost} needed a resend ({lost_pct:.2f} %), {s.dhcp_resends} resends")
    if s.mode == "boot":
        lines.append(f"TFTP: {s.tftp_resends} client resends (RRQ/ACK), {s.tftp_duplicates} duplicate "
                     f"or out-of-order DATA (server resends seen)")
    lines.append(f"injected loss: {s.dropped_out} datagrams dropped outgoing, {s.dropped_in} incoming")
    if s.send_errors:
        lines.append(f"send errors (full socket buffers, counted as losses): {s.send_errors}")
    if s.upstream is not None:
        u = s.upstream
        lines.append(f"upstream: {u['gets_ok']} GETs, {u['bytes'] / 1e6:,.1f} MB "
                     f"(≈ {u['copies']:.2f} copies of each file; {len(u['distinct_files'])} distinct files, "
                     f"{u['distinct_bytes'] / 1e6:,.1f} MB)"
                     + (f"; {u['not_found']} GETs answered 404 (config probes)" if u["not_found"] else ""))
    if s.server_cpu_s is not None:
        per = f", {s.server_cpu_s / (s.bytes / 1e8):.2f} CPU-s per 100 MB" if s.bytes else ""
        lines.append(f"server: {s.server_cpu_s:.2f} CPU-seconds during the run{per}, "
                     f"peak RSS {s.server_peak_rss_mb or 0:.1f} MiB")
    lines.append(f"simulator: {s.simulator_cpu_s:.2f} CPU-seconds, wall {s.elapsed:.2f} s")
    return "\n".join(lines)


def write_json(summary: Summary, path: str) -> None:
    """``--json``: the summary and every client's record."""
    data = asdict(summary)
    data["all_booted"] = summary.all_booted
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


_PHASE_COLOURS = {"power_on": "#bbbbbb", "address": "#4c72b0", "bootfile": "#dd8452", "config": "#937860",
                  "kernel": "#55a868", "initrd": "#c44e52", "booted": "#8172b3"}


def write_plot(summary: Summary, path: str) -> bool:
    """``--plot``: every client's boot over time (one row each, coloured by phase) and the
    aggregate throughput. Returns False (and says why) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot written",
              file=sys.stderr)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gantt, rate) = plt.subplots(2, 1, figsize=(11, 8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    order = sorted(summary.results, key=lambda r: r.marks.get("power_on", 0.0))
    for row, result in enumerate(order):
        marks = sorted(result.marks.items(), key=lambda kv: kv[1])
        for (_phase, start), (next_phase, end) in zip(marks, marks[1:], strict=False):
            gantt.broken_barh([(start, max(end - start, 1e-3))], (row, 0.9),
                              color=_PHASE_COLOURS.get(next_phase, "#333333"))
        if not result.ok and marks:
            gantt.plot([marks[-1][1]], [row + 0.45], "kx", markersize=3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _PHASE_COLOURS.values()]
    gantt.legend(handles, [f"until {p}" for p in _PHASE_COLOURS], loc="lower right", fontsize=7)
    gantt.set_ylabel("client")
    gantt.set_title(f"{summary.clients} clients, {summary.booted} booted: {summary.target}", fontsize=9)
    if summary.throughput:
        xs, ys = zip(*summary.throughput, strict=True)
        rate.plot(xs, ys)
    rate.set_ylabel("MB/s")
    rate.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simulate.py",
        description="Boot a rack of simulated PXE clients against massboot (started here, on loopback, "
                    "no root needed) or any running DHCP/TFTP server, and report the figures.")
    d = Options()
    parser.add_argument("--clients", type=int, default=d.clients, help="number of machines (%(default)s)")
    parser.add_argument("--mix", default="bios=60,uefi=30,ipxe=10",
                        help="firmware profiles and weights: bios, uefi, ipxe, plain (%(default)s)")
    parser.add_argument("--ramp", type=float, default=d.ramp,
                        help="power-on spread in seconds, uniform (%(default)s: all at once)")
    parser.add_argument("--loss", type=float, default=d.loss,
                        help="percent of datagrams dropped by the simulator, each direction (%(default)s)")
    parser.add_argument("--duration", type=float, default=d.duration,
                        help="give up on clients still booting after this many seconds (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    parser.add_argument("--dhcp-only", action="store_true", help="only the PXE DORA exchange")
    parser.add_argument("--rounds", type=int, default=d.rounds,
                        help="with --dhcp-only: DORA exchanges per client (%(default)s)")
    parser.add_argument("--release", action="store_true", help="send DHCPRELEASE once booted")
    parser.add_argument("--timeout-scale", type=float, default=d.timeout_scale,
                        help="multiply every firmware timeout (%(default)s: the real ones)")
    parser.add_argument("--bootfile-size", type=parse_size, default="40K", help="%(default)s")
    parser.add_argument("--kernel-size", type=parse_size, default="4M", help="%(default)s")
    parser.add_argument("--initrd-size", type=parse_size, default="16M", help="%(default)s")
    parser.add_argument("--server", metavar="HOST",
                        help="use a running server at HOST instead of starting massboot")
    parser.add_argument("--dhcp-port", type=int, default=d.dhcp_port, help="with --server (%(default)s)")
    parser.add_argument("--tftp-port", type=int, default=d.tftp_port, help="with --server (%(default)s)")
    parser.add_argument("--server-pid", type=int,
                        help="with --server: report this process's CPU time and peak RSS")
    parser.add_argument("--relay-ip", default=d.relay_ip, help="relay agent address, giaddr (%(default)s)")
    parser.add_argument("--relay-port", type=int, default=d.relay_port,
                        help="port of the shared relay socket; servers that answer relays on their own "
                             "port (dnsmasq) need it equal to --dhcp-port (%(default)s: any)")
    parser.add_argument("--relay-socket", choices=("shared", "per-client"), default=d.relay_socket,
                        help="one relay socket for the rack, or one per DHCP exchange (%(default)s)")
    parser.add_argument("--server-log-level", default=d.server_log_level,
                        help="[logger] level of the massboot started here (%(default)s)")
    parser.add_argument("--remote-root", action="store_true",
                        help="serve the root over HTTP from here; massboot reads it through its cache")
    parser.add_argument("--netns", action="store_true",
                        help="(root) massboot and the rack in two namespaces: broadcast DHCP over a veth")
    parser.add_argument("--make-root", metavar="DIR",
                        help="write the boot root (files of the given sizes) into DIR and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (root, log)")
    parser.add_argument("--json", metavar="FILE", help="write the summary and per-client records")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the boot over time (needs matplotlib)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from parsed arguments (ValueError on a bad ``--mix``)."""
    return Options(clients=args.clients, mix=parse_mix(args.mix), ramp=args.ramp, loss=args.loss,
                   duration=args.duration, seed=args.seed, dhcp_only=args.dhcp_only, rounds=args.rounds,
                   release=args.release, timeout_scale=args.timeout_scale,
                   bootfile_size=args.bootfile_size, kernel_size=args.kernel_size,
                   initrd_size=args.initrd_size, server=args.server, dhcp_port=args.dhcp_port,
                   tftp_port=args.tftp_port, server_pid=args.server_pid, relay_ip=args.relay_ip,
                   relay_port=args.relay_port, relay_socket=args.relay_socket,
                   server_log_level=args.server_log_level, remote_root=args.remote_root, netns=args.netns,
                   keep=args.keep, json_path=args.json, plot_path=args.plot, progress=not args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0: every client booted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_root:
        sizes = make_root(args.make_root, args.bootfile_size, args.kernel_size, args.initrd_size)
        for name, size in sorted(sizes.items()):
            print(f"{size:>12}  {os.path.join(args.make_root, name)}")
        return 0
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    external: _ExternalServer | None = None
    if opts.server is not None and opts.server_pid is not None:
        external = _ExternalServer(opts.server_pid)
    previous = _interrupt_on_signals()
    try:
        summary = run_with(opts, external.sample if external else None)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if external is not None:
        summary.server_cpu_s, summary.server_peak_rss_mb = external.cpu_s, external.peak_rss_mb
    print(format_summary(summary))
    if opts.json_path:
        write_json(summary, opts.json_path)
    if opts.plot_path:
        write_plot(summary, opts.plot_path)
    return 0 if summary.all_booted else 1


def _interrupt_on_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM interrupt the main greenlet (not whichever client runs), so a run
    unwinds cleanly: the massboot it started is stopped and the temporary directory removed.

    Returns:
        The previous handlers, to restore.
    """
    main_greenlet = gevent.getcurrent()
    loop = gevent.get_hub().loop

    def interrupt(signum: int, frame: object) -> None:
        loop.run_callback(main_greenlet.throw, KeyboardInterrupt)

    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


class _ExternalServer:
    """``--server-pid``: CPU seconds over the run and peak RSS of a server we did not start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_start = proc_cpu_seconds(pid)
        if self.cpu_start is None:
            raise SystemExit(f"error: --server-pid {pid}: no such process")
        self.cpu_s: float | None = None
        self.peak_rss_mb: float | None = None

    def sample(self) -> None:
        cpu = proc_cpu_seconds(self.pid)
        if cpu is not None and self.cpu_start is not None:
            self.cpu_s = cpu - self.cpu_start
        self.peak_rss_mb = proc_peak_rss_mb(self.pid)


def run_with(opts: Options, after: Callable[[], None] | None) -> Summary:
    """:func:`run`, then ``after()`` (sampling an external server while it still runs)."""
    summary = run(opts)
    if after is not None:
        after()
    return summary


if __name__ == "__main__":
    sys.exit(main())
