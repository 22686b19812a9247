"""Event kinds, their declared fields, and the outcome log's line for each kind."""

from __future__ import annotations

import logging

import pytest

from massboot.eventlog import LOGGED_KINDS, EventLog
from massboot.events import ACL_NO_UUID, FIELDS, Event, EventBus, EventKind, EventRecorder


def test_kinds_are_their_strings() -> None:
    assert EventKind.DHCP_REPLY == "dhcp.reply" and "tftp.done" == EventKind.TFTP_DONE
    assert {"dhcp.reply": 1}[EventKind.DHCP_REPLY] == 1          # same hash: str-keyed tables work
    assert set(FIELDS) == set(EventKind)
    assert all(not (spec.required & spec.optional) for spec in FIELDS.values())


def test_emit_takes_strings_and_kinds_and_delivers_the_kind() -> None:
    bus, recorder = EventBus(clock=lambda: 12.5), EventRecorder()
    bus.subscribe(recorder)
    bus.emit("cache.hit", url="http://m/a", bytes=1)
    bus.emit(EventKind.CACHE_MISS, url="http://m/b", bytes=None, prefetch=True)
    first, second = recorder.events
    assert first.kind is EventKind.CACHE_HIT and first.time == 12.5
    assert second.kind is EventKind.CACHE_MISS and second.get("prefetch") is True
    assert recorder.of("cache.miss") == [second] == recorder.of(EventKind.CACHE_MISS)


def test_emit_checks_the_declared_fields() -> None:
    bus, recorder = EventBus(), EventRecorder()
    bus.subscribe(recorder)
    with pytest.raises(TypeError, match="dhcp.released event: missing ip"):
        bus.emit("dhcp.released", mac="52:54:00:00:00:01")
    with pytest.raises(TypeError, match="unknown adress"):
        bus.emit("dhcp.released", mac="52:54:00:00:00:01", ip="10.0.0.1", adress="x")
    with pytest.raises(ValueError, match="unknown event kind"):
        bus.emit("dhcp.rejected", mac="52:54:00:00:00:01")
    assert recorder.events == []          # nothing half-checked reached a subscriber


def test_a_failing_subscriber_does_not_reach_the_emitter(caplog: pytest.LogCaptureFixture) -> None:
    bus, recorder = EventBus(), EventRecorder()

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(recorder)
    bus.emit("cache.hit", url="u", bytes=0)
    assert len(recorder.events) == 1 and "failed on cache.hit" in caplog.text


def test_handlers_per_kind_get_only_their_kinds_in_order(caplog: pytest.LogCaptureFixture) -> None:
    # subscribe_kinds (issue #14: metrics and progress are called straight per kind); a
    # generic subscriber and per-kind handlers run in the order they subscribed, a failing
    # handler is logged and the others still run
    bus, calls = EventBus(), []
    bus.subscribe(lambda e: calls.append(("all", e.kind)))

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe_kinds({"dhcp.reply": broken,
                         EventKind.DHCP_RECEIVED: lambda e: calls.append(("received", e.kind))})
    bus.subscribe_kinds({"dhcp.reply": lambda e: calls.append(("reply", e.kind))})
    bus.subscribe(lambda e: calls.append(("last", e.kind)))
    bus.emit("dhcp.reply", msgtype="offer", mac=MAC, ip="10.0.0.5", pxe=True, arch=0, phase="pxe",
             file=None, ipxe=False, uuid=None)
    bus.emit("cache.hit", url="u", bytes=0)
    assert calls == [("all", "dhcp.reply"), ("reply", "dhcp.reply"), ("last", "dhcp.reply"),
                     ("all", "cache.hit"), ("last", "cache.hit")]
    assert "failed on dhcp.reply" in caplog.text
    with pytest.raises(ValueError):
        bus.subscribe_kinds({"dhcp.rejected": broken})


# ------------------------------------------------------------------ the outcome log, per kind
MAC = "52:54:00:12:34:56"

# (kind, fields, logger, level, the line dhcp/server.py, tftp/server.py or notify.py wrote)
LINES = [
    ("dhcp.reply", dict(msgtype="offer", mac=MAC, ip="10.0.0.5", pxe=True, arch=7, phase="pxe",
                        file="shimx64.efi", ipxe=False, uuid=None, to=("10.0.0.255", 68)),
     "massboot.dhcp.server", logging.INFO,
     f"offer mac={MAC} ip=10.0.0.5 phase=pxe arch=7 file=shimx64.efi to=10.0.0.255:68"),
    ("dhcp.reply", dict(msgtype="ack", mac=MAC, ip="0.0.0.0", pxe=False, arch=None, phase="os",
                        file=None, ipxe=False, uuid=None, to=("10.0.0.5", 68)),
     "massboot.dhcp.server", logging.INFO, f"ack mac={MAC} ip=0.0.0.0 phase=os arch=- file=- to=10.0.0.5:68"),
    ("dhcp.reply", dict(msgtype="nak", mac=MAC, ip="0.0.0.0", pxe=False, arch=None, phase="os",
                        file=None, ipxe=False, uuid=None, to=("10.0.0.5", 68), requested="10.0.0.9",
                        bound="10.0.0.5"),
     "massboot.dhcp.server", logging.INFO, f"nak mac={MAC} phase=os requested=10.0.0.9 bound=10.0.0.5"),
    ("dhcp.ignored", dict(mac=MAC, reason="idle_state", phase="os"), "massboot.dhcp.server", logging.DEBUG,
     f"ignored mac={MAC} phase=os reason=idle_state"),
    ("dhcp.arch_fallback", dict(mac=MAC, arch=11, file="pxelinux.0"), "massboot.dhcp.server",
     logging.WARNING, f"mac={MAC} arch=11 has no [bootfile] entry: serving default pxelinux.0"),
    ("dhcp.malformed", dict(reason="too_short", source="10.0.0.7",
                            detail="4 bytes: shorter than the 236-byte BOOTP header"),
     "massboot.dhcp.server", logging.DEBUG,
     "dhcp malformed from 10.0.0.7: 4 bytes: shorter than the 236-byte BOOTP header"),
    ("dhcp.exhausted", dict(mac=MAC, scope="rack2"), "massboot.dhcp.server", logging.WARNING,
     f"pool exhausted: no address for mac={MAC} scope=rack2"),
    ("dhcp.declined", dict(mac=MAC, ip="10.0.0.5"), "massboot.dhcp.server", logging.WARNING,
     f"decline mac={MAC} ip=10.0.0.5: address set aside for the probation (in use by another host?)"),
    ("dhcp.ignored", dict(mac=MAC, reason="decline_refused", phase="os", detail="other_mac"),
     "massboot.dhcp.server", logging.DEBUG, f"decline refused mac={MAC}: other_mac"),
    ("dhcp.probe", dict(mac=MAC, ip="10.0.0.5", result="in_use", scope="main"), "massboot.dhcp.server",
     logging.WARNING,
     f"probe ip=10.0.0.5 answered: in use by another host, not offered to mac={MAC} scope=main"),
    ("dhcp.probe", dict(mac=MAC, ip="10.0.0.5", result="free", scope="main"), "massboot.dhcp.server",
     logging.DEBUG, f"probe ip=10.0.0.5 for mac={MAC}: free"),
    ("dhcp.released", dict(mac=MAC, ip="10.0.0.5"), "massboot.dhcp.server", logging.INFO,
     f"release mac={MAC} ip=10.0.0.5"),
    ("dhcp.acl", dict(acl="mac", verdict="denied", mac=MAC, detail="not listed"), "massboot.dhcp.server",
     logging.INFO, f"denied mac={MAC} by mac acl: not listed"),
    ("dhcp.acl", dict(acl="uuid", verdict="denied", mac=MAC, detail=ACL_NO_UUID), "massboot.dhcp.server",
     logging.INFO, f"ignored mac={MAC}: access = uuid and no UUID known"),
    ("dhcp.acl", dict(acl="http", verdict="denied", mac=MAC, detail="HTTP 403"), "massboot.dhcp.server",
     logging.INFO, f"denied mac={MAC} by http acl: HTTP 403"),
    ("dhcp.acl", dict(acl="http", verdict="error", mac=MAC, detail="timed out"), "massboot.dhcp.server",
     logging.INFO, f"ignored mac={MAC} by http acl: timed out"),
    ("dhcp.notify", dict(ok=True, target="10.0.0.1:9999", notice="BOOT", payload=b"BOOT,x", error=None),
     "massboot.notify", logging.DEBUG, "notify: sent b'BOOT,x' to 10.0.0.1:9999"),
    ("dhcp.notify", dict(ok=False, target="10.0.0.1:9999", notice="LEASE", payload=b"L", error="refused"),
     "massboot.notify", logging.WARNING, "notify: LEASE to 10.0.0.1:9999 failed: refused"),
    ("dhcp.notify", dict(ok=False, target="10.0.0.1:9999", notice="LEASE", payload=b"L", error=None),
     "massboot.notify", logging.DEBUG, "notify: closed, LEASE to 10.0.0.1:9999 dropped"),
    ("tftp.done", dict(ip="10.0.0.5", port=2070, name="pxelinux.0", bytes=2_000_000, duration=2.0,
                       ttfb=0.01, retransmits=3, blocks=1362, blocks_sent=1362, blksize=1468, windowsize=1),
     "massboot.tftp.server", logging.INFO,
     "tftp done client=10.0.0.5:2070 file=pxelinux.0 bytes=2000000 duration=2.000s rate=1.00MB/s "
     "retransmits=3 blksize=1468 windowsize=1"),
    ("tftp.fail", dict(ip="10.0.0.5", port=2070, name="vmlinuz", reason="timeout", bytes=0, duration=0.0,
                       retransmits=5, blocks=0, blocks_sent=1, detail="no ACK after 5 retransmissions"),
     "massboot.tftp.server", logging.INFO,
     "tftp failed client=10.0.0.5:2070 file=vmlinuz reason=timeout bytes=0 duration=0.000s rate=0.00MB/s "
     "retransmits=5: no ACK after 5 retransmissions"),
    ("http.start", dict(ip="10.0.0.5", port=40000, method="GET", name="vmlinuz", status=200, bytes=None),
     "massboot.http.server", logging.DEBUG, "http GET client=10.0.0.5:40000 file=vmlinuz status=200 bytes=-"),
    ("http.done", dict(ip="10.0.0.5", port=40000, method="GET", name="vmlinuz", status=200,
                       bytes=2_000_000, duration=2.0, body=True),
     "massboot.http.server", logging.INFO,
     "http GET client=10.0.0.5:40000 file=vmlinuz status=200 bytes=2000000 duration=2.000s rate=1.00MB/s"),
    ("http.done", dict(ip="10.0.0.5", port=40000, method="-", name="a b\n", status=400, bytes=0,
                       duration=0.0, body=False, reason="bad_request"),
     "massboot.http.server", logging.INFO,
     "http - client=10.0.0.5:40000 file='a b\\n' status=400 reason=bad_request"),
    ("http.fail", dict(ip="10.0.0.5", port=40000, method="GET", name="initrd", status=206, bytes=10,
                       duration=1.0, body=True, reason="client_gone", detail="Connection reset by peer"),
     "massboot.http.server", logging.INFO,
     "http failed GET client=10.0.0.5:40000 file=initrd status=206 reason=client_gone bytes=10 "
     "duration=1.000s: Connection reset by peer"),
    ("http.refused", dict(ip="10.0.0.5", port=40000, reason="connections"),
     "massboot.http.server", logging.DEBUG,
     "http refused connection client=10.0.0.5:40000 reason=connections"),
]


@pytest.mark.parametrize(("kind", "fields", "logger", "level", "line"), LINES,
                         ids=[f"{k}-{i}" for i, (k, *_) in enumerate(LINES)])
def test_outcome_lines(kind: str, fields: dict, logger: str, level: int, line: str,
                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="massboot")
    bus = EventBus()
    bus.subscribe(EventLog())
    bus.emit(kind, **fields)
    (record,) = caplog.records
    assert (record.name, record.levelno, record.getMessage()) == (logger, level, line)
    assert record.event == kind     # type: ignore[attr-defined]


def test_the_writers_per_kind_write_the_subscribers_lines(caplog: pytest.LogCaptureFixture) -> None:
    """cli subscribes EventLog().handlers() per kind (issue #14): every line, level and logger
    as the plain subscriber writes them, levels still read at each event."""
    bus = EventBus()
    bus.subscribe_kinds(EventLog().handlers())
    assert set(EventLog().handlers()) == LOGGED_KINDS
    assert set(EventLog(kinds=["dhcp.reply"]).handlers()) == {"dhcp.reply"}
    caplog.set_level(logging.DEBUG, logger="massboot")
    for kind, fields, *_ in LINES:
        bus.emit(kind, **fields)
    assert [(r.name, r.levelno, r.getMessage(), r.event) for r in caplog.records] == \
        [(logger, level, line, kind) for kind, _fields, logger, level, line in LINES]
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="massboot")     # a reload changes the level
    for kind, fields, *_ in LINES:
        bus.emit(kind, **fields)
    assert [r.levelno for r in caplog.records] == \
        [level for *_, level, _line in LINES if level >= logging.WARNING]


def test_each_kinds_highest_level_is_at_or_above_its_lines() -> None:
    """A kind is skipped when its highest level is off: no line of it may be above that."""
    from massboot.eventlog import _FORMATS

    for kind, _fields, _logger, level, _line in LINES:
        assert _FORMATS[EventKind(kind)][2] >= level, kind
    assert _FORMATS[EventKind.DHCP_RECEIVED][2] == logging.DEBUG


@pytest.mark.parametrize(("kind", "fields", "level"), [
    ("dhcp.acl", dict(acl="mac", verdict="denied", mac="52:54:00:12:34:56"), logging.INFO),
    ("dhcp.ignored", dict(mac="52:54:00:12:34:56", reason="no_http_bootfile", phase="pxe",
                          detail="arch 19: no [bootfile] 19 nor 11 entry"), logging.WARNING),
    ("tftp.denied", dict(ip="10.0.0.5", port=2000, name="../x", reason="outside_root", code=2,
                         message="outside the root"), logging.INFO),
])
def test_a_kinds_line_at_info_or_above_is_written_at_info(kind: str, fields: dict, level: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The kinds whose usual line is DEBUG but whose other lines are not: at ``info`` those are
    written (a denied MAC, a missing HTTP boot file, a path escape), the DEBUG ones are not."""
    caplog.set_level(logging.INFO, logger="massboot")
    bus = EventBus()
    bus.subscribe(EventLog())
    bus.emit(kind, **fields)
    assert [r.levelno for r in caplog.records] == [level]


def test_one_line_per_logged_kind_and_levels_respected(caplog: pytest.LogCaptureFixture) -> None:
    assert {EventKind(kind) for kind, *_ in LINES} | {"dhcp.received", "tftp.start", "tftp.malformed",
                                                      "tftp.denied", "tftp.dropped"} == LOGGED_KINDS
    caplog.set_level(logging.INFO, logger="massboot")
    bus = EventBus()
    bus.subscribe(EventLog(kinds=["dhcp.ignored", "tftp.done"]))
    for kind, fields, *_ in LINES:
        bus.emit(kind, **fields)
    assert [r.getMessage()[:9] for r in caplog.records] == ["tftp done"]   # ignored is DEBUG; rest not chosen
