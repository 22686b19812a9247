"""Firmware profiles: how each kind of client asks for an address (its DHCP options and
retransmissions) and reads files by TFTP (its options and waits), and the ``--mix`` of them.
``http`` is a PXE ROM that loads iPXE by TFTP, which asks for an address again as iPXE and
then reads its script, kernel and initrd over HTTP (:attr:`Profile.chain`).

The sources of every figure are cited where it is defined (PXE 2.1 specification, iPXE's
``config/dhcp.h``, syslinux's ``core/fs/pxe``, EDK2's ``PxeBcDxe``); bench/README.md has the
same table for users.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["HTTP_IDLE_TIMEOUT", "IPXE_DHCP_WAITS", "OS_DHCP_WAITS", "OS_PARAMS", "PROFILES", "PXELINUX_WAITS",
           "PXE_DHCP_WAITS", "Profile", "Stage", "allocate_profiles", "needs_http", "parse_mix"]


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
        chain: the boot file is iPXE (``undionly.kpxe``): once it is loaded, the client asks
            for an address again with the DHCP identity of this profile (user class ``iPXE``),
            and goes on as that profile with the boot file of that answer (an ``http://``
            script for ``http``), reading what the script names by its URLs.
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
    chain: str | None = None


# Option 55 of an Intel-style BIOS PXE 2.1 ROM and of EDK2's PXE base code.
_BIOS_PARAMS = bytes([1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                      54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
_UEFI_PARAMS = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                      59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
_IPXE_PARAMS = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                      134, 135, 175, 203])
# The booted OS (an initramfs's ipconfig): subnet, router, DNS, host name, domain, broadcast, NTP.
OS_PARAMS = bytes([1, 3, 6, 12, 15, 28, 42, 51, 54])

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
#: HTTP (iPXE's HTTP/1.1 over its own TCP): seconds without a byte before a download fails;
#: TCP retransmits lost segments itself, so ``--loss`` (datagrams) does not apply to HTTP.
HTTP_IDLE_TIMEOUT = 120.0

PROFILES: dict[str, Profile] = {
    "bios": Profile("bios", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _BIOS_PARAMS, 1260,
                    PXE_DHCP_WAITS, _BIOS_ROM, _PXELINUX),
    "uefi": Profile("uefi", 7, "PXEClient:Arch:00007:UNDI:003016", bytes([1, 3, 16]), _UEFI_PARAMS, 1472,
                    PXE_DHCP_WAITS, _EDK2, _EDK2),
    "ipxe": Profile("ipxe", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _IPXE_PARAMS, 1472,
                    IPXE_DHCP_WAITS, _IPXE, _IPXE, ipxe=True),
    # The two-stage recipe (README, "HTTP boot"): the PXE ROM reads iPXE (undionly.kpxe, here the
    # arch-0 boot file) by TFTP; iPXE asks again, gets ipxe_boot_file, an http:// script.
    "http": Profile("http", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _BIOS_PARAMS, 1260,
                    PXE_DHCP_WAITS, _BIOS_ROM, _IPXE, chain="ipxe"),
    "plain": Profile("plain", 0, "PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 1]), _BIOS_PARAMS, 1260,
                     PXE_DHCP_WAITS, _RFC1350, _RFC1350),
}


def parse_mix(text: str) -> dict[str, float]:
    """``bios=60,uefi=30,ipxe=10`` or ``bios:1,http:1`` (weights, any scale); a bare name means
    weight 1."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.replace(":", "=", 1).partition("=")
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


def needs_http(mix: dict[str, float]) -> bool:
    """The mix has a profile that loads its files over HTTP: the server must serve HTTP and
    hand iPXE an ``http://`` script (``ipxe`` clients in that run get it too)."""
    return any(PROFILES[name].chain is not None for name, weight in mix.items() if weight > 0)


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

