"""The routing policy: the steps named in `routing.steps`, run in order over every pool.

The steps live one per module in `service/routing/steps/` and are registered there by name;
a step that is left out of `routing.steps` passes its input through. `rank` returns every
pool still eligible, in order of preference; `route` takes the first. Every decision carries
the reason of the step that decided it (`x-route-reason`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.routing.candidates import Candidates, PoolInfo
from service.routing.features import RequestFeatures
from service.routing.steps import (
    STEP_NAMES,
    RoutingStep,
    StepName,
    resolve,
)
from service.routing.steps.capability import CapabilityParams, NoCapablePool
from service.routing.steps.size_shape import SizeShapeParams
from service.routing.steps.spill_over import (
    SpillOverParams,
)
from service.saturation import PoolLoad

__all__ = ["RouteDecision", "RoutingPolicy", "Thresholds"]


@dataclass(frozen=True)
class Thresholds(SpillOverParams, SizeShapeParams, CapabilityParams):
    """Every step's parameters in one flat record, as the `routing.*` settings are flat; each
    step reads its own part through its parameter model, which this extends (a test checks
    that it extends every registered step's). Built from settings in setup.py."""


@dataclass(frozen=True)
class RouteDecision:
    pool_id: str
    reason: str


@dataclass(frozen=True)
class RoutingPolicy:
    pools: tuple[PoolInfo, ...]
    steps: tuple[StepName, ...] = STEP_NAMES
    thresholds: Thresholds = Thresholds()
    _resolved: tuple[RoutingStep, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_resolved", resolve(self.steps))  # refuses an unknown name

    def rank(self, features: RequestFeatures, loads: Mapping[str, PoolLoad]) -> Candidates:
        """Every pool that may serve the request (it named an alias), the preferred first."""
        candidates = Candidates(self.pools, "default")
        for step in self._resolved:
            candidates = step.run(features, candidates, loads, self.thresholds)
        return candidates

    def route(self, features: RequestFeatures, loads: Mapping[str, PoolLoad]) -> RouteDecision:
        """Choose among all pools (the request named an alias): the first of `rank`."""
        ranked = self.rank(features, loads)
        return RouteDecision(ranked.pools[0].id, ranked.reason)

    def pin(self, pool_id: str, features: RequestFeatures) -> RouteDecision:
        """A concrete model id: that pool or an error, never another pool."""
        pool = next(p for p in self.pools if p.id == pool_id)
        missing = sorted(features.modalities - pool.modalities)
        if missing:
            raise NoCapablePool(
                f"the model '{pool_id}' does not accept {' and '.join(missing)} input "
                f"(it takes {', '.join(sorted(pool.modalities))})",
                param="messages",
            )
        return RouteDecision(pool_id, "pinned")
