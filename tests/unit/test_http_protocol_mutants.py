"""The HTTP core (``massboot/http/protocol.py``) pinned down by mutation testing
(tests/mutation.sh; with tests/unit/test_http_protocol.py: 98.2 %): the exact bytes of every
kind of answer, reason phrases, error details, keep-alive in every answer, targets,
conditional and ``If-Range`` edges. Equivalent mutants accepted (no observable difference, README "Mutation
testing"):

* ``"latin-1"``/``"utf-8"`` spelled ``"LATIN-1"``/``"UTF-8"`` (``_percent_decode``,
  ``parse_request``, ``render_head``): codec names are case-insensitive.
* ``_percent_decode``: ``i = None`` (``raw[None:j]`` is ``raw[0:j]``); ``j <= 0`` or ``j < 1``
  for ``j < 0`` (the path always starts with ``/``, so a ``%`` is never at offset 0).
* ``_target_path``: ``target[:9]`` for ``target[:8]`` (``startswith`` of 7 or 8 characters);
  the ``slash >= 0`` test made always true (without a ``/`` the last character of the
  authority becomes the path, and the leading character is cut off anyway: the name is ``""``).
* ``head_end``: a default ``start`` of 1 (searching starts at ``max(0, start - 3)``).
* ``parse_request``: the ``connection`` default ``"XXXX"`` for ``""`` (neither is ``close`` nor
  ``keep-alive``).
* ``content_type``: the ``dot < 0`` branch made never taken (the last character alone is never
  a key of the table).
* ``http_date``: the cache compared on ``_date_cache[1]`` (a string, never equal to the second:
  the date is formatted again each time, with the same result).
* ``_range_applies``: ``"W/"`` spelled ``"w/"`` or ``"XXW/XX"`` (a weak tag then goes to the date
  comparison, which fails as the strong comparison did).
"""

from __future__ import annotations

import pytest

from massboot.http.protocol import (
    UNSATISFIABLE,
    FileMeta,
    HttpError,
    Request,
    head_end,
    http_date,
    parse_range,
    parse_request,
    plan_error,
    plan_file,
    render_head,
)
from tests.unit.test_http_protocol import META, headers, req

# -- exact answers, as the wire sees them --------------------------------------------------

NOW = 1_700_000_100


@pytest.fixture
def fixed_clock(monkeypatch):
    """``Date`` at a fixed second (the module caches one formatted date per second)."""
    import massboot.http.protocol as protocol

    class FakeTime:
        @staticmethod
        def time() -> float:
            return NOW + 0.5

    monkeypatch.setattr(protocol, "time", FakeTime)
    monkeypatch.setattr(protocol, "_date_cache", (0, ""))
    return "Tue, 14 Nov 2023 22:15:00 GMT"


def wire(plan) -> str:
    return render_head(plan).decode("latin-1")


def test_http_date_cached_per_second(fixed_clock):
    assert http_date() == fixed_clock
    assert http_date() == fixed_clock
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_700_000_000.9) == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_whole_answer_on_the_wire(fixed_clock):
    plan = plan_file(Request("GET", "/k.efi", "k.efi", headers={"host": "h"}), META)
    assert wire(plan) == (
        "HTTP/1.1 200 OK\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\n"
        "Accept-Ranges: bytes\r\nContent-Type: application/efi\r\n"
        "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        f"ETag: {META.etag}\r\nContent-Length: 1000\r\n\r\n")
    assert (plan.start, plan.length, plan.body, plan.chunked) == (0, 1000, None, False)


def test_partial_answer_on_the_wire(fixed_clock):
    plan = plan_file(Request("GET", "/f", "f", headers={"range": "bytes=-10"}, keep_alive=False), META)
    assert wire(plan) == (
        "HTTP/1.1 206 Partial Content\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: close\r\n"
        "Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n"
        "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        f"ETag: {META.etag}\r\nContent-Range: bytes 990-999/1000\r\nContent-Length: 10\r\n\r\n")
    assert (plan.start, plan.length, plan.keep_alive, plan.send_body) == (990, 10, False, True)


def test_unsatisfiable_and_not_modified_on_the_wire(fixed_clock):
    bad = plan_file(Request("GET", "/f", "f", headers={"range": "bytes=5000-"}), META)
    assert wire(bad) == (
        "HTTP/1.1 416 Range Not Satisfiable\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\n"
        "Content-Range: bytes */1000\r\nContent-Length: 0\r\nAccept-Ranges: bytes\r\n\r\n")
    assert (bad.length, bad.body, bad.send_body) == (0, None, False)
    same = plan_file(Request("HEAD", "/f", "f", headers={"if-none-match": META.etag}), META)
    assert wire(same) == (
        "HTTP/1.1 304 Not Modified\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\n"
        "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        f"ETag: {META.etag}\r\n\r\n")
    assert (same.length, same.send_body, same.keep_alive) == (0, False, True)


def test_stream_answer_on_the_wire(fixed_clock):
    plan = plan_file(Request("GET", "/f", "f"), FileMeta(None))
    assert wire(plan) == (
        "HTTP/1.1 200 OK\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (plan.start, plan.length, plan.chunked, plan.send_body) == (0, None, True, True)
    head = plan_file(Request("HEAD", "/f", "f", version=(1, 0), keep_alive=True), FileMeta(None, 5.0))
    assert wire(head) == (
        "HTTP/1.1 200 OK\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: close\r\n"
        "Content-Type: application/octet-stream\r\nLast-Modified: Thu, 01 Jan 1970 00:00:05 GMT\r\n\r\n")
    assert (head.chunked, head.send_body, head.keep_alive) == (False, False, False)
    known = plan_file(Request("GET", "/f", "f"), FileMeta(50))      # a download whose length is known
    assert headers(known)["Content-Length"] == "50" and "ETag" not in headers(known)
    assert "Last-Modified" not in headers(known)


def test_error_answers_on_the_wire(fixed_clock):
    plan = plan_error(404, Request("GET", "/x", "x"))
    assert wire(plan) + plan.body.decode() == (
        "HTTP/1.1 404 Not Found\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n\r\n404 Not Found\n")
    assert (plan.status, plan.start, plan.length, plan.send_body, plan.chunked) == (404, 0, 14, True, False)
    gone = plan_error(400, Request("GET", "/x", "x"), keep_alive=False)
    assert not gone.keep_alive and headers(gone)["Connection"] == "close"
    closing = plan_error(401, Request("GET", "/x", "x", keep_alive=False))
    assert not closing.keep_alive and closing.body == b"401 Unauthorized\n"
    unknown = plan_error(599)
    assert unknown.body == b"599 Error\n" and wire(unknown).startswith("HTTP/1.1 599 Unknown\r\n")
    allow = plan_error(405, Request("HEAD", "/x", "x"), headers=(("Allow", "GET, HEAD"),))
    assert wire(allow) == (
        "HTTP/1.1 405 Method Not Allowed\r\n"
        f"Date: {fixed_clock}\r\nServer: massboot\r\nConnection: keep-alive\r\nAllow: GET, HEAD\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 23\r\n\r\n")
    assert not allow.send_body and allow.body == b"405 Method Not Allowed\n"


@pytest.mark.parametrize("status, phrase", [
    (200, "OK"), (206, "Partial Content"), (304, "Not Modified"), (400, "Bad Request"),
    (401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found"), (405, "Method Not Allowed"),
    (408, "Request Timeout"), (413, "Content Too Large"), (414, "URI Too Long"),
    (416, "Range Not Satisfiable"), (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"), (501, "Not Implemented"), (502, "Bad Gateway"),
    (503, "Service Unavailable"), (504, "Gateway Timeout"), (505, "HTTP Version Not Supported"),
])
def test_reason_phrases(status, phrase):
    """RFC 9110 section 15's phrases."""
    assert wire(plan_error(status)).startswith(f"HTTP/1.1 {status} {phrase}\r\n")
    assert plan_error(status).body == f"{status} {phrase}\n".encode()


@pytest.mark.parametrize("head, detail", [
    (req("GET /f"), "malformed request line"),
    (b"\r\n\r\n", "empty request"),
    (req("GET /f HTTQ/1.1", "Host: h"), "malformed HTTP version"),
    (req("GET /f HTTP/2.0", "Host: h"), "HTTP/2.0"),
    (req("G(T /f HTTP/1.1", "Host: h"), "malformed method"),
    (req("GET /f HTTP/1.1", "Host: a", " folded"), "obsolete line folding"),
    (req("GET /f HTTP/1.1", "Host : a"), "malformed header field"),
    (req("GET /f HTTP/1.1", "Host: a", "Host: b"), "host given twice"),
    (req("GET /f HTTP/1.1", "Host: a", "Content-Length: 0", "Content-Length: 0"),
     "content-length given twice"),
    (req("POST /f HTTP/1.1", "Host: h"), "POST"),
    (req("BREW /f HTTP/1.1", "Host: h"), "BREW"),
    (req("GET /f HTTP/1.1"), "no Host"),
    (req("GET /f HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"), "Transfer-Encoding in a request"),
    (req("GET /f HTTP/1.1", "Host: a", "Content-Length: -1"), "malformed Content-Length"),
    (req("GET /f HTTP/1.1", "Host: a", "Content-Length: 1"), "a request body"),
    (req("GET /a%g0 HTTP/1.1", "Host: a"), "malformed percent-encoding"),
    (req("GET ftp://h/x HTTP/1.1", "Host: a"), "request target is not a path"),
])
def test_error_details(head, detail):
    with pytest.raises(HttpError) as err:
        parse_request(head)
    assert err.value.detail == detail and str(err.value) == detail


def test_http_error_defaults():
    err = HttpError(400, "bad_request")
    assert (err.status, err.reason, err.detail, err.headers, str(err)) == (400, "bad_request", "", (),
                                                                           "bad_request")


@pytest.mark.parametrize("target, name", [
    ("https://h/x/y", "x/y"),
    ("http://h", ""),
    ("Http://H:8/a", "a"),
    ("/%41%62%2F%2f", "Ab//"),
    ("/%e2%82%ac", "\u20ac"),
    ("/a?b?c", "a"),
    ("/a#b?c", "a"),
    ("/%3f%23", "?#"),
    ("http://h/a://b", "a://b"),
    ("http:///x", "x"),
])
def test_more_targets(target, name):
    assert parse_request(req(f"GET {target} HTTP/1.1", "Host: h")).name == name


def test_request_fields():
    r = parse_request(b"GET /f HTTP/1.1\r\nHost:h\r\nX-Empty:\r\nX-Tab:\tv \t\r\n\r\nignored: after\r\n")
    assert r.headers == {"host": "h", "x-empty": "", "x-tab": "v"}
    assert (r.method, r.version, r.keep_alive) == ("GET", (1, 1), True)
    assert parse_request(req("GET /f HTTP/1.9", "Host: h")).version == (1, 1)
    assert parse_request(req("GET /f HTTP/1.1", "Host: h", "Connection: upgrade, close ")).keep_alive is False
    assert parse_request(req("GET /f HTTP/1.0", "Connection: Keep-Alive")).keep_alive is True
    both = parse_request(req("GET /f HTTP/1.1", "Host: h", "Connection: keep-alive,close"))
    assert both.keep_alive is False
    odd = parse_request(req("GET /f HTTP/1.1", "Host: h:80", "X-A: XvX", "X-B: \x0bv\x0c"))
    assert odd.headers == {"host": "h:80", "x-a": "XvX", "x-b": "\x0bv\x0c"}   # OWS is SP and HTAB


@pytest.mark.parametrize("data, start, end", [
    (b"GET / HTTP/1.1\n\nX\r\n\r\n", 0, 16),        # the earliest blank line wins
    (b"GET / HTTP/1.1\r\n\r\nX\n\n", 0, 18),
    (b"A\r\n\r\nB\r\n\r\n", 3, 5),                   # a caller's start, minus 3
    (b"A\r\n\r\nB\r\n\r\n", 6, 10),
    (b"A\n\r\nB", 0, 4),
    (b"\n\n", 0, 2),
])
def test_head_end_earliest(data, start, end):
    assert head_end(data, start) == end
    assert head_end(bytearray(data), start) == end


def test_range_edges():
    assert parse_range("bytes=0-0", 1) == (0, 1)
    assert parse_range("bytes=0-", 1) == (0, 1)
    assert parse_range("bytes=-1", 1) == (0, 1)
    assert parse_range("bytes=1-", 1) is UNSATISFIABLE
    assert parse_range("bytes=5-5", 10) == (5, 6)
    assert parse_range("bytes= 1-2", 10) == (1, 3)
    assert repr(UNSATISFIABLE) == "UNSATISFIABLE"


@pytest.mark.parametrize("meta, if_range, status", [
    (FileMeta(1000, None, '"e"'), http_date(5), 200),         # no date to compare with
    (FileMeta(1000, 5.0, None), '"e"', 200),                  # no tag to compare with
    (FileMeta(1000, 5.0, None), http_date(5), 206),
    (FileMeta(1000, 5.0, '"e"'), ' "e" ', 206),
    (FileMeta(1000, 5.0, '"e"'), "W/\"e\"", 200),
])
def test_if_range_cases(meta, if_range, status):
    r = Request("GET", "/f", "f", headers={"range": "bytes=0-0", "if-range": if_range})
    assert plan_file(r, meta).status == status


@pytest.mark.parametrize("meta, fields, status", [
    (FileMeta(10, 5.0, None), {"if-none-match": "*"}, 200),            # "*" needs a current tag
    (FileMeta(10, None, '"e"'), {"if-modified-since": http_date(10)}, 200),
    (FileMeta(10, 5.9, '"e"'), {"if-modified-since": http_date(5)}, 304),   # one-second precision
    (FileMeta(10, 6.0, '"e"'), {"if-modified-since": http_date(5)}, 200),
    (FileMeta(10, 5.0, '"e"'), {"if-modified-since": "Sun, 06 Nov 1994 08:49:37"}, 200),  # no zone
    (FileMeta(10, 5.0, '"e"'), {"if-none-match": 'W/"x", "e"'}, 304),
    (FileMeta(10, 5.0, '"e"'), {"if-none-match": '"E"'}, 200),
    (FileMeta(10, 5.0, '"e"'), {"if-none-match": '"x","e"'}, 304),
    (FileMeta(10, 5.0, None), {"if-none-match": '"x"'}, 200),          # no tag: nothing matches
])
def test_conditional_edges(meta, fields, status):
    assert plan_file(Request("GET", "/f", "f", headers=fields), meta).status == status


def test_keep_alive_follows_the_request_in_every_answer():
    for fields, status in (({}, 200), ({"range": "bytes=0-0"}, 206), ({"range": "bytes=99999-"}, 416),
                           ({"if-none-match": META.etag}, 304)):
        for keep in (True, False):
            plan = plan_file(Request("GET", "/f", "f", headers=fields, keep_alive=keep), META)
            assert plan.status == status and plan.keep_alive is keep
            assert headers(plan)["Connection"] == ("keep-alive" if keep else "close")
    head = plan_file(Request("HEAD", "/f", "f", headers={"range": "bytes=0-9"}), META)
    assert head.status == 206 and not head.send_body and headers(head)["Content-Length"] == "10"
