"""The routing steps, one module each, registered here under the names `routing.steps` takes.

A step is a function `(features, candidates, loads, params) -> candidates`: it narrows or
reorders the candidate pools, or refuses the request with a ServiceError. `params` is the
step's own parameter model: the thresholds it reads, each field named as the `routing.*`
setting that sets it. Adding a step: docs/routing.md, "Adding a routing step".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from service.routing.candidates import Candidates
from service.routing.features import RequestFeatures
from service.routing.steps import capability, size_shape, spill_over
from service.saturation import PoolLoad

# The same names as RoutingSettings.steps accepts (a test keeps the two equal).
StepName = Literal["capability", "size_shape", "spill_over"]
STEP_NAMES: tuple[StepName, ...] = get_args(StepName)

StepFunction = Callable[[RequestFeatures, Candidates, Mapping[str, PoolLoad], Any], Candidates]


@dataclass(frozen=True)
class RoutingStep:
    name: str
    run: StepFunction
    params: type  # the parameter model `run` reads; RoutingPolicy's thresholds extend it


class UnknownStep(ValueError):
    pass


REGISTRY: dict[str, RoutingStep] = {
    step.name: step
    for step in (
        RoutingStep(capability.NAME, capability.capability, capability.CapabilityParams),
        RoutingStep(size_shape.NAME, size_shape.size_shape, size_shape.SizeShapeParams),
        RoutingStep(spill_over.NAME, spill_over.spill_over, spill_over.SpillOverParams),
    )
}


def resolve(names: Iterable[str]) -> tuple[RoutingStep, ...]:
    """The registered steps of these names, in this order; an unknown name is refused."""
    names = tuple(names)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise UnknownStep(
            f"unknown routing step {', '.join(map(repr, unknown))}; known: {', '.join(REGISTRY)}"
        )
    return tuple(REGISTRY[name] for name in names)
