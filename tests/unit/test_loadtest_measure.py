"""Load-test measurement: stream timing, percentiles, goodput, SLO gates (loadtests/measure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtests.measure import (
    RequestResult,
    Slo,
    StreamError,
    StreamTiming,
    e2e_s,
    gate,
    goodput,
    itl_s,
    output_tokens_per_s,
    percentiles,
    timing_from_events,
    ttft_s,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sse_stream_timed.json"


@pytest.fixture
def timing() -> StreamTiming:
    events = [(at, line) for at, line in json.loads(FIXTURE.read_text())]
    return timing_from_events(events)


def test_ttft_ignores_the_role_only_chunk(timing: StreamTiming):
    assert ttft_s(timing) == pytest.approx(0.530)


def test_output_tokens_come_from_the_usage_chunk(timing: StreamTiming):
    assert timing.output_tokens == 10


def test_itl_spreads_the_decode_span_over_the_tokens(timing: StreamTiming):
    assert itl_s(timing) == pytest.approx((0.710 - 0.530) / 9)


def test_e2e_and_throughput_run_to_the_end_of_the_stream(timing: StreamTiming):
    assert e2e_s(timing) == pytest.approx(0.734)
    assert output_tokens_per_s(timing) == pytest.approx(10 / (0.734 - 0.530))


def test_without_usage_tokens_are_counted_from_content_events():
    events = [
        (0.1, 'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}'),
        (0.2, ": keep-alive"),
        (0.3, 'data: {"choices":[{"index":0,"text":"Hi"}]}'),
        (0.4, ""),
        (0.5, 'data: {"choices":[{"index":0,"text":" there"}]}'),
        (0.6, "data: [DONE]"),
    ]
    t = timing_from_events(events)
    assert (t.first_token_s, t.last_token_s, t.output_tokens) == (0.3, 0.5, 2)


def test_a_single_token_has_no_itl():
    t = StreamTiming(
        request_start=0.0, first_token_s=0.2, last_token_s=0.2, output_tokens=1, end_s=0.3
    )
    assert itl_s(t) is None


def test_an_error_event_raises_with_its_message():
    events = [
        (0.1, 'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}'),
        (0.2, 'data: {"error": {"message": "the engine died", "code": 500}}'),
    ]
    with pytest.raises(StreamError, match="the engine died"):
        timing_from_events(events)


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentiles_match_numpy(n: int):
    values = list(np.random.default_rng(n).exponential(1.0, size=n))
    got = percentiles(values)
    want = np.percentile(values, [50, 90, 95, 99])
    assert list(got) == [50, 90, 95, 99]
    assert list(got.values()) == pytest.approx(list(want))


def test_percentiles_of_nothing_are_empty():
    assert percentiles([]) == {}


def _result(ttft: float, itl: float, tokens: int = 11, ok: bool = True) -> RequestResult:
    last = ttft + itl * (tokens - 1)
    timing = StreamTiming(0.0, ttft, last, tokens, last + 0.01)
    return RequestResult(ok=ok, timing=timing)


def test_goodput_counts_only_requests_meeting_every_slo():
    slo = Slo(ttft_s=1.0, itl_s=0.05, e2e_s=None)
    results = [
        _result(0.5, 0.02),  # good
        _result(0.9, 0.04),  # good
        _result(1.5, 0.02),  # TTFT too slow
        _result(0.5, 0.09),  # ITL too slow
        _result(0.5, 0.02, ok=False),  # failed
    ]
    g = goodput(results, slo, duration_s=10.0)
    assert (g.good_requests, g.total_requests) == (2, 5)
    assert g.good_fraction == pytest.approx(0.4)
    assert g.good_requests_per_s == pytest.approx(0.2)


SUMMARY = {
    "ttft": {50: 0.8, 95: 2.31, 99: 3.0},
    "itl": {50: 0.03, 95: 0.05, 99: 0.07},
    "e2e": {50: 5.0, 95: 9.0, 99: 12.0},
    "error_rate": 0.02,
    "goodput": 0.85,
}


def test_gate_reports_each_violation():
    gates = {
        "ttft_p95_s": 2.0,
        "itl_p95_s": 0.1,
        "e2e_p99_s": 10.0,
        "error_rate_max": 0.0,
        "goodput_min": 0.9,
    }
    violations = gate(SUMMARY, gates)
    assert "TTFT p95 2.31 s > 2.00 s" in violations
    assert "E2E p99 12.00 s > 10.00 s" in violations
    assert any(v.startswith("error rate") for v in violations)
    assert any(v.startswith("goodput") for v in violations)
    assert len(violations) == 4  # ITL p95 is within its gate


def test_gate_passes_when_every_objective_is_met():
    gates = {"ttft_p95_s": 2.5, "itl_p95_s": 0.1, "error_rate_max": 0.05, "goodput_min": 0.8}
    assert gate(SUMMARY, gates) == []


def test_an_impossibly_tight_slo_fails_the_gate(timing: StreamTiming):
    summary = {"ttft": percentiles([ttft_s(timing)]), "itl": percentiles([itl_s(timing)])}
    assert gate(summary, {"ttft_p95_s": 1e-6, "itl_p95_s": 1e-6}) == [
        "TTFT p95 0.53 s > 0.00 s",
        "ITL p95 0.02 s > 0.00 s",
    ]
