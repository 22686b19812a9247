"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian ``postgresql``).

``initdb`` in a temporary directory, ``postgres`` on a free loopback port (and a unix socket in
that directory), password authentication over TCP (SCRAM), removed on :meth:`PgCluster.stop`.
PostgreSQL refuses to run as root: as root the cluster runs as ``nobody`` in a directory it
owns. Never a system service, never the system's cluster.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

SUPERUSER = "massboot"
PASSWORD = "test-secret-Zq7"     # a test cluster's, on loopback only


def pg_bindir() -> str | None:
    """The newest Debian PostgreSQL's bin directory, or None when it is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One private cluster. ``dsn(database)`` names a database in it (password from a file)."""

    def __init__(self, bindir: str | None = None) -> None:
        bindir = bindir or pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="massboot-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.password_file = os.path.join(self.root, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.password_file, 0o644)      # read by initdb as nobody, and by the tests
        self._user: str | None = "nobody" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None
        self._run([os.path.join(bindir, "initdb"), "-D", self.data, "-U", SUPERUSER, "-E", "UTF8",
                   "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={self.password_file}",
                   "--no-sync"])

    def _command(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *argv] if self._user else argv

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run(self._command(argv), capture_output=True, text=True, cwd=self.root, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{argv[0]} failed: {out.stderr or out.stdout}")

    def start(self) -> PgCluster:
        argv = [os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                "-c", "fsync=off", "-c", "synchronous_commit=on", "-c", "max_connections=200",
                "-c", "shared_buffers=32MB", "-c", "logging_collector=off",
                "-c", "log_min_messages=warning"]
        log = open(os.path.join(self.root, "postgres.log"), "ab")
        self.proc = subprocess.Popen(self._command(argv), stdout=log, stderr=log, cwd=self.root,
                                     start_new_session=True)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                out = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1",
                                      "-p", str(self.port)], capture_output=True)
                if out.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "postgres.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, *, remove: bool = False, mode: signal.Signals = signal.SIGINT) -> None:
        """Stop the server (SIGINT: PostgreSQL's fast shutdown); *remove*: its files too."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, mode)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, database: str = "postgres"):
        import pg8000.native

        return pg8000.native.Connection(SUPERUSER, host="127.0.0.1", port=self.port, database=database,
                                        password=PASSWORD, timeout=30)

    def create_database(self, name: str) -> str:
        con = self.connect()
        try:
            con.run(f'DROP DATABASE IF EXISTS "{name}"')
            con.run(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.dsn(name)

    def dsn(self, database: str) -> str:
        return (f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"
                f"?password_file={self.password_file}")

    def backend_pids(self, database: str) -> list[int]:
        """The server processes serving *database* (for SIGSTOP tests)."""
        con = self.connect()
        try:
            rows = con.run("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()",
                           d=database)
        finally:
            con.close()
        return [pid for (pid,) in rows]


@contextlib.contextmanager
def cluster() -> Iterator[PgCluster]:
    c = PgCluster().start()
    try:
        yield c
    finally:
        c.stop(remove=True)
