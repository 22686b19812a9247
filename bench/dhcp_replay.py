"""The DHCP server's CPU per DORA exchange, in process, with no network (issue #14).

Builds massboot's DHCP side as ``python -m massboot`` does (``cli.Services``: SQLite lease
database, the outcome log at ``info`` in a file through its writer thread, metrics and boot
progress subscribed) and puts a scripted socket in place of the UDP one: its ``recvmsg`` hands
the read loop relayed DISCOVERs of ``--clients`` MACs, up to ``--batch`` datagrams per wake-up,
and its ``sendto`` turns every OFFER into that client's REQUEST, as perfdhcp does. Prints the
process's CPU time (all threads: the hub, the lease database's, the log writer) per 1,000 DORA,
which the kernel's UDP path and another process on the box do not move the way they move a
live perfdhcp run: the A/B figure for a change of the Python path (not a replacement for
bench/perfdhcp.sh, which also counts the socket's syscalls).

    PYTHONPATH=. python bench/dhcp_replay.py --clients 20000
    PYTHONPATH=. python bench/dhcp_replay.py --clients 5000 --profile /tmp/replay.pstats
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import cProfile  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from massboot import cli  # noqa: E402
from massboot import config as cfg  # noqa: E402
from massboot.dhcp import packet as _packet  # noqa: E402
from massboot.dhcp.packet import BOOTREQUEST, BootpPacket, MessageType, Opt, u8  # noqa: E402

# The scripted clients' own codec is the Python one in every checkout (README "DHCP: the
# compiled codec"): the server's codec is what an A/B run compares, not the clients'.
decode = getattr(_packet, "python_decode", _packet.decode)
encode = getattr(_packet, "python_encode", _packet.encode)

CONFIG = """
[logger]
type = file
file = {dir}/massboot.log
level = info
[bootpd]
address = 127.0.0.1
port = 67
pool_start = 127.1.0.1
pool_count = {pool}
lease_time = 3600
lease_db = {lease_db}
allow_simple_dhcp = on
[bootfile]
default = pxelinux.0
[tftpd]
address = 127.0.0.1
root = {dir}
[metrics]
address = 127.0.0.1
port = 0
"""
RELAY = "127.0.0.2"
PARAMS = bytes([1, 3, 6, 15, 28, 42])       # what perfdhcp asks for


def request(msgtype: MessageType, n: int, xid: int, requested: bytes | None = None) -> bytes:
    """A relayed DISCOVER or REQUEST of client *n* (perfdhcp's shape: 53, 55, 61; 50 and 54)."""
    mac = b"\x52\x54" + n.to_bytes(4, "big")
    options = [(Opt.MESSAGE_TYPE, u8(msgtype)), (Opt.PARAM_REQUEST, PARAMS), (61, b"\x01" + mac)]
    if requested is not None:
        options += [(Opt.REQUESTED_IP, requested), (Opt.SERVER_ID, bytes([127, 0, 0, 1]))]
    return encode(BootpPacket(op=BOOTREQUEST, xid=xid, chaddr=mac, hops=1, giaddr=RELAY,
                              options=tuple(options)))


class ReplaySocket:
    """The read loop's socket: DISCOVERs of clients not started yet and the REQUESTs answering
    OFFERs, at most *batch* per wake-up; ACKs counted."""

    def __init__(self, clients: int, batch: int) -> None:
        self.clients, self.batch = clients, batch
        self.started = 0
        self.acks = 0
        self.pending: collections.deque[bytes] = collections.deque()
        self.ready = gevent.event.Event()
        self.done = gevent.event.Event()
        self._given = 0

    def recvmsg(self, bufsize: int, ancbufsize: int) -> tuple[bytes, list, int, tuple[str, int]]:
        while True:
            if self._given >= self.batch:
                self._given = 0
                gevent.sleep(0)             # the batch's commit and replies go on
                continue
            if not (self.pending or self.started < self.clients):
                self._given = 0
                self.ready.clear()
                self.ready.wait(1.0)        # replies waiting for a commit
                continue
            self._given += 1
            if self.pending:
                return self.pending.popleft(), [], 0, (RELAY, 67)
            self.started += 1
            return request(MessageType.DISCOVER, self.started, self.started), [], 0, (RELAY, 67)

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        reply = decode(data)
        kind = reply.message_type
        if kind == MessageType.OFFER:
            n = int.from_bytes(reply.chaddr[2:6], "big")
            offered = bytes(map(int, reply.yiaddr.split(".")))
            self.pending.append(request(MessageType.REQUEST, n, reply.xid, offered))
            self.ready.set()
        elif kind == MessageType.ACK:
            self.acks += 1
            if self.acks >= self.clients:
                self.done.set()
        return len(data)

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20000, help="DORA exchanges (distinct MACs)")
    parser.add_argument("--batch", type=int, default=8, help="datagrams per read wake-up")
    parser.add_argument("--db", choices=("sqlite", "memory"), default="sqlite",
                        help="lease store (memory: no database thread, the steadiest A/B figure)")
    parser.add_argument("--profile", help="write a cProfile of the run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lease_db = ":memory:" if args.db == "memory" else os.path.join(tmp, "leases.sqlite3")
        config = cfg.loads(CONFIG.format(dir=tmp, pool=args.clients * 2 + 1000, lease_db=lease_db))
        cli.setup_logging(config.logger, False)
        cli.tune_gc()
        services = cli.Services(config, run_tftp=False)
        server = services.dhcp
        sock = ReplaySocket(args.clients, args.batch)
        server.socket = sock
        server._running = True
        profile = cProfile.Profile() if args.profile else None
        cpu0, hub0, wall0 = time.process_time(), time.thread_time(), time.monotonic()
        if profile is not None:
            profile.enable()
        server._reader = gevent.spawn(server._read_loop)
        sock.done.wait()
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        cpu, hub, wall = time.process_time() - cpu0, time.thread_time() - hub0, time.monotonic() - wall0
        server._running = False
        server._reader.kill()
        server._finishers.join(timeout=5)
        for store in services.stores:
            store.close()
        logging.shutdown()
        lines = sum(1 for _ in open(os.path.join(tmp, "massboot.log")))
    print(f"{args.clients} DORA, batch {args.batch}, {args.db}: {cpu:.2f} CPU-s "
          f"({cpu * 1000 / args.clients:.3f} "
          f"per 1,000 DORA; the hub's thread {hub * 1000 / args.clients:.3f}), {wall:.2f} s wall, "
          f"{lines} log lines", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
