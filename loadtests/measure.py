"""Pure measurement helpers for load tests: stream timing, percentiles, goodput and SLO gates.

Nothing here imports locust, so the arithmetic is unit-testable without a running service.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from service.streaming import chunk_carries_output

DEFAULT_PERCENTILES = (50, 90, 95, 99)


class StreamError(RuntimeError):
    """The server sent an ``{"error": ...}`` event in the middle of a stream."""


@dataclass(frozen=True)
class StreamTiming:
    """When a streamed response produced its tokens, in seconds since the request started."""

    request_start: float
    first_token_s: float | None
    last_token_s: float | None
    output_tokens: int
    end_s: float


def timing_from_events(events: Iterable[tuple[float, str]]) -> StreamTiming:
    """Time a server-sent event stream given ``(seconds_since_request_start, line)`` pairs."""
    first: float | None = None
    last: float | None = None
    content_events = 0
    usage_tokens: int | None = None
    end = 0.0
    for at, raw in events:
        end = max(end, at)
        line = raw.strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise StreamError(message)
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            usage_tokens = int(usage["completion_tokens"])
        if chunk_carries_output(chunk):
            content_events += 1
            if first is None:
                first = at
            last = at
    tokens = usage_tokens if usage_tokens is not None else content_events
    return StreamTiming(
        request_start=0.0, first_token_s=first, last_token_s=last, output_tokens=tokens, end_s=end
    )


def ttft_s(t: StreamTiming) -> float | None:
    """Time to first token."""
    return None if t.first_token_s is None else t.first_token_s - t.request_start


def itl_s(t: StreamTiming) -> float | None:
    """Mean inter-token latency over the decode phase; None with fewer than two tokens."""
    if t.first_token_s is None or t.last_token_s is None or t.output_tokens < 2:
        return None
    return (t.last_token_s - t.first_token_s) / (t.output_tokens - 1)


def output_tokens_per_s(t: StreamTiming) -> float | None:
    """Output tokens per second after the first token; None when undefined."""
    if t.first_token_s is None or t.output_tokens <= 0:
        return None
    span = t.end_s - t.first_token_s
    return None if span <= 0 else t.output_tokens / span


def e2e_s(t: StreamTiming) -> float:
    """End-to-end latency of the request."""
    return t.end_s - t.request_start


def percentiles(
    values: Iterable[float], ps: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[int, float]:
    """Percentiles with linear interpolation (numpy's default method); empty input gives {}."""
    data = sorted(values)
    if not data:
        return {}
    out: dict[int, float] = {}
    n = len(data)
    for p in ps:
        rank = (n - 1) * p / 100
        lo = math.floor(rank)
        hi = min(lo + 1, n - 1)
        out[p] = data[lo] + (data[hi] - data[lo]) * (rank - lo)
    return out


@dataclass(frozen=True)
class Slo:
    """Per-request objectives; None leaves that objective unset."""

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None


@dataclass(frozen=True)
class RequestResult:
    """One request's outcome: whether it succeeded, and its timing when it streamed."""

    ok: bool
    timing: StreamTiming | None = None


@dataclass(frozen=True)
class Goodput:
    good_requests: int
    total_requests: int
    good_fraction: float
    good_requests_per_s: float


def meets_slo(result: RequestResult, slo: Slo) -> bool:
    """A request is good only if it succeeded and meets every objective that is set."""
    if not result.ok or result.timing is None:
        return False
    t = result.timing
    if slo.ttft_s is not None and (ttft_s(t) is None or ttft_s(t) > slo.ttft_s):
        return False
    # A single-token answer has no inter-token latency, so it cannot violate the ITL objective.
    itl = itl_s(t)
    if slo.itl_s is not None and itl is not None and itl > slo.itl_s:
        return False
    return slo.e2e_s is None or e2e_s(t) <= slo.e2e_s


def goodput(results: Iterable[RequestResult], slo: Slo, duration_s: float) -> Goodput:
    """Count the requests that succeeded within every objective."""
    results = list(results)
    good = sum(1 for r in results if meets_slo(r, slo))
    total = len(results)
    return Goodput(
        good_requests=good,
        total_requests=total,
        good_fraction=good / total if total else 0.0,
        good_requests_per_s=good / duration_s if duration_s > 0 else 0.0,
    )


_METRIC_LABELS = {"ttft": "TTFT", "itl": "ITL", "e2e": "E2E"}


def gate(summary: Mapping[str, object], gates: Mapping[str, float]) -> list[str]:
    """Check a run summary against SLO gates; returns human-readable violations (empty = pass).

    ``summary`` maps ``"ttft"``/``"itl"``/``"e2e"`` to percentile dicts (as from
    :func:`percentiles`) and may hold ``"error_rate"`` and ``"goodput"`` fractions. ``gates`` holds
    keys like ``ttft_p95_s``, ``itl_p95_s``, ``e2e_p99_s``, ``error_rate_max`` and ``goodput_min``.
    A gate whose figure is missing from the summary is reported as a violation.
    """
    violations: list[str] = []
    for key, limit in gates.items():
        if limit is None:
            continue
        if key == "error_rate_max":
            rate = summary.get("error_rate")
            if rate is None:
                violations.append("error rate not measured")
            elif rate > limit:
                violations.append(f"error rate {rate:.2%} > {limit:.2%}")
            continue
        if key == "goodput_min":
            good = summary.get("goodput")
            if good is None:
                violations.append("goodput not measured")
            elif good < limit:
                violations.append(f"goodput {good:.2%} < {limit:.2%}")
            continue
        metric, _, rest = key.partition("_p")
        pct_text = rest.removesuffix("_s")
        if metric not in _METRIC_LABELS or not rest.endswith("_s") or not pct_text.isdigit():
            raise ValueError(f"unknown SLO gate {key!r}")
        label = f"{_METRIC_LABELS[metric]} p{pct_text}"
        value = (summary.get(metric) or {}).get(int(pct_text))
        if value is None:
            violations.append(f"{label} not measured")
        elif value > limit:
            violations.append(f"{label} {value:.2f} s > {limit:.2f} s")
    return violations
