"""A short load test against the session stack: zero failed requests and a complete report."""

import json

from service.cli import main


def test_a_short_streaming_load_test_passes_with_a_complete_report(stack, tmp_path):
    out = tmp_path / "report"
    code = main(
        ["loadtest", "--profile", "short-chat", "--target", stack.base_url,
         "--users", "2", "--duration", "8", "--out", str(out)]
    )  # fmt: skip
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert results and all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    assert code == 0, (out / "report.md").read_text()
    for name in ("report.md", "report.html", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert list(out.glob("*.png"))
