"""The rack: its shared state and counters (:class:`Rack`), the servers it starts, the clients
it powers on, the progress line, and :func:`run`, which does a whole run and returns its
:class:`~bench.sim.report.Summary`. Loss (``--loss``) is injected by the clients, in both
directions, never in the server."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter

import gevent

from ..nginx import Nginx, NginxError, free_tcp_port
from ..proctree import tree_cpu, tree_peak_rss_mib
from .client import SimClient
from .netns import Namespaces
from .options import DHCP_ONLY_PHASES, PHASES, Options, SetupError
from .profiles import PROFILES, allocate_profiles, needs_http
from .report import Summary, summarise
from .servers import (
    HTTP_SCRIPT,
    IPXE_SCRIPT,
    ServerProcess,
    UpstreamHttp,
    make_root,
    write_http_script,
)
from .site import SiteServer
from .transport import BroadcastPort, RelayMailbox, SharedRelay, SocketMailbox

__all__ = ["Rack", "run"]


class Rack:
    """The shared state of a run: options, counters, the relay, the clients' results."""

    def __init__(self, opts: Options, server_host: str, dhcp_port: int, tftp_port: int,
                 broadcast_if: str | None = None, bootserver_port: int = 0,
                 site: tuple[str, int] | None = None) -> None:
        self.opts = opts
        self.server_host = server_host
        self.dhcp_server = (server_host, dhcp_port)
        self.tftp_port = tftp_port
        # several servers: each request goes to all; a client reads its files from the one
        # whose ACK it took (its TFTP port, on loopback where they share an address)
        self.dhcp_servers = [(h, d) for h, d, _ in opts.servers] or [self.dhcp_server]
        self.tftp_ports = {(h, d): t for h, d, t in opts.servers}
        self.boot_retries = 0
        self.loss = opts.loss / 100.0
        self.scale = opts.timeout_scale
        self.phases = DHCP_ONLY_PHASES if opts.dhcp_only else PHASES
        self.phase_counts: Counter[str] = Counter()
        self.failed = 0
        self.bytes = 0
        self.transfers = 0
        self.dropped_out = 0
        self.dropped_in = 0
        self.send_errors = 0
        self.dhcp_exchanges = 0
        self.http_requests = 0
        self.t0 = time.monotonic()
        self.relay: SharedRelay | None = None
        self.broadcast = broadcast_if is not None
        if broadcast_if is not None:
            self.relay = BroadcastPort(broadcast_if)
        elif opts.relay_socket == "shared" or opts.relay_port or site is not None:
            self.relay = SharedRelay(opts.relay_ip, opts.relay_port,
                                     self.dhcp_servers + ([site] if site is not None else []))
        #: --proxy: massboot's PXE boot server port (the relay forwards to the site server too)
        self.proxy = site is not None
        self.bootserver = (server_host, bootserver_port)
        self.bootserver_exchanges = 0

    def now(self) -> float:
        """Seconds since the start of the run."""
        return time.monotonic() - self.t0

    def mailbox(self) -> RelayMailbox:
        """A client's way to the DHCP server: on the shared relay, or a socket of its own."""
        if self.relay is not None:
            return self.relay.mailbox()
        return SocketMailbox(self.opts.relay_ip, self.dhcp_servers)

    def tftp_port_for(self, dhcp_source: tuple[str, int] | None) -> int:
        """The TFTP port of the server whose DHCP reply came from *dhcp_source*."""
        return self.tftp_ports.get(dhcp_source, self.tftp_port) if dhcp_source else self.tftp_port

    def close(self) -> None:
        """Close the shared relay socket, if any."""
        if self.relay is not None:
            self.relay.close()


def _progress_line(rack: Rack, total: int, last_bytes: int, interval: float) -> str:
    counts = rack.phase_counts
    rate = (rack.bytes - last_bytes) / interval / 1e6
    parts = [f"[{rack.now():6.1f}s] on {counts['power_on']}/{total}"]
    labels = {"address": "addr", "bootfile": "boot", "config": "cfg", "kernel": "kernel",
              "initrd": "initrd", "booted": "booted"}
    for phase in rack.phases[1:]:
        parts.append(f"{labels[phase]} {counts[phase]}")
    parts.append(f"failed {rack.failed}")
    if rack.opts.dhcp_only:
        parts.append(f"DORA {rack.dhcp_exchanges}")
    else:
        parts.append(f"{rate:7.1f} MB/s")
    return " | ".join(parts)


def _watch(rack: Rack, total: int, samples: list[tuple[float, float]], show: bool) -> None:
    """Sample throughput twice a second and draw the progress line on stderr."""
    interval = 0.5
    tty = sys.stderr.isatty()
    last_bytes = 0
    last_line = ""
    while True:
        gevent.sleep(interval)
        samples.append((round(rack.now(), 3), (rack.bytes - last_bytes) / interval / 1e6))
        line = _progress_line(rack, total, last_bytes, interval)
        last_bytes = rack.bytes
        if not show:
            continue
        if tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        elif line.split("|", 1)[1] != last_line:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        last_line = line.split("|", 1)[1]


def run(opts: Options) -> Summary:
    """Run one rack: start the server unless ``opts.server``, boot every client, summarise.

    Raises:
        SetupError: bad options or the server could not be started.
    """
    if opts.clients < 1:
        raise SetupError("--clients must be at least 1")
    if not 0 <= opts.loss < 100:
        raise SetupError("--loss must be in [0, 100)")
    if opts.timeout_scale <= 0:
        raise SetupError("--timeout-scale must be positive")
    if opts.remote_root and opts.server is not None:
        raise SetupError("--remote-root needs the massboot the simulator starts (no --server)")
    if opts.netns and (opts.server is not None or opts.remote_root):
        raise SetupError("--netns runs the massboot it starts from a local root (no --server, --remote-root)")
    if opts.proxy and (opts.server is not None or opts.netns or opts.dhcp_only):
        raise SetupError("--proxy runs the massboot it starts, relayed (no --server, --netns, --dhcp-only)")
    if opts.site_server is not None and not opts.proxy:
        raise SetupError("--site-server goes with --proxy")
    if opts.http_server not in ("massboot", "nginx"):
        raise SetupError(f"--http-server {opts.http_server!r}: massboot or nginx")
    http_wanted = needs_http(opts.mix) and not opts.dhcp_only and opts.server is None
    _raise_fd_limit(opts.clients * 3 + 256)
    workdir = opts.workdir or tempfile.mkdtemp(prefix="massboot-sim-")
    os.makedirs(workdir, exist_ok=True)
    server: ServerProcess | None = None
    upstream: UpstreamHttp | None = None
    netns: Namespaces | None = None
    site: SiteServer | None = None
    site_address: tuple[str, int] | None = None
    nginx: Nginx | None = None
    files: dict[str, int] = {}
    try:
        if opts.proxy:
            if opts.site_server is not None:
                host_, _, port_ = opts.site_server.rpartition(":")
                if not host_ or not port_.isdigit():
                    raise SetupError(f"--site-server {opts.site_server!r}: write HOST:PORT")
                site_address = (host_, int(port_))
            else:
                site = SiteServer()
                site_address = (site.address, site.port)
        if opts.netns:
            netns = Namespaces()
            netns.create()
        if opts.server is None and not opts.servers:
            root = os.path.join(workdir, "root")
            files = make_root(root, opts.bootfile_size, opts.kernel_size, opts.initrd_size)
            cache_dir = None
            ipxe_boot_file, http = IPXE_SCRIPT, None
            if http_wanted:
                # the HTTP recipe: iPXE gets an http:// script naming http:// kernel and initrd
                http_host = netns.server_ip if netns is not None else "127.0.0.1"
                if opts.http_server == "nginx":
                    nginx = Nginx(os.path.join(workdir, "nginx"), root, address=http_host,
                                  port=80 if netns is not None else 0,
                                  command_prefix=["ip", "netns", "exec", netns.server] if netns else None)
                    try:
                        nginx.start()
                    except NginxError as exc:
                        raise SetupError(str(exc)) from exc
                    base = nginx.url
                else:
                    http = (http_host, 80 if netns is not None else free_tcp_port())
                    base = f"http://{http[0]}:{http[1]}/"
                files[HTTP_SCRIPT] = write_http_script(root, base)
                ipxe_boot_file = base + HTTP_SCRIPT
            if opts.remote_root:
                upstream = UpstreamHttp(root)
                root, cache_dir = upstream.url, os.path.join(workdir, "cache")
            server = ServerProcess(workdir, root, opts.clients * max(1, opts.rounds), opts.server_log_level,
                                   cache_dir, netns, proxy=opts.proxy,
                                   ipxe_boot_file=ipxe_boot_file, http=http,
                                   tftp_fast_path=opts.tftp_fast_path)
            server.start()
            host, dhcp_port, tftp_port = "127.0.0.1", server.dhcp_port, server.tftp_port
            target = f"massboot (started, {host} dhcp:{dhcp_port} tftp:{tftp_port}"
            if http is not None:
                target += f" http:{http[1]}"
            target += ")"
            if site_address is not None:
                target = (f"massboot in proxy mode (started, {host} dhcp:{dhcp_port} boot server:"
                          f"{server.bootserver_port} tftp:{tftp_port}), site DHCP server "
                          f"{site_address[0]}:{site_address[1]}"
                          + (" (the simulator's own)" if site is not None else ""))
            if netns is not None:
                host = netns.server_ip
                target = (f"massboot (started in netns {netns.server}, {host}; broadcast DHCP from "
                          f"netns {netns.clients}, {netns.client_if})")
                if http is not None:
                    target = target[:-1] + f"; HTTP {http[0]}:{http[1]})"
                netns.enter()
        elif opts.servers:
            host, dhcp_port, tftp_port = opts.servers[0]
            target = "servers " + ", ".join(f"{h} dhcp:{d} tftp:{t}" for h, d, t in opts.servers)
        else:
            host, dhcp_port, tftp_port = opts.server, opts.dhcp_port, opts.tftp_port
            target = f"{host} dhcp:{dhcp_port} tftp:{tftp_port}"
        if nginx is not None:
            target += f", HTTP from nginx (started, {nginx.url})"
        http_cpu = tree_cpu(nginx.pid) if nginx is not None else None
        summary = _run_rack(opts, host, dhcp_port, tftp_port, target, server, files,
                            netns.client_if if netns is not None else None,
                            server.bootserver_port if server is not None else 0, site_address)
        if site is not None:
            summary.target += f"; site server: {site.offers} OFFERs, {site.acks} ACKs"
        if nginx is not None and http_cpu is not None:
            summary.http_server = {"name": "nginx", "cpu_s": tree_cpu(nginx.pid) - http_cpu,
                                   "peak_rss_mb": tree_peak_rss_mib(nginx.pid)}
        if upstream is not None:
            summary.target += f", root {upstream.url} (cache {cache_dir})"
            summary.upstream = upstream.figures(files)
        return summary
    finally:
        if server is not None:
            server.stop()
        if nginx is not None:
            nginx.stop()
        if upstream is not None:
            upstream.close()
        if site is not None:
            site.close()
        if netns is not None:
            netns.close()
        if opts.workdir is None and not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif opts.keep and opts.progress:
            print(f"kept {workdir}", file=sys.stderr)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _run_rack(opts: Options, host: str, dhcp_port: int, tftp_port: int, target: str,
              server: ServerProcess | None, files: dict[str, int],
              broadcast_if: str | None = None, bootserver_port: int = 0,
              site: tuple[str, int] | None = None) -> Summary:
    master = random.Random(opts.seed)
    profiles = allocate_profiles(opts.mix, opts.clients, master)
    rack = Rack(opts, host, dhcp_port, tftp_port, broadcast_if, bootserver_port, site)
    clients = [SimClient(rack, i, PROFILES[name], random.Random(master.getrandbits(64)))
               for i, name in enumerate(profiles)]
    starts = [master.uniform(0, opts.ramp) if opts.ramp > 0 else 0.0 for _ in clients]
    samples: list[tuple[float, float]] = []
    cpu_before = _self_cpu()
    rack.t0 = time.monotonic()
    watcher = gevent.spawn(_watch, rack, len(clients), samples, opts.progress)
    greenlets = [gevent.spawn_later(start, client.run) for client, start in zip(clients, starts, strict=True)]
    try:
        gevent.joinall(greenlets, timeout=opts.duration)
        if server is not None:
            server.sample()
        late = [g for g in greenlets if not g.dead]
        gevent.killall(late, block=True, timeout=5)
        for client in clients:
            if not client.result.ok and client.result.failure is None:
                client._fail("duration", "never powered on")  # killed before its power-on time
    finally:
        watcher.kill()
        if opts.progress and sys.stderr.isatty():
            sys.stderr.write("\n")
        rack.close()
    elapsed = rack.now()
    results = [c.result for c in clients]
    summary = summarise(opts, target, rack, results, elapsed, server, files, samples,
                         _self_cpu() - cpu_before)
    if rack.proxy:
        summary.target += f"; {rack.bootserver_exchanges} boot-server (port 4011) exchanges"
    return summary


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

