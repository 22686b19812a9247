"""Client names → targets: confinement, ``[filters]`` patterns and templates.

How a name becomes a target (README, "Configuration", ``[filters]``):

1. The client's name is checked first: a ``..`` component (``/`` or ``\\`` separated), an
   absolute name (leading ``/`` or ``\\``, or a drive letter), or a NUL is refused (ACCESS).
   With a remote root a percent-encoded form (``%2e%2e``, ``%2f``...) is decoded once and
   checked again. Because this happens before filtering, ``{filename}`` in a filter target can
   never smuggle a traversal in. With a remote root the name is then normalised: ``.`` and
   empty segments are dropped (``x``, ``./x``, ``.//x`` are one file, one URL, one cache entry).
2. ``[filters]`` patterns are tried in ini order against the whole name; the first match wins.
   ``*`` is any run of characters including ``/``, ``?`` exactly one character, everything else
   literal. Matching is case-sensitive; note that the ini parser lower-cases the patterns, so
   a pattern never matches upper-case letters (as in pybootd). One leading ``./`` in the
   requested name is tolerated, as pybootd did.
3. A match replaces the whole name by its target after substituting ``{filename}`` (the name as
   requested), ``{ip}`` (the client's address) and ``{mac}``, ``{uuid}``, ``{arch}``, ``{file}``
   from the :data:`~massboot.sources.ClientLookup` (empty when unknown). A target written
   ``[path]`` names a local file whose first non-empty line is the name to serve. Filter
   targets are written by the administrator and are trusted: an absolute target is a local
   file, an ``http(s)://`` target is fetched through the cache, a relative one is looked up
   under the root first and then, for local roots, under ``base_dir``.
   The *values* are not trusted (a client sends ``{filename}``, an ACL answer ``{file}``): each
   one used is checked after percent-decoding (no NUL, no absolute path, no ``..`` segment, no
   ``?`` or ``#`` where a URL is built) and percent-quoted into URLs. A target that uses a
   variable stays inside its fixed directory prefix, the template's text up to the last ``/``
   before the first variable (``/srv/cfg/{mac}.cfg`` stays in ``/srv/cfg/``; a bare ``{file}``
   stays inside the root, never ``base_dir``), checked on the result and, for local files, on
   the real path. A refusal is ACCESS (TFTP error 2) (README, ``[filters]``).
4. Without a match, the name is joined to the root. For a local root the target carries the
   real root it must stay inside; :mod:`massboot.files.local` enforces it on the real path.

Nothing here reads files but the ``[path]`` indirection, through the injected *first_line*.
"""

from __future__ import annotations

import logging
import os
import re
import string
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from massboot.config import filter_target_error
from massboot.sources import ClientLookup, FileError, FileReason, client_text

__all__ = ["Filter", "Resolver", "Target", "normalise", "traversal"]

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")


def traversal(name: str) -> str | None:
    """Why a client-supplied name may not be served, or None."""
    if "\0" in name:
        return "NUL in name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute name"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in name"
    return None


def normalise(path: str) -> str:
    """Drop ``.`` and empty segments of a ``/``-separated path (``./a//b`` → ``a/b``)."""
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def _quote(value: str) -> str:
    """Percent-quote *value* for a URL path (RFC 3986 section 2.1), ``/`` kept; undecodable
    bytes (surrogate-escaped by the TFTP codec) are quoted as the bytes they were."""
    return urllib.parse.quote(value.encode("utf-8", "surrogateescape"), safe="/")


def _url_trouble(value: str) -> str | None:
    """Why *value* may not go into a URL: a traversal once percent-decoded, or ``?``/``#``
    (a query or a fragment, RFC 3986 section 3) as sent or decoded."""
    decoded = urllib.parse.unquote(value, errors="surrogateescape")
    for text in (value, decoded):
        if "?" in text or "#" in text:
            return "'?' or '#' in a value"
    return traversal(decoded)


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """``*`` → any characters (``/`` included), ``?`` → one character, the rest literal."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Filter:
    """One ``[filters]`` line, compiled."""

    pattern: str
    regex: re.Pattern[str]
    template: str           # the target, or the path inside ``[...]`` when indirect
    indirect: bool
    fields: tuple[str, ...] = ()    # the variables the template uses
    prefix: str = ""        # its fixed text up to the last "/" before the first variable

    @classmethod
    def parse(cls, pattern: str, target: str) -> Filter:
        """Compile ``pattern = target``; raise ValueError for an unknown ``{variable}``."""
        target = target.strip()
        error = filter_target_error(target)
        if error is not None:
            raise ValueError(f"[filters] {pattern} = {target}: {error}")
        indirect = len(target) > 2 and target.startswith("[") and target.endswith("]")
        template = target[1:-1].strip() if indirect else target
        parsed = list(string.Formatter().parse(template))
        fields = tuple(name for _text, name, _spec, _conv in parsed if name is not None)
        prefix = ""
        for text, name, _spec, _conv in parsed:
            prefix += text
            if name is not None:
                break
        prefix = prefix[:prefix.rfind("/") + 1]
        return cls(pattern, _compile_pattern(pattern), template, indirect, fields, prefix)

    def matches(self, name: str) -> bool:
        """Whether the whole *name* (or it without one leading ``./``) matches."""
        if self.regex.fullmatch(name):
            return True
        return name.startswith("./") and self.regex.fullmatch(name[2:]) is not None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a name leads: local candidate paths (the first existing wins) or a URL."""

    paths: tuple[str, ...] = ()
    # the real directory a client-supplied path must stay inside, or one per path
    confine: str | tuple[str, ...] | None = None
    url: str | None = None


class Resolver:
    """Resolve client names to :class:`Target` objects under one root, local or remote.

    Args:
        root: a local directory (relative to ``base_dir``) or an ``http://``/``https://`` prefix.
        filters: ``[filters]`` entries ``(pattern, target)`` in ini order.
        base_dir: the config file's directory; relative paths start there.
        client_lookup: the DHCP side's knowledge of a client, for filter variables.
        first_line: reads a ``[path]`` filter file (the first existing of the paths given);
            None when there is none or it has no non-empty line.

    Raises:
        ValueError: a filter target uses an unknown ``{variable}``.
    """

    def __init__(self, root: str, filters: Sequence[tuple[str, str]], *, base_dir: str,
                 client_lookup: ClientLookup | None,
                 first_line: Callable[[tuple[str, ...]], str | None]) -> None:
        self._filters = tuple(Filter.parse(p, t) for p, t in filters)
        self._base_dir = os.path.abspath(base_dir)
        self.remote = root.startswith(("http://", "https://"))
        if self.remote:
            self.root = root.rstrip("/")
            self._real_root = ""
        else:
            self.root = os.path.join(self._base_dir, root)
            self._real_root = os.path.realpath(self.root)
        self._lookup = client_lookup
        self._first_line = first_line
        # the real directories that client-chosen paths must stay in, resolved here (at start
        # and when a reload changes [filters], as the root's) and not per request: realpath()
        # makes an lstat per path component, on the event loop
        # (a client-chosen absolute target starts with its filter's absolute prefix: _expand
        # refuses an absolute value, so a bare "{file}" never makes one)
        self._real_dirs: dict[str, str] = {}
        for flt in self._filters:
            if flt.fields and not flt.indirect:
                if os.path.isabs(flt.prefix):
                    dirs = [flt.prefix]
                else:
                    dirs = [] if self.remote else [os.path.join(b, flt.prefix) for b in self._bases(flt)]
                self._real_dirs.update((d, os.path.realpath(d)) for d in dirs)

    def _bases(self, flt: Filter) -> tuple[str, ...]:
        """Where a relative client-chosen path may be: under the root, or also in base_dir
        when the template has a fixed directory (a bare ``{file}``: under the root only)."""
        return (self.root, self._base_dir) if flt.prefix else (self.root,)

    def resolve(self, name: str, client_ip: str) -> Target:
        """The target of *name* for the client at *client_ip*; raise FileError."""
        if not name:
            raise FileError(FileReason.NOT_FOUND, "File not found")
        reason = traversal(name)
        if reason is None and self.remote:
            decoded = urllib.parse.unquote(name, errors="surrogateescape")
            if decoded != name:
                reason = traversal(decoded)
        if reason is not None:
            raise FileError(FileReason.ACCESS, f"Access violation: {reason}")
        if self.remote:
            name = normalise(name)   # one spelling, one URL, one cache entry
            if not name:
                raise FileError(FileReason.NOT_FOUND, "File not found")
        for flt in self._filters:
            if flt.matches(name):
                break
        else:
            if self.remote:
                return Target(url=self._url(name))
            return Target(paths=(os.path.join(self.root, name),), confine=self._real_root)
        target = self._expand(flt, name, client_ip)
        if flt.indirect:
            paths = self._admin_paths(target)
            if flt.fields and not flt.prefix and not self.remote:
                paths = paths[:1]    # a bare client-chosen path: under the root only
            line = self._first_line(paths)
            if line is None:
                raise FileError(FileReason.NOT_FOUND, "File not found")
            target = line
        log.debug("filter %s: %s -> %s", flt.pattern, client_text(name), client_text(target))
        if not target:
            raise FileError(FileReason.NOT_FOUND, "File not found")
        if target.startswith(("http://", "https://")):
            return Target(url=target)
        if os.path.isabs(target):
            if flt.fields and not flt.indirect:
                return Target(paths=(target,), confine=self._real_dirs[flt.prefix])
            return Target(paths=(target,))
        if self.remote:
            return Target(url=self._url(target))
        if flt.fields and not flt.indirect:
            # a client-chosen path stays inside the template's fixed directory, on the real
            # path too; a bare one ("{file}") under the root only, never in base_dir (where the
            # config and the lease database live)
            bases = self._bases(flt)
            paths = tuple(os.path.join(b, target) for b in bases)
            confine = tuple(self._real_dirs[os.path.join(b, flt.prefix)] for b in bases)
            return Target(paths=paths, confine=confine)
        return Target(paths=self._admin_paths(target))

    def _expand(self, flt: Filter, name: str, client_ip: str) -> str:
        """Substitute the variables of *flt*'s template, each checked; raise FileError (ACCESS).

        A template without variables is the administrator's text as written (``{{`` → ``{``).
        """
        if not flt.fields:
            return flt.template.format_map({}).strip()
        values = self._values(name, client_ip)
        url = flt.template.startswith(("http://", "https://")) or (
            self.remote and not flt.indirect and not flt.template.startswith("/"))
        quoted = flt.template.startswith(("http://", "https://"))
        for field in set(flt.fields):
            value = values[field]
            why = traversal(value) if value else None
            if why is None and url and value:
                why = _url_trouble(value)
            if why is not None:
                self._refuse(flt, field, value, client_ip, why)
            if quoted:
                values[field] = _quote(value)
        target = flt.template.format_map(values).strip()
        # The result as a whole: values side by side ("{arch}{file}") must not make a traversal
        # either, and it must not leave the fixed prefix (RFC 3986 section 3.3 segments).
        prefix = flt.prefix
        if not target.startswith(prefix):     # strip() ate a prefix of blanks: refuse, never guess
            self._refuse(flt, "", target, client_ip, "leaves the target's directory")
        tail = target[len(prefix):]
        query = ""
        if quoted:
            cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=len(tail))
            tail, query = tail[:cut], tail[cut:]     # the administrator's own query, if any
        why = traversal(urllib.parse.unquote(tail, errors="surrogateescape") if url else tail)
        if why is None and not prefix and tail.startswith(("http://", "https://")):
            why = "a value made a URL"
        if why is not None:
            self._refuse(flt, "", target, client_ip, why)
        tail = normalise(tail)
        if not tail:
            raise FileError(FileReason.NOT_FOUND, "File not found")
        return prefix + tail + query

    @staticmethod
    def _refuse(flt: Filter, field: str, value: str, client_ip: str, why: str) -> None:
        what = f"{{{field}}} = " if field else "result "
        log.info("filter %s: refused %s%s for %s: %s", flt.pattern, what, client_text(value), client_ip, why)
        raise FileError(FileReason.ACCESS, f"Access violation: {why}")

    def _values(self, name: str, client_ip: str) -> dict[str, str]:
        info = None
        if self._lookup is not None:
            try:
                info = self._lookup(client_ip)
            except Exception:  # the lookup is the DHCP side's; a bug there must not kill a transfer
                log.exception("client lookup failed for %s", client_ip)
        values = {"filename": name, "ip": client_ip, "mac": "", "uuid": "", "arch": "", "file": ""}
        if info is not None:
            values["mac"] = info.mac or ""
            values["uuid"] = info.uuid or ""
            values["arch"] = "" if info.arch is None else str(info.arch)
            values["file"] = info.file or ""
        return values

    def _url(self, name: str) -> str:
        """The URL of *name* under a remote root: normalised, then quoted (RFC 3986 2.1)."""
        name = normalise(name)
        if not name:
            raise FileError(FileReason.NOT_FOUND, "File not found")
        return self.root + "/" + _quote(name)

    def _admin_paths(self, path: str) -> tuple[str, ...]:
        """Where a trusted relative path may be: under a local root, then under base_dir."""
        if os.path.isabs(path):
            return (path,)
        if self.remote:
            return (os.path.join(self._base_dir, path),)
        return (os.path.join(self.root, path), os.path.join(self._base_dir, path))
