"""The boot-progress tracker, fed with synthetic events and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from massboot.events import Event
from massboot.progress import PHASES, ProgressTracker

MAC = "52:54:00:00:00:01"
MAC2 = "52:54:00:00:00:02"
IP = "10.0.0.100"
IP2 = "10.0.0.101"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Feed:
    """A tracker, a fake clock and helpers that emit what the servers emit."""

    def __init__(self, stall_after: float = 60.0, **kwargs: Any) -> None:
        self.clock = Clock()
        self.boots: list[float] = []
        self.tracker = ProgressTracker(stall_after, clock=self.clock, on_boot_complete=self.boots.append,
                                       **kwargs)

    def emit(self, kind: str, after: float = 1.0, **fields: Any) -> None:
        self.clock.now += after
        self.tracker(Event(kind, self.clock.now, fields))

    def phase(self, mac: str = MAC) -> str | None:
        return self.tracker.phase(mac)

    # -- DHCP
    def received(self, msgtype: str, mac: str = MAC, **fields: Any) -> None:
        self.emit("dhcp.received", msgtype=msgtype, mac=mac, relayed=False, **fields)

    def reply(self, msgtype: str, mac: str = MAC, ip: str = IP, phase: str = "pxe", file: str | None =
              "pxelinux.0", **fields: Any) -> None:
        self.emit("dhcp.reply", msgtype=msgtype, mac=mac, ip=ip, pxe=phase == "pxe", arch=0, phase=phase,
                  file=file if phase == "pxe" else None, **fields)

    def pxe_dora(self, mac: str = MAC, ip: str = IP, **fields: Any) -> None:
        self.received("discover", mac)
        self.reply("offer", mac, ip, **fields)
        self.received("request", mac)
        self.reply("ack", mac, ip, **fields)

    def os_dora(self, mac: str = MAC, ip: str = IP) -> None:
        self.received("discover", mac)
        self.reply("offer", mac, ip, phase="os")
        self.received("request", mac)
        self.reply("ack", mac, ip, phase="os")

    # -- TFTP
    def start(self, name: str, ip: str = IP, port: int = 2000) -> None:
        self.emit("tftp.start", ip=ip, port=port, name=name, blksize=1468, windowsize=1)

    def done(self, name: str, ip: str = IP, port: int = 2000, nbytes: int = 1000, retransmits: int = 0,
             after: float = 1.0) -> None:
        self.emit("tftp.done", after, ip=ip, port=port, name=name, bytes=nbytes, duration=after, ttfb=0.01,
                  retransmits=retransmits)

    def fail(self, name: str, ip: str = IP, port: int = 2000, reason: str = "client_error") -> None:
        self.emit("tftp.fail", ip=ip, port=port, name=name, reason=reason, bytes=0, duration=0.1,
                  retransmits=0)

    def transfer(self, name: str, ip: str = IP, nbytes: int = 1000, retransmits: int = 0) -> None:
        self.start(name, ip)
        self.done(name, ip, nbytes=nbytes, retransmits=retransmits)


def test_full_boot_walks_every_phase_in_order() -> None:
    f = Feed()
    f.received("discover")
    assert f.phase() == "discovering"
    discover_at = f.clock.now
    f.reply("offer")
    assert f.phase() == "offered"
    f.received("request")
    f.reply("ack")
    assert f.phase() == "bound"
    f.start("pxelinux.0")
    assert f.phase() == "bound"                      # sending, not sent yet
    f.done("pxelinux.0", nbytes=42_000)
    assert f.phase() == "loader"
    f.start("pxelinux.cfg/default")
    assert f.phase() == "kernel"                     # a further file
    f.done("pxelinux.cfg/default", nbytes=200)
    f.transfer("vmlinuz", nbytes=8_000_000, retransmits=3)
    f.transfer("initrd.img", nbytes=30_000_000, retransmits=1)
    last_end = f.clock.now
    assert f.phase() == "kernel"
    f.received("discover")
    f.reply("offer", phase="os")
    assert f.phase() == "os"
    f.received("request")
    f.reply("ack", phase="os")
    assert f.phase() == "done"
    assert f.boots == [pytest.approx(last_end - discover_at)]
    record = f.tracker.clients()[0]
    assert record["mac"] == MAC and record["ip"] == IP and record["phase"] == "done"
    assert record["bytes"] == 42_000 + 200 + 8_000_000 + 30_000_000
    assert record["retransmits"] == 4 and record["files"] == 4
    assert record["last_file"] == "initrd.img"
    assert record["first_seen"] == discover_at and record["last_seen"] == f.clock.now
    assert set(record) >= {"mac", "ip", "uuid", "arch", "phase", "last_file", "bytes", "retransmits",
                           "first_seen", "last_seen"}


def test_counts_report_every_phase() -> None:
    f = Feed()
    assert f.tracker.counts() == dict.fromkeys(PHASES, 0)
    f.pxe_dora()
    f.received("discover", MAC2)
    assert f.tracker.counts() == {**dict.fromkeys(PHASES, 0), "bound": 1, "discovering": 1}


def test_a_failed_or_probing_transfer_is_not_the_loader() -> None:
    f = Feed()
    f.pxe_dora()
    f.start("pxelinux.0")
    f.fail("pxelinux.0", reason="client_error")      # EDK2's tsize probe: ERROR after the OACK
    assert f.phase() == "bound"
    f.emit("tftp.denied", ip=IP, name="pxelinux.0", reason="not_found")
    assert f.phase() == "bound"
    f.transfer("pxelinux.0")
    assert f.phase() == "loader"


def test_the_boot_file_again_is_not_a_further_file() -> None:
    f = Feed()
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.start("pxelinux.0")                            # a retry of the same file
    assert f.phase() == "loader"
    f.done("pxelinux.0")
    assert f.phase() == "loader"


def test_refused_config_probes_do_not_count() -> None:
    f = Feed()
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.emit("tftp.denied", ip=IP, name="pxelinux.cfg/01-52-54-00-00-00-01", reason="not_found")
    assert f.phase() == "loader"


def test_stalled_after_stall_after_without_progress() -> None:
    f = Feed(stall_after=60)
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.start("vmlinuz")
    f.clock.now += 3600                              # a long transfer in progress is not a stall
    assert f.phase() == "kernel"
    f.done("vmlinuz")
    f.clock.now += 59
    assert f.phase() == "kernel"
    f.clock.now += 2
    assert f.phase() == "stalled"
    assert f.tracker.counts()["stalled"] == 1 and f.tracker.counts()["kernel"] == 0
    record = f.tracker.clients()[0]
    assert record["phase"] == "stalled" and record["stalled_in"] == "kernel"
    f.transfer("initrd.img")                         # progress again
    assert f.phase() == "kernel"


def test_retransmitted_requests_are_not_progress() -> None:
    f = Feed(stall_after=60)
    f.received("discover")
    f.emit("dhcp.exhausted", mac=MAC, scope="main")
    for _ in range(10):
        f.received("discover", after=10)             # retries, still no address
    assert f.phase() == "stalled"
    assert f.tracker.clients()[0]["stalled_in"] == "discovering"


def test_done_is_never_stalled() -> None:
    f = Feed(stall_after=60)
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.os_dora()
    f.clock.now += 10_000
    assert f.phase() == "done"


def test_os_ack_with_a_transfer_in_progress_is_done_when_it_ends() -> None:
    f = Feed()
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.start("initrd.img")
    f.os_dora()
    assert f.phase() == "os"
    f.done("initrd.img")
    assert f.phase() == "done"
    assert len(f.boots) == 1
    f.start("late.cfg")                              # the OS fetches something: back to os
    assert f.phase() == "os"
    f.fail("late.cfg")
    assert f.phase() == "done"
    assert len(f.boots) == 1                         # reported once per boot


def test_reboot_into_pxe_starts_a_new_boot() -> None:
    f = Feed()
    f.pxe_dora()
    f.transfer("pxelinux.0", nbytes=500)
    f.os_dora()
    assert f.phase() == "done"
    f.received("discover")
    second_discover = f.clock.now
    f.reply("offer")
    assert f.phase() == "offered"
    record = f.tracker.get(MAC)
    assert record is not None
    assert record.boots == 2 and record.bytes == 0 and record.files == 0
    assert record.boot_started == second_discover
    f.received("request")
    f.reply("ack")
    f.transfer("pxelinux.0")
    last_end = f.clock.now
    f.os_dora()
    assert f.phase() == "done"
    assert len(f.boots) == 2 and f.boots[1] == pytest.approx(last_end - second_discover)


def test_pxe_flag_on_the_request_starts_the_new_boot_at_once() -> None:
    f = Feed()
    f.pxe_dora()
    f.transfer("pxelinux.0")
    f.os_dora()
    f.received("discover", pxe=True, ipxe=False)
    assert f.phase() == "discovering"
    f.received("discover", pxe=False)               # an OS DISCOVER does not
    assert f.phase() == "discovering"


@pytest.mark.parametrize(("ipxe", "expected"), [(True, "loader"), (None, "loader"), (False, "offered")])
def test_pxe_request_after_the_loader(ipxe: bool | None, expected: str) -> None:
    """iPXE chainloading continues the boot; a ROM starting over begins a new one."""
    f = Feed()
    f.pxe_dora(file="undionly.kpxe")
    f.transfer("undionly.kpxe")
    assert f.phase() == "loader"
    fields = {} if ipxe is None else {"ipxe": ipxe}
    f.received("discover")
    f.reply("offer", file="boot.ipxe", **fields)
    assert f.phase() == expected
    if expected == "loader":
        f.reply("ack", file="boot.ipxe", **fields)
        f.start("boot.ipxe")
        assert f.phase() == "kernel"


def test_tftp_from_an_unknown_address_is_not_tracked() -> None:
    f = Feed()
    f.transfer("pxelinux.0", ip="10.9.9.9")
    assert len(f.tracker) == 0


def test_clients_turned_away_are_forgotten() -> None:
    f = Feed()
    f.received("discover")
    f.emit("dhcp.acl", acl="mac", verdict="denied", mac=MAC)
    assert f.phase() is None
    f.received("discover", MAC2)                     # a non-PXE client, allow_simple_dhcp off
    f.emit("dhcp.ignored", mac=MAC2, reason="idle_state", phase="os")
    assert f.phase(MAC2) is None
    f.received("discover")
    f.reply("offer")
    f.received("request")
    f.emit("dhcp.ignored", mac=MAC, reason="other_server", phase="pxe")   # it chose another server
    assert f.phase() is None
    f.received("discover", MAC2)                     # a stranger while the HTTP ACL is all busy
    f.emit("dhcp.ignored", mac=MAC2, reason="acl_busy", phase="pxe")
    assert f.phase(MAC2) is None
    assert len(f.tracker) == 0


def test_clients_left_waiting_are_kept() -> None:
    f = Feed()
    f.received("discover")
    f.emit("dhcp.acl", acl="http", verdict="error", mac=MAC)        # the ACL server did not answer
    f.emit("dhcp.ignored", mac=MAC, reason="in_flight")
    assert f.phase() == "discovering"
    f.pxe_dora()
    f.emit("dhcp.acl", acl="http", verdict="denied", mac=MAC)       # later denials keep the record
    assert f.phase() == "bound"


def test_os_only_client_is_done_without_a_boot_duration() -> None:
    f = Feed()
    f.received("request")
    f.reply("ack", phase="os")
    assert f.phase() == "done"
    assert f.boots == []


def test_nak_changes_nothing() -> None:
    f = Feed()
    f.pxe_dora()
    f.reply("nak", ip="0.0.0.0")
    assert f.phase() == "bound"
    assert f.tracker.get(MAC).ip == IP             # type: ignore[union-attr]


def test_an_address_taken_back_and_time_that_never_goes_back() -> None:
    # the reply handler's inline update of a known client (issue #14): a client whose
    # address went to another client and came back is found by it again; an event stamped
    # earlier than the last one seen does not move last_seen back
    f = Feed()
    f.pxe_dora(MAC, IP)
    f.pxe_dora(MAC2, IP)                             # IP moved to MAC2...
    assert f.tracker.mac_for(IP) == MAC2
    f.reply("ack", MAC, IP)                          # ...and back to MAC, whose record still says IP
    assert f.tracker.mac_for(IP) == MAC and f.tracker.get(MAC).ip == IP     # type: ignore[union-attr]
    seen = f.tracker.get(MAC).last_seen               # type: ignore[union-attr]
    f.emit("dhcp.reply", after=-5.0, msgtype="ack", mac=MAC, ip=IP, pxe=True, arch=0, phase="pxe",
           file="pxelinux.0")
    f.emit("dhcp.received", after=-5.0, msgtype="request", mac=MAC, relayed=False)
    assert f.tracker.get(MAC).last_seen == seen       # type: ignore[union-attr]
    f.emit("dhcp.received", after=20.0, msgtype="request", mac=MAC, relayed=False)
    assert f.tracker.get(MAC).last_seen == f.clock.now == seen + 10     # type: ignore[union-attr]


def test_ip_to_mac_follows_the_latest_reply() -> None:
    f = Feed()
    f.pxe_dora(MAC, IP)
    f.pxe_dora(MAC2, IP2)
    f.pxe_dora(MAC, IP2)                             # the address moved (a relay subnet, a new lease)
    assert f.tracker.mac_for(IP2) == MAC and f.tracker.mac_for(IP) is None
    f.transfer("pxelinux.0", ip=IP2)
    assert f.phase(MAC) == "loader" and f.phase(MAC2) == "bound"


def test_memory_is_bounded() -> None:
    f = Feed(max_clients=3)
    for i in range(10):
        f.pxe_dora(f"52:54:00:00:01:{i:02x}", f"10.0.1.{i}")
    assert len(f.tracker) == 3
    assert [c["mac"] for c in f.tracker.clients()] == [f"52:54:00:00:01:{i:02x}" for i in (7, 8, 9)]
    assert f.tracker.mac_for("10.0.1.0") is None and f.tracker.mac_for("10.0.1.9") is not None
    assert len(f.tracker._by_ip) == 3


def test_recently_active_clients_survive_eviction() -> None:
    f = Feed(max_clients=2)
    f.pxe_dora(MAC, IP)
    f.pxe_dora(MAC2, IP2)
    f.transfer("pxelinux.0", ip=IP)                  # MAC is now the most recent
    f.pxe_dora("52:54:00:00:00:03", "10.0.0.103")
    assert f.phase(MAC) == "loader" and f.phase(MAC2) is None


def test_uuid_and_arch_from_events() -> None:
    f = Feed()
    f.received("discover", uuid="12345678-abcd-ef00-1111-abcdefabcdef", arch=7)
    record = f.tracker.clients()[0]
    assert record["uuid"] == "12345678-abcd-ef00-1111-abcdefabcdef" and record["arch"] == 7


def test_other_events_are_ignored() -> None:
    f = Feed()
    f.emit("cache.hit", url="http://x/y", bytes=1)
    f.emit("dhcp.malformed", reason="truncated")
    f.emit("tftp.done", ip=IP, port=1, name="x", bytes=1, duration=1.0, ttfb=0.1, retransmits=0)
    assert len(f.tracker) == 0


# -- HTTP (README, "HTTP boot"): a file fetched over HTTP counts as a TFTP transfer


def http(f: Feed, name: str, status: int = 200, method: str = "GET", nbytes: int = 1000,
         fail: str | None = None, ip: str = IP) -> None:
    body = method == "GET" and status in (200, 206)
    if body:
        f.emit("http.start", ip=ip, port=3000, method=method, name=name, status=status, bytes=nbytes)
    if fail is not None:
        f.emit("http.fail", ip=ip, port=3000, method=method, name=name, status=status, bytes=nbytes // 2,
               duration=0.5, body=body, reason=fail, detail="reset")
    else:
        f.emit("http.done", ip=ip, port=3000, method=method, name=name, status=status,
               bytes=nbytes if body else 0, duration=0.5, body=body)


def test_ipxe_over_http_walks_the_same_phases() -> None:
    """BIOS two-stage: undionly.kpxe by TFTP, then the script, kernel and initrd over HTTP."""
    f = Feed()
    f.pxe_dora(file="undionly.kpxe")
    f.transfer("undionly.kpxe", nbytes=70_000)
    assert f.phase() == "loader"
    f.pxe_dora(file="http://10.0.0.1/boot.ipxe", ipxe=True)     # iPXE's own DHCP: a chainload
    assert f.phase() == "loader"
    http(f, "boot.ipxe", status=404)                             # an error is not a transfer
    http(f, "vmlinuz", method="HEAD")
    assert f.phase() == "loader" and f.tracker.get(MAC).transfers == 0
    http(f, "boot.ipxe", nbytes=100)
    assert f.phase() == "kernel"
    f.emit("http.start", ip=IP, port=3001, method="GET", name="vmlinuz", status=200, bytes=8_000_000)
    assert f.tracker.get(MAC).transfers == 1 and f.tracker.get(MAC).last_file == "vmlinuz"
    f.emit("http.done", ip=IP, port=3001, method="GET", name="vmlinuz", status=200, bytes=8_000_000,
           duration=1.0, body=True)
    http(f, "initrd.img", nbytes=1000, fail="client_gone")       # cut: counted bytes, no file
    http(f, "initrd.img", status=206, nbytes=30_000_000)
    f.os_dora()
    assert f.phase() == "done" and len(f.boots) == 1
    record = f.tracker.get(MAC)
    assert record.files == 4 and record.bytes == 70_000 + 100 + 8_000_000 + 500 + 30_000_000


def test_uefi_http_boot_file_is_the_loader() -> None:
    f = Feed()
    f.pxe_dora(file="http://10.0.0.1/shimx64.efi")
    http(f, "shimx64.efi", nbytes=900_000)
    assert f.phase() == "loader" and f.tracker.get(MAC).loader_file == "shimx64.efi"
    http(f, "grubx64.efi")
    assert f.phase() == "kernel"
