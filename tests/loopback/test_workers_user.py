"""TFTP worker processes under a privilege drop (README, "TFTP worker processes", Privileges).

massboot starts as root with ``[massboot] user = nobody`` and ``[tftpd] processes = 2`` on a
loopback high port: both workers must run as nobody's uid (they are started after the drop)
and serve, each from its own source addresses. A worker is a new interpreter that reads
massboot and its packages again as nobody, and CI runs as root on a checkout nobody may not
read: the test runs massboot from a copy nobody can read (massboot and the packages a worker
imports, under a ``0755`` temporary directory, with the system interpreter). From a copy
nobody cannot read, massboot must refuse at startup naming the path, the user and the fix
instead of restarting dying workers forever.

Root only (a privilege drop); under ``CI=true`` it must run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.loopback.test_cli import REPO, Running, free_port
from tests.loopback.test_workers import download, metric, pids, scrape, worker_of

CONFIG = """
[logger]
level = info
[massboot]
user = nobody
state_dir = {state}
[tftpd]
address = 127.0.0.1
port = {tftp}
root = {root}
processes = 2
[metrics]
address = 127.0.0.1
port = {metrics}
"""

# what a running massboot may import: every module of the package (optional ones may fail)
_DISCOVER = """
import importlib, json, pkgutil, sys
import massboot
for info in pkgutil.walk_packages(massboot.__path__, "massboot."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except Exception:
        pass
print(json.dumps([getattr(m, "__file__", None) for m in list(sys.modules.values())]))
"""


def install_copy(dest: Path) -> None:
    """massboot and the third-party packages it imports, copied into *dest* (a PYTHONPATH
    for the system interpreter)."""
    out = subprocess.run([sys.executable, "-c", _DISCOVER], cwd=REPO, capture_output=True,
                         text=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    files = [f for f in json.loads(out.stdout) if f]
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    tops: set[Path] = set()
    for name in files:
        for site in sites:
            if name.startswith(site + os.sep):
                tops.add(Path(site) / Path(name).relative_to(site).parts[0])
    for site in sites:          # vendored shared libraries of manylinux wheels
        tops.update(p for p in Path(site).glob("*.libs") if p.is_dir())
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.pyc")
    shutil.copytree(REPO / "massboot", dest / "massboot", ignore=ignore)
    for top in tops:
        if top.name == "massboot":
            continue
        if top.is_dir():
            shutil.copytree(top, dest / top.name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(top, dest / top.name)


class Server(Running):
    """massboot run by the system interpreter from *copy*, stderr collected as it comes."""

    def __init__(self, copy: Path, config: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(copy))
        env.pop("VIRTUAL_ENV", None)
        # the base interpreter, not the venv's
        super().__init__("-t", "-c", str(config), python=os.path.realpath(sys.executable), cwd=copy,
                         env=env)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.exit_code(timeout=30)


@pytest.fixture
def nobody() -> Iterator[pwd.struct_passwd]:
    require(os.geteuid() == 0, "needs root to drop privileges")
    try:
        yield pwd.getpwnam("nobody")
    except KeyError:
        require(False, "no user nobody")


def setup(base: Path, mode: int) -> tuple[Path, Path, bytes, int, int]:
    """The copy (its top directory of *mode*), a root, a config; (copy, config, payload, tftp
    port, metrics port)."""
    copy = base / "copy"
    copy.mkdir()
    install_copy(copy)
    os.chmod(copy, mode)
    public = base / "public"
    (public / "files").mkdir(parents=True)
    payload = os.urandom(1 << 20)
    (public / "files" / "1m.bin").write_bytes(payload)
    tftp, metrics = free_port(), free_port(socket.SOCK_STREAM)
    config = public / "massboot.ini"
    config.write_text(CONFIG.format(state=base / "state", tftp=tftp, root=public / "files",
                                    metrics=metrics))
    for path in (public, public / "files"):
        os.chmod(path, 0o755)
    for path in (config, public / "files" / "1m.bin"):
        os.chmod(path, 0o644)
    return copy, config, payload, tftp, metrics


def uids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("Uid:"))
    return {int(x) for x in line.split()[1:]}      # real, effective, saved, filesystem


@pytest.mark.timeout(120)
def test_workers_run_as_the_user_and_serve(nobody):
    base = Path(tempfile.mkdtemp(prefix="massboot-user-"))
    os.chmod(base, 0o755)
    try:
        copy, config, payload, tftp, metrics = setup(base, 0o755)
        mb = Server(copy, config)
        try:
            deadline = time.monotonic() + 30
            while mb.log.count("tftp listening on 127.0.0.1") < 3:   # the parent, both workers
                assert mb.proc.poll() is None and time.monotonic() < deadline, mb.log
                time.sleep(0.05)
            assert "running as user nobody" in mb.log
            workers = pids(mb)       # type: ignore[arg-type]
            assert sorted(workers) == [0, 1], mb.log
            for pid in (mb.proc.pid, *workers.values()):
                assert uids(pid) == {nobody.pw_uid}, (pid, mb.log)
            for src in ("127.0.0.2", "127.0.0.3"):     # one client per worker
                assert download(src, tftp, "1m.bin") == payload
            assert {worker_of(src) for src in ("127.0.0.2", "127.0.0.3")} == {0, 1}
            deadline = time.monotonic() + 5
            while metric(scrape(metrics), "massboot_tftp_transfers_completed_total") < 2:
                assert time.monotonic() < deadline, mb.log
                time.sleep(0.1)
            text = scrape(metrics)
            for worker in (0, 1):
                assert metric(text, "massboot_tftp_worker_events_total", f'{{worker="{worker}"}}') >= 2
                assert metric(text, "massboot_tftp_worker_restarts_total", f'{{worker="{worker}"}}') == 0
            assert "restarting it" not in mb.log
        finally:
            code = mb.stop()
        assert code == 0, mb.log
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_copy_the_user_cannot_read_is_named_at_startup(nobody):
    base = Path(tempfile.mkdtemp(prefix="massboot-user-"))
    os.chmod(base, 0o755)
    try:
        copy, config, _payload, _tftp, _metrics = setup(base, 0o700)   # root's only
        mb = Server(copy, config)
        code = mb.proc.wait(timeout=60)
        mb._reader.join(timeout=5)
        assert code == 1, mb.log
        said = mb.log
        assert "tftp: the worker processes ([tftpd] processes = 2) cannot start as user nobody" \
            in said, said
        assert f"{copy} is not readable by it" in said, said
        assert "[tftpd] processes = 1" in said and "tftp worker 0 started" not in said
    finally:
        shutil.rmtree(base, ignore_errors=True)
