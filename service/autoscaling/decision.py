"""How many replicas a pool should have: a pure function of its signals and a little state.

Scale up when any pressure signal says the pool is short (ongoing requests above target,
engines queueing, KV cache nearly full, TTFT p95 above the SLO). Scale down only when every
signal is comfortably low: the load must fit the smaller fleet with headroom, so a load
hovering at a threshold does not flap. Each direction has its own delay: the wish must hold
that long before it is acted on. A missing signal (Prometheus down, replica stats late)
neither scales up nor blocks a scale-down; Serve's own request count is always there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

HOLD, UP, DOWN = "hold", "up", "down"


# Names of the figures each pool replica reports (PoolServer.record_autoscaling_stats) and
# the Serve policy reads.
ENGINE_WAITING = "engine_waiting"
KV_CACHE_USAGE = "kv_cache_usage"
# Requests a replica serves over its own HTTP server, which Serve's request counts miss.
HTTP_ONGOING = "http_ongoing"


@dataclass(frozen=True)
class ScalingParams:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    max_waiting_per_replica: float = 4.0
    kv_cache_high: float = 0.90
    kv_cache_low: float = 0.60
    ttft_slo_s: float | None = None
    # Scale down only to a fleet that runs at most this fraction of each target.
    downscale_headroom: float = 0.7
    upscale_delay_s: float = 15.0
    downscale_delay_s: float = 300.0
    downscale_to_zero_delay_s: float = 900.0


@dataclass(frozen=True)
class Signals:
    now: float
    current_replicas: int  # running
    target_replicas: int  # what Serve is currently steering to
    ongoing_requests: float  # across the pool: at replicas and queued at handles
    engine_waiting: float | None = None  # across the pool, from replica stats
    kv_cache_usage: float | None = None  # the fullest replica
    ttft_p95_s: float | None = None  # from Prometheus; None when missing or stale


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int  # what to run now (bounded, after delays)
    wanted: int  # what the signals ask for (bounded, before delays)
    desired: int  # what the signals ask for, unbounded: above max means "at max, short"
    reason: str  # the signal that decided `wanted`
    direction: str = HOLD  # of `wanted` against the target


@dataclass
class PendingChange:
    """A wish that has not yet held for its delay (kept between calls as a dict)."""

    direction: str = HOLD
    since: float | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PendingChange:
        return cls(state.get("direction", HOLD), state.get("since"))

    def as_state(self) -> dict[str, Any]:
        return {"direction": self.direction, "since": self.since}


@dataclass(frozen=True)
class _Wish:
    replicas: int
    reason: str


def decide(
    signals: Signals, params: ScalingParams, state: dict[str, Any]
) -> tuple[ScalingDecision, dict[str, Any]]:
    """The replica count for this tick and the state to pass to the next one."""
    wish = _wanted(signals, params)
    wanted = _bounded(wish.replicas, params)
    target = signals.target_replicas
    direction = UP if wanted > target else DOWN if wanted < target else HOLD
    pending = PendingChange.from_state(state)
    if direction != pending.direction:
        pending = PendingChange(direction, signals.now if direction != HOLD else None)
    replicas = target
    if direction != HOLD and pending.since is not None:
        if signals.now - pending.since >= _delay(direction, wanted, params):
            replicas = wanted
            pending = PendingChange()
    if signals.current_replicas == 0 and wanted > 0:
        replicas = wanted  # a cold pool with work waiting starts at once
        pending = PendingChange()
    decision = ScalingDecision(
        _bounded(replicas, params), wanted, wish.replicas, wish.reason, direction
    )
    return decision, pending.as_state()


def _wanted(s: Signals, p: ScalingParams) -> _Wish:
    current = max(s.current_replicas, 0)
    if current == 0:
        return _Wish(1, "cold_start") if s.ongoing_requests > 0 else _Wish(0, "idle")
    by_requests = math.ceil(s.ongoing_requests / p.target_ongoing_requests)
    ups = [_Wish(by_requests, "ongoing_requests")]
    if s.engine_waiting is not None and s.engine_waiting > p.max_waiting_per_replica * current:
        # Engines queue below the request target (long prompts, full KV): add room for the queue.
        extra = math.ceil(s.engine_waiting / p.target_ongoing_requests)
        ups.append(_Wish(current + max(1, extra), "engine_queue"))
    if s.kv_cache_usage is not None and s.kv_cache_usage > p.kv_cache_high:
        ups.append(_Wish(current + 1, "kv_cache"))
    if p.ttft_slo_s is not None and s.ttft_p95_s is not None and s.ttft_p95_s > p.ttft_slo_s:
        ratio = min(2.0, s.ttft_p95_s / p.ttft_slo_s)
        ups.append(_Wish(max(current + 1, math.ceil(current * ratio)), "ttft_slo"))
    best = max(ups, key=lambda w: w.replicas)
    # Replicas still starting count as there: a hold must not cancel them.
    steady = max(current, s.target_replicas)
    if best.replicas > steady:
        return best
    return _downscale(s, p, steady)


def _downscale(s: Signals, p: ScalingParams, steady: int) -> _Wish:
    """The smallest fleet that carries the load with headroom, if every signal allows."""
    if s.kv_cache_usage is not None and s.kv_cache_usage > p.kv_cache_low:
        return _Wish(steady, "kv_cache")
    if p.ttft_slo_s is not None and s.ttft_p95_s is not None and s.ttft_p95_s > 0.8 * p.ttft_slo_s:
        return _Wish(steady, "ttft_slo")
    if s.engine_waiting is not None and s.engine_waiting > 0:
        return _Wish(steady, "engine_queue")
    if s.ongoing_requests <= 0:
        return _Wish(p.min_replicas, "idle")
    fits = math.ceil(s.ongoing_requests / (p.target_ongoing_requests * p.downscale_headroom))
    return _Wish(min(steady, max(fits, 1)), "ongoing_requests")


def _bounded(replicas: int, p: ScalingParams) -> int:
    return max(p.min_replicas, min(p.max_replicas, replicas))


def _delay(direction: str, wanted: int, p: ScalingParams) -> float:
    if direction == UP:
        return p.upscale_delay_s
    return p.downscale_to_zero_delay_s if wanted == 0 else p.downscale_delay_s
