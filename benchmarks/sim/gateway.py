"""The gateway as the routing simulation runs it: the production routing policy and load
tracker, fed from the simulated engines as `service/gateway/deployment.py` feeds them.

Everything this package takes from `service.routing` besides the features is imported here:
the policy's public API (`build_policy`, `RoutingPolicy.route`, `.thresholds`), the errors
`route` raises, the production `LoadTracker`, and `is_saturated` (for the report only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from benchmarks.sim.fleet_model import Replica
from service.routing.features import RequestFeatures
from service.routing.load import EngineSample, LoadTracker
from service.routing.policy import RoutingPolicy
from service.routing.setup import build_policy
from service.routing.steps.capability import NoCapablePool
from service.routing.steps.spill_over import AllSaturated
from service.saturation import PoolLoad, is_saturated
from service.settings import Settings

__all__ = ["Gateway", "PoolLoad", "Routed", "RoutingPolicy", "build_policy", "route"]


@dataclass(frozen=True)
class Routed:
    """The policy's answer: a pool and why, or a refusal (400 rejected, 503 shed)."""

    pool_id: str | None
    reason: str
    refused: Literal["rejected", "shed"] | None = None


def route(
    policy: RoutingPolicy, features: RequestFeatures, loads: Mapping[str, PoolLoad]
) -> Routed:
    try:
        decision = policy.route(features, loads)
    except NoCapablePool as exc:
        return Routed(None, type(exc).__name__, "rejected")
    except AllSaturated:
        return Routed(None, "503 all saturated", "shed")
    return Routed(decision.pool_id, decision.reason)


class Gateway:
    """One gateway replica's view of the pools: the in-flight counts of what it sent, the
    replica counts, and the engines' figures read every stats interval."""

    def __init__(
        self,
        settings: Settings,
        engines_by_pool: Mapping[str, Sequence[Replica]],
        clock: Callable[[], float],
    ):
        self._engines = engines_by_pool
        # As build_load_tracker builds it (no router queue), on the simulation's clock.
        self.tracker = LoadTracker(
            list(engines_by_pool), settings.routing.stats_max_age_s, clock=clock
        )
        self.tracker.set_replicas({p: len(e) for p, e in engines_by_pool.items()})

    def read_engines(self, now: float) -> None:
        """What the replica directory gives the gateway: per pool, the replicas' mean waiting
        count (the tracker scales it by the replica count) and the highest KV usage, as vLLM's
        scheduler reports them."""
        for pool_id, engines in self._engines.items():
            waiting = sum(e.backlog for e in engines) / len(engines)
            kv = max(e.kv_in_use for e in engines)
            self.tracker.set_engine(pool_id, EngineSample(round(waiting), kv, now))

    def loads(self) -> dict[str, PoolLoad]:
        return self.tracker.snapshot()

    def sent(self, pool_id: str) -> Callable[[], None]:
        """Count a request sent to the pool; call the result when it finishes."""
        return self.tracker.started(pool_id)

    def saturated(self, policy: RoutingPolicy) -> dict[str, bool]:
        return {p: is_saturated(load, policy.thresholds) for p, load in self.loads().items()}
