"""Configuration: a pybootd ini file → validated, frozen dataclasses.

Both pybootd generations load unchanged (contract C1): the documented one (``[bootp]``,
``[tftp]``, ``boot_file``) and the 1.8 code one (``[bootpd]``, ``[tftpd]``, ``[bootfile]``,
``[static_dhcp]``, ``[buggy_clients]``). Everything is validated once, here, at startup: request
handling never reads the ini again. A bad value raises :class:`ConfigError` naming the section,
the option and the value; duplicates and unknown names are warnings (contract C2).
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from massboot.ident import parse_mac, parse_mac_rule, parse_uuid_rule

log = logging.getLogger(__name__)

TRUE_WORDS = frozenset("on true enable enabled yes high ok 1".split())
FALSE_WORDS = frozenset("off false disable disabled no low ko 0".split())

#: Sections of the documented generation and their 1.8 equivalents (contract C1).
SECTION_ALIASES = {"bootp": "bootpd", "tftp": "tftpd"}


class ConfigError(Exception):
    """A configuration value massboot cannot use: names section, option and value."""

    def __init__(self, section: str, option: str | None, value: str | None, reason: str) -> None:
        self.section, self.option, self.value, self.reason = section, option, value, reason
        where = f"[{section}]" + (f" {option}" if option else "")
        what = f" = {value!r}" if value is not None else ""
        super().__init__(f"{where}{what}: {reason}")


# --------------------------------------------------------------------------- typed config
@dataclass(frozen=True, slots=True)
class LoggerConfig:
    type: str = "stderr"          # stderr | stdout | file | syslog | none
    level: int = logging.INFO
    file: str | None = None


@dataclass(frozen=True, slots=True)
class SubnetConfig:
    """Settings for clients behind a DHCP relay whose ``giaddr`` lies in ``network``."""

    name: str
    network: ipaddress.IPv4Network
    pool_start: str
    pool_count: int
    gateway: str | None
    dns: tuple[str, ...]
    lease_time: int | None


@dataclass(frozen=True, slots=True)
class HttpAclConfig:
    location: str
    pxe: str
    dhcp: str
    timeout: float = 5.0
    always_check: bool = False
    mac_format: str = "dash"      # dash (documented) | colon (pybootd 1.8 on the wire)


@dataclass(frozen=True, slots=True)
class BootpConfig:
    pool_start: str
    pool_count: int = 10
    address: str = "0.0.0.0"
    port: int = 67
    access: str | None = None
    allow_simple_dhcp: bool = False
    lease_time: int = 86400
    dns: tuple[str, ...] = ()
    dns_auto: bool = False
    gateway: str | None = None
    netmask: str | None = None
    servername: str = "unknown"
    domain: str = "localdomain"
    notify: tuple[tuple[str, int], ...] = ()
    # massboot additions
    ipxe_boot_file: str | None = None
    lease_db: str = "massboot-leases.sqlite3"
    pool_size: int = 256
    rcvbuf: int = 4 << 20
    # [bootfile]: architecture (RFC 4578 number) → boot file, plus the default
    default_bootfile: str = ""
    bootfiles: dict[int, str] = field(default_factory=dict)
    # ACLs and client tables
    mac_rules: tuple[tuple[str, bool], ...] = ()
    uuid_rules: tuple[tuple[str, bool], ...] = ()
    http: HttpAclConfig | None = None
    static: dict[str, str] = field(default_factory=dict)       # "AA:BB:..." → ip
    buggy_clients: tuple[tuple[str, bool], ...] = ()
    subnets: tuple[SubnetConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class TftpConfig:
    address: str | None = None    # None: the BOOTP-detected server address
    port: int = 69
    blocksize: int | None = None  # the largest block size agreed (C11); None: up to 65464
    timeout: float = 2.0          # the longest wait before a resend
    timeout_min: float = 0.02     # the shortest (the wait adapts to the measured round trip)
    retries: int = 5
    windowsize: int = 64          # the largest RFC 7440 window agreed
    root: str = "."               # absolute local path or http(s):// URL
    pool_size: int = 1000
    rcvbuf: int = 4 << 20
    cache_dir: str | None = None
    cache_size: int = 2048 << 20  # bytes
    cache_revalidate: float = 300.0
    http_timeout: float = 10.0
    filters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    port: int = 9469
    stall_after: float = 300.0


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    base_dir: str
    logger: LoggerConfig
    bootp: BootpConfig | None
    tftp: TftpConfig
    metrics: MetricsConfig | None
    warnings: tuple[str, ...] = ()

    @property
    def remote_root(self) -> bool:
        return self.tftp.root.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- known names
KNOWN: dict[str, set[str]] = {
    "logger": {"type", "level", "file"},
    "bootpd": {"pool_start", "pool_count", "address", "port", "access", "allow_simple_dhcp",
               "lease_time", "dns", "gateway", "netmask", "servername", "domain", "notify",
               "timeout", "set_gateway", "server_name", "boot_file",
               "ipxe_boot_file", "lease_db", "pool_size", "rcvbuf"},
    "tftpd": {"address", "port", "blocksize", "timeout", "root", "timeout_min", "retries",
              "windowsize", "pool_size", "rcvbuf", "cache_dir", "cache_size", "cache_revalidate",
              "http_timeout"},
    "http": {"location", "pxe", "dhcp", "timeout", "always_check", "mac_format"},
    "httpd": {"address", "port", "root", "check_ip"},
    "metrics": {"address", "port", "stall_after"},
}
FREE_SECTIONS = {"bootfile", "mac", "uuid", "static_dhcp", "buggy_clients", "filters"}
#: Options pybootd's samples carry but pybootd never reads; accepted with a note.
DEAD_OPTIONS = {
    ("bootpd", "set_gateway"): "pybootd never read it; the router is `gateway` or the server",
    ("bootpd", "server_name"): "pybootd never read it (it reads `servername`)",
    ("bootpd", "timeout"): "pybootd never read it here; the HTTP ACL timeout is [http] timeout",
}


# --------------------------------------------------------------------------- value parsers
def parse_bool(section: str, option: str, value: str) -> bool:
    """Contract C3: pybootd's word lists; anything else is an error (pybootd read it as false)."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(section, option, value,
                      "not a boolean (use one of: " + ", ".join(sorted(TRUE_WORDS | FALSE_WORDS)) + ")")


def parse_int(section: str, option: str, value: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(section, option, value, "not an integer") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(section, option, value, f"must be between {lo} and {hi}")
    return number


def parse_float(section: str, option: str, value: str, lo: float = 0.0, hi: float | None = None) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(section, option, value, "not a number") from None
    if number < lo or (hi is not None and number > hi):
        raise ConfigError(section, option, value, f"must be between {lo} and {hi}")
    return number


def parse_ip(section: str, option: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise ConfigError(section, option, value, "not an IPv4 address") from None


def parse_size(section: str, option: str, value: str) -> int:
    """A size in bytes with an optional K/M/G suffix (powers of 1024); plain numbers are MiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*", value)
    if not m:
        raise ConfigError(section, option, value, "not a size (e.g. 2048, 512M, 4G)")
    scale = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def parse_hostport(section: str, option: str, entry: str) -> tuple[str, int]:
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(section, option, entry, "expected host:port")
    return host, parse_int(section, option, port, 1, 65535)


def arch_key(section: str, key: str) -> int:
    """``[bootfile]`` keys: ``00007`` and ``7`` alike (contract C9)."""
    if not key.strip().isdigit():
        raise ConfigError(section, key, None, "architecture keys are RFC 4578 numbers such as 00007")
    return int(key)


# --------------------------------------------------------------------------- reading
_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]")
_OPTION_RE = re.compile(r"^([^\s=:;#][^=:]*?)\s*[=:]")


def _scan_duplicates(text: str) -> list[tuple[str, str, int]]:
    """Options given twice in one section, as (section, option, line): ConfigParser merges them."""
    seen: dict[tuple[str, str], int] = {}
    dups = []
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        m = _SECTION_RE.match(line)
        if m:
            section = m.group(1).strip().lower()
            continue
        m = _OPTION_RE.match(line)
        if m and section:
            key = (SECTION_ALIASES.get(section, section), m.group(1).strip().lower())
            if key in seen:
                dups.append((key[0], key[1], number))
            seen[key] = number
    return dups


class _Reader:
    """Merged view of both generations with provenance, for conflict and unknown checks."""

    def __init__(self, parser: configparser.ConfigParser, warnings: list[str]) -> None:
        self.values: dict[str, dict[str, tuple[str, str]]] = {}   # canon section → opt → (value, origin)
        self.order: dict[str, list[str]] = {}
        self.warnings = warnings
        for section in parser.sections():
            canon = SECTION_ALIASES.get(section.lower(), section.lower())
            target = self.values.setdefault(canon, {})
            order = self.order.setdefault(canon, [])
            for option, value in parser.items(section, raw=True):
                value = value.strip()
                if option in target and target[option][0] != value:
                    prev_value, prev_origin = target[option]
                    raise ConfigError(canon, option, value,
                                      f"given twice with different values: [{prev_origin}] {option} = "
                                      f"{prev_value!r} and [{section}] {option} = {value!r}")
                if option not in target:
                    order.append(option)
                target[option] = (value, section)

    def has(self, section: str) -> bool:
        return section in self.values

    def get(self, section: str, option: str) -> str | None:
        item = self.values.get(section, {}).get(option)
        return item[0] if item is not None else None

    def items(self, section: str) -> list[tuple[str, str]]:
        sect = self.values.get(section, {})
        return [(opt, sect[opt][0]) for opt in self.order.get(section, [])]

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("config: %s", message)


def load(path: str) -> Config:
    """Read and validate *path*.

    Raises:
        ConfigError: a bad or missing value (names section, option and value).
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return loads(text, path=os.path.abspath(path))


def loads(text: str, path: str = "<string>") -> Config:
    """Validate ini *text*; relative paths are relative to ``dirname(path)`` (contract C7)."""
    warnings: list[str] = []
    parser = configparser.ConfigParser(interpolation=None, strict=False, default_section="\x00none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError(getattr(exc, "section", "?") or "?", getattr(exc, "option", None), None,
                          f"cannot parse the ini file: {exc}".replace("\n", " ")) from None
    reader = _Reader(parser, warnings)
    for section, option, line in _scan_duplicates(text):
        reader.warn(f"[{section}] {option} is given more than once (line {line}); the last value wins")
    _check_names(reader)
    base_dir = os.path.dirname(path) if path != "<string>" else os.getcwd()
    base_dir = os.path.abspath(base_dir or ".")

    logger = _logger(reader, base_dir)
    bootp = _bootp(reader, base_dir) if reader.has("bootpd") else None
    tftp = _tftp(reader, base_dir)
    metrics = _metrics(reader) if reader.has("metrics") else None
    return Config(path=path, base_dir=base_dir, logger=logger, bootp=bootp, tftp=tftp,
                  metrics=metrics, warnings=tuple(warnings))


def _check_names(reader: _Reader) -> None:
    all_sections = set(KNOWN) | FREE_SECTIONS | set(SECTION_ALIASES)
    for section in reader.values:
        if section.startswith("subnet:"):
            continue
        if section not in KNOWN and section not in FREE_SECTIONS:
            hint = difflib.get_close_matches(section, sorted(all_sections), 1)
            reader.warn(f"unknown section [{section}] is ignored"
                        + (f" (did you mean [{hint[0]}]?)" if hint else ""))
            continue
        for option in reader.order.get(section, []):
            if section in KNOWN and option not in KNOWN[section]:
                hint = difflib.get_close_matches(option, sorted(KNOWN[section]), 1)
                reader.warn(f"unknown option [{section}] {option} is ignored"
                            + (f" (did you mean {hint[0]}?)" if hint else ""))
            elif (section, option) in DEAD_OPTIONS:
                log.info("config: [%s] %s: %s", section, option, DEAD_OPTIONS[(section, option)])


LOG_LEVELS = {"debug": logging.DEBUG, "all": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL}
LOG_TYPES = {"stderr": "stderr", "stdout": "stdout", "file": "file", "syslog": "syslog",
             "unix": "syslog", "none": "none"}


def _logger(reader: _Reader, base_dir: str) -> LoggerConfig:
    kind = (reader.get("logger", "type") or "stderr").lower()
    if kind not in LOG_TYPES:
        raise ConfigError("logger", "type", kind, "expected one of " + ", ".join(LOG_TYPES))
    level_text = (reader.get("logger", "level") or "info").lower()
    if level_text not in LOG_LEVELS:
        raise ConfigError("logger", "level", level_text, "expected one of " + ", ".join(LOG_LEVELS))
    file = reader.get("logger", "file")
    if LOG_TYPES[kind] == "file":
        if not file:
            raise ConfigError("logger", "file", None, "type = file needs a file path")
        file = os.path.join(base_dir, file)
    return LoggerConfig(type=LOG_TYPES[kind], level=LOG_LEVELS[level_text], file=file)


def _dns(section: str, value: str | None) -> tuple[tuple[str, ...], bool]:
    if not value:
        return (), False
    if value.strip().lower() == "auto":
        return (), True
    return tuple(parse_ip(section, "dns", part) for part in value.split(";") if part.strip()), False


def _bootp(r: _Reader, base_dir: str) -> BootpConfig:
    s = "bootpd"
    get = r.get
    pool_start_text = get(s, "pool_start")
    if not pool_start_text:
        raise ConfigError(s, "pool_start", None, "missing: the first address of the pool is required")
    pool_start = parse_ip(s, "pool_start", pool_start_text)
    pool_count = parse_int(s, "pool_count", get(s, "pool_count") or "10", 0, 1 << 20)
    if int(ipaddress.IPv4Address(pool_start)) + pool_count > 1 << 32:
        raise ConfigError(s, "pool_count", str(pool_count), "the pool runs past 255.255.255.255")
    access = get(s, "access")
    if access is not None:
        access = access.strip().lower() or None
    if access == "none":
        access = None
    if access not in (None, "mac", "uuid", "http"):
        raise ConfigError(s, "access", access, "invalid access mode (none, mac, uuid or http)")
    if access and not r.has(access):
        raise ConfigError(s, "access", access, f"missing access section '[{access}]'")
    dns, dns_auto = _dns(s, get(s, "dns"))
    gateway = get(s, "gateway")
    netmask = get(s, "netmask")
    if netmask:
        netmask = parse_ip(s, "netmask", netmask)
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ConfigError(s, "netmask", netmask, "not a contiguous netmask") from None
    notify_text = get(s, "notify") or ""
    notify = tuple(parse_hostport(s, "notify", e) for e in notify_text.split(";") if e.strip())

    # [bootfile] (1.8) and [bootp] boot_file (documented generation) are the same setting (C1)
    bootfiles: dict[int, str] = {}
    default = get(s, "boot_file")
    for key, value in r.items("bootfile"):
        if key == "default":
            if default is not None and default != value:
                raise ConfigError("bootfile", "default", value,
                                  f"conflicts with [bootp] boot_file = {default!r}: give it once")
            default = value
        else:
            bootfiles[arch_key("bootfile", key)] = value
    if not default:
        raise ConfigError("bootfile", "default", None,
                          "missing: set [bootfile] default (or [bootp] boot_file) to the boot file name")

    lease_db = get(s, "lease_db") or "massboot-leases.sqlite3"
    if lease_db != ":memory:":
        lease_db = os.path.join(base_dir, lease_db)

    static: dict[str, str] = {}
    for key, value in r.items("static_dhcp"):
        try:
            mac = parse_mac(key)
        except ValueError:
            raise ConfigError("static_dhcp", key, value,
                              "not a MAC address (write AA-BB-CC-DD-EE-FF)") from None
        static[":".join(f"{b:02X}" for b in mac)] = parse_ip("static_dhcp", key, value)
    clash = [ip for ip in static.values() if list(static.values()).count(ip) > 1]
    if clash:
        raise ConfigError("static_dhcp", None, clash[0], "the same address is given to two MACs")

    return BootpConfig(
        pool_start=pool_start, pool_count=pool_count,
        address=parse_ip(s, "address", get(s, "address") or "0.0.0.0"),
        port=parse_int(s, "port", get(s, "port") or "67", 0, 65535),
        access=access,
        allow_simple_dhcp=parse_bool(s, "allow_simple_dhcp", get(s, "allow_simple_dhcp") or "false"),
        lease_time=parse_int(s, "lease_time", get(s, "lease_time") or "86400", 1, 0xFFFFFFFF),
        dns=dns, dns_auto=dns_auto,
        gateway=parse_ip(s, "gateway", gateway) if gateway else None,
        netmask=netmask,
        servername=get(s, "servername") or "unknown",
        domain=get(s, "domain") or "localdomain",
        notify=notify,
        ipxe_boot_file=get(s, "ipxe_boot_file") or None,
        lease_db=lease_db,
        pool_size=parse_int(s, "pool_size", get(s, "pool_size") or "256", 1, 100000),
        rcvbuf=parse_size(s, "rcvbuf", get(s, "rcvbuf") or "4M"),
        default_bootfile=default, bootfiles=bootfiles,
        mac_rules=_rules(r, "mac", parse_mac_rule, "MAC"),
        uuid_rules=_rules(r, "uuid", parse_uuid_rule, "UUID"),
        http=_http(r) if r.has("http") else None,
        static=static,
        buggy_clients=_rules(r, "buggy_clients", parse_mac_rule, "MAC"),
        subnets=_subnets(r),
    )


def _rules(r: _Reader, section: str, check: Callable[[str], object],
           what: str) -> tuple[tuple[str, bool], ...]:
    rules = []
    for key, value in r.items(section):
        try:
            check(key)
        except ValueError as exc:
            raise ConfigError(section, key, value, f"not a {what} rule: {exc}") from None
        rules.append((key, parse_bool(section, key, value)))
    return tuple(rules)


def _http(r: _Reader) -> HttpAclConfig:
    s = "http"
    location = r.get(s, "location")
    if not location:
        raise ConfigError(s, "location", None, "missing: host[:port] of the HTTP ACL server")
    if "://" in location:
        raise ConfigError(s, "location", location, "host[:port] only, without a scheme")
    mac_format = (r.get(s, "mac_format") or "dash").lower()
    if mac_format not in ("dash", "colon"):
        raise ConfigError(s, "mac_format", mac_format, "expected dash or colon")
    return HttpAclConfig(
        location=location,
        pxe=r.get(s, "pxe") or "boot",
        dhcp=r.get(s, "dhcp") or "linux",
        timeout=parse_float(s, "timeout", r.get(s, "timeout") or "5", 0.1, 600),
        always_check=parse_bool(s, "always_check", r.get(s, "always_check") or "false"),
        mac_format=mac_format,
    )


def _subnets(r: _Reader) -> tuple[SubnetConfig, ...]:
    subnets = []
    for section in r.values:
        if not section.startswith("subnet:"):
            continue
        known = {"network", "pool_start", "pool_count", "gateway", "dns", "lease_time"}
        for option in r.order[section]:
            if option not in known:
                hint = difflib.get_close_matches(option, sorted(known), 1)
                r.warn(f"unknown option [{section}] {option} is ignored"
                       + (f" (did you mean {hint[0]}?)" if hint else ""))
        net_text = r.get(section, "network")
        if not net_text:
            raise ConfigError(section, "network", None, "missing: the relay's subnet, e.g. 10.2.0.0/24")
        try:
            network = ipaddress.IPv4Network(net_text, strict=False)
        except ValueError:
            raise ConfigError(section, "network", net_text, "not an IPv4 network") from None
        start_text = r.get(section, "pool_start")
        if not start_text:
            raise ConfigError(section, "pool_start", None, "missing: the first address of this subnet's pool")
        pool_start = parse_ip(section, "pool_start", start_text)
        count = parse_int(section, "pool_count", r.get(section, "pool_count") or "10", 0, 1 << 20)
        if ipaddress.IPv4Address(pool_start) not in network or (
                count and ipaddress.IPv4Address(pool_start) + (count - 1) not in network):
            raise ConfigError(section, "pool_start", pool_start, f"the pool does not fit in {network}")
        gateway = r.get(section, "gateway")
        dns, _ = _dns(section, r.get(section, "dns"))
        lease = r.get(section, "lease_time")
        subnets.append(SubnetConfig(
            name=section.split(":", 1)[1], network=network, pool_start=pool_start, pool_count=count,
            gateway=parse_ip(section, "gateway", gateway) if gateway else None, dns=dns,
            lease_time=parse_int(section, "lease_time", lease, 1, 0xFFFFFFFF) if lease else None))
    return tuple(subnets)


def _tftp(r: _Reader, base_dir: str) -> TftpConfig:
    s = "tftpd"
    get = r.get
    root = get(s, "root") or "."
    if not root.startswith(("http://", "https://")):
        if "://" in root:
            raise ConfigError(s, "root", root, "only local paths and http:// or https:// URLs are supported")
        root = os.path.normpath(os.path.join(base_dir, root))
    blocksize = get(s, "blocksize")
    address = get(s, "address")
    cache_dir = get(s, "cache_dir")
    t_max = parse_float(s, "timeout", get(s, "timeout") or "2.0", 0.01, 255)
    t_min = parse_float(s, "timeout_min", get(s, "timeout_min") or "0.02", 0.001, 255)
    if t_min > t_max:
        raise ConfigError(s, "timeout_min", str(t_min), f"larger than timeout = {t_max}")
    return TftpConfig(
        address=parse_ip(s, "address", address) if address else None,
        port=parse_int(s, "port", get(s, "port") or "69", 0, 65535),
        blocksize=parse_int(s, "blocksize", blocksize, 8, 65464) if blocksize else None,
        timeout=t_max, timeout_min=t_min,
        retries=parse_int(s, "retries", get(s, "retries") or "5", 1, 100),
        windowsize=parse_int(s, "windowsize", get(s, "windowsize") or "64", 1, 65535),
        root=root,
        pool_size=parse_int(s, "pool_size", get(s, "pool_size") or "1000", 1, 100000),
        rcvbuf=parse_size(s, "rcvbuf", get(s, "rcvbuf") or "4M"),
        cache_dir=os.path.join(base_dir, cache_dir) if cache_dir else None,
        cache_size=parse_size(s, "cache_size", get(s, "cache_size") or "2048"),
        cache_revalidate=parse_float(s, "cache_revalidate", get(s, "cache_revalidate") or "300"),
        http_timeout=parse_float(s, "http_timeout", get(s, "http_timeout") or "10", 0.1, 600),
        filters=tuple(r.items("filters")),
    )


def _metrics(r: _Reader) -> MetricsConfig:
    s = "metrics"
    return MetricsConfig(
        address=parse_ip(s, "address", r.get(s, "address") or "127.0.0.1"),
        port=parse_int(s, "port", r.get(s, "port") or "9469", 0, 65535),
        stall_after=parse_float(s, "stall_after", r.get(s, "stall_after") or "300", 1),
    )


def pool_addresses(start: str, count: int) -> list[str]:
    """``pool_start`` … ``pool_start + count - 1`` as strings."""
    first = int(ipaddress.IPv4Address(start))
    return [str(ipaddress.IPv4Address(first + i)) for i in range(count)]


def describe(config: Config) -> Iterable[str]:
    """Human summary of what would be served (for ``--check-config``)."""
    yield f"config: {config.path}"
    b = config.bootp
    if b is None:
        yield "bootp: not configured (no [bootpd]/[bootp] section)"
    else:
        last = pool_addresses(b.pool_start, b.pool_count)[-1] if b.pool_count else None
        pool = f"{b.pool_start} .. {last} ({b.pool_count} addresses)" if last else "none (pool_count = 0)"
        yield f"bootp: listen {b.address}:{b.port}, pool {pool}, lease {b.lease_time}s"
        simple = "on" if b.allow_simple_dhcp else "off"
        yield f"bootp: access {b.access or 'none'}, allow_simple_dhcp {simple}"
        yield f"bootp: boot file default {b.default_bootfile!r}" + "".join(
            f", arch {k} {v!r}" for k, v in sorted(b.bootfiles.items()))
        if b.ipxe_boot_file:
            yield f"bootp: iPXE clients get {b.ipxe_boot_file!r}"
        if b.static:
            yield f"bootp: {len(b.static)} static lease(s)"
        for sub in b.subnets:
            yield (f"bootp: relay subnet {sub.name} {sub.network}, "
                   f"pool from {sub.pool_start} ({sub.pool_count})")
        if b.notify:
            yield "bootp: notify " + ", ".join(f"{h}:{p}" for h, p in b.notify)
        yield f"bootp: lease database {b.lease_db}"
    t = config.tftp
    yield (f"tftp: listen {t.address or '(bootp server address)'}:{t.port}, root {t.root}, "
           f"blocksize {'client choice up to 65464' if t.blocksize is None else f'up to {t.blocksize}'}")
    if config.remote_root:
        yield f"tftp: remote cache {t.cache_dir or '(temp dir)'}, max {t.cache_size >> 20} MiB"
    for pattern, target in t.filters:
        yield f"tftp: filter {pattern} -> {target}"
    if config.metrics:
        yield f"metrics: http://{config.metrics.address}:{config.metrics.port}/metrics"
    for warning in config.warnings:
        yield f"warning: {warning}"
