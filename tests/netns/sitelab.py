"""A segment with a site DHCP server on it, for proxyDHCP tests (README, "proxyDHCP").

Three network namespaces the lab creates and removes:

* ``lab``: a bridge (``10.79.0.1/24``, massboot's address) and, when asked, taps for QEMU
  (:data:`TAPS`); massboot and QEMU run here.
* ``site``: the site DHCP server, Debian's ``dnsmasq`` started privately (``--conf-file`` of
  its own, no DNS (``--port=0``), a lease file and a log in the test's directory, bound to its
  veth), handing out ``10.79.0.100``-``150`` with no PXE option at all: no ``dhcp-boot``, no
  ``pxe-service``, no TFTP.
* ``client``: an unnumbered veth with a fixed MAC, for dhclient, udhcpc and hand-written clients.

The two veth pairs are created directly inside the namespaces, their lab ends enslaved to the
bridge; nothing appears on the host's interfaces. :meth:`SiteLab.close` kills every process it
started by pid, then any process left in its namespaces by pid, then deletes the namespaces.
It offers ``popen``/``run``/``socket``/``client``/``client_if`` as
:class:`tests.netns.netns.NetnsPair` does (both are :class:`~tests.netns.netns.NamespaceProcesses`),
so the dhclient and udhcpc helpers of ``test_dhcp_clients`` run in it unchanged.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.netns.netns import (
    REPO,
    NamespaceLayout,
    NamespaceProcesses,
    add_namespace,
    delete_namespace,
    kill,
    run_ip,
    wait_carrier,
    wait_until,
)

BRIDGE = "mbpbr0"
TAPS = ("mbptap0", "mbptap1")        # QEMU's NICs, on the bridge
SERVER_IP = "10.79.0.1"
SITE_IP = "10.79.0.2"
SITE_RANGE = ("10.79.0.100", "10.79.0.150")
#: The head of every proxy-mode config here: debug log to stderr, ``mode = proxy``, ``access = mac``
#: (a config goes on with more [bootpd] options or the [mac] section).
PROXY_HEAD = """\
[logger]
type = stderr
level = debug
[bootpd]
mode = proxy
access = mac
"""
#: massboot in proxy mode on the lab, booting only the MAC ``{mac}`` (``-`` form); ``{root}`` the
#: TFTP root, ``{filter}`` one [filters] line (README, "proxyDHCP").
PROXY_CONFIG = PROXY_HEAD + """\
[mac]
{mac} = yes
[bootfile]
default = pxelinux.0
[tftpd]
root = {root}
[filters]
{filter}
"""
#: massboot's log line for each reply it sends (``proxy`` set for a proxy OFFER/ACK).
REPLY = re.compile(r"PXE\[server\] INFO: (?P<proxy>proxy )?(?P<kind>offer|ack|nak|bootp) mac=(?P<mac>\S+) "
                   r"ip=(?P<ip>\S+) phase=(?P<phase>\S+) ")
_counter = itertools.count(1)


class SiteLab(NamespaceProcesses, NamespaceLayout):
    """The three namespaces; see the module docstring."""

    run_timeout = 30

    def __init__(self, work: Path, client_mac: str = "02:00:00:79:00:01", taps: int = 0) -> None:
        n = f"{os.getpid()}-{next(_counter)}"
        self.work = work
        self.lab, self.site, self.client = f"mb-plab-{n}", f"mb-psite-{n}", f"mb-pcli-{n}"
        self.client_if = "pc0"
        self.client_mac = client_mac
        self.taps = TAPS[:taps]
        self.procs: list[subprocess.Popen] = []
        self.massboot_log = work / "massboot.log"
        self.dnsmasq_log = work / "dnsmasq.log"
        self.dnsmasq_leases = work / "dnsmasq.leases"

    # -- lifecycle (NamespaceLayout) ----------------------------------------------------------
    def _create(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        for ns in (self.lab, self.site, self.client):
            add_namespace(ns)
        run_ip("-n", self.lab, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
        run_ip("-n", self.lab, "addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
        run_ip("link", "add", "ps0", "netns", self.site, "type", "veth",
               "peer", "name", "lps0", "netns", self.lab)
        run_ip("link", "add", self.client_if, "netns", self.client, "address", self.client_mac,
               "type", "veth", "peer", "name", "lpc0", "netns", self.lab)
        ports = ["lps0", "lpc0"]
        for tap in self.taps:
            run_ip("-n", self.lab, "tuntap", "add", "dev", tap, "mode", "tap")
            ports.append(tap)
        for port in ports:
            run_ip("-n", self.lab, "link", "set", port, "master", BRIDGE)
            run_ip("-n", self.lab, "link", "set", port, "up")
        run_ip("-n", self.lab, "link", "set", BRIDGE, "up")
        run_ip("-n", self.site, "addr", "add", f"{SITE_IP}/24", "dev", "ps0")
        run_ip("-n", self.site, "link", "set", "ps0", "up")
        run_ip("-n", self.client, "link", "set", self.client_if, "up")
        for ns, ifname in ((self.site, "ps0"), (self.client, self.client_if), (self.lab, BRIDGE)):
            wait_carrier(ns, ifname)

    def close(self) -> None:
        for proc in reversed(self.procs):
            kill(proc, signal.SIGTERM, timeout=5)
        for ns in (self.client, self.site, self.lab):
            delete_namespace(ns)

    # -- the site DHCP server --------------------------------------------------------------
    def start_dnsmasq(self, lease_time: str = "10m", timeout: float = 20) -> subprocess.Popen:
        """dnsmasq as the site DHCP server: addresses only, no PXE option, no DNS, no TFTP."""
        first, last = SITE_RANGE
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                "--interface=ps0", "--bind-interfaces", "--log-dhcp",
                f"--log-facility={self.dnsmasq_log}", f"--dhcp-leasefile={self.dnsmasq_leases}",
                f"--pid-file={self.work / 'dnsmasq.pid'}",
                f"--dhcp-range={first},{last},255.255.255.0,{lease_time}"]
        with open(self.work / "dnsmasq.out", "ab") as out:
            proc = self.popen(self.site, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {proc.returncode}:\n"
                                   f"{(self.work / 'dnsmasq.out').read_text(errors='replace')}\n"
                                   f"{self.dnsmasq_text()}")
            return "DHCP, IP range" in self.dnsmasq_text()

        wait_until(ready, timeout, "dnsmasq to serve DHCP")
        return proc

    def dnsmasq_text(self) -> str:
        return self.dnsmasq_log.read_text(errors="replace") if self.dnsmasq_log.exists() else ""

    # -- massboot ----------------------------------------------------------------------------
    def start_massboot(self, config: Path, timeout: float = 30, tftp: bool = True,
                       args: Sequence[str] = ()) -> subprocess.Popen:
        """``python -m massboot -c CONFIG [ARGS]`` in the lab namespace; returns once DHCP (and
        TFTP, and with ``-H`` HTTP) listen."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.massboot_log, "ab") as out:
            argv = [sys.executable, "-m", "massboot", "-c", str(config), *args]
            proc = self.popen(self.lab, argv, cwd=str(config.parent), env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            text = self.massboot_text()
            if proc.poll() is not None:
                raise RuntimeError(f"massboot exited with {proc.returncode}:\n{text}")
            return "dhcp listening on" in text and (not tftp or "tftp listening on" in text) and \
                ("-H" not in args or "http listening on" in text)

        wait_until(ready, timeout, "massboot to listen")
        return proc

    def massboot_text(self) -> str:
        return self.massboot_log.read_text(errors="replace") if self.massboot_log.exists() else ""
