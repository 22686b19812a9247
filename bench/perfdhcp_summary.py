"""The last lines of ``bench/perfdhcp.sh``: each target's highest rate with < 1 % drops.

perfdhcp.sh prints one line per target and offered rate (README "bench/perfdhcp.sh"); the
figure issue #14 asks for is read off that table: the highest offered rate at which both drop
ratios (DISCOVER-OFFER and REQUEST-ACK) stay under 1 %. This machine's noise lets a server
drop at one rate and not at the next, so two figures are printed per target:

* ``highest``: the highest offered rate with < 1 % drops;
* ``sustained``: the highest rate up to which every rate run had < 1 % drops (none when the
  lowest one dropped), with the first rate that dropped more and its two ratios;

and the CPU-seconds per 1,000 completed DORA at each. Targets keep the table's order.

    bench/perfdhcp.sh 3000 5000 6000 | tee run.txt      # perfdhcp.sh calls this at its end
    python bench/perfdhcp_summary.py run.txt
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

#: a drop ratio (percent) at or above this fails a rate
LIMIT = 1.0


@dataclass(frozen=True, slots=True)
class Point:
    """One line of perfdhcp.sh's table."""

    target: str
    rate: int
    do_drops: float       # percent
    ra_drops: float       # percent
    cpu_per_1k: float     # CPU-s per 1,000 completed DORA

    @property
    def ok(self) -> bool:
        return self.do_drops < LIMIT and self.ra_drops < LIMIT


@dataclass(frozen=True, slots=True)
class Summary:
    """One target's figures (see the module docstring); rates are None when no rate qualifies."""

    target: str
    highest: Point | None
    sustained: Point | None
    first_drop: Point | None


def parse_line(line: str) -> Point | None:
    """A table line (``LABEL RATE DORA/s DO % RA % DONE/STARTED CPUs CPU1k LOG``), else None
    (the header, an error message, anything else)."""
    words = line.split()
    if len(words) < 11:
        return None
    label, (rate, _dora, do, pct1, ra, pct2, done, _cpu, cpu_1k, _log) = words[:-10], words[-10:]
    if pct1 != "%" or pct2 != "%" or "/" not in done or not cpu_1k.endswith("s"):
        return None
    try:
        return Point(" ".join(label), int(rate), float(do), float(ra), float(cpu_1k[:-1]))
    except ValueError:
        return None


def summarize(lines: Iterable[str]) -> list[Summary]:
    """Each target's :class:`Summary`, in the order the table first names them."""
    points: dict[str, list[Point]] = {}
    for line in lines:
        point = parse_line(line)
        if point is not None:
            points.setdefault(point.target, []).append(point)
    summaries = []
    for target, runs in points.items():
        runs.sort(key=lambda p: p.rate)
        passed = [p for p in runs if p.ok]
        first_drop = next((p for p in runs if not p.ok), None)
        sustained = None
        for point in runs:
            if not point.ok:
                break
            sustained = point
        summaries.append(Summary(target, passed[-1] if passed else None, sustained, first_drop))
    return summaries


def _rate(point: Point | None) -> str:
    return "none" if point is None else f"{point.rate} ({point.cpu_per_1k:.3f} CPU-s/1k)"


def report(summaries: list[Summary]) -> str:
    """The lines perfdhcp.sh prints after its table."""
    if not summaries:
        return "no rate measured\n"
    width = max(len(s.target) for s in summaries)
    out = [f"offered rate with < {LIMIT:g} % drops (DISCOVER-OFFER and REQUEST-ACK):"]
    for s in summaries:
        drop = s.first_drop
        above = "" if drop is None else \
            f"; first above: {drop.rate} ({drop.do_drops:.3f} / {drop.ra_drops:.3f} %)"
        out.append(f"  {s.target:<{width}}  highest {_rate(s.highest)}, "
                   f"every rate up to {_rate(s.sustained)}{above}")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: perfdhcp_summary.py [TABLE]  (default: standard input)", file=sys.stderr)
        return 2
    if argv:
        with open(argv[0], encoding="utf-8") as table:
            text = report(summarize(table))
    else:
        text = report(summarize(sys.stdin))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
