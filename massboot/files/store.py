"""The file store the servers use: a name and a client in, a source or a size out."""

from __future__ import annotations

from collections.abc import Sequence

import requests

from massboot.events import EventBus
from massboot.files.cache import CacheDir, default_cache_dir
from massboot.files.local import LocalFiles
from massboot.files.mirror import MAX_DOWNLOADS, Mirror
from massboot.files.names import Resolver, Target
from massboot.sources import ClientLookup, FileError, Source

__all__ = ["FileStore", "RootView"]


def _counter(name: str, doc: str) -> property:
    """A read-only view of one of the mirror's counters (an int)."""
    return property(lambda self: getattr(self._mirror, name), doc=doc)


class FileStore:
    """Resolve client names to sources under one root, local or remote.

    Args:
        root: a local directory (relative to ``base_dir``) or an ``http://``/``https://`` prefix.
        filters: ``[filters]`` entries ``(pattern, target)`` in ini order.
        base_dir: the config file's directory; relative paths start there.
        cache_dir: where remote files are kept; None → :func:`~massboot.files.cache.default_cache_dir`
            of ``base_dir``. Created ``0700``; it must be private (see ``CacheDir.load``).
        cache_max_bytes: the most the cache keeps on disk, files being read and downloads in
            flight included (files being read are never evicted).
        max_downloads: upstream downloads at once.
        revalidate_after: seconds a cached file is served without asking the mirror.
        http_timeout: seconds for the upstream connect, the response headers and each body read.
        client_lookup: the DHCP side's knowledge of a client, for filter variables.
        events: the event bus for ``cache.*`` events.
        session: the ``requests.Session`` for upstream GETs.
        shared: other processes use the cache directory too (``[tftpd] processes``): one
            download per file among them all (:class:`~massboot.files.cache.FlightLocks`).

    Raises:
        ValueError: a filter target uses an unknown ``{variable}``.
        ConfigError: the cache directory cannot be created or is not private
            (``[tftpd] cache_dir``), when the root or a filter target is a URL.
    """

    def __init__(self, root: str, filters: Sequence[tuple[str, str]] = (), *, base_dir: str = ".",
                 cache_dir: str | None = None, cache_max_bytes: int = 2 << 30,
                 revalidate_after: float = 300.0, http_timeout: float = 10.0,
                 max_downloads: int = MAX_DOWNLOADS,
                 client_lookup: ClientLookup | None = None, events: EventBus | None = None,
                 session: requests.Session | None = None, shared: bool = False) -> None:
        self._local = LocalFiles()
        self._base_dir, self._client_lookup = base_dir, client_lookup
        self._filters = tuple(filters)
        self._names = Resolver(root, filters, base_dir=base_dir, client_lookup=client_lookup,
                               first_line=self._local.first_line)
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        cache = CacheDir(cache_dir if cache_dir is not None else default_cache_dir(base_dir),
                         cache_max_bytes, revalidate_after)
        # a local root uses the cache too, for the http(s):// targets of its filters
        self._mirror = Mirror(cache, self._local, self._session, http_timeout=http_timeout,
                              revalidate_after=revalidate_after, max_downloads=max_downloads,
                              events=events if events is not None else EventBus(), shared=shared)
        # checked at startup when URLs are known to be fetched; a [path] filter file that names
        # a URL only at run time makes the first download check it (Mirror._ensure_dir)
        if self._names.remote or any(t.strip().startswith(("http://", "https://"))
                                     for _p, t in filters):
            cache.load()

    @property
    def remote(self) -> bool:
        """True when the root is an ``http(s)://`` URL."""
        return self._names.remote

    @property
    def root(self) -> str:
        """The root: an absolute local directory or a URL prefix without trailing ``/``."""
        return self._names.root

    @property
    def http_timeout(self) -> float:
        """Seconds for the upstream connect, the response headers and each body read."""
        return self._mirror.http_timeout

    @property
    def cached_bytes(self) -> int:
        """Bytes of complete files held in the cache."""
        return self._mirror.cache.total

    @property
    def cached_files(self) -> int:
        """Number of complete files held in the cache."""
        return len(self._mirror.cache)

    @property
    def used_bytes(self) -> int:
        """Bytes counted against ``cache_max_bytes``: complete, still read after eviction, and
        reserved by downloads in flight."""
        return self._mirror.cache.used

    @property
    def downloads_active(self) -> int:
        """Upstream downloads in flight."""
        return self._mirror.active

    @property
    def refused(self) -> dict[str, int]:
        """Requests refused by a cache bound, by reason (``downloads``, ``space``)."""
        return dict(self._mirror.refused)

    hits = _counter("hits", "Opens served from a cached copy (fresh, revalidated, or stale "
                           "with the mirror down).")
    misses = _counter("misses", "Opens (and size() prefetches) that started an upstream download.")
    coalesced = _counter("coalesced", "Opens that joined a download already in flight.")
    upstream_bytes = _counter("upstream_bytes", "Body bytes received from mirrors.")

    def set_filters(self, filters: Sequence[tuple[str, str]]) -> None:
        """Resolve the next requests with new ``[filters]`` (SIGHUP; open sources are unaffected).

        Raises:
            ValueError: a filter target uses an unknown ``{variable}`` (the old filters stay).
        """
        self._names = self._resolver(self._names.root, filters)
        self._filters = tuple(filters)

    def _resolver(self, root: str, filters: Sequence[tuple[str, str]]) -> Resolver:
        return Resolver(root, filters, base_dir=self._base_dir, client_lookup=self._client_lookup,
                        first_line=self._local.first_line)

    def for_root(self, root: str) -> RootView:
        """The same store serving another local *root* (``[httpd] root``): the same
        ``[filters]`` (those :meth:`set_filters` sets included), confinement, local reads and
        remote cache; only the names not filtered elsewhere are looked up under *root*."""
        return RootView(self, root)

    def open(self, name: str, client_ip: str) -> Source:
        """Open the file a client asked for.

        The source is a :class:`~massboot.sources.FdSource` (``fileno``, ``ready``): local
        files, cached copies and downloads in flight alike.

        Args:
            name: the name from the request, as sent.
            client_ip: the client's address (for filter variables).

        Returns:
            A source to read by offset; close it when done.

        Raises:
            FileError: ``ACCESS`` for a refused name, ``NOT_FOUND`` for a missing file,
                ``UPSTREAM`` for a mirror failure.
        """
        return self._open(self._names.resolve(name, client_ip))

    def _open(self, target: Target) -> Source:
        if target.url is not None:
            return self._mirror.open(target.url)
        return self._local.open(target.paths, target.confine)

    def size(self, name: str, client_ip: str) -> int | None:
        """The size of a file if it is known without waiting on the network (DHCP option 13).

        A remote file neither cached nor in flight is fetched in the background (a prefetch),
        so the transfer that usually follows finds it.

        Returns:
            The size in bytes, or None when unknown, missing or refused.
        """
        try:
            target = self._names.resolve(name, client_ip)
            if target.url is None:
                return self._local.size(target.paths, target.confine)
        except FileError:
            return None
        return self._mirror.size(target.url)

    def close(self) -> None:
        """Stop background downloads; their readers get FileError."""
        self._mirror.close()
        if self._own_session:
            self._session.close()


class RootView:
    """A :class:`FileStore` seen through another local root (see :meth:`FileStore.for_root`)."""

    def __init__(self, store: FileStore, root: str) -> None:
        self._store = store
        self._root = root
        self._filters = store._filters
        self._names = store._resolver(root, self._filters)

    @property
    def root(self) -> str:
        """The absolute local root."""
        return self._names.root

    def open(self, name: str, client_ip: str) -> Source:
        """See :meth:`FileStore.open`."""
        store = self._store
        if store._filters is not self._filters:    # a reload changed them
            self._names = store._resolver(self._root, store._filters)
            self._filters = store._filters
        return store._open(self._names.resolve(name, client_ip))
