"""Our decision as a Ray Serve custom autoscaling policy, one instance per pool deployment.

Serve calls it in the controller every control-loop tick with an AutoscalingContext. It reads
the pool's load (Serve's request count, the engine figures replicas report through
`record_autoscaling_stats`) and, when a Prometheus is configured, the pool's TTFT p95 from
a background-refreshed cache that turns stale data into None. Serve's own delays are set to
zero for this policy (engine_config.deployment_config): ours, in `decide`, are the ones that act.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve.autoscaling_policy import PrometheusQueryMixin

from service.autoscaling.decision import (
    ENGINE_WAITING,
    HTTP_ONGOING,
    KV_CACHE_USAGE,
    ScalingDecision,
    ScalingParams,
    Signals,
    decide,
)

log = logging.getLogger(__name__)

STATE_KEY = "gemma_serve"
PROMETHEUS_FETCH_INTERVAL_S = 5.0
PROMETHEUS_MAX_AGE_S = 30.0


class PoolAutoscalingPolicy(PrometheusQueryMixin):
    def __init__(
        self,
        pool_id: str,
        params: dict[str, Any],
        prometheus_url: str | None = None,
        ttft_query: str | None = None,
    ):
        queries = [ttft_query] if prometheus_url and ttft_query else []
        super().__init__(
            prometheus_address=prometheus_url or "",
            prometheus_queries=queries,
            fetch_interval_s=PROMETHEUS_FETCH_INTERVAL_S,
            cache_ttl_s=PROMETHEUS_MAX_AGE_S,
        )
        self._pool_id = pool_id
        self._params = ScalingParams(**params)
        self._ttft_query = ttft_query
        self._gauges: _AutoscalerGauges | None = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        signals = signals_from_context(ctx, self._ttft_p95())
        decision, state = decide(signals, self._params, ctx.policy_state.get(STATE_KEY, {}))
        self._export(signals, decision)
        return decision.replicas, {STATE_KEY: state}

    def _ttft_p95(self) -> float | None:
        if not self._ttft_query:
            return None
        return (self.prometheus_metrics or {}).get(self._ttft_query)

    def _export(self, signals: Signals, decision: ScalingDecision) -> None:
        try:
            if self._gauges is None:
                self._gauges = _AutoscalerGauges()
            self._gauges.set(self._pool_id, self._params, signals, decision)
        except Exception:  # metrics must never stop scaling
            log.warning("could not export autoscaler metrics", exc_info=True)


def signals_from_context(ctx: Any, ttft_p95_s: float | None) -> Signals:
    metrics = ctx.aggregated_metrics or {}
    waiting = metrics.get(ENGINE_WAITING) or {}
    kv = metrics.get(KV_CACHE_USAGE) or {}
    http = metrics.get(HTTP_ONGOING) or {}
    return Signals(
        now=ctx.current_time or time.time(),
        current_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        ongoing_requests=float(ctx.total_num_requests or 0.0) + float(sum(http.values())),
        engine_waiting=float(sum(waiting.values())) if waiting else None,
        kv_cache_usage=float(max(kv.values())) if kv else None,
        ttft_p95_s=ttft_p95_s,
    )


class _AutoscalerGauges:
    """Exported from the Serve controller, so dashboards and the at-max alert see decisions."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        def gauge(name: str, description: str, *tags: str) -> Gauge:
            return Gauge(name, description=description, tag_keys=("pool", *tags))

        self.desired = gauge(
            "gemma_serve_autoscaler_desired_replicas",
            "Replicas the signals ask for, before min/max: above max means short of capacity.",
        )
        self.wanted = gauge(
            "gemma_serve_autoscaler_wanted_replicas", "Replicas the signals ask for (bounded)."
        )
        self.decided = gauge(
            "gemma_serve_autoscaler_decided_replicas", "Replicas decided this tick (after delays)."
        )
        self.max = gauge("gemma_serve_autoscaler_max_replicas", "The pool's replicas.max.")
        self.min = gauge("gemma_serve_autoscaler_min_replicas", "The pool's replicas.min.")
        self.actions = Counter(
            "gemma_serve_autoscaler_scaling_actions",
            description="Replica count changes decided, by direction and the deciding signal.",
            tag_keys=("pool", "direction", "reason"),
        )
        self.signal = gauge(
            "gemma_serve_autoscaler_signal",
            "Inputs of the last decision; a missing input is not exported.",
            "signal",
        )

    def set(self, pool: str, p: ScalingParams, s: Signals, d: ScalingDecision) -> None:
        tags = {"pool": pool}
        self.desired.set(d.desired, tags)
        self.wanted.set(d.wanted, tags)
        self.decided.set(d.replicas, tags)
        self.max.set(p.max_replicas, tags)
        self.min.set(p.min_replicas, tags)
        if d.replicas != s.target_replicas:
            self.actions.inc(tags=tags | {"direction": d.direction, "reason": d.reason})
        inputs = {
            "ongoing_requests": s.ongoing_requests,
            "engine_waiting": s.engine_waiting,
            "kv_cache_usage": s.kv_cache_usage,
            "ttft_p95_seconds": s.ttft_p95_s,
        }
        for name, value in inputs.items():
            if value is not None:
                self.signal.set(value, {"pool": pool, "signal": name})
