"""FileStore with local roots: confinement, filters, reads by offset, size()."""

from __future__ import annotations

import os
import random
import threading

import pytest

from massboot.files import CHUNK, ClientInfo, FileError, FileReason, FileStore

REMOTE = "http://127.0.0.1:9/boot"   # never contacted: every name below is refused first


def write(path, data: bytes | str = b"x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def read_all(store: FileStore, name: str, ip: str = "127.0.0.5") -> bytes:
    src = store.open(name, ip)
    try:
        out = bytearray()
        while chunk := src.read(len(out), 1000):
            out += chunk
        return bytes(out)
    finally:
        src.close()


@pytest.fixture
def tree(tmp_path):
    """base/ (config dir) with root/ inside, and a secret file outside the root."""
    base = tmp_path / "base"
    root = base / "root"
    write(root / "pxelinux.0", "pxe")
    write(root / "boot" / "vmlinuz", "kernel")
    write(tmp_path / "secret", "secret")
    os.makedirs(root / "adir")
    return base, root


# ----------------------------------------------------------------------- confinement


@pytest.mark.parametrize("name", [
    "../x", "a/../../x", "/etc/passwd", "..", "../base/root/pxelinux.0", "boot/../../secret",
    "a\\..\\..\\secret", "\\secret", "C:\\secret", "pxe\0linux.0",
])
def test_client_traversal_refused(tree, name):
    base, _ = tree
    store = FileStore("root", base_dir=str(base))
    with pytest.raises(FileError) as err:
        store.open(name, "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS
    assert store.size(name, "127.0.0.5") is None


@pytest.mark.parametrize("name", ["a/..%2f..", "%2e%2e/etc/passwd", "%2E%2E%2Fx", "%2fetc/passwd",
                                  "..%5csecret", "a/%2e%2e/%2e%2e/x", "x%00y"])
def test_percent_encoded_traversal_refused_on_remote_root(name, tmp_path):
    store = FileStore(REMOTE, cache_dir=str(tmp_path / "cache"))
    assert store.remote
    with pytest.raises(FileError) as err:
        store.open(name, "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS


def test_symlink_leaving_root_refused(tree, tmp_path):
    base, root = tree
    os.symlink(tmp_path / "secret", root / "out-file")
    os.symlink(tmp_path, root / "out-dir")
    store = FileStore(str(root))
    for name in ("out-file", "out-dir/secret"):
        with pytest.raises(FileError) as err:
            store.open(name, "127.0.0.5")
        assert err.value.reason is FileReason.ACCESS, name
    # Out and back in: the real path is inside the root, so it is served.
    assert read_all(store, "out-dir/base/root/pxelinux.0") == b"pxe"


def test_symlink_inside_root_allowed(tree):
    base, root = tree
    os.symlink(root / "boot" / "vmlinuz", root / "kernel")
    os.symlink("boot", root / "b")
    store = FileStore("root", base_dir=str(base))
    assert read_all(store, "kernel") == b"kernel"
    assert read_all(store, "b/vmlinuz") == b"kernel"


def test_root_itself_a_symlink(tree, tmp_path):
    _, root = tree
    os.symlink(root, tmp_path / "link-root")
    store = FileStore(str(tmp_path / "link-root"))
    assert read_all(store, "boot/vmlinuz") == b"kernel"
    with pytest.raises(FileError) as err:
        store.open("../secret", "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS


def test_plain_names_served(tree):
    base, _ = tree
    store = FileStore("root", base_dir=str(base))
    assert not store.remote
    assert read_all(store, "pxelinux.0") == b"pxe"
    assert read_all(store, "./pxelinux.0") == b"pxe"
    assert read_all(store, "boot/./vmlinuz") == b"kernel"
    assert read_all(store, "boot//vmlinuz") == b"kernel"


def test_missing_and_directory_are_not_found(tree):
    base, _ = tree
    store = FileStore("root", base_dir=str(base))
    for name in ("nope", "boot/nope", "pxelinux.0/x", "adir", "boot", "."):
        with pytest.raises(FileError) as err:
            store.open(name, "127.0.0.5")
        assert err.value.reason is FileReason.NOT_FOUND, name
    with pytest.raises(FileError) as err:
        store.open("", "127.0.0.5")
    assert err.value.reason is FileReason.NOT_FOUND


def test_file_error_carries_reason_and_message():
    err = FileError(FileReason.ACCESS, "Access violation")
    assert (err.reason, err.message, str(err)) == (FileReason.ACCESS, "Access violation", "Access violation")


# ----------------------------------------------------------------------- filters


def test_wildcards(tree):
    base, root = tree
    write(root / "menu.cfg", "menu")
    write(root / "one.cfg", "one")
    store = FileStore("root", [("pxelinux.cfg/*", "menu.cfg"), ("ab?", "one.cfg")], base_dir=str(base))
    for name in ("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "pxelinux.cfg/default", "pxelinux.cfg/a/b/c",
                 "pxelinux.cfg/"):
        assert read_all(store, name) == b"menu", name
    assert read_all(store, "abc") == b"one"
    assert read_all(store, "ab/") == b"one"
    for name in ("ab", "abcd", "xpxelinux.cfg/default", "PXELINUX.CFG/default"):
        with pytest.raises(FileError) as err:
            store.open(name, "127.0.0.5")
        assert err.value.reason is FileReason.NOT_FOUND, name


def test_pattern_characters_are_literal(tree):
    base, root = tree
    write(root / "hit", "hit")
    store = FileStore("root", [("a+b.[c]|(d)^$", "hit")], base_dir=str(base))
    assert read_all(store, "a+b.[c]|(d)^$") == b"hit"
    for name in ("aab.c|(d)^$", "a+bx[c]|(d)^$", "a+b.c|(d)^$", "a+b.[c]|d"):
        with pytest.raises(FileError):
            store.open(name, "127.0.0.5")


def test_whole_name_and_first_match_wins(tree):
    base, root = tree
    write(root / "first", "first")
    write(root / "second", "second")
    store = FileStore("root", [("boot/*", "first"), ("boot/vmlinuz", "second"), ("*", "second")],
                      base_dir=str(base))
    assert read_all(store, "boot/vmlinuz") == b"first"
    assert read_all(store, "anything") == b"second"
    store = FileStore("root", [("vmlinuz", "first")], base_dir=str(base))
    assert read_all(store, "boot/vmlinuz") == b"kernel"    # not a match: the whole name counts


def test_leading_dot_slash_tolerated(tree):
    base, root = tree
    write(root / "egg", "egg")
    store = FileStore("root", [("egg.info", "egg")], base_dir=str(base))
    assert read_all(store, "./egg.info") == b"egg"


def test_variables(tree):
    base, root = tree
    write(root / "pxelinux.0.AA:BB:CC:DD:EE:01.127.0.0.7.uuid-1.7.second", "vars")
    info = ClientInfo("127.0.0.7", mac="AA:BB:CC:DD:EE:01", uuid="uuid-1", arch=7, file="second")
    seen = []

    def lookup(ip):
        seen.append(ip)
        return info if ip == "127.0.0.7" else None

    store = FileStore("root", [("*", "{filename}.{mac}.{ip}.{uuid}.{arch}.{file}")],
                      base_dir=str(base), client_lookup=lookup)
    assert read_all(store, "pxelinux.0", "127.0.0.7") == b"vars"
    assert seen == ["127.0.0.7"]
    write(root / "pxelinux.0..127.0.0.8...", "unknown")   # unknown client: empty strings
    assert read_all(store, "pxelinux.0", "127.0.0.8") == b"unknown"


def test_file_variable_and_literal_braces(tree):
    base, root = tree
    write(root / "per-client" / "second", "second stage")
    write(root / "{x}", "braces")
    store = FileStore("root", [("next", "per-client/{file}"), ("braces", "{{x}}")], base_dir=str(base),
                      client_lookup=lambda ip: ClientInfo(ip, file="second"))
    assert read_all(store, "next") == b"second stage"
    assert read_all(store, "braces") == b"braces"


def test_arch_zero_is_substituted(tree):
    base, root = tree
    write(root / "arch-0", "bios")
    store = FileStore("root", [("boot", "arch-{arch}")], base_dir=str(base),
                      client_lookup=lambda ip: ClientInfo(ip, arch=0))
    assert read_all(store, "boot") == b"bios"


@pytest.mark.parametrize("target, bad", [("{nope}", "nope"), ("a/{filename}/{MAC}", "MAC"),
                                         ("[{bogus}.cfg]", "bogus"), ("{}", ""),
                                         ("{mac.upper}", "mac.upper")])
def test_unknown_variable_is_a_config_error(target, bad):
    with pytest.raises(ValueError) as err:
        FileStore("/srv", [("ok", "{filename}"), ("pxelinux.cfg/*", target)])
    assert "pxelinux.cfg/*" in str(err.value)
    assert "{" + bad + "}" in str(err.value)


@pytest.mark.parametrize("target", ["{mac:>20}", "{ip!r}", "{filename", "oops}"])
def test_malformed_template_is_a_config_error(target):
    with pytest.raises(ValueError, match="pat"):
        FileStore("/srv", [("pat", target)])


def test_indirection(tree):
    base, root = tree
    write(root / "chosen", "chosen file")
    write(base / "names" / "pxelinux.0.cfg", "\n   \n  chosen  \nignored\n")
    store = FileStore("root", [("pxelinux.0", "[names/{filename}.cfg]")], base_dir=str(base))
    assert read_all(store, "pxelinux.0") == b"chosen file"


def test_indirection_file_under_root_first(tree):
    base, root = tree
    write(root / "sel.txt", "boot/vmlinuz\n")
    write(base / "sel.txt", "pxelinux.0\n")
    store = FileStore("root", [("k", "[sel.txt]")], base_dir=str(base))
    assert read_all(store, "k") == b"kernel"


def test_indirection_absolute_and_admin_target_outside_root(tree, tmp_path):
    base, root = tree
    write(tmp_path / "abs.txt", str(tmp_path / "secret"))
    store = FileStore("root", [("s", f"[{tmp_path / 'abs.txt'}]")], base_dir=str(base))
    assert read_all(store, "s") == b"secret"       # admin-written targets are trusted


def test_indirection_missing_or_empty_file(tree):
    base, root = tree
    write(root / "empty.txt", "\n \n")
    store = FileStore("root", [("a", "[missing.txt]"), ("b", "[empty.txt]")], base_dir=str(base))
    for name in ("a", "b"):
        with pytest.raises(FileError) as err:
            store.open(name, "127.0.0.5")
        assert err.value.reason is FileReason.NOT_FOUND


def test_absolute_and_relative_targets(tree, tmp_path):
    base, root = tree
    write(base / "etc" / "pxe.cfg", "from base dir")
    write(root / "both.cfg", "from root")
    write(base / "both.cfg", "from base")
    store = FileStore("root", [
        ("abs", str(tmp_path / "secret")),       # absolute: used as is, outside the root
        ("rel", "etc/pxe.cfg"),                  # not under root: relative to base_dir
        ("both", "both.cfg"),                    # under root first
        ("up", "../secret"),                     # trusted: may leave the root
        ("none", "nowhere.cfg"),
    ], base_dir=str(base))
    assert read_all(store, "abs") == b"secret"
    assert read_all(store, "rel") == b"from base dir"
    assert read_all(store, "both") == b"from root"
    assert read_all(store, "up") == b"secret"
    with pytest.raises(FileError) as err:
        store.open("none", "127.0.0.5")
    assert err.value.reason is FileReason.NOT_FOUND


def test_filename_variable_cannot_smuggle_traversal(tree):
    base, root = tree
    store = FileStore("root", [("pxelinux.cfg/*", "boot/{filename}"), ("*", "{filename}")],
                      base_dir=str(base))
    for name in ("pxelinux.cfg/../../../secret", "/etc/passwd", "../secret"):
        with pytest.raises(FileError) as err:
            store.open(name, "127.0.0.5")
        assert err.value.reason is FileReason.ACCESS, name


def test_remote_root_absolute_target_is_local(tree, tmp_path):
    store = FileStore(REMOTE, [("local.cfg", str(tmp_path / "secret"))], base_dir=str(tree[0]),
                      cache_dir=str(tmp_path / "cache"))
    assert read_all(store, "local.cfg") == b"secret"
    assert store.size("local.cfg", "127.0.0.5") == 6


def test_client_lookup_failure_is_not_fatal(tree):
    base, root = tree
    write(root / "x-", "empty mac")

    def broken(ip):
        raise RuntimeError("boom")

    store = FileStore("root", [("x", "x-{mac}")], base_dir=str(base), client_lookup=broken)
    assert read_all(store, "x") == b"empty mac"


# ----------------------------------------------------------------------- reads and size


@pytest.fixture
def big(tmp_path):
    data = random.Random(7).randbytes(3 * CHUNK + 12345)
    write(tmp_path / "big.img", data)
    return FileStore(str(tmp_path)), data


def test_sequential_reads_with_rereads(big):
    store, data = big
    src = store.open("big.img", "127.0.0.5")
    assert src.size == len(data)
    block = 1468
    offset = 0
    n = 0
    while True:
        chunk = src.read(offset, block)
        assert chunk == data[offset:offset + block]
        if n % 5 == 4 and offset >= 4 * block:            # a retransmitted window
            back = offset - 4 * block
            assert src.read(back, block) == data[back:back + block]
        if len(chunk) < block:
            break
        offset += block
        n += 1
    assert src.read(len(data), block) == b""
    assert src.read(len(data) + 10_000, block) == b""
    src.close()
    src.close()  # idempotent


def test_nowait_reads_refill_one_buffer_in_place(big):
    """The event-loop path (read_nowait, as the TFTP pump reads): every block right, with
    rereads and a jump back; the source refills one chunk-sized buffer in place instead of a new
    one per chunk, so its memory stays one chunk and a storm allocates nothing per block."""
    store, data = big
    src = store.open("big.img", "127.0.0.5")
    block = 1428
    buffers = set()
    offset = n = 0
    while offset < len(data):
        chunk = bytes(src.read_nowait(offset, block))  # copied at once, as the transfer does
        assert chunk == data[offset:offset + block]
        buffers.add(id(src._buf))
        assert len(src._buf) <= CHUNK
        if n % 7 == 6:  # a read behind the buffer: read again from the file
            back = max(0, offset - 30 * block)
            assert bytes(src.read_nowait(back, block)) == data[back:back + block]
        offset += block
        n += 1
    assert src.read_nowait(len(data), block) == b""
    assert len(buffers) == 1
    src.close()


def test_random_offsets_and_lengths(big):
    store, data = big
    src = store.open("big.img", "127.0.0.5")
    rng = random.Random(3)
    for _ in range(300):
        offset = rng.randrange(0, len(data) + 100)
        length = rng.choice([1, 512, 1468, 8192, 65464, CHUNK + 7, 3 * CHUNK])
        assert src.read(offset, length) == data[offset:offset + length]
    assert src.read(5, 0) == b""
    src.close()


def test_reads_exact_length_until_eof(big):
    store, data = big
    src = store.open("big.img", "127.0.0.5")
    size = 65464
    got = [src.read(i, size) for i in range(0, len(data), size)]
    assert all(len(c) == size for c in got[:-1])
    assert b"".join(got) == data
    src.close()


def test_read_after_close_fails(big):
    store, _ = big
    src = store.open("big.img", "127.0.0.5")
    src.close()
    with pytest.raises(FileError):
        src.read(0, 10)


def test_empty_file(tmp_path):
    write(tmp_path / "empty")
    with open(tmp_path / "empty", "wb"):
        pass
    store = FileStore(str(tmp_path))
    src = store.open("empty", "127.0.0.5")
    assert src.size == 0
    assert src.read(0, 512) == b""
    src.close()


def test_size(tree, tmp_path):
    base, root = tree
    store = FileStore("root", [("alias", "boot/vmlinuz"), ("abs", str(tmp_path / "secret"))],
                      base_dir=str(base))
    assert store.size("pxelinux.0", "127.0.0.5") == 3
    assert store.size("boot/vmlinuz", "127.0.0.5") == 6
    assert store.size("alias", "127.0.0.5") == 6
    assert store.size("abs", "127.0.0.5") == 6
    assert store.size("missing", "127.0.0.5") is None
    assert store.size("boot", "127.0.0.5") is None
    assert store.size("../secret", "127.0.0.5") is None


def test_relative_root_is_relative_to_base_dir(tree, monkeypatch, tmp_path):
    base, root = tree
    monkeypatch.chdir(tmp_path)
    store = FileStore("root", base_dir=str(base))
    assert store.root == str(root)
    assert read_all(store, "pxelinux.0") == b"pxe"


def test_remote_property_and_url_root(tmp_path):
    store = FileStore("https://mirror.invalid/netboot/", cache_dir=str(tmp_path / "cache"))
    assert store.remote
    assert store.root == "https://mirror.invalid/netboot"


# ----------------------------------------------------------------------- substituted values (issue #11)


def acl_file(value: str):
    return lambda ip: ClientInfo(ip, mac="52:54:00:12:34:56", file=value)


@pytest.mark.parametrize("value", ["/etc/passwd", "../secret", "sub/../../secret", "a\0b", "C:\\x"])
def test_acl_file_value_is_confined_to_the_root(tree, value):
    """deploy/http-acl.ini's ``next.cfg = {file}``: before, ``File: /etc/passwd`` served
    /etc/passwd (an absolute target is a local file); now every value is checked."""
    base, root = tree
    store = FileStore("root", [("next.cfg", "{file}")], base_dir=str(base), client_lookup=acl_file(value))
    with pytest.raises(FileError) as err:
        store.open("next.cfg", "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS
    assert store.size("next.cfg", "127.0.0.5") is None


def test_bare_value_never_reaches_base_dir(tree):
    """A bare ``{file}`` stays inside the root: the config directory holds the ini and the
    lease database, and an ACL answer naming them must not serve them."""
    base, root = tree
    write(base / "massboot.ini", "[bootpd]\n")
    store = FileStore("root", [("next.cfg", "{file}")], base_dir=str(base),
                      client_lookup=acl_file("massboot.ini"))
    with pytest.raises(FileError) as err:
        store.open("next.cfg", "127.0.0.5")
    assert err.value.reason is FileReason.NOT_FOUND
    good = FileStore("root", [("next.cfg", "{file}")], base_dir=str(base),
                     client_lookup=acl_file("boot/vmlinuz"))
    assert read_all(good, "next.cfg") == b"kernel"


def test_value_stays_in_the_fixed_directory_on_the_real_path(tree, tmp_path):
    base, root = tree
    cfg = tmp_path / "cfg"
    write(cfg / "52:54:00:12:34:56.cfg", "per mac")
    os.symlink(tmp_path / "secret", cfg / "escape.cfg")
    store = FileStore("root", [("pxe.cfg", str(cfg) + "/{mac}.cfg"), ("other.cfg", str(cfg) + "/{file}")],
                      base_dir=str(base), client_lookup=acl_file("escape.cfg"))
    assert read_all(store, "pxe.cfg") == b"per mac"
    with pytest.raises(FileError) as err:              # a symlink out of /srv/cfg/
        store.open("other.cfg", "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS


def test_fixed_directories_resolved_once_not_per_request(tree, tmp_path, monkeypatch):
    """realpath() makes an lstat per component: the root's and every template's fixed
    directory are resolved when the filters are read (start, a reload of [filters]), never per
    request."""
    base, root = tree
    cfg = tmp_path / "cfg"
    write(cfg / "52:54:00:12:34:56.cfg", "per mac")
    write(root / "cfg" / "52:54:00:12:34:56.cfg", "root per mac")
    os.symlink(tmp_path / "secret", cfg / "escape.cfg")
    store = FileStore("root", [("pxe.cfg", str(cfg) + "/{mac}.cfg"), ("other.cfg", str(cfg) + "/{file}"),
                               ("rel.cfg", "cfg/{mac}.cfg")],
                      base_dir=str(base), client_lookup=acl_file("escape.cfg"))

    real = os.path.realpath

    def no_realpath(path):   # the threadpool's lookup may: it runs beside the event loop
        assert threading.current_thread() is not threading.main_thread(), f"realpath({path!r}) per request"
        return real(path)

    monkeypatch.setattr(os.path, "realpath", no_realpath)
    for _ in range(2):
        assert read_all(store, "pxe.cfg") == b"per mac"
        assert read_all(store, "rel.cfg") == b"root per mac"
        with pytest.raises(FileError) as err:          # still refused: the threadpool's check
            store.open("other.cfg", "127.0.0.5")
        assert err.value.reason is FileReason.ACCESS


def test_values_side_by_side_cannot_make_a_traversal(tree):
    base, root = tree
    store = FileStore("root", [("x", "cfg/{arch}.{file}")], base_dir=str(base),
                      client_lookup=lambda ip: ClientInfo(ip, file="./../../secret"))
    with pytest.raises(FileError) as err:
        store.open("x", "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS
    store = FileStore("root", [("y", "{uuid}.{file}")], base_dir=str(base),
                      client_lookup=lambda ip: ClientInfo(ip, uuid="", file="/../secret"))
    with pytest.raises(FileError):
        store.open("y", "127.0.0.5")


def test_value_cannot_make_a_url(tree):
    base, root = tree
    store = FileStore("root", [("next.cfg", "{file}")], base_dir=str(base),
                      client_lookup=acl_file("http://evil.invalid/x"))
    with pytest.raises(FileError) as err:
        store.open("next.cfg", "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS


@pytest.mark.parametrize("name", ["%2e%2e/%2e%2e/etc/passwd", "x?x=1", "x#frag", "a%3fb", "%2E%2E%2fsecret"])
def test_filename_into_a_url_target_is_checked_after_decoding(tree, tmp_path, name):
    """A local root, a URL filter target: the client's name reaches the mirror neither as
    ``../`` nor as a query string (refused before any request: the URL below is never asked)."""
    base, root = tree
    store = FileStore("root", [("*", REMOTE + "/{filename}")], base_dir=str(base),
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileError) as err:
        store.open(name, "127.0.0.5")
    assert err.value.reason is FileReason.ACCESS


def test_resolved_urls_are_normalised_and_quoted(tree, tmp_path):
    from massboot.files.names import Resolver

    def resolver(root, filters=()):
        return Resolver(root, filters, base_dir=str(tree[0]), client_lookup=acl_file("a b/c"),
                        first_line=lambda paths: None)

    remote = resolver(REMOTE, [("cfg/*", "pxe/{filename}"), ("next", REMOTE + "/x/{file}?v=1")])
    for name in ("x", "./x", "././x", ".//x", "x/", "./x//"):
        assert remote.resolve(name, "127.0.0.5").url == REMOTE + "/x", name
    assert remote.resolve("cfg//./a", "127.0.0.5").url == REMOTE + "/pxe/cfg/a"
    assert remote.resolve("next", "127.0.0.5").url == REMOTE + "/x/a%20b/c?v=1"
    assert remote.resolve("\udcff\udcfe.bin", "127.0.0.5").url == REMOTE + "/%FF%FE.bin"
    with pytest.raises(FileError) as err:
        remote.resolve(".//./", "127.0.0.5")
    assert err.value.reason is FileReason.NOT_FOUND


def test_negative_entries_expire_by_age_and_are_never_wiped():
    """Before: the table of known-missing names was cleared whenever it reached 4,096 names."""
    from massboot.files.cache import Missing

    now = [0.0]
    missing = Missing(ttl=30.0, limit=3, clock=lambda: now[0])
    for i in range(3):
        missing.add(f"u{i}")
        now[0] += 1.0
    missing.add("u3")                       # over the limit: only the oldest goes
    assert "u0" not in missing and all(f"u{i}" in missing for i in (1, 2, 3)) and len(missing) == 3
    now[0] = 31.5                           # u1 (added at 1.0) is 30.5 s old: expired by age
    assert "u1" not in missing and "u2" in missing and "u3" in missing
    missing.add("u4")                       # expired ones are dropped as new ones come
    assert len(missing) <= 3 and "u3" in missing
