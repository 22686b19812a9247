"""HTTP/1.1 for a read-only file server, sans I/O (RFC 9110 semantics, RFC 9112 messages).

The server (:mod:`massboot.http.server`) reads bytes and writes bytes; everything it decides
about them is here, pure and table-tested:

* :func:`head_end` finds where a request head ends in what was received;
* :func:`parse_request` turns one head into a :class:`Request` or raises :class:`HttpError`
  with the status that answers it (400, 405, 413, 501, 505...). The target is split from its
  query and fragment (pybootd looked the query up as part of the file name), then
  percent-decoded **once** (RFC 3986 section 2.1; a malformed escape is a 400): the name that
  goes to the file store is checked there, once decoded, for traversal (``..``, an absolute
  name, a backslash path, a NUL), so ``%2e%2e/`` is refused and ``%252e%252e`` stays the literal
  name ``%2e%2e`` (for a mirror root the store decodes and checks it again);
* :func:`parse_range` reads a ``Range`` header against a size (RFC 9110 section 14.2);
* :func:`plan_file` decides the answer for a file: 200, 206, 304 or 416, the headers
  (``Content-Length`` or chunked, ``Last-Modified``, ``ETag``, ``Accept-Ranges``), the part of
  the file to send, and whether the connection stays open; :func:`plan_error` does the same for
  an error; :func:`render_head` makes the bytes of the status line and headers.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass, field

__all__ = ["ALLOW", "CONTENT_TYPES", "UNSATISFIABLE", "FileMeta", "HttpError", "Plan", "Request",
           "chunk_header", "content_type", "etag_for", "head_end", "parse_range", "parse_request",
           "plan_error", "plan_file", "render_head"]

#: the methods served (RFC 9110 section 9.3.1, 9.3.2)
ALLOW = ("GET", "HEAD")
#: other standard methods: 405 with ``Allow``; any other token is 501 (RFC 9110 section 15.6.2)
_KNOWN = frozenset(("POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))

REASONS = {
    200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    416: "Range Not Satisfiable", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

#: ``Content-Type`` by file name ending: UEFI HTTP Boot (EDK2's HttpBootDxe) takes a boot file
#: labelled ``application/efi`` as an EFI image and ``application/vnd.efi-iso`` as a CD image
#: whatever its name (UEFI 2.9 section 24.7.3.1); anything else is ``application/octet-stream``
#: (EDK2 then goes by the ``.efi``/``.iso``/``.img`` ending), scripts and configs included
CONTENT_TYPES = {".efi": "application/efi", ".iso": "application/vnd.efi-iso"}
OCTETS = "application/octet-stream"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")   # RFC 9110 section 5.6.2
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


class HttpError(Exception):
    """A request that is answered with an error status, and the connection closed.

    Attributes:
        status: the status code.
        reason: a short label for logs and metrics (``bad_request``, ``method``...).
        headers: extra response headers (``Allow`` for 405).
    """

    def __init__(self, status: int, reason: str, detail: str = "",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail or reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head.

    Attributes:
        method: ``GET`` or ``HEAD``.
        target: the request target as sent (for logs: quote it with ``client_text``).
        name: the path decoded once, without its leading ``/``, query and fragment: the name
            asked of the file store.
        version: ``(1, 0)`` or ``(1, 1)``.
        headers: field names lower-cased; repeated fields joined with ``", "``.
        keep_alive: the client lets the connection stay open after the response.
    """

    method: str
    target: str
    name: str
    version: tuple[int, int] = (1, 1)
    headers: dict[str, str] = field(default_factory=dict)
    keep_alive: bool = True


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """The offset just after the blank line that ends a request head in *buf*, or -1.

    Lines may end with CRLF or a bare LF (RFC 9112 section 2.2 lets a server accept LF): the
    head ends at the first ``LF LF`` or ``LF CR LF`` (the end of ``CR LF CR LF``). Searching
    starts at *start* minus 3, so a caller may pass what it had searched already.
    """
    begin = max(0, start - 3)
    ends = [i + len(blank) for blank in (b"\n\n", b"\n\r\n") if (i := buf.find(blank, begin)) >= 0]
    return min(ends, default=-1)


def _percent_decode(path: str) -> str:
    """Decode ``%XX`` escapes once (RFC 3986 section 2.1); 400 for a malformed one.

    Bytes that are not UTF-8 are kept as surrogate escapes, as the TFTP codec keeps a name's
    bytes: the file store quotes them back into a URL as the bytes they were.
    """
    raw = path.encode("latin-1")
    if _ESCAPE.search(raw):
        raise HttpError(400, "bad_request", "malformed percent-encoding")
    out = bytearray()
    i = 0
    while True:
        j = raw.find(b"%", i)
        if j < 0:
            out += raw[i:]
            break
        out += raw[i:j]
        out.append(int(raw[j + 1:j + 3], 16))
        i = j + 3
    return out.decode("utf-8", "surrogateescape")


def _target_path(target: str) -> str:
    """The path of an origin-form or absolute-form target (RFC 9112 section 3.2)."""
    if target.startswith("/"):
        return target
    lower = target[:8].lower()
    if lower.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    raise HttpError(400, "bad_request", "request target is not a path")


def parse_request(head: bytes | bytearray) -> Request:
    """Parse one request head (its request line and fields, up to the blank line).

    Raises:
        HttpError: 400 for a malformed head, 405 or 501 for a method other than GET and HEAD,
            413 for a request with a body, 505 for an HTTP major version other than 1.
    """
    text = bytes(head).decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and lines[0] == "":      # RFC 9112 section 2.2: ignore empty lines first
        lines.pop(0)
    if not lines:
        raise HttpError(400, "bad_request", "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "bad_request", "malformed request line")
    method, target, version_text = parts
    m = _VERSION.fullmatch(version_text)
    if m is None:
        raise HttpError(400, "bad_request", "malformed HTTP version")
    if m.group(1) != "1":
        raise HttpError(505, "version", f"HTTP/{m.group(1)}.{m.group(2)}")
    version = (1, 0) if m.group(2) == "0" else (1, 1)
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "bad_request", "malformed method")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line == "":
            break
        if line[0] in " \t":
            raise HttpError(400, "bad_request", "obsolete line folding")   # RFC 9112 section 5.2
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):    # no space before ":" (section 5.1)
            raise HttpError(400, "bad_request", "malformed header field")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name in ("host", "content-length"):
                raise HttpError(400, "bad_request", f"{name} given twice")
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    if method not in ALLOW:
        allow = (("Allow", ", ".join(ALLOW)),)
        if method in _KNOWN:
            raise HttpError(405, "method", method, allow)
        raise HttpError(501, "method", method, allow)
    if version == (1, 1) and "host" not in headers:
        raise HttpError(400, "bad_request", "no Host")       # RFC 9112 section 3.2
    # a body is neither expected nor read: refuse one rather than read it as the next request
    if "transfer-encoding" in headers:
        raise HttpError(501, "bad_request", "Transfer-Encoding in a request")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpError(400, "bad_request", "malformed Content-Length")
        if int(length):
            raise HttpError(413, "bad_request", "a request body")
    path = _target_path(target)
    for mark in ("#", "?"):                  # RFC 3986 section 3.4, 3.5
        path = path.partition(mark)[0]
    name = _percent_decode(path)[1:]
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "close" not in tokens and (version == (1, 1) or "keep-alive" in tokens)
    return Request(method, target, name, version, headers, keep_alive)


class _Unsatisfiable:
    def __repr__(self) -> str:
        return "UNSATISFIABLE"


#: :func:`parse_range`'s answer for a range that selects nothing (416)
UNSATISFIABLE = _Unsatisfiable()


def parse_range(value: str | None, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """One byte range of a file of *size* bytes (RFC 9110 section 14.1.2).

    Returns:
        ``(start, end)`` (end exclusive) for a 206; :data:`UNSATISFIABLE` for a 416; None to
        serve the whole file: no header, another unit, a syntax error, or several ranges
        (a server may ignore ``Range``, section 14.2; boot clients ask one range at a time).
    """
    if value is None:
        return None
    m = _RANGE.fullmatch(value)     # one range: "a-b, c-d" does not match
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size
    start = int(first)
    if last != "" and int(last) < start:
        return None            # invalid: ignored (section 14.1.1)
    if start >= size:
        return UNSATISFIABLE
    end = size if last == "" else min(int(last) + 1, size)
    return start, end


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the answer needs to know of a file.

    Attributes:
        size: bytes, or None while a download of unknown length is still filling it.
        mtime: modification time (epoch seconds) for ``Last-Modified``; None: not sent.
        etag: the entity tag, quoted (``"..."``); None: not sent.
    """

    size: int | None
    mtime: float | None = None
    etag: str | None = None


def content_type(name: str) -> str:
    """The ``Content-Type`` of a file served under *name* (see :data:`CONTENT_TYPES`)."""
    dot = name.rfind(".")
    return OCTETS if dot < 0 else CONTENT_TYPES.get(name[dot:].lower(), OCTETS)


def etag_for(ino: int, size: int, mtime_ns: int) -> str:
    """A strong entity tag for one version of a file (RFC 9110 section 8.8.3)."""
    return f'"{ino:x}-{size:x}-{mtime_ns:x}"'


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to one request.

    Attributes:
        status: the status code.
        headers: the response fields, in order.
        start: the file offset where the body starts.
        length: body bytes from the file; None: until the end of a file whose size is not known
            yet (sent chunked, or until the connection closes for HTTP/1.0).
        body: a fixed body instead of the file's bytes (an error's text), or None.
        send_body: False for HEAD and 304: the head only.
        chunked: the body is sent with the chunked transfer coding (RFC 9112 section 7.1).
        keep_alive: the connection stays open after this response.
    """

    status: int
    headers: list[tuple[str, str]]
    start: int = 0
    length: int | None = 0
    body: bytes | None = None
    send_body: bool = True
    chunked: bool = False
    keep_alive: bool = True


_date_cache: tuple[int, str] = (0, "")


def http_date(when: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7); the current second's is computed once."""
    global _date_cache
    if when is not None:
        return email.utils.formatdate(when, usegmt=True)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _parse_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _etag_matches(header: str, etag: str | None, weak: bool) -> bool:
    """RFC 9110 section 13.1.2/8.8.3.2: ``*`` or a listed tag; *weak*: weak comparison."""
    if header.strip() == "*":
        return etag is not None
    if etag is None:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _not_modified(request: Request, meta: FileMeta) -> bool:
    """RFC 9110 section 13.2.2 steps 3 and 4 for GET and HEAD."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, meta.etag, weak=True)
    ims = request.headers.get("if-modified-since")
    if ims is not None and meta.mtime is not None:
        since = _parse_date(ims)
        return since is not None and int(meta.mtime) <= since
    return False


def _range_applies(request: Request, meta: FileMeta) -> bool:
    """``If-Range`` (RFC 9110 section 13.1.5): the range only if the file is that version."""
    if_range = request.headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return meta.etag is not None and if_range == meta.etag     # strong comparison
    if meta.mtime is None:
        return False
    return if_range == http_date(meta.mtime)


def _common(keep_alive: bool) -> list[tuple[str, str]]:
    return [("Date", http_date()), ("Server", "massboot"),
            ("Connection", "keep-alive" if keep_alive else "close")]


def plan_file(request: Request, meta: FileMeta) -> Plan:
    """The answer to a GET or HEAD for a file that exists and may be served."""
    keep = request.keep_alive
    validators: list[tuple[str, str]] = []
    if meta.mtime is not None:
        validators.append(("Last-Modified", http_date(meta.mtime)))
    if meta.etag is not None:
        validators.append(("ETag", meta.etag))
    send = request.method == "GET"
    if _not_modified(request, meta):
        return Plan(304, _common(keep) + validators, send_body=False, keep_alive=keep)
    size = meta.size
    if size is None:
        # still downloading, length unknown: chunked for HTTP/1.1, until close for HTTP/1.0
        chunked = request.version >= (1, 1)
        keep = keep and chunked
        headers = _common(keep) + [("Content-Type", content_type(request.name))] + validators
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        return Plan(200, headers, 0, None, send_body=send, chunked=chunked and send,
                    keep_alive=keep)
    headers = [("Accept-Ranges", "bytes"), ("Content-Type", content_type(request.name))] + validators
    wanted = parse_range(request.headers.get("range"), size) if _range_applies(request, meta) else None
    if wanted is UNSATISFIABLE:
        return Plan(416, _common(keep) + [("Content-Range", f"bytes */{size}"),
                                          ("Content-Length", "0")] + headers[:1],
                    send_body=False, keep_alive=keep)
    if isinstance(wanted, tuple):
        start, end = wanted
        return Plan(206, _common(keep) + headers + [("Content-Range", f"bytes {start}-{end - 1}/{size}"),
                                                    ("Content-Length", str(end - start))],
                    start, end - start, send_body=send, keep_alive=keep)
    return Plan(200, _common(keep) + headers + [("Content-Length", str(size))], 0, size,
                send_body=send, keep_alive=keep)


def plan_error(status: int, request: Request | None = None, *, keep_alive: bool | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> Plan:
    """The answer with an error status and a one-line text body.

    *keep_alive*: None keeps the connection open when the request allows it (a 404 is an
    ordinary answer); a malformed request's error closes it.
    """
    if keep_alive is None:
        keep_alive = request.keep_alive if request is not None else False
    body = f"{status} {REASONS.get(status, 'Error')}\n".encode()
    fields = _common(keep_alive) + list(headers) + [("Content-Type", "text/plain; charset=utf-8"),
                                                    ("Content-Length", str(len(body)))]
    send = request is None or request.method != "HEAD"
    return Plan(status, fields, 0, len(body), body=body, send_body=send, keep_alive=keep_alive)


def render_head(plan: Plan) -> bytes:
    """The status line and header fields of *plan*, with the blank line that ends them."""
    lines = [f"HTTP/1.1 {plan.status} {REASONS.get(plan.status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in plan.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk_header(size: int) -> bytes:
    """The line that starts one chunk of *size* bytes (RFC 9112 section 7.1); 0 is the last."""
    return f"{size:x}\r\n".encode()
