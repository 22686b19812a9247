"""Prometheus exporter, boot-progress tracker and status endpoints, in the server's own process.

:class:`Metrics` subscribes to the :class:`~massboot.events.EventBus`. Each event costs a few
integer additions in plain Python dicts and at most two Prometheus calls (the two TFTP
histograms for ``tftp.done``, the boot-duration histogram when a boot completes): counters are
kept as plain numbers and handed to Prometheus by a custom collector *at scrape time*, together
with the values read then through narrow status interfaces (:class:`DhcpStatus`,
:class:`TftpStatus`, :class:`CacheStatus`: leases per scope, busy and total workers per pool,
liveness, active transfers, cache size) and the clients per boot phase. Label values are
bounded: message types, reasons and verdicts outside known sets are counted as ``other``; a
MAC, an IP address or a file name is never a label. Malformed datagrams are counted by the
codec's ``exc.reason`` (a ``Reason`` of :mod:`massboot.dhcp.packet` or
:mod:`massboot.tftp.packet`).

Endpoints, served by a :class:`gevent.pywsgi.WSGIServer` on ``[metrics] address:port`` (no
thread):

``/metrics``   the Prometheus text format (``prometheus_client.make_wsgi_app``);
``/clients``   JSON list, one record per known client (see :mod:`massboot.progress`), by MAC,
               one page at a time (README, "Monitoring"): ``?limit=N`` (default and largest:
               ``[metrics] clients_page``), ``?after=MAC`` the cursor; the ``Link`` header
               (RFC 8288, ``rel="next"``) and ``X-Next-Cursor`` give the next page's;
               ``?phase=stalled`` (or any phase) filters it. Built and sent in slices, yielding
               to the hub between them, so a large page never stalls the transfers;
``/healthz``   ``200`` while every configured server's reader is alive, else ``503``; a JSON body
               (``degraded``, still ``200``, while a PostgreSQL lease database is unreachable or
               a TFTP worker process is down: ``tftp_worker_N``, restarted by the parent).
"""

from __future__ import annotations

import json
import logging
import platform
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, Histogram, Info, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from massboot import __version__
from massboot.config import MetricsConfig
from massboot.dhcp import packet as dhcp_packet
from massboot.dhcp.leases import LeaseStats
from massboot.events import Event, EventBus, EventKind
from massboot.progress import PHASES, ProgressTracker
from massboot.tftp import packet as tftp_packet

__all__ = ["BOOT_BUCKETS", "CacheStatus", "DhcpStatus", "HttpStatus", "Metrics", "ServerStatus",
           "TRANSFER_BUCKETS", "TftpStatus", "malformed_reason"]

log = logging.getLogger(__name__)

#: TFTP transfer duration and time to first byte: 1 ms .. 10 min.
TRANSFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0, 300.0, 600.0)
#: First DISCOVER to the end of the last transfer: seconds to two hours.
BOOT_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0,
                1800.0, 2700.0, 3600.0, 7200.0)

DHCP_TYPES = ("discover", "offer", "request", "decline", "ack", "nak", "release", "inform", "bootp")
REPLY_TYPES = ("offer", "ack", "nak", "bootp")
IGNORE_REASONS = ("in_flight", "idle_state", "bootp_not_allowed", "other_server", "not_our_address",
                  "unhandled", "internal_error", "pool_full", "acl_busy", "relay_not_allowed",
                  "too_many_hops", "decline_refused", "address_in_use", "probe_busy",
                  "not_boot_client", "site_server", "proxy_unhandled", "no_http_bootfile",
                  "lease_db_down")
PROBE_RESULTS = ("in_use", "free", "unavailable")
ACL_TYPES = ("mac", "uuid", "http")
ACL_VERDICTS = ("allowed", "denied", "error")
TFTP_FAIL_REASONS = ("timeout", "client_error", "options_refused", "read_error", "internal_error",
                     "shutdown", "aborted")
TFTP_DENY_REASONS = ("not_found", "access", "write", "error", "busy")
TFTP_DROP_REASONS = ("pool_full", "memory")
CACHE_REFUSE_REASONS = ("downloads", "space")
#: the ``code`` label values of ``massboot_http_requests``; any other status is ``other``
HTTP_CODES = ("200", "206", "304", "400", "401", "403", "404", "405", "408", "413", "414", "416",
              "431", "500", "501", "502", "503", "505")
HTTP_METHODS = ("GET", "HEAD")
HTTP_FAIL_REASONS = ("client_gone", "send_timeout", "upstream")
HTTP_REFUSE_REASONS = ("connections", "per_client", "fds")
#: HTTP request durations, request head to last byte: 1 ms .. 10 min (as TFTP transfers)
HTTP_BUCKETS = TRANSFER_BUCKETS
_DR, _TR = dhcp_packet.Reason, tftp_packet.Reason
#: the ``reason`` label values of ``massboot_malformed_packets``: the codecs' reasons (a DHCP
#: ``not_bytes`` is a caller's bug, counted as ``other``)
MALFORMED_REASONS: dict[str, tuple[str, ...]] = {
    "dhcp": tuple(r.value for r in (_DR.TOO_SHORT, _DR.TRUNCATED, _DR.BAD_OP, _DR.BAD_HLEN,
                                    _DR.BAD_OVERLOAD, _DR.BAD_MESSAGE_TYPE, _DR.NOT_REQUEST)),
    "tftp": tuple(r.value for r in _TR),
}
OTHER = "other"

_MALFORMED_LABELS = {protocol: {r: r for r in reasons} for protocol, reasons in MALFORMED_REASONS.items()}


def malformed_reason(protocol: str, reason: object) -> str:
    """The ``reason`` label of a ``*.malformed`` event.

    Args:
        protocol: ``dhcp`` or ``tftp``.
        reason: the event's ``reason``: a codec's ``Reason`` (``exc.reason``) or its value.

    Returns:
        A value of :data:`MALFORMED_REASONS` for that protocol, or ``other``.
    """
    if not isinstance(reason, str):
        return OTHER
    return _MALFORMED_LABELS.get(protocol, {}).get(reason, OTHER)


class ServerStatus(Protocol):
    """What the exporter reads from a server at scrape time (and ``/healthz`` on request)."""

    @property
    def alive(self) -> bool:
        """True while the server's reader runs."""
        ...

    def workers(self) -> tuple[int, int]:
        """``(busy, capacity)`` of the server's bounded greenlet pool."""
        ...


class DhcpStatus(ServerStatus, Protocol):
    """The DHCP server's status: its pools and what it knows of a client."""

    def lease_counts(self) -> dict[str, tuple[int, int]]:
        """``scope → (in use, capacity)`` of every address pool."""
        ...

    def lease_stats(self) -> dict[str, LeaseStats]:
        """``scope → lifecycle counters`` (offers expired, leases reclaimed, probations ended)."""
        ...

    def lease_db_up(self) -> dict[str, bool]:
        """``scope → reachable`` of each lease store with a database server (README, "Several
        servers"); empty for SQLite."""
        ...

    def client_identity(self, mac: str) -> tuple[str | None, int | None]:
        """``(uuid, architecture)`` last seen from *mac*; ``(None, None)`` if unknown."""
        ...

    def acl_workers(self) -> tuple[int, int] | None:
        """``(calls in flight, max_calls)`` of the HTTP ACL's pool; None without an HTTP ACL."""
        ...

    def probe_workers(self) -> tuple[int, int]:
        """``(exchanges probing, capacity)`` of the probe pool."""
        ...

    def guard_counts(self) -> dict[str, int]:
        """``clients``, ``clients_evicted``, ``acl_calls``, ``acl_cache_hits``, ``acl_refused``,
        ``receive_errors``: the counters of the DHCP server's bounds."""
        ...


class TftpStatus(ServerStatus, Protocol):
    """The TFTP server's status."""

    @property
    def active(self) -> int:
        """Transfers in progress."""
        ...

    def memory(self) -> tuple[int, int]:
        """``(reserved, budget)``: window bytes promised to running transfers, and the budget."""
        ...


class HttpStatus(ServerStatus, Protocol):
    """The HTTP file server's status (:class:`massboot.http.server.HttpServer`)."""

    @property
    def connections(self) -> int:
        """Connections open now."""
        ...

    @property
    def sending(self) -> int:
        """Responses whose body is being sent now."""
        ...

    @property
    def evicted(self) -> int:
        """Idle connections closed to make room for a newcomer (a counter)."""
        ...


class CacheStatus(Protocol):
    """The file store's remote-file cache (:class:`massboot.files.FileStore`)."""

    @property
    def remote(self) -> bool:
        """True when the root is an HTTP mirror (the cache exists)."""
        ...

    @property
    def cached_bytes(self) -> int:
        """Bytes of complete files in the cache."""
        ...

    @property
    def cached_files(self) -> int:
        """Complete files in the cache."""
        ...

    @property
    def used_bytes(self) -> int:
        """Bytes counted against the cache bound (complete, orphaned, in flight)."""
        ...

    @property
    def downloads_active(self) -> int:
        """Upstream downloads in flight."""
        ...


def _compiled_or_python(name: str, documentation: str, label: str, running: str) -> GaugeMetricFamily:
    """A gauge that is 1 for the implementation that runs (``compiled`` or ``python``), 0 for
    the other (README, Performance: the compiled TFTP data path and DHCP codec)."""
    family = GaugeMetricFamily(name, documentation, labels=(label,))
    for value in ("compiled", "python"):
        family.add_metric((value,), 1 if value == running else 0)
    return family


def _bounded(value: Any, known: Iterable[str]) -> str:
    return value if isinstance(value, str) and value in known else OTHER


def _label_keys(known: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``value → (value,)`` of a bounded label's known values: the counter key, made once."""
    return {value: (value,) for value in known}


_OTHER_KEY = (OTHER,)


def _keys(keys: dict[str, tuple[str, ...]], value: Any) -> tuple[str, ...]:
    """The one-label counter key of *value*, as ``(_bounded(value, known),)`` gives it."""
    if not isinstance(value, str):
        return _OTHER_KEY
    return keys.get(value, _OTHER_KEY)


_RECEIVED_KEYS = _label_keys(DHCP_TYPES)
_REPLY_KEYS = _label_keys(REPLY_TYPES)


class _Counts:
    """A labelled counter kept as plain numbers; exported by the collector at scrape time."""

    __slots__ = ("name", "doc", "labels", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (),
                 initial: Iterable[tuple[str, ...]] = ()) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {key: 0 for key in initial}
        if not labels:
            self.values[()] = 0

    def inc(self, key: tuple[str, ...] = (), amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def get(self, key: tuple[str, ...] = ()) -> float:
        return self.values.get(key, 0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class _ScrapeCollector(Collector):
    """Yields the event counters and the values read from the servers at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for counts in m.counters:
            yield counts.family()
        for read in (m._collect_progress, m._collect_dhcp, m._collect_tftp, m._collect_http,
                     m._collect_cache, m._collect_log):
            try:
                yield from read()
            except Exception:  # a scrape must not fail because one server is half-built
                log.exception("metrics: %s failed", read.__name__)


class Metrics:
    """The exporter: event counters, histograms, scrape-time gauges and the HTTP endpoints.

    Args:
        config: the ``[metrics]`` settings (address, port, stall_after).
        events: the bus to subscribe to.
        dhcp: the DHCP server's status, read at scrape time; None when it does not run.
        tftp: the TFTP server's status; None when it does not run.
        http: the HTTP file server's status (``-H``); None when it does not run.
        cache: the file store's cache; None when there is no file store.
        scopes: the DHCP scope names (``main`` and each ``[subnet:NAME]``): the bounded
            ``scope`` label values.
        registry: where to register; a fresh :class:`CollectorRegistry` when None.
        clock: wall-clock time source of the stall check.
    """

    def __init__(self, config: MetricsConfig, events: EventBus, *, dhcp: DhcpStatus | None = None,
                 tftp: TftpStatus | None = None, cache: CacheStatus | None = None,
                 http: HttpStatus | None = None,
                 scopes: Sequence[str] = ("main",), registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._dhcp = dhcp
        self._tftp = tftp
        self._http = http
        self._cache = cache
        self._scopes = tuple(scopes)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None

        def c(name: str, doc: str, labels: tuple[str, ...] = (),
              initial: Iterable[tuple[str, ...]] = ()) -> _Counts:
            counts = _Counts(name, doc, labels, initial)
            self.counters.append(counts)
            return counts

        self.counters: list[_Counts] = []
        self.dhcp_received = c("massboot_dhcp_packets_received", "DHCP/BOOTP requests decoded, by "
                               "message type.", ("type",), [(t,) for t in DHCP_TYPES])
        self.dhcp_replies = c("massboot_dhcp_replies_sent", "DHCP/BOOTP replies sent, by message type.",
                              ("type",), [(t,) for t in REPLY_TYPES])
        self.proxy_replies = c("massboot_dhcp_proxy_replies_sent", "Of the replies sent, the proxyDHCP "
                               "ones ([bootpd] mode = proxy), by message type.", ("type",),
                               [("offer",), ("ack",)])
        self.dhcp_ignored = c("massboot_dhcp_requests_ignored", "DHCP requests left unanswered on "
                              "purpose, by reason.", ("reason",), [(r,) for r in IGNORE_REASONS])
        self.pool_exhausted = c("massboot_dhcp_pool_exhausted", "Requests that found no free address "
                                "in their pool, by scope.", ("scope",), [(s,) for s in self._scopes])
        self.acl = c("massboot_dhcp_acl_decisions", "ACL decisions, by ACL type and verdict (error: "
                     "the HTTP ACL did not answer in time or failed).", ("acl", "verdict"),
                     [(a, v) for a in ACL_TYPES for v in ACL_VERDICTS])
        self.arch_fallbacks = c("massboot_dhcp_arch_fallbacks", "Clients whose architecture has no "
                                "[bootfile] entry and got the default boot file.")
        self.declined = c("massboot_dhcp_declined_addresses", "Addresses declined by the client holding "
                          "them (in use by another host) and set aside for the probation.")
        self.probes = c("massboot_dhcp_probes", "ICMP probes of an address before it is offered again, "
                        "by result (in_use: it answered).", ("result",), [(r,) for r in PROBE_RESULTS])
        self.notifications = c("massboot_notifications", "UDP notifications, by result (sent, "
                               "failed).", ("result",), [("sent",), ("failed",)])
        self.malformed = c("massboot_malformed_packets", "Datagrams dropped by a codec, by protocol "
                           "and reason.", ("protocol", "reason"),
                           [(p, r) for p, reasons in MALFORMED_REASONS.items() for r in (*reasons, OTHER)])
        self.tftp_started = c("massboot_tftp_transfers_started", "TFTP read transfers started.")
        self.tftp_completed = c("massboot_tftp_transfers_completed", "TFTP transfers that ended with "
                                "the client's last ACK.")
        self.tftp_failed = c("massboot_tftp_transfers_failed", "TFTP transfers that ended without it, "
                             "by reason.", ("reason",), [(r,) for r in TFTP_FAIL_REASONS])
        self.tftp_denied = c("massboot_tftp_requests_denied", "TFTP requests refused before any "
                             "transfer, by reason.", ("reason",), [(r,) for r in TFTP_DENY_REASONS])
        self.tftp_dropped = c("massboot_tftp_requests_dropped", "TFTP read requests left unanswered "
                              "(the client retries), by reason.", ("reason",),
                              [(r,) for r in TFTP_DROP_REASONS])
        self.tftp_bytes = c("massboot_tftp_sent_bytes", "File bytes delivered to TFTP clients "
                            "(acknowledged).")
        self.tftp_blocks = c("massboot_tftp_data_blocks", "Distinct TFTP DATA blocks delivered "
                             "(the denominator of the retransmit ratio).")
        self.tftp_retransmits = c("massboot_tftp_retransmits", "TFTP datagrams sent again after a "
                                  "timeout or a client's gap.")
        self.cache_hits = c("massboot_cache_hits", "Remote files served from the cache.")
        self.cache_misses = c("massboot_cache_misses", "Remote file opens (and boot-file size "
                              "prefetches) that started an upstream download.")
        self.cache_coalesced = c("massboot_cache_coalesced", "Remote file opens that joined a "
                                 "download already in flight.")
        self.cache_upstream = c("massboot_cache_upstream_bytes", "Bytes received from HTTP mirrors.")
        self.http_refused = c("massboot_metrics_connections_refused", "Connections to the metrics "
                              "endpoint answered 503 and closed: [metrics] max_connections were open.")
        self.cache_failures = c("massboot_cache_upstream_failures", "Upstream downloads that failed, by "
                                "reason (not_found: the mirror has no such file; error: any other "
                                "failure).", ("reason",), [("not_found",), ("error",)])
        self.cache_refused = c("massboot_cache_refused", "Remote file requests (and prefetches) "
                               "refused by a cache bound, by reason (downloads: max_downloads in "
                               "flight; space: cache_size full of files in use or in flight).",
                               ("reason",), [(r,) for r in CACHE_REFUSE_REASONS])

        self.http_requests = c("massboot_http_requests", "HTTP requests answered or cut short, by "
                               "method (GET, HEAD, other: did not parse) and status code.",
                               ("method", "code"),
                               [(m, code) for m in HTTP_METHODS for code in ("200", "206", "404")])
        self.http_bytes = c("massboot_http_sent_bytes", "File bytes sent in HTTP response bodies.")
        self.http_failed = c("massboot_http_responses_failed", "HTTP responses cut short, by reason "
                             "(client_gone, send_timeout: the client stopped reading, upstream: the "
                             "mirror download failed).", ("reason",), [(r,) for r in HTTP_FAIL_REASONS])
        self.http_conn_refused = c("massboot_http_connections_refused", "HTTP connections turned "
                                   "away with 503, by reason (connections: max_connections busy, none "
                                   "idle; per_client: max_per_client; fds: out of file descriptors).",
                                   ("reason",), [(r,) for r in HTTP_REFUSE_REASONS])

        self.registry.register(_ScrapeCollector(self))   # first: counters lead the exposition
        self.http_duration = Histogram(
            "massboot_http_request_duration_seconds",
            "Duration of HTTP responses with a body sent in full, from the request head to the last "
            "byte.", buckets=HTTP_BUCKETS, registry=self.registry)
        self.transfer_duration = Histogram(
            "massboot_tftp_transfer_duration_seconds",
            "Duration of completed TFTP transfers, from the read request to the last ACK.",
            buckets=TRANSFER_BUCKETS, registry=self.registry)
        self.ttfb = Histogram(
            "massboot_tftp_time_to_first_byte_seconds",
            "Time from a read request to the first DATA block of completed transfers.",
            buckets=TRANSFER_BUCKETS, registry=self.registry)
        self.boot_duration = Histogram(
            "massboot_boot_duration_seconds",
            "Per client and boot: time from the first DISCOVER to the end of the last completed "
            "transfer, observed when the client reaches the done phase.",
            buckets=BOOT_BUCKETS, registry=self.registry)
        Info("massboot_build", "massboot version (value 1).", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        try:
            ProcessCollector(registry=self.registry)   # process_start_time_seconds, CPU, memory, fds
        except ValueError:   # the registry already has one (the global default registry)
            pass

        self.progress = ProgressTracker(config.stall_after, clock=clock,
                                        on_boot_complete=self.boot_duration.observe)
        self._handlers: dict[str, Callable[[Event], None]] = {
            EventKind.DHCP_RECEIVED: self._dhcp_received,
            EventKind.DHCP_REPLY: self._dhcp_reply,
            EventKind.DHCP_IGNORED: self._dhcp_ignored,
            EventKind.DHCP_MALFORMED: self._malformed,
            EventKind.DHCP_EXHAUSTED: self._dhcp_exhausted,
            EventKind.DHCP_DECLINED: lambda e: self.declined.inc(),
            EventKind.DHCP_PROBE: lambda e: self.probes.inc((_bounded(e.get("result"), PROBE_RESULTS),)),
            EventKind.DHCP_ACL: self._dhcp_acl,
            EventKind.DHCP_NOTIFY: self._dhcp_notify,
            EventKind.DHCP_ARCH_FALLBACK: lambda e: self.arch_fallbacks.inc(),
            EventKind.TFTP_START: lambda e: self.tftp_started.inc(),
            EventKind.TFTP_DONE: self._tftp_done,
            EventKind.TFTP_FAIL: self._tftp_fail,
            EventKind.TFTP_DENIED: self._tftp_denied,
            EventKind.TFTP_DROPPED: self._tftp_dropped,
            EventKind.TFTP_MALFORMED: self._malformed,
            EventKind.HTTP_DONE: self._http_done,
            EventKind.HTTP_FAIL: self._http_fail,
            EventKind.HTTP_REFUSED: lambda e: self.http_conn_refused.inc(
                (_bounded(e.get("reason"), HTTP_REFUSE_REASONS),)),
            EventKind.CACHE_HIT: lambda e: self.cache_hits.inc(),
            EventKind.CACHE_MISS: lambda e: self.cache_misses.inc(),
            EventKind.CACHE_COALESCED: lambda e: self.cache_coalesced.inc(),
            EventKind.CACHE_UPSTREAM: self._cache_upstream,
            EventKind.CACHE_REFUSED: lambda e: self.cache_refused.inc(
                (_bounded(e.get("reason"), CACHE_REFUSE_REASONS),)),
        }
        self._wsgi_metrics = make_wsgi_app(self.registry)
        # boot progress first, then the counters; each kind's handlers are called straight
        # from the bus, with no lookup of the kind per event (issue #14)
        events.subscribe_kinds(self.progress.handlers())
        events.subscribe_kinds(self._handlers)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind ``address:port`` (synchronously; port 0 picks one) and serve the endpoints."""
        server = _HttpServer((self.config.address, self.config.port), self.wsgi_app, log=None,
                             error_log=log, spawn=Pool(self.config.max_connections + 1))
        server.limit(self.config.max_connections, self.config.idle_timeout, self.http_refused)
        server.start()
        self._server = server
        log.info("metrics on http://%s:%d/metrics", self.config.address, self.port)

    @property
    def alive(self) -> bool:
        """True while the HTTP server accepts connections.

        gevent closes a server whose ``accept`` fails with a fatal error (EBADF, EINVAL,
        ENOTSOCK); once started, False before :meth:`stop` means the endpoint died.
        """
        return self._server is not None and self._server.started

    @property
    def error(self) -> str | None:
        """Why the HTTP server closed on its own (a fatal ``accept`` error), else None."""
        return self._server.error if self._server is not None else None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None or self._server.socket is None:
            raise RuntimeError("Metrics not started")
        return self._server.socket.getsockname()[1]

    def stop(self) -> None:
        """Stop serving (open requests get a second to finish)."""
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None

    # ------------------------------------------------------------------ events
    def _dhcp_received(self, event: Event) -> None:
        # the label key from a table, not _bounded(): two events per DHCP message (issue #14)
        self.dhcp_received.inc(_keys(_RECEIVED_KEYS, event.fields.get("msgtype")))

    def _dhcp_reply(self, event: Event) -> None:
        f = event.fields
        self.dhcp_replies.inc(_keys(_REPLY_KEYS, f.get("msgtype")))
        if f.get("proxy"):
            self.proxy_replies.inc((_bounded(f.get("msgtype"), ("offer", "ack")),))

    def _dhcp_ignored(self, event: Event) -> None:
        reason = event.get("reason")
        if isinstance(reason, str) and reason.startswith("unhandled"):
            reason = "unhandled"
        self.dhcp_ignored.inc((_bounded(reason, IGNORE_REASONS),))

    def _dhcp_exhausted(self, event: Event) -> None:
        scope = event.get("scope") or "main"
        self.pool_exhausted.inc((_bounded(scope, self._scopes),))

    def _dhcp_acl(self, event: Event) -> None:
        self.acl.inc((_bounded(event.get("acl"), ACL_TYPES), _bounded(event.get("verdict"), ACL_VERDICTS)))

    def _dhcp_notify(self, event: Event) -> None:
        self.notifications.inc(("sent" if event.get("ok") else "failed",))

    def _malformed(self, event: Event) -> None:
        protocol = "dhcp" if event.kind == EventKind.DHCP_MALFORMED else "tftp"
        self.malformed.inc((protocol, malformed_reason(protocol, event.get("reason"))))

    def _tftp_end(self, event: Event) -> None:
        self.tftp_bytes.inc(amount=int(event.get("bytes") or 0))
        self.tftp_retransmits.inc(amount=int(event.get("retransmits") or 0))
        self.tftp_blocks.inc(amount=int(event.get("blocks") or 0))

    def _tftp_done(self, event: Event) -> None:
        self.tftp_completed.inc()
        self._tftp_end(event)
        duration = event.get("duration")
        if duration is not None:
            self.transfer_duration.observe(duration)
            ttfb = event.get("ttfb")
            self.ttfb.observe(duration if ttfb is None else ttfb)

    def _tftp_fail(self, event: Event) -> None:
        self.tftp_failed.inc((_bounded(event.get("reason"), TFTP_FAIL_REASONS),))
        self._tftp_end(event)

    def _tftp_denied(self, event: Event) -> None:
        self.tftp_denied.inc((_bounded(event.get("reason"), TFTP_DENY_REASONS),))

    def _tftp_dropped(self, event: Event) -> None:
        self.tftp_dropped.inc((_bounded(event.get("reason"), TFTP_DROP_REASONS),))

    def _http_end(self, event: Event) -> None:
        self.http_requests.inc((_bounded(event.get("method"), HTTP_METHODS),
                                _bounded(str(event.get("status")), HTTP_CODES)))
        self.http_bytes.inc(amount=int(event.get("bytes") or 0))

    def _http_done(self, event: Event) -> None:
        self._http_end(event)
        if event.get("body"):
            self.http_duration.observe(event.get("duration") or 0.0)

    def _http_fail(self, event: Event) -> None:
        self._http_end(event)
        self.http_failed.inc((_bounded(event.get("reason"), HTTP_FAIL_REASONS),))

    def _cache_upstream(self, event: Event) -> None:
        self.cache_upstream.inc(amount=int(event.get("bytes") or 0))
        error = event.get("error")
        if error is not None:
            reason = event.get("reason")   # the FileReason value of the failure
            not_found = reason == "not_found" if reason is not None else error == "File not found"
            self.cache_failures.inc(("not_found" if not_found else "error",))

    # ------------------------------------------------------------------ scrape time
    def _collect_progress(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("massboot_boot_clients", "Clients per boot phase (stalled: no "
                                  "progress for [metrics] stall_after seconds).", labels=("phase",))
        for phase, count in self.progress.counts().items():
            gauge.add_metric((phase,), count)
        yield gauge
        yield GaugeMetricFamily("massboot_boot_stall_after_seconds", "The stall threshold in use.",
                                value=self.config.stall_after)

    def _collect_dhcp(self) -> Iterator[Metric]:
        dhcp = self._dhcp
        if dhcp is None:
            return
        in_use = GaugeMetricFamily("massboot_dhcp_leases_in_use", "Pool addresses with an active "
                                   "binding (offer within its hold, lease not expired, static or "
                                   "reserved), by scope.", labels=("scope",))
        capacity = GaugeMetricFamily("massboot_dhcp_leases_capacity", "Pool addresses that can be "
                                     "handed out (in use + free or reclaimable), by scope.",
                                     labels=("scope",))
        for scope, (used, size) in dhcp.lease_counts().items():
            in_use.add_metric((scope,), used)
            capacity.add_metric((scope,), size)
        yield in_use
        yield capacity
        # the lease lifecycle's counters are the stores' (README, "Lease lifecycle")
        families = [
            (CounterMetricFamily("massboot_dhcp_offers_expired", "Offers forgotten: no REQUEST came "
                                 "within offer_hold, by scope.", labels=("scope",)), "offers_expired"),
            (CounterMetricFamily("massboot_dhcp_leases_reclaimed", "Expired bindings whose address "
                                 "went to another client (the pool was full), by scope.",
                                 labels=("scope",)), "reclaimed"),
            (CounterMetricFamily("massboot_dhcp_probations_ended", "Declined (or found in use) "
                                 "addresses back in the pool, by scope.", labels=("scope",)),
             "probation_ended"),
        ]
        for scope, stats in dhcp.lease_stats().items():
            for family, name in families:
                family.add_metric((scope,), getattr(stats, name))
        for family, _ in families:
            yield family
        db_up = dhcp.lease_db_up()
        up = GaugeMetricFamily("massboot_lease_db_up", "1 while the scope's lease database answers "
                               "(always for SQLite); 0: PostgreSQL unreachable, degraded: only known "
                               "bindings are renewed (README, Several servers).", labels=("scope",))
        for scope in dhcp.lease_counts():
            up.add_metric((scope,), 1 if db_up.get(scope, True) else 0)
        yield up
        counts = dhcp.guard_counts()
        yield GaugeMetricFamily("massboot_dhcp_clients", "Client records the DHCP server keeps "
                                "(at most [bootpd] max_clients).", value=counts["clients"])
        yield CounterMetricFamily("massboot_dhcp_clients_evicted", "Client records dropped, least "
                                  "recently seen first, to stay within max_clients.",
                                  value=counts["clients_evicted"])
        yield CounterMetricFamily("massboot_dhcp_acl_calls", "Calls made to the HTTP ACL server.",
                                  value=counts["acl_calls"])
        yield CounterMetricFamily("massboot_dhcp_acl_cache_hits", "HTTP ACL questions answered "
                                  "from the verdict cache ([http] cache_ttl).",
                                  value=counts["acl_cache_hits"])
        yield CounterMetricFamily("massboot_dhcp_receive_errors", "Receive errors on the DHCP socket "
                                  "that passed (ICMP errors, lack of buffers); a persistent one stops "
                                  "the service.", value=counts["receive_errors"])
        yield _compiled_or_python("massboot_dhcp_codec", "1 for the DHCP codec that runs: compiled "
                                  "or python (massboot/dhcp/_codec.c, built by pip install).",
                                  "codec", dhcp_packet.CODEC)   # README, Performance

    def _collect_log(self) -> Iterator[Metric]:
        """The log writer's counters (massboot.logwriter; README, "[logger]")."""
        from massboot.logwriter import BufferedHandler

        writers = [h for h in logging.getLogger().handlers if isinstance(h, BufferedHandler)]
        if not writers:
            return
        yield CounterMetricFamily("massboot_log_lines_dropped", "Log lines dropped because 100,000 "
                                  "were waiting to be written (the log's output did not keep up).",
                                  value=sum(h.dropped for h in writers))
        yield CounterMetricFamily("massboot_log_write_errors", "Batches of log lines the log's "
                                  "output refused (a full disk, a closed pipe).",
                                  value=sum(h.errors for h in writers))

    def _collect_http(self) -> Iterator[Metric]:
        http = self._http
        if http is None:
            return
        yield GaugeMetricFamily("massboot_http_connections", "HTTP connections open ([httpd] "
                                "max_connections at most).", value=http.connections)
        yield GaugeMetricFamily("massboot_http_responses_active", "HTTP responses whose body is "
                                "being sent.", value=http.sending)
        yield CounterMetricFamily("massboot_http_connections_evicted", "Idle HTTP connections "
                                  "closed to make room for a new one (max_connections reached).",
                                  value=http.evicted)

    def _workers(self) -> Iterator[tuple[str, int, int]]:
        for name, server in (("dhcp", self._dhcp), ("tftp", self._tftp), ("http", self._http)):
            if server is not None:
                yield (name, *server.workers())
        if self._dhcp is not None:
            calls = self._dhcp.acl_workers()
            if calls is not None:
                yield ("dhcp_acl", *calls)
            yield ("dhcp_probe", *self._dhcp.probe_workers())

    def _collect_tftp(self) -> Iterator[Metric]:
        tftp = self._tftp
        if tftp is not None:
            yield GaugeMetricFamily("massboot_tftp_active_transfers", "TFTP transfers in progress.",
                                    value=tftp.active)
            reserved, budget = tftp.memory()
            yield GaugeMetricFamily("massboot_tftp_buffer_reserved_bytes", "Window bytes "
                                    "promised to running TFTP transfers.", value=reserved)
            yield GaugeMetricFamily("massboot_tftp_buffer_budget_bytes", "[tftpd] memory_budget: "
                                    "the most all TFTP transfer windows may buffer.", value=budget)
            data_path = getattr(tftp, "data_path", None)   # [tftpd] fast_path (README, Performance)
            if data_path is not None:
                yield _compiled_or_python("massboot_tftp_data_path", "1 for the TFTP data path "
                                          "that runs: compiled or python ([tftpd] fast_path).",
                                          "path", data_path)
                from massboot.tftp.server import (
                    busy_poll_counters,
                    fast_path_counters,
                    read_ahead_counters,
                    scan_counters,
                )

                summed = getattr(tftp, "compiled_blocks", None)     # worker processes, summed
                yield CounterMetricFamily("massboot_tftp_compiled_blocks", "TFTP DATA blocks the "
                                          "compiled data path sent (the rest went through Python).",
                                          value=summed() if summed else fast_path_counters()[0])
                spun = getattr(tftp, "busy_poll_seconds", None)     # worker processes, summed
                yield CounterMetricFamily("massboot_tftp_busy_poll_seconds", "Time the compiled "
                                          "TFTP data path spent polling its sockets between "
                                          "wake-ups in a storm, yielding the CPU to any other "
                                          "runnable task ([tftpd] busy_poll).",
                                          value=spun() if spun else busy_poll_counters()[2] / 1e9)
                scans = getattr(tftp, "storm_scans", None)          # worker processes, summed
                yield CounterMetricFamily("massboot_tftp_storm_scans", "Storm scans the compiled "
                                          "TFTP data path began: many transfers ready at once, "
                                          "their sockets polled in passes until the storm "
                                          "passed ([tftpd] busy_poll).",
                                          value=scans() if scans else scan_counters()[0])
                read_ahead = getattr(tftp, "read_ahead_chunks", None)   # worker processes, summed
                chunks = CounterMetricFamily("massboot_tftp_read_ahead_chunks", "Read-ahead "
                                             "chunks of the compiled TFTP data path by source: "
                                             "shared (read by another transfer of the same file "
                                             "moments before), read (from the page cache into the "
                                             "shared chunks), own (into the transfer's own buffer: "
                                             "every shared place for it was in use).",
                                             labels=("source",))
                for source, value in zip(("shared", "read", "own"),
                                         read_ahead() if read_ahead else read_ahead_counters(),
                                         strict=True):
                    chunks.add_metric((source,), value)
                yield chunks
        busy = GaugeMetricFamily("massboot_workers_busy", "Greenlets of a server's bounded pool in "
                                 "use (dhcp: exchanges, dhcp_acl: HTTP ACL calls, dhcp_probe: exchanges "
                                 "waiting on ICMP probes, tftp: transfers, http: connections).",
                                 labels=("pool",))
        capacity = GaugeMetricFamily("massboot_workers_capacity", "Size of a server's bounded pool.",
                                     labels=("pool",))
        for name, used, size in self._workers():
            busy.add_metric((name,), used)
            capacity.add_metric((name,), size)
        yield busy
        yield capacity

    def _collect_cache(self) -> Iterator[Metric]:
        files = self._cache
        if files is None or not files.remote:
            return
        yield GaugeMetricFamily("massboot_cache_stored_bytes", "Bytes of complete files in the "
                                "remote-file cache.", value=files.cached_bytes)
        yield GaugeMetricFamily("massboot_cache_stored_files", "Complete files in the remote-file "
                                "cache.", value=files.cached_files)
        yield GaugeMetricFamily("massboot_cache_used_bytes", "Bytes counted against cache_size: "
                                "complete files, files still being read after eviction, downloads "
                                "in flight.", value=files.used_bytes)
        yield GaugeMetricFamily("massboot_cache_downloads_active", "Upstream downloads in flight "
                                "(at most max_downloads).", value=files.downloads_active)

    # ------------------------------------------------------------------ HTTP
    def clients(self, phase: str | None = None) -> list[dict[str, Any]]:
        """The ``/clients`` document: tracker records, completed from the DHCP side's knowledge."""
        records = self.progress.clients()
        dhcp = self._dhcp
        if dhcp is not None:
            for record in records:
                if record["uuid"] is None or record["arch"] is None:
                    uuid, arch = dhcp.client_identity(record["mac"])
                    if record["uuid"] is None:
                        record["uuid"] = uuid
                    if record["arch"] is None:
                        record["arch"] = arch
        if phase:
            records = [r for r in records if r["phase"] == phase]
        return records

    def _clients_page(self, start_response: Callable[..., Any], phase: str | None, after: str | None,
                      limit: int) -> Iterable[bytes]:
        """One ``/clients`` page, by MAC after the cursor *after*: built and sent in slices.

        The records are read slice by slice, yielding to the hub between slices, so that 50,000
        clients never hold the transfers up; the body goes out chunked as it is built.
        """
        macs = self.progress.macs_after(after)
        found: list[dict[str, Any]] = []
        scanned = 0
        now = self.progress.clock()
        while len(found) < limit and scanned < len(macs):
            for mac in macs[scanned:scanned + PAGE_SLICE]:
                scanned += 1
                rec = self.progress.record(mac, now)
                if rec is not None and (phase is None or rec["phase"] == phase):
                    self._complete(rec)
                    found.append(rec)
                    if len(found) == limit:
                        break
            if len(found) < limit and scanned < len(macs):
                gevent.sleep(0)
        headers = [("Content-Type", "application/json")]
        if scanned < len(macs) and found:
            cursor = found[-1]["mac"]
            query = {"after": cursor, "limit": limit, **({"phase": phase} if phase else {})}
            headers += [("Link", f'</clients?{urllib.parse.urlencode(query)}>; rel="next"'),
                        ("X-Next-Cursor", cursor)]
        start_response("200 OK", headers)
        return _slices(found)

    def _complete(self, record: dict[str, Any]) -> None:
        dhcp = self._dhcp
        if dhcp is not None and (record["uuid"] is None or record["arch"] is None):
            uuid, arch = dhcp.client_identity(record["mac"])
            if record["uuid"] is None:
                record["uuid"] = uuid
            if record["arch"] is None:
                record["arch"] = arch

    def health(self) -> tuple[bool, dict[str, str]]:
        """``(healthy, {service: "up" | "down"})`` for the configured servers; with a lease
        database server, ``lease_db`` too: ``down`` there is *degraded*, not unhealthy (the
        server still renews known bindings; restarting it would not help)."""
        status: dict[str, str] = {}
        for name, server in (("dhcp", self._dhcp), ("tftp", self._tftp), ("http", self._http)):
            if server is None:
                continue
            status[name] = "up" if server.alive else "down"
        healthy = all(v == "up" for v in status.values())
        states = getattr(self._tftp, "states", None)
        if states is not None:   # TFTP worker processes: one down is degraded, it is restarted
            for index, up in enumerate(states()):
                status[f"tftp_worker_{index}"] = "up" if up else "down"
        if self._dhcp is not None:
            db_up = self._dhcp.lease_db_up()
            if db_up:
                status["lease_db"] = "up" if all(db_up.values()) else "down"
        return healthy, status

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application behind the HTTP server (usable on its own in tests)."""
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._wsgi_metrics(environ, start_response)
        if path == "/clients":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            phase = query.get("phase", [None])[0]
            if phase is not None and phase not in PHASES:
                return _reply(start_response, "400 Bad Request", {"error": f"unknown phase {phase!r}",
                                                                  "phases": list(PHASES)})
            page = self.config.clients_page
            try:
                limit = int(query.get("limit", [page])[0])
            except ValueError:
                limit = 0
            if not 1 <= limit <= page:
                return _reply(start_response, "400 Bad Request",
                              {"error": f"limit must be between 1 and {page} ([metrics] clients_page)"})
            return self._clients_page(start_response, phase, query.get("after", [None])[0], limit)
        if path == "/healthz":
            healthy, status = self.health()
            state = "ok" if all(v == "up" for k, v in status.items()
                                if k == "lease_db" or k.startswith("tftp_worker_")) else "degraded"
            body = {"status": state if healthy else "failing", **status}
            data_path = getattr(self._tftp, "data_path", None)   # [tftpd] fast_path
            if data_path is not None:
                body["tftp_data_path"] = data_path
            if self._dhcp is not None:       # README, Performance: the compiled DHCP codec
                body["dhcp_codec"] = dhcp_packet.CODEC
            return _reply(start_response, "200 OK" if healthy else "503 Service Unavailable", body)
        if path == "/":
            text = b"massboot: /metrics /clients /healthz\n"
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                      ("Content-Length", str(len(text)))])
            return [text]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]


#: ``/clients`` records built or encoded between two yields to the hub
PAGE_SLICE = 500


def _slices(records: list[dict[str, Any]]) -> Iterator[bytes]:
    """A JSON list, encoded *PAGE_SLICE* records at a time, yielding to the hub between slices."""
    yield b"["
    for start in range(0, len(records), PAGE_SLICE):
        chunk = ",".join(json.dumps(r, separators=(",", ":")) for r in records[start:start + PAGE_SLICE])
        yield (("," if start else "") + chunk).encode()
        gevent.sleep(0)
    yield b"]\n"


class _HttpServer(WSGIServer):
    """gevent's WSGI server, remembering the fatal ``accept`` error that closed it.

    With :meth:`limit`: at most *max_connections* served at once (one more gets ``503`` and is
    closed, counted), and a connection silent for *idle_timeout* seconds is closed.
    """

    error: str | None = None
    _max_connections: int | None = None
    _idle_timeout: float | None = None
    _refused: _Counts | None = None
    _open = 0

    def limit(self, max_connections: int, idle_timeout: float, refused: _Counts) -> None:
        self._max_connections, self._idle_timeout, self._refused = max_connections, idle_timeout, refused

    def handle(self, sock: Any, address: Any) -> None:
        if self._max_connections is not None and self._open >= self._max_connections:
            if self._refused is not None:
                self._refused.inc()
            try:
                sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            except OSError:
                pass
            sock.close()
            return
        self._open += 1
        try:
            if self._idle_timeout is not None:
                sock.settimeout(self._idle_timeout)
            super().handle(sock, address)
        finally:
            self._open -= 1

    def is_fatal_error(self, ex: BaseException) -> bool:
        fatal = bool(super().is_fatal_error(ex))
        if fatal:
            self.error = f"accept failed: {ex}"
        return fatal


def _reply(start_response: Callable[..., Any], status: str, body: Any) -> list[bytes]:
    data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
