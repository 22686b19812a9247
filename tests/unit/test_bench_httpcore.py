"""bench/httpcore.py, the sans-IO HTTP/1.1 client core of the HTTP bench and the simulator: no
sockets, responses fed in every split."""

from __future__ import annotations

import hashlib

import pytest

from bench.httpcore import BODY, DONE, FAILED, HEAD, ResponseReader, request

BODY_BYTES = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(BODY_BYTES).hexdigest()


def response(body: bytes = BODY_BYTES, status: str = "200 OK", headers: str | None = None) -> bytes:
    if headers is None:
        headers = f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
    return f"HTTP/1.1 {status}\r\n{headers}\r\n".encode() + body


def chunked(body: bytes, sizes: tuple[int, ...] = (1000, 7, 4096)) -> bytes:
    out = b""
    pos = 0
    i = 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        piece = body[pos:pos + n]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
        pos += n
        i += 1
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def feed_in_pieces(reader: ResponseReader, data: bytes, step: int) -> int:
    used = 0
    for i in range(0, len(data), step):
        used += reader.feed(data[i:i + step])
    return used


def test_request_bytes():
    assert request("GET", "/boot/vmlinuz", "10.0.0.1:8080") == \
        b"GET /boot/vmlinuz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
    assert request("HEAD", "/x", "h", keep_alive=False, headers=[("Range", "bytes=0-1")]) == \
        b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nRange: bytes=0-1\r\n\r\n"
    with pytest.raises(ValueError):
        request("GET", "/a b", "h")
    with pytest.raises(ValueError):
        request("GET", "/a", "h\r\nX: y")


@pytest.mark.parametrize("step", [1, 3, 17, 1000, 1 << 20])
def test_content_length_body_in_any_split(step):
    reader = ResponseReader(keep=100, size=len(BODY_BYTES), sha256=SHA)
    data = response()
    assert feed_in_pieces(reader, data, step) == len(data)
    assert reader.state == DONE and reader.ok
    assert reader.status == 200 and reader.status_text == "OK" and reader.version == "HTTP/1.1"
    assert reader.length == len(BODY_BYTES) and reader.received == len(BODY_BYTES)
    assert reader.headers["content-type"] == "application/octet-stream"
    assert reader.content == BODY_BYTES[:100]
    assert reader.keep_alive


@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
def test_chunked_body_with_extensions_and_trailer(step):
    reader = ResponseReader(keep=1 << 20, size=len(BODY_BYTES), sha256=SHA)
    data = response(chunked(BODY_BYTES), headers="Transfer-Encoding: chunked\r\n")
    assert feed_in_pieces(reader, data, step) == len(data)
    assert reader.state == DONE, (reader.reason, reader.detail)
    assert reader.chunked and reader.length is None and reader.content == BODY_BYTES
    assert reader.keep_alive


def test_keep_alive_leaves_the_next_response_unread():
    first, second = response(b"abc"), response(b"defgh")
    reader = ResponseReader(keep=10)
    used = reader.feed(first + second)
    assert used == len(first) and reader.content == b"abc"
    nxt = ResponseReader(keep=10)
    assert nxt.feed((first + second)[used:]) == len(second) and nxt.content == b"defgh"


def test_connection_close_and_http10():
    reader = ResponseReader()
    reader.feed(response(b"x", headers="Content-Length: 1\r\nConnection: close\r\n"))
    assert reader.state == DONE and not reader.keep_alive
    old = ResponseReader()
    old.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert old.state == DONE and not old.keep_alive
    kept = ResponseReader()
    kept.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\nx")
    assert kept.keep_alive


def test_close_delimited_body_ends_at_eof():
    reader = ResponseReader(keep=100)
    reader.feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nhello ")
    reader.feed(b"world")
    assert reader.state == BODY and not reader.keep_alive
    reader.eof()
    assert reader.state == DONE and reader.content == b"hello world"


def test_no_body_for_head_204_304_and_errors_are_not_failures():
    head = ResponseReader(head_request=True, size=5)
    assert head.feed(response(b"", headers="Content-Length: 12345\r\n")) > 0
    assert head.state == DONE and head.received == 0
    for status in ("204 No Content", "304 Not Modified"):
        reader = ResponseReader()
        reader.feed(response(b"", status=status, headers="Content-Length: 9\r\n"))
        assert reader.state == DONE
    missing = ResponseReader(size=len(BODY_BYTES), sha256=SHA)
    missing.feed(response(b"not found\n", status="404 Not Found"))
    assert missing.state == DONE and missing.status == 404 and not missing.ok  # size/sha only for 200


def test_skipping_a_content_length_body():
    reader = ResponseReader(size=1000)
    assert reader.skippable() == 0  # the head must be parsed
    reader.feed(response(b"", headers="Content-Length: 1000\r\n") + b"x" * 10)
    assert reader.received == 10 and reader.skippable() == 990
    with pytest.raises(ValueError):
        reader.skipped(991)
    reader.skipped(900)
    reader.skipped(90)
    assert reader.state == DONE and reader.received == 1000
    hashed = ResponseReader(sha256=SHA)
    hashed.feed(response()[:200])
    assert hashed.skippable() == 0  # a hashed body must be seen
    kept = ResponseReader(keep=50)
    kept.feed(response()[:120])
    assert kept.state == BODY and kept.skippable() == 0
    kept.feed(response()[120:200])
    assert kept.skippable() > 0  # kept what it wanted: the rest may be dropped
    cut = ResponseReader()
    cut.feed(response()[:200])
    cut.skipped(0)  # recv returned 0: the end of the connection
    assert cut.state == FAILED and cut.reason == "closed"


@pytest.mark.parametrize(("data", "reason"), [
    (b"HTTX/1.1 200 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "bad_header"),
    (b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", "bad_header"),
    (b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n", "bad_header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad_length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad_length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", "bad_chunk"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "size"),
])
def test_malformed_or_wrong_responses_fail_with_a_reason(data, reason):
    reader = ResponseReader(size=4)
    reader.feed(data)
    assert reader.state == FAILED and reader.reason == reason, (reader.reason, reader.detail)
    assert not reader.keep_alive and reader.finished


def test_size_sha256_and_truncation_are_checked():
    short = ResponseReader(size=len(BODY_BYTES) + 1)
    short.feed(response(headers=""))  # close-delimited
    short.eof()
    assert short.state == FAILED and short.reason == "size"
    wrong = ResponseReader(sha256="0" * 64)
    wrong.feed(response())
    assert wrong.state == FAILED and wrong.reason == "sha256"
    cut = ResponseReader()
    cut.feed(response()[:-5])
    cut.eof()
    assert cut.state == FAILED and cut.reason == "closed" and "body bytes" in cut.detail
    nohead = ResponseReader()
    nohead.feed(b"HTTP/1.1 200 OK\r\n")
    assert nohead.state == HEAD
    nohead.eof()
    assert nohead.reason == "closed"


def test_head_size_limit():
    reader = ResponseReader(max_head=64)
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 100)
    assert reader.state == FAILED and reader.reason == "head_too_large"
    # within the limit, split anywhere, including inside the CRLFCRLF
    ok = ResponseReader(max_head=64)
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
    for i in range(len(data)):
        ok.feed(data[i:i + 1])
    assert ok.state == DONE and ok.head_bytes == len(data) - 2
