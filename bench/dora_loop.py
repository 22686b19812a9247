"""DHCP exchanges per second from ONE client loop on loopback (issue 2's figure).

Starts massboot (DHCP only) on an unprivileged loopback port with an in-memory lease store, then
one client, acting as a relay so that no root is needed, does DISCOVER/OFFER/REQUEST/ACK for N
distinct MACs back to back and prints the rate. A measurement, not a test.

    python bench/dora_loop.py --count 5000
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, MessageType, Opt, decode, encode, ip_bytes, u8  # noqa: E402,I001

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # massboot runs from here

CONFIG = """
[logger]
level = warning
[bootpd]
address = 127.0.0.1
port = {port}
pool_start = 127.1.0.1
pool_count = {count}
lease_db = {lease_db}
[bootfile]
default = pxelinux.0
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="DORA exchanges (distinct MACs)")
    parser.add_argument("--lease-db", default=":memory:", help="lease_db for the server (default :memory:)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dora.ini")
        with open(path, "w") as f:
            f.write(CONFIG.format(port=port, count=args.count + 10,
                                  lease_db=args.lease_db if args.lease_db == ":memory:" else
                                  os.path.join(tmp, "leases.sqlite3")))
        server = subprocess.Popen([sys.executable, "-m", "massboot", "-p", "-c", path],
                                  cwd=REPO, stderr=subprocess.PIPE, text=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(1.0)
        vendor = (Opt.VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001")
        uuid = (Opt.CLIENT_UUID, b"\0" + bytes(range(16)))

        def exchange(packet: BootpPacket) -> BootpPacket | None:
            for _ in range(3):
                sock.sendto(encode(packet), ("127.0.0.1", port))
                try:
                    while True:
                        reply = decode(sock.recvfrom(2048)[0])
                        if reply.xid == packet.xid:
                            return reply
                except TimeoutError:
                    continue
            return None

        # wait until the server answers
        deadline = time.monotonic() + 15
        probe = BootpPacket(op=BOOTREQUEST, xid=1, chaddr=b"\x02" * 6, giaddr="127.0.0.2",
                            options=((Opt.MESSAGE_TYPE, u8(MessageType.DISCOVER)), vendor, uuid))
        while exchange(probe) is None:
            if time.monotonic() > deadline or server.poll() is not None:
                print("massboot did not start", file=sys.stderr)
                server.kill()
                return 1
        ok = lost = 0
        start = time.perf_counter()
        for i in range(args.count):
            mac = (0x525400000000 + i).to_bytes(6, "big")
            xid = 0x10000 + i
            discover = ((Opt.MESSAGE_TYPE, u8(MessageType.DISCOVER)), vendor, uuid)
            offer = exchange(BootpPacket(op=BOOTREQUEST, xid=xid, chaddr=mac, giaddr="127.0.0.2",
                                         options=discover))
            if offer is None:
                lost += 1
                continue
            ack = exchange(BootpPacket(op=BOOTREQUEST, xid=xid, chaddr=mac, giaddr="127.0.0.2", options=(
                (Opt.MESSAGE_TYPE, u8(MessageType.REQUEST)), (Opt.SERVER_ID, ip_bytes("127.0.0.1")),
                (Opt.REQUESTED_IP, ip_bytes(offer.yiaddr)), vendor, uuid)))
            if ack is None or ack.message_type != MessageType.ACK:
                lost += 1
            else:
                ok += 1
        elapsed = time.perf_counter() - start
        server.terminate()
        server.wait(10)
        print(f"one client loop, loopback, lease_db={args.lease_db}: {ok} DORA in {elapsed:.2f}s = "
              f"{ok / elapsed:.0f} DORA/s ({lost} lost)")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
