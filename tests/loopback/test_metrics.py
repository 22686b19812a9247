"""The exporter on loopback: a simulated rack boots from real servers built by ``Services``.

Everything runs in this process on 127.0.0.0/8: the DHCP server (driven by a relay client, so
no root), the TFTP server (tftpy and a raw client bound to the leased addresses), a small HTTP
mirror behind the remote-root cache, an HTTP ACL server and a notification sink. Each test
gets a fresh :class:`CollectorRegistry`.

:func:`boot_rack` is also what ``test_prometheus.py`` scrapes.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import gevent
import pytest
import requests
import tftpy
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from massboot import __version__
from massboot import config as cfg
from massboot.cli import Services
from massboot.config import MetricsConfig
from massboot.dhcp.leases import LeaseStats
from massboot.dhcp.packet import CODEC, MessageType, Opt
from massboot.dhcp.packet import Reason as DhcpReason
from massboot.events import EventBus
from massboot.metrics import Metrics, malformed_reason
from massboot.progress import PHASES
from massboot.tftp.packet import Reason as TftpReason
from massboot.tftp.server import TftpServer
from tests.loopback.aclserver import AclServer
from tests.loopback.dhcpclient import RelayClient, pxe_options

HOST = "127.0.0.1"
WAIT = 10.0
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"

MAC_A = "52:54:00:00:00:01"     # boots all the way
MAC_B = "52:54:00:00:00:02"     # stops after its boot file (loader)
MAC_C = "52:54:00:00:00:03"     # ARM64: no [bootfile] entry, stops after the offer
MAC_D = "52:54:00:00:00:04"     # finds the pool exhausted
MAC_E = "02:00:00:00:00:05"     # denied by the HTTP ACL
MAC_F = "52:54:00:00:00:0E"     # the HTTP ACL server fails for it

FILES = {
    "pxelinux.0": bytes(range(256)) * 156 + b"x" * 64,      # 40000 bytes
    "pxelinux.cfg/default": b"DEFAULT linux\n" * 20 + b"...\n" * 5,
    "vmlinuz": b"K" * 3000,
    "initrd.img": b"I" * 200_000,
}
TFTP_BLKSIZE = 1024
#: the OS's DHCP client: no PXE options
OS_OPTIONS = [(Opt.PARAM_REQUEST, bytes([1, 3, 6, 12, 15, 28, 42]))]

CONFIG = """
[logger]
type = none

[bootpd]
address = 127.0.0.1
port = 0
pool_start = 127.0.0.100
pool_count = 3
lease_db = :memory:
access = http
notify = 127.0.0.1:{notify_port}

[http]
location = 127.0.0.1:{acl_port}
timeout = 2

[bootfile]
default = pxelinux.0

[tftpd]
address = 127.0.0.1
port = 0
root = {mirror}
timeout = 0.3
cache_dir = {cache}

[metrics]
address = 127.0.0.1
port = 0
stall_after = {stall_after}

[httpd]
address = 127.0.0.1
port = 0
check_ip = no
"""


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll cooperatively until *predicate* holds; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout}s")
        gevent.sleep(0.005)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def acl_verdict(target: str) -> str | None:
    """The remote ACL: 52-54-00-* allowed, others denied, ``MAC_F`` gets no answer at all."""
    query = parse_qs(urlsplit(target).query)
    mac = query.get("mac", [""])[0].upper().replace("-", ":")
    if mac == MAC_F:
        return None                                  # hang up: a connection error, verdict "error"
    return "200 OK" if mac.startswith("52:54:00") else "403 Forbidden"


class Mirror:
    """The HTTP mirror behind ``[tftpd] root``."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.server = WSGIServer((HOST, 0), self._app, log=None)
        self.server.start()
        self.root = f"http://{HOST}:{self.server.server_port}/netboot"

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        body = self.files.get(environ["PATH_INFO"].removeprefix("/netboot/"))
        if body is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.server.stop(timeout=1)


@dataclass
class Rack:
    """massboot built by ``Services`` from an ini with port 0 everywhere, plus its clients."""

    tmp_path: object
    stall_after: float = 60.0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    http: bool = False          # also the HTTP file server (-H)

    def __post_init__(self) -> None:
        self.mirror = Mirror(FILES)
        self.acl = AclServer(acl_verdict)
        self.notify = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.notify.bind((HOST, 0))
        text = CONFIG.format(notify_port=self.notify.getsockname()[1], acl_port=self.acl.port,
                             mirror=self.mirror.root, cache=f"{self.tmp_path}/cache",
                             stall_after=self.stall_after)
        self.config = cfg.loads(text, path=f"{self.tmp_path}/massboot.ini")
        self.services = Services(self.config, registry=self.registry, run_http=self.http)
        self.services.start()
        assert self.services.metrics is not None and self.services.dhcp is not None
        assert self.services.tftp is not None
        self.metrics: Metrics = self.services.metrics
        self.dhcp_port = self.services.dhcp.port
        self.tftp_port = self.services.tftp.port
        self.url = f"http://{HOST}:{self.metrics.port}"
        self.relay = RelayClient((HOST, self.dhcp_port))

    def close(self) -> None:
        self.relay.close()
        self.services.stop(grace=1)
        self.mirror.close()
        self.acl.close()
        self.notify.close()

    # -- reading the exporter
    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def phase_count(self, phase: str) -> float | None:
        return self.value("massboot_boot_clients", phase=phase)

    def clients(self, **params: str) -> list[dict]:
        response = requests.get(self.url + "/clients", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def client(self, mac: str) -> dict:
        (record,) = [c for c in self.clients() if c["mac"] == mac]
        return record

    # -- DHCP
    def discover(self, mac: str, options: list) -> object:
        packet = self.relay.packet(mac_bytes(mac), MessageType.DISCOVER, options)
        offer = self.relay.exchange(packet)
        assert offer is not None and offer.message_type == MessageType.OFFER
        return offer

    def request(self, mac: str, options: list, offer: object) -> object:
        offer_ip = offer.yiaddr  # type: ignore[attr-defined]
        request = self.relay.packet(mac_bytes(mac), MessageType.REQUEST, list(options) + [
            (Opt.SERVER_ID, offer.option(Opt.SERVER_ID)),  # type: ignore[attr-defined]
            (Opt.REQUESTED_IP, socket.inet_aton(offer_ip))])
        ack = self.relay.exchange(request)
        assert ack is not None and ack.message_type == MessageType.ACK and ack.yiaddr == offer_ip
        return ack

    def discover_unanswered(self, mac: str, options: list, counter: Callable[[], float | None]) -> None:
        """Send a DISCOVER that gets no reply; wait until *counter* moves instead of timing out."""
        before = counter() or 0
        self.relay.send(self.relay.packet(mac_bytes(mac), MessageType.DISCOVER, options))
        wait_for(lambda: (counter() or 0) > before, what=f"no-reply outcome for {mac}")

    # -- TFTP
    def tftpy_get(self, ip: str, name: str) -> bytes:
        out = io.BytesIO()
        client = tftpy.TftpClient(HOST, self.tftp_port, options={"blksize": TFTP_BLKSIZE}, localip=ip)
        client.download(name, out, timeout=2, retries=3)
        return out.getvalue()

    def raw_get(self, ip: str, name: str, on_hold: Callable[[], None] | None = None) -> bytes:
        """RFC 1350 download with 512-byte blocks; DATA 1 is left unacknowledged once, so the
        server must resend it (a retransmit); *on_hold* runs while the transfer is open."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        sock.settimeout(5)
        try:
            sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", (HOST, self.tftp_port))
            data = bytearray()
            expected, held = 1, False
            while True:
                packet, peer = sock.recvfrom(65536)
                opcode, block = struct.unpack("!HH", packet[:4])
                assert opcode == 3, packet
                if block != expected & 0xFFFF:
                    continue
                if not held:
                    held = True
                    if on_hold is not None:
                        on_hold()
                    continue                          # no ACK: the server times out and resends
                data += packet[4:]
                sock.sendto(struct.pack("!HH", 4, block), peer)
                if len(packet) - 4 < 512:
                    return bytes(data)
                expected += 1
        finally:
            sock.close()


@pytest.fixture
def rack(tmp_path) -> Iterator[Rack]:
    r = Rack(tmp_path)
    yield r
    r.close()


Expect = Callable[[str, str], None]


def boot_rack(rack: Rack, expect: Expect | None = None, on_hold: Callable[[], None] | None = None) -> None:
    """Boot the rack: A all the way to done, B to its loader, C offered, D and F waiting, E denied.

    *expect(mac, phase)* is called after each step with the phase the client must be in.
    """
    check = expect or (lambda mac, phase: None)
    pxe = pxe_options(arch=0, uuid=UUID)

    # A: PXE ROM → boot file → config, kernel, initrd → the OS asks for its address
    offer = rack.discover(MAC_A, pxe)
    check(MAC_A, "offered")
    ack = rack.request(MAC_A, pxe, offer)
    check(MAC_A, "bound")
    ip_a = ack.yiaddr  # type: ignore[attr-defined]
    assert rack.tftpy_get(ip_a, "pxelinux.0") == FILES["pxelinux.0"]
    check(MAC_A, "loader")
    with pytest.raises(tftpy.TftpException):
        rack.tftpy_get(ip_a, "pxelinux.cfg/01-52-54-00-00-00-01")   # a refused probe: no progress
    check(MAC_A, "loader")
    assert rack.tftpy_get(ip_a, "pxelinux.cfg/default") == FILES["pxelinux.cfg/default"]
    check(MAC_A, "kernel")
    assert rack.raw_get(ip_a, "vmlinuz", on_hold) == FILES["vmlinuz"]
    assert rack.tftpy_get(ip_a, "initrd.img") == FILES["initrd.img"]
    check(MAC_A, "kernel")
    offer = rack.discover(MAC_A, OS_OPTIONS)
    check(MAC_A, "os")
    rack.request(MAC_A, OS_OPTIONS, offer)
    check(MAC_A, "done")

    # B: gets its boot file, then nothing more
    offer = rack.discover(MAC_B, pxe)
    ack = rack.request(MAC_B, pxe, offer)
    assert rack.tftpy_get(ack.yiaddr, "pxelinux.0") == FILES["pxelinux.0"]  # type: ignore[attr-defined]
    check(MAC_B, "loader")

    # C: an ARM64 ROM, no [bootfile] entry: the default file and an arch fallback; never requests
    rack.discover(MAC_C, pxe_options(arch=11, uuid=None))
    check(MAC_C, "offered")

    # D: the pool (3 addresses) is exhausted
    rack.discover_unanswered(MAC_D, pxe, lambda: rack.value("massboot_dhcp_pool_exhausted_total",
                                                            scope="main"))
    check(MAC_D, "discovering")

    # E: the ACL says no; F: the ACL server hangs up (verdict error, the client waits)
    rack.discover_unanswered(MAC_E, pxe, lambda: rack.value("massboot_dhcp_acl_decisions_total",
                                                            acl="http", verdict="denied"))
    rack.discover_unanswered(MAC_F, pxe, lambda: rack.value("massboot_dhcp_acl_decisions_total",
                                                            acl="http", verdict="error"))
    check(MAC_F, "discovering")

    # junk on both ports
    junk = ((b"junk", rack.dhcp_port), (b"\x00", rack.tftp_port), (b"\x00\x09abc\x00", rack.tftp_port))
    for data, port in junk:
        before = malformed_total(rack)
        rack.relay.sock.sendto(data, (HOST, port))
        wait_for(lambda b=before: malformed_total(rack) == b + 1, what="malformed datagram counted")


def malformed_total(rack: Rack) -> float:
    return sum(s.value for m in rack.registry.collect() if m.name == "massboot_malformed_packets"
               for s in m.samples)


def test_simulated_rack_boot(rack: Rack) -> None:
    def expect(mac: str, phase: str) -> None:
        wait_for(lambda: rack.metrics.progress.phase(mac) == phase, what=f"{mac} {phase}")
        assert rack.client(mac)["phase"] == phase

    seen: dict[str, float | None] = {}

    def on_hold() -> None:   # the raw vmlinuz transfer is open, DATA 1 not acknowledged
        seen["active"] = rack.value("massboot_tftp_active_transfers")
        seen["busy"] = rack.value("massboot_workers_busy", pool="tftp")
        seen["transfers"] = rack.client(MAC_A)["transfers"]

    assert [rack.phase_count(p) for p in PHASES] == [0] * len(PHASES)
    boot_rack(rack, expect, on_hold)
    assert seen == {"active": 1, "busy": 1, "transfers": 1}

    # phases: A done, B loader, C offered, D and F discovering, E forgotten
    counts = {p: rack.phase_count(p) for p in PHASES}
    assert counts == {"discovering": 2, "offered": 1, "bound": 0, "loader": 1, "kernel": 0, "os": 0,
                      "done": 1, "stalled": 0}
    assert {c["mac"] for c in rack.clients()} == {MAC_A, MAC_B, MAC_C, MAC_D, MAC_F}
    a = rack.client(MAC_A)
    assert a["ip"] == "127.0.0.100" and a["uuid"] == UUID and a["arch"] == 0
    assert a["bytes"] == sum(len(b) for b in FILES.values()) and a["retransmits"] >= 1
    assert a["last_file"] == "initrd.img" and a["first_seen"] <= a["last_seen"]
    assert rack.value("massboot_boot_duration_seconds_count") == 1
    assert 0 < (rack.value("massboot_boot_duration_seconds_sum") or 0) < WAIT * 10

    # DHCP
    v = rack.value
    assert v("massboot_dhcp_packets_received_total", type="discover") == 7   # A twice, B C D E F
    assert v("massboot_dhcp_packets_received_total", type="request") == 3
    assert v("massboot_dhcp_replies_sent_total", type="offer") == 4
    assert v("massboot_dhcp_replies_sent_total", type="ack") == 3
    assert v("massboot_dhcp_replies_sent_total", type="nak") == 0
    assert v("massboot_dhcp_pool_exhausted_total", scope="main") == 1
    assert v("massboot_dhcp_acl_decisions_total", acl="http", verdict="denied") == 1
    assert v("massboot_dhcp_acl_decisions_total", acl="http", verdict="error") == 1
    assert (v("massboot_dhcp_acl_decisions_total", acl="http", verdict="allowed") or 0) >= 4
    assert v("massboot_dhcp_arch_fallbacks_total") == 1
    assert v("massboot_notifications_total", result="sent") == 3             # the 3 ACKs
    assert v("massboot_notifications_total", result="failed") == 0
    counts_by_scope = rack.services.dhcp.lease_counts()  # type: ignore[union-attr]
    assert v("massboot_dhcp_leases_in_use", scope="main") == counts_by_scope["main"][0] >= 2
    assert v("massboot_dhcp_leases_capacity", scope="main") == counts_by_scope["main"][1] == 3
    assert v("massboot_malformed_packets_total", protocol="dhcp", reason="too_short") == 1
    assert v("massboot_malformed_packets_total", protocol="tftp", reason="too_short") == 1
    assert v("massboot_malformed_packets_total", protocol="tftp", reason="bad_opcode") == 1

    # TFTP
    assert v("massboot_tftp_transfers_started_total") == 5
    assert v("massboot_tftp_transfers_completed_total") == 5
    assert sum(v("massboot_tftp_transfers_failed_total", reason=r) or 0 for r in ("timeout", "other")) == 0
    assert v("massboot_tftp_requests_denied_total", reason="not_found") == 1
    sizes = [len(FILES["pxelinux.0"])] * 2 + [len(FILES[n]) for n in ("pxelinux.cfg/default", "initrd.img")]
    assert v("massboot_tftp_sent_bytes_total") == sum(sizes) + len(FILES["vmlinuz"])
    assert v("massboot_tftp_data_blocks_total") == (sum(s // TFTP_BLKSIZE + 1 for s in sizes)
                                                    + len(FILES["vmlinuz"]) // 512 + 1)
    assert (v("massboot_tftp_retransmits_total") or 0) >= 1
    assert v("massboot_tftp_transfer_duration_seconds_count") == 5
    assert v("massboot_tftp_time_to_first_byte_seconds_count") == 5
    assert v("massboot_tftp_active_transfers") == 0
    assert v("massboot_workers_busy", pool="tftp") == 0
    assert v("massboot_workers_capacity", pool="tftp") == 1000
    assert v("massboot_workers_busy", pool="dhcp") == 0
    assert v("massboot_workers_capacity", pool="dhcp") == 256

    # the remote cache: each file fetched once from the mirror, the boot file reused
    assert v("massboot_cache_misses_total") == 5                      # 4 files + the missing probe
    assert (v("massboot_cache_hits_total") or 0) + (v("massboot_cache_coalesced_total") or 0) == 2
    assert v("massboot_cache_upstream_bytes_total") == sum(len(b) for b in FILES.values())
    assert v("massboot_cache_upstream_failures_total", reason="not_found") == 1
    assert v("massboot_cache_upstream_failures_total", reason="error") == 0
    assert v("massboot_cache_stored_files") == 4

    # build info and process
    assert v("massboot_build_info", version=__version__, python=__import__("platform").python_version()) == 1
    assert (v("process_start_time_seconds") or 0) > 0

    # later: with no progress for stall_after, every unfinished client is stalled
    rack.metrics.progress.clock = lambda: time.time() + rack.stall_after + 1
    assert rack.phase_count("stalled") == 4 and rack.phase_count("done") == 1
    assert {c["mac"] for c in rack.clients(phase="stalled")} == {MAC_B, MAC_C, MAC_D, MAC_F}
    assert rack.client(MAC_B)["stalled_in"] == "loader"


def test_metrics_endpoint_over_http(rack: Rack) -> None:
    boot_rack(rack)
    response = requests.get(rack.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("massboot_boot_clients", (("phase", "done"),))] == 1
    assert samples[("massboot_tftp_transfers_completed_total", ())] == 5
    assert samples[("massboot_dhcp_replies_sent_total", (("type", "ack"),))] == 3
    assert samples[("massboot_build_info", (("python", __import__("platform").python_version()),
                                            ("version", __version__)))] == 1
    # low cardinality: no MAC, IP or file name anywhere in the exposition
    for needle in ("52:54:00", "02:00:00", "127.0.0.100", "pxelinux", "vmlinuz", "initrd"):
        assert needle not in text
    # every family is massboot_ or the standard process_ / python_ ones
    assert all(name.startswith(("massboot_", "process_")) for name in families)

    health = requests.get(rack.url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {
        "status": "ok", "dhcp": "up", "tftp": "up", "tftp_data_path": rack.services.tftp.data_path,
        "dhcp_codec": CODEC}
    assert requests.get(rack.url + "/nope", timeout=5).status_code == 404
    assert requests.get(rack.url + "/clients", params={"phase": "nope"}, timeout=5).status_code == 400
    records = requests.get(rack.url + "/clients", timeout=5).json()
    assert {"mac", "ip", "uuid", "arch", "phase", "last_file", "bytes", "retransmits", "first_seen",
            "last_seen"} <= set(records[0])

    rack.services.dhcp._reader.kill()  # type: ignore[union-attr]
    health = requests.get(rack.url + "/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["dhcp"] == "down"


def test_dhcp_counters_count_every_event_at_once() -> None:
    """The DHCP counters (incremented inline, issue #14): each known type its own series,
    anything else ``other``, right after every event."""
    registry = CollectorRegistry()
    bus = EventBus()
    Metrics(MetricsConfig(port=0), bus, registry=registry)
    v = registry.get_sample_value
    received = dict(mac="52:54:00:00:00:01", relayed=False, pxe=True, ipxe=False, uuid=None, arch=0)
    reply = dict(mac="52:54:00:00:00:01", ip="10.0.0.5", pxe=True, arch=0, phase="pxe", file="f",
                 ipxe=False, uuid=None)
    for msgtype in ("discover", "request", "bootp", "inform"):
        bus.emit("dhcp.received", msgtype=msgtype, **received)
        assert v("massboot_dhcp_packets_received_total", {"type": msgtype}) == 1
        bus.emit("dhcp.received", msgtype=msgtype, **received)
        assert v("massboot_dhcp_packets_received_total", {"type": msgtype}) == 2
    for other in (None, 7, "weird"):
        bus.emit("dhcp.received", msgtype=other, **received)
        bus.emit("dhcp.reply", msgtype=other, **reply)
    assert v("massboot_dhcp_packets_received_total", {"type": "other"}) == 3
    assert v("massboot_dhcp_replies_sent_total", {"type": "other"}) == 3
    for msgtype in ("offer", "ack", "nak", "bootp"):
        bus.emit("dhcp.reply", msgtype=msgtype, **reply)
        assert v("massboot_dhcp_replies_sent_total", {"type": msgtype}) == 1
    bus.emit("dhcp.reply", msgtype="offer", proxy=True, **reply)
    assert v("massboot_dhcp_replies_sent_total", {"type": "offer"}) == 2
    assert v("massboot_dhcp_proxy_replies_sent_total", {"type": "offer"}) == 1
    assert v("massboot_dhcp_proxy_replies_sent_total", {"type": "ack"}) == 0


def test_labels_stay_bounded() -> None:
    """Unknown message types, reasons and verdicts become ``other``; nothing client-chosen leaks."""
    registry = CollectorRegistry()
    bus = EventBus()
    metrics = Metrics(MetricsConfig(port=0), bus, registry=registry)
    bus.emit("dhcp.received", msgtype="leasequery-from-52:54:00:00:00:01", mac="52:54:00:00:00:01",
             relayed=False, pxe=False, ipxe=False, uuid=None, arch=None)
    bus.emit("dhcp.ignored", mac="x", reason="unhandled_inform")
    bus.emit("dhcp.ignored", mac="x", reason="weird reason")
    bus.emit("dhcp.acl", acl="ldap", verdict="maybe", mac="x")
    bus.emit("dhcp.malformed", reason="option_12_in_options_truncated")   # not a Reason: other
    bus.emit("dhcp.malformed", reason=DhcpReason.BAD_OP)
    bus.emit("tftp.malformed", reason=TftpReason.BAD_REQUEST, ip="10.0.0.1", port=1, detail="RRQ with an "
             "empty filename")
    bus.emit("tftp.malformed", reason="something new /etc/passwd", ip="10.0.0.1", port=1, detail="?")
    bus.emit("tftp.fail", ip="10.0.0.1", port=1, name="x", reason="cosmic_ray", bytes=0, duration=1.0,
             retransmits=2, blocks=0, blocks_sent=1, detail="")
    bus.emit("tftp.denied", ip="10.0.0.1", port=1, name="x", reason="quota", code=0, message="quota")
    bus.emit("cache.hit", url="http://m/x", bytes=1)
    bus.emit("cache.coalesced", url="http://m/x", bytes=1)
    bus.emit("cache.miss", url="http://m/y", bytes=None, prefetch=True)
    bus.emit("cache.upstream", url="http://m/y", bytes=10, status=200)
    bus.emit("cache.upstream", url="http://m/z", bytes=3, status=None, error="upstream failed: HTTP 500")
    bus.emit("cache.upstream", url="http://m/w", bytes=0, status=None, error="File not found")
    bus.emit("cache.upstream", url="http://m/v", bytes=0, status=None, error="gone", reason="not_found")
    v = registry.get_sample_value
    assert v("massboot_dhcp_packets_received_total", {"type": "other"}) == 1
    assert v("massboot_dhcp_requests_ignored_total", {"reason": "unhandled"}) == 1
    assert v("massboot_dhcp_requests_ignored_total", {"reason": "other"}) == 1
    assert v("massboot_dhcp_acl_decisions_total", {"acl": "other", "verdict": "other"}) == 1
    assert v("massboot_malformed_packets_total", {"protocol": "dhcp", "reason": "other"}) == 1
    assert v("massboot_malformed_packets_total", {"protocol": "dhcp", "reason": "bad_op"}) == 1
    assert v("massboot_malformed_packets_total", {"protocol": "tftp", "reason": "bad_request"}) == 1
    assert v("massboot_malformed_packets_total", {"protocol": "tftp", "reason": "other"}) == 1
    assert v("massboot_tftp_transfers_failed_total", {"reason": "other"}) == 1
    assert v("massboot_tftp_retransmits_total") == 2
    assert v("massboot_tftp_requests_denied_total", {"reason": "other"}) == 1
    assert v("massboot_cache_hits_total") == 1 and v("massboot_cache_coalesced_total") == 1
    assert v("massboot_cache_misses_total") == 1
    assert v("massboot_cache_upstream_bytes_total") == 13
    assert v("massboot_cache_upstream_failures_total", {"reason": "error"}) == 1
    assert v("massboot_cache_upstream_failures_total", {"reason": "not_found"}) == 2
    label_values = {value for m in registry.collect() for s in m.samples for value in s.labels.values()}
    assert not any(":" in value or "/" in value for value in label_values)
    assert len(metrics.progress) == 1   # the strange DHCP packet's sender is tracked, by MAC only


def test_without_servers() -> None:
    """``-t`` / ``-p`` modes or no services: the exporter still serves, with what it has."""
    registry = CollectorRegistry()
    metrics = Metrics(MetricsConfig(port=0), EventBus(), registry=registry)
    metrics.start()
    try:
        url = f"http://{HOST}:{metrics.port}"
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
        assert requests.get(url + "/clients", timeout=5).json() == []
        assert "massboot_boot_clients" in requests.get(url + "/metrics", timeout=5).text
        assert registry.get_sample_value("massboot_dhcp_leases_in_use", {"scope": "main"}) is None
    finally:
        metrics.stop()


class FakeDhcp:
    """A :class:`massboot.metrics.DhcpStatus` without a server behind it."""

    alive = True

    def workers(self) -> tuple[int, int]:
        return 2, 10

    def lease_counts(self) -> dict[str, tuple[int, int]]:
        return {"main": (3, 20), "rack2": (0, 5)}

    def lease_stats(self) -> dict[str, LeaseStats]:
        return {"main": LeaseStats(offers_expired=4, reclaimed=2, probation_ended=1), "rack2": LeaseStats()}

    def lease_db_up(self) -> dict[str, bool]:
        return {}

    def client_identity(self, mac: str) -> tuple[str | None, int | None]:
        return (UUID, 7) if mac == MAC_A else (None, None)

    def acl_workers(self) -> tuple[int, int] | None:
        return 1, 32

    def probe_workers(self) -> tuple[int, int]:
        return 0, 10

    def guard_counts(self) -> dict[str, int]:
        return {"clients": 5, "clients_evicted": 0, "acl_calls": 9, "acl_cache_hits": 4,
                "acl_refused": 0, "receive_errors": 3}


class FakeCache:
    remote = True
    cached_bytes = 1234
    cached_files = 2
    used_bytes = 2345
    downloads_active = 1


def test_status_interfaces() -> None:
    """Scrape-time values come from the status objects given, the TFTP pool's size included.

    The exporter used to read that size as ``services.tftp.pool_size``, which TftpServer never
    had: it fell back to ``[tftpd] pool_size`` of the config, and to 0 without one.
    """
    registry = CollectorRegistry()
    bus = EventBus()
    tftp = TftpServer(HOST, 0, files=None, events=bus, pool_size=7)   # type: ignore[arg-type]
    metrics = Metrics(MetricsConfig(port=0), bus, dhcp=FakeDhcp(), tftp=tftp, cache=FakeCache(),
                      scopes=("main", "rack2"), registry=registry)
    v = registry.get_sample_value
    assert v("massboot_workers_capacity", {"pool": "tftp"}) == 7
    assert v("massboot_workers_busy", {"pool": "tftp"}) == 0
    assert (v("massboot_workers_busy", {"pool": "dhcp"}), v("massboot_workers_capacity", {"pool": "dhcp"})) \
        == (2, 10)
    assert v("massboot_dhcp_leases_in_use", {"scope": "rack2"}) == 0
    assert v("massboot_dhcp_leases_capacity", {"scope": "main"}) == 20
    assert v("massboot_dhcp_offers_expired_total", {"scope": "main"}) == 4
    assert v("massboot_dhcp_leases_reclaimed_total", {"scope": "main"}) == 2
    assert v("massboot_dhcp_probations_ended_total", {"scope": "main"}) == 1
    assert v("massboot_dhcp_leases_reclaimed_total", {"scope": "rack2"}) == 0
    assert v("massboot_dhcp_receive_errors_total") == 3 and v("massboot_dhcp_acl_calls_total") == 9
    assert v("massboot_dhcp_codec", {"codec": CODEC}) == 1
    assert v("massboot_dhcp_codec", {"codec": "python" if CODEC == "compiled" else "compiled"}) == 0
    assert v("massboot_workers_busy", {"pool": "dhcp_acl"}) == 1
    assert v("massboot_workers_capacity", {"pool": "dhcp_probe"}) == 10
    assert v("massboot_cache_stored_bytes") == 1234 and v("massboot_cache_stored_files") == 2
    assert v("massboot_cache_used_bytes") == 2345 and v("massboot_cache_downloads_active") == 1
    bus.emit("dhcp.exhausted", mac=MAC_A, scope="rack2")
    bus.emit("dhcp.exhausted", mac=MAC_A, scope="rack9")          # not configured: bounded to other
    assert v("massboot_dhcp_pool_exhausted_total", {"scope": "rack2"}) == 1
    assert v("massboot_dhcp_pool_exhausted_total", {"scope": "other"}) == 1
    bus.emit("dhcp.received", msgtype="discover", mac=MAC_A, relayed=True, pxe=True, ipxe=False, uuid=None,
             arch=None)
    assert metrics.clients()[0]["uuid"] == UUID and metrics.clients()[0]["arch"] == 7
    assert metrics.health() == (False, {"dhcp": "up", "tftp": "down"})    # the TFTP reader never started


@pytest.mark.parametrize(("protocol", "text", "reason"), [
    *(("dhcp", r, r.value) for r in DhcpReason if r != DhcpReason.NOT_BYTES),
    ("dhcp", DhcpReason.NOT_BYTES, "other"),
    *(("tftp", r, r.value) for r in TftpReason),
    ("dhcp", "truncated", "truncated"),
    ("tftp", "too_long", "too_long"),
    ("dhcp", "bad_message_type", "bad_message_type"),
    ("dhcp", "not_request", "not_request"),
    # events carry exc.reason: a codec's message is not read
    ("dhcp", "option_53_in_options_truncated", "other"),
    ("tftp", "truncated ACK", "other"),
    ("dhcp", None, "other"),
    ("tftp", None, "other"),
    ("tftp", 7, "other"),
])
def test_malformed_reasons(protocol: str, text: object, reason: str) -> None:
    assert malformed_reason(protocol, text) == reason


def test_lease_lifecycle_counters() -> None:
    """README, "Lease lifecycle": probes by result, refused DECLINEs as an ignored reason."""
    registry = CollectorRegistry()
    bus = EventBus()
    Metrics(MetricsConfig(port=0), bus, registry=registry)
    v = registry.get_sample_value
    assert v("massboot_dhcp_probes_total", {"result": "in_use"}) == 0
    bus.emit("dhcp.probe", mac=MAC_A, ip="10.0.0.5", result="in_use", scope="main")
    bus.emit("dhcp.probe", mac=MAC_A, ip="10.0.0.6", result="free", scope="main")
    bus.emit("dhcp.ignored", mac=MAC_A, reason="decline_refused", phase="os", detail="other_mac")
    bus.emit("dhcp.ignored", mac=MAC_A, reason="address_in_use", phase="pxe")
    assert v("massboot_dhcp_probes_total", {"result": "in_use"}) == 1
    assert v("massboot_dhcp_probes_total", {"result": "free"}) == 1
    assert v("massboot_dhcp_requests_ignored_total", {"reason": "decline_refused"}) == 1
    assert v("massboot_dhcp_requests_ignored_total", {"reason": "address_in_use"}) == 1
