"""The rack's sockets: the DHCP relay (one shared socket or one per exchange, or the broadcast
port of ``--netns``) and the lean UDP socket of the TFTP loop."""

from __future__ import annotations

import _socket  # the C module: the TFTP loop waits on it with its own watchers
import contextlib
import socket

import gevent
from gevent.queue import Empty, Queue

__all__ = ["BroadcastPort", "LeanUdp", "RelayMailbox", "SharedRelay", "SocketMailbox"]


class RelayMailbox:
    """A client's view of the DHCP relay: send a request, receive the replies of its xids
    (:attr:`source`: where the last one came from)."""

    source: tuple[str, int] | None = None

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> bytes | None:
        raise NotImplementedError

    def watch(self, xid: int) -> None:
        """Deliver replies with this transaction id to this mailbox."""

    def close(self) -> None:
        """Release the mailbox."""


class SharedRelay:
    """One relay socket for the whole rack; a reader greenlet routes replies by xid.

    This is how a real relay agent works, and it is the only way to reach a server that
    always answers relays on its own port (dnsmasq): bind ``relay_ip:relay_port``.
    """

    def __init__(self, relay_ip: str, relay_port: int,
                 server: tuple[str, int] | list[tuple[str, int]]) -> None:
        # several servers sharing one pool: a relay with several helper addresses forwards each
        # request to all of them (README, "Several servers")
        self.servers = list(server) if isinstance(server, list) else [server]
        self.server = self.servers[0]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if relay_port:  # share the port with a server bound to the wildcard address (dnsmasq)
            with contextlib.suppress(AttributeError, OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_rcvbuf(self.sock, 8 << 20)
        self.sock.bind((relay_ip, relay_port))
        self.routes: dict[int, Queue] = {}
        self.strays = 0
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        sock = self.sock
        routes = self.routes
        while True:
            try:
                data, source = sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 8:
                self.strays += 1
                continue
            box = routes.get(int.from_bytes(data[4:8], "big"))
            if box is None:
                self.strays += 1
            else:
                box.put((data, source))

    def mailbox(self) -> RelayMailbox:
        """A new client mailbox on this relay."""
        return _SharedMailbox(self)

    def close(self) -> None:
        self._reader.kill(block=False)
        self.sock.close()


class BroadcastPort(SharedRelay):
    """``--netns``: the clients' DHCP port, ``0.0.0.0:68`` on the unnumbered veth end
    (SO_BINDTODEVICE, SO_BROADCAST); requests go to ``255.255.255.255:67`` with the broadcast
    flag, so the server answers at ``255.255.255.255:68``. One socket for the rack (only one can
    own port 68 in a namespace); replies are routed by xid, as on the shared relay."""

    def __init__(self, ifname: str) -> None:  # not super().__init__: that binds a relay address
        self.server = ("255.255.255.255", 67)
        self.servers = [self.server]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        _set_rcvbuf(self.sock, 8 << 20)
        self.sock.bind(("0.0.0.0", 68))
        self.routes = {}
        self.strays = 0
        self._reader = gevent.spawn(self._read)


class _SharedMailbox(RelayMailbox):
    def __init__(self, relay: SharedRelay) -> None:
        self.relay = relay
        self.queue: Queue = Queue()
        self.xids: list[int] = []

    def send(self, data: bytes) -> None:
        for server in self.relay.servers:
            self.relay.sock.sendto(data, server)

    def recv(self, timeout: float) -> bytes | None:
        try:
            data, self.source = self.queue.get(timeout=timeout)
        except Empty:
            return None
        return data

    def watch(self, xid: int) -> None:
        self.relay.routes[xid] = self.queue
        self.xids.append(xid)

    def close(self) -> None:
        for xid in self.xids:
            if self.relay.routes.get(xid) is self.queue:
                del self.relay.routes[xid]
        self.xids.clear()


class SocketMailbox(RelayMailbox):
    """A relay socket of the client's own (``relay_ip:0``): replies come back to its port."""

    def __init__(self, relay_ip: str, server: tuple[str, int] | list[tuple[str, int]]) -> None:
        self.servers = list(server) if isinstance(server, list) else [server]
        self.server = self.servers[0]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((relay_ip, 0))

    def send(self, data: bytes) -> None:
        for server in self.servers:
            self.sock.sendto(data, server)

    def recv(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, self.source = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return data

    def close(self) -> None:
        self.sock.close()


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class LeanUdp:
    """A non-blocking UDP socket waited on with libev watchers, for the TFTP hot loop.

    gevent's socket builds a :class:`gevent.Timeout` for every wait; a lock-step transfer waits
    once per block, and that costs about a fifth of the simulator's time per packet. Here the
    io watcher is made once per socket and each wait only adds a C timer.
    """

    def __init__(self, bind: tuple[str, int]) -> None:
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(bind)
            self._loop = gevent.get_hub().loop
            self._io = self._loop.io(self.sock.fileno(), 1)
        except BaseException:
            self.sock.close()
            raise
        self.sendto = self.sock.sendto

    def recvfrom_into(self, buf: bytearray, timeout: float) -> tuple[int, tuple[str, int]] | None:
        """One datagram into ``buf``, or None after ``timeout`` seconds."""
        try:
            return self.sock.recvfrom_into(buf)
        except BlockingIOError:
            pass
        hub = gevent.get_hub()
        resume = gevent.getcurrent().switch
        timer = self._loop.timer(max(timeout, 0.0))
        self._io.start(resume, True)
        timer.start(resume, False)
        try:
            readable = hub.switch()
        finally:
            self._io.stop()
            timer.stop()
            timer.close()
        if not readable:
            return None
        try:
            return self.sock.recvfrom_into(buf)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self._io.close()
        self.sock.close()

