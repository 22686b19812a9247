"""A DHCP server whose PostgreSQL goes away and comes back (README, "Several servers": faults).

Real server, real packets, a real PostgreSQL of the test's own (stopped and started again):
while the database is away a known client's renewal is ACKed with what is left of its committed
lease (option 51), a new client is not answered and that is counted, ``/healthz`` says
degraded and ``massboot_lease_db_up`` is 0; then service resumes by itself.
"""

from __future__ import annotations

import time

import gevent
from prometheus_client import CollectorRegistry

from massboot.config import MetricsConfig
from massboot.dhcp.leases import PostgresLeaseStore
from massboot.dhcp.packet import CODEC, MessageType, Opt, ip_bytes
from massboot.metrics import Metrics
from tests.loopback.dhcpclient import RelayClient
from tests.loopback.test_dhcp_server import Harness
from tests.pgserver import PgCluster

KNOWN = bytes.fromhex("525400bb0001")
NEW = bytes.fromhex("525400bb0002")


def _health(metrics: Metrics) -> dict:
    out: dict = {}

    def start_response(status: str, headers: list) -> None:
        out["status"] = status

    body = b"".join(metrics.wsgi_app({"PATH_INFO": "/healthz", "QUERY_STRING": ""}, start_response))
    import json

    return {"http": out["status"], **json.loads(body)}


def _request(client: RelayClient, mac: bytes, ip: str):
    return client.exchange(client.packet(mac, MessageType.REQUEST, [(Opt.REQUESTED_IP, ip_bytes(ip)),
                                                                    (Opt.SERVER_ID, ip_bytes("127.0.0.1"))]),
                           timeout=3)


def test_known_clients_are_renewed_up_to_their_committed_expiry_new_ones_wait(pg_cluster) -> None:
    cluster = PgCluster().start()
    dsn = cluster.create_database("leases") + "&timeout=2&connect_timeout=1"
    h = Harness(bootpd="allow_simple_dhcp = on", lease_time=600,
                store=lambda pool, _config: PostgresLeaseStore(dsn, pool))
    client, store = h.client, h.store
    registry = CollectorRegistry()
    metrics = Metrics(MetricsConfig(port=0), h.events, dhcp=h.server, registry=registry)
    try:
        offer, ack = client.dora(KNOWN)
        assert ack is not None and ack.message_type == MessageType.ACK
        bound_at = time.time()
        assert int.from_bytes(ack.option(Opt.LEASE_TIME), "big") == 600
        assert _health(metrics) == {"http": "200 OK", "status": "ok", "dhcp": "up", "lease_db": "up",
                                    "dhcp_codec": CODEC}

        cluster.stop()
        gevent.sleep(1.0)
        renew = _request(client, KNOWN, ack.yiaddr)
        assert renew is not None and renew.message_type == MessageType.ACK and renew.yiaddr == ack.yiaddr
        granted = int.from_bytes(renew.option(Opt.LEASE_TIME), "big")
        left = 600 - (time.time() - bound_at)
        assert left - 3 <= granted <= left                # never extended without a commit
        assert int.from_bytes(renew.option(Opt.RENEWAL_T1), "big") == granted // 2
        assert client.exchange(client.packet(NEW, MessageType.DISCOVER), timeout=1.5) is None
        assert registry.get_sample_value("massboot_dhcp_requests_ignored_total",
                                         {"reason": "lease_db_down"}) >= 1
        assert registry.get_sample_value("massboot_lease_db_up", {"scope": "main"}) == 0
        assert _health(metrics) == {"http": "200 OK", "status": "degraded", "dhcp": "up", "lease_db": "down",
                                    "dhcp_codec": CODEC}

        cluster.start()
        deadline = time.monotonic() + 20
        while not store.database_up and time.monotonic() < deadline:
            gevent.sleep(0.1)
        offer2, ack2 = client.dora(NEW)                   # service resumed by itself
        assert ack2 is not None and ack2.message_type == MessageType.ACK and ack2.yiaddr != ack.yiaddr
        again = _request(client, KNOWN, ack.yiaddr)
        assert int.from_bytes(again.option(Opt.LEASE_TIME), "big") == 600
        assert registry.get_sample_value("massboot_lease_db_up", {"scope": "main"}) == 1
        assert _health(metrics)["status"] == "ok"
    finally:
        h.close()
        cluster.stop(remove=True)
