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
It offers ``popen``/``run``/``client``/``client_if`` as :class:`tests.netns.netns.NetnsPair`
does, so the dhclient and udhcpc helpers of ``test_dhcp_clients`` run in it unchanged.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.netns.netns import REPO, inside, kill, wait_until

BRIDGE = "mbpbr0"
TAPS = ("mbptap0", "mbptap1")        # QEMU's NICs, on the bridge
SERVER_IP = "10.79.0.1"
SITE_IP = "10.79.0.2"
SITE_RANGE = ("10.79.0.100", "10.79.0.150")
_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class SiteLab:
    """The three namespaces; see the module docstring."""

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

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> SiteLab:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        for ns in (self.lab, self.site, self.client):
            _ip("netns", "add", ns)
            for setting in ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"):
                _ip("netns", "exec", ns, "sysctl", "-q", "-w", setting)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.lab, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", self.lab, "addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
        _ip("link", "add", "ps0", "netns", self.site, "type", "veth",
            "peer", "name", "lps0", "netns", self.lab)
        _ip("link", "add", self.client_if, "netns", self.client, "address", self.client_mac, "type", "veth",
            "peer", "name", "lpc0", "netns", self.lab)
        ports = ["lps0", "lpc0"]
        for tap in self.taps:
            _ip("-n", self.lab, "tuntap", "add", "dev", tap, "mode", "tap")
            ports.append(tap)
        for port in ports:
            _ip("-n", self.lab, "link", "set", port, "master", BRIDGE)
            _ip("-n", self.lab, "link", "set", port, "up")
        _ip("-n", self.lab, "link", "set", BRIDGE, "up")
        _ip("-n", self.site, "addr", "add", f"{SITE_IP}/24", "dev", "ps0")
        _ip("-n", self.site, "link", "set", "ps0", "up")
        _ip("-n", self.client, "link", "set", self.client_if, "up")
        for ns, ifname in ((self.site, "ps0"), (self.client, self.client_if), (self.lab, BRIDGE)):
            def up(ns: str = ns, ifname: str = ifname) -> bool:
                return "LOWER_UP" in _ip("-n", ns, "link", "show", ifname).stdout

            wait_until(up, 10, f"{ifname} up in {ns}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            kill(proc, signal.SIGTERM, timeout=5)
        for ns in (self.client, self.site, self.lab):
            if not os.path.exists(f"/run/netns/{ns}"):
                continue
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in (int(p) for p in pids if p.isdigit() and int(p) != os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", ns, check=False)

    # -- processes (NetnsPair's interface) -------------------------------------------------
    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        proc = self.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            out, err = proc.communicate()
            raise TimeoutError(f"{' '.join(argv)} did not finish in {timeout} s\n{out}\n{err}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def socket_in(self, ns: str, setup) -> object:
        """A UDP socket living in *ns*, *setup* (binds, options) run there."""
        import socket

        with inside(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                setup(sock)
            except BaseException:
                sock.close()
                raise
        return sock

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
