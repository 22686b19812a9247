"""What the rack runs against: the boot root it writes, the massboot it starts (with its CPU
time and peak RSS), the HTTP upstream of ``--remote-root``, and a server started by someone else
(``--server-pid``)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent

import massboot

from .netns import Namespaces
from .options import SetupError
from .profiles import PROFILES

__all__ = ["BOOTFILE_BIOS", "BOOTFILE_UEFI", "HTTP_SCRIPT", "INITRD", "IPXE_SCRIPT", "IPXE_SCRIPT_TEXT",
           "KERNEL", "PXELINUX_DEFAULT", "ExternalServer", "ServerProcess", "UpstreamHttp", "expected_bytes",
           "free_udp_port", "http_script_text", "make_root", "proc_cpu_seconds",
           "proc_peak_rss_mb", "write_http_script"]

BOOTFILE_BIOS = "pxelinux.0"
BOOTFILE_UEFI = "bootx64.efi"
IPXE_SCRIPT = "boot.ipxe"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
PXELINUX_DEFAULT = (f"default linux\nprompt 0\ntimeout 0\nlabel linux\n  kernel {KERNEL}\n"
                    f"  append initrd={INITRD} console=ttyS0 quiet\n")
IPXE_SCRIPT_TEXT = f"#!ipxe\nkernel {KERNEL} console=ttyS0 quiet\ninitrd {INITRD}\nboot\n"
#: The second stage of the HTTP recipe (README, "HTTP boot"): ``ipxe_boot_file`` is its URL.
HTTP_SCRIPT = "boot-http.ipxe"


def http_script_text(base_url: str) -> str:
    """The iPXE script that loads kernel and initrd over HTTP from *base_url* (``http://h:p/``)."""
    return (f"#!ipxe\nkernel {base_url}{KERNEL} console=ttyS0 quiet\ninitrd {base_url}{INITRD}\n"
            "boot\n")


def write_http_script(root: str, base_url: str) -> int:
    """Write :data:`HTTP_SCRIPT` into *root*; returns its size."""
    text = http_script_text(base_url)
    with open(os.path.join(root, HTTP_SCRIPT), "w", encoding="ascii") as handle:
        handle.write(text)
    return len(text)


def _write_blob(path: str, size: int, seed: int) -> None:
    chunk = random.Random(seed).randbytes(min(size, 1 << 16)) if size else b""
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            piece = chunk[:left]
            handle.write(piece)
            left -= len(piece)


def make_root(root: str, bootfile_size: int, kernel_size: int, initrd_size: int) -> dict[str, int]:
    """Write a boot root: boot files, ``pxelinux.cfg/default``, an iPXE script, kernel, initrd.

    Returns:
        File name (relative to ``root``) → size in bytes.
    """
    os.makedirs(os.path.join(root, "pxelinux.cfg"), exist_ok=True)
    _write_blob(os.path.join(root, BOOTFILE_BIOS), bootfile_size, 1)
    _write_blob(os.path.join(root, BOOTFILE_UEFI), bootfile_size, 2)
    _write_blob(os.path.join(root, KERNEL), kernel_size, 3)
    _write_blob(os.path.join(root, INITRD), initrd_size, 4)
    with open(os.path.join(root, "pxelinux.cfg", "default"), "w", encoding="ascii") as handle:
        handle.write(PXELINUX_DEFAULT)
    with open(os.path.join(root, IPXE_SCRIPT), "w", encoding="ascii") as handle:
        handle.write(IPXE_SCRIPT_TEXT)
    sizes: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            sizes[os.path.relpath(path, root)] = os.path.getsize(path)
    return sizes


def expected_bytes(profile: str, files: dict[str, int]) -> int:
    """Bytes a client of ``profile`` reads from the generated root (for consistency checks)."""
    config = files["pxelinux.cfg/default"]
    script = files.get(HTTP_SCRIPT) or files[IPXE_SCRIPT]  # iPXE gets the HTTP script when there is one
    if profile == "ipxe":
        return script + files[KERNEL] + files[INITRD]
    if PROFILES[profile].chain is not None:
        return files[BOOTFILE_BIOS] + script + files[KERNEL] + files[INITRD]
    bootfile = files[BOOTFILE_UEFI] if PROFILES[profile].arch in (7, 9) else files[BOOTFILE_BIOS]
    return bootfile + config + files[KERNEL] + files[INITRD]


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free right now on ``host`` (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# What every massboot configuration of the simulator has around its [bootpd] section (a
# ``cache_dir`` line and the [httpd] section may follow: ServerProcess._write_config).
_LOGGER_CONFIG = """\
[logger]
type = stderr
level = {log_level}

"""
_FILES_CONFIG = """
[bootfile]
default = {bios}
00007 = {uefi}
00009 = {uefi}

[tftpd]
{tftpd_address}port = {tftp_port}
root = {root}
"""

MASSBOOT_CONFIG = _LOGGER_CONFIG + """\
[bootpd]
{bootpd_address}port = {dhcp_port}
pool_start = {pool_start}
pool_count = {pool_count}
lease_time = 3600
lease_db = {lease_db}
ipxe_boot_file = {ipxe}
""" + _FILES_CONFIG

# massboot's -H (issue 12), serving the [tftpd] root: no [httpd] root.
HTTPD_CONFIG = """
[httpd]
address = {address}
port = {port}
"""


class UpstreamHttp:
    """A small HTTP server on 127.0.0.1 serving ``root`` (GET and HEAD), counting what it sends.

    It runs in the simulator's own hub (gevent.pywsgi): with massboot's shared cache it should
    see one GET per distinct file, so it costs next to nothing. Counters: ``gets`` (GET
    requests, any status), ``status`` (status → count), ``bytes`` (body bytes actually
    written, partial bodies included), ``by_path`` (path → [GETs, bytes]).
    """

    def __init__(self, root: str) -> None:
        from gevent.pywsgi import WSGIServer

        self.root = os.path.realpath(root)
        self.gets = 0
        self.requests = 0
        self.bytes = 0
        self.status: Counter[int] = Counter()
        self.by_path: dict[str, list[int]] = {}
        self.ok_paths: set[str] = set()
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)
        self.server.start()
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        from urllib.parse import unquote

        self.requests += 1
        method = environ["REQUEST_METHOD"]
        path = unquote(environ.get("PATH_INFO", "/")).lstrip("/")
        if method not in ("GET", "HEAD"):
            return self._reply(start_response, 405, b"")
        if method == "GET":
            self.gets += 1
        counts = self.by_path.setdefault(path, [0, 0])
        if method == "GET":
            counts[0] += 1
        full = os.path.realpath(os.path.join(self.root, path))
        if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
            return self._reply(start_response, 404, b"not found\n")
        size = os.path.getsize(full)
        stat = os.stat(full)
        etag = f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return self._reply(start_response, 304, b"", [("ETag", etag)])
        self.status[200] += 1
        if method == "GET":
            self.ok_paths.add(path)
        start_response("200 OK", [("Content-Length", str(size)), ("ETag", etag),
                                  ("Content-Type", "application/octet-stream")])
        if method == "HEAD":
            return []
        return self._body(full, counts)

    def _reply(self, start_response: Callable[..., Any], code: int, body: bytes,
               headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        self.status[code] += 1
        reason = {304: "Not Modified", 404: "Not Found", 405: "Method Not Allowed"}[code]
        start_response(f"{code} {reason}", [("Content-Length", str(len(body)))] + (headers or []))
        return [body]

    def _body(self, path: str, counts: list[int]) -> Any:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 16)
                if not chunk:
                    return
                yield chunk
                # counted once handed to the socket: an aborted download counts what went out
                self.bytes += len(chunk)
                counts[1] += len(chunk)

    def figures(self, files: dict[str, int]) -> dict[str, Any]:
        """The counters, with ``distinct_bytes`` (one copy of each file fetched with 200) and
        ``copies`` (bytes over that)."""
        fetched = sorted(self.ok_paths)
        distinct = sum(files.get(p, 0) for p in fetched)
        return {"url": self.url, "requests": self.requests, "gets": self.gets,
                "gets_ok": self.status.get(200, 0), "not_found": self.status.get(404, 0),
                "not_modified": self.status.get(304, 0), "bytes": self.bytes,
                "distinct_files": fetched, "distinct_bytes": distinct,
                "copies": self.bytes / distinct if distinct else 0.0,
                "by_path": {p: list(v) for p, v in sorted(self.by_path.items())}}

    def close(self) -> None:
        self.server.stop(timeout=1)


MASSBOOT_PROXY_CONFIG = _LOGGER_CONFIG + """\
[bootpd]
mode = proxy
address = 127.0.0.1
port = {dhcp_port}
bootserver_port = {bootserver_port}
ipxe_boot_file = {ipxe}
""" + _FILES_CONFIG


class ServerProcess:
    """massboot started as a subprocess on loopback, with its CPU time and peak RSS."""

    def __init__(self, workdir: str, root: str, clients: int, log_level: str,
                 cache_dir: str | None = None, netns: Namespaces | None = None,
                 proxy: bool = False, ipxe_boot_file: str = IPXE_SCRIPT,
                 http: tuple[str, int] | None = None, lease_db: str | None = None,
                 tftp_fast_path: str | None = None) -> None:
        self.workdir = workdir
        self.tftp_fast_path = tftp_fast_path  # [tftpd] fast_path, None: unset
        self.netns = netns
        self.http = http  # (address, port) of massboot's -H, or None
        if netns is not None:  # massboot alone in its namespace: the standard ports, any address
            self.dhcp_port, self.tftp_port = 67, 69
            address, pool_start = "", netns.pool_start
        else:
            self.dhcp_port = free_udp_port()
            self.tftp_port = free_udp_port()
            while self.tftp_port == self.dhcp_port:
                self.tftp_port = free_udp_port()
            address, pool_start = "address = 127.0.0.1\n", "127.1.0.1"
        self.config_path = os.path.join(workdir, "massboot.ini")
        self.log_path = os.path.join(workdir, "massboot.log")
        self.bootserver_port = 0
        if proxy:   # README, "proxyDHCP": no pool, a second socket on the PXE boot server port
            self.bootserver_port = free_udp_port()
            while self.bootserver_port in (self.dhcp_port, self.tftp_port):
                self.bootserver_port = free_udp_port()
            self._write_config(MASSBOOT_PROXY_CONFIG, cache_dir, log_level=log_level, root=root,
                               ipxe=ipxe_boot_file, tftpd_address="address = 127.0.0.1\n",
                               bootserver_port=self.bootserver_port)
        else:
            self._write_config(MASSBOOT_CONFIG, cache_dir, log_level=log_level, root=root,
                               ipxe=ipxe_boot_file, bootpd_address=address, tftpd_address=address,
                               pool_start=pool_start, pool_count=max(clients + 16, 64),
                               lease_db=lease_db or os.path.join(workdir, "leases.sqlite3"))
        self.process: subprocess.Popen[bytes] | None = None
        self.cpu_at_ready = 0.0
        self.cpu_s: float | None = None
        self.peak_rss_mb: float | None = None

    def _write_config(self, template: str, cache_dir: str | None, **values: Any) -> None:
        """massboot.ini: *template* with the ports, the boot files and *values*; then ``cache_dir``
        (in [tftpd], the template's last section) and [httpd] when asked."""
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(template.format(dhcp_port=self.dhcp_port, tftp_port=self.tftp_port,
                                         bios=BOOTFILE_BIOS, uefi=BOOTFILE_UEFI, **values))
            if cache_dir is not None:
                handle.write(f"cache_dir = {cache_dir}\n")
            if self.tftp_fast_path is not None:
                handle.write(f"fast_path = {self.tftp_fast_path}\n")
            if self.http is not None:
                handle.write(HTTPD_CONFIG.format(address=self.http[0], port=self.http[1]))

    def start(self, timeout: float = 20.0) -> None:
        """Start massboot and wait for both listeners' log lines.

        Raises:
            SetupError: it exited or did not log readiness in time (with its log's tail).
        """
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(massboot.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            argv = [sys.executable, "-m", "massboot", "-c", self.config_path]
            if self.http is not None:
                argv.append("-H")
            if self.netns is not None:  # `ip netns exec` execs massboot: the pid is massboot's
                argv = ["ip", "netns", "exec", self.netns.server, *argv]
            self.process = subprocess.Popen(argv,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if (("dhcp listening on" in text and "tftp listening on" in text) or self._bound()) \
                    and self._http_listening():
                self.cpu_at_ready = proc_cpu_seconds(self.process.pid) or 0.0
                return
            if self.process.poll() is not None:
                raise SetupError(f"massboot exited with status {self.process.returncode}:\n"
                                 + self.log_tail())
            gevent.sleep(0.05)
        self.stop()
        raise SetupError("massboot did not report readiness in time:\n" + self.log_tail())

    def _bound(self) -> bool:
        """Both ports bound in massboot's namespace (readiness when the log level hides the INFO
        lines)."""
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/net/udp", encoding="ascii") as handle:
                ports = {line.split()[1].rsplit(":", 1)[1] for line in handle.readlines()[1:]}
        except (OSError, IndexError):
            return False
        return all(f"{port:04X}" in ports for port in (self.dhcp_port, self.tftp_port))

    def _http_listening(self) -> bool:
        """massboot's -H listens (True without -H)."""
        if self.http is None:
            return True
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/net/tcp", encoding="ascii") as handle:
                rows = [line.split() for line in handle.readlines()[1:]]
        except OSError:
            return False
        # local address (hex ip:port) and state 0A (LISTEN)
        return any(row[3] == "0A" and row[1].endswith(f":{self.http[1]:04X}") for row in rows if len(row) > 3)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def sample(self) -> None:
        """Record CPU seconds since readiness and the peak RSS (VmHWM), while it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        cpu = proc_cpu_seconds(self.process.pid)
        if cpu is not None:
            self.cpu_s = cpu - self.cpu_at_ready
        rss = proc_peak_rss_mb(self.process.pid)
        if rss is not None:
            self.peak_rss_mb = rss

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it lingers. Returns its exit status."""
        if self.process is None:
            return None
        self.sample()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` from /proc/PID/stat (fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of ``pid`` in MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class ExternalServer:
    """``--server-pid``: CPU seconds over the run and peak RSS of a server we did not start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_start = proc_cpu_seconds(pid)
        if self.cpu_start is None:
            raise SystemExit(f"error: --server-pid {pid}: no such process")
        self.cpu_s: float | None = None
        self.peak_rss_mb: float | None = None

    def sample(self) -> None:
        cpu = proc_cpu_seconds(self.pid)
        if cpu is not None and self.cpu_start is not None:
            self.cpu_s = cpu - self.cpu_start
        self.peak_rss_mb = proc_peak_rss_mb(self.pid)

