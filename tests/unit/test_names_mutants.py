"""Name resolution and confinement through :class:`FileStore`, pinned down by mutation testing
(tests/mutation.sh on the name functions): the reason a refused name gives (it is the TFTP
ERROR message the client sees, RFC 1350 code 2), ``*`` in ``[filters]`` patterns, and the
check of filter targets at startup (README ``[filters]``).

Equivalent mutant accepted (see README "Mutation testing"): ``_inside`` answering True when
``os.path.commonpath`` raises ValueError (only for a mix of absolute and relative paths, and
both are always absolute there).
"""

from __future__ import annotations

import os

import pytest

from massboot.files import FileError, FileReason, FileStore

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
