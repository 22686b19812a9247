"""bench/perfdhcp_summary.py: the figures read off perfdhcp.sh's table (README, "bench/perfdhcp.sh").

The tables are two of perfdhcp.sh's real runs (2026-12-02, README "Where issue #14 stands").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.perfdhcp_summary import Point, main, parse_line, report, summarize

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "perfdhcp_summary.py"

# the second run (spaces squeezed): Kea dropped more than 1 % at 5,000 and 6,000, not at 7,000
RUN = """\
target  rate  DORA/s  DO drops  RA drops  DORA done  CPU-s  CPU-s/1k  log
kea 2.2 memfile  2000  2000  0.000 %  0.000 %  19999/19999  4.52s  0.226s  -
massboot:before (info)  2000  2000  0.000 %  0.000 %  19999/19999  10.33s  0.517s  40006
massboot (info)  2000  2000  0.000 %  0.000 %  19999/19999  5.11s  0.256s  40006
kea 2.2 memfile  4000  4000  0.000 %  0.000 %  39999/39999  6.61s  0.165s  -
massboot:before (info)  4000  2600  20.796 %  17.922 %  26003/39999  12.00s  0.461s  57735
massboot (info)  4000  4000  0.000 %  0.000 %  39999/39999  9.06s  0.227s  80006
kea 2.2 memfile  5000  4885  1.340 %  0.963 %  48854/49999  6.44s  0.132s  -
massboot:before (info)  5000  2335  33.291 %  29.984 %  23353/49999  11.90s  0.510s  56771
massboot (info)  5000  4996  0.084 %  0.004 %  49955/49999  9.29s  0.186s  99964
kea 2.2 memfile  6000  5834  1.665 %  1.119 %  58340/59999  7.80s  0.134s  -
massboot:before (info)  6000  1901  43.912 %  43.522 %  19006/59999  12.40s  0.652s  53645
massboot (info)  6000  5974  0.292 %  0.145 %  59737/59999  10.15s  0.170s  119831
kea 2.2 memfile  7000  6890  0.941 %  0.636 %  68899/69999  7.81s  0.113s  -
massboot:before (info)  7000  2399  43.695 %  39.117 %  23991/69985  12.22s  0.509s  63519
massboot (info)  7000  6032  7.506 %  6.841 %  60315/69998  10.73s  0.178s  125320
"""


def by_target(text: str) -> dict:
    return {s.target: s for s in summarize(text.splitlines())}


def test_a_table_line_is_read_from_the_right_so_labels_may_have_spaces() -> None:
    assert parse_line("kea 2.2 memfile              5000     4885    1.340 %    0.963 %    "
                      "48854/49999         6.44s     0.132s        -") == \
        Point("kea 2.2 memfile", 5000, 1.340, 0.963, 0.132)


@pytest.mark.parametrize("line", [
    "",
    "target  rate  DORA/s  DO drops  RA drops  DORA done  CPU-s  CPU-s/1k  log",
    "perfdhcp exited 1:",
    "massboot did not start:",
    "massboot (info)  5000  4996  0.084  0.004  49955/49999  9.29s  0.186s  99964",     # no % signs
    "massboot (info)  5000  4996  0.084 %  0.004 %  49955  9.29s  0.186s  99964",       # no done/started
    "massboot (info)  fast  4996  0.084 %  0.004 %  49955/49999  9.29s  0.186s  99964",  # not a number
    "5000  4996  0.084 %  0.004 %  49955/49999  9.29s  0.186s  99964",                  # no label
])
def test_other_lines_are_not_points(line: str) -> None:
    assert parse_line(line) is None


def test_highest_and_sustained_rates_differ_when_a_server_drops_then_recovers() -> None:
    kea = by_target(RUN)["kea 2.2 memfile"]
    assert (kea.highest.rate, kea.highest.cpu_per_1k) == (7000, 0.113)
    assert (kea.sustained.rate, kea.sustained.cpu_per_1k) == (4000, 0.165)
    assert (kea.first_drop.rate, kea.first_drop.do_drops, kea.first_drop.ra_drops) == (5000, 1.340, 0.963)


def test_a_server_that_holds_until_it_drops() -> None:
    now = by_target(RUN)["massboot (info)"]
    assert now.highest == now.sustained
    assert now.highest.rate == 6000 and now.first_drop.rate == 7000


def test_one_ratio_at_one_percent_fails_a_rate() -> None:
    """Both ratios must stay *under* 1 %: REQUEST-ACK alone at 1.000 fails the rate."""
    line = "massboot (info)  {rate}  {rate}  0.000 %  {ra} %  1/1  1.00s  0.100s  2"
    text = "\n".join([line.format(rate=1000, ra="0.999"), line.format(rate=2000, ra="1.000")])
    (summary,) = summarize(text.splitlines())
    assert summary.highest.rate == summary.sustained.rate == 1000
    assert summary.first_drop.rate == 2000


def test_no_rate_under_the_limit_and_rates_out_of_order() -> None:
    before = by_target(RUN)["massboot:before (info)"]
    assert before.highest.rate == before.sustained.rate == 2000     # 2,000 held, 4,000 did not
    text = "\n".join([
        "massboot (info)  7000  5000  9.000 %  9.000 %  1/1  1.00s  0.100s  2",
        "massboot (info)  3000  2900  3.000 %  0.000 %  1/1  1.00s  0.100s  2",
    ])
    (summary,) = summarize(text.splitlines())
    assert summary.highest is None and summary.sustained is None
    assert summary.first_drop.rate == 3000      # the lowest rate that dropped, whatever the order
    assert "highest none, every rate up to none; first above: 3000 (3.000 / 0.000 %)" in report([summary])


def test_report_keeps_the_tables_order_and_names_every_figure() -> None:
    lines = report(summarize(RUN.splitlines())).splitlines()
    assert lines[0] == "offered rate with < 1 % drops (DISCOVER-OFFER and REQUEST-ACK):"
    assert [line.split()[0] for line in lines[1:]] == ["kea", "massboot:before", "massboot"]
    assert lines[1] == ("  kea 2.2 memfile         highest 7000 (0.113 CPU-s/1k), every rate up to 4000 "
                        "(0.165 CPU-s/1k); first above: 5000 (1.340 / 0.963 %)")
    assert lines[3].endswith("highest 6000 (0.170 CPU-s/1k), every rate up to 6000 (0.170 CPU-s/1k); "
                             "first above: 7000 (7.506 / 6.841 %)")
    assert report([]) == "no rate measured\n"


def test_the_script_reads_a_file_or_standard_input(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "run.txt"
    table.write_text(RUN, encoding="utf-8")
    assert main([str(table)]) == 0
    from_file = capsys.readouterr().out
    assert from_file == report(summarize(RUN.splitlines()))
    run = subprocess.run([sys.executable, str(SCRIPT)], input=RUN, capture_output=True, text=True,
                         check=True)
    assert run.stdout == from_file
    assert main(["a", "b"]) == 2
    assert "usage" in capsys.readouterr().err
