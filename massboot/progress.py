"""Boot progress: one record per client, moved through the boot phases by the event stream.

The tracker subscribes to the :class:`~massboot.events.EventBus` and follows what each client
actually did, as the DHCP and TFTP servers report it. It never asks the servers anything and
never blocks. Phases, in boot order, and the event that puts a client in each:

``discovering``
    A DHCP request from a MAC we have no record of (``dhcp.received``; a PXE ROM starts with a
    DISCOVER). A client that is then turned away on purpose (ACL ``denied``, a non-PXE client
    while ``allow_simple_dhcp`` is off, a REQUEST for another server) is forgotten: it is not
    booting from us. So is a new MAC whose first request found the HTTP ACL's calls all busy
    (``acl_busy``): a flood of spoofed MACs leaves no record, and a real client is tracked again
    from its retry. A client that is left waiting (pool exhausted, HTTP ACL error) stays here.
``offered``
    An OFFER sent in the PXE phase (``dhcp.reply`` msgtype ``offer``, phase ``pxe``).
``bound``
    An ACK (or a plain BOOTP reply) sent in the PXE phase: the ROM has its address and its
    boot file name.
``loader``
    The first TFTP transfer completed for that client (``tftp.done``): the ROM has its boot
    file (the network boot program: pxelinux.0, shimx64.efi, undionly.kpxe...). A failed
    transfer, or an aborted ``tsize`` probe, is not enough.
``kernel``
    A *further* file is being fetched: a transfer of a name other than the boot file starts
    after ``loader`` (loader modules and configs, the kernel, the initrd). TFTP names say
    nothing reliable about which is which, so this one phase covers every file after the
    boot file. ``pxelinux.cfg`` probes that are refused (``tftp.denied``) do not count.
``os``
    A DHCP OFFER or ACK in the OS phase (``dhcp.reply`` phase ``os``: the request carried no
    PXE options), i.e. the booted kernel, installer or installed system asks for an address.
``done``
    The OS phase has its ACK and no transfer of that client is in progress. A transfer that
    starts later moves it back to ``os`` until it ends. When a client reaches ``done``, the
    time from the DISCOVER that began this boot to the end of its last completed transfer is
    reported once (``on_boot_complete``).
``stalled``
    Not stored: computed when asked (at scrape time), with the injectable clock. A client that
    is not ``done``, has no transfer in progress, and has made no progress (no phase change, no
    completed transfer) for ``stall_after`` seconds is ``stalled``; ``stalled_in`` keeps the
    phase it is stuck in. A client whose installed system never asks massboot for an address
    (static addressing, another DHCP server) stays in ``kernel`` and counts as stalled.

In proxy mode (README, "proxyDHCP") the OS phase is the site server's and is not seen: a
client booted by proxy replies (``proxy`` in the events) is ``done`` when its transfers after
the boot file have ended with none in progress, and back in ``kernel`` when another starts; its
boot duration is not reported (no end is known for sure). Its address is the one it reported
in its boot-server REQUEST.

A new boot begins when a PXE-phase DHCP reply reaches a client in ``os`` or ``done`` (the
machine rebooted into its ROM), or one in ``loader``/``kernel`` when the event says the
request did not come from iPXE (``ipxe`` false: the ROM started over). A PXE request from iPXE
while in ``loader`` or ``kernel`` is a chainload and continues the same boot. A new boot resets
the phase, the byte and retransmit counts and the boot timer.

HTTP responses with a body (``http.start``, then ``http.done`` or ``http.fail``) count exactly
as TFTP transfers: a kernel and initrd fetched over HTTP (iPXE, UEFI HTTP Boot) move a client
through the same phases. Answers without a body (HEAD, 304, errors) are not transfers.

TFTP and HTTP events carry the client's IP address; it is mapped to the MAC through the addresses the
DHCP replies handed out. Transfers from an address no reply handed out (``-t`` mode, static
addressing) are not tracked here (the TFTP counters still count them).

Memory is bounded: one record per MAC, one IP→MAC entry per record, and at most
``max_clients`` records (the least recently active ones go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from massboot.events import Event, EventKind

DISCOVERING = "discovering"
OFFERED = "offered"
BOUND = "bound"
LOADER = "loader"
KERNEL = "kernel"
OS = "os"
DONE = "done"
STALLED = "stalled"

#: Every phase a client can be reported in, in boot order (``stalled`` last).
PHASES: tuple[str, ...] = (DISCOVERING, OFFERED, BOUND, LOADER, KERNEL, OS, DONE, STALLED)

_BEFORE_LOADER = frozenset((DISCOVERING, OFFERED, BOUND))
_AFTER_OS = frozenset((OS, DONE))
_IN_TRANSFERS = frozenset((LOADER, KERNEL))
#: ``dhcp.ignored`` reasons that mean "this client is not booting from us".
_NOT_OURS = frozenset(("idle_state", "bootp_not_allowed", "other_server", "acl_busy", "not_boot_client"))
_NO_ADDRESS = (None, "", "0.0.0.0")


@dataclass(slots=True)
class ClientProgress:
    """What the tracker knows about one client (one per MAC)."""

    mac: str
    first_seen: float
    last_seen: float
    boot_started: float
    progress_at: float
    phase: str = DISCOVERING
    ip: str | None = None
    uuid: str | None = None
    arch: int | None = None
    boot_file: str | None = None       # the file named by the last PXE-phase reply
    loader_file: str | None = None     # the transfer that completed the loader phase
    last_file: str | None = None
    bytes: int = 0
    retransmits: int = 0
    files: int = 0                     # transfers completed in this boot
    transfers: int = 0                 # transfers in progress
    last_transfer_end: float | None = None
    discover_at: float | None = None   # the latest DISCOVER received
    os_bound: bool = False
    completed: bool = False            # boot duration reported for this boot
    boots: int = 1
    replied: bool = False              # any reply sent to it in this boot
    proxy: bool = False                # booted by proxyDHCP replies: its OS phase is not seen

    def stalled(self, now: float, stall_after: float) -> bool:
        """True when this client has made no progress for *stall_after* seconds at *now*."""
        return self.phase != DONE and self.transfers == 0 and now - self.progress_at > stall_after

    def as_dict(self, now: float, stall_after: float) -> dict[str, Any]:
        """A JSON-ready snapshot (the ``/clients`` record)."""
        stalled = self.stalled(now, stall_after)
        return {
            "mac": self.mac, "ip": self.ip, "uuid": self.uuid, "arch": self.arch,
            "phase": STALLED if stalled else self.phase,
            "stalled_in": self.phase if stalled else None,
            "last_file": self.last_file, "bytes": self.bytes, "retransmits": self.retransmits,
            "files": self.files, "transfers": self.transfers,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
            "boot_started": self.boot_started, "progress_at": self.progress_at, "boots": self.boots,
        }


class ProgressTracker:
    """Per-client boot state machine; an :class:`~massboot.events.EventBus` subscriber.

    Args:
        stall_after: seconds without progress after which a client counts as stalled.
        clock: wall-clock time source for the stall check (event times are wall clock too).
        on_boot_complete: called with the boot duration in seconds when a client reaches
            ``done`` (once per boot, only when it completed at least one transfer).
        max_clients: the most records kept; the least recently active client goes first.
    """

    def __init__(self, stall_after: float = 300.0, *, clock: Callable[[], float] = time.time,
                 on_boot_complete: Callable[[float], None] | None = None,
                 max_clients: int = 100_000) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.stall_after = stall_after
        self.clock = clock
        self.on_boot_complete = on_boot_complete
        self.max_clients = max_clients
        self._clients: OrderedDict[str, ClientProgress] = OrderedDict()
        self._by_ip: dict[str, str] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            EventKind.DHCP_RECEIVED: self._dhcp_received,
            EventKind.DHCP_REPLY: self._dhcp_reply,
            EventKind.DHCP_IGNORED: self._dhcp_refused,
            EventKind.DHCP_ACL: self._dhcp_acl,
            EventKind.TFTP_START: self._tftp_start,
            EventKind.TFTP_DONE: self._tftp_end,
            EventKind.TFTP_FAIL: self._tftp_end,
            # a file fetched over HTTP moves a client exactly as one fetched by TFTP
            EventKind.HTTP_START: self._tftp_start,
            EventKind.HTTP_DONE: self._http_end,
            EventKind.HTTP_FAIL: self._http_end,
        }

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._clients)

    def get(self, mac: str) -> ClientProgress | None:
        """The record of *mac* (``AA:BB:...`` as the events spell it), or None."""
        return self._clients.get(mac)

    def mac_for(self, ip: str) -> str | None:
        """The MAC the DHCP side last handed *ip* to, or None."""
        return self._by_ip.get(ip)

    def phase(self, mac: str, now: float | None = None) -> str | None:
        """The phase *mac* is reported in at *now* (``stalled`` included), or None if unknown."""
        record = self._clients.get(mac)
        if record is None:
            return None
        now = self.clock() if now is None else now
        return STALLED if record.stalled(now, self.stall_after) else record.phase

    def counts(self, now: float | None = None) -> dict[str, int]:
        """Clients per reported phase, every phase present (zeros included)."""
        now = self.clock() if now is None else now
        counts = dict.fromkeys(PHASES, 0)
        stall_after = self.stall_after
        for record in self._clients.values():
            counts[STALLED if record.stalled(now, stall_after) else record.phase] += 1
        return counts

    def clients(self, now: float | None = None) -> list[dict[str, Any]]:
        """A snapshot of every record, oldest first (the ``/clients`` document)."""
        now = self.clock() if now is None else now
        records = sorted(self._clients.values(), key=lambda r: (r.first_seen, r.mac))
        return [r.as_dict(now, self.stall_after) for r in records]

    def macs_after(self, after: str | None) -> list[str]:
        """The MACs known now, in order, after *after* (the ``/clients`` cursor; None: all)."""
        macs = sorted(self._clients)
        if after is not None:
            import bisect

            macs = macs[bisect.bisect_right(macs, after):]
        return macs

    def record(self, mac: str, now: float | None = None) -> dict[str, Any] | None:
        """One client's record (as in :meth:`clients`), None when it is no longer known."""
        record = self._clients.get(mac)
        if record is None:
            return None
        return record.as_dict(self.clock() if now is None else now, self.stall_after)

    # ------------------------------------------------------------------ the subscriber
    def __call__(self, event: Event) -> None:
        """Feed one event (the :class:`~massboot.events.EventBus` subscriber)."""
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    handle = __call__

    def handlers(self) -> dict[str, Callable[[Event], None]]:
        """Kind → handler, for :meth:`~massboot.events.EventBus.subscribe_kinds`: the events
        :meth:`__call__` reacts to, each handed to its handler straight from the bus."""
        return dict(self._handlers)

    # ------------------------------------------------------------------ records
    def _touch(self, mac: str, t: float, create: bool = True) -> ClientProgress | None:
        record = self._clients.get(mac)
        if record is None:
            if not create:
                return None
            record = ClientProgress(mac, first_seen=t, last_seen=t, boot_started=t, progress_at=t)
            self._clients[mac] = record
            if len(self._clients) > self.max_clients:
                _, evicted = self._clients.popitem(last=False)
                self._forget_ip(evicted)
        else:
            self._clients.move_to_end(mac)
            if t > record.last_seen:    # not max(): a call less per event (issue #14)
                record.last_seen = t
        return record

    def _forget(self, mac: str) -> None:
        record = self._clients.pop(mac, None)
        if record is not None:
            self._forget_ip(record)

    def _forget_ip(self, record: ClientProgress) -> None:
        if record.ip is not None and self._by_ip.get(record.ip) == record.mac:
            del self._by_ip[record.ip]

    def _set_ip(self, record: ClientProgress, ip: str) -> None:
        if record.ip != ip:
            self._forget_ip(record)
            record.ip = ip
        self._by_ip[ip] = record.mac

    @staticmethod
    def _enter(record: ClientProgress, phase: str, t: float) -> None:
        if record.phase != phase:
            record.phase = phase
            record.progress_at = max(record.progress_at, t)

    @staticmethod
    def _restarts(record: ClientProgress, event: Event) -> bool:
        """A PXE-phase request from this client begins a new boot (see the module docstring)."""
        if record.phase in _AFTER_OS:
            return True
        return record.phase in _IN_TRANSFERS and event.get("ipxe") is False

    def _new_boot(self, record: ClientProgress, started: float, t: float) -> None:
        record.boots += 1
        record.boot_started = started
        record.phase = DISCOVERING
        record.progress_at = t
        record.bytes = record.retransmits = record.files = 0
        record.loader_file = record.last_file = None
        record.last_transfer_end = None
        record.os_bound = record.completed = record.replied = False

    def _finish_if_done(self, record: ClientProgress, t: float) -> None:
        if not (record.os_bound and record.transfers == 0):
            return
        self._enter(record, DONE, t)
        if record.completed:
            return
        record.completed = True
        if record.last_transfer_end is not None and self.on_boot_complete is not None:
            self.on_boot_complete(max(0.0, record.last_transfer_end - record.boot_started))

    # ------------------------------------------------------------------ DHCP
    def _dhcp_received(self, event: Event) -> None:
        f = event.fields        # read directly: a hot path (issue #14)
        mac = f.get("mac")
        if not mac:
            return
        t = event.time
        record = self._touch(mac, t)
        assert record is not None
        uuid = f.get("uuid")
        if uuid:
            record.uuid = uuid
        arch = f.get("arch")
        if arch is not None:
            record.arch = arch
        if f.get("msgtype") in ("discover", "bootp"):
            record.discover_at = t
            if f.get("pxe") is True and self._restarts(record, event):
                self._new_boot(record, t, t)

    def _dhcp_reply(self, event: Event) -> None:
        f = event.fields        # read directly: a hot path (issue #14)
        mac = f.get("mac")
        if not mac:
            return
        t = event.time
        record = self._touch(mac, t)
        assert record is not None
        msgtype = f.get("msgtype")
        if msgtype == "nak":
            return
        ip = f.get("ip")
        if ip not in _NO_ADDRESS:
            if record.ip != ip or self._by_ip.get(ip) != mac:
                self._set_ip(record, ip)
        arch = f.get("arch")
        if arch is not None:
            record.arch = arch
        uuid = f.get("uuid")
        if uuid:
            record.uuid = uuid
        pxe = f.get("phase", "pxe" if f.get("pxe") else "os") == "pxe"
        if f.get("proxy"):
            record.proxy = True
        if pxe:
            if self._restarts(record, event):
                started = record.discover_at if msgtype == "offer" and record.discover_at else t
                self._new_boot(record, started, t)
            record.replied = True
            if f.get("file"):
                record.boot_file = f.get("file")
            if record.phase in _BEFORE_LOADER:
                if msgtype == "offer":
                    if record.phase == DISCOVERING:
                        self._enter(record, OFFERED, t)
                elif msgtype in ("ack", "bootp") and ip not in _NO_ADDRESS:
                    self._enter(record, BOUND, t)
            return
        # OS phase: the booted system asks for an address
        record.replied = True
        if msgtype == "offer":
            if record.phase != DONE:
                self._enter(record, OS, t)
        elif msgtype in ("ack", "bootp") and ip not in _NO_ADDRESS:
            record.os_bound = True
            self._enter(record, OS, t)
            self._finish_if_done(record, t)

    def _dhcp_refused(self, event: Event) -> None:
        reason = event.get("reason")
        if reason == "site_server" and event.get("ip"):
            # proxy mode: the address the client takes from the site server (README, "proxyDHCP")
            record = self._clients.get(event.get("mac"))
            if record is not None:
                self._set_ip(record, event.get("ip"))
            return
        if reason not in _NOT_OURS:
            return
        record = self._clients.get(event.get("mac"))
        if record is None or record.boots != 1 or record.phase not in (DISCOVERING, OFFERED):
            return
        if (record.phase == DISCOVERING and not record.replied) or reason == "other_server":
            self._forget(record.mac)

    def _dhcp_acl(self, event: Event) -> None:
        if event.get("verdict") != "denied":
            return
        record = self._clients.get(event.get("mac"))
        if record is not None and record.phase == DISCOVERING and not record.replied \
                and record.boots == 1:
            self._forget(record.mac)

    # ------------------------------------------------------------------ TFTP
    def _tftp_record(self, event: Event) -> ClientProgress | None:
        mac = self._by_ip.get(event.get("ip"))
        if mac is None:
            return None
        return self._touch(mac, event.time, create=False)

    def _tftp_start(self, event: Event) -> None:
        record = self._tftp_record(event)
        if record is None:
            return
        t = event.time
        name = event.get("name")
        record.transfers += 1
        record.last_file = name
        if record.phase == LOADER and name != record.loader_file:
            self._enter(record, KERNEL, t)
        elif record.phase == DONE:
            self._enter(record, KERNEL if record.proxy else OS, t)

    def _tftp_end(self, event: Event) -> None:
        record = self._tftp_record(event)
        if record is None:
            return
        t = event.time
        name = event.get("name")
        record.transfers = max(0, record.transfers - 1)
        record.last_file = name
        record.bytes += int(event.get("bytes") or 0)
        record.retransmits += int(event.get("retransmits") or 0)
        if event.kind in (EventKind.TFTP_DONE, EventKind.HTTP_DONE):
            record.files += 1
            record.last_transfer_end = t
            record.progress_at = max(record.progress_at, t)
            if record.phase in _BEFORE_LOADER:
                record.loader_file = name
                self._enter(record, LOADER, t)
            elif record.phase == LOADER and name != record.loader_file:
                self._enter(record, KERNEL, t)
            if record.proxy and record.phase == KERNEL and record.transfers == 0:
                # proxy mode sees no OS phase: done is the end of the last file (README, "proxyDHCP")
                self._enter(record, DONE, t)
        if record.phase == OS:
            self._finish_if_done(record, t)

    # ------------------------------------------------------------------ HTTP
    def _http_end(self, event: Event) -> None:
        """An HTTP response ended; only one with a body (after ``http.start``) is a transfer."""
        if event.get("body"):
            self._tftp_end(event)
