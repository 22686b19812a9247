"""Local ACL rule tables (pybootd ``[mac]`` / ``[uuid]`` matching) and the ACL body parser."""

from __future__ import annotations

import uuid

import pytest

from massboot.acl import AclResult, HttpAcl, RuleTable, Verdict, parse_acl_body
from massboot.config import AclRule
from massboot.ident import MAC_BITS, mac_int, parse_mac


def macs(items: list[tuple[str, bool]]) -> RuleTable:
    return RuleTable([AclRule.mac(key, allowed) for key, allowed in items])


def uuids(items: list[tuple[str, bool]]) -> RuleTable:
    return RuleTable([AclRule.uuid(key, allowed) for key, allowed in items])


def m(text: str) -> int:
    return mac_int(parse_mac(text))


def u(text: str) -> int:
    return uuid.UUID(text).int


def test_oui_mask_24_wildcard_bits() -> None:
    table = macs([("1C-69-7A/24", True)])
    assert table.check(m("1C:69:7A:00:00:01")) is True
    assert table.check(m("1C:69:7A:FF:FF:FF")) is True
    assert table.check(m("1C:69:7B:00:00:01")) is None


def test_mask_16_keeps_top_32_bits() -> None:
    table = macs([("AA-BB-CC-DD/16", True)])
    assert table.check(m("AA:BB:CC:DD:12:34")) is True
    assert table.check(m("AA:BB:CC:DE:12:34")) is None


def test_mask_4_is_last_nibble() -> None:
    table = macs([("00-11-22-33-44-50/4", True)])
    assert table.check(m("00:11:22:33:44:50")) is True
    assert table.check(m("00:11:22:33:44:5F")) is True
    assert table.check(m("00:11:22:33:44:60")) is None
    assert table.check(m("00:11:22:33:44:40")) is None


def test_exact_key_wins_over_an_earlier_mask() -> None:
    table = macs([("1C-69-7A/24", True), ("1C-69-7A-01-02-03", False)])
    assert table.check(m("1C:69:7A:01:02:03")) is False
    assert table.check(m("1C:69:7A:01:02:04")) is True


def test_first_match_in_ini_order() -> None:
    table = macs([("AA-BB-CC-DD/16", False), ("AA-BB-CC/24", True)])
    assert table.check(m("AA:BB:CC:DD:00:01")) is False
    assert table.check(m("AA:BB:CC:00:00:01")) is True
    reverse = macs([("AA-BB-CC/24", True), ("AA-BB-CC-DD/16", False)])
    assert reverse.check(m("AA:BB:CC:DD:00:01")) is True


def test_disabled_entry_and_not_listed() -> None:
    table = macs([("00-1E-4F-C4-95-EE", False), ("00-1E-4F-C4-95-EF", True)])
    assert table.check(m("00:1E:4F:C4:95:EE")) is False
    assert table.check(m("00:1E:4F:C4:95:EF")) is True
    assert table.check(m("00:1E:4F:C4:95:F0")) is None
    assert RuleTable([]).check(m("00:1E:4F:C4:95:F0")) is None


def test_duplicate_key_keeps_position_last_value_wins() -> None:
    table = macs([("AA-BB/32", True), ("AA-BB-CC/24", True), ("AA-BB/32", False)])
    assert len(table) == 2
    assert table.check(m("AA:BB:CC:00:00:01")) is False


def test_rule_objects() -> None:
    rule = AclRule("aa-bb-cc/24", 0xAABBCC000000, 0xFFFFFF000000, True, MAC_BITS)
    assert AclRule.mac("aa-bb-cc/24", True) == rule
    assert not rule.exact and AclRule.mac("AA-BB-CC-DD-EE-FF", False).exact
    assert RuleTable([rule]).check(0xAABBCC123456) is True
    with pytest.raises(ValueError, match="not both"):
        RuleTable([rule, AclRule.uuid("12345678-abcd-ef00-1111-abcdefabcdef", True)])


def test_invalid_mac_key() -> None:
    with pytest.raises(ValueError):
        AclRule.mac("ZZ-11", True)
    with pytest.raises(ValueError):
        AclRule.mac("AA-BB/49", True)


def test_uuid_exact_and_masked() -> None:
    table = uuids(
        [
            ("12345678-abcd-ef00-1111-000000000000/ffffffff-ffff-ffff-ffff-000000000000", True),
            ("12345678-ABCD-EF00-1111-ABCDEFABCDEF", False),
            ("99999999-0000-0000-0000-000000000000/ffffffff-0000-0000-0000-000000000000", False),
        ]
    )
    assert table.check(u("12345678-abcd-ef00-1111-abcdefabcdef")) is False  # exact wins
    assert table.check(u("12345678-abcd-ef00-1111-000000000001")) is True
    assert table.check(u("99999999-1234-5678-9abc-def012345678")) is False
    assert table.check(u("00000000-0000-0000-0000-000000000001")) is None


def test_uuid_full_mask_is_exact_key() -> None:
    full = "ffffffff-ffff-ffff-ffff-ffffffffffff"
    table = uuids(
        [("12345678-abcd-ef00-1111-000000000000/ffffffff-ffff-ffff-ffff-000000000000", True),
         (f"12345678-abcd-ef00-1111-abcdefabcdef/{full}", False)]
    )
    assert table.check(u("12345678-abcd-ef00-1111-abcdefabcdef")) is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\nClient: Tester-001\nFile: next.cfg", ("Tester-001", "next.cfg")),
        (b"client:host\r\nFILE :  http://x/y.cfg  \r\n", ("host", "http://x/y.cfg")),
        (b"", (None, None)),
        (b"no colon here\n:\n: value\nOther: x", (None, None)),
        (b"Client:\nFile:", (None, None)),
        (b"Client: caf\xe9", ("caf\u00e9", None)),  # latin-1 fallback
        ("Client: café".encode(), ("café", None)),
        (bytes(range(256)) * 4, (None, None)),
    ],
)
def test_parse_acl_body(body: bytes, expected: tuple) -> None:
    assert parse_acl_body(body) == expected


def test_http_acl_arguments() -> None:
    with pytest.raises(ValueError, match="mac_format"):
        HttpAcl("127.0.0.1:1", "boot", "linux", mac_format="dot")
    with pytest.raises(ValueError, match="timeout"):
        HttpAcl("127.0.0.1:1", "boot", "linux", timeout=0)
    assert AclResult(Verdict.DENIED).verdict == "denied"
