"""How often the DHCP server asks the HTTP ACL, and what it does with the answer (README
"[http]: the remote ACL"), through massboot built by ``Services`` and a real ACL server.

The server is asked when a client changes phase only (first PXE DISCOVER, first OS REQUEST, PXE
again after a reboot), or on every request with ``always_check = on``. The ACL server here
counts the requests it gets per MAC; its ``Client:`` line must reach the OS as option 12 and its
``File:`` line must reach the TFTP side as ``{file}`` in ``[filters]``. The verdict cache is
off here (``cache_ttl = 0``) so the rule itself is counted; tests/loopback/test_dhcp_guard.py
counts the calls the cache saves.
"""

from __future__ import annotations

import io
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import tftpy
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry

from massboot import config as cfg
from massboot.cli import Services
from massboot.dhcp.packet import BootpPacket, MessageType, Opt
from tests.loopback.dhcpclient import RelayClient, pxe_options

HOST = "127.0.0.1"
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"
MAC_A = "52:54:00:00:01:01"
MAC_B = "52:54:00:00:01:02"
#: the OS's DHCP client: no PXE options, asks for the host name (12)
OS_OPTIONS = [(Opt.PARAM_REQUEST, bytes([1, 3, 6, 12, 15, 28, 42]))]
PXE = pxe_options(arch=0, uuid=UUID)

#: what the PXELINUX config probes are answered with: the ACL's ``File:`` name
NODE_CFG = b"DEFAULT node7\nLABEL node7\n  KERNEL vmlinuz-node7\n" * 7
OTHER_CFG = b"DEFAULT other\n"

CONFIG = """
[bootpd]
pool_start = 127.0.0.110
pool_count = 4
address = 127.0.0.1
port = 0
access = http
lease_db = :memory:

[http]
location = 127.0.0.1:{acl_port}
always_check = {always_check}
; the verdict cache would answer repeated questions itself: these tests count pybootd's rule
cache_ttl = 0
timeout = 2

[bootfile]
default = pxelinux.0

[tftpd]
root = {root}
address = 127.0.0.1
port = 0
timeout = 0.3

[filters]
pxelinux.cfg/* = {{file}}

[metrics]
address = 127.0.0.1
port = 0

[logger]
type = none
"""


class AclServer:
    """The remote ACL: allows everyone, names the client after the phase and its MAC, and
    answers ``File: node7.cfg``. Counts requests per (MAC, path)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.server = WSGIServer((HOST, 0), self._app, log=None)
        self.server.start()
        self.port = self.server.server_port

    @staticmethod
    def name(path: str, mac: str) -> str:
        return f"{path}-{mac.replace(':', '')[-4:]}"

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ["PATH_INFO"].strip("/")
        mac = parse_qs(environ["QUERY_STRING"])["mac"][0].upper().replace("-", ":")
        self.calls[(mac, path)] += 1
        body = f"Client: {self.name(path, mac)}\nFile: node7.cfg\n".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def count(self, mac: str, path: str | None = None) -> int:
        return sum(n for (m, p), n in self.calls.items() if m == mac and path in (None, p))

    def close(self) -> None:
        self.server.stop(timeout=1)


class Rack:
    """massboot from an ini with port 0 everywhere, a relay client and the ACL server."""

    def __init__(self, tmp_path: Path, always_check: bool) -> None:
        root = tmp_path / "root"
        root.mkdir()
        (root / "node7.cfg").write_bytes(NODE_CFG)
        (root / "other.cfg").write_bytes(OTHER_CFG)
        self.acl = AclServer()
        text = CONFIG.format(acl_port=self.acl.port, always_check="on" if always_check else "off",
                             root=root)
        self.registry = CollectorRegistry()
        self.services = Services(cfg.loads(text, path=str(tmp_path / "massboot.ini")),
                                 registry=self.registry)
        self.services.start()
        assert self.services.dhcp is not None and self.services.tftp is not None
        self.relay = RelayClient((HOST, self.services.dhcp.port))

    def close(self) -> None:
        self.relay.close()
        self.services.stop(grace=1)
        self.acl.close()

    def decisions(self, verdict: str) -> float:
        return self.registry.get_sample_value("massboot_dhcp_acl_decisions_total",
                                              {"acl": "http", "verdict": verdict}) or 0

    def discover(self, mac: str, options: list) -> BootpPacket:
        offer = self.relay.exchange(self.relay.packet(mac_bytes(mac), MessageType.DISCOVER, options))
        assert offer is not None and offer.message_type == MessageType.OFFER
        return offer

    def request(self, mac: str, options: list, offer: BootpPacket) -> BootpPacket:
        request = self.relay.packet(mac_bytes(mac), MessageType.REQUEST, list(options) + [
            (Opt.SERVER_ID, offer.option(Opt.SERVER_ID)), (Opt.REQUESTED_IP, socket.inet_aton(offer.yiaddr))])
        ack = self.relay.exchange(request)
        assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == offer.yiaddr
        return ack

    def dora(self, mac: str, options: list) -> BootpPacket:
        return self.request(mac, options, self.discover(mac, options))

    def tftp_get(self, ip: str, name: str) -> bytes:
        out = io.BytesIO()
        client = tftpy.TftpClient(HOST, self.services.tftp.port, localip=ip)  # type: ignore[union-attr]
        client.download(name, out, timeout=2, retries=3)
        return out.getvalue()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@pytest.fixture
def rack(tmp_path) -> Iterator[Rack]:
    r = Rack(tmp_path, always_check=False)
    yield r
    r.close()


@pytest.fixture
def always_rack(tmp_path) -> Iterator[Rack]:
    r = Rack(tmp_path, always_check=True)
    yield r
    r.close()


# -- call counts -------------------------------------------------------------------------


def test_one_call_per_phase_change(rack: Rack) -> None:
    # PXE stage: the first DISCOVER changes the phase (idle → PXE), its REQUEST does not
    offer = rack.discover(MAC_A, PXE)
    assert rack.acl.count(MAC_A) == 1 and rack.acl.count(MAC_A, "boot") == 1
    rack.request(MAC_A, PXE, offer)
    assert rack.acl.count(MAC_A) == 1
    # the OS: its DISCOVER stays in the PXE phase, its first REQUEST moves to the OS phase
    offer = rack.discover(MAC_A, OS_OPTIONS)
    assert rack.acl.count(MAC_A) == 1
    rack.request(MAC_A, OS_OPTIONS, offer)
    assert rack.acl.count(MAC_A) == 2 and rack.acl.count(MAC_A, "linux") == 1
    # the OS renews: still the OS phase
    rack.dora(MAC_A, OS_OPTIONS)
    assert rack.acl.count(MAC_A) == 2
    assert rack.decisions("allowed") == 2
    assert rack.acl.count(MAC_B) == 0


def test_retransmitted_discover_adds_no_call(rack: Rack) -> None:
    first = rack.discover(MAC_A, PXE)
    again = rack.discover(MAC_A, PXE)               # the ROM did not see the offer: asks again
    assert again.yiaddr == first.yiaddr
    assert rack.acl.count(MAC_A) == 1
    rack.request(MAC_A, PXE, again)
    assert rack.acl.count(MAC_A) == 1
    assert rack.decisions("allowed") == 1


def test_reboot_into_pxe_adds_one_call(rack: Rack) -> None:
    rack.dora(MAC_A, PXE)
    rack.dora(MAC_A, OS_OPTIONS)
    assert rack.acl.count(MAC_A) == 2
    # the machine reboots: PXE again (OS → PXE) is a phase change, its REQUEST is not
    rack.dora(MAC_A, PXE)
    assert (rack.acl.count(MAC_A, "boot"), rack.acl.count(MAC_A, "linux")) == (2, 1)
    # and its OS once more
    rack.dora(MAC_A, OS_OPTIONS)
    assert (rack.acl.count(MAC_A, "boot"), rack.acl.count(MAC_A, "linux")) == (2, 2)
    assert rack.decisions("allowed") == 4


def test_counts_are_per_machine(rack: Rack) -> None:
    rack.dora(MAC_A, PXE)
    rack.dora(MAC_B, PXE)
    rack.dora(MAC_A, OS_OPTIONS)
    assert (rack.acl.count(MAC_A), rack.acl.count(MAC_B)) == (2, 1)
    assert rack.decisions("allowed") == 3
    assert rack.decisions("denied") == 0 and rack.decisions("error") == 0


def test_always_check_asks_on_every_request(always_rack: Rack) -> None:
    rack = always_rack
    rack.dora(MAC_A, PXE)
    assert rack.acl.count(MAC_A, "boot") == 2
    rack.discover(MAC_A, PXE)                       # a retransmission is asked about too
    assert rack.acl.count(MAC_A, "boot") == 3
    rack.dora(MAC_A, OS_OPTIONS)
    assert (rack.acl.count(MAC_A, "boot"), rack.acl.count(MAC_A, "linux")) == (3, 2)
    assert rack.decisions("allowed") == 5


# -- what the answer says ----------------------------------------------------------------


def test_client_line_is_the_os_host_name(rack: Rack) -> None:
    pxe_ack = rack.dora(MAC_A, PXE)
    assert pxe_ack.option(Opt.HOSTNAME) is None          # the PXE ROM gets no host name
    offer = rack.discover(MAC_A, OS_OPTIONS)
    ack = rack.request(MAC_A, OS_OPTIONS, offer)
    # the OS-phase ACL call named it: Client: linux-0101 (RFC 2132 §3.14, option 12)
    assert ack.option(Opt.HOSTNAME) == AclServer.name("linux", MAC_A).encode()


def test_file_line_is_the_filters_file_variable(rack: Rack) -> None:
    ack = rack.dora(MAC_A, PXE)
    # pxelinux.cfg/* = {file}: every config probe is answered with the ACL's File: name
    assert rack.tftp_get(ack.yiaddr, "pxelinux.cfg/01-52-54-00-00-01-01") == NODE_CFG
    assert rack.tftp_get(ack.yiaddr, "pxelinux.cfg/default") == NODE_CFG
