"""The outcome log is one subscriber of the bus: one line per event, none twice, none missing.

A real DHCP server on loopback, :class:`massboot.eventlog.EventLog` subscribed beside a
recorder; ``caplog`` sees every record of the server's logger. The TFTP side is in
``test_tftp_server.py`` (its fixtures live there).
"""

from __future__ import annotations

import logging

import pytest

from massboot.dhcp.packet import MessageType, Opt, ip_bytes
from massboot.eventlog import EventLog
from massboot.events import EventRecorder
from tests.loopback.dhcpclient import pxe_options
from tests.loopback.outcomelog import lines, one_line_per_event
from tests.loopback.test_dhcp_server import MAC1, MAC2, Harness, _wait


def _dhcp_session(caplog: pytest.LogCaptureFixture) -> tuple[list[logging.LogRecord], EventRecorder]:
    """PXE DORA, an unknown architecture, INFORM, NAK, RELEASE, DECLINE and junk, with EventLog.

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
        wrong = [(Opt.REQUESTED_IP, ip_bytes("127.0.0.110"))]               # INIT-REBOOT elsewhere
        assert h.client.exchange(h.client.packet(MAC1, MessageType.REQUEST, wrong)).message_type == \
            MessageType.NAK
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


def test_dhcp_one_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    one_line_per_event(*_dhcp_session(caplog), "dhcp.")


def test_dhcp_lines_read_as_the_readme_shows_them(caplog: pytest.LogCaptureFixture) -> None:
    """The outcome lines keep their text (README, "[logger]"): one per outcome, nothing twice."""
    records, _ = _dhcp_session(caplog)
    text = [(r.levelname, r.module, r.getMessage()) for r in records]
    mac1, mac2 = "52:54:00:12:34:56", "52:54:00:AB:CD:EF"
    expected = [
        ("INFO", f"ack mac={mac1} ip=127.0.0.100 phase=pxe arch=7 file=shimx64.efi to=127.0.0.2:"),
        ("WARNING", f"mac={mac2} arch=11 has no [bootfile] entry: serving default pxelinux.0"),
        ("INFO", f"ack mac={mac1} ip=0.0.0.0 phase=os arch=- file=pxelinux.0 to=127.0.0.2:"),   # INFORM
        ("INFO", f"nak mac={mac1} phase=os requested=127.0.0.110 bound=127.0.0.100"),
        ("INFO", f"release mac={mac1} ip=127.0.0.100"),
        ("WARNING", f"decline mac={mac2} ip=127.0.0.101: address set aside for the probation "
                    "(in use by another host?)"),
        ("DEBUG", "dhcp malformed from 127.0.0.2: 100 bytes: shorter than the 236-byte BOOTP header"),
    ]
    for level, line in expected:
        found = [m for lv, module, m in text if m.startswith(line) and (lv, module) == (level, "server")]
        assert len(found) == (2 if "arch=11" in line else 1), (line, text)   # MAC2: OFFER and ACK
    assert sum(m.startswith("nak ") for _, _, m in text) == 1                # one line per NAK
