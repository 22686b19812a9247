"""The log's writer: lines formatted in batches on the hub, written by a thread of their own.

At ``info`` the DHCP server logs one line per OFFER and ACK (README, "[logger]"). Written the
way :class:`logging.StreamHandler` writes them, each line costs a lock (a gevent lock, in Python,
once monkey-patched), a timestamp formatted from scratch and one ``write`` syscall, made in the
hub: a log on a pipe or a disk that stalls would stall every exchange, and every syscall hands
the GIL to the lease store's writer thread and has to wait to get it back. That halved the
DHCP rate (issue #14). :class:`BufferedHandler` keeps every line and its order, and moves the
cost off the hot path:

* ``emit`` appends the record to a list: no lock (the hub is one thread), no formatting;
* a timer on the hub (:data:`BATCH_DELAY`, 50 ms after the first record waiting, or at once
  when :data:`MAX_BATCH` records wait) formats them (the timestamp's text is made once per
  second) and hands them, joined, to the writer thread through a ``SimpleQueue`` (C, never
  blocks): the thread wakes a few times a second, however many lines there are;
* the writer thread (a real OS thread, also under gevent's monkey-patching) does one ``write``
  and one ``flush`` per batch, so the hub never waits on the log's file or pipe;
* at most :data:`MAX_BACKLOG` lines wait to be written; beyond that lines are dropped and
  counted, and the count is written as soon as the writer catches up (a log that cannot keep up
  must not take the server's memory);
* :meth:`~BufferedHandler.flush` and :meth:`~BufferedHandler.close` (reload, exit:
  :func:`logging.shutdown` calls both) write everything pending before they return, at most
  :data:`CLOSE_TIMEOUT` seconds, so no line is lost when the server stops.

A record logged from another thread (the lease store's worker, a thread pool) is formatted in
that thread and queued at once.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any, TextIO

try:        # the real thread primitives, also when gevent has patched threading
    from gevent.monkey import get_original
except ImportError:         # pragma: no cover (gevent is a dependency)
    import _thread

    def get_original(module: str, name: str) -> Any:
        return getattr(_thread, name)

from _queue import SimpleQueue

_start_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_get_ident = get_original("_thread", "get_ident")
_sleep = get_original("time", "sleep")

#: lines formatted but not yet written, at most; more are dropped and counted
MAX_BACKLOG = 100_000
#: a line waits at most this long (seconds) before it is formatted and handed to the writer:
#: the writer thread then wakes a few times a second, not once per line, and each wake-up
#: costs the hub a hand-over of the GIL
BATCH_DELAY = 0.05
#: ... or until this many lines wait
MAX_BATCH = 2048
#: the longest flush() and close() wait for the writer
CLOSE_TIMEOUT = 5.0


class LineFormatter(logging.Formatter):
    """:class:`logging.Formatter` whose timestamp text is made once per second, not per line."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = second
        if datefmt:
            return self._stamp
        return self.default_msec_format % (self._stamp, record.msecs)


class BufferedHandler(logging.Handler):
    """Write formatted lines to *stream* from a thread of its own (see the module docstring).

    Args:
        stream: a text stream (``sys.stderr``, ``sys.stdout`` or an open file).
        owned: close *stream* when the handler is closed (a file it was given to write).
    """

    terminator = "\n"

    def __init__(self, stream: TextIO, *, owned: bool = False) -> None:
        super().__init__()
        self.stream = stream
        self._owned = owned
        self.dropped = 0          # lines dropped because MAX_BACKLOG were waiting
        self._reported = 0        # drops already reported in the log
        self.errors = 0           # batches the stream refused
        self._closed = False
        self._count_lock = _allocate_lock()
        self._start()
        ref = weakref.ref(self)

        def restart() -> None:            # a forked worker writes its own lines, from its own thread
            handler = ref()
            if handler is not None:
                handler._count_lock = _allocate_lock()
                handler._start()

        os.register_at_fork(after_in_child=restart)

    def _start(self) -> None:
        """(Re)start the writer thread, in this process."""
        self._records: list[logging.LogRecord] = []
        self._scheduled = False
        self._batch_timer: Any = None
        self._queue: SimpleQueue[tuple[str, int] | None] = SimpleQueue()
        self._queued = 0          # lines handed to the writer (under _count_lock)
        self._written = 0         # lines it wrote or failed to write (writer thread only)
        self._owner = _get_ident()         # the thread whose hub formats the batches
        self._done = _allocate_lock()
        self._done.acquire()
        if not self._closed:
            _start_thread(self._write_loop, ())

    def createLock(self) -> None:  # noqa: N802
        self.lock = None          # emit() only appends; batches are handed over by a SimpleQueue

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            return
        if _get_ident() != self._owner:            # another thread: format and queue it now
            self._hand_over([record])
            return
        records = self._records
        records.append(record)
        if len(records) >= MAX_BATCH:
            self._drain()
        elif not self._scheduled:
            self._scheduled = True
            timer = self._timer()
            if timer is None:
                self._drain()
            else:
                timer.start(self._drain)

    def _timer(self) -> Any:
        if self._batch_timer is None:
            try:
                from gevent import get_hub

                self._batch_timer = get_hub().loop.timer(BATCH_DELAY)
            except Exception:       # no hub here: write at once
                return None
        return self._batch_timer

    def _drain(self) -> None:
        """Format the records gathered since the first one's :data:`BATCH_DELAY` began, and
        hand them to the writer."""
        if self._scheduled:
            self._scheduled = False
            if self._batch_timer is not None:
                self._batch_timer.stop()
        records, self._records = self._records, []
        if records:
            self._hand_over(records)

    def _hand_over(self, records: list[logging.LogRecord]) -> None:
        with self._count_lock:
            self._queue_lines(records)

    def _queue_lines(self, records: list[logging.LogRecord]) -> None:
        backlog = self._queued - self._written
        room = MAX_BACKLOG - backlog
        if room < len(records):
            self.dropped += len(records) - max(room, 0)
            records = records[:max(room, 0)]
            if not records:
                return
        lines = []
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if self.dropped != self._reported and backlog == 0:
            note = logging.LogRecord("massboot.logwriter", logging.WARNING, __file__, 0,
                                     "log: %d lines dropped: the log's output did not keep up with %d "
                                     "lines waiting", (self.dropped - self._reported, MAX_BACKLOG), None)
            lines.append(self.format(note))
            self._reported = self.dropped
        if not lines:
            return
        self._queued += len(lines)
        self._queue.put((self.terminator.join(lines) + self.terminator, len(lines)))

    def _write_loop(self) -> None:
        """The writer thread: one write and one flush per batch, until None."""
        stream, queue = self.stream, self._queue
        try:
            while True:
                item = queue.get()
                if item is None:
                    break
                text, count = item
                try:
                    stream.write(text)
                    stream.flush()
                except Exception:   # a closed or broken stream: counted, never raised at the hub
                    self.errors += 1
                self._written += count
        finally:
            self._done.release()

    def flush(self) -> None:
        """Hand over what is pending and wait (at most :data:`CLOSE_TIMEOUT`) until it is written."""
        if self._closed:
            return
        self._drain()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while self._written < self._queued and time.monotonic() < deadline:
            _sleep(0.001)         # this thread's own sleep: flush may run in the hub itself

    def close(self) -> None:
        """Write everything pending, stop the writer thread, close an owned stream."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._done.acquire(True, CLOSE_TIMEOUT)
        if self._owned:
            try:
                self.stream.close()
            except OSError:
                pass
        super().close()
