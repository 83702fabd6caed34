"""The routing policy: each step alone, then whole decisions on a table of requests."""

import dataclasses

import pytest

from service.access.gate import scaled
from service.catalog import Modality
from service.routing.features import RequestFeatures
from service.routing.policy import (
    AllSaturated,
    Candidates,
    NoCapablePool,
    NoHealthyPool,
    PoolInfo,
    PoolLoad,
    RoutingPolicy,
    Thresholds,
    capability,
    is_saturated,
    size_shape,
    spill_over,
)
from service.routing.setup import build_policy
from service.settings import Settings

TEXT = frozenset({Modality.TEXT})
VISUAL = frozenset({Modality.TEXT, Modality.IMAGE, Modality.VIDEO})
AUDIO = VISUAL | {Modality.AUDIO}

MOE = PoolInfo("moe", "moe", VISUAL, 262144)
DENSE = PoolInfo("dense", "dense", VISUAL, 262144)
SMALL = PoolInfo("e4b", "dense", AUDIO, 131072)
RULES = Thresholds(
    interactive_pool="moe", quality_pool="dense", long_prompt_tokens=8192, max_ongoing_per_replica=4
)
BOTH = Candidates((MOE, DENSE), "default")
IDLE: dict[str, PoolLoad] = {}


def request(prompt=200, out=100, modalities=TEXT, **shape) -> RequestFeatures:
    return RequestFeatures(
        modalities=frozenset(modalities), prompt_tokens=prompt, max_tokens=out, **shape
    )


def busy(ongoing=4, replicas=1, **extra) -> PoolLoad:
    return PoolLoad(replicas=replicas, ongoing=ongoing, **extra)


# capability ---------------------------------------------------------------------------


def test_capability_keeps_every_pool_for_plain_text():
    assert capability(request(), BOTH, IDLE, RULES) == BOTH


def test_capability_sends_audio_only_where_audio_is_accepted():
    out = capability(
        request(modalities={Modality.TEXT, Modality.AUDIO}),
        Candidates((MOE, DENSE, SMALL), "default"),
        IDLE,
        RULES,
    )
    assert out == Candidates((SMALL,), "modality:audio")


def test_capability_refuses_audio_when_no_pool_takes_it():
    with pytest.raises(NoCapablePool) as err:
        capability(request(modalities={Modality.TEXT, Modality.AUDIO}), BOTH, IDLE, RULES)
    assert err.value.status == 400
    assert "no deployed model accepts audio input" in err.value.message


def test_capability_drops_pools_whose_context_is_too_small():
    out = capability(request(prompt=140_000), Candidates((SMALL, DENSE), "default"), IDLE, RULES)
    assert out == Candidates((DENSE,), "context:long-request")


def test_capability_fails_open_to_the_largest_context_when_nothing_fits_by_estimate():
    out = capability(request(prompt=300_000), Candidates((SMALL, DENSE), "default"), IDLE, RULES)
    assert out == Candidates((DENSE,), "context:largest")


# size_shape ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "pool", "reason"),
    [
        (request(prompt=300, out=200), "moe", "shape:interactive"),
        (request(prompt=20_000), "dense", "size:long-prompt"),
        (request(out=6000), "dense", "size:long-output"),
        (request(uses_tools=True), "dense", "shape:tools"),
        (request(structured_output=True), "dense", "shape:structured-output"),
        (request(tier="quality"), "dense", "tier:quality"),
    ],
)
def test_size_shape_prefers_the_pool_that_fits_the_request(features, pool, reason):
    out = size_shape(features, BOTH, IDLE, RULES)
    assert (out.pools[0].id, out.reason) == (pool, reason)
    assert len(out.pools) == 2  # the other pool stays as a fallback


def test_long_prompts_stay_on_the_interactive_pool_by_default():
    rules = Thresholds(interactive_pool="moe", quality_pool="dense")
    out = size_shape(request(prompt=100_000), BOTH, IDLE, rules)
    assert (out.pools[0].id, out.reason) == ("moe", "shape:interactive")


def test_size_shape_keeps_tools_on_moe_when_configured():
    rules = Thresholds(interactive_pool="moe", quality_pool="dense", dense_for_tools=False)
    assert size_shape(request(uses_tools=True), BOTH, IDLE, rules).pools[0].id == "moe"


def test_size_shape_leaves_a_single_candidate_alone():
    single = Candidates((DENSE,), "modality:image")
    assert size_shape(request(), single, IDLE, RULES) == single


# spill_over ---------------------------------------------------------------------------


def test_spill_over_keeps_the_preferred_pool_when_it_has_room():
    assert spill_over(request(), BOTH, {"moe": busy(ongoing=3)}, RULES) == BOTH


def test_spill_over_moves_to_the_next_pool_when_the_preferred_is_saturated():
    out = spill_over(request(), BOTH, {"moe": busy(ongoing=4)}, RULES)
    assert (out.pools[0].id, out.reason) == ("dense", "spill:saturated")


def test_spill_over_refuses_with_503_when_every_pool_is_saturated():
    with pytest.raises(AllSaturated) as err:
        spill_over(request(), BOTH, {"moe": busy(), "dense": busy()}, RULES)
    assert err.value.status == 503
    assert err.value.headers() == {"Retry-After": "2"}


def test_spill_over_moves_off_a_pool_with_no_replica_up():
    down = PoolLoad(replicas=0, ongoing=0, healthy=False)
    out = spill_over(request(), BOTH, {"moe": down}, RULES)
    assert (out.pools[0].id, out.reason) == ("dense", "spill:unhealthy")


def test_spill_over_refuses_with_503_naming_the_pools_when_none_has_a_replica_up():
    down = PoolLoad(replicas=0, ongoing=0, healthy=False)
    with pytest.raises(NoHealthyPool, match="moe, dense") as err:
        spill_over(request(), BOTH, {"moe": down, "dense": down}, RULES)
    assert (err.value.status, err.value.shed_reason) == (503, "unhealthy")


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
    assert is_saturated(load, RULES) is saturated


def test_a_queue_bound_of_zero_saturates_only_a_pool_with_a_queue():
    no_queue = dataclasses.replace(RULES, max_queued_per_replica=0)
    assert not is_saturated(busy(ongoing=0, queued=0), no_queue)
    assert is_saturated(busy(ongoing=0, queued=1), no_queue)


# whole decisions ----------------------------------------------------------------------

POLICY = RoutingPolicy(pools=(MOE, DENSE, SMALL), thresholds=RULES)


@pytest.mark.parametrize(
    ("features", "loads", "pool", "reason"),
    [
        (request(), IDLE, "moe", "shape:interactive"),
        (request(prompt=30_000), IDLE, "dense", "size:long-prompt"),
        (request(prompt=150_000), IDLE, "dense", "size:long-prompt"),
        (request(modalities={Modality.TEXT, Modality.AUDIO}), IDLE, "e4b", "modality:audio"),
        (request(modalities={Modality.TEXT, Modality.IMAGE}), IDLE, "moe", "shape:interactive"),
        (request(uses_tools=True), IDLE, "dense", "shape:tools"),
        (request(), {"moe": busy()}, "dense", "spill:saturated"),
        (request(uses_tools=True), {"dense": busy()}, "moe", "spill:saturated"),
    ],
)
def test_policy_decisions(features, loads, pool, reason):
    decision = POLICY.route(features, loads)
    assert (decision.pool_id, decision.reason) == (pool, reason)


def test_steps_left_out_are_skipped():
    filter_only = RoutingPolicy(pools=(MOE, DENSE), steps=("capability",), thresholds=RULES)
    assert filter_only.route(request(prompt=30_000), IDLE).pool_id == "moe"


def test_a_pinned_pool_is_never_swapped_even_when_saturated():
    assert POLICY.pin("moe", request(prompt=30_000)).pool_id == "moe"


def test_a_pinned_pool_refuses_input_it_cannot_take():
    with pytest.raises(NoCapablePool, match="'dense' does not accept audio"):
        POLICY.pin("dense", request(modalities={Modality.TEXT, Modality.AUDIO}))


# predicted wait -----------------------------------------------------------------------


def test_past_its_counts_a_pool_whose_queue_starts_within_the_wait_bound_takes_more():
    assert not is_saturated(busy(ongoing=40, queued=30, drain_rate=10.0), RULES)  # ~3 s


def test_past_its_counts_a_pool_whose_queue_would_outlast_the_wait_bound_is_saturated():
    assert is_saturated(busy(ongoing=400, queued=300, drain_rate=10.0), RULES)  # ~30 s


def test_a_pool_busy_with_long_streams_but_no_queue_takes_more():
    assert not is_saturated(busy(ongoing=40, queued=0, drain_rate=0.5), RULES)


def test_without_a_drain_rate_the_counts_decide():
    assert is_saturated(busy(ongoing=4), RULES)


def test_without_a_wait_bound_the_counts_decide():
    counts_only = dataclasses.replace(RULES, max_queue_wait_s=None)
    assert is_saturated(busy(ongoing=4, drain_rate=1000.0), counts_only)


def test_a_full_kv_cache_saturates_whatever_the_drain_rate():
    assert is_saturated(busy(ongoing=0, kv_usage=0.97, drain_rate=1000.0), RULES)


def test_the_predicted_wait_is_the_queue_over_the_drain_rate():
    assert busy(ongoing=40, queued=30, drain_rate=6.0).predicted_wait_s == 5.0
    assert busy(ongoing=40, queued=30).predicted_wait_s is None


def test_a_lower_priority_class_waits_a_share_of_the_bound():
    assert scaled(RULES, 0.25).max_queue_wait_s == 5.0


def test_the_wait_bound_never_exceeds_the_request_deadline():
    settings = Settings(server={"request_timeout_s": 5}, routing={"max_queue_wait_s": 20})
    assert build_policy(settings).thresholds.max_queue_wait_s == 5
