"""What Serve's controller and Prometheus feed an autoscaling policy, as the autoscaling
simulation models them: windowed figures as Serve aggregates them, and a scraped TTFT
histogram with Prometheus' quantile."""

from __future__ import annotations

import bisect

import numpy as np

from service.telemetry.metrics import TTFT_BUCKETS_S

# [I] Prometheus scrapes the Ray metrics endpoints every 15 s; Ray's own export delay is folded
# into it.
SCRAPE_INTERVAL_S = 15.0


class Series:
    """A figure sampled every `every` seconds, read as Serve's controller reads it: the
    time-weighted mean over `look_back_period_s` of the samples pushed by then (every
    `metrics_interval_s`), the last pushed value held until now
    [ray serve/_private/autoscaling_state.py:795-867]. The pool's request count is sampled
    every second (Serve: every min(0.2 x look-back, metrics interval), 2-6 s here), the
    engine figures at Serve's interval."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.first = -1  # time of the first sample
        self.values: list[float] = []
        self.cum: list[float] = [0.0]

    def add(self, now: int, value: float) -> None:
        if self.first < 0:
            self.first = now
        self.values.append(value)
        self.cum.append(self.cum[-1] + value)

    def window_mean(self, now: int, look_back: int, push_every: int) -> float | None:
        if self.first < 0:
            return None
        pushed = (now // push_every) * push_every  # the last push at or before now
        hi = min((pushed - self.first) // self.every, len(self.values) - 1)
        if hi < 0:
            return None
        lo = min(hi, max(0, (now - look_back - self.first) // self.every + 1))
        # Each sample stands for `every` ticks; the last pushed one also for those until now.
        held = max(0, now - (self.first + hi * self.every) - self.every + 1)
        total = (self.cum[hi + 1] - self.cum[lo]) * self.every + held * self.values[hi]
        return total / ((hi - lo + 1) * self.every + held)


class Prometheus:
    """The gateway's TTFT histogram (service/telemetry/metrics.py buckets, observed when a
    request finishes), scraped every SCRAPE_INTERVAL_S, and the policy's query
    histogram_quantile(0.95, sum(rate(bucket[window]))) on it; None while unreachable, when
    the window has fewer than two scrapes, or no requests (NaN)."""

    def __init__(self, window_s: float, outage: tuple[float, float] | None, q: float = 0.95):
        self.bounds = list(TTFT_BUCKETS_S)
        self.counts = np.zeros(len(self.bounds) + 1)  # the last bucket is +Inf
        self.window_s = window_s
        self.outage = outage
        self.q = q
        self.scrapes: list[tuple[float, np.ndarray]] = []

    def down(self, now: float) -> bool:
        return self.outage is not None and self.outage[0] <= now < self.outage[1]

    def observe(self, ttft: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, ttft)] += 1

    def scrape(self, now: float) -> None:
        if not self.down(now):
            self.scrapes.append((now, np.cumsum(self.counts)))

    def query(self, now: float) -> float | None:
        if self.down(now):
            return None
        inside = [c for t, c in self.scrapes[-64:] if now - self.window_s <= t <= now]
        if len(inside) < 2:
            return None
        return histogram_quantile(self.q, self.bounds, inside[-1] - inside[0])


def histogram_quantile(q: float, bounds: list[float], cumulative: np.ndarray) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket counts (last = +Inf): linear
    inside the bucket holding the rank; in the +Inf bucket, the highest finite bound."""
    total = float(cumulative[-1])
    if total <= 0:
        return None
    rank = q * total
    b = int(np.searchsorted(cumulative, rank, side="left"))
    if b >= len(bounds):
        return bounds[-1]
    lower = 0.0 if b == 0 else bounds[b - 1]
    below = 0.0 if b == 0 else float(cumulative[b - 1])
    inside = float(cumulative[b]) - below
    if inside <= 0:
        return bounds[b]
    return lower + (bounds[b] - lower) * (rank - below) / inside
