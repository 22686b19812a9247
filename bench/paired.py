"""Paired comparison of two servers measured round by round in one run.

This host is noisy: a whole round may run slow or fast for every server in it, so an absolute
figure moves from run to run while the ratio of two servers' figures in the same round holds
(README "Performance"). The benches therefore compare servers round by round: each round gives
one ratio (this server's figure divided by the base server's in the same round), and the
summary is the median and geometric mean of those ratios, how many rounds were at or above 1,
and a sign-flip test of whether the mean log ratio differs from 0 (no distribution assumed:
under "no difference" each round's ratio is as likely to be r as 1/r, so every assignment of
signs to the log ratios is as likely as the one observed; p is the share of them whose mean is
at least as far from 0). Exact up to :data:`EXACT_UP_TO` rounds, estimated from
:data:`DRAWS` seeded draws beyond (the same data give the same p).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

#: rounds up to which the test enumerates every assignment of signs (2 ** 16 sums)
EXACT_UP_TO = 16
#: random assignments drawn beyond that (seeded: reproducible)
DRAWS = 20_000


@dataclass(frozen=True)
class Paired:
    """One server against the base over the rounds both have a figure for."""

    rounds: int
    median: float        #: median of the per-round ratios
    geomean: float       #: geometric mean of the per-round ratios
    at_or_above: int     #: rounds whose ratio is >= 1
    p: float             #: two-sided sign-flip p-value of the mean log ratio (nan: no rounds)

    def describe(self) -> str:
        """``0.94x (geomean 0.94, 2/8 rounds >= 1, p = 0.02)``."""
        if not self.rounds:
            return "no common rounds"
        return (f"{self.median:.2f}x (geomean {self.geomean:.2f}, {self.at_or_above}/{self.rounds} "
                f"rounds >= 1, p = {self.p:.2f})")


def sign_flip_p(logs: list[float]) -> float:
    """Two-sided p-value that the mean of *logs* (per-round log ratios) is 0."""
    n = len(logs)
    if n == 0:
        return math.nan
    # a sum equal to the observed one up to rounding counts as "at least as far"
    observed = abs(sum(logs)) - 1e-9 * (1.0 + sum(abs(x) for x in logs))
    if n <= EXACT_UP_TO:
        sums = [0.0]
        for x in logs:   # every sum of +-x over the rounds: 2 ** n of them
            sums = [s + x for s in sums] + [s - x for s in sums]
        return sum(1 for s in sums if abs(s) >= observed) / len(sums)
    rng = random.Random(0)
    hits = sum(1 for _ in range(DRAWS)
               if abs(sum(x if rng.random() < 0.5 else -x for x in logs)) >= observed)
    return (hits + 1) / (DRAWS + 1)   # the observed assignment counts as one of the draws


def compare(pairs: Iterable[tuple[float, float]]) -> Paired:
    """Summarise (figure, base figure) pairs, one per round; a pair without two positive,
    finite figures (a failed round) is left out."""
    ratios = [a / b for a, b in pairs
              if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    if not ratios:
        return Paired(0, math.nan, math.nan, 0, math.nan)
    logs = [math.log(r) for r in ratios]
    return Paired(len(ratios), statistics.median(ratios), math.exp(statistics.fmean(logs)),
                  sum(1 for r in ratios if r >= 1.0), sign_flip_p(logs))


def by_round(figures: dict[str, dict[int, float]], name: str, base: str) -> Paired:
    """Compare *name* with *base*, where ``figures[server][round]`` is a server's figure."""
    mine, theirs = figures.get(name, {}), figures.get(base, {})
    return compare((mine[r], theirs[r]) for r in sorted(mine) if r in theirs)
