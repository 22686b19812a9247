"""Run the real ``massboot`` command with one fault injected, from outside the production code.

Used by tests/loopback/test_cli.py as a subprocess, so that "a service died" is provoked by a
real fatal socket error in a running massboot rather than by a test hook in massboot itself::

    python -m tests.faults tftp -c massboot.ini
        the TFTP listener closes its own socket when it receives the datagram ``FAULT``: its
        next ``recvfrom`` fails with EBADF, a fatal error for the listener
    python -m tests.faults metrics -c massboot.ini
        the metrics HTTP listener is shut down for reading at its next connection: ``accept``
        fails with EINVAL, which gevent treats as fatal and closes the server

Everything after the fault's name is massboot's own command line; the exit code is massboot's.
"""

from gevent import monkey

monkey.patch_all()   # first, as in every entry point

import sys  # noqa: E402
import types  # noqa: E402

import gevent.socket as gsocket  # noqa: E402

import massboot.cli as cli  # noqa: E402
import massboot.metrics  # noqa: E402
import massboot.tftp.server  # noqa: E402

FAULT = b"FAULT"


class _ClosingSocket(gsocket.socket):
    """A UDP socket that closes itself on the datagram ``FAULT``, then reads again (EBADF)."""

    def recvfrom(self, *args):  # type: ignore[no-untyped-def, override]
        data, address = super().recvfrom(*args)
        if data == FAULT:
            self.close()
            return super().recvfrom(*args)
        return data, address


class _ShutdownServer(massboot.metrics._HttpServer):
    """The metrics server whose listening socket is shut down at the first connection."""

    def do_read(self):  # type: ignore[no-untyped-def]
        self.socket.shutdown(gsocket.SHUT_RD)   # accept() now fails with EINVAL
        return super().do_read()


def inject(fault: str) -> None:
    if fault == "tftp":
        patched = types.ModuleType("gevent.socket")
        patched.__dict__.update(gsocket.__dict__)
        patched.socket = _ClosingSocket  # type: ignore[attr-defined]
        massboot.tftp.server.gsocket = patched  # type: ignore[attr-defined]
    elif fault == "metrics":
        massboot.metrics._HttpServer = _ShutdownServer  # type: ignore[misc]
    else:
        raise SystemExit(f"unknown fault {fault!r}: tftp or metrics")


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
