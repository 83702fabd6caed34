"""The replica decision on synthetic signal sequences: each test is a scenario over time."""

from dataclasses import replace

from service.autoscaling.decision import DOWN, UP, ScalingDecision, ScalingParams, Signals, decide

PARAMS = ScalingParams(
    min_replicas=1,
    max_replicas=8,
    target_ongoing_requests=10,
    ttft_slo_s=2.0,
    upscale_delay_s=15,
    downscale_delay_s=300,
    downscale_to_zero_delay_s=600,
)
TICK_S = 5.0


class Fleet:
    """Runs the decision every tick, applying it the way Serve does (replicas = decision)."""

    def __init__(self, params: ScalingParams = PARAMS, replicas: int = 1):
        self.params = params
        self.replicas = replicas
        self.now = 0.0
        self.state: dict = {}
        self.history: list[ScalingDecision] = []

    def tick(self, ongoing: float, **signals) -> ScalingDecision:
        s = Signals(self.now, self.replicas, self.replicas, ongoing, **signals)
        decision, self.state = decide(s, self.params, self.state)
        self.replicas = decision.replicas
        self.history.append(decision)
        self.now += TICK_S
        return decision

    def run(self, seconds: float, ongoing: float, **signals) -> int:
        for _ in range(int(seconds / TICK_S)):
            self.tick(ongoing, **signals)
        return self.replicas

    @property
    def actions(self) -> int:
        changes = zip(self.history, self.history[1:], strict=False)
        return sum(a.replicas != b.replicas for a, b in changes)


def test_a_burst_scales_up_after_the_upscale_delay_not_before():
    fleet = Fleet()
    fleet.run(60, ongoing=5)
    assert fleet.run(10, ongoing=50) == 1  # wanted 5, held for less than 15 s
    assert fleet.run(10, ongoing=50) == 5


def test_a_burst_scales_straight_to_the_load_not_one_step_at_a_time():
    fleet = Fleet()
    fleet.run(20, ongoing=70)
    assert fleet.replicas == 7
    assert fleet.actions == 1


def test_scale_up_is_capped_at_max_and_says_it_wants_more():
    fleet = Fleet()
    fleet.run(30, ongoing=500)
    assert fleet.replicas == 8
    assert fleet.history[-1].desired == 50


def test_a_slow_ramp_adds_replicas_as_the_load_crosses_each_target():
    fleet = Fleet()
    seen = []
    for minute in range(30):
        fleet.run(60, ongoing=2 * minute)
        seen.append(fleet.replicas)
    assert seen == sorted(seen)  # never down on a rising load
    assert seen[-1] == 6  # 58 ongoing / 10 per replica
    assert fleet.actions == 5


def test_idle_load_scales_down_only_after_the_downscale_delay():
    fleet = Fleet(replicas=4)
    assert fleet.run(295, ongoing=5) == 4
    assert fleet.run(10, ongoing=5) == 1


def test_scale_down_keeps_headroom_below_the_target():
    fleet = Fleet(replicas=4)
    # 20 ongoing fits 2 replicas exactly at target, but 3 at 70 % of it.
    assert fleet.run(400, ongoing=20) == 3


def test_a_load_hovering_at_the_threshold_does_not_flap():
    fleet = Fleet(replicas=3)
    for i in range(240):  # 20 minutes alternating just above and below 3 x target
        fleet.tick(ongoing=31 if i % 2 else 27)
    assert fleet.actions == 0


def test_short_spikes_shorter_than_the_delay_do_nothing():
    fleet = Fleet(replicas=2)
    for _ in range(20):
        fleet.run(10, ongoing=60)  # 10 s above target
        fleet.run(50, ongoing=15)  # then back
    assert fleet.actions == 0


def test_ttft_above_the_slo_adds_replicas_even_below_the_request_target():
    fleet = Fleet(replicas=2)
    assert fleet.run(20, ongoing=10, ttft_p95_s=3.0) == 3
    assert fleet.history[-1].reason in ("ttft_slo", "ongoing_requests")


def test_ttft_near_the_slo_blocks_scale_down():
    fleet = Fleet(replicas=3)
    assert fleet.run(600, ongoing=2, ttft_p95_s=1.8) == 3


def test_an_engine_queue_adds_room_for_it():
    fleet = Fleet(replicas=2)
    assert fleet.run(20, ongoing=15, engine_waiting=25) == 5  # 2 + ceil(25 / 10)


def test_a_full_kv_cache_adds_a_replica_and_a_busy_one_blocks_scale_down():
    assert Fleet(replicas=2).run(20, ongoing=12, kv_cache_usage=0.97) == 3
    assert Fleet(replicas=3).run(600, ongoing=1, kv_cache_usage=0.75) == 3


def test_a_metrics_outage_neither_scales_up_nor_blocks_scaling_down():
    fleet = Fleet(replicas=4)
    # Prometheus and replica stats gone (None): only Serve's own request count remains.
    assert fleet.run(600, ongoing=5, ttft_p95_s=None, engine_waiting=None) == 1
    fleet = Fleet(replicas=2)
    assert fleet.run(600, ongoing=15, ttft_p95_s=None, kv_cache_usage=None) == 2


def test_stale_signals_come_back_without_a_jump():
    fleet = Fleet(replicas=2)
    fleet.run(60, ongoing=15, ttft_p95_s=None)
    assert fleet.run(60, ongoing=15, ttft_p95_s=1.0) == 2


def test_an_optional_pool_scales_to_zero_after_its_own_delay_and_back_at_once():
    fleet = Fleet(replace(PARAMS, min_replicas=0), replicas=1)
    assert fleet.run(300, ongoing=0) == 1
    assert fleet.run(305, ongoing=0) == 0
    assert fleet.tick(ongoing=1).replicas == 1  # a request waits: no delay from zero


def test_min_replicas_hold_when_idle():
    assert Fleet(replicas=1).run(3600, ongoing=0) == 1


def test_a_reversed_wish_restarts_the_delay():
    fleet = Fleet(replicas=2)
    fleet.run(10, ongoing=40)  # wants up for 10 s
    fleet.run(5, ongoing=15)  # back to steady: the pending scale-up is forgotten
    assert fleet.run(10, ongoing=40) == 2
    assert fleet.history[-1].direction == UP


def test_the_decision_reports_direction_and_reason():
    fleet = Fleet(replicas=4)
    decision = fleet.tick(ongoing=1)
    assert (decision.direction, decision.reason, decision.replicas) == (DOWN, "ongoing_requests", 4)


def test_replicas_still_starting_are_not_cancelled_by_a_steady_load():
    # 2 running, 1 starting: 55 ongoing needs 3 at 70 % headroom; nothing to scale down.
    signals = Signals(0.0, current_replicas=2, target_replicas=3, ongoing_requests=55)
    params = replace(PARAMS, target_ongoing_requests=32, downscale_delay_s=0)
    decision, _ = decide(signals, params, {})
    assert decision.replicas == 3
