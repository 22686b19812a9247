"""Access control: local MAC/UUID rule tables and the remote HTTP ACL (README, Configuration).

:class:`RuleTable` is pure: pybootd's ``[mac]``/``[uuid]`` matching (an exact key first, then the
first masked entry in ini order) over the :class:`massboot.config.AclRule` entries parsed at
load. :class:`HttpAcl` asks a web server and turns its answer into an :class:`AclResult`; under
gevent's monkey patching the request is cooperative, and a hard deadline bounds the whole call.

A slow dependency gets its own smaller bound (README, "[http]: the remote ACL"): the calls the
DHCP server hands to :meth:`HttpAcl.submit` run in the ACL's own pool of ``max_calls``
greenlets, never in the exchange pool, and one that finds it full is refused at once (the
client retries), never queued. Verdicts, denials included, are kept ``cache_ttl`` seconds in a
bounded LRU keyed by the exact question (the URL: path, MAC, UUID and, in the colon form, the
address), so a retransmitting or flooding MAC costs at most one call per question and TTL.
Errors (no answer, connection refused) are not kept: the next request asks again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

import gevent
import requests
from gevent.pool import Pool
from requests.adapters import HTTPAdapter

from massboot.config import AclRule, HttpAclConfig
from massboot.ident import mac_dash, mac_str

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # an ACL answer is a few short lines; never read more than this
MAC_FORMATS = ("dash", "colon")
#: calls to the ACL server at once (``[http] max_calls``)
MAX_CALLS = 32
#: seconds a verdict is reused for the same question (``[http] cache_ttl``)
CACHE_TTL = 30.0
#: verdicts kept at most (least recently used first out): about 300 bytes each, 5 MB in all;
#: at a flood of 150 new MACs per second this holds 100 s of verdicts, more than the TTL
CACHE_ENTRIES = 16384


class Verdict(StrEnum):
    """The outcome of an ACL check."""

    ALLOWED = "allowed"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class AclResult:
    """An ACL decision.

    Attributes:
        verdict: allowed, denied, or error (no usable answer: the request is ignored).
        client_name: the ``Client:`` body line (sent as option 12), if any.
        file: the ``File:`` body line (``{file}`` in filters), if any.
        reason: a short explanation for logs (``status 401``, ``timeout``...).
    """

    verdict: Verdict
    client_name: str | None = None
    file: str | None = None
    reason: str = ""


class RuleTable:
    """pybootd's ``[mac]`` / ``[uuid]`` access table (also ``[buggy_clients]``).

    Args:
        rules: the section's entries, parsed at config load, in ini order. An identical
            ``(value, mask)`` given twice keeps its first position and takes the last value (a
            dict, as in pybootd).

    Raises:
        ValueError: rules of different widths (MAC and UUID) in one table.
    """

    def __init__(self, rules: Iterable[AclRule]) -> None:
        table: dict[tuple[int, int], bool] = {}
        widths = set()
        for rule in rules:
            widths.add(rule.bits)
            table[(rule.value & rule.mask, rule.mask)] = bool(rule.allowed)
        if len(widths) > 1:
            raise ValueError("a rule table holds MAC rules or UUID rules, not both")
        self._full = (1 << widths.pop()) - 1 if widths else 0
        self._rules = table
        self._exact = {value: allowed for (value, mask), allowed in table.items() if mask == self._full}

    def __len__(self) -> int:
        return len(self._rules)

    def check(self, value: int) -> bool | None:
        """Look *value* up: an exact key wins, else the first matching entry in ini order.

        Returns:
            True (allowed), False (listed but disabled) or None (not listed).
        """
        exact = self._exact.get(value & self._full)
        if exact is not None:
            return exact
        for (rule, mask), allowed in self._rules.items():
            if value & mask == rule:
                return allowed
        return None


def parse_acl_body(body: bytes) -> tuple[str | None, str | None]:
    """Read the optional ``Client:`` and ``File:`` lines of an HTTP ACL answer.

    Each line is split on its first ``:``; the key is stripped and lower-cased, the value
    stripped. Other lines are ignored, and no body makes this raise.

    Returns:
        ``(client_name, file)``; either is None when absent or empty.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    client = file = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if not value:
            continue
        if key == "client":
            client = value
        elif key == "file":
            file = value
    return client, file


class HttpAcl:
    """The remote ACL of ``access = http`` (``[http]`` section).

    Sends ``GET http://<location>/<path>?mac=...[&uuid=...]`` (``https://`` when *location*
    says so); redirects are not followed (a 3xx denies). With ``mac_format="dash"``
    (the documented form) the MAC is ``AA-BB-CC-DD-EE-FF``; with ``"colon"`` the query is
    exactly pybootd 1.8's: ``mac=AA%3ABB%3A...``, then ``uuid``, then ``ip`` for an OS-phase
    request whose address is known. A 2xx answer allows, any other status denies; no complete
    answer within *timeout* seconds, or a connection error, is an :attr:`Verdict.ERROR`.

    Args:
        location: ``host[:port]`` (plain HTTP), or ``http://`` / ``https://host[:port]``.
        pxe_path: the path for requests in the PXE phase.
        dhcp_path: the path for OS-phase requests.
        timeout: the hard deadline in seconds for the whole call (connect, headers, body).
        mac_format: ``"dash"`` or ``"colon"``.
        session: the HTTP session to use. When omitted, one is made with a connection pool
            of *max_calls* connections and ``trust_env`` off: the ACL server is on the
            deployment network, so ``http_proxy`` and ``.netrc`` from the environment are
            not applied to it.
        max_calls: the calls :meth:`submit` runs at once, in the ACL's own greenlet pool.
        cache_ttl: seconds an allowed or denied verdict answers the same question again
            (0: no cache).
        cache_entries: the most verdicts kept (least recently used first out).
        clock: monotonic time source of the cache.

    Raises:
        ValueError: an unknown *mac_format*, a non-positive *timeout* or *max_calls*, a
            negative *cache_ttl*.
    """

    def __init__(
        self,
        location: str,
        pxe_path: str,
        dhcp_path: str,
        *,
        timeout: float = 5.0,
        mac_format: str = "dash",
        session: requests.Session | None = None,
        ca_file: str | None = None,
        max_calls: int = MAX_CALLS,
        cache_ttl: float = CACHE_TTL,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mac_format not in MAC_FORMATS:
            raise ValueError(f"mac_format must be one of {', '.join(MAC_FORMATS)}, not {mac_format!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, not {max_calls!r}")
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must not be negative, not {cache_ttl!r}")
        location = location.strip().rstrip("/")
        # host[:port] keeps pybootd's meaning, plain HTTP; https:// is asked over TLS, verified
        # against the session's trust (requests' CA bundle, or session.verify)
        self._base = location if location.startswith(("http://", "https://")) else f"http://{location}"
        self._pxe_path = self._slash(pxe_path)
        self._dhcp_path = self._slash(dhcp_path)
        self._timeout = float(timeout)
        self._mac_format = mac_format
        if session is None:
            session = requests.Session()
            session.trust_env = False
            # one keep-alive connection per concurrent call: a burst reuses them
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_calls)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if ca_file:   # [http] ca_file: the CAs an https:// ACL server is verified with
                session.verify = ca_file
        self._session = session
        self.pool = Pool(max_calls)
        #: the calls strangers may hold at once: a quarter of max_calls is kept for known clients
        self.stranger_calls = max(1, max_calls - max_calls // 4)
        self.cache_ttl = float(cache_ttl)
        self._cache_entries = max(1, cache_entries)
        self._cache: OrderedDict[str, tuple[float, AclResult]] = OrderedDict()
        self._clock = clock
        self.calls = 0           # calls made to the ACL server
        self.cache_hits = 0      # questions answered from the cache
        self.refused = 0         # submit() refusals: max_calls calls in flight

    @classmethod
    def from_config(cls, config: HttpAclConfig) -> HttpAcl:
        """The ACL of a validated ``[http]`` section."""
        return cls(config.location, config.pxe, config.dhcp, timeout=config.timeout,
                   mac_format=config.mac_format, max_calls=config.max_calls,
                   cache_ttl=config.cache_ttl, ca_file=config.ca_file)

    @staticmethod
    def _slash(path: str) -> str:
        path = path.strip()
        return path if path.startswith("/") else "/" + path

    def url(self, mac: bytes, *, uuid: str | None, ip: str | None, pxe: bool) -> str:
        """The URL :meth:`check` requests for these identifiers."""
        path = self._pxe_path if pxe else self._dhcp_path
        if self._mac_format == "colon":
            query: list[tuple[str, str]] = [("mac", mac_str(mac))]
            if uuid:
                query.append(("uuid", uuid.lower()))
            if ip and not pxe:
                query.append(("ip", ip))
        else:
            query = [("mac", mac_dash(mac))]
            if uuid:
                query.append(("uuid", uuid.lower()))
        return f"{self._base}{path}?{urlencode(query)}"

    def cached(self, mac: bytes, *, uuid: str | None, ip: str | None, pxe: bool) -> AclResult | None:
        """The verdict given to this very question less than ``cache_ttl`` seconds ago, or None.

        Never waits; a hit refreshes the entry's place in the LRU order, not its age.
        """
        if not self.cache_ttl:
            return None
        url = self.url(mac, uuid=uuid, ip=ip, pxe=pxe)
        entry = self._cache.get(url)
        if entry is None:
            return None
        if self._clock() - entry[0] >= self.cache_ttl:
            del self._cache[url]
            return None
        self._cache.move_to_end(url)
        self.cache_hits += 1
        return entry[1]

    def check(self, mac: bytes, *, uuid: str | None, ip: str | None, pxe: bool) -> AclResult:
        """Ask about one client, from the cache when it can, in the caller's greenlet; never raises.

        This call is not bounded by ``max_calls``: the DHCP server uses :meth:`submit`.

        Args:
            mac: the client hardware address (first 6 bytes used).
            uuid: the client UUID (lower case), when known.
            ip: the client's address, when known (sent only in the colon form, OS phase).
            pxe: the request is in the PXE phase (selects the ``pxe`` path).

        Returns:
            The verdict, with the body's ``Client:``/``File:`` lines on success.
        """
        result = self.cached(mac, uuid=uuid, ip=ip, pxe=pxe)
        if result is not None:
            return result
        url = self.url(mac, uuid=uuid, ip=ip, pxe=pxe)
        self.calls += 1
        result = self._ask(url)
        log.info(
            "http acl mac=%s uuid=%s pxe=%s verdict=%s reason=%s client=%s file=%s",
            mac_str(mac), uuid, pxe, result.verdict.value, result.reason, result.client_name, result.file,
        )
        if result.verdict != Verdict.ERROR and self.cache_ttl:
            self._remember(url, result)
        return result

    def submit(self, mac: bytes, *, uuid: str | None, ip: str | None, pxe: bool,
               then: Callable[[AclResult], None], known: bool = False) -> bool:
        """Ask in a greenlet of the ACL's own pool; *then* gets the verdict in that greenlet.

        Args:
            known: a client the server has a record of (one the ACLs let through before):
                it may take the last quarter of ``max_calls`` too, which strangers may not,
                so that a flood of unknown MACs cannot hold every call and keep known
                clients from changing phase.

        Returns:
            False, having asked nothing, when the calls in flight reach the bound (the
            caller drops the request and the client retries; README, "[http]: the remote
            ACL").
        """
        in_flight = self.pool.size - self.pool.free_count()
        if in_flight >= (self.pool.size if known else self.stranger_calls):
            self.refused += 1
            return False

        def call() -> None:
            then(self.check(mac, uuid=uuid, ip=ip, pxe=pxe))

        self.pool.spawn(call)          # a free slot: spawn() does not wait
        return True

    def busy(self) -> tuple[int, int]:
        """``(calls in flight, max_calls)``, for metrics."""
        return self.pool.size - self.pool.free_count(), self.pool.size

    def _remember(self, url: str, result: AclResult) -> None:
        cache = self._cache
        cache[url] = (self._clock(), result)
        cache.move_to_end(url)
        while len(cache) > self._cache_entries:
            cache.popitem(last=False)

    def _ask(self, url: str) -> AclResult:
        timeout = self._timeout
        # requests' read timeout applies to each read, not to the whole answer: the
        # gevent.Timeout is the hard deadline over connect, headers and body.
        deadline = gevent.Timeout(timeout)
        try:
            with deadline:
                # a redirect is not followed: it is the status it is, 3xx, so a denial (README,
                # "[http]"); following it would let the answer come from another server
                with self._session.get(url, timeout=(timeout, timeout), stream=True,
                                       allow_redirects=False) as response:
                    status = response.status_code
                    if not 200 <= status < 300:
                        return AclResult(Verdict.DENIED, reason=f"status {status}")
                    body = bytearray()
                    for chunk in response.iter_content(8192):
                        body += chunk
                        if len(body) >= MAX_BODY:
                            break
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            return AclResult(Verdict.ERROR, reason=f"no answer within {timeout:g}s")
        except requests.Timeout:
            return AclResult(Verdict.ERROR, reason=f"no answer within {timeout:g}s")
        except requests.RequestException as exc:
            return AclResult(Verdict.ERROR, reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a peer must never crash the DHCP service
            log.exception("http acl %s failed", url)
            return AclResult(Verdict.ERROR, reason=f"{type(exc).__name__}: {exc}")
        client, file = parse_acl_body(bytes(body[:MAX_BODY]))
        return AclResult(Verdict.ALLOWED, client_name=client, file=file, reason=f"status {status}")

    def close(self) -> None:
        """Stop the calls in flight (their requests are dropped) and close the connections."""
        self.pool.kill(block=True, timeout=1)
        self._session.close()
