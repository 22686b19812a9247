"""What the packet codecs share: the error they raise on a datagram they cannot decode, and the
fix that builds the compiled modules (the TFTP data path and the DHCP codec)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BUILD_FIX", "PacketError"]

#: how to get the optional compiled modules (README, Quick start): setup.py builds them when
#: a C compiler and the Python headers are there
BUILD_FIX = "apt-get install gcc python3-dev, then reinstall massboot (pip install)"


class PacketError(ValueError):
    """A datagram that is not a well-formed packet of the codec's protocol.

    Each codec subclasses it with its own bounded ``Reason`` (the ``reason`` label of
    ``massboot_malformed_packets``, README, Monitoring).

    Args:
        message: what is wrong, for the debug log (``str(exc)``).
        reason: the same, as a bounded value (``exc.reason``).
    """

    def __init__(self, message: str, *, reason: StrEnum) -> None:
        super().__init__(message)
        self.reason = reason
