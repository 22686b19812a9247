"""Checks of the outcome log shared by the DHCP and TFTP tests (README, "[logger]")."""

from __future__ import annotations

import logging

import pytest

from massboot.events import EventRecorder


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """The records *logger* wrote."""
    return [r for r in caplog.records if r.name == logger]


def one_line_per_event(records: list[logging.LogRecord], recorder: EventRecorder,
                       prefix: str) -> None:
    """Every record of the server's logger is an outcome line, in the order of the events."""
    stray = [r.getMessage() for r in records if not hasattr(r, "event")]
    assert not stray, f"lines not written from an event: {stray}"
    kinds = [e.kind for e in recorder.events if e.kind.startswith(prefix)]
    assert [r.event for r in records] == kinds   # type: ignore[attr-defined]
