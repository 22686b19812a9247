"""The ``massboot`` command: read the config, build the object graph once, serve, stop cleanly."""

from gevent import monkey

monkey.patch_all()   # first statement of the entry point, before anything imports socket


import argparse  # noqa: E402
import errno  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import logging.handlers  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from typing import Any, Protocol  # noqa: E402

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
                        help="also run the HTTP file server ([httpd]; beside -p or -t too)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--check-config", action="store_true",
                        help="load and validate the config, print what would be served, exit 0 or 2")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the lease database, the cache and the admin socket live "
                             "(overrides [massboot] state_dir)")
    parser.add_argument("--user", metavar="NAME",
                        help="started as root: run as this user once the ports are bound "
                             "(overrides [massboot] user)")
    parser.add_argument("--version", action="version", version=f"massboot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    leases = commands.add_parser(
        "leases", help="list or change the leases of the running server, or of its database when "
                       "it is not running (README, Operator commands)")
    ops = leases.add_subparsers(dest="leases_command", metavar="OPERATION", required=True)
    ops.add_parser("list", help="every binding, with its state and times")
    for name, text in (("show", "one MAC's binding"),
                       ("release", "free a MAC's address: another MAC may get it"),
                       ("unreserve", "drop a reservation not bound yet")):
        ops.add_parser(name, help=text).add_argument("mac", help="AA:BB:CC:DD:EE:FF or AA-BB-...")
    reserve = ops.add_parser("reserve", help="give an address to a MAC: its next request gets it")
    reserve.add_argument("mac", help="AA:BB:CC:DD:EE:FF or AA-BB-...")
    reserve.add_argument("ip", help="an address of a served network, not a [static_dhcp] one")
    export = ops.add_parser("export", help="every binding, as a backup")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="default: csv")
    migrate = ops.add_parser("migrate", help="copy a SQLite lease database into PostgreSQL, keeping "
                                             "every binding (README, Several servers)")
    migrate.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH",
                         help="the SQLite lease database (stop the server that writes it first)")
    migrate.add_argument("--to", dest="target", metavar="postgresql://...",
                         help="the database (default: [bootpd] lease_db when it is one)")
    migrate.add_argument("--scope", default="main",
                         help="the pool it becomes: main, or a [subnet:NAME]'s name (default: main)")
    migrate.add_argument("--replace", action="store_true",
                         help="overwrite a pool that already has bindings (default: refuse)")
    return parser


def setup_logging(logger: cfg.LoggerConfig, debug: bool) -> None:
    """Logging per ``[logger]`` (pybootd's types, levels and format).

    Called again on SIGHUP: a ``type = file`` log is opened again by its name, so that a log
    rotated by renaming goes on in a new file (README, "Reload"). Stream and file logs are
    written by a thread of their own, in batches handed over by the hub
    (:mod:`massboot.logwriter`); syslog datagrams are sent as they come.
    """
    from massboot.logwriter import BufferedHandler, LineFormatter

    root = logging.getLogger()
    # no line shows a thread's or a process's name, and under gevent the first record of each
    # greenlet would make a thread object for it (one per DHCP exchange)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    fmt = LOG_FORMAT
    datefmt = None
    kept = None
    if logger.type in ("stderr", "stdout", "file"):
        stream = sys.stderr if logger.type == "stderr" else sys.stdout if logger.type == "stdout" else None
        path = os.path.abspath(logger.file) if logger.type == "file" and logger.file else None
        for old in root.handlers:       # a reload: the same output goes on (a file reopened)
            if isinstance(old, BufferedHandler) and old.stream is stream and old.path == path:
                kept = old
    for old in list(root.handlers):
        if old is not kept:
            root.removeHandler(old)
            if isinstance(old, BufferedHandler):
                old.close(wait=0)           # its thread writes what it holds, then stops
            else:
                old.close()
    if logger.type == "stderr":
        handler, fmt, datefmt = kept or BufferedHandler(sys.stderr), "%(asctime)s " + LOG_FORMAT, "%X"
    elif logger.type == "stdout":
        handler = kept or BufferedHandler(sys.stdout)
    elif logger.type == "file":
        assert logger.file is not None
        handler, fmt = kept or BufferedHandler(path=os.path.abspath(logger.file)), "%(asctime)s " + LOG_FORMAT
    elif logger.type == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    if kept is not None:
        kept.reopen()
    handler.setFormatter(LineFormatter(fmt, datefmt))
    if kept is None:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logger.level)


#: the cyclic garbage collector's thresholds while serving (gen0, gen1, gen2); see tune_gc
GC_THRESHOLDS = (20_000, 20, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector's pauses rare once the server is up (issue #14).

    Under perfdhcp the default thresholds (700, 10, 10) ran about 100 collections a second,
    1.5 s of a 12 s run, full ones up to 150 ms long while every lease of the index was scanned
    again; a 150 ms pause overflows the receive buffer of a busy DHCP socket. What startup
    built (modules, config, the lease index read from the database) is frozen out of the
    collections (:func:`gc.freeze`), and a young generation of 20,000 objects makes a
    collection about 30 times rarer: 0.15 s in that run, none of them full. Memory is freed by
    reference counting as before; only cyclic garbage waits a little longer.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Listener(Protocol):
    """What the main loop watches of a service (the same state ``/healthz`` reports)."""

    @property
    def alive(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class Services:
    """The object graph: built once from the config, started, stopped."""

    def __init__(self, config: cfg.Config, *, run_dhcp: bool = True, run_tftp: bool = True,
                 run_http: bool = False, registry: CollectorRegistry | None = None,
                 debug: bool = False) -> None:
        from massboot.eventlog import EventLog
        from massboot.events import EventBus

        self.config = config
        self.events = EventBus()
        # the outcome log: one line per event (README, "[logger]"), a writer per kind (issue #14)
        self.events.subscribe_kinds(EventLog().handlers())
        self.dhcp = None
        self.tftp = None
        self.http = None
        self.lease_view = None               # check_ip's view of another process's lease files
        self.files = None
        self.metrics = None
        self.admin = None
        self.stores: list = []
        self.store_paths: list[str] = []     # the lease database files, for modes and ownership
        self.subnet_stores: dict = {}
        self.server_ip: str | None = None
        self.netmask: str | None = None
        self.run_http = run_http     # -H: this process serves HTTP (relative HTTP Boot files)
        self.debug = debug           # -d, for the TFTP worker processes
        if run_dhcp and config.bootp is None:
            raise cfg.ConfigError("bootpd", None, None,
                                  "missing section: the DHCP server needs [bootpd] (or [bootp]) "
                                  "with pool_start; use -t to run TFTP only")
        if run_dhcp:
            assert config.bootp is not None
            check_http_bootfiles(config.bootp, run_http)
            self._detect_network()
        self._build_files()         # TFTP serves from it; DHCP asks it for option 13 sizes
        if run_dhcp:
            self._build_dhcp()
        if run_tftp:
            self._build_tftp()
        if run_http:
            self._build_http()
        if config.metrics is not None:
            from massboot.metrics import Metrics

            subnets = config.bootp.subnets if config.bootp is not None else ()
            cache_view = getattr(self.tftp, "cache_view", None)   # TFTP worker processes'
            self.metrics = Metrics(config.metrics, self.events, registry=registry,
                                   dhcp=self.dhcp, tftp=self.tftp, http=self.http,
                                   cache=self.files if cache_view is None else cache_view(self.files),
                                   scopes=("main", *(sub.name for sub in subnets)))
            collector = getattr(self.tftp, "collector", None)
            if collector is not None:    # the TFTP worker processes' own families
                self.metrics.registry.register(collector())
            elif self.tftp is not None:  # processes = 1: worker 0 is this process's server
                from massboot.workers import single_collector

                self.metrics.registry.register(single_collector(self.tftp))

    def _detect_network(self) -> None:
        bootp = self.config.bootp
        assert bootp is not None
        network = server_network(self.config)
        self.server_ip, self.netmask = network.address, network.netmask

    def _build_files(self) -> None:
        from massboot.files import FileStore

        t = self.config.tftp
        self.files = FileStore(t.root, t.filters, base_dir=self.config.base_dir, cache_dir=t.cache_dir,
                               cache_max_bytes=t.cache_size, revalidate_after=t.cache_revalidate,
                               http_timeout=t.http_timeout, max_downloads=t.max_downloads,
                               client_lookup=self._client_info,
                               events=self.events, shared=t.processes > 1)

    def _client_info(self, ip: str) -> ClientInfo | None:
        """The DHCP side's knowledge of a client, for TFTP filters (None in -t mode)."""
        return self.dhcp.client_info(ip) if self.dhcp is not None else None

    def _store(self, path: str, pool: list[str], static: dict[str, str], exclude: Iterable[str] = (),
               scope: str = "main"):
        assert self.config.bootp is not None
        store, paths = open_lease_store(path, pool, static, exclude=exclude,
                                        lifecycle=lifecycle_options(self.config.bootp), scope=scope)
        self.stores.append(store)
        self.store_paths.extend(paths)
        return store

    def _open_subnet_stores(self, bootp: cfg.BootpConfig) -> None:
        """A store per ``[subnet:NAME]`` not open yet (at startup, and for one a reload adds)."""
        from massboot.dhcp.server import subnet_pool

        for sub in bootp.subnets:
            if sub.name not in self.subnet_stores:
                self.subnet_stores[sub.name] = self._store(subnet_db(bootp.lease_db, sub.name),
                                                           subnet_pool(sub, bootp.static), bootp.static,
                                                           scope=sub.name)

    def _dns(self, bootp: cfg.BootpConfig) -> tuple[str, ...]:
        if bootp.dns_auto:
            assert self.server_ip is not None
            return resolv_conf_nameservers() or (self.server_ip,)
        return bootp.dns

    def _build_dhcp(self) -> None:
        from massboot.dhcp.server import DhcpServer, main_pool
        from massboot.notify import Notifier

        bootp = self.config.bootp
        assert bootp is not None and self.server_ip and self.netmask
        if bootp.notify:
            # BOOT, LEASE and RELEASE follow the DHCP events (README, "Notifications")
            self.events.subscribe(Notifier(bootp.notify, self.events))
        files = self.files
        size = files.size if files is not None else None
        if bootp.mode == "proxy":     # no pool, no lease store (README, "proxyDHCP")
            self.dhcp = DhcpServer(bootp, self.server_ip, self.netmask, None, self.events,
                                   http_acl=http_acl_for(bootp), dns=(), bootfile_size=size,
                                   http_base=http_boot_base(self.config, self.server_ip, self.run_http))
            return
        pool, skipped = main_pool(bootp, self.server_ip, self.netmask)
        if skipped:
            log.warning("pool addresses %s are not handed out (server, network or broadcast address)",
                        ", ".join(skipped))
        # never handed out, nor reserved by the operator
        main_store = self._store(bootp.lease_db, pool, bootp.static, [*skipped, self.server_ip])
        self._open_subnet_stores(bootp)
        self.dhcp = DhcpServer(bootp, self.server_ip, self.netmask, main_store, self.events,
                               subnet_stores=dict(self.subnet_stores), http_acl=http_acl_for(bootp),
                               dns=self._dns(bootp), bootfile_size=size,
                               http_base=http_boot_base(self.config, self.server_ip, self.run_http))
        self.admin = admin_server(self.config.admin_socket, self.dhcp)

    def _build_tftp(self) -> None:
        check_fast_path(self.config.tftp)
        t = self.config.tftp
        address = t.address or self.server_ip or "0.0.0.0"
        if t.processes > 1:     # README, "TFTP worker processes"
            from massboot.workers import TftpWorkers

            self.tftp = TftpWorkers(self.config, address, self.events, self._client_info,
                                    debug=self.debug)
            return
        self.tftp = tftp_server(self.config, address, self.files, self.events)

    def launch(self) -> None:
        """Start what runs as the final user: the TFTP worker processes (after :meth:`start`
        and the privilege drop; README, "TFTP worker processes")."""
        launch = getattr(self.tftp, "launch", None)
        if launch is not None:
            launch()

    def _build_http(self) -> None:
        from massboot.http.server import HttpServer

        h = self.config.httpd
        assert self.files is not None
        # [httpd] root: another root, the same filters, confinement and cache (README, "HTTP boot")
        files = self.files if h.root is None else self.files.for_root(h.root)
        self.http = HttpServer(self.http_address, h.port, files, self.events,
                               is_leased=self._lease_check(), max_connections=h.max_connections,
                               max_per_client=h.max_per_client, idle_timeout=h.idle_timeout,
                               request_timeout=h.request_timeout, send_timeout=h.send_timeout,
                               max_request_bytes=h.max_request_bytes)

    def _lease_check(self) -> Callable[[str], bool] | None:
        """``[httpd] check_ip``: the lease stores of this process's DHCP server, or with ``-t``
        the lease databases another massboot writes, read-only (README, "HTTP boot")."""
        from massboot.http.leased import PgLeases, SqliteLeases, StoreLeases

        h = self.config.httpd
        if not h.check_ip:
            return None
        if self.dhcp is not None:
            if self.dhcp.proxy:    # no leases: the addresses boot clients reported (README, proxyDHCP)
                return self.dhcp.reported
            return StoreLeases(lambda: self.stores)
        bootp = self.config.bootp
        if bootp is not None and bootp.mode == "proxy":
            raise cfg.ConfigError("httpd", "check_ip", "yes",
                                  "in proxy mode massboot leases nothing: only the DHCP server's own "
                                  "process knows the addresses boot clients reported; run -H with "
                                  "the DHCP server, or set check_ip = no")
        if bootp is None:
            raise cfg.ConfigError("httpd", "check_ip", "yes",
                                  "needs [bootpd] lease_db to know which addresses massboot leased; "
                                  "add the [bootpd] section the DHCP server uses, or set check_ip = no")
        if bootp.lease_db == ":memory:":
            raise cfg.ConfigError("httpd", "check_ip", "yes",
                                  "[bootpd] lease_db = :memory: lives only in the DHCP server's "
                                  "process: give it a database file, or set check_ip = no")
        from massboot.dhcp.leases.postgresql import is_dsn, parse_dsn

        if is_dsn(bootp.lease_db):      # the shared database (README, "Several servers")
            self.lease_view = PgLeases(parse_dsn(bootp.lease_db, base_dir=self.config.base_dir))
            return self.lease_view
        self.lease_view = SqliteLeases([bootp.lease_db, *(subnet_db(bootp.lease_db, sub.name)
                                                          for sub in bootp.subnets)])
        return self.lease_view

    @property
    def http_address(self) -> str:
        return self.config.httpd.address or self.server_ip or "0.0.0.0"

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
        # a TFTP transfer holds two sockets (massboot.tftp.server._connect) and a file; an HTTP
        # connection a socket and a file
        wanted = 3 * self.config.tftp.pool_size + 256
        if self.http is not None:
            wanted += 2 * self.config.httpd.max_connections
        raise_nofile(wanted)
        for name, service, transport, address, port in self._listeners():
            try:
                service.start()
            except OSError as exc:
                # proxy mode's second DHCP socket names its own port (the PXE boot server's)
                port = getattr(exc, "bootserver_port", port)
                raise StartupError(bind_error(name, transport, address, port, exc)) from exc
        if self.admin is not None:
            try:
                self.admin.start()
            except OSError as exc:
                raise StartupError(f"admin: cannot listen on {self.admin.path}: {exc}") from exc

    def _listeners(self) -> list[tuple[str, Listener, str, str, int]]:
        """``(service, server, transport, address, port)`` of each configured listener."""
        out: list[tuple[str, Listener, str, str, int]] = []
        if self.dhcp is not None and self.config.bootp is not None:
            out.append(("dhcp", self.dhcp, "UDP", self.config.bootp.address, self.config.bootp.port))
        if self.tftp is not None:
            out.append(("tftp", self.tftp, "UDP", self.tftp_address, self.config.tftp.port))
        if self.http is not None:
            out.append(("http", self.http, "TCP", self.http_address, self.config.httpd.port))
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
        if self.admin is not None:
            self.admin.stop()
        if self.dhcp is not None:
            self.dhcp.stop(grace)
        if self.tftp is not None:
            self.tftp.stop(grace)
        if self.http is not None:
            self.http.stop(grace)
        if self.lease_view is not None:
            self.lease_view.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.files is not None:
            self.files.close()
        for store in self.stores:
            store.close()


    # ------------------------------------------------------------------ SIGHUP (README, "Reload")
    def reload(self, state_dir: str | None = None, debug: bool = False) -> bool:
        """Read the config again and apply what can change while running; True when applied.

        A config that does not load is logged (section, option, value) and the running one is
        kept. Leases, exchanges and transfers in flight are kept. What needs a restart
        (listeners, pools, the database, the state directory, the user...) is logged as such.
        """
        old = self.config
        try:
            new = cfg.load(old.path, state_dir=state_dir)
            if self.tftp is not None or (self.http is not None and new.httpd.root is None):
                cfg.check_local_root(new)
            if self.http is not None:
                cfg.check_http_root(new)
            if (new.bootp is None) != (old.bootp is None) and self.dhcp is not None:
                raise cfg.ConfigError("bootpd", None, None, "the section cannot be removed by a reload")
            if self.dhcp is not None and new.bootp is not None:
                check_http_bootfiles(new.bootp, self.run_http)
        except (cfg.ConfigError, OSError) as exc:
            log.error("reload: %s: %s; the running configuration is kept", old.path, exc)
            return False
        setup_logging(new.logger, debug)     # reopens a log file (rotation)
        for what in restart_needed(old, new):
            log.warning("reload: %s changed: takes effect at the next restart", what)
        try:
            if self.files is not None and new.tftp.filters != old.tftp.filters:
                self.files.set_filters(new.tftp.filters)
        except ValueError as exc:
            log.error("reload: %s: [filters]: %s; the running configuration is kept", old.path, exc)
            return False
        if self.tftp is not None:
            t = new.tftp
            self.tftp.tune(max_blksize=t.blocksize, max_windowsize=t.windowsize,
                           timeout_min=t.timeout_min, timeout_max=t.timeout,
                           backoff_max=t.backoff_max, retries=t.retries,
                           first_timeout=t.first_timeout, first_retries=t.first_retries,
                           max_per_client=t.max_per_client, transfer_memory=t.transfer_memory,
                           memory_budget=t.memory_budget)
        if self.http is not None:
            h = new.httpd
            self.http.tune(idle_timeout=h.idle_timeout, request_timeout=h.request_timeout,
                           send_timeout=h.send_timeout, max_request_bytes=h.max_request_bytes,
                           max_per_client=h.max_per_client)
        if self.dhcp is not None and new.bootp is not None and old.bootp is not None:
            bootp = new.bootp
            self._open_subnet_stores(bootp)
            http_acl = self.dhcp.http_acl if bootp.http == old.bootp.http else http_acl_for(bootp)
            self.dhcp.apply(bootp, subnet_stores=self.subnet_stores, http_acl=http_acl,
                            dns=self._dns(bootp))
        self.config = new
        log.info("reload: %s applied", new.path)
        return True

    # ------------------------------------------------------------------ files and privileges
    def private_paths(self) -> list[str]:
        """Files and directories massboot writes, made private (0600/0700) and handed to ``user``."""
        paths = [path for path in self.store_paths if os.path.exists(path)]
        cache = self.config.tftp.cache_dir
        if cache:
            os.makedirs(cache, mode=0o700, exist_ok=True)
            os.chmod(cache, 0o700)
            paths.append(cache)
            for top, dirs, files in os.walk(cache):
                paths.extend(os.path.join(top, name) for name in dirs + files)
        if self.admin is not None:
            paths.append(self.admin.path)
        if self.config.logger.type == "file" and self.config.logger.file:
            paths.append(self.config.logger.file)
        if self.config.state_dir != self.config.base_dir:   # its own directory, not the config's
            paths.append(self.config.state_dir)
        return paths


def server_network(config: cfg.Config) -> Any:
    """The local network the DHCP server serves (README, "Server address"; "proxyDHCP").

    Full mode: the one holding ``pool_start`` (else ``[bootpd] address``). Proxy mode:
    ``[tftpd] address``, else ``[bootpd] address``, else the one non-loopback network.

    Raises:
        NetworkDetectError: saying what to set.
    """
    from massboot.netif import detect, detect_proxy

    bootp = config.bootp
    assert bootp is not None
    if bootp.mode == "proxy":
        return detect_proxy(config.tftp.address, bootp.address)
    assert bootp.pool_start is not None
    return detect(bootp.pool_start, bootp.address)


def restart_needed(old: cfg.Config, new: cfg.Config) -> list[str]:
    """What a reload cannot apply: the settings that changed and take a restart."""
    out = []
    pairs = [("[massboot] state_dir", old.state_dir, new.state_dir),
             ("[massboot] user", old.massboot and old.massboot.user, new.massboot and new.massboot.user),
             ("[tftpd] address/port", (old.tftp.address, old.tftp.port), (new.tftp.address, new.tftp.port)),
             ("[tftpd] root", old.tftp.root, new.tftp.root),
             ("[tftpd] cache_dir/cache_size",
              (old.tftp.cache_dir, old.tftp.cache_size), (new.tftp.cache_dir, new.tftp.cache_size)),
             ("[tftpd] pool_size", old.tftp.pool_size, new.tftp.pool_size),
             ("[tftpd] processes", old.tftp.processes, new.tftp.processes),
             ("[metrics]", old.metrics, new.metrics),
             ("[httpd] address/port/root/check_ip/max_connections",
              (old.httpd.address, old.httpd.port, old.httpd.root, old.httpd.check_ip,
               old.httpd.max_connections),
              (new.httpd.address, new.httpd.port, new.httpd.root, new.httpd.check_ip,
               new.httpd.max_connections))]
    if old.bootp is not None and new.bootp is not None:
        o, n = old.bootp, new.bootp
        pairs += [("[bootpd] mode", o.mode, n.mode),
                  ("[bootpd] address/port/bootserver_port", (o.address, o.port, o.bootserver_port),
                   (n.address, n.port, n.bootserver_port)),
                  ("[bootpd] pool_start/pool_count/netmask", (o.pool_start, o.pool_count, o.netmask),
                   (n.pool_start, n.pool_count, n.netmask)),
                  ("[bootpd] lease_db", o.lease_db, n.lease_db),
                  ("[bootpd] pool_size/rcvbuf", (o.pool_size, o.rcvbuf), (n.pool_size, n.rcvbuf)),
                  ("[bootpd] notify", o.notify, n.notify),
                  ("[bootpd] offer_hold/reclaim/decline_probation", lifecycle_options(o),
                   lifecycle_options(n)),
                  ("[buggy_clients]", bool(o.buggy_clients), bool(n.buggy_clients))]
        old_subnets = {s.name: (s.pool_start, s.pool_count) for s in o.subnets}
        for sub in n.subnets:
            if sub.name in old_subnets and old_subnets[sub.name] != (sub.pool_start, sub.pool_count):
                out.append(f"[subnet:{sub.name}] pool_start/pool_count")
    out.extend(name for name, a, b in pairs if a != b)
    return out


def check_http_bootfiles(bootp: cfg.BootpConfig, run_http: bool) -> None:
    """A UEFI HTTP Boot architecture's own ``[bootfile]`` entry that is a file name needs this
    process's HTTP server to become a URL (README, "UEFI: ipxe.efi and UEFI HTTP Boot").

    A PXE twin's file name (``[bootfile] 7 = ipxe.efi``) is no error: without ``-H`` the HTTP
    twin (16) simply gets nothing, and the request is ignored, logged and counted.

    Raises:
        ConfigError: names ``[bootfile]``, the architecture and the value.
    """
    from massboot.dhcp.policy import relative_http_bootfiles

    relative = next(relative_http_bootfiles(bootp.bootfiles), None)
    if relative is not None and not run_http:
        arch, value = relative
        raise cfg.ConfigError("bootfile", str(arch), value,
                              f"a file name for UEFI HTTP Boot clients (architecture {arch}) needs "
                              "massboot's HTTP server: run with -H, or give a full http:// URL")


def http_boot_base(config: cfg.Config, server_ip: str | None, run_http: bool) -> str | None:
    """``http://ADDRESS:PORT/``, the prefix of relative HTTP Boot files: ``[httpd] address``
    (the server address when unset or ``0.0.0.0``) and ``port``; None without ``-H``."""
    from massboot.dhcp.policy import http_base

    address = config.httpd.address
    if address in (None, "0.0.0.0"):
        address = server_ip
    if not run_http or address is None:
        return None
    return http_base(address, config.httpd.port)


def lifecycle_options(bootp: cfg.BootpConfig) -> dict[str, Any]:
    """The lease stores' lifecycle settings (README, "Lease lifecycle")."""
    return {"offer_hold": bootp.offer_hold, "reclaim": bootp.reclaim,
            "decline_probation": bootp.decline_probation}


def open_lease_store(path: str, pool: list[str], static: dict[str, str], *, exclude: Iterable[str] = (),
                     lifecycle: Mapping[str, Any] | None = None,
                     scope: str = "main") -> tuple[Any, list[str]]:
    """A lease store at *path* (``:memory:``: in memory; ``postgresql://``: that database's pool
    *scope*, README "Several servers"); returns it and its files.

    The database is created ``0600`` and an existing one is made so (README, Privileges): it
    holds every client's MAC and address. *lifecycle*: :func:`lifecycle_options`.
    """
    from massboot.dhcp.leases import MemoryLeaseStore, PostgresLeaseStore, SqliteLeaseStore
    from massboot.dhcp.leases.postgresql import is_dsn

    options = dict(lifecycle or {})
    if path == ":memory:":
        return MemoryLeaseStore(pool, static, exclude, **options), []
    if is_dsn(path):
        return PostgresLeaseStore(path, pool, static, exclude, scope=scope, **options), []
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    old = os.umask(0o077)
    try:
        store = SqliteLeaseStore(path, pool, static, exclude, **options)
    finally:
        os.umask(old)
    files = [path, f"{path}-wal", f"{path}-shm"]
    for name in files:
        if os.path.exists(name):
            os.chmod(name, 0o600)
    return store, files


def subnet_db(lease_db: str, name: str) -> str:
    """The lease database of ``[subnet:NAME]``: ``leases.NAME.sqlite3`` beside the main one
    (PostgreSQL: the same database, the subnet's own scope)."""
    from massboot.dhcp.leases.postgresql import is_dsn

    if lease_db == ":memory:" or is_dsn(lease_db):
        return lease_db
    stem, ext = os.path.splitext(lease_db)
    return f"{stem}.{name}{ext}"


def http_acl_for(bootp: cfg.BootpConfig) -> Any:
    """The HTTP ACL client of ``access = http``, else None."""
    from massboot.acl import HttpAcl

    if bootp.access != "http":
        return None
    assert bootp.http is not None
    return HttpAcl.from_config(bootp.http)


def admin_server(path: str, dhcp: Any) -> Any:
    """The admin socket over the DHCP server's current scopes (README, "Operator commands")."""
    from massboot.admin import AdminScope, AdminServer, LeaseAdmin

    def scopes() -> list[AdminScope]:      # none in proxy mode: no leases
        return [AdminScope(s.name, s.store, s.network) for s in dhcp._all_scopes()]

    return AdminServer(path, LeaseAdmin(scopes, lambda: dhcp.config.static))


def tftp_server(config: cfg.Config, address: str, files: Any, events: Any, **overrides: Any) -> Any:
    """The :class:`~massboot.tftp.server.TftpServer` of ``[tftpd]``; *overrides*: constructor
    arguments that differ (a TFTP worker's socket and budget shares, :mod:`massboot.workers`)."""
    from massboot.tftp.server import TftpServer

    t = config.tftp
    kwargs: dict[str, Any] = dict(
        pool_size=t.pool_size, max_blksize=t.blocksize, max_windowsize=t.windowsize,
        timeout_min=t.timeout_min, timeout_max=t.timeout, backoff_max=t.backoff_max,
        retries=t.retries, rcvbuf=t.rcvbuf, first_timeout=t.first_timeout,
        first_retries=t.first_retries, max_per_client=t.max_per_client,
        transfer_memory=t.transfer_memory, memory_budget=t.memory_budget, fast_path=t.fast_path,
        busy_poll=t.busy_poll)
    kwargs.update(overrides)
    return TftpServer(address, t.port, files, events, **kwargs)


def drop_privileges(user: str, paths: Sequence[str]) -> None:
    """Run as *user* from now on: hand it *paths*, then setgroups, setgid, setuid (README, Privileges).

    Raises:
        StartupError: no such user, or not started as root.
    """
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"user {user!r}: no such user ([massboot] user or --user)") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return
        raise StartupError(f"user {user!r}: switching user needs massboot to be started as root")
    for path in paths:
        try:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        except FileNotFoundError:
            continue
    os.initgroups(user, entry.pw_gid)       # setgroups: the user's own groups only
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as user %s (uid %d, gid %d)", user, entry.pw_uid, entry.pw_gid)


class StartupError(Exception):
    """A service could not start; the message is for the operator, as is."""


# what else usually holds each service's port, for "address already in use"
_PORT_HOLDERS = {
    "dhcp": "another DHCP server (dnsmasq, isc-dhcp-server, kea-dhcp4) or another massboot",
    "tftp": "another TFTP server (tftpd-hpa, atftpd, dnsmasq with enable-tftp) or another massboot",
    "metrics": "another exporter or another massboot",
    "http": "another web server (nginx, apache2, lighttpd) or another massboot",
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


def raise_nofile(wanted: int) -> None:
    """Raise the soft limit on open files towards *wanted* (within the hard limit): a TFTP
    transfer holds two sockets and a file, an HTTP connection a socket and a file, and the
    usual soft limit is 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)


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
    os.umask(os.umask(0o077) | 0o077)   # what massboot creates is private (README, Privileges)
    if args.command == "leases":
        return leases_command(args)
    try:
        config = cfg.load(args.config, state_dir=args.state_dir)
        # TFTP runs, or HTTP serves the TFTP root: a missing local root is a config error
        if not args.pxe or (args.http and config.httpd.root is None):
            cfg.check_local_root(config)
        if args.http:
            cfg.check_http_root(config)
    except cfg.ConfigError as exc:
        print(f"\nError: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return check_config(config, run_dhcp=not args.tftp, run_http=args.http)
    # a SIGHUP while starting (logrotate does not know we are) is kept for once we serve,
    # instead of killing the process (README, "Reload")
    early_hup: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: early_hup.append(signum))
    setup_logging(config.logger, args.debug)
    log.info("massboot-%s", __version__)
    user = args.user or (config.massboot.user if config.massboot is not None else None)
    try:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        services = Services(config, run_dhcp=not args.tftp, run_tftp=not args.pxe, run_http=args.http,
                            debug=args.debug)
        services.start()
        if user:   # after binding and after opening every file it writes (README, Privileges)
            drop_privileges(user, services.private_paths())
        else:
            services.private_paths()
        services.launch()   # the TFTP worker processes run as the final user
        tune_gc()
    except cfg.ConfigError as exc:
        print(f"\nError: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # network detection, bind failures, lease database
        if args.debug:
            log.exception("startup failed")
        print(f"\nError: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return run_until_signal(services, reload=lambda: services.reload(args.state_dir, args.debug),
                            reload_now=bool(early_hup))


def leases_command(args: argparse.Namespace) -> int:
    """``massboot [-c FILE] leases ...`` (README, "Operator commands")."""
    from massboot import admin

    try:
        config = cfg.load(args.config, state_dir=args.state_dir)
        if config.bootp is None:
            raise cfg.ConfigError("bootpd", None, None, "missing section: no DHCP server, no leases")
        if config.bootp.mode == "proxy":
            raise cfg.ConfigError("bootpd", "mode", "proxy", "proxy mode keeps no leases (the site "
                                  "DHCP server owns the addresses)")
    except cfg.ConfigError as exc:
        print(f"\nError: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    bootp = config.bootp
    if args.leases_command == "migrate":
        return migrate_command(args, bootp)

    def offline() -> tuple[admin.LeaseAdmin, Any]:
        from massboot.dhcp.server import main_pool, subnet_pool
        from massboot.netif import detect

        if bootp.lease_db == ":memory:":
            raise SystemExit("error: lease_db = :memory:: the leases live only in the running server")
        assert bootp.pool_start is not None
        network = detect(bootp.pool_start, bootp.address)
        pool, _ = main_pool(bootp, network.address, network.netmask)
        main_store, _ = open_lease_store(bootp.lease_db, pool, bootp.static,
                                         lifecycle=lifecycle_options(bootp))
        stores = [admin.AdminScope("main", main_store, ipaddress.IPv4Network(
            f"{network.address}/{bootp.netmask or network.netmask}", strict=False))]
        for sub in bootp.subnets:
            store, _ = open_lease_store(subnet_db(bootp.lease_db, sub.name),
                                        subnet_pool(sub, bootp.static), bootp.static,
                                        lifecycle=lifecycle_options(bootp), scope=sub.name)
            stores.append(admin.AdminScope(sub.name, store, sub.network))

        def close() -> None:
            for scope in stores:
                scope.store.close()   # type: ignore[attr-defined]

        return admin.LeaseAdmin(lambda: stores, lambda: bootp.static), close

    try:
        return admin.run(args, config.admin_socket, offline, sys.stdout.write, sys.stderr.write)
    except Exception as exc:   # network detection, the database
        if args.debug:
            log.exception("leases %s failed", args.leases_command)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def migrate_command(args: argparse.Namespace, bootp: cfg.BootpConfig) -> int:
    """``massboot leases migrate --from sqlite:PATH --to postgresql://...`` (README, "Several servers")."""
    from massboot.dhcp.leases import LeaseStoreError
    from massboot.dhcp.leases.migrate import migrate
    from massboot.dhcp.leases.postgresql import is_dsn, redact

    target = args.target or (bootp.lease_db if is_dsn(bootp.lease_db) else None)
    if target is None:
        print("error: --to postgresql://... (or [bootpd] lease_db = postgresql://...)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        moved = migrate(args.source, target, scope=args.scope, replace=args.replace,
                        offer_hold=bootp.offer_hold, decline_probation=bootp.decline_probation,
                        base_dir=os.getcwd())
    except ValueError as exc:
        print(f"error: {redact(target)}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LeaseStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"migrated {moved.bindings} bindings and {moved.declined} declined addresses from "
          f"{moved.source} to {redact(moved.target)} scope {moved.scope}")
    return 0


def check_fast_path(tftp: cfg.TftpConfig) -> None:
    """``[tftpd] fast_path = on`` needs the compiled data path (README, Performance).

    Raises:
        ConfigError: names ``[tftpd] fast_path`` and the fix.
    """
    from massboot.tftp.server import fast_path_problem

    problem = fast_path_problem()
    if tftp.fast_path == "on" and problem is not None:
        raise cfg.ConfigError("tftpd", "fast_path", "on", f"{problem}; or set fast_path = auto")


def check_config(config: cfg.Config, *, run_dhcp: bool, run_http: bool = False) -> int:
    """``--check-config``: validate everything that can be validated without binding.

    The config is loaded and the TFTP root checked by :func:`main` first, as for a normal start.
    """
    from massboot.netif import NetworkDetectError

    for line in cfg.describe(config):
        print(line)
    if run_dhcp and config.bootp is not None:
        try:
            check_http_bootfiles(config.bootp, run_http)
        except cfg.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            network = server_network(config)
        except NetworkDetectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"network: {network.ifname} {network.address}/{network.prefixlen}, "
              f"server address {network.address}")
        for line in describe_http_boot(config.bootp, http_boot_base(config, network.address, run_http)):
            print(line)
        from massboot.dhcp.leases import LeaseStoreError
        from massboot.dhcp.leases.postgresql import check_database, is_dsn, parse_dsn

        if is_dsn(config.bootp.lease_db):       # README, "Several servers"
            try:
                print(check_database(parse_dsn(config.bootp.lease_db)))
            except LeaseStoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_ERROR
    try:
        check_fast_path(config.tftp)
    except cfg.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from massboot.tftp.server import fast_path_available

    compiled = config.tftp.fast_path != "off" and fast_path_available()
    print(f"tftp data path: {'compiled' if compiled else 'python'} (fast_path = {config.tftp.fast_path})")
    from massboot.dhcp.packet import CODEC, CODEC_PROBLEM

    print(f"dhcp codec: {CODEC}" + (f" ({CODEC_PROBLEM})" if CODEC_PROBLEM else ""))
    try:
        from massboot.files import FileStore

        FileStore(config.tftp.root, config.tftp.filters, base_dir=config.base_dir,
                  cache_dir=config.tftp.cache_dir).close()
    except ValueError as exc:
        print(f"error: [filters]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except cfg.ConfigError as exc:   # a cache directory that is not private
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print("config OK")
    return EXIT_OK


def describe_http_boot(bootp: cfg.BootpConfig, base: str | None) -> Iterable[str]:
    """What UEFI HTTP Boot clients get, per architecture (for ``--check-config``)."""
    from massboot.dhcp.policy import HTTP_ARCH_TWINS, select_http_bootfile

    without = []
    for arch in HTTP_ARCH_TWINS:
        url, why = select_http_bootfile(arch, bootp.bootfiles, base)
        if url is None:
            without.append(str(arch))
        else:
            yield f"http boot: arch {arch} gets {url} ({why})"
    if without:
        yield (f"http boot: arch {', '.join(without)}: no HTTP boot file, ignored (a PXE twin's "
               "file name needs -H; an HTTP client never gets the default)")


def run_until_signal(services: Services, watch_period: float = WATCH_PERIOD,
                     reload: Callable[[], Any] | None = None, reload_now: bool = False) -> int:
    """Serve until SIGTERM/SIGINT or a service dies; return the exit code (README, Command line).

    SIGHUP calls *reload* (README, "Reload"), in its own greenlet; *reload_now*: one came
    while starting, so reload at once.

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
            from massboot.logwriter import flush_all

            flush_all()            # os._exit runs no atexit: write what the log holds
            os._exit(EXIT_ERROR)
        log.info("signal %d: stopping", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    if reload is not None:
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload))
        if reload_now:
            log.info("reload: SIGHUP received while starting, reloading now")
            gevent.spawn(reload)
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

