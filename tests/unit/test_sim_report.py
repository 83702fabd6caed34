"""What the simulations report with (benchmarks/sim/report.py)."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.sim import report


def test_a_request_not_served_meets_no_objective():
    ttft = np.array([0.5, 2.5, math.nan, 1.0])
    tpot = np.array([0.01, 0.01, math.nan, 0.2])
    ttft_ok, both_ok = report.within_slo(ttft, tpot)
    assert ttft_ok.tolist() == [True, False, False, True]
    assert both_ok.tolist() == [True, False, False, False]


def test_percentiles_of_nothing_are_nan():
    assert math.isnan(report.pct([], 50))
    assert report.pct([1.0, 2.0, 3.0], 50) == 2.0


def test_a_table_is_markdown_with_one_row_per_line():
    assert report.table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_a_figure_is_written_where_asked(tmp_path):
    path = tmp_path / "deep" / "plot.png"
    with report.figure(path, "title", 1, 2) as axes:
        axes[0].plot([0, 1], [0, 1])
    assert path.stat().st_size > 0
