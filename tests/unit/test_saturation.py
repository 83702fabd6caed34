"""When a pool counts as saturated: the one detector spill-over and priority shedding share."""

import dataclasses

import pytest

from service.saturation import PoolLoad, SaturationLimits, is_saturated

LIMITS = SaturationLimits(max_ongoing_per_replica=4)


def busy(ongoing=4, replicas=1, **extra) -> PoolLoad:
    return PoolLoad(replicas=replicas, ongoing=ongoing, **extra)


@pytest.mark.parametrize(
    ("load", "saturated"),
    [
        (None, False),
        (busy(ongoing=3), False),
        (busy(ongoing=4), True),
        (busy(ongoing=7, replicas=2), False),
        (busy(ongoing=0, queued=8), False),  # a full queue, not yet an overflowing one
        (busy(ongoing=0, queued=9), True),
        (busy(ongoing=0, kv_usage=0.97), True),
        (busy(ongoing=100, replicas=0), False),  # scaled to zero: the request wakes it
    ],
)
def test_saturation(load, saturated):
    assert is_saturated(load, LIMITS) is saturated


def test_a_queue_bound_of_zero_saturates_only_a_pool_with_a_queue():
    no_queue = dataclasses.replace(LIMITS, max_queued_per_replica=0)
    assert not is_saturated(busy(ongoing=0, queued=0), no_queue)
    assert is_saturated(busy(ongoing=0, queued=1), no_queue)


# predicted wait -----------------------------------------------------------------------


def test_past_its_counts_a_pool_whose_queue_starts_within_the_wait_bound_takes_more():
    assert not is_saturated(busy(ongoing=40, queued=30, drain_rate=10.0), LIMITS)  # ~3 s


def test_past_its_counts_a_pool_whose_queue_would_outlast_the_wait_bound_is_saturated():
    assert is_saturated(busy(ongoing=400, queued=300, drain_rate=10.0), LIMITS)  # ~30 s


def test_a_pool_busy_with_long_streams_but_no_queue_takes_more():
    assert not is_saturated(busy(ongoing=40, queued=0, drain_rate=0.5), LIMITS)


def test_without_a_drain_rate_the_counts_decide():
    assert is_saturated(busy(ongoing=4), LIMITS)


def test_without_a_wait_bound_the_counts_decide():
    counts_only = dataclasses.replace(LIMITS, max_queue_wait_s=None)
    assert is_saturated(busy(ongoing=4, drain_rate=1000.0), counts_only)


def test_a_full_kv_cache_saturates_whatever_the_drain_rate():
    assert is_saturated(busy(ongoing=0, kv_usage=0.97, drain_rate=1000.0), LIMITS)


def test_the_predicted_wait_is_the_queue_over_the_drain_rate():
    assert busy(ongoing=40, queued=30, drain_rate=6.0).predicted_wait_s == 5.0
    assert busy(ongoing=40, queued=30).predicted_wait_s is None


# a lower priority class's share -------------------------------------------------------


def test_a_lower_priority_class_waits_a_share_of_the_bound():
    assert LIMITS.scaled(0.25).max_queue_wait_s == 5.0


def test_a_lower_priority_class_gets_a_share_of_the_counts_and_at_least_one_slot():
    low = SaturationLimits(max_ongoing_per_replica=2, max_queued_per_replica=8).scaled(0.25)
    assert (low.max_ongoing_per_replica, low.max_queued_per_replica) == (1, 2)
    assert low.max_kv_usage == 0.95  # the KV cache is full for everyone at once


def test_a_share_of_the_limits_keeps_the_limits_type():
    @dataclasses.dataclass(frozen=True)
    class WithMore(SaturationLimits):
        retry_after_s: int = 2

    assert WithMore(retry_after_s=7).scaled(0.5) == WithMore(
        max_ongoing_per_replica=24, max_queued_per_replica=4, max_queue_wait_s=10.0, retry_after_s=7
    )
