"""Test configuration: gevent patching happens here, first, as in every entry point."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip a real-client test outside CI; fail it under CI=true (it must run there)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def massboot_script(prelude: str) -> str:
    """A ``python -c`` script that runs *prelude* (say, a compiled module hidden as if never
    built), then massboot as ``python -m massboot`` would, with the arguments after it."""
    return (f"{prelude}; import runpy, sys; sys.argv[0] = 'massboot'; "
            "runpy.run_module('massboot', run_name='__main__', alter_sys=True)")


def require_root() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"{name} is not installed")


@pytest.fixture(params=["compiled", "python"])
def tftp_data_path(request: pytest.FixtureRequest) -> str:
    """The TFTP data path a test's server runs (``[tftpd] fast_path``, README "Performance"):
    every TFTP scenario runs against both. Under CI=true the compiled one must be built (gcc
    and python3-dev at ``pip install``), outside CI its half skips with the reason."""
    if request.param == "compiled":
        from massboot.tftp.server import fast_path_available

        require(fast_path_available(), "the compiled TFTP data path (massboot.tftp._fastpath) "
                "is not built: apt-get install gcc python3-dev, then pip install -e .")
    return request.param


@pytest.fixture(params=["compiled", "python"])
def dhcp_codec(request: pytest.FixtureRequest) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(decode, encode)`` of one DHCP codec (README "Performance", "DHCP: the compiled
    codec"): the codec's tests run against both. Under CI=true the compiled one must be built,
    outside CI its half skips with the reason."""
    from massboot.dhcp import packet

    if request.param == "compiled":
        require(packet.CODEC == "compiled", str(packet.CODEC_PROBLEM))
        return packet._codec.decode, packet._codec.encode
    return packet.python_decode, packet.python_encode


def fast_path_option(data_path: str) -> str:
    """TftpServer's ``fast_path`` for a :func:`tftp_data_path` value."""
    return "on" if data_path == "compiled" else "off"


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the session (tests/pgserver.py); under CI=true it
    must run (the lease store's contract runs on it)."""
    from tests.pgserver import PgCluster, pg_bindir

    require(pg_bindir() is not None, "PostgreSQL is not installed (Debian package postgresql)")
    try:
        import pg8000  # noqa: F401
    except ImportError:
        require(False, "pg8000 is not installed (requirements.txt)")
    cluster = PgCluster().start()
    yield cluster
    cluster.stop(remove=True)


@pytest.fixture
def pg_dsn(pg_cluster, request):
    """A new empty database in the session's cluster; its DSN (password from a file)."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return pg_cluster.create_database(name)
