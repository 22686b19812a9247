"""A real remote ACL server (``[http] location``, README "Remote ACL") for loopback tests.

A gevent ``StreamServer`` on 127.0.0.1, one request per connection: it reads the request line
and the headers, keeps the request target, and answers with the status the test's *verdict*
gives for that target (no body, ``Connection: close``), or hangs up when the verdict is None
(massboot sees a connection error).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from gevent.server import StreamServer

__all__ = ["AclServer"]


class AclServer:
    """The ACL server; ``queries`` holds every request target (``/boot?mac=...``) in order.

    Args:
        verdict: the request target -> an HTTP status line's status (``"200 OK"``,
            ``"403 Forbidden"``), or None to hang up without answering.
    """

    def __init__(self, verdict: Callable[[str], str | None]) -> None:
        self.verdict = verdict
        self.queries: list[str] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port: int = self.server.server_port

    def _handle(self, sock: socket.socket, _address: object) -> None:
        stream = sock.makefile("rb")
        line = stream.readline().decode("latin-1")
        while stream.readline().strip():
            pass
        if not line:
            return
        target = line.split()[1]
        self.queries.append(target)
        status = self.verdict(target)
        if status is None:
            return
        sock.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    def close(self) -> None:
        self.server.stop(timeout=1)
