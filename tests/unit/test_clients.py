"""The DHCP server's bounded client records (massboot/dhcp/clients.py)."""

from __future__ import annotations

import pytest

from massboot.dhcp.clients import ClientTable, pack, unpack
from massboot.dhcp.exchange import Client
from massboot.dhcp.policy import State


@pytest.mark.parametrize("client", [
    Client("52:54:00:12:34:56"),
    Client("52:54:00:12:34:56", State.DHCP, "12345678-abcd-ef00-1111-abcdefabcdef", 7, "10.0.0.9",
           "rack-host", "next.cfg"),
    Client("52:54:00:12:34:56", State.PXE, "12345678ABCDEF001111ABCDEFABCDEF", 0, None, "", "é"),
])
def test_pack_round_trip(client: Client) -> None:
    assert unpack(client.mac, pack(client)) == client


def test_least_recently_seen_evicted_in_batches() -> None:
    table = ClientTable(128)
    for i in range(128):
        table.seen(Client(f"52:54:00:00:00:{i:02X}"))
    table.seen(Client("52:54:00:00:00:00", State.PXE))        # seen again: now the most recent
    table.seen(Client("52:54:00:00:01:00"))                   # one too many: 128 // 64 = 2 go
    assert len(table) == 127 and table.evicted == 2
    assert "52:54:00:00:00:01" not in table and "52:54:00:00:00:02" not in table
    assert table.get("52:54:00:00:00:00").state == State.PXE and "52:54:00:00:00:03" in table
    copy = table.get("52:54:00:00:00:03")
    copy.state = State.DHCP                                   # a copy: kept only by seen()
    assert table.get("52:54:00:00:00:03").state == State.IDLE
    with pytest.raises(ValueError):
        ClientTable(0)
