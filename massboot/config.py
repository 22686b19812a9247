"""Configuration: a pybootd ini file → validated, frozen dataclasses.

Both pybootd generations load unchanged (README, Configuration): the documented one (``[bootp]``,
``[tftp]``, ``boot_file``) and the 1.8 code one (``[bootpd]``, ``[tftpd]``, ``[bootfile]``,
``[static_dhcp]``, ``[buggy_clients]``). Everything is validated once, here, at startup: request
handling never reads the ini again. A bad value raises :class:`ConfigError` naming the section,
the option and the value; duplicates and unknown names are warnings.

Each section with fixed option names has one table (:class:`Section`) of :class:`Option` rows:
name, parser (with its limits), default (as ini text, parsed like a value from the file) and the
line that documents it. The table drives loading, the unknown-name warnings, the defaults of the
dataclasses below, ``--check-config``'s summary where it shows a default, and README.rst's option
tables (tests/unit/test_config.py checks that they are the table's rendering).
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import logging
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from massboot.ident import MAC_BITS, UUID_BITS, parse_mac, parse_mac_rule, parse_uuid_rule

log = logging.getLogger(__name__)

TRUE_WORDS = frozenset("on true enable enabled yes high ok 1".split())
FALSE_WORDS = frozenset("off false disable disabled no low ko 0".split())

#: Sections of the documented generation and their 1.8 equivalents (README, Configuration).
SECTION_ALIASES = {"bootp": "bootpd", "tftp": "tftpd"}
#: Sections whose keys are data (architectures, MACs, UUIDs, filter patterns), not option names.
FREE_SECTIONS = frozenset({"bootfile", "mac", "uuid", "static_dhcp", "buggy_clients", "filters"})
#: The admin socket's name in the state directory (README, "Operator commands").
ADMIN_SOCKET = "admin.sock"
#: What ``{name}`` a ``[filters]`` target may use (README, ``[filters]``).
FILTER_VARIABLES = ("filename", "mac", "ip", "uuid", "arch", "file")


class ConfigError(Exception):
    """A configuration value massboot cannot use: names section, option and value."""

    def __init__(self, section: str, option: str | None, value: str | None, reason: str) -> None:
        self.section, self.option, self.value, self.reason = section, option, value, reason
        where = f"[{section}]" + (f" {option}" if option else "")
        what = f" = {value!r}" if value is not None else ""
        super().__init__(f"{where}{what}: {reason}")


# --------------------------------------------------------------------------- value parsers
# A parser takes (section, option, text) and returns the typed value, or raises ConfigError
# naming all three. Those with limits are small frozen objects carrying them.
Parser = Callable[[str, str, str], Any]


def parse_bool(section: str, option: str, value: str) -> bool:
    """pybootd's word lists; anything else is an error (pybootd silently read it as false)."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(section, option, value,
                      "not a boolean (use one of: " + ", ".join(sorted(TRUE_WORDS | FALSE_WORDS)) + ")")


def _range_reason(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"must be between {lo:g} and {hi:g}"
    return f"must be at least {lo:g}" if lo is not None else f"must be at most {hi:g}"


def parse_int(section: str, option: str, value: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(section, option, value, "not an integer") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(section, option, value, _range_reason(lo, hi))
    return number


def parse_float(section: str, option: str, value: str, lo: float = 0.0, hi: float | None = None) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(section, option, value, "not a number") from None
    if not number >= lo or (hi is not None and number > hi):   # NaN fails the first test
        raise ConfigError(section, option, value, _range_reason(lo, hi))
    return number


@dataclass(frozen=True, slots=True)
class Int:
    """An integer within ``lo .. hi``."""

    lo: int
    hi: int

    def __call__(self, section: str, option: str, value: str) -> int:
        return parse_int(section, option, value, self.lo, self.hi)


@dataclass(frozen=True, slots=True)
class Float:
    """A number within ``lo .. hi`` (no upper bound when *hi* is None)."""

    lo: float = 0.0
    hi: float | None = None

    def __call__(self, section: str, option: str, value: str) -> float:
        return parse_float(section, option, value, self.lo, self.hi)


@dataclass(frozen=True, slots=True)
class Choice:
    """One word of *words* (any case) → its value."""

    words: Mapping[str, Any]

    def __call__(self, section: str, option: str, value: str) -> Any:
        word = value.strip().lower()
        if word not in self.words:
            raise ConfigError(section, option, value, "expected one of " + ", ".join(self.words))
        return self.words[word]


def parse_text(section: str, option: str, value: str) -> str:
    """Any text (already stripped by the reader)."""
    return value


def parse_ip(section: str, option: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise ConfigError(section, option, value, "not an IPv4 address") from None


def parse_netmask(section: str, option: str, value: str) -> str:
    mask = parse_ip(section, option, value)
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{mask}")
    except ValueError:
        raise ConfigError(section, option, mask, "not a contiguous netmask") from None
    return mask


def parse_network(section: str, option: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ConfigError(section, option, value, "not an IPv4 network") from None


def parse_networks(section: str, option: str, value: str) -> tuple[ipaddress.IPv4Network, ...]:
    """``10.0.0.0/8;192.168.5.1``: networks and single addresses, ``;``-separated."""
    return tuple(parse_network(section, option, part.strip()) for part in value.split(";") if part.strip())


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


def parse_notify(section: str, option: str, value: str) -> tuple[tuple[str, int], ...]:
    """``host:port;host:port`` (pybootd's ``notify``)."""
    return tuple(parse_hostport(section, option, e) for e in value.split(";") if e.strip())


def parse_dns(section: str, option: str, value: str) -> tuple[tuple[str, ...], bool]:
    """``a.b.c.d;e.f.g.h`` → (servers, False); ``auto`` → ((), True)."""
    if value.strip().lower() == "auto":
        return (), True
    return tuple(parse_ip(section, option, part) for part in value.split(";") if part.strip()), False


def parse_root(section: str, option: str, value: str) -> str:
    """A local path, or an ``http://`` / ``https://`` URL prefix."""
    if "://" in value and not is_url(value):
        raise ConfigError(section, option, value,
                          "only local paths and http:// or https:// URLs are supported")
    return value


def parse_location(section: str, option: str, value: str) -> str:
    """``host[:port]`` (plain HTTP, pybootd's form) or ``http(s)://host[:port]``."""
    if "://" in value and not value.strip().startswith(("http://", "https://")):
        raise ConfigError(section, option, value, "host[:port], or http:// or https://host[:port]")
    return value


def is_url(root: str) -> bool:
    """True for a remote TFTP root (README, ``[tftpd]`` root)."""
    return root.startswith(("http://", "https://"))


def arch_key(section: str, key: str) -> int:
    """``[bootfile]`` keys are RFC 4578 architecture numbers: ``00007`` and ``7`` alike."""
    if not key.strip().isdigit():
        raise ConfigError(section, key, None, "architecture keys are RFC 4578 numbers such as 00007")
    return int(key)


# --------------------------------------------------------------------------- option tables
@dataclass(frozen=True, slots=True)
class Option:
    """One option of a section: its name, how it is read, its default and its documentation.

    Attributes:
        name: the option name (lower case, as ConfigParser gives it).
        parse: ``(section, option, text) -> value``, with the limits built in.
        default: the default as ini text, parsed like a value read from the file; None: unset.
        doc: what it means (the "meaning" column of README.rst's table).
        default_doc: the "default" column when the default is not a literal value
            (``the server address``, ``(none)``...).
        missing: for a required option, why it is needed (the error when it is absent).
        ignored: accepted and never used (pybootd's samples carry it, pybootd never read it).
    """

    name: str
    parse: Parser
    default: str | None
    doc: str
    default_doc: str | None = None
    missing: str | None = None
    ignored: bool = False

    @property
    def shown_default(self) -> str:
        """The default as README.rst shows it (reStructuredText)."""
        if self.missing:
            return "(required)"
        if self.default_doc is not None:
            return self.default_doc
        return f"``{self.default}``" if self.default is not None else ""


@dataclass(frozen=True, slots=True)
class Section:
    """The option table of one section."""

    name: str
    options: tuple[Option, ...]

    def __getitem__(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    def names(self) -> list[str]:
        return [option.name for option in self.options]

    def default(self, name: str) -> Any:
        """The typed default of option *name* (what an empty section loads as)."""
        option = self[name]
        return None if option.default is None else option.parse(self.name, name, option.default)

    def read(self, reader: _Reader, section: str | None = None) -> dict[str, Any]:
        """Every used option's value: parsed from the file, else from its default (None when unset).

        An empty value counts as unset, as pybootd's ``get(..) or default`` did. Ignored options
        are left out.
        """
        section = section or self.name
        values: dict[str, Any] = {}
        for option in self.options:
            if option.ignored:
                continue
            text = reader.get(section, option.name) or option.default
            if text is None:
                if option.missing:
                    raise ConfigError(section, option.name, None, f"missing: {option.missing}")
                values[option.name] = None
            else:
                values[option.name] = option.parse(section, option.name, text)
        return values


LOG_LEVELS = {"debug": logging.DEBUG, "all": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL}
LOG_TYPES = {"stderr": "stderr", "stdout": "stdout", "file": "file", "syslog": "syslog",
             "unix": "syslog", "none": "none"}
ACCESS_MODES = {"none": None, "mac": "mac", "uuid": "uuid", "http": "http"}
_NEVER_READ = "in pybootd's samples, never read by pybootd"

LOGGER = Section("logger", (
    Option("type", Choice(LOG_TYPES), "stderr",
           "``stderr`` (with the time), ``stdout``, ``file``, ``syslog`` (or ``unix``: ``/dev/log``), "
           "``none``"),
    Option("level", Choice(LOG_LEVELS), "info",
           "``debug`` (or ``all``), ``info``, ``warning``, ``error``, ``critical``"),
    Option("file", parse_text, None, "the log file, for ``type = file``"),
))

#: ``[bootpd] mode`` (README, "proxyDHCP"): ``full`` hands out addresses, ``proxy`` only boot information
MODES = {"full": "full", "proxy": "proxy"}
#: the options and sections that hand out addresses: an error in proxy mode, where the site DHCP
#: server owns the addresses (README, "proxyDHCP")
ADDRESS_OPTIONS = ("pool_start", "pool_count", "lease_time", "gateway", "dns", "netmask", "lease_db",
                   "offer_hold", "reclaim", "decline_probation", "probe", "probe_timeout",
                   "allow_simple_dhcp")
ADDRESS_SECTIONS = ("static_dhcp",)

BOOTPD = Section("bootpd", (
    Option("mode", Choice(MODES), "full",
           "*massboot*: ``full`` hands out addresses and boot information; ``proxy`` is a "
           "proxyDHCP server beside the site's DHCP server: boot information only, to PXE clients "
           "(README, proxyDHCP)"),
    Option("pool_start", parse_ip, None,
           "first address of the pool; also picks the network and the server address (below); "
           "not in proxy mode", default_doc="(required)"),
    Option("pool_count", Int(0, 1 << 20), "10",
           "addresses in the pool; ``0``: only ``[static_dhcp]`` clients"),
    Option("address", parse_ip, "0.0.0.0",
           "address the DHCP socket binds to (a unicast address receives only relayed, unicast requests)"),
    Option("port", Int(0, 65535), "67", "DHCP port"),
    Option("proxy_offer", Choice({"redirect": "redirect", "bootfile": "bootfile"}), "redirect",
           "*massboot*: proxy mode's OFFER: ``redirect`` names no boot file, so the ROM asks the "
           "PXE boot server port from the address it got and massboot learns that address "
           "(dnsmasq's way for UEFI); ``bootfile`` puts the boot file in the OFFER (smee's way), "
           "for ROMs that never ask on 4011"),
    Option("bootserver_port", Int(0, 65535), "4011",
           "*massboot*: proxy mode's PXE boot server port, where ROMs send their REQUEST after the "
           "proxy OFFER (PXE 2.1 §2.2.1: 4011)"),
    Option("access", Choice(ACCESS_MODES), None,
           "``none``, ``mac``, ``uuid`` or ``http``: see ``[mac]``, ``[uuid]`` and ``[http]`` below",
           default_doc="(none)"),
    Option("allow_simple_dhcp", parse_bool, "off",
           "serve clients that did not start with a PXE request, and plain BOOTP clients"),
    Option("lease_time", Int(1, 0xFFFFFFFF), "86400",
           "lease time in seconds (option 51; T1/T2 at 1/2 and 7/8, RFC 2131 §4.4.5)"),
    Option("dns", parse_dns, None,
           "``a.b.c.d;e.f.g.h`` or ``auto`` (``/etc/resolv.conf``, else the server): one option 6 of "
           "4×N bytes", default_doc="(not sent)"),
    Option("gateway", parse_ip, None, "router (option 3)", default_doc="the server address"),
    Option("netmask", parse_netmask, None, "subnet mask (option 1) and broadcast address",
           default_doc="the detected mask"),
    Option("servername", parse_text, "unknown", "with ``domain``: the BOOTP ``sname`` field"),
    Option("domain", parse_text, "localdomain", "see ``servername``"),
    Option("notify", parse_notify, None, "``host:port;host:port``: UDP notifications (below)",
           default_doc="(none)"),
    Option("boot_file", parse_text, None, "documented generation: the same as ``[bootfile] default``"),
    Option("ipxe_boot_file", parse_text, None,
           "*massboot*: what an iPXE client (user class ``iPXE``) gets instead, a file name or a URL; "
           "breaks the iPXE→iPXE chainload loop", default_doc="(none)"),
    Option("lease_db", parse_text, "massboot-leases.sqlite3",
           "*massboot*: the lease database (SQLite, WAL); a relative path is relative to "
           "``[massboot] state_dir``; created ``0600``; ``:memory:`` keeps leases in memory only; "
           "``postgresql://USER@HOST:PORT/DB?password_file=PATH``: one pool shared by several "
           "servers (README, Several servers; the password from that file or ``PGPASSWORD``, "
           "never in the URL)",
           default_doc="in ``state_dir``"),
    Option("pool_size", Int(1, 100000), "256", "*massboot*: DHCP exchanges handled at once; when all "
           "are busy the read loop waits for one up to 0.5 s (a burst waits in ``rcvbuf``), then "
           "drops and counts (``pool_full``); as many exchanges may wait on ICMP probes, in a "
           "pool of their own (full: ``probe_busy``)"),
    Option("rcvbuf", parse_size, "4M",
           "*massboot*: socket receive buffer, sized for a burst of a thousand DISCOVERs (as root it may "
           "exceed ``net.core.rmem_max``)"),
    Option("offer_hold", Float(1, 3600), "60",
           "*massboot*: seconds an OFFER holds its address without a REQUEST; then the address is "
           "free again (README, Lease lifecycle)"),
    Option("reclaim", Choice({"expired": "expired", "never": "never"}), "expired",
           "*massboot*: when the pool is full, ``expired`` gives a new client the address of the "
           "binding that expired longest ago; ``never`` keeps pybootd's never-reassign pool"),
    Option("decline_probation", Float(0, 10 * 365 * 86400), "86400",
           "*massboot*: seconds an address declined by its holder (RFC 2131 §4.3.3) is set aside"),
    Option("probe", parse_bool, "on",
           "*massboot*: ping (ICMP echo) a reclaimed or returned address before offering it; one "
           "that answers is set aside for 10 minutes"),
    Option("probe_timeout", Float(0.01, 10), "0.5", "*massboot*: seconds to wait for the echo reply"),
    Option("relays", parse_networks, None,
           "*massboot*: ``10.0.0.0/8;192.168.5.1``: the addresses relayed requests (``giaddr`` set) "
           "may come from; others are dropped and counted (``relay_not_allowed``)",
           default_doc="(any)"),
    Option("max_hops", Int(0, 16), "4", "*massboot*: requests with more BOOTP ``hops`` are dropped and "
           "counted (``too_many_hops``; RFC 1542 §4.1.1: 4 by default, 16 at most)"),
    Option("max_clients", Int(1, 10_000_000), "100000",
           "*massboot*: client records kept (PXE/OS state, UUID, architecture), made only for a "
           "request that passed the ACLs; the least recently seen goes first"),
    Option("server_name", parse_text, None,
           f"{_NEVER_READ} (it reads ``servername``): accepted and ignored", ignored=True),
    Option("set_gateway", parse_text, None,
           f"{_NEVER_READ} (the router is ``gateway``, else the server): accepted and ignored",
           ignored=True),
    Option("timeout", Float(0.1, 600), None,
           "documented generation: the HTTP ACL timeout, used when ``[http] timeout`` is absent (both "
           "with different values: an error)", default_doc="(none)"),
))

HTTP = Section("http", (
    Option("location", parse_location, None, "``host[:port]`` of the ACL web server (plain HTTP), or "
           "``https://host[:port]`` (TLS, verified with the CA bundle of requests)",
           missing="host[:port] of the HTTP ACL server"),
    Option("pxe", parse_text, "boot", "path asked for PXE-phase requests"),
    Option("dhcp", parse_text, "linux", "path asked for OS-phase requests"),
    Option("timeout", Float(0.1, 600), "5", "seconds for the whole request (connect and body)"),
    Option("always_check", parse_bool, "off", "ask on every request instead of on phase changes only"),
    Option("max_calls", Int(1, 10000), "32",
           "*massboot*: calls to the ACL server at once, in their own pool; a request that needs one "
           "more is dropped and counted (``acl_busy``), the client retries"),
    Option("cache_ttl", Float(0, 3600), "30",
           "*massboot*: seconds an allowed or denied verdict answers the same question again "
           "(``0``: ask every time); errors are not kept"),
    Option("ca_file", parse_text, None,
           "*massboot*: PEM file of the CA certificates an ``https://`` ACL server is verified "
           "with (relative to the config directory); unset: the CA bundle of requests",
           default_doc="(requests' bundle)"),
    Option("mac_format", Choice({"dash": "dash", "colon": "colon"}), "dash",
           "*massboot*: ``dash`` sends the documented query ``?mac=AA-BB-CC-DD-EE-FF&uuid=...``; "
           "``colon`` sends pybootd 1.8's on-wire form ``?mac=AA%3ABB%3A...&uuid=...&ip=...``"),
))

#: ``[subnet:NAME]`` sections (massboot): clients behind a DHCP relay (RFC 2131 §4.1, giaddr).
SUBNET = Section("subnet:NAME", (
    Option("network", parse_network, None, "the relay's subnet, e.g. ``10.2.0.0/24``",
           missing="the relay's subnet, e.g. 10.2.0.0/24"),
    Option("pool_start", parse_ip, None, "first address of this subnet's pool",
           missing="the first address of this subnet's pool"),
    Option("pool_count", Int(0, 1 << 20), "10", "addresses in it"),
    Option("gateway", parse_ip, None, "router (option 3) for this subnet", default_doc="(none)"),
    Option("dns", parse_dns, None, "DNS servers for this subnet", default_doc="``[bootpd] dns``"),
    Option("lease_time", Int(1, 0xFFFFFFFF), None, "lease time for this subnet",
           default_doc="``[bootpd]``'s"),
))

TFTPD = Section("tftpd", (
    Option("address", parse_ip, None, "TFTP bind address (``0.0.0.0`` with ``-t`` when unset)",
           default_doc="the server address"),
    Option("port", Int(0, 65535), "69", "TFTP port"),
    Option("root", parse_root, ".",
           "a local directory (it must exist, unless ``-p``), or an ``http://``/``https://`` URL "
           "prefix (remote root, through the shared cache)", default_doc="the config directory"),
    Option("blocksize", Int(8, 65464), None,
           "the largest block size agreed; unset: what the client asks, up to 65464 (RFC 2348); "
           "without a ``blksize`` option blocks are 512 bytes (RFC 1350)",
           default_doc="(client's choice)"),
    Option("timeout", Float(0.01, 255), "2.0",
           "the longest wait before a resend while the round trip is known, in seconds (the "
           "wait adapts to the round trip); after losses it doubles up to ``backoff_max``; a "
           "client's RFC 2349 ``timeout`` up to ``backoff_max`` is used as it is"),
    Option("backoff_max", Float(0.01, 255), "6.0",
           "*massboot*: the longest wait a resend backs off to while nothing comes back (at "
           "least ``timeout``): longer than the clients' own timers (atftp: 5 s), so that a "
           "client whose ACK was lost gets to resend it"),
    Option("timeout_min", Float(0.001, 255), "0.02",
           "*massboot*: the shortest; the wait adapts to the round trip measured on each transfer"),
    Option("retries", Int(1, 100), "5", "*massboot*: resends without progress before giving up"),
    Option("windowsize", Int(1, 65535), "64", "*massboot*: the largest RFC 7440 window agreed"),
    Option("first_timeout", Float(0.1, 255), "6.0", "*massboot*: the wait before resending an "
           "OACK not answered yet, longer than the clients' own timers (a second OACK aborts "
           "atftp, whose timer is 5 s); a DATA 1 is resent after at most 1 s. Until its first ACK "
           "a client's address is unproven (maybe forged)"),
    Option("first_retries", Int(0, 100), "2",
           "*massboot*: resends of the first answer; then the transfer is dropped without an ERROR"),
    Option("max_per_client", Int(1, 100000), "8",
           "*massboot*: transfers one IP address may run at once; more get ERROR 0"),
    Option("transfer_memory", parse_size, "1M",
           "*massboot*: the most one transfer's window may buffer (``windowsize`` × (``blksize`` "
           "+ 4)); a larger ask is answered with a smaller window, then block size"),
    Option("memory_budget", parse_size, "256M",
           "*massboot*: the most all transfers' windows may buffer; a request finding it spent "
           "is dropped (the client retries)"),
    Option("pool_size", Int(1, 100000), "1000",
           "*massboot*: transfers served at once; while all run, new requests are dropped (the "
           "clients retry)"),
    Option("rcvbuf", parse_size, "4M", "*massboot*: receive buffer of the TFTP listener"),
    Option("processes", Int(1, 64), "1",
           "*massboot*: TFTP worker processes sharing the port (``SO_REUSEPORT``), each client IP "
           "always served by the same one; ``pool_size`` and ``memory_budget`` are split among "
           "them (README, \"TFTP worker processes\"); a change needs a restart"),
    Option("fast_path", Choice({"auto": "auto", "on": "on", "off": "off"}), "auto",
           "*massboot*: the compiled TFTP data path (README, Performance): ``auto`` uses it when "
           "it was built at install (gcc and python3-dev there), ``on`` requires it (else exit "
           "code 2), ``off`` runs the pure-Python path; read at start, not at a reload"),
    Option("busy_poll", Int(0, 1000), "20",
           "*massboot*: microseconds the compiled data path keeps polling the transfers' sockets "
           "after serving a wake-up, before the event loop may sleep, while 8 or more transfers "
           "run; adapts down when nothing comes; also how long a storm scan lasts once no "
           "transfer has a datagram; ``0``: neither (README, \"TFTP busy poll\"); "
           "read at start, not at a reload"),
    Option("cache_dir", parse_text, None,
           "*massboot*: where remote files are cached; created ``0700``, it must belong to "
           "massboot's user and not be writable by group or others (else exit code 2)",
           default_doc="``<state_dir>/cache``"),
    Option("cache_size", parse_size, "2048",
           "*massboot*: cache bound, in MiB or with a suffix (``512M``, ``4G``...), counting files "
           "being read and downloads in flight; least recently used files go first, and a "
           "download that cannot fit waits up to ``http_timeout`` then is refused"),
    Option("max_downloads", Int(1, 1000), "8",
           "*massboot*: upstream downloads at once; a request needing one more waits up to "
           "``http_timeout`` then is refused (error 0)"),
    Option("cache_revalidate", Float(0), "300",
           "*massboot*: seconds after which a cached file is revalidated with the mirror (ETag / "
           "Last-Modified)"),
    Option("http_timeout", Float(0.1, 600), "10", "*massboot*: seconds before a silent mirror is an error"),
))

def parse_local_root(section: str, option: str, value: str) -> str:
    """A local directory (``[httpd] root``); a URL is refused: the TFTP root's mirror is served,
    through the one cache, when ``root`` is unset."""
    if "://" in value:
        raise ConfigError(section, option, value,
                          "a local directory only; to serve a mirror, leave [httpd] root unset: the "
                          "[tftpd] root (local or URL) is then served through the same cache")
    return value


#: pybootd's ``-H`` file server (README, "HTTP boot"); pybootd's four options keep their
#: names, defaults and meaning, massboot's bounds follow.
HTTPD = Section("httpd", (
    Option("address", parse_ip, None, "HTTP bind address (``0.0.0.0`` without the DHCP server "
           "when unset)", default_doc="the server address"),
    Option("port", Int(0, 65535), "80", "HTTP port"),
    Option("root", parse_local_root, None,
           "a local directory served over HTTP; unset: the ``[tftpd]`` root (local or URL) is "
           "served, through the same file store and cache as TFTP. ``[filters]`` and confinement "
           "apply either way", default_doc="the TFTP root"),
    Option("check_ip", parse_bool, "yes",
           "only clients whose address massboot leased (bound, static, reserved, or expired and "
           "not reclaimed yet) may download; others get ``401``. Read from the lease store, also "
           "with ``-t``"),
    Option("max_connections", Int(1, 100000), "1024",
           "*massboot*: connections served at once; when all are taken, the one idle longest "
           "(between requests) is closed for the newcomer; with none idle the newcomer gets "
           "``503`` (counted)"),
    Option("max_per_client", Int(1, 100000), "32",
           "*massboot*: connections one address may hold; one more gets ``503`` (counted)"),
    Option("idle_timeout", Float(0.1, 3600), "30",
           "*massboot*: seconds a connection may wait for its next request (keep-alive)"),
    Option("request_timeout", Float(0.1, 600), "10",
           "*massboot*: seconds a request head may take to arrive once begun; then ``408``"),
    Option("send_timeout", Float(0.1, 3600), "30",
           "*massboot*: seconds a client may read nothing of a response before it is dropped"),
    Option("max_request_bytes", Int(256, 1 << 20), "8192",
           "*massboot*: the largest request head (request line and headers); larger: ``431`` "
           "(``414`` when the request line alone is too long)"),
))

METRICS = Section("metrics", (
    Option("address", parse_ip, "127.0.0.1", "address of the HTTP endpoint"),
    Option("port", Int(0, 65535), "9469", "its port"),
    Option("stall_after", Float(1), "300", "seconds without progress before a client counts as stalled"),
    Option("clients_page", Int(1, 1000000), "1000",
           "``/clients`` records per page when the request gives no ``limit`` (the largest ``limit``)"),
    Option("max_connections", Int(1, 10000), "32",
           "HTTP connections served at once; one more is answered ``503`` and closed (counted)"),
    Option("idle_timeout", Float(0.1, 3600), "30",
           "seconds a connection may stay silent before it is closed"),
))

#: ``[massboot]`` (massboot only): where it keeps its state, and whom it runs as.
MASSBOOT = Section("massboot", (
    Option("state_dir", parse_text, None,
           "the state directory: the lease database, the remote-file cache and the admin socket "
           "(``admin.sock``, see \"Operator commands\") live here; relative to the config "
           "directory; ``--state-dir`` overrides it", default_doc="the config directory"),
    Option("user", parse_text, None,
           "started as root, run as this user (and its group) once the ports are bound and the "
           "files opened; ``--user`` overrides it", default_doc="(stay as started)"),
))

#: Every section with fixed option names, by (canonical) name; ``[subnet:NAME]`` uses SUBNET.
TABLES: dict[str, Section] = {s.name: s for s in (MASSBOOT, LOGGER, BOOTPD, TFTPD, HTTP, HTTPD, METRICS)}


def table_for(section: str) -> Section | None:
    """The option table of *section* (a canonical name), None for free and unknown sections."""
    return SUBNET if section.startswith("subnet:") else TABLES.get(section)


# --------------------------------------------------------------------------- parsed rules
@dataclass(frozen=True, slots=True)
class AclRule:
    """One ``[mac]``, ``[uuid]`` or ``[buggy_clients]`` entry, parsed once at load.

    An identifier ``x`` (a MAC as a 48-bit integer, a UUID as a 128-bit one) matches when
    ``x & mask == value``. A mask covering all ``bits`` makes the rule an exact key.

    Attributes:
        key: the key as written (ConfigParser lower-cases it).
        value: the identifier bits that must match (already masked).
        mask: which bits are compared.
        allowed: the entry's boolean.
        bits: 48 for MACs, 128 for UUIDs.
    """

    key: str
    value: int
    mask: int
    allowed: bool
    bits: int

    @classmethod
    def mac(cls, key: str, allowed: bool) -> AclRule:
        """A ``[mac]``/``[buggy_clients]`` entry (``AA-BB-CC-DD-EE-FF``, ``AA-BB-CC/24``).

        Raises ValueError for a key :func:`massboot.ident.parse_mac_rule` rejects."""
        return cls(key, *parse_mac_rule(key), allowed, MAC_BITS)

    @classmethod
    def uuid(cls, key: str, allowed: bool) -> AclRule:
        """A ``[uuid]`` entry (``UUID`` or ``UUID/UUIDMASK``): ValueError when it is not one."""
        return cls(key, *parse_uuid_rule(key), allowed, UUID_BITS)

    @property
    def exact(self) -> bool:
        return self.mask == (1 << self.bits) - 1


# --------------------------------------------------------------------------- typed config
@dataclass(frozen=True, slots=True)
class LoggerConfig:
    type: str = LOGGER.default("type")      # stderr | stdout | file | syslog | none
    level: int = LOGGER.default("level")
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
    pxe: str = HTTP.default("pxe")
    dhcp: str = HTTP.default("dhcp")
    timeout: float = HTTP.default("timeout")
    always_check: bool = HTTP.default("always_check")
    mac_format: str = HTTP.default("mac_format")   # dash (documented) | colon (pybootd 1.8 on the wire)
    max_calls: int = HTTP.default("max_calls")
    cache_ttl: float = HTTP.default("cache_ttl")
    ca_file: str | None = None                     # an https:// server's CA certificates (PEM)


@dataclass(frozen=True, slots=True)
class BootpConfig:
    pool_start: str | None          # None only in proxy mode
    mode: str = BOOTPD.default("mode")
    proxy_offer: str = BOOTPD.default("proxy_offer")
    bootserver_port: int = BOOTPD.default("bootserver_port")
    pool_count: int = BOOTPD.default("pool_count")
    address: str = BOOTPD.default("address")
    port: int = BOOTPD.default("port")
    access: str | None = None
    allow_simple_dhcp: bool = BOOTPD.default("allow_simple_dhcp")
    lease_time: int = BOOTPD.default("lease_time")
    dns: tuple[str, ...] = ()
    dns_auto: bool = False
    gateway: str | None = None
    netmask: str | None = None
    servername: str = BOOTPD.default("servername")
    domain: str = BOOTPD.default("domain")
    domain_explicit: bool = False     # ``domain`` given in the file: sent as option 15 when asked
    notify: tuple[tuple[str, int], ...] = ()
    # massboot additions
    ipxe_boot_file: str | None = None
    lease_db: str = BOOTPD.default("lease_db")
    pool_size: int = BOOTPD.default("pool_size")
    rcvbuf: int = BOOTPD.default("rcvbuf")
    max_clients: int = BOOTPD.default("max_clients")
    relays: tuple[ipaddress.IPv4Network, ...] | None = None    # None: any relay
    max_hops: int = BOOTPD.default("max_hops")
    offer_hold: float = BOOTPD.default("offer_hold")
    reclaim: str = BOOTPD.default("reclaim")                 # expired | never
    decline_probation: float = BOOTPD.default("decline_probation")
    probe: bool = BOOTPD.default("probe")
    probe_timeout: float = BOOTPD.default("probe_timeout")
    # [bootfile]: architecture (RFC 4578 number) → boot file, plus the default
    default_bootfile: str = ""
    bootfiles: dict[int, str] = field(default_factory=dict)
    # ACLs and client tables, parsed
    mac_rules: tuple[AclRule, ...] = ()
    uuid_rules: tuple[AclRule, ...] = ()
    http: HttpAclConfig | None = None
    static: dict[str, str] = field(default_factory=dict)       # "AA:BB:..." → ip
    buggy_clients: tuple[AclRule, ...] = ()
    subnets: tuple[SubnetConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class TftpConfig:
    address: str | None = None    # None: the BOOTP-detected server address
    port: int = TFTPD.default("port")
    blocksize: int | None = None  # the largest block size agreed; None: up to 65464 (RFC 2348)
    timeout: float = TFTPD.default("timeout")            # the longest wait before a resend
    backoff_max: float = TFTPD.default("backoff_max")    # the longest after losses (back-off)
    timeout_min: float = TFTPD.default("timeout_min")    # the shortest (adapts to the round trip)
    retries: int = TFTPD.default("retries")
    windowsize: int = TFTPD.default("windowsize")        # the largest RFC 7440 window agreed
    first_timeout: float = TFTPD.default("first_timeout")  # before the first ACK (unproven peer)
    first_retries: int = TFTPD.default("first_retries")
    max_per_client: int = TFTPD.default("max_per_client")
    transfer_memory: int = TFTPD.default("transfer_memory")  # bytes, one window
    memory_budget: int = TFTPD.default("memory_budget")      # bytes, all windows
    root: str = TFTPD.default("root")                    # absolute local path or http(s):// URL
    pool_size: int = TFTPD.default("pool_size")
    rcvbuf: int = TFTPD.default("rcvbuf")
    processes: int = TFTPD.default("processes")          # TFTP worker processes (massboot.workers)
    fast_path: str = TFTPD.default("fast_path")          # auto | on | off (compiled data path)
    busy_poll: int = TFTPD.default("busy_poll")          # µs of busy poll in a storm (0: off)
    cache_dir: str | None = None
    cache_size: int = TFTPD.default("cache_size")        # bytes
    max_downloads: int = TFTPD.default("max_downloads")
    cache_revalidate: float = TFTPD.default("cache_revalidate")
    http_timeout: float = TFTPD.default("http_timeout")
    filters: tuple[tuple[str, str], ...] = ()            # (pattern, target), checked at load


@dataclass(frozen=True, slots=True)
class HttpdConfig:
    """``[httpd]`` (README, "HTTP boot"); used with ``-H``."""

    address: str | None = None    # None: the BOOTP-detected server address
    port: int = HTTPD.default("port")
    root: str | None = None       # absolute local directory; None: the TFTP root's file store
    check_ip: bool = HTTPD.default("check_ip")
    max_connections: int = HTTPD.default("max_connections")
    max_per_client: int = HTTPD.default("max_per_client")
    idle_timeout: float = HTTPD.default("idle_timeout")
    request_timeout: float = HTTPD.default("request_timeout")
    send_timeout: float = HTTPD.default("send_timeout")
    max_request_bytes: int = HTTPD.default("max_request_bytes")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = METRICS.default("address")
    port: int = METRICS.default("port")
    stall_after: float = METRICS.default("stall_after")
    clients_page: int = METRICS.default("clients_page")
    max_connections: int = METRICS.default("max_connections")
    idle_timeout: float = METRICS.default("idle_timeout")


@dataclass(frozen=True, slots=True)
class MassbootConfig:
    """``[massboot]``: the state directory (absolute) and the user to run as."""

    state_dir: str
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    base_dir: str
    logger: LoggerConfig
    bootp: BootpConfig | None
    tftp: TftpConfig
    metrics: MetricsConfig | None
    warnings: tuple[str, ...] = ()
    massboot: MassbootConfig | None = None   # None only for a Config built by hand: see state_dir
    httpd: HttpdConfig = HttpdConfig()

    @property
    def state_dir(self) -> str:
        """Where the lease database, the cache and the admin socket live (README, ``[massboot]``)."""
        return self.massboot.state_dir if self.massboot is not None else self.base_dir

    @property
    def admin_socket(self) -> str:
        """The admin socket's path (README, "Operator commands")."""
        return os.path.join(self.state_dir, ADMIN_SOCKET)

    @property
    def remote_root(self) -> bool:
        return is_url(self.tftp.root)


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


def load(path: str, *, state_dir: str | None = None) -> Config:
    """Read and validate *path*; *state_dir* (``--state-dir``) overrides ``[massboot] state_dir``.

    Raises:
        ConfigError: a bad or missing value (names section, option and value).
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return loads(text, path=os.path.abspath(path), state_dir=state_dir)


def loads(text: str, path: str = "<string>", *, state_dir: str | None = None) -> Config:
    """Validate ini *text*; relative paths are relative to ``dirname(path)`` (README, Configuration).

    The lease database and the cache directory, when relative or unset, go to the state
    directory: *state_dir*, else ``[massboot] state_dir``, else the config directory.
    """
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

    main = MASSBOOT.read(reader)
    main["state_dir"] = os.path.abspath(os.path.join(base_dir, state_dir or main["state_dir"] or "."))
    massboot = MassbootConfig(**main)
    logger = _logger(reader, base_dir)
    bootp = _bootp(reader, base_dir, massboot.state_dir) if reader.has("bootpd") else None
    tftp = _tftp(reader, base_dir, massboot.state_dir)
    metrics = MetricsConfig(**METRICS.read(reader)) if reader.has("metrics") else None
    httpd = _httpd(reader, base_dir)
    return Config(path=path, base_dir=base_dir, logger=logger, bootp=bootp, tftp=tftp,
                  metrics=metrics, warnings=tuple(warnings), massboot=massboot, httpd=httpd)


def _check_names(reader: _Reader) -> None:
    all_sections = set(TABLES) | FREE_SECTIONS | set(SECTION_ALIASES)
    for section in reader.values:
        table = table_for(section)
        if table is None:
            if section not in FREE_SECTIONS:
                hint = difflib.get_close_matches(section, sorted(all_sections), 1)
                reader.warn(f"unknown section [{section}] is ignored"
                            + (f" (did you mean [{hint[0]}]?)" if hint else ""))
            continue
        known = table.names()
        for option in reader.order.get(section, []):
            if option not in known:
                hint = difflib.get_close_matches(option, sorted(known), 1)
                reader.warn(f"unknown option [{section}] {option} is ignored"
                            + (f" (did you mean {hint[0]}?)" if hint else ""))
            elif table[option].ignored:
                log.info("config: [%s] %s: %s", section, option, table[option].doc.replace("``", ""))


def _logger(reader: _Reader, base_dir: str) -> LoggerConfig:
    v = LOGGER.read(reader)
    if v["type"] == "file":
        if not v["file"]:
            raise ConfigError("logger", "file", None, "type = file needs a file path")
        v["file"] = os.path.join(base_dir, v["file"])
    return LoggerConfig(**v)


def _is_dsn(value: str) -> bool:
    from massboot.dhcp.leases.postgresql import is_dsn

    return is_dsn(value)


def _lease_dsn(value: str, base_dir: str) -> str:
    """``lease_db = postgresql://...``: checked here (README, "Several servers"); a relative
    ``password_file`` is made absolute (relative to the config file). The value is never shown
    with a password in it."""
    import urllib.parse

    from massboot.dhcp.leases.postgresql import parse_dsn, redact

    try:
        target = parse_dsn(value, base_dir=base_dir)
    except ValueError as exc:
        raise ConfigError("bootpd", "lease_db", redact(value), str(exc)) from None
    if target.password_file is not None:
        if not os.access(target.password_file, os.R_OK):
            raise ConfigError("bootpd", "lease_db", value,
                              f"password_file {target.password_file} cannot be read")
        parts = urllib.parse.urlsplit(value)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, target.password_file if k == "password_file" else v) for k, v in query]
        value = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))
    return value


def _bootp(r: _Reader, base_dir: str, state_dir: str) -> BootpConfig:
    s = "bootpd"
    v = BOOTPD.read(r)
    v["domain_explicit"] = bool(r.get(s, "domain"))
    http = _http_acl(r, v.pop("timeout"), base_dir)
    pool_start, pool_count, access = v["pool_start"], v["pool_count"], v["access"]
    if v["mode"] == "proxy":
        _check_proxy(r)
    elif pool_start is None:
        raise ConfigError(s, "pool_start", None, "missing: the first address of the pool is required "
                          "(or mode = proxy beside another DHCP server)")
    elif int(ipaddress.IPv4Address(pool_start)) + pool_count > 1 << 32:
        raise ConfigError(s, "pool_count", str(pool_count), "the pool runs past 255.255.255.255")
    if access and not r.has(access):
        raise ConfigError(s, "access", access, f"missing access section '[{access}]'")
    v["dns"], v["dns_auto"] = v["dns"] or ((), False)
    v["notify"] = v["notify"] or ()
    if _is_dsn(v["lease_db"]):
        v["lease_db"] = _lease_dsn(v["lease_db"], base_dir)
    elif v["lease_db"] != ":memory:":
        v["lease_db"] = os.path.join(state_dir, v["lease_db"])

    # [bootfile] (1.8) and [bootp] boot_file (documented generation) are the same setting
    bootfiles: dict[int, str] = {}
    default = v.pop("boot_file")
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
        **v, default_bootfile=default, bootfiles=bootfiles,
        mac_rules=_rules(r, "mac", AclRule.mac, "MAC"),
        uuid_rules=_rules(r, "uuid", AclRule.uuid, "UUID"),
        http=http,
        static=static,
        buggy_clients=_rules(r, "buggy_clients", AclRule.mac, "MAC"),
        subnets=tuple(_subnet(r, section) for section in r.values if section.startswith("subnet:")),
    )


def _check_proxy(r: _Reader) -> None:
    """Proxy mode hands out no address: an option or section that would is an error naming them
    all (README, "proxyDHCP")."""
    present = [name for name in ADDRESS_OPTIONS if r.get("bootpd", name)]
    present += [f"[{name}]" for name in ADDRESS_SECTIONS if r.items(name)]
    present += [f"[{name}]" for name in r.values if name.startswith("subnet:")]
    if present:
        raise ConfigError("bootpd", "mode", "proxy",
                          "proxy mode hands out no addresses (the site DHCP server does): remove "
                          + ", ".join(present))


def _http_acl(r: _Reader, alias: float | None, base_dir: str) -> HttpAclConfig | None:
    """``[http]``, its timeout from ``[bootp] timeout`` (pybootd's documentation) when absent.

    Both given with different values is an error naming both, as for the section aliases.
    """
    if not r.has("http"):
        return None
    v = HTTP.read(r)
    if alias is not None:
        if r.get("http", "timeout") and v["timeout"] != alias:
            origin = r.values["bootpd"]["timeout"][1]
            raise ConfigError("http", "timeout", r.get("http", "timeout"),
                              f"given twice with different values: [{origin}] timeout = "
                              f"{r.get('bootpd', 'timeout')!r} and [http] timeout = "
                              f"{r.get('http', 'timeout')!r}")
        v["timeout"] = alias
    if v["ca_file"]:
        v["ca_file"] = os.path.join(base_dir, v["ca_file"])
        if not os.path.isfile(v["ca_file"]):
            raise ConfigError("http", "ca_file", r.get("http", "ca_file"), "not a file")
    return HttpAclConfig(**v)


def _rules(r: _Reader, section: str, make: Callable[[str, bool], AclRule], what: str) -> tuple[AclRule, ...]:
    rules = []
    for key, value in r.items(section):
        allowed = parse_bool(section, key, value)
        try:
            rules.append(make(key, allowed))
        except ValueError as exc:
            raise ConfigError(section, key, value, f"not a {what} rule: {exc}") from None
    return tuple(rules)


def _subnet(r: _Reader, section: str) -> SubnetConfig:
    v = SUBNET.read(r, section)
    network, pool_start, count = v["network"], v["pool_start"], v["pool_count"]
    first = ipaddress.IPv4Address(pool_start)
    if first not in network or (count and first + (count - 1) not in network):
        raise ConfigError(section, "pool_start", pool_start, f"the pool does not fit in {network}")
    dns, _auto = v["dns"] or ((), False)
    return SubnetConfig(name=section.split(":", 1)[1], network=network, pool_start=pool_start,
                        pool_count=count, gateway=v["gateway"], dns=dns, lease_time=v["lease_time"])


def _tftp(r: _Reader, base_dir: str, state_dir: str) -> TftpConfig:
    s = "tftpd"
    v = TFTPD.read(r)
    if not is_url(v["root"]):
        v["root"] = os.path.normpath(os.path.join(base_dir, v["root"]))
    cache = v["cache_dir"]
    v["cache_dir"] = os.path.join(state_dir, cache) if cache else default_cache_dir(state_dir)
    if v["timeout_min"] > v["timeout"]:
        raise ConfigError(s, "timeout_min", str(v["timeout_min"]), f"larger than timeout = {v['timeout']}")
    for option in ("transfer_memory", "memory_budget"):   # one 512-byte block and its header
        if v[option] < 516:
            raise ConfigError(s, option, str(v[option]), "must be at least 516 bytes (one 512-byte block)")
    for option in ("pool_size", "memory_budget"):   # split among the workers (massboot.workers)
        if v["processes"] > 1 and v[option] < v["processes"] * (516 if option == "memory_budget" else 1):
            raise ConfigError(s, "processes", str(v["processes"]),
                              f"more workers than {option} = {v[option]} can be split among")
    return TftpConfig(**v, filters=_filters(r))


def _httpd(r: _Reader, base_dir: str) -> HttpdConfig:
    v = HTTPD.read(r)
    if v["root"]:
        v["root"] = os.path.normpath(os.path.join(base_dir, v["root"]))
    return HttpdConfig(**v)


def default_cache_dir(state_dir: str) -> str:
    """``[tftpd] cache_dir`` when unset: ``cache`` in the state directory, private to massboot."""
    return os.path.join(state_dir, "cache")


def filter_target_error(target: str) -> str | None:
    """Why a ``[filters]`` target cannot be used (an unknown ``{variable}``...), or None.

    The target may be ``[path]`` (read the file at path); both forms take the variables of
    README's ``[filters]`` section and nothing else.
    """
    indirect = len(target) > 2 and target.startswith("[") and target.endswith("]")
    template = target[1:-1] if indirect else target
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{exc} (write {{{{ and }}}} for braces)"
    for _text, name, spec, conversion in fields:
        if name is not None and name not in FILTER_VARIABLES:
            known = ", ".join(f"{{{known}}}" for known in sorted(FILTER_VARIABLES))
            return f"unknown variable {{{name}}} (known: {known})"
        if spec or conversion:
            return f"{{{name}}} takes no format spec or conversion"
    return None


def _filters(r: _Reader) -> tuple[tuple[str, str], ...]:
    """``[filters]`` as (pattern, target); a ``{variable}`` massboot does not fill is an error."""
    items = r.items("filters")
    for pattern, target in items:
        error = filter_target_error(target)
        if error is not None:
            raise ConfigError("filters", pattern, target, error)
    return tuple(items)


def check_local_root(config: Config) -> None:
    """Fail when the TFTP root is local and not a directory (checked when TFTP is to run).

    Raises:
        ConfigError: names ``[tftpd] root`` and the path.
    """
    if not config.remote_root and not os.path.isdir(config.tftp.root):
        raise ConfigError("tftpd", "root", config.tftp.root, "not a directory")


def check_http_root(config: Config) -> None:
    """Fail when ``[httpd] root`` is set and not a directory (checked when ``-H`` is given).

    Raises:
        ConfigError: names ``[httpd] root`` and the path.
    """
    root = config.httpd.root
    if root is not None and not os.path.isdir(root):
        raise ConfigError("httpd", "root", root, "not a directory")


def pool_addresses(start: str, count: int) -> list[str]:
    """``pool_start`` … ``pool_start + count - 1`` as strings."""
    first = int(ipaddress.IPv4Address(start))
    return [str(ipaddress.IPv4Address(first + i)) for i in range(count)]


def _unset(table: Section, name: str) -> str:
    """How ``describe`` shows an option left unset: its table's default column, in brackets."""
    text = table[name].shown_default.replace("``", "")
    return text if text.startswith("(") else f"({text})"


def _describe_bootp(b: BootpConfig) -> Iterable[str]:
    if b.mode == "proxy":
        yield (f"bootp: mode proxy (proxyDHCP: boot information only, no addresses, OFFER "
               f"{b.proxy_offer}), listen {b.address}:{b.port} and PXE boot server port "
               f"{b.bootserver_port}")
        yield f"bootp: access {b.access or 'none'}, PXE clients only"
    else:
        assert b.pool_start is not None
        last = pool_addresses(b.pool_start, b.pool_count)[-1] if b.pool_count else None
        pool = f"{b.pool_start} .. {last} ({b.pool_count} addresses)" if last else "none (pool_count = 0)"
        yield "bootp: mode full"
        yield f"bootp: listen {b.address}:{b.port}, pool {pool}, lease {b.lease_time}s"
        simple = "on" if b.allow_simple_dhcp else "off"
        yield f"bootp: access {b.access or 'none'}, allow_simple_dhcp {simple}"
        dns = "auto" if b.dns_auto else ";".join(b.dns) or _unset(BOOTPD, "dns")
        yield f"bootp: router {b.gateway or _unset(BOOTPD, 'gateway')}, dns {dns}"
    yield f"bootp: boot file default {b.default_bootfile!r}" + "".join(
        f", arch {k} {v!r}" for k, v in sorted(b.bootfiles.items()))
    if b.ipxe_boot_file:
        yield f"bootp: iPXE clients get {b.ipxe_boot_file!r}"
    if b.static:
        yield f"bootp: {len(b.static)} static lease(s)"
    for sub in b.subnets:
        yield (f"bootp: relay subnet {sub.name} {sub.network}, "
               f"pool from {sub.pool_start} ({sub.pool_count})")
    if b.relays is not None:
        yield "bootp: relayed requests only from " + ", ".join(str(n) for n in b.relays)
    if b.notify:
        yield "bootp: notify " + ", ".join(f"{h}:{p}" for h, p in b.notify)
    if b.mode == "full":
        yield f"bootp: lease database {b.lease_db}"
        probe = f"probe on ({b.probe_timeout:g}s)" if b.probe else "probe off"
        yield (f"bootp: offers held {b.offer_hold:g}s, reclaim {b.reclaim}, "
               f"decline probation {b.decline_probation:g}s, {probe}")


def describe(config: Config) -> Iterable[str]:
    """Human summary of what would be served (for ``--check-config``).

    An option left unset is shown as its table documents it (``the server address``...).
    """
    yield f"config: {config.path}"
    user = config.massboot.user if config.massboot is not None else None
    yield f"state: {config.state_dir} (admin socket {config.admin_socket})" + (
        f", runs as user {user}" if user else "")
    b = config.bootp
    if b is None:
        yield "bootp: not configured (no [bootpd]/[bootp] section)"
    else:
        yield from _describe_bootp(b)
    t = config.tftp
    largest = TFTPD["blocksize"].parse
    assert isinstance(largest, Int)
    blocksize = f"up to {t.blocksize}" if t.blocksize else f"{_unset(TFTPD, 'blocksize')} up to {largest.hi}"
    yield (f"tftp: listen {t.address or _unset(TFTPD, 'address')}:{t.port}, root {t.root}, "
           f"blocksize {blocksize}")
    if t.processes > 1:
        share = t.memory_budget // t.processes >> 20
        yield (f"tftp: {t.processes} worker processes, steered by client address; each "
               f"pool_size ~{t.pool_size // t.processes}, memory_budget ~{share} MiB")
    if config.remote_root:
        yield (f"tftp: remote cache {t.cache_dir or default_cache_dir(config.base_dir)}, "
               f"max {t.cache_size >> 20} MiB, {t.max_downloads} downloads at once")
    for pattern, target in t.filters:
        yield f"tftp: filter {pattern} -> {target}"
    h = config.httpd
    yield (f"http (-H): listen {h.address or _unset(HTTPD, 'address')}:{h.port}, root "
           f"{h.root or _unset(HTTPD, 'root')}, check_ip {'on' if h.check_ip else 'off'}")
    if config.metrics:
        yield f"metrics: http://{config.metrics.address}:{config.metrics.port}/metrics"
    for warning in config.warnings:
        yield f"warning: {warning}"
