"""The outcome log: one line per DHCP/TFTP/HTTP event, written by a subscriber of the bus.

The servers do not log their outcomes themselves: they emit events (:mod:`massboot.events`)
and :class:`EventLog` writes one line for each, in the ``key=value`` text operators know
(README, "[logger]"). Lines about a server's own workings (a traceback, a socket error, a
duplicate request) stay in that server.

Each line goes to the logger of the server the outcome comes from (``massboot.dhcp.server``,
``massboot.tftp.server``, ``massboot.notify``) with that server's file as its origin, so
per-logger levels and pybootd's ``PXE[%(module)s]`` format read as before: ``PXE[server]`` also
for what :mod:`massboot.dhcp.exchange` decides, since the server emits its events. The record
is built directly, without the caller lookup on the stack that ``log.info()`` does, and only
when its level is enabled; a kind whose every line is below the level (``dhcp.received`` at
``info``) costs one ``isEnabledFor``. The records go to the handler of ``[logger]``, which
writes them off the hub in batches (:mod:`massboot.logwriter`).

``cache.*`` events are not written here: the file store logs its downloads itself.

Text a TFTP client chose (a file name, option names and values, an ERROR message) goes through
:func:`client_text`: a plain name reads as before (``file=pxelinux.0``); anything else (a
space, a quote, a newline or other control character, non-ASCII) is quoted like Python's
``repr`` so one event stays one line that cannot be forged, and text longer than
:data:`TEXT_MAX` characters is cut, with its length noted.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from massboot.events import ACL_NO_UUID, Event, EventKind
from massboot.sources import TEXT_MAX, client_text

__all__ = ["EventLog", "TEXT_MAX", "client_text"]

DEBUG, INFO, WARNING = logging.DEBUG, logging.INFO, logging.WARNING

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

# what a format returns: (level, message, args), or None for no line
Line = tuple[int, str, tuple[Any, ...]]


class _Origin:
    """A logger and the source file its lines are attributed to."""

    __slots__ = ("logger", "path", "filename", "module")

    def __init__(self, name: str, *path: str) -> None:
        self.logger = logging.getLogger(name)
        self.path = os.path.join(_PACKAGE, *path)
        self.filename = os.path.basename(self.path)
        self.module = os.path.splitext(self.filename)[0]


_LEVEL_NAMES = {level: logging.getLevelName(level) for level in (DEBUG, INFO, WARNING)}


class EventRecord(logging.LogRecord):
    """A :class:`logging.LogRecord` of one outcome line, built without the work the base class
    does per record that is the same for every line of an origin (the file and module names
    from the path, the level's name): the outcome log makes one per OFFER and ACK (issue #14).
    Every attribute a handler or formatter reads is there, set as the base class sets it.
    """

    def __init__(self, origin: _Origin, level: int, msg: str, args: tuple[Any, ...],
                 kind: str) -> None:   # noqa: D107 (a LogRecord; no super().__init__ on purpose)
        created = time.time()
        # the attributes that are the same for every line of an origin and level in this
        # process, set in one step from a dict made once (see _constants)
        constants = _TEMPLATES.get((origin, level, logging.logProcesses, logging.logMultiprocessing))
        if constants is None:
            constants = _constants(origin, level)
        self.__dict__.update(constants)
        self.msg = msg
        self.args = args
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - logging._startTime) * 1000
        if logging.logThreads:      # the greenlet's, under gevent's monkey-patching
            self.thread = threading.get_ident()
            self.threadName = threading.current_thread().name
        self.event = kind


#: the constant attributes of an EventRecord, by (origin, level, and logging's logProcesses
#: and logMultiprocessing switches, which setup_logging turns off): a handful; a forked child
#: starts without them (its pid differs)
_TEMPLATES: dict[tuple[Any, ...], dict[str, Any]] = {}
os.register_at_fork(after_in_child=_TEMPLATES.clear)


def _constants(origin: _Origin, level: int) -> dict[str, Any]:
    """What :class:`logging.LogRecord` sets alike for every record of *origin* at *level* in
    this process, in its order."""
    process_name = None
    if logging.logMultiprocessing:
        process_name = "MainProcess"
        mp = sys.modules.get("multiprocessing")
        if mp is not None:
            try:
                process_name = mp.current_process().name
            except Exception:      # pragma: no cover (as logging does)
                pass
    constants = {
        "name": origin.logger.name, "msg": None, "args": None,
        "levelname": _LEVEL_NAMES.get(level) or logging.getLevelName(level), "levelno": level,
        "pathname": origin.path, "filename": origin.filename, "module": origin.module,
        "exc_info": None, "exc_text": None, "stack_info": None, "lineno": 0, "funcName": None,
        "created": 0.0, "msecs": 0.0, "relativeCreated": 0.0,
        "thread": None, "threadName": None,
        "processName": process_name, "process": os.getpid() if logging.logProcesses else None,
        "taskName": None,             # Python 3.12's field
    }
    _TEMPLATES[(origin, level, logging.logProcesses, logging.logMultiprocessing)] = constants
    return constants


def _quoted(value: Any, limit: int = 32) -> str:
    text = str(value)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}...({len(text)} chars)"


def _options(options: Any) -> str:
    """A client's options (or the OACK answering them) as ``{name: value, ...}``, quoted."""
    if not isinstance(options, dict):
        return client_text(options)
    items = list(options.items())
    shown = ", ".join(f"{_quoted(k)}: {_quoted(v)}" for k, v in items[:16])
    return "{" + shown + (f", ...({len(items)} options)" if len(items) > 16 else "") + "}"


def _to(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if address else "-"


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _rate(event: Event) -> float:
    duration = event.fields["duration"]
    return event.fields["bytes"] / duration / 1e6 if duration > 0 else 0.0


# ---------------------------------------------------------------------------- DHCP
def _dhcp_received(e: Event) -> Line:
    f = e.fields
    return (DEBUG, "received %s mac=%s relayed=%s pxe=%s ipxe=%s uuid=%s arch=%s",
            (f["msgtype"], f["mac"], f["relayed"], f["pxe"], f["ipxe"], _dash(f["uuid"]), _dash(f["arch"])))


def _dhcp_reply(e: Event) -> Line:
    f = e.fields
    if f["msgtype"] == "nak" and "requested" in f:
        return INFO, "nak mac=%s phase=%s requested=%s bound=%s", (f["mac"], f["phase"], f["requested"],
                                                                   f.get("bound"))
    if f.get("proxy"):      # README, "proxyDHCP": ip is the address the client reported
        return (INFO, "proxy %s mac=%s ip=%s phase=%s arch=%s file=%s to=%s",
                (f["msgtype"], f["mac"], f["ip"], f["phase"], _dash(f["arch"]), _dash(f["file"]),
                 _to(f.get("to"))))
    return (INFO, "%s mac=%s ip=%s phase=%s arch=%s file=%s to=%s",
            (f["msgtype"], f["mac"], f["ip"], f["phase"], _dash(f["arch"]), _dash(f["file"]),
             _to(f.get("to"))))


def _dhcp_ignored(e: Event) -> Line:
    f = e.fields
    if f["reason"] == "decline_refused":     # a spoofed or stale DECLINE (counted: metrics)
        return DEBUG, "decline refused mac=%s: %s", (f["mac"], _dash(f.get("detail")))
    if f["reason"] == "no_http_bootfile":    # a [bootfile] gap the operator must see (README, UEFI)
        return (WARNING, "http boot client mac=%s ignored: %s",
                (f["mac"], _dash(f.get("detail"))))
    if "ip" in f:       # proxy mode: the address a client takes from the site server
        return DEBUG, "ignored mac=%s phase=%s reason=%s ip=%s", (f["mac"], _dash(f.get("phase")),
                                                                  f["reason"], f["ip"])
    if "detail" in f:
        return (DEBUG, "ignored mac=%s phase=%s reason=%s: %s",
                (f["mac"], _dash(f.get("phase")), f["reason"], f["detail"]))
    return DEBUG, "ignored mac=%s phase=%s reason=%s", (f["mac"], _dash(f.get("phase")), f["reason"])


def _dhcp_arch_fallback(e: Event) -> Line:
    f = e.fields
    return (WARNING, "mac=%s arch=%s has no [bootfile] entry: serving default %s",
            (f["mac"], f["arch"], _dash(f.get("file"))))


def _dhcp_malformed(e: Event) -> Line:
    f = e.fields
    return DEBUG, "dhcp malformed from %s: %s", (_dash(f.get("source")), f.get("detail") or f["reason"])


def _dhcp_exhausted(e: Event) -> Line:
    return WARNING, "pool exhausted: no address for mac=%s scope=%s", (e.fields["mac"], e.fields["scope"])


def _dhcp_declined(e: Event) -> Line:
    return (WARNING, "decline mac=%s ip=%s: address set aside for the probation (in use by another host?)",
            (e.fields["mac"], e.fields["ip"]))


def _dhcp_probe(e: Event) -> Line:
    f = e.fields
    if f["result"] == "in_use":
        return (WARNING, "probe ip=%s answered: in use by another host, not offered to mac=%s scope=%s",
                (f["ip"], f["mac"], f["scope"]))
    return DEBUG, "probe ip=%s for mac=%s: %s", (f["ip"], f["mac"], f["result"])


def _dhcp_released(e: Event) -> Line:
    return INFO, "release mac=%s ip=%s", (e.fields["mac"], e.fields["ip"])


def _dhcp_acl(e: Event) -> Line:
    f = e.fields
    acl, verdict, mac, detail = f["acl"], f["verdict"], f["mac"], f.get("detail")
    if verdict == "allowed":
        return DEBUG, "allowed mac=%s by %s acl", (mac, acl)
    if acl == "http":
        return INFO, "%s mac=%s by http acl: %s", ("denied" if verdict == "denied" else "ignored", mac,
                                                    _dash(detail))
    if detail == ACL_NO_UUID:
        return INFO, "ignored mac=%s: access = uuid and no UUID known", (mac,)
    return INFO, "denied mac=%s by %s acl: %s", (mac, acl, _dash(detail))


def _dhcp_notify(e: Event) -> Line:
    f = e.fields
    if f["ok"]:
        return DEBUG, "notify: sent %r to %s", (f.get("payload"), f["target"])
    if f.get("error") is None:
        return DEBUG, "notify: closed, %s to %s dropped", (f.get("notice"), f["target"])
    return WARNING, "notify: %s to %s failed: %s", (f.get("notice"), f["target"], f["error"])


# ---------------------------------------------------------------------------- TFTP
def _tftp_start(e: Event) -> Line:
    f = e.fields
    return (DEBUG, "tftp RRQ client=%s:%d file=%s mode=%s options=%s oack=%s",
            (f["ip"], f["port"], client_text(f["name"]), client_text(f["mode"], 32), _options(f["options"]),
             _options(f["oack"])))


def _tftp_done(e: Event) -> Line:
    f = e.fields
    return (INFO, "tftp done client=%s:%d file=%s bytes=%d duration=%.3fs rate=%.2fMB/s retransmits=%d "
            "blksize=%d windowsize=%d",
            (f["ip"], f["port"], client_text(f["name"]), f["bytes"], f["duration"], _rate(e),
             f["retransmits"], f["blksize"], f["windowsize"]))


def _tftp_fail(e: Event) -> Line:
    f = e.fields
    return (INFO, "tftp failed client=%s:%d file=%s reason=%s bytes=%d duration=%.3fs rate=%.2fMB/s "
            "retransmits=%d: %s",
            (f["ip"], f["port"], client_text(f["name"]), f["reason"], f["bytes"], f["duration"], _rate(e),
             f["retransmits"], _detail(f["detail"])))


def _detail(detail: Any) -> str:
    """A failure's detail, which may carry a client's ERROR message: one line, bounded."""
    text = str(detail)
    if len(text) <= 2 * TEXT_MAX and text.isprintable():
        return text
    return client_text(text, 2 * TEXT_MAX)


def _tftp_malformed(e: Event) -> Line:
    f = e.fields
    if f.get("transfer"):
        return DEBUG, "tftp malformed datagram client=%s:%d: %s", (f["ip"], f["port"], f["detail"])
    return DEBUG, "tftp malformed request from %s:%d: %s", (f["ip"], f["port"], f["detail"])


def _tftp_denied(e: Event) -> Line:
    f = e.fields
    name = client_text(f["name"])
    if f["reason"] == "write":
        return INFO, "tftp denied write client=%s:%d file=%s", (f["ip"], f["port"], name)
    level = DEBUG if f["reason"] == "busy" else INFO   # busy: one address must not flood the log
    return (level, "tftp denied client=%s:%d file=%s code=%d reason=%s: %s",
            (f["ip"], f["port"], name, f["code"], f["reason"], _detail(f["message"])))


def _tftp_dropped(e: Event) -> Line:
    f = e.fields   # DEBUG: a flood of them is what the counter is for
    return (DEBUG, "tftp dropped RRQ client=%s:%d file=%s reason=%s",
            (f["ip"], f["port"], client_text(f["name"]), f["reason"]))


# ---------------------------------------------------------------------------- HTTP
def _http_start(e: Event) -> Line:
    f = e.fields
    return (DEBUG, "http %s client=%s:%d file=%s status=%d bytes=%s",
            (f["method"], f["ip"], f["port"], client_text(f["name"]), f["status"], _dash(f["bytes"])))


def _http_done(e: Event) -> Line:
    f = e.fields
    if "reason" in f:
        return (INFO, "http %s client=%s:%d file=%s status=%d reason=%s",
                (f["method"], f["ip"], f["port"], client_text(f["name"]), f["status"], f["reason"]))
    return (INFO, "http %s client=%s:%d file=%s status=%d bytes=%d duration=%.3fs rate=%.2fMB/s",
            (f["method"], f["ip"], f["port"], client_text(f["name"]), f["status"], f["bytes"],
             f["duration"], _rate(e)))


def _http_fail(e: Event) -> Line:
    f = e.fields
    return (INFO, "http failed %s client=%s:%d file=%s status=%d reason=%s bytes=%d duration=%.3fs: %s",
            (f["method"], f["ip"], f["port"], client_text(f["name"]), f["status"], f["reason"],
             f["bytes"], f["duration"], _detail(f["detail"])))


def _http_refused(e: Event) -> Line:
    f = e.fields   # DEBUG: a flood of them is what the counter is for
    return DEBUG, "http refused connection client=%s:%d reason=%s", (f["ip"], f["port"], f["reason"])


_DHCP = _Origin("massboot.dhcp.server", "dhcp", "server.py")
_HTTP = _Origin("massboot.http.server", "http", "server.py")
_TFTP = _Origin("massboot.tftp.server", "tftp", "server.py")
_NOTIFY = _Origin("massboot.notify", "notify.py")

#: kind → (origin, format, the highest level its format returns): an event whose kind's lines
#: are all below the logger's level, its most severe one included, is not formatted at all
#: (``dhcp.received`` at ``info``); a kind with any line at the logger's level is formatted
_FORMATS: dict[EventKind, tuple[_Origin, Callable[[Event], Line], int]] = {
    EventKind.DHCP_RECEIVED: (_DHCP, _dhcp_received, DEBUG),
    EventKind.DHCP_REPLY: (_DHCP, _dhcp_reply, INFO),
    EventKind.DHCP_IGNORED: (_DHCP, _dhcp_ignored, WARNING),
    EventKind.DHCP_ARCH_FALLBACK: (_DHCP, _dhcp_arch_fallback, WARNING),
    EventKind.DHCP_MALFORMED: (_DHCP, _dhcp_malformed, DEBUG),
    EventKind.DHCP_EXHAUSTED: (_DHCP, _dhcp_exhausted, WARNING),
    EventKind.DHCP_DECLINED: (_DHCP, _dhcp_declined, WARNING),
    EventKind.DHCP_PROBE: (_DHCP, _dhcp_probe, WARNING),
    EventKind.DHCP_RELEASED: (_DHCP, _dhcp_released, INFO),
    EventKind.DHCP_ACL: (_DHCP, _dhcp_acl, INFO),
    EventKind.DHCP_NOTIFY: (_NOTIFY, _dhcp_notify, WARNING),
    EventKind.TFTP_START: (_TFTP, _tftp_start, DEBUG),
    EventKind.TFTP_DONE: (_TFTP, _tftp_done, INFO),
    EventKind.TFTP_FAIL: (_TFTP, _tftp_fail, INFO),
    EventKind.TFTP_MALFORMED: (_TFTP, _tftp_malformed, DEBUG),
    EventKind.TFTP_DENIED: (_TFTP, _tftp_denied, INFO),
    EventKind.TFTP_DROPPED: (_TFTP, _tftp_dropped, DEBUG),
    EventKind.HTTP_START: (_HTTP, _http_start, DEBUG),
    EventKind.HTTP_DONE: (_HTTP, _http_done, INFO),
    EventKind.HTTP_FAIL: (_HTTP, _http_fail, INFO),
    EventKind.HTTP_REFUSED: (_HTTP, _http_refused, DEBUG),
}


#: the kinds that get a line
LOGGED_KINDS = frozenset(_FORMATS)


class EventLog:
    """The subscriber that writes the outcome log.

    Args:
        kinds: the kinds to write; None: every kind this module has a line for. An event of
            another kind is ignored.
    """

    def __init__(self, kinds: Iterable[EventKind | str] | None = None) -> None:
        wanted = LOGGED_KINDS if kinds is None else {EventKind(k) for k in kinds}
        self._writers: dict[str, Callable[[Event], None]] = {
            kind: _writer(*entry) for kind, entry in _FORMATS.items() if kind in wanted
        }

    def __call__(self, event: Event) -> None:
        """Write *event*'s line (the :class:`~massboot.events.EventBus` subscriber)."""
        write = self._writers.get(event.kind)
        if write is not None:
            write(event)

    def handlers(self) -> dict[str, Callable[[Event], None]]:
        """Kind → the writer of its line, for :meth:`~massboot.events.EventBus.subscribe_kinds`:
        the lines of :meth:`__call__`, without its lookup of the kind per event (issue #14)."""
        return dict(self._writers)


def _writer(origin: _Origin, line: Callable[[Event], Line], highest: int) -> Callable[[Event], None]:
    """What writes the line of an event of one kind (*line* formats it; *highest*: the most
    severe level it returns)."""
    logger = origin.logger

    def write(event: Event) -> None:
        if not logger.isEnabledFor(highest):     # none of this kind's lines would be written
            return
        level, msg, args = line(event)
        if level == highest or logger.isEnabledFor(level):
            logger.handle(EventRecord(origin, level, msg, args, event.kind))

    return write
