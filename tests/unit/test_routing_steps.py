"""Each routing step alone, on its own parameters; and the registry that names them."""

import dataclasses
import typing

import pytest

from service.catalog import Modality
from service.routing.candidates import Candidates, PoolInfo
from service.routing.features import RequestFeatures
from service.routing.policy import RoutingPolicy, Thresholds
from service.routing.steps import (
    REGISTRY,
    STEP_NAMES,
    UnknownStep,
    capability,
    resolve,
    size_shape,
    spill_over,
)
from service.routing.steps.capability import CapabilityParams, NoCapablePool
from service.routing.steps.size_shape import SizeShapeParams
from service.routing.steps.spill_over import AllSaturated, NoHealthyPool, SpillOverParams
from service.saturation import PoolLoad
from service.settings import RoutingSettings

TEXT = frozenset({Modality.TEXT})
VISUAL = frozenset({Modality.TEXT, Modality.IMAGE, Modality.VIDEO})
AUDIO = VISUAL | {Modality.AUDIO}

MOE = PoolInfo("moe", "moe", VISUAL, 262144)
DENSE = PoolInfo("dense", "dense", VISUAL, 262144)
SMALL = PoolInfo("e4b", "dense", AUDIO, 131072)
BOTH = Candidates((MOE, DENSE), "default")
IDLE: dict[str, PoolLoad] = {}
NONE = CapabilityParams()
SHAPE = SizeShapeParams(interactive_pool="moe", quality_pool="dense", long_prompt_tokens=8192)
SPILL = SpillOverParams(max_ongoing_per_replica=4)


def request(prompt=200, out=100, modalities=TEXT, **shape) -> RequestFeatures:
    return RequestFeatures(
        modalities=frozenset(modalities), prompt_tokens=prompt, max_tokens=out, **shape
    )


def busy(ongoing=4, replicas=1, **extra) -> PoolLoad:
    return PoolLoad(replicas=replicas, ongoing=ongoing, **extra)


# the registry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "function", "params"),
    [
        (capability, capability.capability, CapabilityParams),
        (size_shape, size_shape.size_shape, SizeShapeParams),
        (spill_over, spill_over.spill_over, SpillOverParams),
    ],
)
def test_each_step_is_registered_under_its_name_with_its_parameters(module, function, params):
    step = REGISTRY[module.NAME]
    assert (step.name, step.run, step.params) == (module.NAME, function, params)


def test_the_registry_knows_the_step_names_the_settings_accept():
    (accepted,) = typing.get_args(RoutingSettings.model_fields["steps"].annotation)
    assert set(typing.get_args(accepted)) == set(REGISTRY) == set(STEP_NAMES)
    assert RoutingSettings().steps == list(STEP_NAMES)


def test_an_unknown_step_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownStep, match="'coin_flip'; known: capability, size_shape, spill_over"):
        resolve(["capability", "coin_flip"])


def test_a_policy_with_an_unknown_step_is_refused_when_built():
    with pytest.raises(UnknownStep, match="coin_flip"):
        RoutingPolicy(pools=(MOE,), steps=("coin_flip",))  # type: ignore[arg-type]


def test_steps_resolve_in_the_order_named():
    assert [s.name for s in resolve(["spill_over", "capability"])] == ["spill_over", "capability"]


def test_the_policy_thresholds_hold_every_registered_steps_parameters():
    assert all(issubclass(Thresholds, step.params) for step in REGISTRY.values())


def test_each_parameter_is_a_routing_setting_of_the_same_name():
    names = {f.name for step in REGISTRY.values() for f in dataclasses.fields(step.params)}
    assert names <= set(RoutingSettings.model_fields)


# capability ---------------------------------------------------------------------------


def test_capability_keeps_every_pool_for_plain_text():
    assert capability.capability(request(), BOTH, IDLE, NONE) == BOTH


def test_capability_sends_audio_only_where_audio_is_accepted():
    out = capability.capability(
        request(modalities={Modality.TEXT, Modality.AUDIO}),
        Candidates((MOE, DENSE, SMALL), "default"),
        IDLE,
        NONE,
    )
    assert out == Candidates((SMALL,), "modality:audio")


def test_capability_refuses_audio_when_no_pool_takes_it():
    with pytest.raises(NoCapablePool) as err:
        capability.capability(request(modalities={Modality.TEXT, Modality.AUDIO}), BOTH, IDLE, NONE)
    assert err.value.status == 400
    assert "no deployed model accepts audio input" in err.value.message


def test_capability_drops_pools_whose_context_is_too_small():
    out = capability.capability(
        request(prompt=140_000), Candidates((SMALL, DENSE), "default"), IDLE, NONE
    )
    assert out == Candidates((DENSE,), "context:long-request")


def test_capability_fails_open_to_the_largest_context_when_nothing_fits_by_estimate():
    out = capability.capability(
        request(prompt=300_000), Candidates((SMALL, DENSE), "default"), IDLE, NONE
    )
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
    out = size_shape.size_shape(features, BOTH, IDLE, SHAPE)
    assert (out.pools[0].id, out.reason) == (pool, reason)
    assert len(out.pools) == 2  # the other pool stays as a fallback


def test_long_prompts_stay_on_the_interactive_pool_by_default():
    params = SizeShapeParams(interactive_pool="moe", quality_pool="dense")
    out = size_shape.size_shape(request(prompt=100_000), BOTH, IDLE, params)
    assert (out.pools[0].id, out.reason) == ("moe", "shape:interactive")


def test_size_shape_keeps_tools_on_moe_when_configured():
    params = dataclasses.replace(SHAPE, dense_for_tools=False)
    assert size_shape.size_shape(request(uses_tools=True), BOTH, IDLE, params).pools[0].id == "moe"


def test_size_shape_leaves_a_single_candidate_alone():
    single = Candidates((DENSE,), "modality:image")
    assert size_shape.size_shape(request(), single, IDLE, SHAPE) == single


def test_quality_tiers_given_as_a_list_are_held_frozen():
    assert SizeShapeParams(quality_tiers=["gold"]).quality_tiers == frozenset({"gold"})


# spill_over ---------------------------------------------------------------------------


def test_spill_over_keeps_the_preferred_pool_when_it_has_room():
    assert spill_over.spill_over(request(), BOTH, {"moe": busy(ongoing=3)}, SPILL) == BOTH


def test_spill_over_moves_to_the_next_pool_when_the_preferred_is_saturated():
    out = spill_over.spill_over(request(), BOTH, {"moe": busy(ongoing=4)}, SPILL)
    assert (out.pools[0].id, out.reason) == ("dense", "spill:saturated")


def test_spill_over_refuses_with_503_when_every_pool_is_saturated():
    with pytest.raises(AllSaturated) as err:
        spill_over.spill_over(request(), BOTH, {"moe": busy(), "dense": busy()}, SPILL)
    assert err.value.status == 503
    assert err.value.headers() == {"Retry-After": "2"}


def test_spill_over_moves_off_a_pool_with_no_replica_up():
    down = PoolLoad(replicas=0, ongoing=0, healthy=False)
    out = spill_over.spill_over(request(), BOTH, {"moe": down}, SPILL)
    assert (out.pools[0].id, out.reason) == ("dense", "spill:unhealthy")


def test_spill_over_refuses_with_503_naming_the_pools_when_none_has_a_replica_up():
    down = PoolLoad(replicas=0, ongoing=0, healthy=False)
    with pytest.raises(NoHealthyPool, match="moe, dense") as err:
        spill_over.spill_over(request(), BOTH, {"moe": down, "dense": down}, SPILL)
    assert (err.value.status, err.value.shed_reason) == (503, "unhealthy")
