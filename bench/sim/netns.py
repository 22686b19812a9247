"""``--netns``: real broadcast DHCP across a veth pair between two network namespaces (root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

from .options import SetupError

__all__ = ["Namespaces"]

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

