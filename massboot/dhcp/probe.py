"""ICMP echo probes: is an address in use before it is offered again? (RFC 2131 §4.4.1).

The DHCP exchange asks for a probe with a :class:`~massboot.dhcp.exchange.ProbeQuery`; the
server calls an :class:`IcmpProber` in a greenlet of its probe pool, where the exchange was
handed (never in the exchange pool), which waits at most the probe timeout (README, "Lease
lifecycle"). Under gevent the socket is cooperative, so a probe blocks nobody else.

The prober uses an unprivileged ICMP datagram socket (``socket(AF_INET, SOCK_DGRAM,
IPPROTO_ICMP)``, allowed to the groups in ``net.ipv4.ping_group_range``), else a raw socket
(root or ``CAP_NET_RAW``). When neither can be opened it logs once and answers None ("could not
probe") from then on: addresses are then offered without a probe.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import struct
import time

log = logging.getLogger(__name__)

ECHO_REQUEST, ECHO_REPLY = 8, 0
_HEADER = struct.Struct("!BBHHH")          # type, code, checksum, identifier, sequence
_PAYLOAD = b"massboot-probe\0\0"
#: send errors that mean "nobody there can answer" rather than "probing does not work"
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                          errno.EADDRNOTAVAIL})


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(identifier: int, sequence: int, payload: bytes = _PAYLOAD) -> bytes:
    """An ICMP echo request (RFC 792)."""
    header = _HEADER.pack(ECHO_REQUEST, 0, 0, identifier, sequence)
    return _HEADER.pack(ECHO_REQUEST, 0, checksum(header + payload), identifier, sequence) + payload


class IcmpProber:
    """``prober(ip, timeout) → True`` (an echo reply came), ``False`` (silence) or ``None``
    (no ICMP socket can be opened: not probed)."""

    def __init__(self) -> None:
        self._kind: int | None = None        # SOCK_DGRAM or SOCK_RAW once one worked
        self._unavailable = False
        self._identifier = os.getpid() & 0xFFFF
        self._sequence = itertools.count(1)

    @property
    def available(self) -> bool | None:
        """None until the first probe, then whether probing works."""
        if self._unavailable:
            return False
        return None if self._kind is None else True

    def _open(self) -> socket.socket | None:
        if self._unavailable:
            return None
        kinds = (self._kind,) if self._kind is not None else (socket.SOCK_DGRAM, socket.SOCK_RAW)
        errors = []
        for kind in kinds:
            try:
                sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            except OSError as exc:
                errors.append(f"{'datagram' if kind == socket.SOCK_DGRAM else 'raw'}: {exc.strerror}")
                continue
            self._kind = kind
            return sock
        self._unavailable = True
        log.warning("ICMP probes unavailable (%s): reused addresses are offered without a probe; "
                    "allow the group in net.ipv4.ping_group_range or grant CAP_NET_RAW, or set "
                    "[bootpd] probe = off", "; ".join(errors))
        return None

    def __call__(self, ip: str, timeout: float) -> bool | None:
        sock = self._open()
        if sock is None:
            return None
        try:
            return self._probe(sock, ip, timeout)
        finally:
            sock.close()

    def _probe(self, sock: socket.socket, ip: str, timeout: float) -> bool:
        sequence = next(self._sequence) & 0xFFFF
        raw = self._kind == socket.SOCK_RAW
        try:
            sock.sendto(echo_request(self._identifier, sequence), (ip, 0))
        except OSError as exc:
            if exc.errno in _UNREACHABLE:
                return False
            raise
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                return False
            except OSError as exc:     # an ICMP error for our echo: nobody answers it
                if exc.errno in _UNREACHABLE or exc.errno == errno.ECONNREFUSED:
                    return False
                raise
            if source[0] != ip:
                continue
            if raw:                    # a raw socket gets the IP header and every ICMP message
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) < _HEADER.size:
                continue
            kind, _code, _sum, identifier, seq = _HEADER.unpack_from(data)
            # a datagram socket's identifier is the kernel's (its port); the kernel filters
            # replies for it, so only the sequence is checked there
            if kind == ECHO_REPLY and seq == sequence and (not raw or identifier == self._identifier):
                return True
