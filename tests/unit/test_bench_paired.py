"""bench/paired.py: the per-round comparison the benches print (README "Performance")."""

from __future__ import annotations

import itertools
import math

import pytest

from bench import paired
from bench.paired import compare, sign_flip_p


def brute_force_p(logs: list[float]) -> float:
    """The definition, spelled out: every assignment of signs, each as likely."""
    observed = abs(sum(logs))
    combos = list(itertools.product((1, -1), repeat=len(logs)))
    hits = sum(1 for signs in combos if abs(sum(s * x for s, x in zip(signs, logs, strict=True)))
               >= observed - 1e-12)
    return hits / len(combos)


def test_every_round_the_same_way_gives_the_smallest_p_the_rounds_allow() -> None:
    # 5 rounds all above 1: only all-plus and all-minus are as far from 0: 2 of 32
    result = compare([(1.1, 1.0), (1.2, 1.0), (1.05, 1.0), (1.3, 1.0), (1.15, 1.0)])
    assert result.rounds == 5 and result.at_or_above == 5
    assert result.p == pytest.approx(2 / 32)
    assert result.median == pytest.approx(1.15)
    assert result.geomean == pytest.approx(math.exp(sum(map(math.log, (1.1, 1.2, 1.05, 1.3, 1.15))) / 5))


def test_p_matches_the_definition_on_mixed_rounds() -> None:
    logs = [math.log(r) for r in (0.91, 1.04, 0.88, 0.97, 1.10, 0.85, 0.93, 0.99)]
    assert sign_flip_p(logs) == pytest.approx(brute_force_p(logs))
    assert 0.0 < sign_flip_p(logs) < 1.0


def test_a_ratio_and_its_inverse_balance_out() -> None:
    result = compare([(2.0, 1.0), (1.0, 2.0)])
    assert result.geomean == pytest.approx(1.0)
    assert result.p == pytest.approx(1.0)
    assert result.at_or_above == 1


def test_failed_rounds_are_left_out_and_no_rounds_is_said_so() -> None:
    result = compare([(1.0, 0.0), (math.nan, 1.0), (1.0, 1.0), (0.0, 2.0)])
    assert result.rounds == 1 and result.median == 1.0 and result.p == 1.0
    empty = compare([(math.inf, 1.0)])
    assert empty.rounds == 0 and math.isnan(empty.p)
    assert empty.describe() == "no common rounds"


def test_by_round_pairs_the_same_round_only() -> None:
    figures = {"massboot": {0: 100.0, 1: 200.0, 2: 150.0}, "dnsmasq": {0: 110.0, 2: 150.0, 3: 90.0}}
    result = paired.by_round(figures, "massboot", "dnsmasq")
    assert result.rounds == 2
    assert result.median == pytest.approx((100 / 110 + 1.0) / 2)
    assert "1/2 rounds >= 1" in result.describe()


def test_many_rounds_are_estimated_reproducibly_and_close_to_exact(monkeypatch) -> None:
    logs = [math.log(r) for r in (0.95, 1.02, 0.90, 0.97, 0.99, 0.93, 1.01, 0.96, 0.94, 0.98, 0.92, 1.03)]
    exact = sign_flip_p(logs)
    monkeypatch.setattr(paired, "EXACT_UP_TO", 4)
    estimated = sign_flip_p(logs)
    assert estimated == sign_flip_p(logs)          # seeded: the same data give the same p
    assert abs(estimated - exact) < 0.01           # 20,000 draws: within a few thousandths
