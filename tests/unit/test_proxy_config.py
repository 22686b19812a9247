"""Proxy mode's configuration and server address (README, "proxyDHCP")."""

from __future__ import annotations

import pytest

from massboot import config as cfg
from massboot.netif import LocalNetwork, NetworkDetectError, detect_proxy

PROXY = "[bootpd]\nmode = proxy\n{extra}\n[bootfile]\ndefault = pxelinux.0\n"
LO = LocalNetwork.make("lo", "127.0.0.1", 8)
ETH0 = LocalNetwork.make("eth0", "10.1.2.3", 24)
ETH1 = LocalNetwork.make("eth1", "192.168.7.1", 24)


def test_proxy_mode_needs_no_pool() -> None:
    b = cfg.loads(PROXY.format(extra="")).bootp
    assert b is not None and b.mode == "proxy" and b.pool_start is None and b.bootserver_port == 4011
    assert cfg.loads(PROXY.format(extra="bootserver_port = 14011")).bootp.bootserver_port == 14011
    lines = list(cfg.describe(cfg.loads(PROXY.format(extra=""))))
    assert any(line.startswith("bootp: mode proxy") for line in lines)
    assert not any("pool" in line or "lease database" in line for line in lines)


def test_full_mode_is_the_default_and_still_needs_a_pool() -> None:
    b = cfg.loads("[bootpd]\npool_start = 10.0.0.10\n[bootfile]\ndefault = a\n").bootp
    assert b is not None and b.mode == "full"
    with pytest.raises(cfg.ConfigError, match=r"\[bootpd\] pool_start: missing"):
        cfg.loads("[bootpd]\n[bootfile]\ndefault = a\n")


@pytest.mark.parametrize("extra, named", [
    ("pool_start = 10.0.0.10", "pool_start"),
    ("pool_start = 10.0.0.10\npool_count = 20\nlease_time = 60", "pool_start, pool_count, lease_time"),
    ("gateway = 10.0.0.254\ndns = 10.0.0.53\nnetmask = 255.255.255.0", "gateway, dns, netmask"),
    ("allow_simple_dhcp = on", "allow_simple_dhcp"),
    ("probe = off\nlease_db = x.sqlite3", "lease_db, probe"),
    ("[static_dhcp]\n52-54-00-00-00-01 = 10.0.0.5", "[static_dhcp]"),
    ("[subnet:rack2]\nnetwork = 10.2.0.0/24\npool_start = 10.2.0.10", "[subnet:rack2]"),
])
def test_address_options_are_errors_in_proxy_mode(extra: str, named: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.loads(PROXY.format(extra=extra))
    err = info.value
    assert (err.section, err.option, err.value) == ("bootpd", "mode", "proxy")
    assert str(err).endswith("remove " + named)


def test_bad_mode_names_the_choices() -> None:
    with pytest.raises(cfg.ConfigError, match=r"\[bootpd\] mode = 'relay': expected one of full, proxy"):
        cfg.loads("[bootpd]\nmode = relay\n[bootfile]\ndefault = a\n")


def test_proxy_server_address() -> None:
    assert detect_proxy(None, networks=[LO, ETH0]) == ETH0             # the one non-loopback network
    assert detect_proxy("192.168.7.1", networks=[LO, ETH0, ETH1]) == ETH1      # [tftpd] address
    assert detect_proxy(None, "10.1.2.3", networks=[LO, ETH0, ETH1]) == ETH0   # [bootpd] address
    with pytest.raises(NetworkDetectError, match=r"2 IPv4 networks \(eth0 10.1.2.3/24, eth1 "
                                                 r"192.168.7.1/24\).*Set \[tftpd\] address"):
        detect_proxy(None, networks=[LO, ETH0, ETH1])
    with pytest.raises(NetworkDetectError, match="no IPv4 network but loopback"):
        detect_proxy(None, networks=[LO])
    with pytest.raises(NetworkDetectError, match=r"\[tftpd\] address 10.9.9.9 is not an address of this"):
        detect_proxy("10.9.9.9", networks=[LO, ETH0])


def test_deploy_proxy_sample_loads_in_proxy_mode() -> None:
    from pathlib import Path

    sample = Path(__file__).parents[2] / "deploy" / "proxy.ini"
    config = cfg.load(str(sample), state_dir="/tmp/massboot-proxy-sample-state")
    b = config.bootp
    assert b is not None and b.mode == "proxy" and b.proxy_offer == "redirect" and b.access == "mac"
    lines = list(cfg.describe(config))
    assert any("mode proxy" in line for line in lines) and any("boot file default" in line for line in lines)
