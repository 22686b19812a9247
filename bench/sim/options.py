"""The options of a run (the command line as a dataclass), the boot phases, setup errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DHCP_ONLY_PHASES", "PHASES", "Options", "SetupError", "parse_size"]

#: Boot phases in order; a client's ``marks`` holds the time it reached each (seconds from the
#: start of the run). ``address`` is the PXE ACK, ``booted`` the OS-phase ACK.
PHASES = ("power_on", "address", "bootfile", "config", "kernel", "initrd", "booted")
DHCP_ONLY_PHASES = ("power_on", "address", "booted")


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
    tftp_fast_path: str | None = None  # [tftpd] fast_path of the massboot started here (None: unset)
    #: several servers at once (README "Several servers"): ``(host, dhcp_port, tftp_port)`` each;
    #: the relay forwards every request to all of them
    servers: list[tuple[str, int, int]] = field(default_factory=list)
    #: whole boots the firmware starts again, from DISCOVER, after a DHCP or TFTP timeout
    boot_retries: int = 0
    remote_root: bool = False
    http_server: str = "massboot"  # what serves HTTP when the mix needs it: massboot's -H, or nginx
    netns: bool = False
    proxy: bool = False                # massboot in proxy mode beside a site DHCP server
    site_server: str | None = None     # --site-server HOST:PORT (default: the simulator's own)
    keep: bool = False
    workdir: str | None = None
    json_path: str | None = None
    plot_path: str | None = None
    progress: bool = True


class SetupError(Exception):
    """The run could not start (bad options, the server did not come up)."""


def parse_size(text: str) -> int:
    """``40K``, ``4M``, ``16M``, ``1G`` (powers of 1024) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit])

