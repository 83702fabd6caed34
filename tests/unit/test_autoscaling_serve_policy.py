"""The Serve adapter: an AutoscalingContext becomes signals, and the decision goes back."""

from types import SimpleNamespace

from service.autoscaling.decision import ENGINE_WAITING, KV_CACHE_USAGE
from service.autoscaling.serve_policy import (
    STATE_KEY,
    PoolAutoscalingPolicy,
    signals_from_context,
)

PARAMS = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 10,
          "upscale_delay_s": 0}  # fmt: skip


def context(ongoing=0.0, replicas=2, metrics=None, state=None, now=100.0):
    return SimpleNamespace(
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        total_num_requests=ongoing,
        aggregated_metrics=metrics,
        policy_state=state or {},
        current_time=now,
    )


def test_replica_stats_become_pool_signals():
    metrics = {ENGINE_WAITING: {"r1": 3.0, "r2": 1.0}, KV_CACHE_USAGE: {"r1": 0.2, "r2": 0.7}}
    signals = signals_from_context(context(ongoing=12, metrics=metrics), ttft_p95_s=0.4)
    assert signals.ongoing_requests == 12
    assert signals.engine_waiting == 4.0  # the pool's queue
    assert signals.kv_cache_usage == 0.7  # the fullest replica
    assert signals.ttft_p95_s == 0.4


def test_missing_replica_stats_are_unknown_not_zero():
    signals = signals_from_context(context(ongoing=3, metrics={}), ttft_p95_s=None)
    assert signals.engine_waiting is None and signals.kv_cache_usage is None


def test_the_policy_returns_replicas_and_keeps_its_state_under_its_own_key():
    policy = PoolAutoscalingPolicy(pool_id="p", params=PARAMS)
    replicas, state = policy(context(ongoing=35))
    assert replicas == 4
    assert set(state) == {STATE_KEY}


def test_without_prometheus_ttft_is_not_a_signal():
    policy = PoolAutoscalingPolicy(pool_id="p", params=PARAMS, ttft_query="up")
    assert policy._ttft_p95() is None


def prometheus_down_policy():
    from service.local_ports import free_port

    # Nothing listens on a free port: every query fails to connect.
    return PoolAutoscalingPolicy(
        pool_id="p", params=PARAMS, prometheus_url=f"http://127.0.0.1:{free_port()}",
        ttft_query="histogram_quantile(0.95, x)",
    )  # fmt: skip


def test_with_prometheus_down_the_policy_holds_a_steady_pool():
    policy = prometheus_down_policy()
    state = {}
    for tick in range(5):
        replicas, state = policy(context(ongoing=20, replicas=2, state=state, now=100.0 + tick))
        assert replicas == 2
    assert policy._ttft_p95() is None


def test_with_prometheus_down_the_policy_still_scales_on_request_counts():
    replicas, _ = prometheus_down_policy()(context(ongoing=35))
    assert replicas == 4
