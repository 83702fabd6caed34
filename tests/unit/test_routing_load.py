"""The gateway's view of pool load."""

import time

from service.routing.load import DRAIN_BUCKET_S, DrainMeter, EngineSample, LoadTracker


def test_in_flight_requests_are_counted_until_finished_once():
    tracker = LoadTracker(["a", "b"])
    finish = tracker.started("a")
    tracker.started("a")
    assert tracker.snapshot()["a"].ongoing == 2
    finish()
    finish()  # a second call from another exit path changes nothing
    assert tracker.snapshot()["a"].ongoing == 1
    assert tracker.snapshot()["b"].ongoing == 0


def test_replica_counts_come_from_the_controller():
    tracker = LoadTracker(["a"])
    tracker.set_replicas({"a": 3})
    assert tracker.snapshot()["a"].replicas == 3


def test_a_fresh_engine_sample_gives_queue_and_kv_usage():
    tracker = LoadTracker(["a"], max_age_s=10)
    tracker.set_replicas({"a": 2})
    tracker.set_engine("a", EngineSample(waiting=3, kv_cache_usage=0.5, at=time.monotonic()))
    load = tracker.snapshot()["a"]
    assert (load.queued, load.kv_usage) == (6, 0.5)  # one replica's queue, times two replicas


def test_a_stale_engine_sample_is_ignored():
    tracker = LoadTracker(["a"], max_age_s=10)
    tracker.set_engine("a", EngineSample(waiting=50, kv_cache_usage=0.99, at=time.monotonic() - 60))
    load = tracker.snapshot()["a"]
    assert (load.queued, load.kv_usage) == (0, 0.0)


def drained(
    meter: DrainMeter, count: int, at: float, replicas: int = 1, backlogged: bool = False
) -> None:
    for _ in range(count):
        meter.finished(at, replicas, backlogged)


def test_the_drain_rate_is_unknown_until_a_bucket_holds_a_few_completions():
    meter = DrainMeter()
    drained(meter, 2, at=1000.0)
    assert meter.rate_per_replica(1001.0) is None
    drained(meter, 1, at=1001.0)
    assert meter.rate_per_replica(1001.0) == 3 / DRAIN_BUCKET_S


def test_the_drain_rate_is_the_peak_per_replica_not_the_latest():
    meter = DrainMeter()
    drained(meter, 20, at=1000.0, replicas=2)  # 2 replicas: 2 per second each
    drained(meter, 5, at=1100.0)  # light load later says nothing about capacity
    assert meter.rate_per_replica(1101.0) == 20 / DRAIN_BUCKET_S / 2


def test_a_peak_older_than_ten_minutes_is_forgotten():
    meter = DrainMeter()
    drained(meter, 20, at=1000.0)
    assert meter.rate_per_replica(1000.0 + 601 + DRAIN_BUCKET_S) is None


def test_the_pools_drain_rate_scales_with_its_replicas_now():
    tracker = LoadTracker(["a"])
    for _ in range(10):
        tracker.started("a")()
    tracker.set_replicas({"a": 3})
    assert tracker.snapshot()["a"].drain_rate == 3 * 10 / DRAIN_BUCKET_S


def test_requests_past_the_pools_slots_wait_at_the_router_and_count_as_queued():
    tracker = LoadTracker(["a"], slots_per_replica={"a": 4})
    tracker.set_replicas({"a": 2})
    for _ in range(11):
        tracker.started("a")
    assert tracker.snapshot()["a"].queued == 3  # 11 in flight, 2 x 4 running


def test_the_peak_falls_back_to_the_next_bucket_when_it_expires():
    meter = DrainMeter()
    drained(meter, 20, at=1000.0)
    drained(meter, 5, at=1300.0)
    assert meter.rate_per_replica(1301.0) == 20 / DRAIN_BUCKET_S
    assert meter.rate_per_replica(1000.0 + 601 + DRAIN_BUCKET_S) == 5 / DRAIN_BUCKET_S


def test_a_pool_busy_throughout_the_last_bucket_is_trusted_at_the_rate_it_drained_then():
    meter = DrainMeter()
    drained(meter, 40, at=1000.0)  # the peak, at light contention
    drained(meter, 10, at=1100.0, backlogged=True)  # requests waited at every completion
    assert meter.rate_per_replica(1100.0 + DRAIN_BUCKET_S) == 10 / DRAIN_BUCKET_S


def test_a_bucket_that_was_not_busy_throughout_leaves_the_peak_in_force():
    meter = DrainMeter()
    drained(meter, 40, at=1000.0)
    drained(meter, 9, at=1100.0, backlogged=True)
    drained(meter, 1, at=1101.0)  # the backlog had cleared: the rate measured the load
    assert meter.rate_per_replica(1100.0 + DRAIN_BUCKET_S) == 40 / DRAIN_BUCKET_S


def test_a_busy_bucket_older_than_the_last_full_one_says_nothing_about_now():
    meter = DrainMeter()
    drained(meter, 40, at=1000.0)
    drained(meter, 10, at=1100.0, backlogged=True)
    assert meter.rate_per_replica(1100.0 + 3 * DRAIN_BUCKET_S) == 40 / DRAIN_BUCKET_S


def test_a_pool_that_drains_with_requests_at_its_router_is_rated_at_what_it_drained():
    now = [1000.0]
    tracker = LoadTracker(["a"], slots_per_replica={"a": 2}, clock=lambda: now[0])
    for _ in range(20):  # a light-load peak: nothing waits
        tracker.started("a")()
    now[0] = 1100.0
    finishes = [tracker.started("a") for _ in range(10)]  # 8 wait at the router
    for finish in finishes[:5]:
        finish()  # each leaves requests waiting
    now[0] = 1100.0 + DRAIN_BUCKET_S
    assert tracker.snapshot()["a"].drain_rate == 5 / DRAIN_BUCKET_S


def test_a_pool_marked_down_is_unhealthy_in_the_snapshot_until_it_is_up_again():
    tracker = LoadTracker(["moe", "dense"])
    tracker.set_health({"moe": True, "dense": True})
    tracker.set_health({"moe": False, "dense": True})
    assert [tracker.snapshot()[p].healthy for p in ("moe", "dense")] == [False, True]
    tracker.set_health({"moe": True, "dense": True})
    assert tracker.snapshot()["moe"].healthy


def test_a_pool_never_seen_up_is_starting_not_down():
    tracker = LoadTracker(["moe"])
    tracker.set_health({"moe": False})
    assert tracker.snapshot()["moe"].healthy
