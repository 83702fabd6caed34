"""The routing simulation (benchmarks/sim/routing.py), through the production policy and tracker."""

from __future__ import annotations

import pytest

from benchmarks.sim import routing as rs
from benchmarks.sim.gateway import PoolLoad

# --- routing simulation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_minute():
    return rs.run_strategies(seed=3, minutes=1.0, rate_scale=1.0)


def test_every_strategy_accounts_for_every_request(one_minute):
    fleet, workload, results = one_minute
    assert set(results) == set(rs.STRATEGIES)
    for result in results.values():
        assert [r.request.id for r in result.records] == [r.id for r in workload.requests]
        assert all(r.outcome in ("sent", "rejected", "shed", "failed") for r in result.records)
        served = [r for r in result.records if r.outcome == "sent"]
        assert all(r.ttft > 0 and r.finished_at >= r.request.arrival for r in served)


def test_unservable_audio_is_rejected_by_policies_and_fails_round_robin(one_minute):
    fleet, workload, results = one_minute
    audio = sum(r.kind == "audio" for r in workload.requests)
    assert audio > 0
    assert rs.summarise(results[rs.BASELINE], fleet).failed == audio
    for name in list(rs.STRATEGIES)[1:]:
        s = rs.summarise(results[name], fleet)
        assert (s.rejected, s.failed) == (audio, 0)


def test_same_seed_same_results():
    a = rs.run_strategies(seed=7, minutes=0.5, rate_scale=1.0)[2]
    b = rs.run_strategies(seed=7, minutes=0.5, rate_scale=1.0)[2]
    c = rs.run_strategies(seed=8, minutes=0.5, rate_scale=1.0)[2]
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_policy_gives_short_interactive_traffic_better_goodput_than_round_robin(one_minute):
    # What the size/shape step is for: chat and image requests, kept off the dense pool.
    fleet, _, results = one_minute
    short = {"chat", "image"}
    ours = rs.summarise(results[rs.OURS], fleet, short).goodput
    base = rs.summarise(results[rs.BASELINE], fleet, short).goodput
    assert ours >= base


def test_policy_beats_round_robin_on_the_default_mix(one_minute):
    fleet, _, results = one_minute
    ours = rs.summarise(results[rs.OURS], fleet).goodput
    assert ours > rs.summarise(results[rs.BASELINE], fleet).goodput


def test_the_simulation_calls_the_real_policy(monkeypatch):
    calls = []
    real = rs.RoutingPolicy.route

    def spy(self, features, loads):
        calls.append((self.steps, dict(loads)))
        return real(self, features, loads)

    monkeypatch.setattr(rs.RoutingPolicy, "route", spy)
    fleet = rs.load_fleet()
    workload = rs.make_workload(seed=1, minutes=0.2, rate=5.0)
    rs.simulate(workload, fleet, rs.OURS)
    assert len(calls) == len(workload.requests)
    steps, loads = calls[-1]
    assert steps == ("capability", "size_shape", "spill_over")
    assert all(isinstance(v, PoolLoad) and v.replicas == 4 for v in loads.values())


def test_strategies_read_loads_from_the_production_tracker(monkeypatch):
    snapshots = []
    real = rs.Gateway.loads

    def spy(self):
        loads = real(self)
        snapshots.append(loads)
        return loads

    monkeypatch.setattr(rs.Gateway, "loads", spy)
    fleet = rs.load_fleet()
    workload = rs.make_workload(seed=1, minutes=0.2, rate=5.0)
    rs.simulate(workload, fleet, rs.OURS)
    assert len(snapshots) >= len(workload.requests)
    assert any(load.ongoing > 0 for s in snapshots for load in s.values())


def test_the_bursts_are_spans_of_twenty_seconds():
    workload = rs.make_workload(seed=0, minutes=5.0, rate=5.0)
    assert workload.bursts and all(b - a == rs.BURST_SECONDS for a, b in workload.bursts)
