"""The autoscaling simulation (benchmarks/sim/autoscale.py): trace, signals, short runs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.sim import autoscale as sim
from benchmarks.sim import signals

FLAT = ((0.0, 1.0), (24.0, 1.0))


@pytest.fixture(scope="module")
def pool() -> sim.PoolModel:
    return sim.load_pool(min_replicas=1, max_replicas=4)


@pytest.fixture(scope="module")
def short_day() -> sim.Trace:
    # The whole day shape in 40 simulated minutes, at a rate one to three replicas carry.
    return sim.make_trace(7, day_hours=2 / 3, peak_rate=8.0)


def _key(trace: sim.Trace) -> list[tuple]:
    return [(r.arrival, r.kind, r.prompt_tokens, r.output_tokens) for r in trace.requests]


def test_the_trace_is_reproducible_for_a_seed():
    a, b = sim.make_trace(3, day_hours=0.5, peak_rate=4.0), sim.make_trace(3, 0.5, 4.0)
    assert _key(a) == _key(b) and a.bursts == b.bursts and a.outage == b.outage
    assert _key(sim.make_trace(4, day_hours=0.5, peak_rate=4.0)) != _key(a)
    arrivals = [r.arrival for r in a.requests]
    assert arrivals == sorted(arrivals) and 0 <= arrivals[0] and arrivals[-1] < a.duration_s
    assert [r.id for r in a.requests] == list(range(len(a.requests)))


def test_the_trace_has_a_day_shape_bursts_and_an_outage():
    trace = sim.make_trace(0, day_hours=6.0, peak_rate=4.0)
    arrivals = np.array([r.arrival for r in trace.requests])
    hour = trace.duration_s / 24

    def rate(lo_h: float, hi_h: float) -> float:
        return ((arrivals >= lo_h * hour) & (arrivals < hi_h * hour)).sum() / ((hi_h - lo_h) * hour)

    assert rate(1, 5) < 0.25 * rate(10, 12)  # night vs midday plateau
    assert len(trace.bursts) == sim.BURSTS
    for a, b in trace.bursts:
        assert 5 * 60 <= b - a <= 10 * 60
        inside = ((arrivals >= a) & (arrivals < b)).sum() / (b - a)
        before = ((arrivals >= a - 600) & (arrivals < a)).sum() / 600
        assert inside > 2 * before
    assert trace.outage is not None and trace.outage[0] < trace.bursts[1][0] < trace.outage[1]
    assert {r.kind for r in trace.requests} <= {c.kind for c in sim.INTERACTIVE}


@pytest.mark.parametrize("policy", sim.POLICIES)
def test_a_short_run_of_each_policy_is_sane(policy: str, pool: sim.PoolModel, short_day):
    result = sim.simulate(short_day, pool, policy)
    summary = sim.summarise(result)
    served = ~np.isnan(result.ttft)
    assert (served | result.dropped).all(), "every request is served or times out"
    assert 1 <= result.target.min() and result.target.max() <= 4
    assert 1 <= result.running.min() and result.running.max() <= 4
    assert summary.gpu_hours > 0 and 1 <= summary.mean_replicas <= 4 + 1
    assert summary.ups >= 1 and summary.started >= 2  # the ramp to midday needs a second one
    assert 0 < summary.slo_both <= summary.slo_ttft <= 1
    assert 0 < summary.ttft_p50 <= summary.ttft_p95 <= summary.ttft_p99


def test_ours_scales_up_during_a_burst(pool: sim.PoolModel):
    # Flat 3 req/s (one replica) for 50 min, tripled from minute 10 to 20.
    burst = (600.0, 1200.0)
    trace = sim.make_trace(1, 50 / 60, 3.0, bursts=[burst], outage=False, shape=FLAT)
    result = sim.simulate(trace, pool, sim.OURS)
    before = result.target[result.ticks < burst[0]]
    during = result.target[(result.ticks >= burst[0]) & (result.ticks < burst[1])]
    assert before.max() == 1
    assert during.max() >= 2
    first_up = result.ticks[(result.ticks >= burst[0]) & (result.target > 1)][0]
    assert first_up - burst[0] < 120  # within the look-back, delay and a few ticks
    serving = result.running[(result.ticks >= burst[0] + pool.cold_start_s + 60)]
    assert serving[: int(60 / 10)].max() >= 2  # the new replicas serve after their cold start


def test_ours_tolerates_a_prometheus_outage(pool: sim.PoolModel):
    burst = (600.0, 1200.0)
    trace = sim.make_trace(1, 50 / 60, 3.0, bursts=[burst], outage=(300.0, 1500.0), shape=FLAT)
    result = sim.simulate(trace, pool, sim.OURS)
    in_outage = (result.ticks >= 300) & (result.ticks < 1500)
    assert np.isnan(result.ttft_signal[in_outage]).all()
    assert not np.isnan(result.ttft_signal[result.ticks >= 1800]).all()
    assert result.target[in_outage].max() >= 2  # ongoing requests alone still scale it


def test_serve_default_waits_its_upscale_delay(pool: sim.PoolModel):
    ctl = sim.make_controller(sim.SERVE_DEFAULT, pool)
    assert ctl.config.upscale_delay_s == 30 and ctl.config.downscale_delay_s == 600
    decisions = []
    for t in range(1, 40):
        ctx = sim.AutoscalingContext(
            deployment_id=sim.DeploymentID(name=sim.POOL),
            deployment_name=sim.POOL,
            app_name=None,
            current_num_replicas=1,
            target_num_replicas=1,
            running_replicas=[],
            total_num_requests=100.0,  # 100 / 32 -> 4 replicas
            total_queued_requests=0.0,
            aggregated_metrics={},
            raw_metrics={},
            capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=4,
            policy_state=ctl.state,
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=float(t),
            config=ctl.config,
        )
        decisions.append(ctl.decide(ctx, float(t)))
    # First wish at t=1; 30 s later (t=31) it is acted on.
    assert decisions[:30] == [1] * 30 and decisions[30] == 4


def test_ours_is_built_from_the_settings(pool: sim.PoolModel):
    ctl = sim.make_controller(sim.OURS, pool)
    assert ctl.ours is not None
    params = ctl.ours._params
    a = pool.settings.autoscaling
    assert params.ttft_slo_s == a.ttft_p95_slo_s == 2.0
    assert params.target_ongoing_requests == pool.settings.target_ongoing_requests
    assert (params.min_replicas, params.max_replicas) == (1, 4)
    assert ctl.config.upscale_delay_s == 0  # Serve's delays off: decide() applies its own
    assert ctl.config.look_back_period_s == a.look_back_period_s


def test_window_mean_holds_the_last_pushed_value():
    s = signals.Series(every=1)
    for t in range(1, 21):
        s.add(t, float(t))
    # Pushed at 20 (every 10 s): the mean of samples 11..20 over a 10 s look-back.
    assert s.window_mean(20, 10, 10) == pytest.approx(15.5)
    # At 25 the controller still has the push at 20; 20 holds for 21..25.
    assert s.window_mean(25, 10, 10) == pytest.approx((sum(range(16, 21)) + 5 * 20) / 10)


def test_histogram_quantile_interpolates_like_prometheus():
    bounds = [1.0, 2.0, 5.0]
    # 10 observations: 5 <= 1 s, 4 in (1, 2], 1 above 5 s.
    cumulative = np.array([5.0, 9.0, 9.0, 10.0])
    assert signals.histogram_quantile(0.5, bounds, cumulative) == pytest.approx(1.0)
    assert signals.histogram_quantile(0.7, bounds, cumulative) == pytest.approx(1.5)
    assert signals.histogram_quantile(0.95, bounds, cumulative) == 5.0  # +Inf bucket
    assert signals.histogram_quantile(0.95, bounds, np.zeros(4)) is None


def test_prometheus_sees_nothing_while_down():
    prom = signals.Prometheus(window_s=120, outage=(100.0, 300.0))
    for t in range(0, 400, 15):
        prom.observe(0.5)
        prom.scrape(float(t))
    assert prom.query(90.0) == pytest.approx(0.49)  # 0.3 + 0.95 x (0.5 - 0.3)
    assert prom.query(150.0) is None
    assert prom.query(310.0) is None  # one scrape since it came back: no rate yet
    assert prom.query(315.0) == pytest.approx(0.49)
