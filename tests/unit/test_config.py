"""Config loading: both pybootd generations, defaults, aliases, errors (README, Configuration)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from massboot import config as cfg

DATA = Path(__file__).resolve().parent.parent / "data"


def load(name: str) -> cfg.Config:
    return cfg.load(str(DATA / name))


def test_pybootd_18_sample_loads_with_pybootd_meaning():
    c = load("pybootd-1.8-sample.ini")
    b = c.bootp
    assert b is not None
    assert (b.pool_start, b.pool_count, b.address, b.port) == ("192.168.25.100", 5, "0.0.0.0", 67)
    assert b.access == "mac" and b.allow_simple_dhcp is True
    assert b.lease_time == 86400 and b.dns == ("8.8.8.8",)
    # server_name is not read by pybootd: sname stays unknown.localdomain
    assert (b.servername, b.domain) == ("unknown", "localdomain")
    assert b.default_bootfile == "pxelinux.0"
    assert b.bootfiles == {0: "pxelinux.0", 2: "shim.efi", 6: "shim.efi", 7: "shimx64.efi",
                           8: "shimx64.efi", 9: "shimx64.efi"}
    assert [(rule.key, rule.allowed) for rule in b.mac_rules] == [("00-aa-55-12-34-56", True),
                                                                  ("1c-69-7a/24", True)]
    assert b.mac_rules[1] == cfg.AclRule("1c-69-7a/24", 0x1C697A000000, 0xFFFFFF000000, True, 48)
    assert b.buggy_clients == (b.mac_rules[1],)
    assert [rule.exact for rule in b.uuid_rules] == [True, True] and b.uuid_rules[0].bits == 128
    assert b.http is not None and b.http.location == "127.0.0.1:13400" and b.http.timeout == 5
    assert c.tftp.root == os.path.normpath(str(DATA / "images"))   # relative to the config file
    assert c.tftp.filters == (("egg.info", "[{filename}]"),)
    assert c.tftp.blocksize is None and c.tftp.timeout == 2.0 and c.tftp.port == 69   # pybootd's default
    assert c.tftp.backoff_max == 6.0                                  # README, [tftpd]: loss
    assert c.logger.type == "stderr" and c.logger.level == logging.INFO


def test_internet_install_example():
    c = load("pybootd-1.8-internet.ini")
    assert c.bootp.pool_count == 10 and c.bootp.default_bootfile == "pxelinux.0"
    assert c.bootp.bootfiles == {7: "shimx64.efi"}
    assert c.remote_root and c.tftp.root.startswith("http://")
    assert c.tftp.filters == (("pxelinux.cfg/*", "pybootd/etc/pxe.cfg"),)


def test_documented_generation_same_meaning(caplog):
    c = load("pybootd-documented-sample.ini")
    b = c.bootp
    assert b.default_bootfile == "pxelinux.0" and b.bootfiles == {}
    assert b.dns == ("10.130.0.2",) and b.access == "mac"
    assert b.mac_rules == (cfg.AclRule.mac("00-1e-4f-c4-95-ee", True),)
    assert c.remote_root
    # boot_file is given twice: a warning, the last value wins
    assert any("boot_file is given more than once" in w for w in c.warnings)
    d = load("pybootd-documented-debian.ini")
    assert d.bootp.allow_simple_dhcp and d.bootp.dns == ("8.8.8.8",)
    assert d.tftp.filters == (("pxelinux.cfg/*", "pybootd/etc/pxe.cfg"),)


def test_minimal_configs():
    h = load("minimal-http-acl.ini")
    assert h.bootp.access == "http" and h.bootp.http.timeout == 3 and h.bootp.pool_count == 200
    assert h.tftp.root == "/srv/tftp" and h.bootp.bootfiles == {7: "ipxe.efi"}
    s = load("minimal-static.ini")
    assert s.bootp.pool_count == 0 and s.bootp.static == {"52:54:00:12:34:56": "10.0.0.10"}
    assert s.tftp is not None and s.bootp.access is None


def test_tests_config_without_bootp_section():
    c = load("tests-config.ini")
    assert c.bootp is None and c.logger.level == logging.DEBUG


BASE = "[bootpd]\npool_start = 10.0.0.10\n[bootfile]\ndefault = pxelinux.0\n"


@pytest.mark.parametrize("text, section, option, value", [
    ("[bootpd]\npool_start = 10.0.0.10\npool_count = ten\n[bootfile]\ndefault = a\n",
     "bootpd", "pool_count", "ten"),
    ("[bootpd]\npool_start = 10.0.0.300\n[bootfile]\ndefault = a\n", "bootpd", "pool_start", "10.0.0.300"),
    (BASE.replace("[bootfile]", "allow_simple_dhcp = maybe\n[bootfile]"),
     "bootpd", "allow_simple_dhcp", "maybe"),
    (BASE.replace("[bootfile]", "access = ldap\n[bootfile]"), "bootpd", "access", "ldap"),
    (BASE.replace("[bootfile]", "access = mac\n[bootfile]"), "bootpd", "access", "mac"),
    (BASE.replace("[bootfile]", "notify = 10.0.0.1\n[bootfile]"), "bootpd", "notify", "10.0.0.1"),
    (BASE.replace("[bootfile]", "dns = 8.8.8.8;nine\n[bootfile]"), "bootpd", "dns", "nine"),
    (BASE + "[mac]\nZZ-11 = yes\n", "mac", "zz-11", "yes"),
    (BASE + "[mac]\n00-11-22 = sure\n", "mac", "00-11-22", "sure"),
    (BASE + "[tftpd]\nblocksize = 70000\n", "tftpd", "blocksize", "70000"),
    (BASE + "[tftpd]\ntimeout = fast\n", "tftpd", "timeout", "fast"),
    (BASE + "[tftpd]\nroot = ftp://x/y\n", "tftpd", "root", "ftp://x/y"),
    (BASE + "[static_dhcp]\n52-54-00-12-34 = 10.0.0.5\n", "static_dhcp", "52-54-00-12-34", "10.0.0.5"),
    (BASE + "[logger]\ntype = carrier-pigeon\n", "logger", "type", "carrier-pigeon"),
    (BASE + "[subnet:rack2]\nnetwork = 10.2.0.0/24\npool_start = 10.3.0.1\n", "subnet:rack2",
     "pool_start", "10.3.0.1"),
])
def test_bad_values_name_section_option_value(text, section, option, value):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.loads(text)
    e = err.value
    assert (e.section, e.option, e.value) == (section, option, value)
    assert f"[{section}]" in str(e) and repr(value) in str(e)


def test_missing_required():
    with pytest.raises(cfg.ConfigError, match=r"\[bootpd\] pool_start: missing"):
        cfg.loads("[bootpd]\npool_count = 3\n[bootfile]\ndefault = a\n")
    with pytest.raises(cfg.ConfigError, match=r"\[bootfile\] default: missing"):
        cfg.loads("[bootpd]\npool_start = 10.0.0.1\n")


def test_generations_conflict_names_both_places():
    text = ("[bootp]\npool_start = 10.0.0.1\npool_count = 5\n[bootpd]\npool_count = 6\n"
            "[bootfile]\ndefault = a\n")
    with pytest.raises(cfg.ConfigError, match=r"\[bootp\] pool_count = '5' and \[bootpd\] pool_count = '6'"):
        cfg.loads(text)
    with pytest.raises(cfg.ConfigError, match="boot_file"):
        cfg.loads("[bootp]\npool_start = 10.0.0.1\nboot_file = a\n[bootfile]\ndefault = b\n")
    # the same value twice is fine
    c = cfg.loads("[bootp]\npool_start = 10.0.0.1\nboot_file = a\n[bootfile]\ndefault = a\n")
    assert c.bootp.default_bootfile == "a"


def test_unknown_names_warn_with_hint():
    c = cfg.loads(BASE.replace("[bootfile]", "pool_cuont = 3\n[bootfile]")
                  + "[tftpd]\nblksize = 1468\n[bootfiles]\nx = y\n")
    text = "\n".join(c.warnings)
    assert "did you mean pool_count?" in text
    assert "did you mean blocksize?" in text
    assert "did you mean [bootfile]?" in text


@pytest.mark.parametrize("word, expected",
                         [(w, True) for w in "on true enable enabled yes high ok 1 YES".split()]
                         + [(w, False) for w in "off false disable disabled no low ko 0 Off".split()])
def test_booleans(word, expected):
    c = cfg.loads(BASE.replace("[bootfile]", f"allow_simple_dhcp = {word}\n[bootfile]"))
    assert c.bootp.allow_simple_dhcp is expected


def test_parsing_semantics():
    text = ("[bootpd]\npool_start: 10.0.0.10\nPOOL_COUNT = 4\n; a comment\n# another\n"
            "servername = pxe%(x)s\n[bootfile]\ndefault = a\n00007 = b.efi\n9 = c.efi\n")
    c = cfg.loads(text)
    assert c.bootp.pool_count == 4 and c.bootp.servername == "pxe%(x)s"   # no interpolation
    assert c.bootp.bootfiles == {7: "b.efi", 9: "c.efi"}                    # 00007 and 7 alike


def test_subnets_and_additions():
    c = cfg.loads("[bootpd]\npool_start = 10.0.0.10\nipxe_boot_file = http://10.0.0.1/boot.ipxe\n"
                  "[bootfile]\ndefault = pxelinux.0\n"
                  "[subnet:rack2]\nnetwork = 10.2.0.0/24\npool_start = 10.2.0.50\npool_count = 100\n"
                  "gateway = 10.2.0.1\ndns = 10.2.0.2\n[metrics]\nport = 9100\n")
    assert c.bootp.ipxe_boot_file == "http://10.0.0.1/boot.ipxe"
    (sub,) = c.bootp.subnets
    assert (sub.name, str(sub.network), sub.pool_start, sub.pool_count, sub.gateway, sub.dns) == (
        "rack2", "10.2.0.0/24", "10.2.0.50", 100, "10.2.0.1", ("10.2.0.2",))
    assert c.metrics is not None and c.metrics.port == 9100


def test_describe_mentions_what_is_served():
    text = "\n".join(cfg.describe(load("pybootd-1.8-sample.ini")))
    assert "192.168.25.100 .. 192.168.25.104" in text and "arch 7 'shimx64.efi'" in text


def test_lease_lifecycle_options():
    """README, "Lease lifecycle": defaults, values, and errors naming section, option and value."""
    base = "[bootpd]\npool_start = 10.0.0.10\n{}\n[bootfile]\ndefault = a\n"
    b = cfg.loads(base.format("")).bootp
    assert (b.offer_hold, b.reclaim, b.decline_probation, b.probe, b.probe_timeout) == \
        (60.0, "expired", 86400.0, True, 0.5)
    b = cfg.loads(base.format("offer_hold = 5\nreclaim = NEVER\ndecline_probation = 0\nprobe = off\n"
                              "probe_timeout = 0.2")).bootp
    assert (b.offer_hold, b.reclaim, b.decline_probation, b.probe, b.probe_timeout) == \
        (5.0, "never", 0.0, False, 0.2)
    assert "offers held 5s, reclaim never, decline probation 0s, probe off" in "\n".join(
        cfg.describe(cfg.loads(base.format("offer_hold = 5\nreclaim = never\ndecline_probation = 0\n"
                                           "probe = off"))))
    for bad in ("reclaim = sometimes", "offer_hold = 0", "probe = maybe", "probe_timeout = 60"):
        with pytest.raises(cfg.ConfigError, match=r"\[bootpd\] " + bad.split()[0]):
            cfg.loads(base.format(bad))


def test_pool_addresses():
    assert cfg.pool_addresses("10.0.0.254", 3) == ["10.0.0.254", "10.0.0.255", "10.0.1.0"]


@pytest.mark.parametrize("name", ["massboot.ini", "debian-mirror.ini", "http-acl.ini"])
def test_deploy_samples_load_without_warnings(name):
    path = Path(__file__).resolve().parents[2] / "deploy" / name
    c = cfg.load(str(path))
    assert c.bootp is not None and not c.warnings
    assert list(cfg.describe(c))


@pytest.mark.parametrize("target, reason", [
    ("{nope}.cfg", "unknown variable {nope} (known: {arch}, {file}, {filename}, {ip}, {mac}, {uuid})"),
    ("[cfg/{macaddr}]", "unknown variable {macaddr}"),
    ("{}", "unknown variable {}"),
    ("{mac!r}", "{mac} takes no format spec or conversion"),
    ("{mac:>20}", "{mac} takes no format spec or conversion"),
    ("cfg/{mac", "expected '}'"),
])
def test_filter_targets_checked_at_load(target, reason):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.loads(BASE + f"[filters]\npxelinux.cfg/* = {target}\n")
    e = err.value
    assert (e.section, e.option, e.value) == ("filters", "pxelinux.cfg/*", target)
    assert reason in str(e) and str(e).startswith(f"[filters] pxelinux.cfg/* = {target!r}: ")


def test_filter_targets_with_known_variables():
    text = (BASE + "[filters]\na = {filename}\nb = [{file}]\nc = x/{mac}-{ip}-{uuid}-{arch}.cfg\n"
            "d = {{literal}}\n")
    assert [p for p, _ in cfg.loads(text).tftp.filters] == ["a", "b", "c", "d"]


def test_check_local_root(tmp_path):
    cfg.check_local_root(cfg.loads(BASE + f"[tftpd]\nroot = {tmp_path}\n"))
    cfg.check_local_root(cfg.loads(BASE + "[tftpd]\nroot = http://mirror.example/netboot\n"))
    missing = tmp_path / "nope"
    with pytest.raises(cfg.ConfigError) as err:
        cfg.check_local_root(cfg.loads(BASE + f"[tftpd]\nroot = {missing}\n"))
    assert (err.value.section, err.value.option, err.value.value) == ("tftpd", "root", str(missing))


@pytest.mark.parametrize("table", list(cfg.TABLES.values()) + [cfg.SUBNET], ids=lambda t: t.name)
def test_table_defaults_parse(table):
    for option in table.options:
        if option.default is not None and not option.ignored:
            option.parse(table.name, option.name, option.default)   # a default is a valid value
        assert not (option.missing and option.default is not None), option.name
        assert option.doc and option.name == option.name.lower()


def test_dataclass_defaults_are_the_tables():
    """Built with no arguments, the dataclasses hold what an empty section loads as."""
    empty = cfg.loads(BASE + "[metrics]\n[http]\nlocation = h\n[bootpd]\naccess = http\n", path="/x/y.ini")
    assert empty.metrics == cfg.MetricsConfig()
    assert empty.logger == cfg.LoggerConfig()
    assert empty.bootp.http == cfg.HttpAclConfig("h")
    assert empty.tftp == cfg.TftpConfig(root="/x", cache_dir="/x/cache")   # in the state directory
    assert empty.massboot == cfg.MassbootConfig("/x") and empty.state_dir == "/x"
    bootp = cfg.BootpConfig("10.0.0.10", access="http", lease_db="/x/massboot-leases.sqlite3",
                            default_bootfile="pxelinux.0", http=cfg.HttpAclConfig("h"))
    assert empty.bootp == bootp


def test_readme_option_tables_are_the_code_tables():
    """README.rst's option tables are rendered from the code's tables (same options, defaults, docs).

    Generated rather than compared field by field: the doc line lives once, in massboot/config.py,
    and tests/tools/readme_options.py rewrites the README's tables from it.
    """
    from tests.tools import readme_options

    text = readme_options.README.read_text(encoding="utf-8")
    found = readme_options.tables(text)
    assert sorted(found) == ["bootpd", "http", "httpd", "logger", "massboot", "metrics", "subnet:NAME",
                             "tftpd"]
    lines = text.splitlines()
    for name, (start, end) in found.items():
        table = readme_options.section_table(name)
        assert lines[start:end] == readme_options.render(table), (
            f"README.rst's [{name}] table is not massboot/config.py's: "
            "run python tests/tools/readme_options.py")
        rows = [line.split()[:2] for line in lines[start + 3:end - 1] if not line.startswith(" ")]
        assert [row[0] for row in rows] == table.names()
    assert ["pool_count", "``10``"] in [line.split()[:2] for line in readme_options.render(cfg.BOOTPD)]


HTTP_ACL = BASE + "[bootpd]\naccess = http\n[http]\nlocation = acl:8080\n"


def test_bootp_timeout_is_the_documented_http_acl_timeout():
    """pybootd's published docs put the HTTP ACL timeout in [bootp]: honoured when [http] has none."""
    assert cfg.loads(HTTP_ACL + "[bootp]\ntimeout = 7\n").bootp.http.timeout == 7
    assert cfg.loads(HTTP_ACL + "timeout = 3\n").bootp.http.timeout == 3      # [http] timeout
    assert cfg.loads(HTTP_ACL + "timeout = 3\n[bootp]\ntimeout = 3\n").bootp.http.timeout == 3
    with pytest.raises(cfg.ConfigError) as info:
        cfg.loads(HTTP_ACL + "timeout = 3\n[bootp]\ntimeout = 7\n")
    assert str(info.value) == ("[http] timeout = '3': given twice with different values: "
                               "[bootp] timeout = '7' and [http] timeout = '3'")
    with pytest.raises(cfg.ConfigError, match=r"\[bootpd\] timeout = 'soon': not a number"):
        cfg.loads(HTTP_ACL + "[bootp]\ntimeout = soon\n")


def test_state_dir_holds_the_lease_db_and_the_cache():
    c = cfg.loads(BASE, path="/etc/mb/x.ini")
    assert c.state_dir == "/etc/mb" and c.bootp.lease_db == "/etc/mb/massboot-leases.sqlite3"
    assert c.tftp.cache_dir == "/etc/mb/cache" and c.admin_socket == "/etc/mb/admin.sock"
    c = cfg.loads(BASE + "[massboot]\nstate_dir = /var/lib/massboot\nuser = massboot\n", path="/etc/mb/x.ini")
    assert c.bootp.lease_db == "/var/lib/massboot/massboot-leases.sqlite3"
    assert c.tftp.cache_dir == "/var/lib/massboot/cache" and c.massboot.user == "massboot"
    c = cfg.loads(BASE + "[massboot]\nstate_dir = state\n[bootpd]\nlease_db = /db/l.sqlite3\n",
                  path="/etc/mb/x.ini", state_dir="/run/override")
    assert c.state_dir == "/run/override" and c.bootp.lease_db == "/db/l.sqlite3"
    relative = cfg.loads(BASE + "[massboot]\nstate_dir = state\n", path="/etc/mb/x.ini")
    assert relative.state_dir == "/etc/mb/state"


def test_domain_is_explicit_only_when_given():
    assert not cfg.loads(BASE).bootp.domain_explicit
    c = cfg.loads(BASE + "[bootpd]\ndomain = rack.example\n")
    assert c.bootp.domain_explicit and c.bootp.domain == "rack.example"


@pytest.mark.parametrize(("location", "ok"), [("h:8080", True), ("https://acl.example:8443", True),
                                              ("http://h", True), ("ftp://h", False)])
def test_http_location_scheme(location, ok):
    """``[http] location``: host[:port] (plain HTTP, as pybootd), or an explicit http(s)://."""
    text = BASE + f"[http]\nlocation = {location}\n[bootpd]\naccess = http\n"
    if ok:
        assert cfg.loads(text, path="/x/y.ini").bootp.http.location == location
    else:
        with pytest.raises(cfg.ConfigError) as err:
            cfg.loads(text, path="/x/y.ini")
        assert err.value.option == "location"


def test_httpd_pybootd_options_and_defaults(tmp_path):
    """[httpd] keeps pybootd's names, defaults (port 80, check_ip yes) and meaning (spec 2.7)."""
    c = load("pybootd-1.8-sample.ini")
    assert (c.httpd.port, c.httpd.check_ip, c.httpd.root, c.httpd.address) == (8000, True, "/tmp", None)
    empty = cfg.loads("[tftpd]\nroot = .\n")
    assert (empty.httpd.port, empty.httpd.check_ip, empty.httpd.root) == (80, True, None)
    assert empty.httpd.max_request_bytes == 8192 and empty.httpd.max_connections == 1024
    rel = cfg.loads("[httpd]\nroot = boot\ncheck_ip = no\n", path=str(tmp_path / "m.ini"))
    assert rel.httpd.root == str(tmp_path / "boot") and rel.httpd.check_ip is False
    with pytest.raises(cfg.ConfigError, match="not a directory"):
        cfg.check_http_root(rel)
    (tmp_path / "boot").mkdir()
    cfg.check_http_root(rel)


@pytest.mark.parametrize("text, option", [
    ("[httpd]\nroot = http://mirror/x\n", "root"),
    ("[httpd]\ncheck_ip = maybe\n", "check_ip"),
    ("[httpd]\nport = 70000\n", "port"),
    ("[httpd]\nmax_request_bytes = 10\n", "max_request_bytes"),
    ("[httpd]\naddress = nowhere\n", "address"),
])
def test_httpd_bad_values(text, option):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.loads(text)
    assert (err.value.section, err.value.option) == ("httpd", option)


@pytest.mark.parametrize("options, value", [
    ("processes = 0", "0"),
    ("processes = 65", "65"),
    ("processes = two", "two"),
    ("processes = 4\npool_size = 3", "4"),
    ("processes = 2\nmemory_budget = 1K", "2"),
])
def test_tftp_processes_bounds(options, value):
    """[tftpd] processes: 1..64, and no more than pool_size and memory_budget can be split among
    (README, "TFTP worker processes"): the error names the section, the option and the value."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.loads(BASE + f"[tftpd]\n{options}\n")
    assert (err.value.section, err.value.option, err.value.value) == ("tftpd", "processes", value)


def test_tftp_processes_default_and_set():
    assert cfg.loads(BASE).tftp.processes == 1
    assert cfg.loads(BASE + "[tftpd]\nprocesses = 4\n").tftp.processes == 4
