"""UDP notifications: exact payloads, targets, delivery on loopback (README, "Notifications")."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from massboot.events import EventBus, EventRecorder
from massboot.notify import Notifier, format_notification, parse_targets

MAC = bytes.fromhex("00aa55123456")
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"


@pytest.mark.parametrize(
    ("kind", "uuid", "expected"),
    [
        ("BOOT", UUID, f"BOOT,{UUID},00:AA:55:12:34:56,192.168.25.100"),
        ("BOOT", None, "BOOT,00:AA:55:12:34:56,192.168.25.100"),
        ("LEASE", UUID, f"LEASE,{UUID},00:AA:55:12:34:56,192.168.25.100"),
        ("LEASE", None, "LEASE,00:AA:55:12:34:56,192.168.25.100"),
        ("RELEASE", UUID, f"RELEASE,{UUID},00:AA:55:12:34:56,192.168.25.100"),
        ("release", None, "RELEASE,00:AA:55:12:34:56,192.168.25.100"),
    ],
)
def test_exact_payload(kind: str, uuid: str | None, expected: str) -> None:
    payload = format_notification(kind, MAC, "192.168.25.100", uuid)
    assert payload == expected.encode("ascii")
    assert not payload.endswith(b"\n")


def test_mac_is_upper_case_and_uuid_lower_case() -> None:
    chaddr = bytes.fromhex("aabbccddeeff") + b"\0" * 10
    payload = format_notification("LEASE", chaddr, "10.0.0.1", UUID.upper())
    assert payload == f"LEASE,{UUID},AA:BB:CC:DD:EE:FF,10.0.0.1".encode()


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="OFFER"):
        format_notification("OFFER", MAC, "10.0.0.1", None)


def test_parse_targets() -> None:
    assert parse_targets("192.168.26.201:12345;192.168.26.200:12345") == [
        ("192.168.26.201", 12345),
        ("192.168.26.200", 12345),
    ]
    assert parse_targets(" collector.example:9 ; ") == [("collector.example", 9)]
    assert parse_targets("[::1]:5000") == [("::1", 5000)]
    assert parse_targets("") == []


@pytest.mark.parametrize("bad", ["nohost", "host:", ":123", "host:abc", "host:0", "host:70000", "a b:1"])
def test_bad_targets_name_the_entry(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_targets(f"127.0.0.1:9;{bad}")
    assert repr(bad) in str(info.value)


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def test_datagrams_reach_every_target(listeners) -> None:
    bus = EventBus()
    recorder = EventRecorder()
    bus.subscribe(recorder)
    targets = [sock.getsockname() for sock in listeners]
    notifier = Notifier(targets, events=bus)
    try:
        notifier.send("BOOT", MAC, "10.0.0.7", UUID)
        notifier.send("LEASE", MAC, "10.0.0.7", None)
        notifier.send("RELEASE", MAC, "10.0.0.7", UUID)
        for sock in listeners:
            assert sock.recvfrom(2048)[0] == f"BOOT,{UUID},00:AA:55:12:34:56,10.0.0.7".encode()
            assert sock.recvfrom(2048)[0] == b"LEASE,00:AA:55:12:34:56,10.0.0.7"
            assert sock.recvfrom(2048)[0] == f"RELEASE,{UUID},00:AA:55:12:34:56,10.0.0.7".encode()
    finally:
        notifier.close()
    events = recorder.of("dhcp.notify")
    assert len(events) == 6
    assert all(e.get("ok") is True for e in events)
    assert {e.get("target") for e in events} == {f"{h}:{p}" for h, p in targets}


def test_one_socket_is_reused(listeners) -> None:
    notifier = Notifier([listeners[0].getsockname()])
    try:
        notifier.send("LEASE", MAC, "10.0.0.7", None)
        first = dict(notifier._sockets)
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            notifier.send("LEASE", MAC, "10.0.0.7", None)
        assert notifier._sockets == first
        assert len(os.listdir("/proc/self/fd")) == fds
        for _ in range(51):
            listeners[0].recvfrom(2048)
    finally:
        notifier.close()


def test_host_name_target(listeners, monkeypatch) -> None:
    host, port = listeners[0].getsockname()
    asked = []

    def getaddrinfo(name, port, *args, **kwargs):
        # a host name resolved without depending on the machine's resolver
        asked.append(name)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (host, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    notifier = Notifier(parse_targets(f"collector.test:{port}"))
    try:
        notifier.send("LEASE", MAC, "10.0.0.9", None)
        notifier.send("LEASE", MAC, "10.0.0.9", None)
    finally:
        notifier.close()
    assert asked == ["collector.test", "collector.test"]  # resolved at each send
    assert listeners[0].recvfrom(2048)[0] == b"LEASE,00:AA:55:12:34:56,10.0.0.9"


def test_bad_targets_never_raise(listeners, monkeypatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        # an unresolvable name, without asking any DNS server off the loopback
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    bus = EventBus()
    recorder = EventRecorder()
    bus.subscribe(recorder)
    good = listeners[0].getsockname()
    targets = [
        ("no-such-host.invalid", 9),
        ("127.0.0.1", 1),  # nobody listens: UDP has no error to report
        ("255.255.255.255", 9),  # no SO_BROADCAST: sendto fails with EACCES
        good,
    ]
    notifier = Notifier(targets, events=bus)
    try:
        notifier.send("BOOT", MAC, "10.0.0.7", UUID)
        notifier.send("BOOT", MAC, "10.0.0.7", UUID)
    finally:
        notifier.close()
    assert listeners[0].recvfrom(2048)[0].startswith(b"BOOT,")
    oks = {e.get("target"): e.get("ok") for e in recorder.of("dhcp.notify")}
    assert oks["no-such-host.invalid:9"] is False
    assert oks["255.255.255.255:9"] is False
    assert oks[f"{good[0]}:{good[1]}"] is True
    notifier.send("LEASE", MAC, "10.0.0.7", None)  # after close: dropped, no exception


def test_subscribed_to_the_dhcp_events(listeners) -> None:
    """As a subscriber: BOOT/LEASE on an ACK that binds an address, RELEASE on a release."""
    bus = EventBus()
    notifier = Notifier([listeners[0].getsockname()], events=bus)
    bus.subscribe(notifier)
    mac = "00:aa:55:12:34:56"

    def reply(msgtype: str, ip: str, pxe: bool) -> None:
        bus.emit("dhcp.reply", msgtype=msgtype, mac=mac, ip=ip, pxe=pxe, arch=0, phase="pxe" if pxe else "os",
                 file="pxelinux.0", ipxe=False, uuid=UUID if pxe else None)

    try:
        reply("offer", "10.0.0.7", True)              # nothing
        reply("ack", "10.0.0.7", True)
        reply("ack", "0.0.0.0", False)                # the ACK of an INFORM: nothing
        reply("nak", "0.0.0.0", True)                 # nothing
        reply("ack", "10.0.0.7", False)
        bus.emit("dhcp.released", mac=mac, ip="10.0.0.7", uuid=UUID)
        got = [listeners[0].recvfrom(2048)[0] for _ in range(3)]
    finally:
        notifier.close()
    assert got == [f"BOOT,{UUID},00:AA:55:12:34:56,10.0.0.7".encode(), b"LEASE,00:AA:55:12:34:56,10.0.0.7",
                   f"RELEASE,{UUID},00:AA:55:12:34:56,10.0.0.7".encode()]
