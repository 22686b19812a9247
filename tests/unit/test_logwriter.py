"""The log's writer (massboot.logwriter): every line, in order, written off the hub; a line
leaves once the hub is idle; a stalled output never blocks the hub and costs bounded memory;
nothing pending is lost at close; a reopen lands between the lines before and after it."""

from __future__ import annotations

import logging
import os

import gevent
import pytest
from gevent.monkey import get_original

from massboot import logwriter
from massboot.logwriter import BufferedHandler, LineFormatter

NativeEvent = get_original("threading", "Event")
start_native = get_original("_thread", "start_new_thread")


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s: %(message)s", "%X"))
    logger = logging.getLogger(f"test.logwriter.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def messages(text: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in text.splitlines()]


def wait_for(check, seconds: float = 5.0) -> bool:
    """Let the hub run (idle) until *check()* holds, at most *seconds*."""
    for _ in range(int(seconds / 0.01)):
        if check():
            return True
        gevent.sleep(0.01)
    return check()


def test_every_line_in_order_from_the_hub_and_from_a_thread(tmp_path) -> None:
    path = tmp_path / "log"
    handler = BufferedHandler(path=str(path))
    logger = make_logger("order", handler)

    def exchanges(first: int) -> None:
        for n in range(first, first + 1000):
            logger.info("offer mac=%s n=%d", "52:54:00:00:00:01", n)
            if n % 100 == 0:
                gevent.sleep(0)

    gevent.joinall([gevent.spawn(exchanges, 0), gevent.spawn(exchanges, 1000)])
    done = NativeEvent()

    def from_thread() -> None:              # e.g. the lease store's worker thread
        for n in range(10):
            logger.warning("thread line %d", n)
        done.set()

    start_native(from_thread, ())
    assert done.wait(10)
    handler.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2010
    hub = [int(line.rsplit("n=", 1)[1]) for line in lines if "offer" in line]
    assert sorted(hub) == list(range(2000))
    assert [n for n in hub if n < 1000] == list(range(1000))            # each greenlet's order
    from_threads = [m for m in messages("\n".join(lines)) if "thread line" in m]
    assert from_threads == [f"thread line {n}" for n in range(10)]
    assert all(line.split(" ", 1)[1].startswith(("INFO: ", "WARNING: ")) for line in lines)


def test_a_line_reaches_the_file_once_the_hub_is_idle(tmp_path, monkeypatch) -> None:
    """No batch timer to wait for when nothing else runs: the idle hub hands the line over."""
    monkeypatch.setattr(logwriter, "MAX_DELAY", 60.0)
    path = tmp_path / "log"
    handler = BufferedHandler(path=str(path))
    logger = make_logger("idle", handler)
    try:
        for n in range(3):
            logger.info("exchange %d", n)
            line = f"exchange {n}"
            assert wait_for(lambda line=line: line in path.read_text()), path.read_text()
    finally:
        handler.close()
    assert messages(path.read_text()) == ["exchange 0", "exchange 1", "exchange 2"]


def test_a_busy_hub_hands_its_lines_over_within_max_delay(tmp_path, monkeypatch) -> None:
    """A hub that never idles (greenlets always ready) still writes: the batch timer."""
    monkeypatch.setattr(logwriter, "MAX_DELAY", 0.05)
    path = tmp_path / "log"
    handler = BufferedHandler(path=str(path))
    logger = make_logger("busy", handler)
    stop = []

    def spin() -> None:                      # always ready: the loop never goes idle
        while not stop:
            gevent.sleep(0)

    spinner = gevent.spawn(spin)
    try:
        logger.info("while busy")
        assert wait_for(lambda: "while busy" in path.read_text())
    finally:
        stop.append(True)
        spinner.join()
        handler.close()


def test_close_writes_what_is_pending_without_the_hub_turning(tmp_path) -> None:
    """Shutdown (logging.shutdown, a reload): no line lost, even one logged just before."""
    path = tmp_path / "log"
    handler = BufferedHandler(path=str(path))
    logger = make_logger("close", handler)
    for n in range(500):
        logger.info("line %d", n)
    handler.close()                          # no gevent.sleep: the hub never went idle
    assert messages(path.read_text()) == [f"line {n}" for n in range(500)]
    logger.info("after close")               # dropped quietly, never raised
    assert "after close" not in path.read_text()


def test_reopen_after_a_rename_goes_on_in_a_new_file(tmp_path) -> None:
    path = tmp_path / "log"
    handler = BufferedHandler(path=str(path))
    logger = make_logger("reopen", handler)
    logger.info("before")
    os.rename(path, tmp_path / "log.1")      # logrotate renames, then SIGHUP
    handler.reopen()                         # the lines before it still go to the old file
    logger.info("after")
    handler.close()
    assert messages((tmp_path / "log.1").read_text()) == ["before"]
    assert messages(path.read_text()) == ["after"]


def test_a_stalled_output_never_blocks_the_hub_and_drops_are_counted(monkeypatch) -> None:
    """A pipe nobody reads: the writer thread blocks in write(), the hub goes on; beyond
    MAX_BACKLOG lines waiting, lines are dropped, counted and reported once the output drains."""
    monkeypatch.setattr(logwriter, "MAX_BACKLOG", 300)
    monkeypatch.setattr(logwriter, "MAX_BATCH", 100)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    stream = os.fdopen(write_fd, "w")
    handler = BufferedHandler(stream)
    logger = make_logger("stalled", handler)
    got = bytearray()

    def drain_pipe() -> None:
        while True:
            try:
                chunk = os.read(read_fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                return
            got.extend(chunk)

    try:
        big = "x" * 2000                     # 300 lines of 2 KB overfill a 64 KB pipe
        done = []

        def burst() -> None:
            for n in range(1000):
                logger.info("line %d %s", n, big)
            done.append(True)

        gevent.spawn(burst).join(timeout=10)
        assert done, "the hub waited on the log's output"
        assert handler.dropped == 700
        wait_for(lambda: False, 0.2)         # the writer is stuck on the full pipe
        for _ in range(200):                 # let it drain: read while the writer writes
            gevent.sleep(0.005)
            drain_pipe()
            if got.count(b"\n") >= 300:
                break
        logger.info("after")                 # the writer caught up: the drop is reported
        handler.flush()
        drain_pipe()
    finally:
        handler.close(wait=1)
        stream.close()
        drain_pipe()
        os.close(read_fd)
    lines = messages(got.decode())
    assert [line.split(" ", 2)[:2] for line in lines[:300]] == [["line", str(n)] for n in range(300)]
    assert lines[300] == "after"
    assert lines[301].startswith("log: 700 lines dropped")
    assert len(lines) == 302


class CountingStream:
    """A stream without a file descriptor (as pytest's capture): written through write()."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def test_lines_of_one_busy_turn_go_out_in_one_write() -> None:
    """The writer wakes once per batch, not once per line."""
    stream = CountingStream()
    handler = BufferedHandler(stream)        # type: ignore[arg-type]
    logger = make_logger("batch", handler)
    try:
        for n in range(300):                 # one turn of the hub: no idle in between
            logger.info("line %d", n)
        assert stream.writes == []
        assert wait_for(lambda: stream.writes)
        assert len(stream.writes) == 1 and stream.writes[0].count("\n") == 300
    finally:
        handler.close()


def test_an_outcome_record_reads_as_the_log_record_logging_would_make() -> None:
    """massboot.eventlog.EventRecord skips the per-record path work of LogRecord: every
    attribute a handler or formatter may read is the same, and so is the formatted line."""
    from massboot.eventlog import _DHCP, EventRecord

    logger = _DHCP.logger
    ours = EventRecord(_DHCP, logging.INFO, "offer mac=%s ip=%s", ("52:54:00:00:00:01", "10.0.0.5"),
                       "dhcp.reply")
    theirs = logger.makeRecord(logger.name, logging.INFO, _DHCP.path, 0, "offer mac=%s ip=%s",
                               ("52:54:00:00:00:01", "10.0.0.5"), None, extra={"event": "dhcp.reply"})
    for timed in ("created", "msecs", "relativeCreated"):
        setattr(ours, timed, getattr(theirs, timed))
    assert {k: v for k, v in vars(ours).items() if k != "taskName"} == \
        {k: v for k, v in vars(theirs).items() if k != "taskName"}
    for fmt, datefmt in (("%(asctime)s PXE[%(module)s] %(levelname)s: %(message)s", None),
                         ("%(asctime)s PXE[%(module)s] %(levelname)s: %(message)s", "%X"),
                         ("PXE[%(module)s] %(levelname)s: %(message)s", None)):
        assert LineFormatter(fmt, datefmt).format(ours) == logging.Formatter(fmt, datefmt).format(theirs)
    assert logging.Formatter("%(message)s").format(ours).startswith("offer mac=52:54:00:00:00:01 ")


def test_the_drops_and_write_errors_are_metrics(monkeypatch, tmp_path) -> None:
    from prometheus_client import CollectorRegistry

    from massboot.config import MetricsConfig
    from massboot.events import EventBus
    from massboot.metrics import Metrics

    handler = BufferedHandler(path=str(tmp_path / "log"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    try:
        handler.dropped, handler.errors = 7, 2
        registry = CollectorRegistry()
        Metrics(MetricsConfig(port=0), EventBus(), registry=registry)
        assert registry.get_sample_value("massboot_log_lines_dropped_total") == 7
        assert registry.get_sample_value("massboot_log_write_errors_total") == 2
    finally:
        handler.close()


def test_an_outcome_record_follows_loggings_switches_as_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_logging turns logging.logProcesses/logMultiprocessing/logThreads off; a record
    made before or after (the same process, e.g. tests, or a library turning them back on)
    carries what LogRecord would carry with the switches of that moment, not a cached copy."""
    from massboot.eventlog import _DHCP, EventRecord

    logger = _DHCP.logger
    for switches in ((True, True, True), (False, False, False), (True, False, True),
                     (False, True, False), (True, True, True)):
        monkeypatch.setattr(logging, "logProcesses", switches[0])
        monkeypatch.setattr(logging, "logMultiprocessing", switches[1])
        monkeypatch.setattr(logging, "logThreads", switches[2])
        ours = EventRecord(_DHCP, logging.INFO, "ack mac=%s", ("52:54:00:00:00:02",), "dhcp.reply")
        theirs = logger.makeRecord(logger.name, logging.INFO, _DHCP.path, 0, "ack mac=%s",
                                   ("52:54:00:00:00:02",), None, extra={"event": "dhcp.reply"})
        for name in ("process", "processName", "thread", "threadName"):
            assert getattr(ours, name) == getattr(theirs, name), (switches, name)
