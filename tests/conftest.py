"""Test configuration: gevent patching happens here, first, as in every entry point."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip a real-client test outside CI; fail it under CI=true (it must run there)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"{name} is not installed")
