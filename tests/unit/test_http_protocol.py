"""The HTTP core, sans I/O: request heads, targets, ranges, conditionals, answers (RFC 9110/9112).

More, written against mutants: tests/unit/test_http_protocol_mutants.py.
"""

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
