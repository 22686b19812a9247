"""Types shared by the file store and the protocol servers that serve its files.

The DHCP server knows clients (:class:`ClientInfo`); the file store resolves names for them
and hands out :class:`Source` objects; the TFTP server reads those and answers a
:class:`FileError` with the error code of its own protocol. None of them imports another:
they meet here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["TEXT_MAX", "ClientInfo", "ClientLookup", "FdSource", "FileError", "FileReason", "Source",
           "WouldBlock", "client_text"]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the DHCP side knows of a client, looked up by its IP address."""

    ip: str
    mac: str | None = None      # "AA:BB:CC:DD:EE:FF"
    uuid: str | None = None
    arch: int | None = None
    file: str | None = None     # the HTTP ACL reply's "File:" line


ClientLookup = Callable[[str], ClientInfo | None]


class FileReason(enum.Enum):
    """Why a name cannot be served; each protocol maps it to its own error code."""

    NOT_FOUND = "not_found"   # missing, a directory, an empty filter result, a mirror's 404/410
    ACCESS = "access"         # a refused name, a permission error, a mirror's 401/403
    UPSTREAM = "upstream"     # the mirror failed: no answer, an HTTP error, cut short, stopping
    CLOSED = "closed"         # a read from a source already closed
    BUSY = "busy"             # out of descriptors or memory while opening: try again later


class FileError(Exception):
    """A name that cannot be served, or a read that failed.

    Attributes:
        reason: why, as a :class:`FileReason`.
        message: a short text for the client (a TFTP ERROR message).
    """

    def __init__(self, reason: FileReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class WouldBlock(Exception):  # noqa: N818 - named after BlockingIOError's EWOULDBLOCK
    """Raised by a *read* function when the bytes asked for are not available without waiting."""


class Source(Protocol):
    """An open file, read by offset.

    ``size`` is the total size when it is known before reading (TFTP ``tsize``), else None.
    A source may also have ``read_nowait(offset, length)``: like :meth:`read` but raising
    :class:`WouldBlock` instead of waiting, and possibly returning a ``memoryview``.
    """

    size: int | None

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``, fewer only at the end of the file (b"" past it).

        May wait cooperatively (a threadpool read, a remote download still filling).

        Raises:
            FileError: the download behind the source failed or was cut short.
        """
        ...

    def close(self) -> None:
        """Release the file; idempotent."""
        ...


class FdSource(Source, Protocol):
    """A source backed by a file descriptor, for ``os.sendfile`` (the HTTP server): local files,
    cached copies and downloads in flight (their ``.part`` file) are all one."""

    def fileno(self) -> int:
        """The descriptor; its bytes are the file's from offset 0.

        Raises:
            FileError: CLOSED once the source is closed.
        """
        ...

    def ready(self, end: int) -> tuple[int, bool]:
        """Wait until the first *end* bytes can be read, or the file is complete; return
        ``(bytes readable now, complete)`` (the size once complete).

        Raises:
            FileError: the download behind the source failed or stalled.
        """
        ...


#: the most characters of one client-sent text a line carries
TEXT_MAX = 128
_PLAIN = re.compile(r"[!#-&(-\[\]-~]+")   # printable ASCII without space, quotes, backslash


def client_text(value: Any, limit: int = TEXT_MAX) -> str:
    """*value* (text a client sent, or a URL built from it) fit for one log line: as it is
    when plain, else quoted like ``repr``; cut after *limit* characters
    (``'aaa'...(60000 chars)``)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and _PLAIN.fullmatch(text):
        return text
    if len(text) > limit:
        return f"{text[:limit]!r}...({len(text)} chars)"
    return repr(text)
