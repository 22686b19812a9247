"""One event bus: every DHCP/TFTP outcome is an event.

Servers call :meth:`EventBus.emit` once per outcome; logging, metrics, the boot-progress
tracker and notifications subscribe. Subscribers run synchronously in the emitting
greenlet, so they must be quick and must not block; an exception in one subscriber is
logged and never reaches the server.

Event kinds (fields in brackets):

``dhcp.received``   a request decoded [msgtype (str: discover, request, ...), mac, relayed, pxe,
                    ipxe, uuid, arch]
``dhcp.reply``      a reply sent [msgtype (offer, ack, nak, bootp), mac, ip, pxe, arch, phase
                    (pxe or os), file, ipxe, uuid]
``dhcp.ignored``    a request not answered [mac, reason, phase]
``dhcp.arch_fallback`` an architecture without a [bootfile] entry got the default [mac, arch]
``dhcp.malformed``  a datagram dropped by the codec [reason]
``dhcp.exhausted``  the pool had no address for a client [mac, scope]
``dhcp.declined``   a client declined an address [mac, ip]
``dhcp.released``   a client released its address [mac, ip]
``dhcp.acl``        an ACL verdict [acl (mac, uuid, http), verdict (allowed, denied, error), mac]
``dhcp.notify``     a notification datagram [ok (bool), target]
``tftp.start``      a read transfer begins [ip, port, name, blksize, windowsize]
``tftp.done``       a transfer ended with the last ACK [ip, port, name, bytes, duration, ttfb,
                    retransmits]
``tftp.fail``       a transfer ended without it [ip, port, name, reason, bytes, duration,
                    retransmits]
``tftp.malformed``  a datagram dropped by the codec [reason]
``tftp.denied``     a request refused [ip, name, reason (not_found, access, write)]
``cache.hit`` / ``cache.miss`` / ``cache.coalesced`` [url]; ``cache.upstream`` [url, bytes, status;
                    on failure error and reason (not_found, access, upstream)]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One outcome: a kind (``dhcp.reply``), a wall-clock time and its fields."""

    kind: str
    time: float
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """Return field *name*, or *default* when the event does not carry it."""
        return self.fields.get(name, default)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan an event out to every subscriber, synchronously and safely."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._subscribers: list[Subscriber] = []
        self._clock = clock

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call *subscriber* with every event emitted from now on."""
        self._subscribers.append(subscriber)

    def emit(self, kind: str, **fields: Any) -> Event:
        """Build an event and hand it to every subscriber; return it."""
        event = Event(kind, self._clock(), fields)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken consumer must never break a server
                log.exception("event subscriber %r failed on %s", subscriber, kind)
        return event


class EventRecorder:
    """A subscriber that keeps every event; for tests and the simulator."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        """Events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]
