"""The gateway's view of pool load."""

import time

from service.routing.load import EngineSample, LoadTracker


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
