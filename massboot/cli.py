"""The ``massboot`` command: read the config, build the object graph once, serve, stop cleanly."""

from gevent import monkey

monkey.patch_all()   # first statement of the entry point, before anything imports socket


import argparse  # noqa: E402
import errno  # noqa: E402
import logging  # noqa: E402
import logging.handlers  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Protocol  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from massboot import __version__  # noqa: E402
from massboot import config as cfg  # noqa: E402
from massboot.sources import ClientInfo  # noqa: E402

log = logging.getLogger("massboot")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
LOG_FORMAT = "PXE[%(module)s] %(levelname)s: %(message)s"
DEFAULT_CONFIG = "pybootd/etc/pybootd.ini"
WATCH_PERIOD = 0.5  # seconds between checks that every service's listener still runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="massboot",
        description="BOOTP/DHCP/PXE + TFTP boot server for mass deployment (pybootd compatible).")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file, pybootd ini format (default: {DEFAULT_CONFIG})")
    parser.add_argument("-p", "--pxe", action="store_true", help="run only the BOOTP/DHCP/PXE server")
    parser.add_argument("-t", "--tftp", action="store_true", help="run only the TFTP server")
    parser.add_argument("-H", "--http", action="store_true",
                        help="pybootd's HTTP file server (not provided yet: accepted and ignored)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--check-config", action="store_true",
                        help="load and validate the config, print what would be served, exit 0 or 2")
    parser.add_argument("--version", action="version", version=f"massboot {__version__}")
    return parser


def setup_logging(logger: cfg.LoggerConfig, debug: bool) -> None:
    """Logging per ``[logger]`` (pybootd's types, levels and format)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    fmt = LOG_FORMAT
    datefmt = None
    if logger.type == "stderr":
        handler, fmt, datefmt = logging.StreamHandler(sys.stderr), "%(asctime)s " + LOG_FORMAT, "%X"
    elif logger.type == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif logger.type == "file":
        assert logger.file is not None
        handler, fmt = logging.FileHandler(logger.file), "%(asctime)s " + LOG_FORMAT
    elif logger.type == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logger.level)


class Listener(Protocol):
    """What the main loop watches of a service (the same state ``/healthz`` reports)."""

    @property
    def alive(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class Services:
    """The object graph: built once from the config, started, stopped."""

    def __init__(self, config: cfg.Config, *, run_dhcp: bool = True, run_tftp: bool = True,
                 registry: CollectorRegistry | None = None) -> None:
        from massboot.eventlog import EventLog
        from massboot.events import EventBus

        self.config = config
        self.events = EventBus()
        self.events.subscribe(EventLog())      # the outcome log: one line per event (README, "[logger]")
        self.dhcp = None
        self.tftp = None
        self.files = None
        self.metrics = None
        self.stores: list = []
        self.server_ip: str | None = None
        self.netmask: str | None = None
        if run_dhcp and config.bootp is None:
            raise cfg.ConfigError("bootpd", None, None,
                                  "missing section: the DHCP server needs [bootpd] (or [bootp]) "
                                  "with pool_start; use -t to run TFTP only")
        if run_dhcp:
            self._detect_network()
        self._build_files()         # TFTP serves from it; DHCP asks it for option 13 sizes
        if run_dhcp:
            self._build_dhcp()
        if run_tftp:
            self._build_tftp()
        if config.metrics is not None:
            from massboot.metrics import Metrics

            subnets = config.bootp.subnets if config.bootp is not None else ()
            self.metrics = Metrics(config.metrics, self.events, registry=registry,
                                   dhcp=self.dhcp, tftp=self.tftp, cache=self.files,
                                   scopes=("main", *(sub.name for sub in subnets)))

    def _detect_network(self) -> None:
        from massboot.netif import detect

        bootp = self.config.bootp
        assert bootp is not None
        network = detect(bootp.pool_start, bootp.address)
        self.server_ip, self.netmask = network.address, network.netmask

    def _build_files(self) -> None:
        from massboot.files import FileStore

        t = self.config.tftp
        self.files = FileStore(t.root, t.filters, base_dir=self.config.base_dir, cache_dir=t.cache_dir,
                               cache_max_bytes=t.cache_size, revalidate_after=t.cache_revalidate,
                               http_timeout=t.http_timeout, client_lookup=self._client_info,
                               events=self.events)

    def _client_info(self, ip: str) -> ClientInfo | None:
        """The DHCP side's knowledge of a client, for TFTP filters (None in -t mode)."""
        return self.dhcp.client_info(ip) if self.dhcp is not None else None

    def _build_dhcp(self) -> None:
        from massboot.acl import HttpAcl
        from massboot.dhcp.leases import MemoryLeaseStore, SqliteLeaseStore
        from massboot.dhcp.server import DhcpServer, main_pool, subnet_pool
        from massboot.notify import Notifier

        bootp = self.config.bootp
        assert bootp is not None and self.server_ip and self.netmask

        def store(path: str, pool: list[str]):
            if path == ":memory:":
                s = MemoryLeaseStore(pool, bootp.static)
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                s = SqliteLeaseStore(path, pool, bootp.static)
            self.stores.append(s)
            return s

        pool, skipped = main_pool(bootp, self.server_ip, self.netmask)
        if skipped:
            log.warning("pool addresses %s are not handed out (server, network or broadcast address)",
                        ", ".join(skipped))
        main_store = store(bootp.lease_db, pool)
        subnet_stores = {}
        for sub in bootp.subnets:
            path = bootp.lease_db
            if path != ":memory:":
                stem, ext = os.path.splitext(path)
                path = f"{stem}.{sub.name}{ext}"
            subnet_stores[sub.name] = store(path, subnet_pool(sub, bootp.static))
        dns = bootp.dns
        if bootp.dns_auto:
            dns = resolv_conf_nameservers() or (self.server_ip,)
        if bootp.notify:
            # BOOT, LEASE and RELEASE follow the DHCP events (README, "Notifications")
            self.events.subscribe(Notifier(bootp.notify, self.events))
        http_acl = None
        if bootp.access == "http":
            assert bootp.http is not None
            http_acl = HttpAcl(bootp.http.location, bootp.http.pxe, bootp.http.dhcp,
                               timeout=bootp.http.timeout, mac_format=bootp.http.mac_format)
        files = self.files
        self.dhcp = DhcpServer(bootp, self.server_ip, self.netmask, main_store, self.events,
                               subnet_stores=subnet_stores, http_acl=http_acl, dns=dns,
                               bootfile_size=files.size if files is not None else None)

    def _build_tftp(self) -> None:
        from massboot.tftp.server import TftpServer

        t = self.config.tftp
        address = t.address or self.server_ip or "0.0.0.0"
        self.tftp = TftpServer(address, t.port, self.files, self.events, pool_size=t.pool_size,
                               max_blksize=t.blocksize, max_windowsize=t.windowsize,
                               timeout_min=t.timeout_min, timeout_max=t.timeout, retries=t.retries,
                               rcvbuf=t.rcvbuf, first_timeout=t.first_timeout,
                               first_retries=t.first_retries, max_per_client=t.max_per_client,
                               transfer_memory=t.transfer_memory, memory_budget=t.memory_budget)

    def start(self) -> None:
        """Bind every socket.

        Raises:
            StartupError: a port cannot be bound; the message names the service, the address
                and what to do about it.
        """
        # local file reads and lease writes go through the hub's thread pool: let it follow the
        # number of transfers that can run at once, within reason
        hub = gevent.get_hub()
        hub.threadpool.maxsize = max(hub.threadpool.maxsize, 32)
        for name, service, transport, address, port in self._listeners():
            try:
                service.start()
            except OSError as exc:
                raise StartupError(bind_error(name, transport, address, port, exc)) from exc

    def _listeners(self) -> list[tuple[str, Listener, str, str, int]]:
        """``(service, server, transport, address, port)`` of each configured listener."""
        out: list[tuple[str, Listener, str, str, int]] = []
        if self.dhcp is not None and self.config.bootp is not None:
            out.append(("dhcp", self.dhcp, "UDP", self.config.bootp.address, self.config.bootp.port))
        if self.tftp is not None:
            out.append(("tftp", self.tftp, "UDP", self.tftp_address, self.config.tftp.port))
        if self.metrics is not None and self.config.metrics is not None:
            out.append(("metrics", self.metrics, "TCP", self.config.metrics.address,
                        self.config.metrics.port))
        return out

    def dead(self) -> list[tuple[str, str]]:
        """``(service, cause)`` for each started service whose listener has stopped.

        Called only while massboot is not stopping, so a listener that ended, whether it
        raised or returned, is a dead service (README, Command line: exit code 1).
        """
        out = []
        for name, service, *_ in self._listeners():
            if not service.alive:
                out.append((name, service.error or "its listener stopped"))
        return out

    @property
    def tftp_address(self) -> str:
        return self.config.tftp.address or self.server_ip or "0.0.0.0"

    def stop(self, grace: float = 5.0) -> None:
        if self.dhcp is not None:
            self.dhcp.stop(grace)
        if self.tftp is not None:
            self.tftp.stop(grace)
        if self.metrics is not None:
            self.metrics.stop()
        if self.files is not None:
            self.files.close()
        for store in self.stores:
            store.close()


class StartupError(Exception):
    """A service could not start; the message is for the operator, as is."""


# what else usually holds each service's port, for "address already in use"
_PORT_HOLDERS = {
    "dhcp": "another DHCP server (dnsmasq, isc-dhcp-server, kea-dhcp4) or another massboot",
    "tftp": "another TFTP server (tftpd-hpa, atftpd, dnsmasq with enable-tftp) or another massboot",
    "metrics": "another exporter or another massboot",
}


def bind_error(service: str, transport: str, address: str, port: int, exc: OSError) -> str:
    """The operator's message for a listener that cannot be bound: what, where, and why."""
    where = f"{service}: cannot listen on {transport} {address}:{port}"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EACCES and port < 1024:
        return (f"{where}: {reason}: ports below 1024 need root or the CAP_NET_BIND_SERVICE "
                "capability (deploy/massboot.service runs massboot as a dedicated user with it)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{where}: {reason}: not allowed for this user (run as root, or see the "
                "capabilities in deploy/massboot.service)")
    if exc.errno == errno.EADDRINUSE:
        ss = "ss -lnup" if transport == "UDP" else "ss -lntp"
        return (f"{where}: {reason}: {_PORT_HOLDERS.get(service, 'another process')} holds "
                f"{transport} port {port}; `{ss} 'sport = :{port}'` shows which process")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {reason}: {address} is not an address of this host"
    return f"{where}: {reason}"


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """``dns = auto``: the IPv4 ``nameserver`` lines of resolv.conf, as pybootd read them."""
    import ipaddress

    servers = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        servers.append(str(ipaddress.IPv4Address(parts[1])))
                    except ValueError:
                        continue
    except OSError:
        return ()
    return tuple(servers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run massboot; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pxe and args.tftp:
        parser.error("Cannot exclude PXE & TFTP servers altogether")
    if not os.path.isfile(args.config):
        parser.error(f"Invalid configuration file: {args.config}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format=LOG_FORMAT)
    try:
        config = cfg.load(args.config)
        if not args.pxe:
            cfg.check_local_root(config)   # TFTP runs: a missing local root is a config error
    except cfg.ConfigError as exc:
        print(f"\nError: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return check_config(config, run_dhcp=not args.tftp)
    setup_logging(config.logger, args.debug)
    log.info("massboot-%s", __version__)
    if args.http:
        log.warning("-H: the HTTP file server is not provided yet; ignored")
    try:
        services = Services(config, run_dhcp=not args.tftp, run_tftp=not args.pxe)
        services.start()
    except cfg.ConfigError as exc:
        print(f"\nError: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # network detection, bind failures, lease database
        if args.debug:
            log.exception("startup failed")
        print(f"\nError: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return run_until_signal(services)


def check_config(config: cfg.Config, *, run_dhcp: bool) -> int:
    """``--check-config``: validate everything that can be validated without binding.

    The config is loaded and the TFTP root checked by :func:`main` first, as for a normal start.
    """
    from massboot.netif import NetworkDetectError, detect

    for line in cfg.describe(config):
        print(line)
    if run_dhcp and config.bootp is not None:
        try:
            network = detect(config.bootp.pool_start, config.bootp.address)
        except NetworkDetectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"network: {network.ifname} {network.address}/{network.prefixlen}, "
              f"server address {network.address}")
    try:
        from massboot.files import FileStore

        FileStore(config.tftp.root, config.tftp.filters, base_dir=config.base_dir,
                  cache_dir=config.tftp.cache_dir).close()
    except ValueError as exc:
        print(f"error: [filters]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print("config OK")
    return EXIT_OK


def run_until_signal(services: Services, watch_period: float = WATCH_PERIOD) -> int:
    """Serve until SIGTERM/SIGINT or a service dies; return the exit code (README, Command line).

    The first signal stops gracefully (exit 0); a second one exits at once with 1. A service
    whose listener stops while no signal asked for it is dead: the others are stopped and the
    exit code is 1. Services are checked every *watch_period* seconds through their ``alive``
    property, the same one /healthz reports.
    """
    stop = gevent.event.Event()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal %d: exiting now, transfers still running are cut", signum)
            os._exit(EXIT_ERROR)
        log.info("signal %d: stopping", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    dead: list[tuple[str, str]] = []
    while not stop.wait(watch_period):
        dead = services.dead()
        if dead:
            break
    for name, cause in dead:
        log.error("%s service died: %s; stopping", name, cause)
    services.stop()
    log.info("stopped")
    return EXIT_ERROR if dead else EXIT_OK

