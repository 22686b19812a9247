"""The DHCP read loop's receive errors, with a scripted socket (no network)."""

from __future__ import annotations

import errno
import logging

import gevent
import pytest

from massboot import config as cfg
from massboot.dhcp import server as server_module
from massboot.dhcp.leases import MemoryLeaseStore
from massboot.dhcp.server import DhcpServer, main_pool
from massboot.events import EventBus, EventRecorder

CONFIG = "[bootpd]\naddress = 127.0.0.1\npool_start = 10.0.0.100\npool_count = 4\n[bootfile]\ndefault = a\n"
JUNK = object()          # a datagram the codec rejects


class ScriptedSocket:
    """``recvmsg`` raises or returns what the script says, then blocks like an idle socket."""

    def __init__(self, script: list, ticks: list[int]) -> None:
        self.script = list(script)
        self.ticks = ticks
        self.seen: list[int] = []         # the ticker's count at each call

    def recvmsg(self, bufsize: int, ancbufsize: int):
        self.seen.append(self.ticks[0])
        if not self.script:
            gevent.sleep(3600)
        item = self.script.pop(0)
        if item is JUNK:
            return b"junk", [], 0, ("10.0.0.9", 68)
        raise item

    def close(self) -> None:
        pass


@pytest.fixture
def reader():
    started: list[tuple[DhcpServer, gevent.Greenlet]] = []
    ticks = [0]

    def ticker() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0)

    tick = gevent.spawn(ticker)

    def start(script: list) -> tuple[DhcpServer, gevent.Greenlet, ScriptedSocket, EventRecorder]:
        config = cfg.loads(CONFIG).bootp
        events, recorder = EventBus(), EventRecorder()
        events.subscribe(recorder)
        server = DhcpServer(config, "10.0.0.1", "255.255.255.0",
                            MemoryLeaseStore(main_pool(config, "10.0.0.1", "255.255.255.0")[0]), events)
        sock = ScriptedSocket(script, ticks)
        server.socket = sock          # what start() binds, without a port
        server._running = True
        server._reader = gevent.spawn(server._read_loop)
        started.append((server, server._reader))
        return server, server._reader, sock, recorder

    yield start
    tick.kill()
    for server, _ in started:
        server.stop(0.1)


def _wait_for(predicate, timeout: float = 5.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.001)


def test_transient_errors_yield_are_counted_and_logged_once_per_burst(reader, caplog) -> None:
    caplog.set_level(logging.INFO, logger="massboot.dhcp.server")
    refused = OSError(errno.ECONNREFUSED, "Connection refused")
    unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
    script = [refused] * 5 + [unreachable] * 3 + [JUNK] + [refused] * 2 + [JUNK]
    server, greenlet, sock, recorder = reader(script)
    _wait_for(lambda: len(recorder.of("dhcp.malformed")) == 2)
    assert not greenlet.dead and server.alive
    assert server.receive_errors == 10
    # the loop let the other greenlet run after every error: no spin
    after_errors = [(sock.seen[i], sock.seen[i + 1]) for i, item in enumerate(script) if item is not JUNK]
    assert len(after_errors) == 10 and all(later > earlier for earlier, later in after_errors)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2                                     # one per burst
    assert "Connection refused" in warnings[0].getMessage()
    assert sum("works again after" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("script, code", [
    ([OSError(errno.EBADF, "Bad file descriptor")], errno.EBADF),
    ([OSError(errno.ECONNREFUSED, "x")] * 3 + [OSError(errno.ENOTSOCK, "Socket operation on non-socket")],
     errno.ENOTSOCK),
    ([OSError(errno.ECONNREFUSED, "Connection refused")] * server_module.MAX_CONSECUTIVE_ERRORS,
     errno.ECONNREFUSED),
], ids=["ebadf", "enotsock-after-transient", "transient-that-persists"])
def test_persistent_error_ends_the_read_loop_with_the_exception(reader, monkeypatch, script, code) -> None:
    monkeypatch.setattr(server_module, "ERROR_BACKOFF", 0.0)
    server, greenlet, sock, _ = reader(script)
    greenlet.join(5)
    assert greenlet.dead and not server.alive
    # the CLI links the reader greenlet and exits 1 when it holds an exception
    assert isinstance(greenlet.exception, OSError) and greenlet.exception.errno == code
    assert len(sock.seen) == len(script)
