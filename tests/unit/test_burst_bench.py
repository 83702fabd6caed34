"""The burst benchmark's report: what counts as served, refused and broken."""

import json

from benchmarks.burst import Outcome, report


def test_a_burst_report_separates_served_refused_and_broken(capsys):
    outcomes = [
        Outcome(200, True, 0.5, 1.0),
        Outcome(200, True, 1.5, 2.0),
        Outcome(503, False, None, 0.1),
        Outcome(200, False, 0.4, 3.0),  # a 200 stream cut before [DONE]
        Outcome(0, False, None, 0.2),  # the connection broke
    ]
    row = report("first", outcomes, wall_s=3.0)
    assert (row["served"], row["refused"], row["broken"]) == (2, {"503": 1}, 2)
    assert (row["ttft_p50_s"], row["ttft_max_s"]) == (1.0, 1.5)
    assert json.loads(capsys.readouterr().out) == row
