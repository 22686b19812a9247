"""The store that decides on the index: in memory (:class:`MemoryLeaseStore`), and the base
of the persistent ones, which save what each decision changed."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from massboot.dhcp.leases.base import (
    DEFAULT_DECLINE_PROBATION,
    DEFAULT_OFFER_HOLD,
    OFFERED,
    RECLAIM_EXPIRED,
    Binding,
    Decline,
    Lease,
    LeaseConflict,
    LeaseStats,
    LeaseStore,
    _active,
    _norm_mac,
    _view,
)
from massboot.dhcp.leases.index import _Change, _Index

log = logging.getLogger("massboot.dhcp.leases")    # one logger for the package



#: the attribute of a greenlet that answers several requests without waiting on each one's
#: commit (:func:`deferring`)
DEFER_ATTRIBUTE = "massboot_lease_waits"


def deferring(greenlet: Any, waits: list[Any] | None) -> None:
    """Make *greenlet*'s lease decisions hand their durability wait to it instead of waiting.

    With a list, a persistent store's save in *greenlet* appends the result its commit will
    set (a :class:`gevent.event.AsyncResult`, shared by every change of one transaction) to
    *waits* and returns at once; the caller must not act on the decision (send an ACK) before
    that result is set without an exception. With None, saves in *greenlet* wait again. Only
    the stores whose :attr:`~_IndexedLeaseStore.defers_saves` is true honour it (the DHCP read
    loop answers inline only then).
    """
    setattr(greenlet, DEFER_ATTRIBUTE, waits)


class _IndexedLeaseStore(LeaseStore):
    """The decisions of both stores; subclasses persist each change through :meth:`_save`."""

    #: a save can hand its wait to the greenlet deciding (:func:`deferring`), or needs none
    defers_saves = True

    def __init__(
        self,
        pool: Sequence[str],
        static: Mapping[str, str] = {},  # noqa: B006 (read only)
        exclude: Iterable[str] = (),
        *,
        offer_hold: float = DEFAULT_OFFER_HOLD,
        reclaim: str = RECLAIM_EXPIRED,
        decline_probation: float = DEFAULT_DECLINE_PROBATION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = _Index(pool, static, exclude, offer_hold=offer_hold, reclaim=reclaim,
                             decline_probation=decline_probation)
        self._clock = clock
        self._counts_cache: tuple[float, tuple[int, int]] | None = None

    # persistence hook, a no-op here
    def _save(self, change: _Change) -> None:
        pass

    def _decide(self, decision: Callable[..., Any], *args: Any) -> Any:
        """Run one decision on the index (after the sweep), then persist what it changed."""
        now = self._clock()
        change = _Change()
        self._index.sweep(now, change)
        try:
            result = decision(*args, now, change)
        finally:
            if change:
                self._counts_cache = None
                self._save(change)
        return result

    def get(self, mac: str) -> Lease | None:
        return self._index.get(_norm_mac(mac), self._clock())

    def by_ip(self, ip: str) -> Lease | None:
        return self._index.by_ip(ip, self._clock())

    def allocate(self, mac: str) -> Lease | None:
        mac = _norm_mac(mac)
        lease = self._decide(self._index.allocate, mac)
        if lease is None:     # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
            return None
        return _view(lease, self._clock())

    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        mac = _norm_mac(mac)
        lease = self._decide(lambda now, change: self._index.commit(mac, ip, lease_time, uuid, now, change))
        log.debug("lease bound mac=%s ip=%s expires=%.0f", mac, ip, lease.expires)
        return _view(lease, self._clock())

    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        mac = _norm_mac(mac)
        lease, bound = self._decide(
            lambda now, change: self._index.bind(mac, ip, lease_time, uuid, now, change))
        if lease is None:     # the exchange's dhcp.exhausted is the WARNING line (eventlog)
            log.debug("lease pool exhausted mac=%s", mac)
            return Binding(None, False)
        return Binding(_view(lease, self._clock()), bound)

    def release(self, mac: str, ip: str | None = None) -> Lease | None:
        mac = _norm_mac(mac)
        lease = self._decide(self._index.release, mac, ip)
        if lease is None:
            return None
        log.debug("lease released mac=%s ip=%s", mac, lease.ip)
        return _view(lease, self._clock())

    def decline(self, mac: str, ip: str | None = None) -> Decline:
        mac = _norm_mac(mac)
        result: Decline = self._decide(self._index.decline, mac, ip)
        # the exchange's dhcp.declined (WARNING) or dhcp.ignored is the outcome's line
        log.debug("decline mac=%s ip=%s: %s", mac, result.ip, result.refused or "set aside")
        return result

    def needs_probe(self, ip: str) -> bool:
        return ip in self._index.suspect

    def probed(self, mac: str, ip: str, in_use: bool) -> None:
        self._decide(self._index.probed, _norm_mac(mac), ip, in_use)

    def free(self, mac: str) -> Lease | None:
        lease = self._decide(self._index.free, _norm_mac(mac))
        return None if lease is None else _view(lease, self._clock())

    def reserve(self, mac: str, ip: str) -> Lease:
        mac = _norm_mac(mac)
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise LeaseConflict(f"{ip!r} is not an IPv4 address") from None
        lease = self._decide(self._index.reserve, mac, ip)
        log.info("lease reserved mac=%s ip=%s", mac, ip)
        return _view(lease, self._clock())

    def unreserve(self, mac: str) -> bool:
        return bool(self._decide(self._index.unreserve, _norm_mac(mac)))

    def set_static(self, static: Mapping[str, str]) -> list[tuple[str, str, str]]:
        return self._decide(self._index.set_static, static)

    def counts(self) -> tuple[int, int]:
        # computed at most once a second and once per change: scrapes are frequent
        now = self._clock()
        cached = self._counts_cache
        if cached is None or not 0 <= now - cached[0] < 1.0:
            cached = self._counts_cache = (now, self._index.counts(now))
        return cached[1]

    def stats(self) -> LeaseStats:
        index = self._index
        return LeaseStats(index.offers_expired, index.reclaimed, index.probation_ended)

    def leases(self) -> list[Lease]:
        now = self._clock()
        return [_view(lease, now) for lease in self._index.by_mac.values()
                if lease.state != OFFERED or _active(lease, now)]

    def close(self) -> None:
        pass


class MemoryLeaseStore(_IndexedLeaseStore):
    """A lease store kept in memory only (lost on restart); for tests and simulations.

    Args:
        pool: the ordered dynamic addresses (own, network and broadcast addresses removed).
        static: MAC → IP reservations from ``[static_dhcp]``.
        exclude: addresses never to hand out.
        offer_hold: seconds an unREQUESTed offer holds its address.
        reclaim: ``expired`` or ``never`` (README, "Lease lifecycle").
        decline_probation: seconds a declined address is set aside.
        clock: the time source (epoch seconds).
    """
