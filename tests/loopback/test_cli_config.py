"""Config errors found at startup exit 2 (systemd's RestartPreventExitStatus=2), as a subprocess.

The same error, with the same message, at a normal start and under ``--check-config``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))

INI = """
[bootpd]
address = 127.0.0.1
port = 0
pool_start = 127.0.0.100
lease_db = :memory:
[bootfile]
default = pxelinux.0
[tftpd]
address = 127.0.0.1
port = 0
root = {root}
"""


def run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massboot", "-c", str(path), *args], cwd=REPO, env=ENV,
                          text=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("mode", [(), ("-t",), ("--check-config",)])
def test_unknown_filter_variable_exits_2(tmp_path, mode):
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root=tmp_path) + "[filters]\npxelinux.cfg/* = cfg/{macaddr}\n")
    result = run(path, *mode)
    assert result.returncode == 2, result.stderr
    assert "[filters] pxelinux.cfg/* = 'cfg/{macaddr}': unknown variable {macaddr}" in result.stderr


@pytest.mark.parametrize("mode", [(), ("-t",), ("--check-config",)])
def test_missing_local_root_exits_2(tmp_path, mode):
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root="images"))
    result = run(path, *mode)
    assert result.returncode == 2, result.stderr
    assert f"[tftpd] root = '{tmp_path / 'images'}': not a directory" in result.stderr


def test_missing_root_does_not_matter_without_tftp(tmp_path):
    """``-p``: no TFTP, no root needed (checked without binding, with --check-config)."""
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root="images"))
    result = run(path, "-p", "--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("config OK")


def test_remote_root_is_not_checked_locally(tmp_path):
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root="http://127.0.0.1:9/netboot"))
    result = run(path, "-t", "--check-config")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", [("-t",), ("--check-config",)])
def test_cache_dir_others_may_write_exits_2(tmp_path, mode):
    """A cache directory another user could plant files in (issue #11): refused at startup,
    naming the option, the path and the fix."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root="http://127.0.0.1:9/netboot") + f"cache_dir = {cache}\n")
    result = run(path, *mode)
    assert result.returncode == 2, result.stderr
    assert f"[tftpd] cache_dir = '{cache}': writable by group or others (mode 0777)" in result.stderr
    assert "chmod 0700" in result.stderr


def test_default_cache_dir_is_private_in_the_state_dir(tmp_path):
    path = tmp_path / "massboot.ini"
    path.write_text(INI.format(root="http://127.0.0.1:9/netboot"))
    result = run(path, "-t", "--check-config")
    assert result.returncode == 0, result.stderr
    assert f"tftp: remote cache {tmp_path / 'cache'}, max 2048 MiB, 8 downloads" in result.stdout
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
