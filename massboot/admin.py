"""``massboot leases ...``: operator commands on the leases of a running server or of its database.

README, "Operator commands". The running server listens on a unix socket in its state directory
(``<state_dir>/admin.sock``, mode 0600: only its user and root may connect; never on the metrics
port). The protocol is line-delimited JSON: one request object per line, one response object per
line, one request at a time per connection::

    → {"op": "list"}
    ← {"ok": true, "leases": [{"mac": "52:54:00:12:34:56", "ip": "10.0.0.100", ...}]}
    → {"op": "reserve", "mac": "52:54:00:12:34:57", "ip": "10.0.0.120"}
    ← {"ok": false, "error": "10.0.0.120 is bound to 52:54:00:12:34:58 (release it first)"}

Operations: ``list``, ``show`` (mac), ``release`` (mac), ``reserve`` (mac, ip), ``unreserve``
(mac), ``export``. A request line is at most :data:`MAX_REQUEST` bytes; at most
:data:`MAX_CONNECTIONS` connections are served at once (one more is told so and closed); a
connection silent for :data:`IDLE_TIMEOUT` seconds is closed. Changes go through the lease
store, so they take effect at once and are durable when the answer comes.

When the server is not running (no socket, or nobody listening on it) the command opens the
lease database itself: the same operations, on the same files.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from massboot.dhcp.leases import Lease, LeaseConflict
from massboot.ident import mac_str, parse_mac

log = logging.getLogger(__name__)

MAX_REQUEST = 4096        # bytes in one request line
MAX_CONNECTIONS = 8       # connections served at once
IDLE_TIMEOUT = 60.0       # seconds a connection may stay silent
FIELDS = ("mac", "ip", "state", "static", "scope", "uuid", "expires", "updated")
OPS = ("list", "show", "release", "reserve", "unreserve", "export")


class AdminStore(Protocol):
    """What the operator commands need of a lease store.

    :class:`massboot.dhcp.leases.LeaseStore` has them all, each atomic inside the store.
    """

    def leases(self) -> list[Lease]: ...

    def get(self, mac: str) -> Lease | None: ...

    def free(self, mac: str) -> Lease | None: ...

    def reserve(self, mac: str, ip: str) -> Lease: ...

    def unreserve(self, mac: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class AdminScope:
    """One DHCP scope as the commands see it: ``main`` or a ``[subnet:NAME]``."""

    name: str
    store: AdminStore
    network: ipaddress.IPv4Network | None


class AdminError(Exception):
    """A request the commands refuse; the message is for the operator, as is."""


def record(lease: Lease, scope: str) -> dict[str, Any]:
    """A lease as the protocol and the exports carry it."""
    return {"mac": lease.mac, "ip": lease.ip, "state": lease.state, "static": lease.static,
            "scope": scope, "uuid": lease.uuid, "expires": lease.expires, "updated": lease.updated}


def _mac(value: Any) -> str:
    try:
        return mac_str(parse_mac(str(value)))
    except (ValueError, TypeError):
        raise AdminError(f"not a MAC address: {value!r}") from None


class LeaseAdmin:
    """The operations, over the current scopes (the server's, or the database's when offline).

    Args:
        scopes: the current scopes (read at each request: a reload may change them).
        static: the current ``[static_dhcp]`` table, ``AA:BB:..`` → ip (it wins over a
            reservation).
    """

    def __init__(self, scopes: Callable[[], Sequence[AdminScope]],
                 static: Callable[[], Mapping[str, str]]) -> None:
        self._scopes = scopes
        self._static = static

    def handle(self, request: Any) -> dict[str, Any]:
        """Answer one protocol request (a decoded JSON object); never raises."""
        try:
            if not isinstance(request, dict) or request.get("op") not in OPS:
                raise AdminError(f"unknown request; expected an object with op in {', '.join(OPS)}")
            op = request["op"]
            if op in ("list", "export"):
                return {"ok": True, "leases": self.leases()}
            mac = _mac(request.get("mac"))
            if op == "show":
                return {"ok": True, "leases": self.show(mac)}
            if op == "release":
                return {"ok": True, "lease": self.release(mac)}
            if op == "unreserve":
                return {"ok": True, "lease": self.unreserve(mac)}
            return {"ok": True, "lease": self.reserve(mac, str(request.get("ip")))}
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:   # a store failure: the operator sees it, the server goes on
            log.exception("admin request %r failed", request)
            return {"ok": False, "error": f"internal error: {exc}"}

    def leases(self) -> list[dict[str, Any]]:
        """Every binding of every scope, by scope then address."""
        out = []
        for scope in self._scopes():
            leases = sorted(scope.store.leases(), key=lambda lease: ipaddress.IPv4Address(lease.ip))
            out.extend(record(lease, scope.name) for lease in leases)
        return out

    def show(self, mac: str) -> list[dict[str, Any]]:
        out = []
        for scope in self._scopes():
            lease = scope.store.get(mac)
            if lease is not None:
                out.append(record(lease, scope.name))
        if not out:
            raise AdminError(f"no lease for {mac}")
        return out

    def release(self, mac: str) -> dict[str, Any]:
        """Free the MAC's binding: its address may go to another MAC from now on."""
        if mac in self._static():
            raise AdminError(f"{mac} has a [static_dhcp] address: edit the config to change it")
        for scope in self._scopes():
            lease = scope.store.free(mac)
            if lease is not None:
                return record(lease, scope.name)
        raise AdminError(f"no lease for {mac}")

    def reserve(self, mac: str, ip: str) -> dict[str, Any]:
        """Give *ip* to *mac* (its next request gets it) in the scope whose network holds *ip*."""
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            raise AdminError(f"not an IPv4 address: {ip!r}") from None
        ip = str(address)
        static = self._static()
        if mac in static:
            raise AdminError(f"{mac} has the [static_dhcp] address {static[mac]}: a [static_dhcp] "
                             "entry wins over a reservation (edit the config instead)")
        for other, static_ip in static.items():
            if static_ip == ip:
                raise AdminError(f"{ip} is the [static_dhcp] address of {other}: a [static_dhcp] "
                                 "entry wins over a reservation")
        scopes = list(self._scopes())
        scope = next((s for s in scopes if s.network is not None and address in s.network), None)
        if scope is None:
            raise AdminError(f"{ip} is in none of the served networks ("
                             + ", ".join(f"{s.name} {s.network}" for s in scopes) + ")")
        try:
            lease = scope.store.reserve(mac, ip)
        except LeaseConflict as exc:
            raise AdminError(str(exc)) from None
        for other in scopes:   # one binding per MAC: drop one it held in another scope
            if other is not scope:
                other.store.free(mac)
        return record(lease, scope.name)

    def unreserve(self, mac: str) -> dict[str, Any]:
        for scope in self._scopes():
            lease = scope.store.get(mac)
            if lease is not None and scope.store.unreserve(mac):
                return record(lease, scope.name)
        raise AdminError(f"no reservation for {mac} (a bound lease is released with 'release')")


# --------------------------------------------------------------------------- the server side
class AdminServer:
    """The admin socket of the running server (README, "Operator commands").

    Args:
        path: the socket's path (``<state_dir>/admin.sock``); a stale socket there is replaced.
        admin: the operations.
        max_connections: connections served at once; one more is answered with an error and
            closed (counted in :attr:`refused`).
        idle_timeout: seconds a connection may stay silent.
    """

    def __init__(self, path: str, admin: LeaseAdmin, *, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.path = path
        self.admin = admin
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.refused = 0
        self._active = 0
        self._server: Any = None

    def start(self) -> None:
        """Bind the socket, mode 0600, and serve.

        Raises:
            OSError: the path is taken by a live server or by something that is not a socket.
        """
        from gevent.pool import Pool
        from gevent.server import StreamServer

        if os.path.lexists(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if _listening(self.path):
                raise OSError(f"{self.path}: another massboot answers on it")
            os.unlink(self.path)      # left behind by a process that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)          # created 0600, never readable by others even briefly
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(self.max_connections)
        # the pool bounds the greenlets: the served connections plus one to refuse with
        self._server = StreamServer(sock, self._handle, spawn=Pool(self.max_connections + 1))
        self._server.start()
        log.info("admin socket %s", self.path)

    def chown(self, uid: int, gid: int) -> None:
        """Hand the socket to the user massboot runs as (before it drops root)."""
        os.chown(self.path, uid, gid)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _handle(self, sock: socket.socket, _address: Any) -> None:
        if self._active >= self.max_connections:
            self.refused += 1
            _send(sock, {"ok": False, "error": f"busy: {self.max_connections} admin connections "
                                               "already open"})
            return
        self._active += 1
        try:
            sock.settimeout(self.idle_timeout)
            reader = sock.makefile("rb")
            while True:
                line = reader.readline(MAX_REQUEST + 1)
                if not line:
                    return
                if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
                    _send(sock, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                try:
                    request = json.loads(line)
                except ValueError:
                    _send(sock, {"ok": False, "error": "not a JSON object"})
                    continue
                _send(sock, self.admin.handle(request))
        except OSError:        # the client went away, or stayed silent too long
            return
        finally:
            self._active -= 1


def _send(sock: socket.socket, response: dict[str, Any]) -> None:
    sock.sendall(json.dumps(response, separators=(",", ":")).encode() + b"\n")


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- the command side
class ServerAbsent(Exception):
    """Nobody answers on the admin socket: the server is not running."""


def call(path: str, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the running server; return its response.

    Raises:
        ServerAbsent: no socket at *path*, or nobody listening on it.
        OSError: the connection failed otherwise.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServerAbsent(str(exc)) from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def format_table(leases: Sequence[Mapping[str, Any]]) -> str:
    """``list``'s text: one line per binding with its state and times (UTC)."""
    rows = [("MAC", "IP", "STATE", "STATIC", "SCOPE", "EXPIRES", "UPDATED")]
    for r in leases:
        rows.append((r["mac"], r["ip"], r["state"], "yes" if r["static"] else "no", r["scope"],
                     _when(r["expires"]), _when(r["updated"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "".join(line + "\n" for line in lines)


def export(leases: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Every binding as CSV (a header line, then :data:`FIELDS`) or as a JSON list."""
    if fmt == "json":
        return json.dumps(list(leases), indent=1) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in leases:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in FIELDS})
    return out.getvalue()


def request_for(args: Any) -> dict[str, Any]:
    """The protocol request of the parsed ``massboot leases ...`` arguments."""
    request: dict[str, Any] = {"op": args.leases_command}
    if getattr(args, "mac", None) is not None:
        request["mac"] = args.mac
    if getattr(args, "ip", None) is not None:
        request["ip"] = args.ip
    return request


def run(args: Any, socket_path: str, offline: Callable[[], tuple[LeaseAdmin, Callable[[], None]]],
        out: Callable[[str], Any], err: Callable[[str], Any]) -> int:
    """``massboot leases ...``: ask the server, or work on the database when it is not running.

    Args:
        args: the parsed arguments (``leases_command``, ``mac``, ``ip``, ``format``).
        socket_path: the admin socket.
        offline: opens the lease stores as the server would; returns the operations and a
            closer.
        out, err: where the result and the messages go.

    Returns:
        0 on success, 1 when the request was refused or failed.
    """
    request = request_for(args)
    try:
        response = call(socket_path, request)
    except ServerAbsent:
        err(f"massboot is not running (nothing answers on {socket_path}): "
            "working on the lease database directly\n")
        admin, close = offline()
        try:
            response = admin.handle(request)
        finally:
            close()
    except OSError as exc:
        err(f"error: {socket_path}: {exc}\n")
        return 1
    if not response.get("ok"):
        err(f"error: {response.get('error')}\n")
        return 1
    op = request["op"]
    if op == "list":
        out(format_table(response["leases"]))
    elif op == "show":
        for r in response["leases"]:
            out("".join(f"{k}: {_when(r[k]) if k in ('expires', 'updated') else r[k]}\n" for k in FIELDS))
    elif op == "export":
        out(export(response["leases"], args.format))
    else:
        lease = response["lease"]
        out(f"{op}d {lease['mac']} {lease['ip']} ({lease['scope']})\n")   # released, reserved...
    return 0
