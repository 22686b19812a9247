"""Sans-IO HTTP/1.1 client core: one request's bytes, one response parsed from the bytes fed.

Shared by the HTTP load generator (``bench/http_client.py``, forked epoll loops) and the rack
simulator's iPXE-over-HTTP clients (``bench/sim/client.py``, gevent sockets): each driver
owns its socket and its clock and feeds this core what it receives::

    sock.sendall(request("GET", "/vmlinuz", "10.0.0.1:80"))
    reader = ResponseReader()
    while not reader.finished:
        n = reader.skippable()           # body bytes that need no parsing: may be discarded
        got = recv_discard(n) if n else recv_into(buf)   # (MSG_TRUNC: no copy to user space)
        if n: reader.skipped(got)
        elif got: reader.feed(view[:got])   # returns how much was used: the rest is the next response's
        else: reader.eof()

What it does (RFC 9112, HTTP/1.1 message syntax; RFC 9110 semantics):

* The status line and header fields, up to ``max_head`` bytes (``head_too_large``); obsolete
  line folding is refused (``bad_header``, RFC 9112 section 5.2).
* The body's length (RFC 9112 section 6.3): none for HEAD, 1xx, 204 and 304; ``chunked``
  (section 7.1: chunk sizes, extensions ignored, trailer fields skipped) when
  Transfer-Encoding ends with it; else ``Content-Length`` (several different values, or one
  that is not a number, are ``bad_length``); else the body runs to the end of the connection.
* Keep-alive (RFC 9112 section 9.3): :attr:`keep_alive` is true when the connection may carry
  the next request (HTTP/1.1 without ``Connection: close``, or HTTP/1.0 with
  ``keep-alive``), and never for a body delimited by the close.
* Checked at the end of a 200: the body's size against ``size`` and its sha256 against
  ``sha256`` when given (``size``, ``sha256``). A connection closed before the end is
  ``closed``.

Failure reasons (:attr:`ResponseReader.reason`): ``bad_status_line``, ``bad_header``,
``head_too_large``, ``bad_length``, ``bad_chunk``, ``closed``, ``size``, ``sha256``;
:attr:`ResponseReader.detail` says more. A status other than 2xx is not a failure of the core:
the driver decides (:attr:`ResponseReader.status`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["BODY", "DONE", "FAILED", "HEAD", "ResponseReader", "request"]

#: States (:attr:`ResponseReader.state`), in order: ``state >= DONE`` means finished.
HEAD, BODY, DONE, FAILED = range(4)

Buffer = bytes | bytearray | memoryview

# Body framing (RFC 9112 section 6.3).
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
# Where a chunked body is (RFC 9112 section 7.1).
_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(4)
_MAX_LINE = 4096  # a chunk-size line or a trailer field


def request(method: str, target: str, host: str, *, keep_alive: bool = True,
            headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of one request (RFC 9112 section 3): request line, Host, Connection, *headers*.

    *target* is the origin-form path (``/boot/vmlinuz``), already percent-encoded.
    """
    if any(c in target for c in " \r\n") or any(c in host for c in " \r\n/"):
        raise ValueError(f"bad request target or host: {target!r} {host!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if not keep_alive:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseReader:
    """One response, parsed from the bytes fed to it; see the module docstring.

    Args:
        head_request: the request was HEAD (no body whatever the headers say).
        keep: keep up to this many body bytes in :attr:`content` (0: none).
        size: the body size a 200 must have, or None.
        sha256: the hex sha256 a 200's body must have, or None (hashing costs CPU: the
            generators check a sample of their downloads).
        max_head: the most bytes the status line and header fields may take.
    """

    def __init__(self, *, head_request: bool = False, keep: int = 0, size: int | None = None,
                 sha256: str | None = None, max_head: int = 16384) -> None:
        self.state = HEAD
        self.head_request = head_request
        self.keep = keep
        self.size = size
        self.expected_sha256 = sha256
        self._hash = hashlib.sha256() if sha256 else None
        self.max_head = max_head
        self.version = ""
        self.status = 0
        self.status_text = ""
        self.headers: dict[str, str] = {}
        self.length: int | None = None  # Content-Length, when the body is framed by it
        self.chunked = False
        self.keep_alive = False
        self.received = 0  # body bytes
        self.head_bytes = 0
        self.reason = ""
        self.detail = ""
        self._content = bytearray()
        self._head = bytearray()
        self._framing = _NONE
        self._left = 0  # body bytes left (Content-Length) or in the current chunk
        self._chunk_state = _SIZE_LINE
        self._line = bytearray()

    # -- results -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """DONE or FAILED."""
        return self.state >= DONE

    @property
    def ok(self) -> bool:
        """DONE with a 2xx status."""
        return self.state == DONE and 200 <= self.status < 300

    @property
    def content(self) -> bytes:
        """The body's first ``keep`` bytes."""
        return bytes(self._content)

    def _fail(self, reason: str, detail: str = "") -> None:
        self.state = FAILED
        self.reason = reason
        self.detail = detail
        self.keep_alive = False

    # -- input -------------------------------------------------------------------------

    def skippable(self) -> int:
        """Body bytes the driver may discard unseen now (0 when every byte must be fed).

        Only the rest of a ``Content-Length`` body that is neither hashed nor kept: a driver
        can then read it with ``recv(..., MSG_TRUNC)`` (Linux TCP: the kernel drops the bytes
        without copying them to user space) and report the count with :meth:`skipped`.
        """
        if self.state == BODY and self._framing == _LENGTH and self._hash is None \
                and len(self._content) >= self.keep:
            return self._left
        return 0

    def skipped(self, n: int) -> None:
        """*n* body bytes were discarded by the driver (at most :meth:`skippable`); 0 is the end
        of the connection."""
        if n <= 0:
            self.eof()
            return
        if n > self.skippable():
            raise ValueError(f"skipped {n} bytes, only {self.skippable()} may be")
        self.received += n
        self._left -= n
        if self._left == 0:
            self._done()

    def eof(self) -> None:
        """The server closed the connection: the end of a close-delimited body, else ``closed``."""
        if self.state >= DONE:
            return
        if self.state == BODY and self._framing == _CLOSE:
            self._done()
        else:
            where = "in the header" if self.state == HEAD else f"after {self.received} body bytes"
            self._fail("closed", f"connection closed {where}")

    def feed(self, data: Buffer) -> int:
        """Parse *data*; returns how many bytes belong to this response (the rest, if any, is
        the start of the next one on a kept-alive connection)."""
        view = memoryview(data)
        used = 0
        total = len(view)
        while used < total and self.state < DONE:
            if self.state == HEAD:
                used += self._feed_head(view[used:])
            elif self._framing == _CHUNKED:
                used += self._feed_chunked(view[used:])
            else:
                used += self._feed_body(view[used:], total - used if self._framing == _CLOSE
                                        else min(self._left, total - used))
        return used

    # -- the head ----------------------------------------------------------------------

    def _feed_head(self, view: memoryview) -> int:
        start = len(self._head)
        room = self.max_head - start
        self._head += view[:max(0, room)]
        end = self._head.find(b"\r\n\r\n", max(0, start - 3))
        if end < 0:
            if len(self._head) >= self.max_head:
                self._fail("head_too_large", f"no end of header in {self.max_head} bytes")
            return len(view) if room > 0 else 0
        used = end + 4 - start
        self.head_bytes = end + 4
        self._parse_head(bytes(self._head[:end]))
        self._head = bytearray()
        return used

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
                or not parts[1].isdigit():
            self._fail("bad_status_line", repr(lines[0][:80]))
            return
        self.version = parts[0].decode("latin-1")
        self.status = int(parts[1])
        self.status_text = parts[2].decode("latin-1") if len(parts) > 2 else ""
        lengths: set[str] = set()
        for line in lines[1:]:
            if not line or line[:1] in (b" ", b"\t"):
                self._fail("bad_header", "obsolete line folding" if line else "empty line")
                return
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                self._fail("bad_header", repr(line[:80]))
                return
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            if key == "content-length":
                lengths.update(v.strip() for v in text.split(","))
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        connection = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection
        encoding = self.headers.get("transfer-encoding", "")
        codings = [t.strip().lower() for t in encoding.split(",") if t.strip()]
        if self.head_request or 100 <= self.status < 200 or self.status in (204, 304):
            self._framing = _NONE
        elif codings:
            if codings[-1] != "chunked":
                self._framing = _CLOSE
                self.keep_alive = False
            else:
                self._framing = _CHUNKED
                self.chunked = True
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                self._fail("bad_length", f"Content-Length {self.headers['content-length']!r}")
                return
            self.length = self._left = int(next(iter(lengths)))
            self._framing = _LENGTH
        else:
            self._framing = _CLOSE
            self.keep_alive = False
        if self.status == 200 and self.size is not None and self.length is not None \
                and self.length != self.size:
            self._fail("size", f"Content-Length {self.length}, expected {self.size}")
            return
        self.state = BODY
        if self._framing == _NONE or (self._framing == _LENGTH and self._left == 0):
            self._done()

    # -- the body ----------------------------------------------------------------------

    def _take(self, chunk: memoryview) -> None:
        self.received += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        if len(self._content) < self.keep:
            self._content += chunk[:self.keep - len(self._content)]

    def _feed_body(self, view: memoryview, n: int) -> int:
        self._take(view[:n])
        if self._framing == _LENGTH:
            self._left -= n
            if self._left == 0:
                self._done()
        return n

    def _feed_chunked(self, view: memoryview) -> int:
        used = 0
        total = len(view)
        while used < total and self.state == BODY:
            if self._chunk_state == _CHUNK_DATA:
                n = min(self._left, total - used)
                self._take(view[used:used + n])
                used += n
                self._left -= n
                if self._left == 0:
                    self._chunk_state = _CHUNK_END
                continue
            # a line: the chunk size, the CRLF after a chunk's data, or a trailer field
            end = bytes(view[used:used + _MAX_LINE + 2]).find(b"\n")
            if end < 0:
                self._line += view[used:]
                used = total
                if len(self._line) > _MAX_LINE:
                    self._fail("bad_chunk", "line too long")
                break
            self._line += view[used:used + end + 1]
            used += end + 1
            line = bytes(self._line).rstrip(b"\r\n")
            self._line = bytearray()
            self._chunk_line(line)
        return used

    def _chunk_line(self, line: bytes) -> None:
        if self._chunk_state == _CHUNK_END:
            if line:
                self._fail("bad_chunk", "no CRLF after the chunk data")
            else:
                self._chunk_state = _SIZE_LINE
        elif self._chunk_state == _SIZE_LINE:
            digits = line.split(b";", 1)[0].strip()
            try:
                size = int(digits, 16) if digits and all(c in b"0123456789abcdefABCDEF" for c in digits) \
                    else -1
            except ValueError:
                size = -1
            if size < 0:
                self._fail("bad_chunk", f"chunk size {line[:40]!r}")
            elif size == 0:
                self._chunk_state = _TRAILER
            else:
                self._left = size
                self._chunk_state = _CHUNK_DATA
        elif not line:  # _TRAILER: the empty line ends the message
            self._done()

    def _done(self) -> None:
        if self.status == 200 and not self.head_request:
            if self.size is not None and self.received != self.size:
                self._fail("size", f"{self.received} bytes, expected {self.size}")
                return
            if self._hash is not None and self._hash.hexdigest() != self.expected_sha256:
                self._fail("sha256", f"sha256 {self._hash.hexdigest()[:16]}..., expected "
                                     f"{(self.expected_sha256 or '')[:16]}...")
                return
        self.state = DONE
