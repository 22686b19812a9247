"""The remote HTTP ACL against a real HTTP server on 127.0.0.1 (README, "[http]: the remote ACL")."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gevent
import gevent.event
import pytest
import requests

from massboot import config as cfg
from massboot.acl import HttpAcl, Verdict
from tests.conftest import require

MAC = bytes.fromhex("00aa55123456")
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"
BODY = b"\nClient: Tester-001\nFile: next.cfg"


@dataclass
class AclServer:
    location: str
    lines: list[bytes] = field(default_factory=list)
    gate: gevent.event.Event = field(default_factory=gevent.event.Event)

    def last_line(self) -> str:
        return self.lines[-1].decode("ascii")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self.server.record.lines.append(self.raw_requestline)
        path = self.path.partition("?")[0]
        if path in ("/boot", "/linux"):
            self._answer(200, BODY)
        elif path == "/fast":
            self._answer(204)
        elif path == "/deny":
            self._answer(401, b"Client: nobody\n")
        elif path == "/fail":
            self._answer(500)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/boot")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            self.server.record.gate.wait(3)  # sleeps 3 s unless the test lets it go
            self._answer(200, b"Client: slow\n")
        elif path == "/trickle":
            # headers at once, then one body byte every 0.3 s: each read beats a 1 s read
            # timeout, the whole answer does not
            body = b"Client: trickle-0123\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.3)
        else:
            self._answer(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    record: AclServer


@pytest.fixture
def acl_server() -> Iterator[AclServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.record = AclServer(f"{host}:{port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.record
    finally:
        server.record.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def refused_location() -> Iterator[str]:
    # a bound TCP port nobody listens on: connecting to it is refused
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def acl(server: AclServer, pxe_path: str = "boot", dhcp_path: str = "linux", **kw) -> HttpAcl:
    return HttpAcl(server.location, pxe_path, dhcp_path, **kw)


# -- the exact request -------------------------------------------------------------------


def test_dash_form_with_uuid(acl_server) -> None:
    result = acl(acl_server).check(MAC, uuid=UUID, ip="10.0.0.5", pxe=True)
    assert result.verdict is Verdict.ALLOWED
    assert acl_server.last_line() == f"GET /boot?mac=00-AA-55-12-34-56&uuid={UUID} HTTP/1.1\r\n"


def test_dash_form_without_uuid_os_phase(acl_server) -> None:
    acl(acl_server).check(MAC, uuid=None, ip="10.0.0.5", pxe=False)
    assert acl_server.last_line() == "GET /linux?mac=00-AA-55-12-34-56 HTTP/1.1\r\n"


def test_colon_form_pxe_never_sends_ip(acl_server) -> None:
    checker = acl(acl_server, mac_format="colon")
    checker.check(MAC, uuid=UUID, ip="192.168.25.100", pxe=True)
    assert acl_server.last_line() == f"GET /boot?mac=00%3AAA%3A55%3A12%3A34%3A56&uuid={UUID} HTTP/1.1\r\n"


def test_colon_form_os_phase_with_ip(acl_server) -> None:
    checker = acl(acl_server, mac_format="colon")
    checker.check(MAC, uuid=UUID, ip="192.168.25.100", pxe=False)
    assert acl_server.last_line() == (
        f"GET /linux?mac=00%3AAA%3A55%3A12%3A34%3A56&uuid={UUID}&ip=192.168.25.100 HTTP/1.1\r\n"
    )
    checker.check(MAC, uuid=None, ip="192.168.25.100", pxe=False)
    assert acl_server.last_line() == (
        "GET /linux?mac=00%3AAA%3A55%3A12%3A34%3A56&ip=192.168.25.100 HTTP/1.1\r\n"
    )
    checker.check(MAC, uuid=None, ip=None, pxe=False)
    assert acl_server.last_line() == "GET /linux?mac=00%3AAA%3A55%3A12%3A34%3A56 HTTP/1.1\r\n"


def test_leading_slash_is_not_doubled(acl_server) -> None:
    acl(acl_server, pxe_path="/boot", dhcp_path="/linux").check(MAC, uuid=None, ip=None, pxe=True)
    assert acl_server.last_line() == "GET /boot?mac=00-AA-55-12-34-56 HTTP/1.1\r\n"


# -- verdicts ----------------------------------------------------------------------------


def test_allowed_with_client_and_file(acl_server) -> None:
    result = acl(acl_server).check(MAC, uuid=UUID, ip=None, pxe=False)
    assert result.verdict is Verdict.ALLOWED
    assert result.client_name == "Tester-001"
    assert result.file == "next.cfg"


def test_empty_2xx_allows(acl_server) -> None:
    result = acl(acl_server, pxe_path="fast").check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.ALLOWED
    assert (result.client_name, result.file) == (None, None)


def test_redirect_is_not_followed(acl_server) -> None:
    """A 302 is the status it is, a denial: following it would let another server (or another
    path) answer for this one. Before issue #11 it was followed and allowed the client."""
    result = acl(acl_server, pxe_path="redirect").check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.DENIED and result.reason == "status 302"
    assert result.client_name is None
    assert len(acl_server.lines) == 1                     # /boot was never asked


@pytest.mark.parametrize(("path", "status"), [("deny", 401), ("fail", 500), ("missing", 404)])
def test_other_status_denies(acl_server, path: str, status: int) -> None:
    result = acl(acl_server, pxe_path=path).check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.DENIED
    assert result.client_name is None
    assert str(status) in result.reason


def test_slow_server_is_an_error_after_the_timeout(acl_server) -> None:
    checker = acl(acl_server, pxe_path="slow", timeout=1)
    start = time.monotonic()
    result = checker.check(MAC, uuid=None, ip=None, pxe=True)
    elapsed = time.monotonic() - start
    assert result.verdict is Verdict.ERROR
    assert 0.9 <= elapsed < 2.5  # the deadline, not the server's 3 s


def test_trickling_body_hits_the_hard_deadline(acl_server) -> None:
    checker = acl(acl_server, pxe_path="trickle", timeout=1)
    start = time.monotonic()
    result = checker.check(MAC, uuid=None, ip=None, pxe=True)
    elapsed = time.monotonic() - start
    assert result.verdict is Verdict.ERROR
    assert elapsed < 2.5  # the whole body would take over 6 s


def test_connection_refused_is_an_error(refused_location) -> None:
    checker = HttpAcl(refused_location, "boot", "linux", timeout=2)
    result = checker.check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.ERROR
    assert result.reason


def test_a_slow_acl_call_never_delays_the_others(acl_server) -> None:
    checker = acl(acl_server, pxe_path="slow", dhcp_path="fast", timeout=10)
    slow = gevent.spawn(checker.check, MAC, uuid=None, ip=None, pxe=True)
    gevent.sleep(0)  # let the slow call start and block on its server
    fast = [gevent.spawn(checker.check, MAC, uuid=None, ip=f"10.0.0.{i}", pxe=False) for i in range(100)]
    gevent.joinall(fast, raise_error=True)
    assert not slow.ready()
    assert all(job.value.verdict is Verdict.ALLOWED for job in fast)
    assert sum(line.startswith(b"GET /fast") for line in acl_server.lines) == 100
    acl_server.gate.set()
    assert slow.get(timeout=10).verdict is Verdict.ALLOWED
    assert slow.value.client_name == "slow"


def test_environment_proxy_is_not_used(acl_server, refused_location, monkeypatch) -> None:
    # a proxy from the environment would take the check off the deployment network
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://{refused_location}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = acl(acl_server).check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.ALLOWED


# -- the verdict cache and the call bound (issue #10) ------------------------------------


def test_verdicts_cached_denials_included_errors_not(acl_server, refused_location) -> None:
    now = [0.0]
    checker = acl(acl_server, "boot", "deny", cache_ttl=30, clock=lambda: now[0])
    for _ in range(3):
        assert checker.check(MAC, uuid=UUID, ip=None, pxe=True).client_name == "Tester-001"
        assert checker.check(MAC, uuid=UUID, ip=None, pxe=False).verdict is Verdict.DENIED
    assert len(acl_server.lines) == 2 and checker.calls == 2 and checker.cache_hits == 4
    checker.check(MAC, uuid=None, ip=None, pxe=True)               # another question: asked
    assert len(acl_server.lines) == 3
    now[0] = 29.9
    checker.check(MAC, uuid=UUID, ip=None, pxe=True)
    assert len(acl_server.lines) == 3
    now[0] = 30.0                                                  # expired: asked again
    checker.check(MAC, uuid=UUID, ip=None, pxe=True)
    assert len(acl_server.lines) == 4
    dead = HttpAcl(refused_location, "boot", "linux", timeout=1)
    for _ in range(2):
        assert dead.check(MAC, uuid=None, ip=None, pxe=True).verdict is Verdict.ERROR
    assert dead.calls == 2 and dead.cache_hits == 0


def test_cache_ttl_zero_and_entries_bound(acl_server) -> None:
    nocache = acl(acl_server, cache_ttl=0)
    nocache.check(MAC, uuid=None, ip=None, pxe=True)
    nocache.check(MAC, uuid=None, ip=None, pxe=True)
    assert nocache.calls == 2
    small = acl(acl_server, cache_entries=2)
    macs = [bytes([2, 0, 0, 0, 0, i]) for i in range(3)]
    for mac in macs:
        small.check(mac, uuid=None, ip=None, pxe=True)
    assert small.cached(macs[0], uuid=None, ip=None, pxe=True) is None        # least recently used
    assert small.cached(macs[2], uuid=None, ip=None, pxe=True) is not None


def test_submit_is_bounded_and_keeps_a_quarter_for_known_clients(acl_server) -> None:
    checker = acl(acl_server, "slow", max_calls=4)
    assert checker.stranger_calls == 3
    results = []
    for i in range(3):
        assert checker.submit(bytes([2, 0, 0, 0, 0, i]), uuid=None, ip=None, pxe=True, then=results.append)
    gevent.sleep(0.1)
    assert not checker.submit(bytes([2, 0, 0, 0, 0, 9]), uuid=None, ip=None, pxe=True, then=results.append)
    assert checker.submit(MAC, uuid=None, ip=None, pxe=True, then=results.append, known=True)
    assert not checker.submit(MAC, uuid=UUID, ip=None, pxe=True, then=results.append, known=True)
    assert checker.busy() == (4, 4) and checker.refused == 2
    acl_server.gate.set()
    checker.pool.join(timeout=5)
    assert [r.verdict for r in results] == [Verdict.ALLOWED] * 4 and checker.busy() == (0, 4)


# -- https (issue #11) ---------------------------------------------------------------------


@pytest.fixture
def tls_acl_server(tmp_path) -> Iterator[tuple[AclServer, str]]:
    """The same ACL server over TLS, with a self-signed certificate for 127.0.0.1 made here."""
    require(shutil.which("openssl") is not None, "openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = _Server(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    host, port = server.server_address[:2]
    server.record = AclServer(f"https://{host}:{port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.record, str(cert)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_location_is_asked_over_tls(tls_acl_server) -> None:
    """``location = https://host:port``: TLS, and the certificate is verified. Unknown to the
    CA bundle, a self-signed one is an error (the client is ignored, never allowed); trusted
    through the session (``verify``), the answer is read."""
    server, cert = tls_acl_server
    untrusted = acl(server).check(MAC, uuid=None, ip=None, pxe=True)
    assert untrusted.verdict is Verdict.ERROR and "SSLError" in untrusted.reason
    session = requests.Session()
    session.trust_env = False
    session.verify = cert
    result = acl(server, session=session).check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.ALLOWED and result.client_name == "Tester-001"
    assert server.last_line() == "GET /boot?mac=00-AA-55-12-34-56 HTTP/1.1\r\n"
    assert acl(server).url(MAC, uuid=None, ip=None, pxe=True).startswith(server.location + "/boot?")


def test_https_ca_file_from_the_config(tls_acl_server, tmp_path) -> None:
    """``[http] ca_file`` names the CA an ``https://`` ACL server is verified with."""
    server, cert = tls_acl_server
    ini = tmp_path / "acl.ini"
    ini.write_text("[bootpd]\npool_start = 10.0.0.100\naccess = http\n[bootfile]\ndefault = a\n"
                   f"[http]\nlocation = {server.location}\nca_file = {Path(cert).name}\n")
    assert Path(cert).parent == tmp_path          # the fixture wrote it here: a relative name
    config = cfg.load(str(ini)).bootp.http
    assert config.ca_file == str(tmp_path / Path(cert).name)
    result = HttpAcl.from_config(config).check(MAC, uuid=None, ip=None, pxe=True)
    assert result.verdict is Verdict.ALLOWED and result.client_name == "Tester-001"
    (tmp_path / "missing.ini").write_text(ini.read_text().replace(Path(cert).name, "nope.pem"))
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(tmp_path / "missing.ini"))
    assert str(err.value).startswith("[http] ca_file = 'nope.pem': not a file")


def test_plain_location_keeps_meaning_http(acl_server) -> None:
    assert acl(acl_server).url(MAC, uuid=None, ip=None, pxe=True).startswith(
        f"http://{acl_server.location}/boot?")
