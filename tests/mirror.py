"""An HTTP mirror for tests, polite or misbehaving: real sockets on 127.0.0.1, gevent-friendly.

One request per connection (``Connection: close``), HTTP/1.1, ``ETag``/``If-None-Match``
revalidation. Knobs, all off by default, apply to every 200 answer while set:

=================  ===========================================================================
``status``         name → status: answer that status (403, 503...) with a short body instead
``framing``        ``length`` (Content-Length, the default), ``chunked`` (Transfer-Encoding:
                   chunked, RFC 9112 section 7.1) or ``close`` (neither: the body ends when the
                   connection closes, RFC 9112 section 6.3)
``gzip``           send the file gzip-compressed with ``Content-Encoding: gzip`` whatever the
                   client's Accept-Encoding said (the file is the decoded body, RFC 9110 8.4)
``encoding``       label the file, sent as it is, with this ``Content-Encoding`` (Apache's
                   ``AddEncoding x-gzip .gz`` on an ``initrd.gz``)
``hold_headers``   an unset Event: nothing is sent until it is set
``hold_at``        after this many body bytes, wait for ``gate`` (a stall in the middle of a
                   body while the connection stays open)
``cut_at``         close the connection after this many body bytes (a body cut short)
``drip``           ``(piece, seconds)``: send the body *piece* bytes at a time, *seconds* apart
=================  ===========================================================================

Byte counts (``hold_at``, ``cut_at``) are of the body as sent: compressed with ``gzip``,
without chunk framing.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import socket

import gevent
import gevent.event
from gevent.server import StreamServer

REASONS = {200: "OK", 304: "Not Modified", 403: "Forbidden", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Mirror:
    """A tiny HTTP/1.1 file server with knobs for misbehaving (see the module docstring).

    Attributes:
        files: path under ``/netboot/`` → file content.
        requests: (path, lower-cased headers) of every request seen.
        root: the URL of ``/netboot`` (a massboot ``[tftpd] root``).
        sent: body bytes sent, in all.
        active, peak: requests being answered now, and the most at once.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.status: dict[str, int] = {}
        self.framing = "length"
        self.gzip = False
        self.encoding: str | None = None
        self.sent = 0
        self.active = 0
        self.peak = 0
        self.hold_headers: gevent.event.Event | None = None
        self.hold_at: int | None = None
        self.gate = gevent.event.Event()
        self.cut_at: int | None = None
        self.drip: tuple[int, float] | None = None
        self.server = StreamServer((host, 0), self._handle)
        self.server.start()
        self.root = f"http://{host}:{self.server.server_port}/netboot"

    def gets(self, name: str) -> list[dict[str, str]]:
        """The headers of every request for *name*."""
        return [h for p, h in self.requests if p == "/netboot/" + name]

    @staticmethod
    def etag(body: bytes) -> str:
        return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def stop(self) -> None:
        self.gate.set()
        if self.hold_headers is not None:
            self.hold_headers.set()
        self.server.stop(timeout=1)

    # -- one request ------------------------------------------------------------------------

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            self._answer(sock)
        finally:
            self.active -= 1

    def _answer(self, sock: socket.socket) -> None:
        f = sock.makefile("rb")
        line = f.readline().decode("latin-1")
        if not line:
            return
        path = line.split()[1]
        headers = {}
        while (h := f.readline().decode("latin-1").strip()):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.requests.append((path, headers))
        if self.hold_headers is not None:
            self.hold_headers.wait()
        name = path.removeprefix("/netboot/")
        body = self.files.get(name)
        status = self.status.get(name, 200 if body is not None else 404)
        if status != 200 or body is None:
            text = f"{status} {REASONS.get(status, 'Error')}\n".encode()
            sock.sendall(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Length: "
                         f"{len(text)}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n".encode()
                         + text)
            return
        etag = self.etag(body)
        if headers.get("if-none-match") == etag:
            sock.sendall(f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n".encode())
            return
        wire = _gzip.compress(body, mtime=0) if self.gzip else body
        head = ["HTTP/1.1 200 OK", f"ETag: {etag}", "Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT",
                "Connection: close"]
        if self.gzip or self.encoding:
            head.append(f"Content-Encoding: {self.encoding or 'gzip'}")
        if self.framing == "length":
            head.append(f"Content-Length: {len(wire)}")
        elif self.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self._send_body(sock, wire)

    def _send_body(self, sock: socket.socket, wire: bytes) -> None:
        chunked = self.framing == "chunked"
        step = self.drip[0] if self.drip else 64 << 10
        sent = 0
        try:
            while sent < len(wire):
                if self.hold_at is not None and sent >= self.hold_at:
                    self.gate.wait()
                if self.cut_at is not None and sent >= self.cut_at:
                    return                  # StreamServer closes the connection: cut short
                end = min(sent + step, len(wire))
                for limit in (self.hold_at, self.cut_at):
                    if limit is not None and sent < limit < end:
                        end = limit         # stop exactly there
                piece = wire[sent:end]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.sent += len(piece)
                sent = end
                if self.drip:
                    gevent.sleep(self.drip[1])
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:                     # the client went away
            return
