"""The HTTP core, sans I/O: request heads, targets, ranges, conditionals, answers (RFC 9110/9112)."""

from __future__ import annotations

import pytest

from massboot.http.protocol import (
    UNSATISFIABLE,
    FileMeta,
    HttpError,
    Request,
    chunk_header,
    content_type,
    etag_for,
    head_end,
    http_date,
    parse_range,
    parse_request,
    plan_error,
    plan_file,
    render_head,
)


def req(line: str = "GET /f HTTP/1.1", *fields: str) -> bytes:
    return ("\r\n".join((line, *fields)) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize("data, end", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27),
    (b"GET / HTTP/1.1\nHost: x\n\n", 24),
    (b"GET / HTTP/1.1\nHost: x\n\r\n", 25),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", -1),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next", 27),
    (b"", -1),
])
def test_head_end(data, end):
    assert head_end(data) == end
    assert head_end(bytearray(data), start=5) == end


@pytest.mark.parametrize("target, name", [
    ("/vmlinuz", "vmlinuz"),
    ("/boot/initrd.img?x=1", "boot/initrd.img"),          # pybootd: the query broke the lookup
    ("/a%20b", "a b"),
    ("/%2e%2e/etc/passwd", "../etc/passwd"),              # decoded once: the store refuses it
    ("/%252e%252e/etc", "%2e%2e/etc"),                    # not twice
    ("/a%2fb", "a/b"),
    ("/x#frag", "x"),
    ("/x%3Fy", "x?y"),                                    # an encoded "?" is part of the name
    ("/%00", "\0"),
    ("//etc/passwd", "/etc/passwd"),
    ("/..\\..\\x", "..\\..\\x"),
    ("http://192.0.2.1:8080/dir/f?q", "dir/f"),           # absolute form (RFC 9112 3.2.2)
    ("HTTP://h", ""),
    ("/", ""),
    ("/%ff", "\udcff"),                                   # not UTF-8: its byte, kept
])
def test_target_decoded_once(target, name):
    r = parse_request(req(f"GET {target} HTTP/1.1", "Host: h"))
    assert r.name == name and r.target == target


@pytest.mark.parametrize("head, status, reason", [
    (req("GET /f"), 400, "bad_request"),
    (req("GET  /f HTTP/1.1"), 400, "bad_request"),
    (req("GET  /f HTTP/1.1", "Host: h"), 400, "bad_request"),       # one space between parts
    (req("GET /f  HTTP/1.1", "Host: h"), 400, "bad_request"),
    (req("GET /f HTTP/2.0", "Host: h"), 505, "version"),
    (req("GET /f HTTQ/1.1", "Host: h"), 400, "bad_request"),
    (req("POST /f HTTP/1.1", "Host: h"), 405, "method"),
    (req("BREW /f HTTP/1.1", "Host: h"), 501, "method"),
    (req("G(T /f HTTP/1.1", "Host: h"), 400, "bad_request"),
    (req("GET /f HTTP/1.1"), 400, "bad_request"),                         # no Host
    (req("GET /f HTTP/1.1", "Host: a", "Host: b"), 400, "bad_request"),
    (req("GET /f HTTP/1.1", "Host : a"), 400, "bad_request"),
    (req("GET /f HTTP/1.1", "Host: a", " folded"), 400, "bad_request"),
    (req("GET /f HTTP/1.1", "Host: a", "nocolon"), 400, "bad_request"),
    (req("GET /f HTTP/1.1", "Host: a", "Content-Length: 5"), 413, "bad_request"),
    (req("GET /f HTTP/1.1", "Host: a", "Content-Length: x"), 400, "bad_request"),
    (req("GET /f HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"), 501, "bad_request"),
    (req("GET /a%zz HTTP/1.1", "Host: a"), 400, "bad_request"),
    (req("GET /a% HTTP/1.1", "Host: a"), 400, "bad_request"),
    (req("GET * HTTP/1.1", "Host: a"), 400, "bad_request"),
    (req("GET host:80 HTTP/1.1", "Host: a"), 400, "bad_request"),
    (b"\r\n\r\n", 400, "bad_request"),
])
def test_bad_requests(head, status, reason):
    with pytest.raises(HttpError) as err:
        parse_request(head)
    assert (err.value.status, err.value.reason) == (status, reason)
    if reason == "method":
        assert ("Allow", "GET, HEAD") in err.value.headers


@pytest.mark.parametrize("version, connection, keep", [
    ("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
    ("1.0", None, False), ("1.0", "keep-alive", True), ("1.0", "close", False),
])
def test_keep_alive(version, connection, keep):
    fields = ["Host: h"] + ([f"Connection: {connection}"] if connection else [])
    r = parse_request(req(f"HEAD /f HTTP/{version}", *fields))
    assert r.keep_alive is keep and r.method == "HEAD"


def test_headers_lower_cased_and_joined_empty_lines_first():
    r = parse_request(b"\r\nGET /f HTTP/1.0\r\nX-A: 1\r\nx-a: 2\r\nRange:  bytes=0-1 \r\n\r\n")
    assert r.headers == {"x-a": "1, 2", "range": "bytes=0-1"} and r.version == (1, 0)
    assert parse_request(req("GET /f HTTP/1.1", "Host: h", "Content-Length: 0")).name == "f"


@pytest.mark.parametrize("value, size, want", [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=10-", 100, (10, 100)),
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-200", 100, (0, 100)),
    ("bytes=90-200", 100, (90, 100)),
    ("bytes=99-99", 100, (99, 100)),
    ("BYTES = 5 - 6", 100, (5, 7)),
    ("bytes=100-", 100, UNSATISFIABLE),
    ("bytes=100-200", 100, UNSATISFIABLE),
    ("bytes=-0", 100, UNSATISFIABLE),
    ("bytes=-5", 0, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=9-3", 100, None),          # invalid: ignored
    ("bytes=-", 100, None),
    ("bytes=0-1,5-6", 100, None),      # several ranges: the whole file
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
])
def test_parse_range(value, size, want):
    assert parse_range(value, size) == want


META = FileMeta(1000, 1_700_000_000.0, etag_for(5, 1000, 1_700_000_000_000_000_000))


def headers(plan) -> dict[str, str]:
    return dict(plan.headers)


def test_plan_whole_file_and_head():
    get = plan_file(Request("GET", "/f", "f", headers={"host": "h"}), META)
    h = headers(get)
    assert (get.status, get.start, get.length, get.send_body, get.keep_alive) == (200, 0, 1000, True, True)
    assert h["Content-Length"] == "1000" and h["Accept-Ranges"] == "bytes"
    assert h["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT" and h["ETag"] == META.etag
    head = plan_file(Request("HEAD", "/f", "f"), META)
    assert head.status == 200 and not head.send_body and headers(head)["Content-Length"] == "1000"


def test_plan_range_and_unsatisfiable():
    part = plan_file(Request("GET", "/f", "f", headers={"range": "bytes=100-199"}), META)
    assert (part.status, part.start, part.length) == (206, 100, 100)
    assert headers(part)["Content-Range"] == "bytes 100-199/1000"
    assert headers(part)["Content-Length"] == "100"
    bad = plan_file(Request("GET", "/f", "f", headers={"range": "bytes=1000-"}), META)
    assert bad.status == 416 and headers(bad)["Content-Range"] == "bytes */1000"
    assert not bad.send_body and bad.keep_alive


@pytest.mark.parametrize("fields, status", [
    ({"if-none-match": META.etag}, 304),
    ({"if-none-match": f'"x", W/{META.etag}'}, 304),
    ({"if-none-match": "*"}, 304),
    ({"if-none-match": '"other"'}, 200),
    ({"if-none-match": '"other"', "if-modified-since": http_date(2e9)}, 200),  # INM wins
    ({"if-modified-since": http_date(1_700_000_000)}, 304),
    ({"if-modified-since": http_date(1_699_999_999)}, 200),
    ({"if-modified-since": "yesterday"}, 200),
    ({"range": "bytes=0-0", "if-range": META.etag}, 206),
    ({"range": "bytes=0-0", "if-range": '"old"'}, 200),
    ({"range": "bytes=0-0", "if-range": f"W/{META.etag}"}, 200),   # weak: never for If-Range
    ({"range": "bytes=0-0", "if-range": http_date(1_700_000_000)}, 206),
    ({"range": "bytes=0-0", "if-range": http_date(1_600_000_000)}, 200),
])
def test_conditionals(fields, status):
    assert plan_file(Request("GET", "/f", "f", headers=fields), META).status == status


def test_plan_stream_of_unknown_length():
    meta = FileMeta(None)
    chunked = plan_file(Request("GET", "/f", "f", headers={"range": "bytes=0-1"}), meta)
    assert (chunked.status, chunked.length, chunked.chunked, chunked.keep_alive) == (200, None, True, True)
    assert headers(chunked)["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers(chunked)
    old = plan_file(Request("GET", "/f", "f", version=(1, 0), keep_alive=True), meta)
    assert (old.chunked, old.keep_alive, headers(old)["Connection"]) == (False, False, "close")
    head = plan_file(Request("HEAD", "/f", "f"), meta)
    assert not head.send_body and not head.chunked


def test_plan_error_and_render():
    r = Request("GET", "/x", "x")
    plan = plan_error(404, r)
    assert plan.keep_alive and plan.body == b"404 Not Found\n" and plan.send_body
    closing = plan_error(400)
    assert not closing.keep_alive and headers(closing)["Connection"] == "close"
    assert not plan_error(404, Request("HEAD", "/x", "x")).send_body
    allow = plan_error(405, None, headers=(("Allow", "GET, HEAD"),))
    text = render_head(allow).decode()
    assert text.startswith("HTTP/1.1 405 Method Not Allowed\r\n") and text.endswith("\r\n\r\n")
    assert "\r\nAllow: GET, HEAD\r\n" in text and "\r\nContent-Length: 23\r\n" in text
    assert chunk_header(0) == b"0\r\n" and chunk_header(255) == b"ff\r\n"


@pytest.mark.parametrize("name, wanted", [
    ("shimx64.efi", "application/efi"), ("EFI/BOOT/BOOTX64.EFI", "application/efi"),
    ("debian.iso", "application/vnd.efi-iso"), ("vmlinuz", "application/octet-stream"),
    ("initrd.img", "application/octet-stream"), ("boot.ipxe", "application/octet-stream"),
    ("dir.efi/file", "application/octet-stream"), ("", "application/octet-stream"),
    ("grub.x64.efi", "application/efi"), (".efi", "application/efi"), ("a.EfI", "application/efi"),
])
def test_content_type(name, wanted):
    assert content_type(name) == wanted
    plan = plan_file(Request("GET", "/" + name, name), META)
    assert headers(plan)["Content-Type"] == wanted


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
