"""UEFI HTTP Boot over the DHCP server's socket: scapy builds the HTTPClient DISCOVER and
REQUEST as EDK2's HttpBootDxe sends them, scapy parses massboot's replies (README, "UEFI:
ipxe.efi and UEFI HTTP Boot"). The client acts as a relay (giaddr), as in test_dhcp_server."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from massboot.events import EventBus
from massboot.metrics import Metrics
from tests.loopback.test_cli import GOOD, free_port, run, write
from tests.loopback.test_dhcp_server import Harness

MAC = bytes.fromhex("525400c0ffee")
MAC_S = "52:54:00:C0:FF:EE"
UUID17 = b"\0" + bytes(range(16))
HTTP_BASE = "http://127.0.0.1:8080/"
RELAY = "127.0.0.2"
#: Debian 12 OVMF's HTTPClient DISCOVER asks exactly these (tests/unit/golden/ovmf_http_discover.hex)
OVMF_HTTP_PARAMS = [1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                    59, 60, 235, 67, 97]


def http_request(msgtype: str, xid: int, arch: int = 16, extra: list | None = None) -> bytes:
    """An HTTPClient DISCOVER/REQUEST relayed by RELAY, built by scapy."""
    options = [("message-type", msgtype), ("max_dhcp_size", 1472),
               ("param_req_list", OVMF_HTTP_PARAMS), (97, UUID17), (94, b"\x01\x03\x00"),
               (93, arch.to_bytes(2, "big")),
               ("vendor_class_id", f"HTTPClient:Arch:{arch:05d}:UNDI:003000".encode()),
               *(extra or []), "end"]
    return bytes(BOOTP(op=1, xid=xid, giaddr=RELAY, hops=1, chaddr=MAC) / DHCP(options=options))


def options(reply: BOOTP) -> dict:
    return {o[0]: o[1] if len(o) == 2 else o[1:] for o in reply[DHCP].options if isinstance(o, tuple)}


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RELAY, 0))
        self.sock.settimeout(2.0)
        self.server = ("127.0.0.1", port)

    def ask(self, data: bytes, timeout: float = 2.0) -> BOOTP | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(data, self.server)
        try:
            reply, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return BOOTP(reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lab():
    made = []

    def make(extra: str, http_base: str | None = HTTP_BASE) -> tuple[Harness, Client]:
        harness = Harness(extra=extra, http_base=http_base)
        client = Client(harness.server.port)
        made.append((harness, client))
        return harness, client

    yield make
    for harness, client in made:
        client.close()
        harness.close()


def test_http_client_dora_gets_a_url(lab) -> None:
    h, c = lab("")           # [bootfile] 00007 = shimx64.efi: arch 16's twin
    offer = c.ask(http_request("discover", 0x51))
    assert offer is not None and offer.xid == 0x51 and offer.yiaddr == "127.0.0.100"
    opts = options(offer)
    assert opts["message-type"] == 2 and opts["vendor_class_id"] == b"HTTPClient"
    assert opts["boot-file-name"] == b"http://127.0.0.1:8080/shimx64.efi"
    assert offer.file.rstrip(b"\0") == b"http://127.0.0.1:8080/shimx64.efi"
    assert "vendor_specific" not in opts and 66 not in opts and "tftp_server_name" not in opts
    ack = c.ask(http_request("request", 0x52, extra=[("server_id", "127.0.0.1"),
                                                      ("requested_addr", offer.yiaddr)]))
    assert ack is not None and options(ack)["message-type"] == 5 and ack.yiaddr == offer.yiaddr
    assert options(ack)["boot-file-name"] == b"http://127.0.0.1:8080/shimx64.efi"
    assert h.store.get(MAC_S).state == "bound"
    replies = h.recorder.of("dhcp.reply")
    assert [(e.get("msgtype"), e.get("phase"), e.get("http"), e.get("file")) for e in replies] == [
        ("offer", "pxe", True, "http://127.0.0.1:8080/shimx64.efi"),
        ("ack", "pxe", True, "http://127.0.0.1:8080/shimx64.efi")]


def test_http_client_without_a_file_is_ignored_and_counted(lab) -> None:
    h, c = lab("")
    bus_events = h.recorder
    assert c.ask(http_request("discover", 0x61, arch=19), timeout=0.5) is None   # ARM64: no 19, no 11
    ignored = bus_events.of("dhcp.ignored")
    assert [(e.get("reason"), e.get("mac")) for e in ignored] == [("no_http_bootfile", MAC_S)]
    assert "no [bootfile] 19 nor 11 entry" in ignored[0].get("detail")
    assert h.store.get(MAC_S) is None and not bus_events.of("dhcp.reply")


def test_twin_file_name_without_http_server_is_ignored(lab) -> None:
    h, c = lab("", http_base=None)
    assert c.ask(http_request("discover", 0x71), timeout=0.5) is None
    (ignored,) = h.recorder.of("dhcp.ignored")
    assert ignored.get("reason") == "no_http_bootfile" and "-H" in ignored.get("detail")


def test_http_boot_url_entry_needs_no_http_server(lab) -> None:
    h, c = lab("00016 = https://boot.example/x64/ipxe.efi", http_base=None)
    offer = c.ask(http_request("discover", 0x81))
    assert offer is not None and options(offer)["boot-file-name"] == b"https://boot.example/x64/ipxe.efi"


def test_no_http_bootfile_is_counted_in_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig

    events = EventBus()
    registry = CollectorRegistry()
    Metrics(MetricsConfig(port=0), events, registry=registry)
    events.emit("dhcp.ignored", mac=MAC_S, reason="no_http_bootfile", phase="pxe", detail="x")
    value = registry.get_sample_value("massboot_dhcp_requests_ignored_total", {"reason": "no_http_bootfile"})
    assert value == 1.0


# ---------------------------------------------------------------- the command line (a real process)

HTTP_CONFIG = GOOD.replace("default = pxelinux.0\n", "default = pxelinux.0\n00007 = ipxe.efi\n"
                           "00016 = efi/ipxe.efi\n") + "[httpd]\nport = 8080\n"


def test_relative_http_bootfile_without_h_exits_2(tmp_path) -> None:
    config = write(tmp_path, HTTP_CONFIG.format(dhcp=free_port(), tftp=free_port()))
    for args in (("--check-config",), ()):          # checked, and refused at startup
        result = run("-c", config, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "[bootfile] 16 = 'efi/ipxe.efi': a file name for UEFI HTTP Boot clients" in result.stderr
        assert "run with -H" in result.stderr


def test_check_config_shows_what_http_clients_get(tmp_path) -> None:
    result = run("-c", write(tmp_path, HTTP_CONFIG.format(dhcp=free_port(), tftp=free_port())),
                 "--check-config", "-H")
    assert result.returncode == 0, result.stderr
    assert "http boot: arch 16 gets http://127.0.0.1:8080/efi/ipxe.efi ([bootfile] 16)" in result.stdout
    assert "http boot: arch 15, 17, 18, 19, 20, 23" in result.stdout     # no twin entry: nothing
    assert result.stdout.strip().endswith("config OK")
