"""Lease store: MAC → IP bindings over an ordered pool, with a lifecycle (README, "Lease lifecycle").

Bindings are sticky while the pool has room (pybootd's behaviour, README "DHCP and PXE
behaviour"); what is not a binding does not hold an address for ever::

    DISCOVER → offered ──REQUEST──→ bound ──lease time passes──→ expired ──pool full──→ reclaimed
                 │ no REQUEST within offer_hold         ↑ renew            (reclaim = expired)
                 └──→ forgotten (the address is free)   └── RELEASE → released (reclaimable)
    DECLINE by the holder → probation (decline_probation) → free, probed before reuse

* An OFFER is provisional: it holds its address for ``offer_hold`` seconds (persisted with that
  expiry, so a restart does not make it permanent); unREQUESTed, it is forgotten.
* A bound lease whose time ran out (or that was released) keeps its address for its MAC as long
  as the pool has free addresses. When it has none and ``reclaim = expired``, the binding that
  expired longest ago is reclaimed (as Kea and dnsmasq reuse expired leases); ``reclaim =
  never`` keeps pybootd's strict never-reassign rule. Static (``[static_dhcp]``) and reserved
  (``reserve``) bindings are never reclaimed.
* A DHCPDECLINE counts only from the MAC that holds the address, for a pool address (or the
  MAC's static one) (RFC 2131 §4.3.3); the address is then set aside for ``decline_probation``
  seconds (Kea's default: a day) and comes back afterwards.
* An address that goes to another MAC than the one that had it bound (reclaimed, freed by the
  operator) or that comes back from probation is *suspect*: :meth:`LeaseStore.needs_probe` is
  True until a probe (ICMP echo, done by the server) found it silent or a client bound it.

Every decision is made on an in-memory index (MAC → lease, IP → MAC, a heap of free pool
addresses, heaps of offer and lease expiries, the addresses on probation) with no cooperative
yield between reading and writing it, so a decision is atomic under gevent, and each costs
O(log n). :class:`SqliteLeaseStore` then writes the change to SQLite on one worker thread and
the caller waits for it cooperatively.

``LeaseStore`` keeps each operation that decides atomic on its own (:meth:`~LeaseStore.allocate`,
:meth:`~LeaseStore.bind`, :meth:`~LeaseStore.release`, :meth:`~LeaseStore.decline`, and the
operator's :meth:`~LeaseStore.free`, :meth:`~LeaseStore.reserve`, :meth:`~LeaseStore.unreserve`,
and a reload's :meth:`~LeaseStore.set_static`):
the caller never reads a lease and then writes a decision based on it, so a store that yields on
every call (a database shared by several servers) can implement it with one transaction each.

Modules: :mod:`.base` (the types and the :class:`LeaseStore` interface), :mod:`.index` (the
pure index), :mod:`.memory` (the store deciding on it, kept in memory), :mod:`.sqlite` (the
embedded default) and :mod:`.postgresql` (one pool shared by several servers; README, "Several
servers"). Every name callers import lives here.
"""

from __future__ import annotations

from massboot.dhcp.leases.base import (
    BOUND,
    DECLINE_NOT_HELD,
    DECLINE_OTHER_MAC,
    DECLINE_OUTSIDE_POOL,
    DEFAULT_DECLINE_PROBATION,
    DEFAULT_OFFER_HOLD,
    EXPIRED,
    OFFERED,
    PROBE_IN_USE_HOLD,
    RECLAIM_EXPIRED,
    RECLAIM_NEVER,
    RELEASED,
    RESERVED,
    STATIC,
    Binding,
    Decline,
    Lease,
    LeaseConflict,
    LeaseStats,
    LeaseStore,
    LeaseStoreError,
    LeaseStoreUnavailable,
)
from massboot.dhcp.leases.index import _Change, _Index  # noqa: F401 (the pure core, for its tests)
from massboot.dhcp.leases.memory import MemoryLeaseStore, _IndexedLeaseStore  # noqa: F401
from massboot.dhcp.leases.postgresql import PostgresLeaseStore
from massboot.dhcp.leases.sqlite import SCHEMA_VERSION, SqliteLeaseStore

__all__ = [
    "BOUND",
    "Binding",
    "DECLINE_NOT_HELD",
    "DECLINE_OTHER_MAC",
    "DECLINE_OUTSIDE_POOL",
    "DEFAULT_DECLINE_PROBATION",
    "DEFAULT_OFFER_HOLD",
    "Decline",
    "EXPIRED",
    "Lease",
    "LeaseConflict",
    "LeaseStats",
    "LeaseStore",
    "LeaseStoreError",
    "LeaseStoreUnavailable",
    "MemoryLeaseStore",
    "PostgresLeaseStore",
    "OFFERED",
    "PROBE_IN_USE_HOLD",
    "RECLAIM_EXPIRED",
    "RECLAIM_NEVER",
    "RELEASED",
    "RESERVED",
    "SCHEMA_VERSION",
    "STATIC",
    "SqliteLeaseStore",
]
