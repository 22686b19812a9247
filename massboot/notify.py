"""UDP notifications of boots and leases (pybootd's notify hook; README, "Notifications").

One ASCII datagram per target, no newline: ``BOOT,<uuid>,<MAC>,<IP>`` on a PXE REQUEST,
``LEASE,[<uuid>,]<MAC>,<IP>`` on an OS REQUEST, ``RELEASE,[<uuid>,]<MAC>,<IP>`` on a RELEASE.
Targets are written ``host:port;host:port`` (``[bootpd] notify``).

The DHCP server does not call the :class:`Notifier`: it subscribes to the event bus and
:func:`notice_for` reads the events that call for a datagram. A PXE REQUEST's ACK and an OS
REQUEST's ACK are the ``dhcp.reply`` events of an ``ack`` that gives an address (an INFORM's
ACK gives none, a plain BOOTP reply is a ``bootp``); a RELEASE is a ``dhcp.released``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from massboot.events import Event, EventBus, EventKind
from massboot.ident import mac_str

log = logging.getLogger(__name__)

KINDS = ("BOOT", "LEASE", "RELEASE")
#: the ``yiaddr`` of an ACK that gives no address (an INFORM's, RFC 2131 §4.3.5)
NO_ADDRESS = "0.0.0.0"


def format_notification(kind: str, mac: bytes | str, ip: str, uuid: str | None) -> bytes:
    """Build one notification payload.

    Args:
        kind: ``BOOT``, ``LEASE`` or ``RELEASE`` (any case).
        mac: the client hardware address (first 6 bytes used), or its ``AA:BB:...`` form.
        ip: the client's address.
        uuid: the client UUID (lower case), omitted from the payload when None.

    Returns:
        e.g. ``b"BOOT,12345678-abcd-ef00-1111-abcdefabcdef,00:AA:55:12:34:56,192.168.25.100"``.

    Raises:
        ValueError: an unknown kind.
    """
    name = kind.upper()
    if name not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    fields = [name]
    if uuid:
        fields.append(uuid.lower())
    fields += [mac.upper() if isinstance(mac, str) else mac_str(mac), ip]
    return ",".join(fields).encode("ascii")


def notice_for(kind: str, fields: Mapping[str, Any]) -> tuple[str, str, str, str | None] | None:
    """The notification a DHCP event calls for (README, "Notifications").

    Args:
        kind: the event's kind.
        fields: its fields.

    Returns:
        ``(notice, mac, ip, uuid)`` for :meth:`Notifier.send`: ``BOOT`` (PXE phase) or ``LEASE``
        (OS phase) on an ACK that binds an address, ``RELEASE`` on a release; None for any
        other event.
    """
    if kind == EventKind.DHCP_REPLY:
        if fields["msgtype"] == "ack" and fields["ip"] != NO_ADDRESS:
            return "BOOT" if fields["pxe"] else "LEASE", fields["mac"], fields["ip"], fields["uuid"]
    elif kind == EventKind.DHCP_RELEASED:
        return "RELEASE", fields["mac"], fields["ip"], fields.get("uuid")
    return None


def parse_targets(text: str) -> list[tuple[str, int]]:
    """Parse ``host:port;host:port`` (empty entries are skipped; ``[v6]:port`` accepted).

    Raises:
        ValueError: an entry without a host or with a port outside 1..65535, naming it.
    """
    targets: list[tuple[str, int]] = []
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        host, sep, port_text = entry.rpartition(":")
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not sep or not host or not 0 < port < 65536 or any(c.isspace() for c in host):
            raise ValueError(f"invalid notify target {entry!r}: expected host:port")
        targets.append((host, port))
    return targets


class Notifier:
    """Send notifications to every target, fire-and-forget.

    One long-lived UDP socket per address family is opened on first use and reused. Host
    names are resolved at each send (by the system resolver, cooperative under gevent); IP
    literals are parsed once.

    Args:
        targets: ``(host, port)`` pairs, e.g. from :func:`parse_targets`.
        events: the bus that receives one ``dhcp.notify`` event per datagram (and the log
            line of each, from :mod:`massboot.eventlog`).
    """

    def __init__(self, targets: Sequence[tuple[str, int]], events: EventBus | None = None) -> None:
        self._targets = [(host, int(port), self._literal(host)) for host, port in targets]
        self._events = events
        self._sockets: dict[int, socket.socket] = {}
        self._closed = False

    @staticmethod
    def _literal(host: str) -> int | None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        return socket.AF_INET6 if address.version == 6 else socket.AF_INET

    @property
    def targets(self) -> list[tuple[str, int]]:
        """The configured targets."""
        return [(host, port) for host, port, _ in self._targets]

    def _socket(self, family: int) -> socket.socket:
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sockets[family] = sock
        return sock

    def _send_one(self, payload: bytes, host: str, port: int, family: int | None) -> None:
        if family is not None:
            address: tuple = (host, port)
        else:
            info = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
            family, _, _, _, address = info[0]
        self._socket(family).sendto(payload, address)

    def __call__(self, event: Event) -> None:
        """The bus subscriber: send what the event calls for (:func:`notice_for`), if anything.

        It runs in the exchange's greenlet, after the reply has gone; a host name target is
        resolved there (cooperatively), as it was when the server sent the notification itself.
        """
        notice = notice_for(event.kind, event.fields)
        if notice is not None:
            self.send(*notice)

    def send(self, kind: str, mac: bytes | str, ip: str, uuid: str | None) -> None:
        """Send one datagram to each target; never raises.

        Args:
            kind: ``BOOT``, ``LEASE`` or ``RELEASE``.
            mac: the client hardware address.
            ip: the client's address.
            uuid: the client UUID, when known.
        """
        try:
            payload = format_notification(kind, mac, ip, uuid)
        except (ValueError, UnicodeEncodeError) as exc:
            log.error("notify: cannot format %s for %s: %s", kind, ip, exc)
            return
        for host, port, family in self._targets:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            ok = False
            error: str | None = None
            if not self._closed:
                try:
                    self._send_one(payload, host, port, family)
                    ok = True
                except (OSError, UnicodeError) as exc:
                    error = str(exc)
            if self._events is not None:   # massboot.eventlog writes the line
                self._events.emit("dhcp.notify", ok=ok, target=target, notice=kind, payload=payload,
                                  error=error)

    def close(self) -> None:
        """Close the sockets; later sends are dropped."""
        self._closed = True
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
