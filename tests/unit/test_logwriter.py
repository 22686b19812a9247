"""The log's writer (massboot.logwriter): every line, in order, written off the hub; a stalled
output never blocks the hub and costs bounded memory; nothing pending is lost at close."""

from __future__ import annotations

import logging

import gevent
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


def test_every_line_in_order_from_the_hub_and_from_a_thread(tmp_path) -> None:
    path = tmp_path / "log"
    handler = BufferedHandler(open(path, "a", encoding="utf-8"), owned=True)
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
    gevent.sleep(0.2)                        # past BATCH_DELAY: the timer hands the batch over
    handler.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2010
    hub = [int(line.rsplit("n=", 1)[1]) for line in lines if "offer" in line]
    assert sorted(hub) == list(range(2000))
    assert [n for n in hub if n < 1000] == list(range(1000))            # each greenlet's order
    assert [line.split(": ", 1)[1] for line in lines if "thread line" in line] == [
        f"thread line {n}" for n in range(10)]
    assert all(line.split(" ", 1)[1].startswith(("INFO: ", "WARNING: ")) for line in lines)


def test_close_writes_what_is_pending_without_the_hub_turning(tmp_path) -> None:
    """Shutdown (logging.shutdown, a reload): no line lost, even one logged just before."""
    path = tmp_path / "log"
    handler = BufferedHandler(open(path, "a", encoding="utf-8"), owned=True)
    logger = make_logger("close", handler)
    for n in range(500):
        logger.info("line %d", n)
    handler.close()                          # no gevent.sleep: the batch timer never fired
    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == [
        f"line {n}" for n in range(500)]
    logger.info("after close")               # dropped quietly, never raised
    assert "after close" not in path.read_text()


class StalledStream:
    """A log output that does not take data until released (a pipe nobody reads)."""

    def __init__(self) -> None:
        self.release = NativeEvent()
        self.entered = NativeEvent()
        self.text: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        self.release.wait(30)
        self.text.append(text)

    def flush(self) -> None:
        pass


def test_a_stalled_output_never_blocks_the_hub_and_drops_are_counted(monkeypatch) -> None:
    monkeypatch.setattr(logwriter, "MAX_BACKLOG", 300)
    monkeypatch.setattr(logwriter, "MAX_BATCH", 100)
    stream = StalledStream()
    handler = BufferedHandler(stream)        # type: ignore[arg-type]
    logger = make_logger("stalled", handler)
    try:
        def burst() -> None:
            for n in range(1000):
                logger.info("line %d", n)
        gevent.spawn(burst).join()
        assert stream.entered.wait(10)       # the writer is stuck in write()...
        assert not stream.release.is_set() and stream.text == []
        # ...and the hub went on: 1,000 lines logged, at most MAX_BACKLOG of them held
        assert handler.dropped == 700
        stream.release.set()
        handler.flush()
        logger.info("after")                 # the writer caught up: the drop is reported
        handler.flush()
    finally:
        stream.release.set()
        handler.close()
    lines = "".join(stream.text).splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:300]] == [f"line {n}" for n in range(300)]
    assert lines[300].endswith("INFO: after")
    assert lines[301].split(" ", 1)[1].startswith("WARNING: log: 700 lines dropped")
    assert len(lines) == 302
