"""The outcome log is one subscriber of the bus: one line per event, none twice, none missing.

A real DHCP server on loopback, :class:`massboot.eventlog.EventLog` subscribed beside a
recorder; ``caplog`` sees every record of the server's logger. The TFTP side is in
``test_tftp_server.py`` (its fixtures live there).
"""

from __future__ import annotations

import logging
import re

import pytest

from massboot.dhcp.packet import MessageType, Opt, ip_bytes
from massboot.eventlog import EventLog
from massboot.events import EventRecorder
from tests.loopback.dhcpclient import pxe_options
from tests.loopback.test_dhcp_server import MAC1, MAC2, Harness, _wait


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def one_line_per_event(records: list[logging.LogRecord], recorder: EventRecorder,
                       prefix: str) -> None:
    """Every record of the server's logger is an outcome line, in the order of the events."""
    stray = [r.getMessage() for r in records if not hasattr(r, "event")]
    assert not stray, f"lines not written from an event: {stray}"
    kinds = [e.kind for e in recorder.events if e.kind.startswith(prefix)]
    assert [r.event for r in records] == kinds   # type: ignore[attr-defined]


def _dhcp_session(caplog: pytest.LogCaptureFixture) -> tuple[list[logging.LogRecord], EventRecorder]:
    """PXE DORA, an unknown architecture, INFORM, RELEASE, DECLINE and junk, with EventLog.

    Returns:
        the records of the DHCP server's logger and the events.
    """
    caplog.set_level(logging.DEBUG, logger="massboot")
    h = Harness()
    caplog.clear()     # the "listening" line
    try:
        h.events.subscribe(EventLog())
        _, ack = h.client.dora(MAC1, pxe_options(arch=7))
        h.client.dora(MAC2, pxe_options(arch=11))
        h.client.exchange(h.client.packet(MAC1, MessageType.INFORM, ciaddr=ack.yiaddr))
        h.client.send(h.client.packet(MAC1, MessageType.RELEASE, ciaddr=ack.yiaddr))
        _wait(lambda: h.recorder.of("dhcp.released"))
        declined = [(Opt.REQUESTED_IP, ip_bytes("127.0.0.101"))]
        h.client.send(h.client.packet(MAC2, MessageType.DECLINE, declined))
        _wait(lambda: h.recorder.of("dhcp.declined"))
        h.client.sock.sendto(b"\x01" * 100, ("127.0.0.1", h.server.port))
        _wait(lambda: h.recorder.of("dhcp.malformed"))
        assert h.client.dora(MAC1, pxe_options())[1] is not None
    finally:
        h.close()
    return lines(caplog, "massboot.dhcp.server"), h.recorder


@pytest.mark.xfail(strict=True, reason="dhcp/server.py still writes its outcome lines itself; at the "
                   "merge its log calls go and this marker with them")
def test_dhcp_one_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    one_line_per_event(*_dhcp_session(caplog), "dhcp.")


def test_dhcp_lines_read_as_the_server_writes_them(caplog: pytest.LogCaptureFixture) -> None:
    """Each line dhcp/server.py writes today is also what EventLog writes for that event.

    Until the merge the server does not pass ``to`` (the reply's destination), the default boot
    file of an ``arch_fallback`` nor the codec's message of a ``malformed``: those values are
    left out of the comparison. This test goes with the server's own log calls, at the merge
    (``tests/unit/test_events.py`` keeps every line's text).
    """
    records, _ = _dhcp_session(caplog)
    ours = [(r.levelno, r.getMessage()) for r in records if hasattr(r, "event")]
    theirs = [(r.levelno, r.getMessage()) for r in records if not hasattr(r, "event")]

    def unknown_yet(line: tuple[int, str]) -> tuple[int, str]:
        text = re.sub(r" to=\S+$", " to=?", line[1])
        text = re.sub(r"^(dhcp malformed from \S+): .*", r"\1: ?", text)
        return line[0], re.sub(r"serving default \S+$", "serving default ?", text)

    assert len(theirs) >= 10
    ours_normalised = [unknown_yet(line) for line in ours]
    for line in theirs:
        assert unknown_yet(line) in ours_normalised, line
