"""The admin operations and socket (massboot.admin; README, "Operator commands")."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat

import gevent

from massboot.admin import MAX_REQUEST, AdminScope, AdminServer, LeaseAdmin, call
from massboot.dhcp.leases import MemoryLeaseStore

POOL = [f"10.0.0.{i}" for i in range(10, 14)]
STATIC = {"AA:BB:CC:DD:EE:01": "10.0.0.50"}


def make() -> tuple[LeaseAdmin, MemoryLeaseStore]:
    store = MemoryLeaseStore(POOL, STATIC)
    scopes = [AdminScope("main", store, ipaddress.IPv4Network("10.0.0.0/24"))]
    return LeaseAdmin(lambda: scopes, lambda: STATIC), store


def test_operations():
    admin, store = make()
    store.allocate("00:00:00:00:00:01")
    store.allocate("00:00:00:00:00:02")
    assert [r["ip"] for r in admin.handle({"op": "list"})["leases"]] == ["10.0.0.10", "10.0.0.11"]
    assert admin.handle({"op": "release", "mac": "00-00-00-00-00-01"})["lease"]["ip"] == "10.0.0.10"
    assert store.allocate("00:00:00:00:00:03").ip == "10.0.0.10"          # freed: handed out again
    assert admin.handle({"op": "reserve", "mac": "00:00:00:00:00:04", "ip": "10.0.0.13"})["ok"]
    assert store.allocate("00:00:00:00:00:04").ip == "10.0.0.13"
    assert store.allocate("00:00:00:00:00:05").ip == "10.0.0.12"          # the cursor skips it
    for request, error in (
            ({"op": "reserve", "mac": "AA:BB:CC:DD:EE:01", "ip": "10.0.0.13"}, "wins over a reservation"),
            ({"op": "reserve", "mac": "00:00:00:00:00:09", "ip": "10.0.0.50"}, "[static_dhcp] address of"),
            ({"op": "reserve", "mac": "00:00:00:00:00:09", "ip": "10.9.0.1"}, "none of the served"),
            ({"op": "reserve", "mac": "00:00:00:00:00:09", "ip": "10.0.0.13"}, "is bound to"),
            ({"op": "release", "mac": "nope"}, "not a MAC address"),
            ({"op": "show", "mac": "00:00:00:00:00:09"}, "no lease"),
            ({"op": "drop"}, "unknown request"), ([1], "unknown request")):
        answer = admin.handle(request)
        assert not answer["ok"] and error in answer["error"], (request, answer)


def test_socket_mode_bounds_and_stale_socket(tmp_path):
    admin, _ = make()
    path = str(tmp_path / "admin.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                                   # a socket file nobody listens on
    server = AdminServer(path, admin, max_connections=1, idle_timeout=0.5)
    server.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert call(path, {"op": "list"}) == {"ok": True, "leases": []}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
            held.connect(path)
            held.sendall(b'{"op": "list"}\n{"op": "list"}\n')   # one at a time, in order
            reader = held.makefile("rb")
            assert json.loads(reader.readline())["ok"] and json.loads(reader.readline())["ok"]
            busy = call(path, {"op": "list"})                    # the bound: one connection
            assert not busy["ok"] and "busy" in busy["error"] and server.refused == 1
            held.sendall(b"x" * (MAX_REQUEST + 10) + b"\n")
            answer = json.loads(reader.readline())
            assert "longer than" in answer["error"] and reader.readline() == b""   # and closed
        gevent.sleep(0.1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(path)
            silent.settimeout(5)
            assert silent.recv(10) == b""                           # closed after the idle timeout
    finally:
        server.stop()
    assert not os.path.exists(path)
