"""Name resolution and confinement, pinned down by mutation testing (tests/mutation.sh
``massboot/files/names.py``): through :class:`FileStore`, the reason a refused name gives (it
is the TFTP ERROR message the client sees, RFC 1350 code 2), ``*`` in ``[filters]`` patterns
and the check of filter targets at startup; through :class:`Resolver` alone, where each kind of
target leads, what is decoded, quoted and refused where a URL is built, the fixed prefix a
client value stays inside, and the log lines of refusals (README ``[filters]``).

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``_quote``: ``safe="/"`` left out (the default), ``"UTF-8"`` for ``"utf-8"``, and
  ``safe="XX/XX"`` (``X`` is unreserved, never quoted anyway).
* ``_url_trouble``, ``resolve``, ``_expand``: ``unquote`` with ``errors=None`` or without
  ``errors`` (its default, ``"replace"``, changes only undecodable bytes, which decode to no
  NUL, ``/``, ``\\`` or ``.`` either way: the traversal checks answer alike).
* ``Resolver.__init__``: ``_real_root`` of a remote root ``None`` or ``"XXXX"`` (never read for
  a remote root).
* ``_expand``: ``format_map(None)`` for a template without variables (nothing is looked up);
  ``traversal(value) if value or True`` (``traversal("")`` is None); a refusal of the result
  with ``field=None`` (falsy like ``""``: the log line says ``result`` either way).
* ``_expand``: the 13 mutants of the ``leaves the target's directory`` refusal (its arguments,
  its text). The branch is defensive and cannot be reached: a target is stripped when parsed
  and its prefix ends with ``/``, so the expanded result always starts with its prefix.
"""

from __future__ import annotations

import logging
import os

import pytest

from massboot.files import ClientInfo, FileError, FileReason, FileStore
from massboot.files.names import Filter, Resolver, Target
from massboot.sources import client_text

IP = "127.0.0.5"


@pytest.fixture
def root(tmp_path) -> str:
    path = tmp_path / "root"
    os.makedirs(path)
    (path / "pxelinux.0").write_bytes(b"pxe")
    return str(path)


@pytest.mark.parametrize(("name", "reason"), [
    ("pxe\0linux.0", "NUL in name"),
    ("/etc/passwd", "absolute name"),
    ("\\secret", "absolute name"),
    ("boot/../../secret", "'..' in name"),
])
def test_a_refused_name_says_why(root, name: str, reason: str) -> None:
    store = FileStore(root)
    with pytest.raises(FileError) as err:
        store.open(name, IP)
    assert (err.value.reason, err.value.message) == (FileReason.ACCESS, f"Access violation: {reason}")


def test_star_in_a_filter_matches_any_character_newlines_included(root) -> None:
    store = FileStore(root, [("cfg/*", "pxelinux.0")])
    for name in ("cfg/default", "cfg/a/b", "cfg/two\nlines"):
        src = store.open(name, IP)
        try:
            assert src.read(0, 100) == b"pxe", name
        finally:
            src.close()


def test_every_variable_of_a_filter_target_is_checked(root) -> None:
    known = "{arch}, {file}, {filename}, {ip}, {mac}, {uuid}"
    # "}}" is a literal brace: the parser yields a literal-only piece before {bogus}
    with pytest.raises(ValueError) as err:
        FileStore(root, [("x", "a}}b{bogus}")])
    assert str(err.value) == f"[filters] x = a}}}}b{{bogus}}: unknown variable {{bogus}} (known: {known})"
    with pytest.raises(ValueError) as err:
        FileStore(root, [("y", "{filename!r}")])
    assert str(err.value) == "[filters] y = {filename!r}: {filename} takes no format spec or conversion"


# -- the resolver alone (massboot.files.names) ------------------------------------------------

REMOTE = "http://mirror.example/boot"
LOGGER = "massboot.files.names"


def resolver(base, root: str = "root", filters=(), info: ClientInfo | None = None, lines=None) -> Resolver:
    def first_line(paths: tuple[str, ...]) -> str | None:
        if lines is not None:
            lines.append(paths)
        return "pxelinux.0"

    return Resolver(root, list(filters), base_dir=str(base), client_lookup=lambda ip: info,
                    first_line=first_line)


def refused(res: Resolver, name: str) -> FileError:
    with pytest.raises(FileError) as err:
        res.resolve(name, IP)
    return err.value


def test_client_text_quotes_what_is_not_plain_and_cuts_after_128_characters() -> None:
    assert client_text("a" * 128) == "a" * 128                        # plain: as it is
    assert client_text("b" * 129) == repr("b" * 128) + "...(129 chars)"
    assert client_text("x\ny", limit=2) == "'x\\n'...(3 chars)"
    assert client_text("a b") == "'a b'" and client_text("http://h/x") == "http://h/x"


@pytest.mark.parametrize(("target", "indirect", "template"), [
    ("[a]", True, "a"), ("[ab]", True, "ab"), ("[]", False, "[]"), ("cfg]", False, "cfg]"),
    ("[cfg", False, "[cfg"),
])
def test_only_a_bracketed_target_is_indirect(target: str, indirect: bool, template: str) -> None:
    flt = Filter.parse("x", target)
    assert (flt.indirect, flt.template) == (indirect, template)


def test_a_pattern_matches_the_whole_name_or_it_after_one_leading_dot_slash() -> None:
    flt = Filter.parse("cfg", "t")
    assert flt.matches("cfg") and flt.matches("./cfg")
    assert not flt.matches("abcfg") and not flt.matches("../cfg")


def test_url_templates_quote_values_and_keep_the_administrators_query(tmp_path) -> None:
    info = ClientInfo(IP, file="a b")
    res = resolver(tmp_path, filters=[
        ("q", "https://h/{filename}?p=a//b?q"), ("f", "https://h/{filename}#a//b#c"),
        ("s", "https://h/x/{file}"), ("e", "https://h/{arch}?x=1")], info=info)
    assert res.resolve("q", IP).url == "https://h/q?p=a//b?q"
    assert res.resolve("f", IP).url == "https://h/f#a//b#c"
    assert res.resolve("s", IP).url == "https://h/x/a%20b"
    err = refused(res, "e")                              # nothing before the query: no file
    assert (err.reason, err.message) == (FileReason.NOT_FOUND, "File not found")


@pytest.mark.parametrize("root", ["root", REMOTE])
def test_a_value_with_a_query_is_refused_where_a_url_is_built(tmp_path, root: str) -> None:
    res = resolver(tmp_path, root, filters=[("*", "https://h/{filename}")])
    err = refused(res, "a?b")
    assert (err.reason, err.message) == (FileReason.ACCESS, "Access violation: '?' or '#' in a value")
    remote = resolver(tmp_path, REMOTE, filters=[("*", "cfg/{filename}")])
    assert refused(remote, "a?b").message == "Access violation: '?' or '#' in a value"


def test_a_local_or_absolute_target_takes_query_characters_as_they_are(tmp_path) -> None:
    info = ClientInfo(IP, file="c?d")
    local = resolver(tmp_path, filters=[("*", "cfg/{filename}{file}")], info=info)
    target = local.resolve("a?b", IP)
    assert target.paths[0] == os.path.join(str(tmp_path), "root", "cfg", "a?bc?d")
    remote = resolver(tmp_path, REMOTE, filters=[("*", "/srv/cfg/{filename}")])
    assert remote.resolve("a?b", IP).paths == ("/srv/cfg/a?b",)


def test_percent_signs_are_decoded_only_where_a_url_is_built(tmp_path) -> None:
    info = ClientInfo(IP, mac="%2e", file="%2e")
    local = resolver(tmp_path, filters=[("*", "cfg/{mac}{file}")], info=info)
    assert local.resolve("x", IP).paths[0] == os.path.join(str(tmp_path), "root", "cfg", "%2e%2e")
    remote = resolver(tmp_path, REMOTE, filters=[("*", "cfg/{mac}{file}")], info=info)
    assert refused(remote, "x").message == "Access violation: '..' in name"
    undecodable = resolver(tmp_path, REMOTE, filters=[("*", "cfg/{file}")], info=ClientInfo(IP, file="%ff"))
    assert undecodable.resolve("x", IP).url == REMOTE + "/cfg/%25ff"
    assert resolver(tmp_path, filters=[("*", "https://h/{filename}")]).resolve("%ff", IP).url == \
        "https://h/%25ff"


def test_refusals_name_the_value_or_the_result_in_the_log(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    values = resolver(tmp_path, filters=[("v*", "cfg/{file}")], info=ClientInfo(IP, file="../x"))
    assert refused(values, "v1").message == "Access violation: '..' in name"
    side_by_side = resolver(tmp_path, filters=[("s*", "cfg/{mac}{file}")],
                            info=ClientInfo(IP, mac=".", file="."))
    assert refused(side_by_side, "s1").message == "Access violation: '..' in name"
    url = resolver(tmp_path, filters=[("u*", "{file}")], info=ClientInfo(IP, file="https://evil/x"))
    assert refused(url, "u1").message == "Access violation: a value made a URL"
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"filter v*: refused {{file}} = ../x for {IP}: '..' in name",
        f"filter s*: refused result cfg/.. for {IP}: '..' in name",
        f"filter u*: refused result https://evil/x for {IP}: a value made a URL",
    ]


def test_unknown_client_values_are_empty_and_a_failing_lookup_is_logged(tmp_path, caplog) -> None:
    template = [("*", "cfg/{mac}-{uuid}-{arch}-{file}.cfg")]
    blank = resolver(tmp_path, filters=template, info=ClientInfo(IP))
    assert blank.resolve("x", IP).paths[0].endswith(os.path.join("cfg", "---.cfg"))
    known = resolver(tmp_path, filters=template, info=ClientInfo(IP, "AA", "u", 7, "f"))
    assert known.resolve("x", IP).paths[0].endswith(os.path.join("cfg", "AA-u-7-f.cfg"))

    def broken(ip: str) -> ClientInfo | None:
        raise RuntimeError("boom")

    res = Resolver("root", template, base_dir=str(tmp_path), client_lookup=broken, first_line=lambda p: None)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert res.resolve("x", IP).paths[0].endswith(os.path.join("cfg", "---.cfg"))
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [f"client lookup failed for {IP}"]


def test_a_fixed_target_that_names_nothing_under_a_remote_root_is_not_found(tmp_path) -> None:
    err = refused(resolver(tmp_path, REMOTE, filters=[("x", "./")]), "x")
    assert (err.reason, err.message) == (FileReason.NOT_FOUND, "File not found")


def test_an_indirect_list_under_a_remote_root_is_read_from_base_dir(tmp_path) -> None:
    lines: list = []
    res = resolver(tmp_path, REMOTE, filters=[("x", "[lists/x.txt]")], lines=lines)
    assert res.resolve("x", IP).url == REMOTE + "/pxelinux.0"
    assert lines == [(os.path.join(str(tmp_path), "lists/x.txt"),)]


def test_names_that_name_nothing_are_not_found(tmp_path) -> None:
    for res, name in [(resolver(tmp_path), ""), (resolver(tmp_path, REMOTE), ".//./"),
                      (resolver(tmp_path, filters=[("x", "")]), "x")]:
        err = refused(res, name)
        assert (err.reason, err.message) == (FileReason.NOT_FOUND, "File not found"), name
    empty_list = Resolver("root", [("x", "[list.txt]")], base_dir=str(tmp_path), client_lookup=None,
                          first_line=lambda paths: None)
    err = refused(empty_list, "x")
    assert (err.reason, err.message) == (FileReason.NOT_FOUND, "File not found")


def test_percent_encoding_is_a_traversal_only_under_a_remote_root(tmp_path) -> None:
    local = resolver(tmp_path).resolve("%2e%2e/x", IP)
    assert local.paths == (os.path.join(str(tmp_path), "root", "%2e%2e/x"),)
    assert refused(resolver(tmp_path, REMOTE), "%2e%2e/x").reason is FileReason.ACCESS
    assert resolver(tmp_path, REMOTE).resolve("%ff", IP).url == REMOTE + "/%25ff"
    assert resolver(tmp_path, "http://h/BOX/").resolve("a", IP).url == "http://h/BOX/a"


def test_a_filter_match_is_logged_at_debug(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    resolver(tmp_path, filters=[("x*", "[list.txt]")]).resolve("x1", IP)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == ["filter x*: x1 -> pxelinux.0"]


def test_where_each_kind_of_target_leads(tmp_path) -> None:
    root, base = os.path.join(str(tmp_path), "root"), str(tmp_path)
    lines: list = []
    res = resolver(tmp_path, filters=[
        ("u", "https://h/fixed"), ("a", "/srv/fixed"), ("t", "cfg/{filename}"), ("b", "[{file}]")],
        info=ClientInfo(IP, file="list.txt"), lines=lines)
    assert res.resolve("u", IP) == Target(url="https://h/fixed")
    assert res.resolve("a", IP) == Target(paths=("/srv/fixed",))
    assert res.resolve("t", IP) == Target(
        paths=(os.path.join(root, "cfg/t"), os.path.join(base, "cfg/t")),
        confine=(os.path.realpath(os.path.join(root, "cfg")), os.path.realpath(os.path.join(base, "cfg"))))
    res.resolve("b", IP)                                 # a bare client-chosen list: under the root only
    assert lines == [(os.path.join(root, "list.txt"),)]


def test_the_fixed_prefix_is_all_the_text_before_the_first_variable(tmp_path) -> None:
    root = os.path.join(str(tmp_path), "root")
    info = ClientInfo(IP, mac="AA")
    res = resolver(tmp_path, filters=[("b*", "cfg}}/{filename}"), ("m*", "cfg/{mac}/{filename}")], info=info)
    assert Filter.parse("m*", "cfg/{mac}/{filename}").prefix == "cfg/"
    assert Filter.parse("b*", "cfg}}/{filename}").prefix == "cfg}/"
    assert res.resolve("b1", IP).paths[0] == os.path.join(root, "cfg}/b1")
    assert res.resolve("m1", IP).paths[0] == os.path.join(root, "cfg/AA/m1")
