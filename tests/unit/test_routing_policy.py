"""The routing policy: whole decisions on a table of requests, and the policy built from
settings. Each step alone: test_routing_steps.py; saturation: test_saturation.py."""

import dataclasses

import pytest

from service.catalog import Modality
from service.routing.candidates import Candidates, PoolInfo
from service.routing.features import RequestFeatures
from service.routing.policy import RouteDecision, RoutingPolicy, Thresholds
from service.routing.setup import build_policy
from service.routing.steps.capability import NoCapablePool
from service.saturation import PoolLoad
from service.settings import RoutingSettings, Settings

TEXT = frozenset({Modality.TEXT})
VISUAL = frozenset({Modality.TEXT, Modality.IMAGE, Modality.VIDEO})
AUDIO = VISUAL | {Modality.AUDIO}

MOE = PoolInfo("moe", "moe", VISUAL, 262144)
DENSE = PoolInfo("dense", "dense", VISUAL, 262144)
SMALL = PoolInfo("e4b", "dense", AUDIO, 131072)
RULES = Thresholds(
    interactive_pool="moe", quality_pool="dense", long_prompt_tokens=8192, max_ongoing_per_replica=4
)
IDLE: dict[str, PoolLoad] = {}
POLICY = RoutingPolicy(pools=(MOE, DENSE, SMALL), thresholds=RULES)


def request(prompt=200, out=100, modalities=TEXT, **shape) -> RequestFeatures:
    return RequestFeatures(
        modalities=frozenset(modalities), prompt_tokens=prompt, max_tokens=out, **shape
    )


def busy(ongoing=4, replicas=1, **extra) -> PoolLoad:
    return PoolLoad(replicas=replicas, ongoing=ongoing, **extra)


# whole decisions ----------------------------------------------------------------------


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


def test_rank_orders_every_eligible_pool_the_preferred_first():
    ranked = POLICY.rank(request(uses_tools=True), IDLE)
    assert ranked == Candidates((DENSE, MOE, SMALL), "shape:tools")


def test_rank_keeps_a_saturated_pool_behind_the_one_it_spilled_to():
    ranked = POLICY.rank(request(), {"moe": busy()})
    assert ranked == Candidates((DENSE, MOE, SMALL), "spill:saturated")


def test_rank_leaves_out_the_pools_that_cannot_take_the_request():
    ranked = POLICY.rank(request(modalities={Modality.TEXT, Modality.AUDIO}), IDLE)
    assert ranked == Candidates((SMALL,), "modality:audio")


@pytest.mark.parametrize("loads", [IDLE, {"moe": busy()}, {"dense": busy(), "moe": busy(3)}])
def test_route_is_the_first_of_rank(loads):
    ranked = POLICY.rank(request(), loads)
    assert POLICY.route(request(), loads) == RouteDecision(ranked.pools[0].id, ranked.reason)


def test_steps_left_out_are_skipped():
    filter_only = RoutingPolicy(pools=(MOE, DENSE), steps=("capability",), thresholds=RULES)
    assert filter_only.route(request(prompt=30_000), IDLE).pool_id == "moe"


def test_a_policy_with_other_steps_is_one_replace_away():
    filter_only = dataclasses.replace(POLICY, steps=("capability",))
    assert filter_only.rank(request(uses_tools=True), IDLE).pools[0] == MOE


def test_a_pinned_pool_is_never_swapped_even_when_saturated():
    assert POLICY.pin("moe", request(prompt=30_000)) == RouteDecision("moe", "pinned")


def test_a_pinned_pool_refuses_input_it_cannot_take():
    with pytest.raises(NoCapablePool, match="'dense' does not accept audio"):
        POLICY.pin("dense", request(modalities={Modality.TEXT, Modality.AUDIO}))


# built from settings ------------------------------------------------------------------


def test_the_wait_bound_never_exceeds_the_request_deadline():
    settings = Settings(server={"request_timeout_s": 5}, routing={"max_queue_wait_s": 20})
    assert build_policy(settings).thresholds.max_queue_wait_s == 5


def test_no_wait_bound_stays_none():
    settings = Settings(routing={"max_queue_wait_s": None})
    assert build_policy(settings).thresholds.max_queue_wait_s is None


def test_the_default_pools_are_the_first_moe_and_the_first_dense():
    thresholds = build_policy(Settings()).thresholds
    pools = {p.id: p.architecture for p in build_policy(Settings()).pools}
    assert pools[thresholds.interactive_pool] == "moe"
    assert pools[thresholds.quality_pool] == "dense"


CHANGED = {
    "long_prompt_tokens": 1234,
    "long_output_tokens": 99,
    "dense_for_tools": False,
    "dense_for_structured_output": False,
    "max_ongoing_per_replica": 7,
    "max_queued_per_replica": 0,
    "max_kv_usage": 0.5,
    "retry_after_s": 9,
}


@pytest.mark.parametrize(("name", "value"), CHANGED.items())
def test_each_threshold_is_the_setting_of_its_name(name, value):
    assert getattr(build_policy(Settings(routing={name: value})).thresholds, name) == value


def test_every_threshold_is_a_setting():
    names = {f.name for f in dataclasses.fields(Thresholds)}
    assert names <= set(RoutingSettings.model_fields)
    derived = {"interactive_pool", "quality_pool", "max_queue_wait_s", "quality_tiers"}
    assert names - derived == set(CHANGED)  # each one is checked above


def test_quality_tiers_come_from_the_setting():
    policy = build_policy(Settings(routing={"quality_tiers": ["gold", "silver"]}))
    assert policy.thresholds.quality_tiers == frozenset({"gold", "silver"})


def test_the_steps_are_the_setting():
    policy = build_policy(Settings(routing={"steps": ["capability"]}))
    assert policy.steps == ("capability",)
