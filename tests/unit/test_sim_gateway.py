"""The simulated gateway (benchmarks/sim/gateway.py) feeds and reads the production tracker."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.sim.deployment import CONFIG
from benchmarks.sim.gateway import Gateway, build_policy, route
from service.catalog import Modality
from service.routing.features import RequestFeatures
from service.routing.load import LoadTracker
from service.settings import load_settings

SETTINGS = load_settings(CONFIG)


def _engine(backlog: int, kv: float) -> SimpleNamespace:
    return SimpleNamespace(backlog=backlog, kv_in_use=kv)


def _gateway(now: float = 5.0) -> Gateway:
    engines = {"a": [_engine(3, 0.2), _engine(1, 0.6)], "b": [_engine(0, 0.1)]}
    return Gateway(SETTINGS, engines, clock=lambda: now)  # type: ignore[arg-type]


def test_the_tracker_is_the_production_one():
    assert type(_gateway().tracker) is LoadTracker


def test_the_pool_queue_is_the_mean_waiting_count_times_the_replicas():
    gateway = _gateway()
    gateway.read_engines(5.0)
    a = gateway.loads()["a"]
    assert (a.replicas, a.queued, a.kv_usage) == (2, 4, 0.6)  # round(2) x 2; the highest KV


def test_engine_figures_older_than_stats_max_age_are_not_read():
    gateway = _gateway(now=5.0 + SETTINGS.routing.stats_max_age_s + 1)
    gateway.read_engines(5.0)
    assert gateway.loads()["a"].queued == 0


def test_in_flight_counts_what_was_sent_until_it_finishes():
    gateway = _gateway()
    done = [gateway.sent("a") for _ in range(3)]
    done[0]()
    done[0]()  # once only
    assert gateway.loads()["a"].ongoing == 2


def test_a_request_no_pool_takes_is_rejected():
    audio = RequestFeatures(
        modalities=frozenset({Modality.TEXT, Modality.AUDIO}),
        prompt_tokens=800,
        max_tokens=100,
        media_counts={Modality.AUDIO: 1},
    )
    routed = route(build_policy(SETTINGS), audio, {})
    assert (routed.pool_id, routed.refused) == (None, "rejected")
