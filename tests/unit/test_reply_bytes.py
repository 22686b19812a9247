"""The replies on the wire, byte for byte, for a table of requests (issue #14).

The constant option runs of a reply (53/54, 1/3/6, 51/58/59, PXE option 43) come from caches
(:mod:`massboot.dhcp.policy`); the encoded replies of every kind of request must stay exactly
what they were before those caches: BIOS, UEFI and iPXE firmware, an OS client, relayed with
option 82, plain BOOTP, INFORM, a NAK, RELEASE and DECLINE (no reply), proxy mode's OFFER and
boot-server ACK, a reload that changes the scope's values. ``tests/unit/data/reply_bytes.txt``
holds the replies as the code before the caches encoded them (regenerate only for an intended
change: ``PYTHONPATH=. python tests/unit/test_reply_bytes.py > tests/unit/data/reply_bytes.txt``).
"""

from __future__ import annotations

import ipaddress
import pathlib
import uuid as uuid_module

from massboot.dhcp.exchange import Exchange, Outcome, Scope, Settings, classify
from massboot.dhcp.leases import MemoryLeaseStore
from massboot.dhcp.packet import (
    BOOTREQUEST,
    FLAG_BROADCAST,
    BootpPacket,
    MessageType,
    Opt,
    decode,
    encode,
    ip_bytes,
    u8,
)
from massboot.dhcp.policy import Network

SERVER = "10.0.0.1"
UUID = "12345678-abcd-ef00-1111-abcdefabcdef"
PARAMS = bytes([1, 3, 6, 12, 13, 15, 28, 43, 54, 60, 66, 67])
AGENT = bytes([1, 4]) + b"sw12" + bytes([2, 2]) + b"p7"
GOLDEN = pathlib.Path(__file__).parent / "data" / "reply_bytes.txt"
D, Q, R, L, INF = (MessageType.DISCOVER, MessageType.REQUEST, MessageType.RELEASE, MessageType.DECLINE,
                   MessageType.INFORM)


def request(msgtype: int | None, mac: str, *, arch: int | None = None, ipxe: bool = False,
            http: bool = False, want: str | None = None, sid: str | None = None, options=(),
            **fields) -> BootpPacket:
    """A request: PXE firmware of *arch* (None: an OS client), iPXE, UEFI HTTP Boot."""
    opts: list[tuple[int, bytes]] = [] if msgtype is None else [(Opt.MESSAGE_TYPE, u8(msgtype))]
    opts.append((Opt.PARAM_REQUEST, PARAMS))
    if http:
        opts.append((Opt.VENDOR_CLASS, f"HTTPClient:Arch:{arch:05d}:UNDI:003000".encode()))
    elif arch is not None:
        opts.append((Opt.VENDOR_CLASS, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()))
    if arch is not None:
        opts += [(Opt.CLIENT_ARCH, arch.to_bytes(2, "big")),
                 (Opt.CLIENT_UUID, b"\0" + uuid_module.UUID(UUID).bytes)]
    if ipxe:
        opts.append((Opt.USER_CLASS, b"\x04iPXE"))
    if sid:
        opts.append((Opt.SERVER_ID, ip_bytes(sid)))
    if want:
        opts.append((Opt.REQUESTED_IP, ip_bytes(want)))
    return BootpPacket(op=BOOTREQUEST, xid=0x5A5A, chaddr=bytes.fromhex(mac.replace(":", "")),
                       options=tuple(opts) + tuple(options), **fields)


def _settings(**overrides) -> Settings:
    values = dict(server_ip=SERVER, sname="massboot.local", allow_simple_dhcp=True,
                  default_bootfile="pxelinux.0",
                  bootfiles={7: "shimx64.efi", 16: "http://10.0.0.1/boot.efi"},
                  ipxe_bootfile="boot.ipxe", domain_name="rack.example",
                  bootfile_size=lambda name, ip: 40_000)
    values.update(overrides)
    return Settings(**values)


def _line(name: str, outcome: Outcome) -> str:
    if outcome.reply is None:
        return f"{name} none {outcome.no_reply}"
    assert outcome.destination is not None
    dest = outcome.destination
    return f"{name} {dest.address}:{dest.port} {encode(outcome.reply).hex()}"


def transcript() -> list[str]:
    """Every reply of the table, one line each: name, destination, encoded reply (hex)."""
    lines: list[str] = []
    net = Network(SERVER, "255.255.255.0", "10.0.0.254", ("10.0.0.53", "10.0.0.54"), 3600)
    rack = Network(SERVER, "255.255.255.0", "10.9.0.1", ("10.0.0.53",), 600)
    main = Scope("main", MemoryLeaseStore([f"10.0.0.{n}" for n in range(100, 140)]), net,
                 ipaddress.IPv4Network("10.0.0.0/24"))
    racks = Scope("rack", MemoryLeaseStore([f"10.9.0.{n}" for n in range(10, 20)]), rack,
                  ipaddress.IPv4Network("10.9.0.0/24"))
    settings = _settings()
    clients: dict[str, object] = {}

    def run(name: str, packet: BootpPacket, source=("0.0.0.0", 68), scope: Scope = main,
            settings: Settings = settings, bootserver: bool = False) -> Outcome:
        req = classify(packet, source, bootserver=bootserver)
        exchange = Exchange(settings, req, clients.get(req.mac), scope)   # type: ignore[arg-type]
        outcome = exchange.start()
        assert isinstance(outcome, Outcome), name
        clients[req.mac] = exchange.client
        lines.append(_line(name, outcome))
        return outcome

    for name, mac, kw in (("bios", "52:54:00:00:00:01", {"arch": 0}),
                          ("uefi", "52:54:00:00:00:02", {"arch": 7}),
                          ("ipxe", "52:54:00:00:00:03", {"arch": 7, "ipxe": True}),
                          ("http", "52:54:00:00:00:04", {"arch": 16, "http": True})):
        offer = run(f"{name}-discover", request(D, mac, **kw))
        run(f"{name}-request", request(Q, mac, want=offer.assigned, sid=SERVER, **kw))
    offer = run("os-discover-broadcast", request(D, "52:54:00:00:00:01", flags=FLAG_BROADCAST))
    run("os-request", request(Q, "52:54:00:00:00:01", want=offer.assigned, sid=SERVER))
    run("os-renew", request(Q, "52:54:00:00:00:01", ciaddr=offer.assigned), source=(offer.assigned, 68))
    run("nak", request(Q, "52:54:00:00:00:01", want="10.0.0.250"))
    relayed = dict(giaddr="10.9.0.1", hops=1, options=((Opt.RELAY_AGENT, AGENT),))
    offer = run("relayed-discover", request(D, "52:54:00:00:00:05", arch=0, **relayed),
                source=("10.9.0.1", 67), scope=racks)
    run("relayed-request",
        request(Q, "52:54:00:00:00:05", arch=0, want=offer.assigned, sid=SERVER, **relayed),
        source=("10.9.0.1", 67), scope=racks)
    run("bootp", request(None, "52:54:00:00:00:06"))
    run("inform", request(INF, "52:54:00:00:00:01", ciaddr="10.0.0.77"), source=("10.0.0.77", 68))
    run("release", request(R, "52:54:00:00:00:06", ciaddr=main.store.known("52:54:00:00:00:06").ip))
    run("decline", request(L, "52:54:00:00:00:02", want=main.store.known("52:54:00:00:00:02").ip, sid=SERVER))
    # a reload: new values of the same scope (the caches are keyed by value)
    reloaded = Scope("main", main.store, Network(SERVER, "255.255.0.0", "10.0.0.253", ("10.0.0.99",), 7200),
                     main.network)
    offer = run("reloaded-discover", request(D, "52:54:00:00:00:07", arch=0), scope=reloaded,
                settings=_settings(domain_name="other.example"))
    # proxy mode (no scope): OFFER on 67 (redirect and not), ACK on 4011
    proxy = _settings(proxy=True, proxy_redirect=False)
    run("proxy-offer", request(D, "52:54:00:00:00:08", arch=7), scope=None, settings=proxy)  # type: ignore[arg-type]
    run("proxy-ack", request(Q, "52:54:00:00:00:08", arch=7, ciaddr="192.168.1.8"),
        source=("192.168.1.8", 68), scope=None, settings=proxy, bootserver=True)  # type: ignore[arg-type]
    run("proxy-redirect", request(D, "52:54:00:00:00:09", arch=7), scope=None,
        settings=_settings(proxy=True))  # type: ignore[arg-type]
    return lines


def test_every_reply_is_byte_for_byte_what_it_was() -> None:
    expected = GOLDEN.read_text().splitlines()
    got = transcript()
    assert [line.split(" ")[0] for line in got] == [line.split(" ")[0] for line in expected]
    for ours, before in zip(got, expected, strict=True):
        assert ours == before


def test_a_reload_changes_the_cached_option_runs() -> None:
    """The reloaded scope's OFFER carries the new mask, router, DNS and lease times: a cached
    run keyed by the old values is not served."""
    line = next(line for line in transcript() if line.startswith("reloaded-discover "))
    reply = bytes.fromhex(line.split(" ")[2])
    packet = decode(reply)
    assert packet.option(Opt.SUBNET_MASK) == ip_bytes("255.255.0.0")
    assert packet.option(Opt.ROUTER) == ip_bytes("10.0.0.253")
    assert packet.option(Opt.DNS) == ip_bytes("10.0.0.99")
    assert packet.option(Opt.LEASE_TIME) == (7200).to_bytes(4, "big")
    assert packet.option(Opt.RENEWAL_T1) == (3600).to_bytes(4, "big")
    assert packet.option(Opt.REBINDING_T2) == (6300).to_bytes(4, "big")
    assert packet.option(Opt.DOMAIN_NAME) == b"other.example"


if __name__ == "__main__":
    print("\n".join(transcript()))
