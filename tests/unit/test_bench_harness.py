"""What the serving benchmarks share (benchmarks/harness.py): options, the run, the report."""

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import harness  # noqa: E402


def test_a_stack_benchmark_has_settle_start_timeout_and_out_options():
    parser = argparse.ArgumentParser()
    harness.add_stack_options(parser, "bench", settle_s=3.0, start_timeout_s=240.0)
    args = parser.parse_args([])
    assert (args.settle_s, args.start_timeout_s, args.out) == (3.0, 240.0, None)
    assert parser.parse_args(["--out", "x.json"]).out == Path("x.json")


def test_a_failing_stack_is_reported_and_the_others_still_run(capsys):
    async def run(name: str) -> str:
        if name == "b":
            raise RuntimeError("no port")
        return name.upper()

    results, failures = asyncio.run(harness.run_each(["a", "b", "c"], run))
    assert results == ["A", "C"]
    assert failures == {"b": "RuntimeError: no port"}
    assert "b: RuntimeError: no port" in capsys.readouterr().err


def test_the_report_says_when_and_by_which_command(tmp_path: Path):
    out = harness.write_report("bench", ["--x", "1"], tmp_path / "r.json", {"points": [1]})
    report = json.loads(out.read_text())
    assert list(report) == ["date", "command", "points"]
    assert report["command"] == ".venv/bin/python benchmarks/bench.py --x 1"
