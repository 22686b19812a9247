"""The lease store's types and interface (README, "Lease lifecycle"); the package docstring
tells the lifecycle."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace

from massboot.ident import mac_str, parse_mac

OFFERED = "offered"
BOUND = "bound"
RELEASED = "released"
EXPIRED = "expired"        # reported only: a bound lease whose time ran out
RESERVED = "reserved"      # reported only: reserved by the operator (LeaseStore.reserve)
STATIC = "static"          # reported only: a [static_dhcp] binding
#: ``reclaim`` values: reuse the longest-expired binding when the pool is full, or never
RECLAIM_EXPIRED = "expired"
RECLAIM_NEVER = "never"
DEFAULT_OFFER_HOLD = 60.0
DEFAULT_DECLINE_PROBATION = 86400.0
#: seconds an address that answered a probe is set aside before it is tried (and probed) again
#: (dnsmasq avoids such an address for 10 minutes)
PROBE_IN_USE_HOLD = 600.0
#: the refusal reasons of :meth:`LeaseStore.decline` (the ``detail`` of ``dhcp.ignored``)
DECLINE_OTHER_MAC = "other_mac"
DECLINE_OUTSIDE_POOL = "outside_pool"
DECLINE_NOT_HELD = "not_held"


@dataclass(frozen=True, slots=True)
class Lease:
    """One MAC's binding.

    Attributes:
        mac: ``AA:BB:CC:DD:EE:FF``.
        ip: the bound address.
        static: from ``[static_dhcp]``.
        state: ``offered`` (provisional, until *expires*), ``bound``, ``expired`` (bound, its
            time ran out: sticky while the pool has room), ``released``; ``static`` and
            ``reserved`` for bindings that never expire nor move (*expires* then tells when
            the last ACK's lease ends).
        uuid: the client UUID (option 97) when known.
        expires: epoch seconds when the offer or lease ends; None when it never does (a static
            or reserved binding never bound).
        updated: epoch seconds of the last change.
        reserved: reserved by the operator (:meth:`LeaseStore.reserve`).
    """

    mac: str
    ip: str
    static: bool = False
    state: str = OFFERED
    uuid: str | None = None
    expires: float | None = None
    updated: float = 0.0
    reserved: bool = False

    @property
    def pinned(self) -> bool:
        """Static or reserved: never expires, never reclaimed."""
        return self.static or self.reserved


@dataclass(frozen=True, slots=True)
class Binding:
    """The result of :meth:`LeaseStore.bind`.

    Attributes:
        lease: the MAC's lease after the call; None when it had none and the pool is exhausted.
        bound: True when *lease* is now bound; False when the MAC holds another address than
            the one asked for (*lease* is then that binding, unchanged) or has none.
    """

    lease: Lease | None
    bound: bool
    #: seconds the binding may be granted for when less than asked: a store that cannot record
    #: a renewal now (its database unreachable) grants what is left of the committed lease
    lease_time: int | None = None


@dataclass(frozen=True, slots=True)
class Decline:
    """The result of :meth:`LeaseStore.decline`.

    Attributes:
        ip: the address the DHCPDECLINE named (option 50, else the MAC's address), or None.
        refused: None when accepted, else why it changed nothing: ``other_mac`` (another MAC
            holds it), ``outside_pool``, ``not_held`` (the MAC holds no such offer or lease).
        until: when an accepted address comes back (end of its probation).
    """

    ip: str | None
    refused: str | None = None
    until: float | None = None

    @property
    def accepted(self) -> bool:
        return self.refused is None


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """Counters since start, read by the metrics at scrape time.

    Attributes:
        offers_expired: offers forgotten because no REQUEST came within ``offer_hold``.
        reclaimed: expired bindings whose address went to another MAC.
        probation_ended: declined (or probed in-use) addresses that came back.
    """

    offers_expired: int = 0
    reclaimed: int = 0
    probation_ended: int = 0


class LeaseConflict(ValueError):
    """A commit or reservation that would give a MAC an address it may not have."""


class LeaseStoreError(RuntimeError):
    """The persistent store could not record a change."""


class LeaseStoreUnavailable(LeaseStoreError):
    """The store's database cannot be reached now; the store retries by itself (README,
    "Several servers")."""


class LeaseStore(ABC):
    """The lease interface the DHCP exchange and the operator's commands use."""

    @abstractmethod
    def get(self, mac: str) -> Lease | None:
        """The MAC's binding (an offer past its hold is none), or None."""

    def known(self, mac: str) -> Lease | None:
        """The MAC's binding as this server last saw it, without asking a shared database (it
        may lag the other servers by a moment): for information (a UUID), never a decision."""
        return self.get(mac)

    @abstractmethod
    def by_ip(self, ip: str) -> Lease | None:
        """The lease holding *ip*, or None."""

    @abstractmethod
    def allocate(self, mac: str) -> Lease | None:
        """Return the MAC's address, offering a new one if it has none.

        Sticky: the existing binding is returned unchanged (an expired or released one is then
        kept from reclaim for ``offer_hold``); else the static address; else the first free
        pool address (state ``offered`` until ``now + offer_hold``); else, with ``reclaim =
        expired``, the address of the binding that expired longest ago.

        Returns:
            The lease, or None when the pool is exhausted.
        """

    @abstractmethod
    def commit(self, mac: str, ip: str, *, lease_time: int, uuid: str | None = None) -> Lease:
        """Mark the MAC's binding to *ip* as bound until ``now + lease_time``.

        Returns only once the change is durable.

        Raises:
            LeaseConflict: *ip* is held or reserved for another MAC, set aside, or the MAC
                holds a different address.
        """

    @abstractmethod
    def bind(self, mac: str, ip: str | None, *, lease_time: int, uuid: str | None = None) -> Binding:
        """Atomically bind the MAC's address for a DHCPREQUEST or a plain BOOTP request.

        The MAC's address is its binding, or a new one picked as :meth:`allocate` does (a
        new offer is kept even when nothing gets bound). When *ip* is given and is not that
        address, nothing is bound. Otherwise the binding is marked bound until
        ``now + lease_time`` and the call returns only once that is durable (an ACKed lease is
        never lost: commit before the ACK leaves).
        """

    @abstractmethod
    def release(self, mac: str, ip: str | None = None) -> Lease | None:
        """Mark the MAC's lease released: it keeps the address while the pool has room.

        With *ip*, only when the MAC holds that address. Returns the released lease, or None
        when nothing was released.
        """

    @abstractmethod
    def decline(self, mac: str, ip: str | None = None) -> Decline:
        """A DHCPDECLINE from *mac* for *ip* (None: the MAC's address), RFC 2131 §4.3.3.

        Accepted only when the MAC holds *ip* (offered, or bound and not expired) and *ip* is a
        pool address or the MAC's static one: the address is set aside for
        ``decline_probation`` seconds and the MAC's binding dropped. Anything else changes
        nothing and says why.
        """

    @abstractmethod
    def needs_probe(self, ip: str) -> bool:
        """True when *ip* must be probed before it is offered (see the module docstring)."""

    @abstractmethod
    def probed(self, mac: str, ip: str, in_use: bool) -> None:
        """Record a probe of *ip*, offered to *mac*: silent, it is no longer suspect; answered,
        it is set aside for :data:`PROBE_IN_USE_HOLD` seconds and the MAC's offer dropped."""

    @abstractmethod
    def free(self, mac: str) -> Lease | None:
        """Drop the MAC's binding, whatever its state (operator). Returns it, or None.

        A static MAC gets its static address again on its next request; the freed address of
        another MAC is probed before it is offered again.
        """

    @abstractmethod
    def reserve(self, mac: str, ip: str) -> Lease:
        """Reserve *ip* for *mac* (operator): never reclaimed, never offered to another MAC.

        The MAC's other binding, if any, is dropped; another MAC's expired or released binding
        to *ip* is taken over; a probation on *ip* ends.

        Raises:
            LeaseConflict: *ip* is another MAC's active binding (offered or bound and not
                expired) or reservation, a static or excluded address, or not an IPv4
                address; or *mac* is static.
        """

    @abstractmethod
    def unreserve(self, mac: str) -> bool:
        """Drop the MAC's reservation; a bound lease stays as an ordinary one. False when the
        MAC had no reservation."""

    @abstractmethod
    def set_static(self, static: Mapping[str, str]) -> list[tuple[str, str, str]]:
        """Adopt a new ``[static_dhcp]`` MAC → IP table (a reload), atomically; no lease is lost.

        A new entry applies at the MAC's next request (its other binding or reservation yields
        then). An entry whose address is another MAC's active binding wins: that binding is
        dropped, with a warning, so the other MAC's next request is NAKed or gets another
        address. A removed entry's bound address becomes an ordinary binding (sticky while the
        pool has room) or, outside the pool, is released at the MAC's next request.

        Returns:
            ``(ip, static MAC, other MAC)`` of each such taken-over active binding.

        Raises:
            ValueError: an address is given to two MACs (nothing changed).
        """

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """``(in use, capacity)`` over the pool.

        *in use* counts pool addresses with an active binding (an offer within its hold, a
        bound lease not expired, a static or reserved one; with ``reclaim = never`` every
        binding); *capacity* is *in use* plus the addresses that can be handed out (free,
        or expired and reclaimable), i.e. the pool without the excluded addresses and those
        on probation. The pool is exhausted when they are equal.
        """

    @abstractmethod
    def stats(self) -> LeaseStats:
        """Lifecycle counters since start (for metrics)."""

    @abstractmethod
    def leases(self) -> list[Lease]:
        """Every binding with its state (a snapshot)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; pending writes are finished first."""

    def hurry(self) -> None:  # noqa: B027 (a no-op for a store without a commit window)
        """Write the changes waiting for a group commit now, not at the end of its window
        (the DHCP read loop asks when every exchange slot waits on a commit)."""

    @property
    def database_up(self) -> bool | None:
        """Whether the store's database server answers now; None for an embedded store."""
        return None



_CANONICAL_MAC = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")


def _norm_mac(mac: str) -> str:
    if _CANONICAL_MAC.fullmatch(mac):      # the server's own form: the common case, kept cheap
        return mac
    return mac_str(parse_mac(mac))


def _active(lease: Lease, now: float) -> bool:
    """Holds its address now: pinned, an offer within its hold, a lease not expired."""
    if lease.pinned:
        return True
    if lease.state == OFFERED:
        return lease.expires is None or lease.expires > now
    return lease.state == BOUND and lease.expires is not None and lease.expires > now


def _view(lease: Lease, now: float) -> Lease:
    """The lease as callers see it: its reported state."""
    if lease.static:
        state = STATIC
    elif lease.reserved:
        state = RESERVED
    elif lease.state == BOUND and lease.expires is not None and lease.expires <= now:
        state = EXPIRED
    else:
        return lease
    return replace(lease, state=state)


