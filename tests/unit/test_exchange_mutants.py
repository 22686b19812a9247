"""The sans-IO DHCP exchange, pinned down by mutation testing (tests/mutation.sh
``massboot/dhcp/exchange.py``): the settings built from ``[bootpd]``, the malformed-type event,
probes asked at most once per address and what they carry, the lease a RELEASE or a plain BOOTP
reply returns, option 15, a NAK without boot information, misuse of the steps (README "DHCP and
PXE behaviour", "Lease lifecycle").

Equivalent mutants accepted (no observable difference, see README "Mutation testing"):

* ``on_acl``: ``self._answer(None)`` for ``self._answer(False)`` (falsy alike).
* ``on_probe``: ``probed=None if answered and False else lease.ip`` (an address that answered
  is set aside and the MAC's offer dropped, so the next allocation never returns it).
* ``__init__``: ``self._new_state = None`` (every path that reads it sets it first).
* ``start``: ``option(53) or b"XXXX"`` (a bad type means option 53 is present), and
  ``int.from_bytes`` without ``"big"`` (the default byte order since Python 3.11; one byte).
* ``_offer``: a plain BOOTP ``bind(mac, None)`` for ``bind(mac, lease.ip)`` (the store binds
  the MAC's address, which is the one it just allocated).
* ``_boot_info``: ``size = ""`` for ``size = None`` (option 13 is sent for a size only).
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from massboot.acl import AclResult, Verdict
from massboot.config import AclRule, BootpConfig, HttpAclConfig
from massboot.dhcp.exchange import Exchange, ProbeQuery, Scope, Settings, classify, select_scope
from massboot.dhcp.leases import BOUND, OFFERED, RELEASED, MemoryLeaseStore
from massboot.dhcp.packet import MessageType, Opt, Reason
from massboot.dhcp.policy import State
from tests.unit.test_exchange import MAC_S, POOL, UUID, Clock, World, os_pkt, pkt, world

D, Q, R = MessageType.DISCOVER, MessageType.REQUEST, MessageType.RELEASE


# ---------------------------------------------------------------- Settings.from_config

def test_settings_from_config_carry_every_bootpd_option() -> None:
    def size(name: str, ip: str) -> int | None:
        return None

    config = BootpConfig(
        pool_start="10.0.0.100", port=6767, access="mac", allow_simple_dhcp=True,
        servername="boot", domain="example.org", domain_explicit=True,
        static={"52:54:00:00:00:EE": "10.0.0.50"},
        mac_rules=(AclRule.mac("52-54-00/24", True),), uuid_rules=(AclRule.uuid(UUID, True),),
        http=HttpAclConfig("http://acl.example/", always_check=True),
        buggy_clients=(AclRule.mac("52-54-00-12/32", True),),
        default_bootfile="pxelinux.0", bootfiles={7: "shimx64.efi"}, ipxe_boot_file="boot.ipxe",
        probe=True, probe_timeout=0.25)
    s = Settings.from_config(config, "10.0.0.1", bootfile_size=size)
    assert (s.server_ip, s.sname, s.server_port, s.allow_simple_dhcp, s.access) == \
        ("10.0.0.1", "boot.example.org", 6767, True, "mac")
    assert s.static == frozenset({"52:54:00:00:00:EE"}) and s.http_always_check is True
    assert (s.default_bootfile, s.bootfiles, s.ipxe_bootfile) == \
        ("pxelinux.0", {7: "shimx64.efi"}, "boot.ipxe")
    assert (s.domain_name, s.probe, s.probe_timeout) == ("example.org", True, 0.25)
    assert s.bootfile_size is size and s.uuid_acl is None
    assert s.mac_acl.check(0x525400123456) is True and s.mac_acl.check(0x001122334455) is None
    assert s.buggy.check(0x525400123456) is True and s.buggy.check(0x001122334455) is None

    uuid = Settings.from_config(BootpConfig(pool_start="10.0.0.100", access="uuid",
                                            mac_rules=config.mac_rules, uuid_rules=config.uuid_rules),
                                "10.0.0.1")
    assert uuid.mac_acl is None and uuid.uuid_acl.check(int(UUID.replace("-", ""), 16)) is True
    plain = Settings.from_config(BootpConfig(pool_start="10.0.0.100", domain="example.org",
                                             mac_rules=config.mac_rules), "10.0.0.1")
    assert (plain.mac_acl, plain.uuid_acl, plain.buggy, plain.domain_name, plain.access) == \
        (None, None, None, None, None)
    assert plain.http_always_check is False and plain.bootfile_size is None and plain.probe is True


# ---------------------------------------------------------------- scopes and classification

def test_an_unrelayed_request_stays_in_the_main_scope_whatever_the_scopes_hold() -> None:
    w = world()
    anywhere = Scope("any", MemoryLeaseStore(["10.8.0.10"]), w.rack.net, ipaddress.IPv4Network("0.0.0.0/0"))
    assert select_scope(pkt(D), w.main, [anywhere]) is w.main
    assert select_scope(pkt(D, giaddr="10.8.0.1"), w.main, [anywhere]) is anywhere


def test_an_unknown_message_type_is_reported_with_its_value_and_source() -> None:
    run = world()(pkt(99), ("10.0.0.77", 68))
    assert run.event("dhcp.malformed") == {"reason": Reason.BAD_MESSAGE_TYPE, "source": "10.0.0.77",
                                           "detail": "message type 99 unknown (RFC 2132 §9.6)"}


def test_a_pxe_request_for_another_server_keeps_the_pxe_state() -> None:
    w = world()
    w.dora()
    assert w.client().state == State.PXE
    run = w(pkt(Q, sid="10.0.0.9", want="10.0.0.100"))
    assert run.outcome.no_reply == "other_server" and w.client().state == State.PXE


# ---------------------------------------------------------------- probes

class AlwaysSuspect(MemoryLeaseStore):
    """A store that wants every address probed (as a store shared by several servers might)."""

    def needs_probe(self, ip: str) -> bool:
        return True


def _suspect_world(answers: list) -> World:
    w = world(probe=True, probe_timeout=0.3)
    w.main = Scope("main", AlwaysSuspect(POOL), w.main.net, w.main.network)
    w.probe_answers = list(answers)
    return w


@pytest.mark.parametrize("answer", [False, None])
def test_an_address_found_silent_or_not_probed_is_offered_without_a_second_probe(answer) -> None:
    w = _suspect_world([answer])
    run = w(pkt(D))
    assert [p.ip for p in w.probes] == ["10.0.0.100"]
    assert run.reply.message_type == MessageType.OFFER and run.reply.yiaddr == "10.0.0.100"
    assert run.outcome.lease.state == OFFERED and w.main.store.get(MAC_S).state == OFFERED


def test_a_probe_carries_the_events_before_it() -> None:
    w = _suspect_world([False])
    exchange = Exchange(w.settings, classify(pkt(D), ("0.0.0.0", 68)), None, w.main)
    step = exchange.start()
    assert isinstance(step, ProbeQuery) and (step.ip, step.mac, step.timeout) == ("10.0.0.100", MAC_S, 0.3)
    assert [e.kind for e in step.events] == ["dhcp.received"]
    outcome = exchange.on_probe(False)
    assert [e.kind for e in outcome.events] == ["dhcp.probe", "dhcp.reply"]
    with pytest.raises(AssertionError, match="^no probe asked$"):
        exchange.on_probe(False)                         # answered already


def test_the_steps_refuse_to_run_out_of_order() -> None:
    w = world()
    exchange = Exchange(w.settings, classify(pkt(D), ("0.0.0.0", 68)), None, w.main)
    with pytest.raises(AssertionError, match="^start\\(\\) first$"):
        exchange.on_acl(AclResult(Verdict.ALLOWED))
    with pytest.raises(AssertionError, match="^start\\(\\) first$"):
        exchange.on_probe(False)
    assert exchange.start().reply is not None            # an offer at once: nothing probed
    with pytest.raises(AssertionError, match="^no probe asked$"):
        exchange.on_probe(False)


# ---------------------------------------------------------------- leases in outcomes

def test_a_release_returns_the_released_lease() -> None:
    w = world()
    w.dora()
    run = w(pkt(R, ciaddr="10.0.0.100"))
    assert run.outcome.lease is not None
    assert (run.outcome.lease.ip, run.outcome.lease.state) == ("10.0.0.100", RELEASED)


def test_plain_bootp_binds_with_the_uuid_known_from_the_pxe_phase() -> None:
    clock = Clock()
    w = world(allow_simple_dhcp=True, store_options=dict(clock=clock))
    w(pkt(D))                                            # PXE: the UUID comes with option 97
    run = w(os_pkt(None))
    assert run.outcome.lease.state == BOUND and run.outcome.lease.uuid == UUID
    assert w.main.store.get(MAC_S).uuid == UUID


# ---------------------------------------------------------------- replies

def test_option_15_is_the_configured_domain_when_asked() -> None:
    w = world(domain_name="example.org")
    request = pkt(D)
    options = tuple((code, bytes([1, 3, 6, 15]) if code == Opt.PARAM_REQUEST else value)
                    for code, value in request.options)
    offer = w(dataclasses.replace(request, options=options))
    assert offer.reply.option(Opt.DOMAIN_NAME) == b"example.org"
    assert w(pkt(D)).reply.option(Opt.DOMAIN_NAME) is None        # not asked for


def test_a_nak_names_no_boot_file_and_reports_no_fallback() -> None:
    w = world()
    w.dora(arch=11)                                      # arch 11 falls back to the default file
    nak = w(pkt(Q, arch=11, want="10.0.0.103"))
    assert nak.reply.message_type == MessageType.NAK
    assert "dhcp.arch_fallback" not in nak.kinds and nak.event("dhcp.reply")["file"] is None
