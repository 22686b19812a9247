"""A private nginx (the Debian package) serving one directory on a loopback port.

Started by ``bench/http_bench.py`` (the peer massboot's HTTP server is measured against), by
the simulator (``--http-server nginx``) and by the loopback tests: its own temporary prefix
(configuration, pid file, error log, temp paths), ``daemon off`` and the master process as our
child, one worker, ``sendfile on``, no access log, never the system service. As root its
worker would run as ``www-data`` and need every parent of the root world-readable: the
configuration makes it ``user root`` instead (a warning when not root, ignored).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from bench.proctree import stop_process

__all__ = ["NGINX_CONF", "Nginx", "NginxError", "nginx_binary", "nginx_version"]

NGINX_CONF = """\
# written by massboot's bench/nginx.py: a private instance, removed after the run
worker_processes 1;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{
    worker_connections 8192;
    use epoll;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {address}:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class NginxError(RuntimeError):
    """nginx is missing or did not start (the message has its error log's tail)."""


def nginx_binary() -> str | None:
    """The nginx executable (Debian: /usr/sbin/nginx), or None."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_version(binary: str | None = None) -> str:
    """``nginx/1.22.1``, or ``""``."""
    binary = binary or nginx_binary()
    if not binary:
        return ""
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stderr or out.stdout).strip().rpartition(": ")[2]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Nginx:
    """A private nginx serving *root* on ``address:port`` (a free port when 0).

    Args:
        prefix: a directory of its own for its configuration, pid, log and temp files.
        root: the directory served.
        command_prefix: prepended to the command line (``ip netns exec NAME``).
    """

    def __init__(self, prefix: str, root: str, address: str = "127.0.0.1", port: int = 0,
                 command_prefix: list[str] | None = None) -> None:
        binary = nginx_binary()
        if binary is None:
            raise NginxError("nginx is not installed (apt-get install nginx)")
        self.binary = binary
        self.prefix = os.path.abspath(prefix)
        self.root = os.path.abspath(root)
        self.address = address
        self.port = port or free_tcp_port(address)
        self.command_prefix = command_prefix or []
        self.process: subprocess.Popen[bytes] | None = None
        os.makedirs(self.prefix, exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(NGINX_CONF.format(prefix=self.prefix, root=self.root, address=address, port=self.port,
                                      user="user root root;" if os.geteuid() == 0 else ""))

    @property
    def url(self) -> str:
        """``http://ADDRESS:PORT/``."""
        return f"http://{self.address}:{self.port}/"

    @property
    def pid(self) -> int:
        """The master process (its worker is its child)."""
        assert self.process is not None
        return self.process.pid

    def error_log(self) -> str:
        """The tail of nginx's error log (and of its stderr)."""
        text = ""
        for name in ("error.log", "stderr.log"):
            try:
                with open(os.path.join(self.prefix, name), errors="replace") as f:
                    text += f.read()[-2000:]
            except OSError:
                pass
        return text

    def start(self, timeout: float = 20.0) -> None:
        """Start nginx in the foreground (our child) and wait until it accepts connections.

        Raises:
            NginxError: it exited or did not listen in time.
        """
        with open(os.path.join(self.prefix, "stderr.log"), "wb") as log:
            self.process = subprocess.Popen(
                [*self.command_prefix, self.binary, "-p", self.prefix + "/", "-c", self.conf, "-e",
                 os.path.join(self.prefix, "error.log"), "-g", "daemon off; master_process on;"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited with status {self.process.returncode}:\n{self.error_log()}")
            if self.command_prefix or self._accepts():
                if not self.command_prefix or self._has_worker():
                    return
            time.sleep(0.05)
        self.stop()
        raise NginxError(f"nginx did not listen on {self.address}:{self.port} in {timeout} s:\n"
                         f"{self.error_log()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return self._has_worker()
        except OSError:
            return False

    def _has_worker(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return bool(f.read().split())
        except OSError:
            return False

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL after 10 s; the worker goes with the master."""
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT, timeout=10)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
