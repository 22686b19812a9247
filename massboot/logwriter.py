"""The log's writer: lines handed over in batches by the hub, written by a thread of their own.

At ``info`` the DHCP server logs one line per OFFER and ACK (README, "[logger]"). Written the
way :class:`logging.StreamHandler` writes them, each line costs a lock (a gevent lock, in Python,
once monkey-patched), a timestamp formatted from scratch and one ``write`` syscall made in the
hub: a log on a pipe or a disk that stalls would stall every exchange, and each syscall gives
the GIL away (issue #14). :class:`BufferedHandler` keeps every line and its order, and moves the
cost off the hot path:

* ``emit`` (the hub's thread) appends the record to a list: no lock, no formatting;
* the batch is formatted (the timestamp's text made once per second) and handed to the writer
  thread when the hub's loop has nothing else to do (a libev *idle* watcher), or at the latest
  :data:`MAX_DELAY` after its first record while the hub stays busy: an idle server's lines
  are in the file at once, a busy one's within :data:`MAX_DELAY`, a few batches a second;
* the writer (a real OS thread, also under gevent's monkey-patching) writes each batch with one
  ``write`` on the file descriptor, so the hub never waits on the log's file or pipe; the
  hand-over is a C ``SimpleQueue`` whose ``put`` never blocks nor switches greenlets;
* at most :data:`MAX_BACKLOG` lines wait to be written; beyond that lines are dropped and
  counted, and a ``log: N lines dropped`` line is written once the output keeps up again;
* SIGHUP (:meth:`BufferedHandler.reopen`) reopens a log file by its name in the writer, after
  the lines before it: a log rotated by renaming goes on in a new file, the hub does not wait;
* :meth:`~BufferedHandler.flush` and :meth:`~BufferedHandler.close` (exit: :func:`logging.shutdown`
  calls both; the second signal's ``os._exit``) write everything pending before they return,
  at most :data:`CLOSE_TIMEOUT` seconds: no line is lost when the server stops cleanly. A
  ``SIGKILL`` loses what the last :data:`MAX_DELAY` of a busy server had not written yet.

Why the earlier version of this writer was taken out (tests/netns read a server's log file
right after its client finished, not waiting for a batch of 100 ms that was still pending, and
stopped the server with ``SIGKILL``): a line now leaves as soon as the hub is idle, and the
tests wait for the lines they look for (tests/loopback/test_logfile.py).

A record logged from another thread (the lease store's worker, a thread pool) is formatted in
that thread and handed over at once. A forked child starts a writer of its own.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
import weakref
from _queue import SimpleQueue  # the C queue: put() never blocks, get() blocks only its thread
from typing import Any, TextIO

from gevent.monkey import get_original

_start_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_get_ident = get_original("_thread", "get_ident")
_sleep = get_original("time", "sleep")

#: lines handed over but not written yet, at most; more are dropped and counted
MAX_BACKLOG = 100_000
#: while the hub stays busy, a line waits at most this long (seconds) before its batch is
#: handed to the writer
MAX_DELAY = 0.1
#: ... or until this many lines wait
MAX_BATCH = 4096
#: the longest flush() and close() wait for the writer (seconds)
CLOSE_TIMEOUT = 5.0


class LineFormatter(logging.Formatter):
    """:class:`logging.Formatter` whose timestamp text is made once per second, not per line,
    and whose plain ``%``-style lines are formatted in one step (no exception, no stack)."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._stamp = ""
        self._uses_time = self.usesTime()
        self._percent = self._fmt if type(self._style) is logging.PercentStyle else None

    def format(self, record: logging.LogRecord) -> str:
        if self._percent is None or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        return self._percent % record.__dict__

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = second
        if datefmt:
            return self._stamp
        return self.default_msec_format % (self._stamp, record.msecs)


class _Marker:
    """A point in the writer's queue: released once every line before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = _allocate_lock()
        self.done.acquire()


class _Reopen(_Marker):
    __slots__ = ()


class _Stop(_Marker):
    __slots__ = ()


class BufferedHandler(logging.Handler):
    """Write formatted lines from a thread of its own (see the module docstring).

    Args:
        stream: a text stream to write to (``sys.stderr``, ``sys.stdout``): its file descriptor
            when it has one, else its ``write``.
        path: a log file, opened for appending (and reopened by :meth:`reopen`).
    """

    terminator = "\n"

    def __init__(self, stream: TextIO | None = None, *, path: str | None = None) -> None:
        super().__init__()
        if (stream is None) == (path is None):
            raise ValueError("a stream or a path")
        self.stream = stream
        self.path = path
        self._fd = -1
        if path is not None:
            self._fd = self._open(path)   # fails here, at startup, when the file cannot be opened
        self.dropped = 0          # lines dropped because MAX_BACKLOG were waiting
        self._reported = 0        # drops already reported in the log
        self.errors = 0           # batches the output refused
        self._closed = False
        self._start()
        ref = weakref.ref(self)

        def restart() -> None:            # a forked child writes its own lines, from its own thread
            handler = ref()
            if handler is not None and not handler._closed:
                handler._start()

        os.register_at_fork(after_in_child=restart)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def _start(self) -> None:
        """(Re)start the writer thread, in this process."""
        self._records: list[logging.LogRecord] = []
        self._armed = False
        self._loop: Any = None
        self._idle: Any = None
        self._timer: Any = None
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._count_lock = _allocate_lock()
        self._queued = 0          # lines handed to the writer (under _count_lock)
        self._written = 0         # lines it wrote or failed to write (the writer thread only)
        self._owner = _get_ident()         # the thread whose hub formats the batches
        _start_thread(self._write_loop, ())

    def createLock(self) -> None:  # noqa: N802
        self.lock = None          # emit() only appends; batches are handed over by a SimpleQueue

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if self.filter(record):
            self.emit(record)
            return True
        return False

    # -------------------------------------------------------------- the hub's side
    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            return
        if _get_ident() != self._owner:            # another thread: format and hand it over now
            self._hand_over([record])
            return
        records = self._records
        records.append(record)
        if len(records) >= MAX_BATCH:
            self._drain()
        elif not self._armed:
            self._arm()

    def _arm(self) -> None:
        """Hand the batch over when the hub is idle, or after MAX_DELAY at the latest."""
        if self._loop is None:
            try:
                from gevent import get_hub

                self._loop = get_hub().loop
                self._idle = self._loop.idle()
            except Exception:       # pragma: no cover (no hub here: write at once)
                self._drain()
                return
        self._armed = True
        self._idle.start(self._drain)
        # a new timer per batch: a libev timer restarted after it expired fires at once
        self._timer = self._loop.timer(MAX_DELAY)
        self._timer.start(self._drain)

    def _drain(self) -> None:
        """Format the records waiting and hand them to the writer."""
        if self._armed:
            self._armed = False
            self._idle.stop()
            self._timer.stop()
            self._timer = None
        records, self._records = self._records, []
        if records:
            self._hand_over(records)

    def _hand_over(self, records: list[logging.LogRecord]) -> None:
        with self._count_lock:
            backlog = self._queued - self._written
            room = MAX_BACKLOG - backlog
            if room < len(records):
                self.dropped += len(records) - max(room, 0)
                records = records[:max(room, 0)]
            lines = []
            for record in records:
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if self.dropped != self._reported and backlog == 0:
                lines.append(self.format(logging.LogRecord(
                    "massboot.logwriter", logging.WARNING, __file__, 0,
                    "log: %d lines dropped: the log's output did not keep up with %d lines waiting",
                    (self.dropped - self._reported, MAX_BACKLOG), None)))
                self._reported = self.dropped
            if not lines:
                return
            self._queued += len(lines)
            self._queue.put((self.terminator.join(lines) + self.terminator, len(lines)))

    # -------------------------------------------------------------- the writer thread
    def _write_loop(self) -> None:
        """One write per batch (batches waiting are joined), until a _Stop."""
        queue = self._queue
        while True:
            item = queue.get()
            texts, count = [], 0
            while isinstance(item, tuple):
                texts.append(item[0])
                count += item[1]
                if len(texts) >= 64 or queue.empty():
                    item = None
                    break
                item = queue.get()
            if texts:
                self._write("".join(texts))
                self._written += count
            if item is None:
                continue
            if isinstance(item, _Reopen):
                self._reopen_file()
            if isinstance(item, _Stop):
                self._close_file()
                item.done.release()
                return
            item.done.release()

    def _write(self, text: str) -> None:
        try:
            if self._fd < 0 and self.path is None:
                assert self.stream is not None
                fd = _fileno(self.stream)
                if fd is None:                      # no descriptor (a test's captured stream)
                    self.stream.write(text)
                    self.stream.flush()
                    return
                self.stream.flush()                 # what Python still buffers goes first
                self._fd = fd
            data = text.encode("utf-8", "backslashreplace")
            while data:
                try:
                    data = data[os.write(self._fd, data):]
                except BlockingIOError:             # a non-blocking pipe that is full
                    _sleep(0.01)
                except InterruptedError:
                    pass
        except Exception:   # a closed or broken output: counted, never raised at the hub
            self.errors += 1

    def _reopen_file(self) -> None:
        if self.path is None:
            return
        try:
            fd = self._open(self.path)
        except OSError as exc:       # keep writing to the file we have
            self.errors += 1
            self._write(f"log: cannot reopen {self.path}: {exc}; writing on to the old file\n")
            return
        self._close_file()
        self._fd = fd

    def _close_file(self) -> None:
        if self.path is not None and self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    self.errors += 1
            self._fd = -1

    # -------------------------------------------------------------- control
    def _mark(self, marker: _Marker, wait: float) -> bool:
        if self._owner == _get_ident():
            self._drain()
        self._queue.put(marker)
        if wait <= 0:
            return False
        return marker.done.acquire(True, wait)

    def reopen(self) -> None:
        """Reopen the log file by its name once the lines before are written (SIGHUP); the
        caller does not wait."""
        if not self._closed and self.path is not None:
            self._mark(_Reopen(), 0)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Hand over what is pending and wait (at most *timeout*) until it is written."""
        if not self._closed:
            self._mark(_Marker(), timeout)

    def close(self, wait: float = CLOSE_TIMEOUT) -> None:
        """Write everything pending (waiting at most *wait*; 0: do not wait), stop the writer,
        close the log file."""
        if self._closed:
            return
        self._mark(_Stop(), wait)
        self._closed = True
        super().close()


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def flush_all(timeout: float = 1.0) -> None:
    """Write what the root logger's handlers hold (before ``os._exit``), each at most *timeout*."""
    for handler in logging.getLogger().handlers:
        try:
            if isinstance(handler, BufferedHandler):
                handler.flush(timeout)
            else:
                handler.flush()
        except Exception:   # pragma: no cover (exiting anyway)
            pass
    try:
        sys.stderr.flush()
    except Exception:       # pragma: no cover
        pass
