"""The DHCP server's per-client records, bounded (design "Bounded everything, and fair").

One record per MAC: pybootd's PXE/OS state (README, "DHCP and PXE behaviour"), the UUID and
architecture last seen, the address handed out, the HTTP ACL's ``Client:``/``File:`` lines. The
server adds a record only for a request that passed its checks (decoded, a usable hardware
address, an allowed relay, the PXE rule and the ACLs), so a flood of strangers leaves no trace
here; and it keeps at most ``max_clients``, the least recently seen going first (counted in
:attr:`ClientTable.evicted`). A client whose record went starts over as a new one: it is asked
the HTTP ACL again on its next phase change; its lease (the lease store's) is untouched.

A record is kept packed, not as a :class:`~massboot.dhcp.exchange.Client`: the MAC as its 6
octets, the rest as one ``bytes`` (about 150 bytes a record with its dict entry, 15 MiB for the
default 100,000, against 35 MiB for ``Client`` objects in an ``OrderedDict``). :meth:`get`
returns a new ``Client``; what an exchange changes in it is kept by :meth:`seen`.

Recency is the dict's order: :meth:`seen` moves a record to the end; beyond ``max_clients`` the
oldest ``1/64`` of the table goes at once, so that evicting costs O(1) a record (a plain dict,
unlike an ``OrderedDict``, finds its first entry by skipping the holes left by moves).
"""

from __future__ import annotations

import socket
import struct
import uuid as uuid_module
from itertools import islice

from massboot.dhcp.exchange import Client
from massboot.dhcp.policy import State

_HEAD = struct.Struct("!BBi4s")       # flags, state, arch (-1: none), ip
_UUID_BIN, _UUID_TEXT, _IP, _HOSTNAME, _FILE = 1, 2, 4, 8, 16
_TEXT_LEN = struct.Struct("!H")
_NO_IP = bytes(4)
#: the states by number (a lookup: an Enum call costs ten times more)
_STATES: dict[int, State] = {s.value: s for s in State}
#: the share of the table evicted at once when it is full
EVICT_SHARE = 64


def _key(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")[:0xFFFF]
    return _TEXT_LEN.pack(len(data)) + data


def pack(client: Client) -> bytes:
    """*client*'s record, less its MAC (the table's key)."""
    flags, tail = 0, b""
    if client.uuid is not None:
        try:
            binary = uuid_module.UUID(client.uuid).bytes
        except ValueError:
            binary = None
        if binary is not None and str(uuid_module.UUID(bytes=binary)) == client.uuid:
            flags |= _UUID_BIN
            tail += binary
        else:                                     # kept as written
            flags |= _UUID_TEXT
            tail += _text(client.uuid)
    ip = _NO_IP
    if client.ip is not None:
        flags |= _IP
        ip = socket.inet_aton(client.ip)          # an address this server assigned: dotted quad
    for flag, value in ((_HOSTNAME, client.hostname), (_FILE, client.file)):
        if value is not None:
            flags |= flag
            tail += _text(value)
    arch = -1 if client.arch is None else client.arch
    return _HEAD.pack(flags, int(client.state), arch, ip) + tail


def unpack(mac: str, record: bytes) -> Client:
    """The :class:`Client` of *mac* from its packed *record*."""
    flags, state, arch, ip = _HEAD.unpack_from(record)
    client = Client(mac, _STATES[state] if state in _STATES else State(state),
                    arch=None if arch < 0 else arch,
                    ip=socket.inet_ntoa(ip) if flags & _IP else None)
    pos = _HEAD.size

    def text() -> str:
        nonlocal pos
        (size,) = _TEXT_LEN.unpack_from(record, pos)
        value = record[pos + 2:pos + 2 + size].decode("utf-8", "surrogateescape")
        pos += 2 + size
        return value

    if flags & _UUID_BIN:
        client.uuid = str(uuid_module.UUID(bytes=record[pos:pos + 16]))
        pos += 16
    elif flags & _UUID_TEXT:
        client.uuid = text()
    if flags & _HOSTNAME:
        client.hostname = text()
    if flags & _FILE:
        client.file = text()
    return client


class ClientTable:
    """``mac → record`` in least-recently-seen order, at most *max_clients* records.

    Args:
        max_clients: the most records kept.

    Raises:
        ValueError: *max_clients* below 1.
    """

    def __init__(self, max_clients: int) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients!r}")
        self.max_clients = max_clients
        self._records: dict[bytes, bytes] = {}
        self.evicted = 0          # records dropped to stay within max_clients

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, mac: object) -> bool:
        return isinstance(mac, str) and _key(mac) in self._records

    def get(self, mac: str) -> Client | None:
        """A copy of *mac*'s record (``AA:BB:…``), or None; does not count as seeing it.

        Changes to the copy are kept only by :meth:`seen`.
        """
        record = self._records.get(_key(mac))
        return None if record is None else unpack(mac, record)

    def seen(self, client: Client) -> None:
        """Keep *client* as the most recently seen record, evicting the least recently seen
        ones beyond ``max_clients``."""
        records, key = self._records, _key(client.mac)
        records.pop(key, None)            # re-inserted: moved to the end of the order
        records[key] = pack(client)
        excess = len(records) - self.max_clients
        if excess > 0:
            batch = max(excess, self.max_clients // EVICT_SHARE)
            for old in list(islice(records, batch)):
                del records[old]
            self.evicted += batch
