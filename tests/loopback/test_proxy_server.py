"""Proxy mode (README, "proxyDHCP") on loopback: massboot built by ``Services`` from an ini.

A relay client (giaddr) plays the ROM's DISCOVER on the DHCP port; a plain socket bound to
127.0.0.5 plays the ROM's boot-server REQUEST to the PXE boot server port from the address the
"site server" gave it, then fetches files by TFTP from that address. Checked: the replies on the
wire (no address, the boot file, option 54/60/43), the socket each reply leaves from, TFTP's
``{ip}``/``{mac}`` filters, the notification, the boot progress and the metrics, and that an
OS client is never answered. A real ROM's DISCOVER (golden/ipxe_discover.hex) is replayed too.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import tftpy
from prometheus_client import CollectorRegistry

from massboot import config as cfg
from massboot.cli import Services
from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, MessageType, Opt, decode, encode, u8
from tests.loopback.aclserver import AclServer
from tests.loopback.dhcpclient import RelayClient, pxe_options

HOST = "127.0.0.1"
CLIENT_IP = "127.0.0.5"             # what the site server gave the ROM
MAC = bytes.fromhex("525400a1b2c3")
MAC_S = "52:54:00:A1:B2:C3"
GOLDEN = Path(__file__).parents[1] / "unit" / "golden"
CONFIG = """
[bootpd]
mode = proxy
address = 127.0.0.1
port = 0
bootserver_port = 0
notify = 127.0.0.1:{notify_port}
[bootfile]
default = pxelinux.0
00007 = shimx64.efi
[tftpd]
address = 127.0.0.1
port = 0
root = {root}
[filters]
boot.cfg = cfg-{{ip}}-{{mac}}
[metrics]
address = 127.0.0.1
port = 0
"""


def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class ProxyLab:
    def __init__(self, tmp_path: Path, extra: str = "", bootpd: str = "", run_http: bool = False) -> None:
        root = tmp_path / "tftp"
        root.mkdir()
        (root / "pxelinux.0").write_bytes(b"loader" * 100)
        (root / f"cfg-{CLIENT_IP}-{MAC_S}").write_bytes(b"per-client config")
        (root / "vmlinuz").write_bytes(b"k" * 3000)
        self.notify = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.notify.bind((HOST, 0))
        self.notify.settimeout(5)
        text = CONFIG.format(notify_port=self.notify.getsockname()[1], root=root) + extra
        text = text.replace("mode = proxy", f"mode = proxy\n{bootpd}")
        (tmp_path / "massboot.ini").write_text(text)
        self.config = cfg.load(str(tmp_path / "massboot.ini"), state_dir=str(tmp_path / "state"))
        self.registry = CollectorRegistry()
        self.services = Services(self.config, registry=self.registry, run_http=run_http)
        self.services.start()
        dhcp = self.services.dhcp
        assert dhcp is not None and self.services.tftp is not None and self.services.metrics is not None
        self.dhcp = dhcp
        self.relay = RelayClient((HOST, dhcp.port))
        self.rom = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rom.bind((CLIENT_IP, 0))
        self.rom.settimeout(2)
        self.url = f"http://{HOST}:{self.services.metrics.port}"

    def close(self) -> None:
        self.relay.close()
        self.rom.close()
        self.notify.close()
        self.services.stop(grace=1)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def bootserver_request(self, options: list, xid: int = 0x4011) -> tuple[BootpPacket | None, tuple]:
        request = BootpPacket(op=BOOTREQUEST, xid=xid, chaddr=MAC, ciaddr=CLIENT_IP, options=tuple(
            [(Opt.MESSAGE_TYPE, u8(MessageType.REQUEST)), *options]))
        self.rom.sendto(encode(request), (HOST, self.dhcp.bootserver_port))
        try:
            data, peer = self.rom.recvfrom(65535)
        except TimeoutError:
            return None, ()
        return decode(data), peer

    def tftp_get(self, name: str) -> bytes:
        out = io.BytesIO()
        client = tftpy.TftpClient(HOST, self.services.tftp.port, localip=CLIENT_IP)  # type: ignore[union-attr]
        client.download(name, out, timeout=2, retries=3)
        return out.getvalue()

    def phase(self) -> str:
        response = requests.get(self.url + "/clients", timeout=5)
        response.raise_for_status()
        (record,) = [c for c in response.json() if c["mac"] == MAC_S]
        return record["phase"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ProxyLab]:
    made = ProxyLab(tmp_path)
    yield made
    made.close()


def test_proxy_boot_end_to_end(lab: ProxyLab) -> None:
    options = pxe_options(arch=0)
    offer = lab.relay.exchange(lab.relay.packet(MAC, MessageType.DISCOVER, options))
    assert offer is not None and offer.message_type == MessageType.OFFER
    assert offer.yiaddr == "0.0.0.0" and offer.server_id == HOST and offer.siaddr == HOST
    assert offer.vendor_class == "PXEClient" and offer.file == b""      # proxy_offer = redirect
    assert offer.option(Opt.LEASE_TIME) is None and offer.option(Opt.SUBNET_MASK) is None
    assert lab.phase() == "offered"

    # the REQUEST for the site server's offer: left alone, counted
    site = lab.relay.packet(MAC, MessageType.REQUEST, options + [(Opt.SERVER_ID, bytes([127, 0, 0, 9]))])
    lab.relay.send(site)
    wait_for(lambda: lab.value("massboot_dhcp_requests_ignored_total", reason="site_server") == 1,
             what="site_server counted")

    # the boot-server REQUEST on the PXE boot server port, from the address the site gave
    ack, peer = lab.bootserver_request(options)
    assert ack is not None and ack.message_type == MessageType.ACK and ack.xid == 0x4011
    assert peer == (HOST, lab.dhcp.bootserver_port), "the ACK must leave from the boot server port"
    assert ack.yiaddr == "0.0.0.0" and ack.ciaddr == CLIENT_IP and ack.file == b"pxelinux.0"
    boot = f"BOOT,12345678-abcd-ef00-1111-abcdefabcdef,{MAC_S},{CLIENT_IP}"
    assert lab.notify.recvfrom(512)[0] == boot.encode()
    assert lab.phase() == "bound"

    # TFTP knows the client by the address it reported: {ip} and {mac} filters, progress
    assert lab.tftp_get("pxelinux.0") == b"loader" * 100
    assert lab.phase() == "loader"
    assert lab.tftp_get("boot.cfg") == b"per-client config"
    wait_for(lambda: lab.phase() == "done", what="done after the last file")
    assert lab.tftp_get("vmlinuz") == b"k" * 3000
    wait_for(lambda: lab.phase() == "done", what="done again after the last file")

    assert lab.value("massboot_dhcp_proxy_replies_sent_total", type="offer") == 1
    assert lab.value("massboot_dhcp_proxy_replies_sent_total", type="ack") == 1
    assert lab.value("massboot_dhcp_leases_in_use", scope="main") is None      # no lease store


def test_os_clients_are_never_answered(lab: ProxyLab) -> None:
    os_options = [(Opt.PARAM_REQUEST, bytes([1, 3, 6])), (Opt.VENDOR_CLASS, b"udhcp 1.35.0")]
    for n, msgtype in enumerate((MessageType.DISCOVER, MessageType.REQUEST, MessageType.INFORM)):
        lab.relay.send(lab.relay.packet(bytes([2, 0, 0, 0, 0, n]), msgtype, os_options))
    wait_for(lambda: lab.value("massboot_dhcp_requests_ignored_total", reason="not_boot_client") == 3,
             what="three not_boot_client")
    ack, _ = lab.bootserver_request(os_options)
    assert ack is None
    assert lab.value("massboot_dhcp_requests_ignored_total", reason="not_boot_client") == 4
    assert lab.relay.recv(0.2) is None
    assert lab.value("massboot_dhcp_replies_sent_total", type="offer") == 0


def test_golden_ipxe_rom_discover_relayed(lab: ProxyLab) -> None:
    """QEMU's iPXE ROM DISCOVER as captured, relayed: a proxy OFFER that sends it to port 4011."""
    rom = decode(bytes.fromhex((GOLDEN / "ipxe_discover.hex").read_text().strip()))
    lab.relay.send(replace(rom, giaddr=lab.relay.relay_ip))
    offer = lab.relay.recv(2)
    assert offer is not None and offer.xid == rom.xid and offer.message_type == MessageType.OFFER
    assert offer.yiaddr == "0.0.0.0" and offer.vendor_class == "PXEClient" and offer.file == b""
    assert offer.option(Opt.CLIENT_UUID) == rom.option(Opt.CLIENT_UUID)


def test_check_config_shows_proxy_mode(tmp_path: Path, capsys) -> None:
    from massboot.cli import check_config

    (tmp_path / "tftp").mkdir()
    text = CONFIG.format(notify_port=9, root=tmp_path / "tftp")
    config = cfg.loads(text, path=f"{tmp_path}/massboot.ini")
    assert check_config(config, run_dhcp=True) == 0
    out = capsys.readouterr().out
    assert "bootp: mode proxy" in out and "PXE boot server port 0" in out
    assert "server address 127.0.0.1" in out


@pytest.mark.parametrize("name", ["ipxe_proxy_request", "ovmf_proxy_request"])
def test_real_rom_bootserver_request(lab: ProxyLab, name: str) -> None:
    """A real ROM's REQUEST to port 4011 (golden/README.txt), sent from the address it reports."""
    rom = decode(bytes.fromhex((GOLDEN / f"{name}.hex").read_text().strip()))
    lab.rom.sendto(encode(replace(rom, ciaddr=CLIENT_IP)), (HOST, lab.dhcp.bootserver_port))
    data, peer = lab.rom.recvfrom(65535)
    ack = decode(data)
    assert peer == (HOST, lab.dhcp.bootserver_port)
    assert ack.xid == rom.xid and ack.message_type == MessageType.ACK and ack.ciaddr == CLIENT_IP
    assert ack.yiaddr == "0.0.0.0" and ack.file == (b"shimx64.efi" if rom.client_arch == 7 else b"pxelinux.0")


def test_reload_keeps_the_running_mode(lab: ProxyLab, tmp_path: Path) -> None:
    """A reload applies the ACLs; a change of mode waits for a restart (and says so)."""
    from massboot.cli import restart_needed

    path = Path(lab.config.path)
    text = path.read_text()
    with_acl = text.replace("mode = proxy", "mode = proxy\naccess = mac")
    path.write_text(with_acl + "[mac]\n52-54-00-00-00-01 = yes\n")
    assert lab.services.reload(str(tmp_path / "state"))
    assert lab.dhcp.settings.access == "mac" and lab.dhcp.settings.proxy
    denied = lab.relay.packet(MAC, MessageType.DISCOVER, pxe_options())
    lab.relay.send(denied)
    wait_for(lambda: lab.value("massboot_dhcp_acl_decisions_total", acl="mac", verdict="denied") == 1,
             what="the reloaded ACL")
    full = text.replace("mode = proxy", "mode = full\npool_start = 127.0.0.100")
    path.write_text(full)
    new = cfg.load(str(path), state_dir=str(tmp_path / "state"))
    assert "[bootpd] mode" in restart_needed(lab.services.config, new)
    assert lab.services.reload(str(tmp_path / "state"))
    assert lab.dhcp.settings.proxy                       # still proxy until a restart
    offer = lab.relay.exchange(lab.relay.packet(bytes.fromhex("525400000002"), MessageType.DISCOVER,
                                                pxe_options()))
    assert offer is not None and offer.yiaddr == "0.0.0.0" and offer.vendor_class == "PXEClient"


def test_leases_command_refuses_proxy_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "tftp").mkdir()
    path = tmp_path / "proxy.ini"
    path.write_text(CONFIG.format(notify_port=9, root=tmp_path / "tftp"))
    result = subprocess.run([sys.executable, "-m", "massboot", "-c", str(path), "leases", "list"],
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 2, result
    assert "[bootpd] mode = 'proxy': proxy mode keeps no leases" in result.stderr


def test_http_acl_in_proxy_mode(tmp_path: Path) -> None:
    """access = http against a real ACL server: asked at the DISCOVER on the PXE path, not again
    for the same boot's 4011 REQUEST; a denied MAC gets nothing."""
    # a real HTTP ACL server: 52:54:00:A1:* allowed, others denied; every query kept
    acl = AclServer(lambda target: "200 OK" if "MAC=52-54-00-A1" in target.upper() else "403 Forbidden")
    lab = None
    try:
        text = f"[http]\nlocation = 127.0.0.1:{acl.port}\ntimeout = 2\ncache_ttl = 0\n"
        lab = ProxyLab(tmp_path, extra=text, bootpd="access = http")
        options = pxe_options(arch=0)
        offer = lab.relay.exchange(lab.relay.packet(MAC, MessageType.DISCOVER, options))
        assert offer is not None and offer.message_type == MessageType.OFFER
        assert len(acl.queries) == 1 and acl.queries[0].startswith("/boot?mac=52-54-00-A1-B2-C3")
        ack, _ = lab.bootserver_request(options)
        assert ack is not None and ack.file == b"pxelinux.0"
        assert len(acl.queries) == 1, acl.queries                 # same boot: not asked again
        other = bytes.fromhex("5254000000ff")
        lab.relay.send(lab.relay.packet(other, MessageType.DISCOVER, options))
        wait_for(lambda: lab.value("massboot_dhcp_acl_decisions_total", acl="http", verdict="denied") == 1,
                 what="the denial")
        assert lab.relay.recv(0.3) is None
        assert lab.value("massboot_dhcp_proxy_replies_sent_total", type="offer") == 1
    finally:
        if lab is not None:
            lab.close()
        acl.close()


def test_bootserver_port_in_use_names_that_port(tmp_path: Path) -> None:
    from massboot.cli import StartupError

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((HOST, 0))
    port = holder.getsockname()[1]
    try:
        (tmp_path / "tftp").mkdir()
        text = CONFIG.format(notify_port=9, root=tmp_path / "tftp").replace("bootserver_port = 0",
                                                                            f"bootserver_port = {port}")
        services = Services(cfg.loads(text, path=f"{tmp_path}/massboot.ini"), registry=CollectorRegistry())
        with pytest.raises(StartupError, match=rf"dhcp: cannot listen on UDP 127.0.0.1:{port}: .*in use"):
            services.start()
        services.stop(grace=0.1)
    finally:
        holder.close()


def test_check_ip_in_proxy_mode_knows_the_reported_addresses(tmp_path: Path) -> None:
    """``[httpd] check_ip`` in proxy mode (README, "proxyDHCP"): massboot leases nothing, so an
    address may download once a boot client reported it on the boot server port, not before."""
    lab = ProxyLab(tmp_path, extra="[httpd]\naddress = 127.0.0.1\nport = 0\ncheck_ip = yes\n", run_http=True)
    try:
        assert lab.services.http is not None
        url = f"http://{HOST}:{lab.services.http.port}/vmlinuz"

        def get() -> int:
            with socket.create_connection((HOST, lab.services.http.port), timeout=5,
                                          source_address=(CLIENT_IP, 0)) as conn:
                conn.sendall(b"GET /vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return int(conn.recv(64).split(b" ", 2)[1])

        assert get() == 401, f"{url}: no boot client reported {CLIENT_IP} yet"
        ack, _ = lab.bootserver_request(pxe_options(arch=0))
        assert ack is not None and ack.message_type == MessageType.ACK
        assert get() == 200
    finally:
        lab.close()


def test_check_ip_in_proxy_mode_without_the_dhcp_server_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tftp").mkdir()
    text = CONFIG.format(notify_port=9, root=tmp_path / "tftp") + "[httpd]\nport = 0\ncheck_ip = yes\n"
    config = cfg.loads(text, path=f"{tmp_path}/massboot.ini")
    with pytest.raises(cfg.ConfigError, match=r"check_ip.*proxy mode massboot leases nothing"):
        Services(config, run_dhcp=False, run_http=True, registry=CollectorRegistry())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def test_ovmf_http_boot_in_proxy_mode(tmp_path: Path) -> None:
    """OVMF's HTTP Boot DISCOVER and REQUEST as captured beside dnsmasq
    (golden/ovmf_proxy_http_*.hex), relayed, with
    ``-H`` and ``check_ip`` (README, "proxyDHCP"): a proxy OFFER whose option 67 is the URL of
    ``[bootfile] 00007``'s file on this server's ``-H``; the REQUEST for the site server's offer
    is left alone but its option 50 lets that address download. The DHCP gauges are scraped in
    proxy mode too (no lease store)."""
    port = _free_port()
    lab = ProxyLab(tmp_path, extra=f"[httpd]\naddress = 127.0.0.1\nport = {port}\ncheck_ip = yes\n",
                   run_http=True)
    try:
        assert lab.services.http is not None and lab.services.http.port == port
        (tmp_path / "tftp" / "shimx64.efi").write_bytes(b"efi" * 1000)
        url = f"http://{HOST}:{port}/shimx64.efi"

        def get() -> tuple[int, bytes]:
            with socket.create_connection((HOST, port), timeout=5, source_address=(CLIENT_IP, 0)) as conn:
                conn.sendall(b"GET /shimx64.efi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1]), body

        discover = decode(bytes.fromhex((GOLDEN / "ovmf_proxy_http_discover.hex").read_text().strip()))
        assert discover.vendor_class.startswith("HTTPClient:Arch:00016")
        discover = replace(discover, giaddr=lab.relay.relay_ip, chaddr=MAC)
        offer = lab.relay.exchange(discover)
        assert offer is not None and offer.message_type == MessageType.OFFER
        # what EDK2's HttpBootDxe calls HttpOfferTypeProxyIpUri: no address, HTTPClient, an IP URL
        assert offer.yiaddr == "0.0.0.0" and offer.server_id == HOST
        assert offer.option(Opt.VENDOR_CLASS) == b"HTTPClient"
        assert offer.option(Opt.BOOTFILE) == url.encode() and offer.file == url.encode()
        assert offer.option(Opt.VENDOR_SPECIFIC) is None and offer.option(Opt.LEASE_TIME) is None
        assert offer.option(Opt.CLIENT_UUID) == discover.option(Opt.CLIENT_UUID)
        assert get()[0] == 401, "no boot client reported the address yet"

        # its REQUEST names dnsmasq (10.79.0.2) and dnsmasq's address, here CLIENT_IP
        request = decode(bytes.fromhex((GOLDEN / "ovmf_proxy_http_request.hex").read_text().strip()))
        assert request.server_id == "10.79.0.2" and request.requested_ip is not None
        options = tuple((code, socket.inet_aton(CLIENT_IP) if code == Opt.REQUESTED_IP else value)
                        for code, value in request.options)
        lab.relay.send(replace(request, giaddr=lab.relay.relay_ip, chaddr=MAC, options=options))
        wait_for(lambda: lab.value("massboot_dhcp_requests_ignored_total", reason="site_server") == 1,
                 what="site_server counted")
        assert lab.relay.recv(0.2) is None
        assert get() == (200, b"efi" * 1000)
        assert lab.value("massboot_dhcp_proxy_replies_sent_total", type="offer") == 1
        assert lab.value("massboot_dhcp_clients") == 1
        assert lab.value("massboot_http_requests_total", method="GET", code="401") == 1
    finally:
        lab.close()
