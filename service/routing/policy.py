"""The routing policy: named steps, each a small function testable alone.

1. `capability`: keep pools that accept every modality of the request and whose context holds
   prompt + max_tokens (by estimate; the pool's exact count has the last word).
2. `size_shape`: order the eligible pools by preference: a quality tier, long outputs, tool
   use, structured output (and long prompts, when configured) prefer the dense pool; the rest
   the MoE pool.
3. `spill_over`: take the first preferred pool that is not saturated; when all are, refuse
   with 503 rather than queue without bound. Past its request counts a pool still takes work
   while what is ahead drains within `max_queue_wait_s` at the rate it has shown it drains.

A step that is left out of `routing.steps` passes its input through. Every decision carries
the reason of the step that decided it (`x-route-reason`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from service.catalog import Modality
from service.errors import InvalidRequest, ServiceUnavailable
from service.routing.features import RequestFeatures

StepName = Literal["capability", "size_shape", "spill_over"]
STEP_NAMES: tuple[StepName, ...] = ("capability", "size_shape", "spill_over")


@dataclass(frozen=True)
class PoolInfo:
    id: str
    architecture: Literal["dense", "moe"]
    modalities: frozenset[Modality]
    max_model_len: int


@dataclass(frozen=True)
class PoolLoad:
    """Live load of one pool."""

    replicas: int
    ongoing: int  # requests sent to the pool and not finished (running + queued)
    queued: int = 0  # waiting to start: in the engines' queues and at Serve's router
    kv_usage: float = 0.0
    drain_rate: float | None = None  # requests/s the pool has shown it finishes; None: unknown
    # False when no replica is running or announced and the pool may not sleep at zero: its
    # replicas died or have not started. Requests to the alias go elsewhere (spill_over).
    healthy: bool = True

    @property
    def predicted_wait_s(self) -> float | None:
        """How long a new request waits to start: with continuous batching a request starts
        when one ahead of it in the queue has, and those start as running ones finish."""
        if self.drain_rate is None:
            return None
        return self.queued / self.drain_rate


@dataclass(frozen=True)
class Thresholds:
    interactive_pool: str = ""  # where short requests go (the MoE pool by default)
    quality_pool: str = ""  # where long, tool or structured requests go (the dense pool)
    # Unset by default: by the fleet cost model a long prefill costs ~3x more on the dense
    # pool, so sending long prompts there trades latency for quality (docs/routing.md).
    long_prompt_tokens: int | None = None
    long_output_tokens: int = 4096
    dense_for_tools: bool = True
    dense_for_structured_output: bool = True
    quality_tiers: frozenset[str] = frozenset({"quality"})
    max_ongoing_per_replica: int = 48
    max_queued_per_replica: int = 8
    max_queue_wait_s: float | None = 20.0  # None: the counts alone decide
    max_kv_usage: float = 0.95
    retry_after_s: int = 2


@dataclass(frozen=True)
class Decision:
    pool_id: str
    reason: str


class NoCapablePool(InvalidRequest):
    code = "no_capable_model"


class AllSaturated(ServiceUnavailable):
    shed_reason = "saturated"

    def __init__(self, message: str, *, pool_id: str, retry_after_s: int):
        super().__init__(message, retry_after_s=retry_after_s)
        self.pool_id = pool_id  # the preferred pool: where the shed request is counted


class NoHealthyPool(AllSaturated):
    shed_reason = "unhealthy"


@dataclass(frozen=True)
class Candidates:
    """What flows between steps: pools in order of preference and why the first leads."""

    pools: tuple[PoolInfo, ...]
    reason: str


Step = Callable[[RequestFeatures, Candidates, Mapping[str, PoolLoad], Thresholds], Candidates]


def capability(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    thresholds: Thresholds,
) -> Candidates:
    missing = sorted(
        m for m in features.modalities if not any(m in p.modalities for p in candidates.pools)
    )
    if missing:
        kinds = " and ".join(str(m) for m in missing)
        raise NoCapablePool(
            f"no deployed model accepts {kinds} input; deployed: "
            + ", ".join(f"{p.id} ({'+'.join(sorted(p.modalities))})" for p in candidates.pools),
            param="messages",
        )
    modal = [p for p in candidates.pools if features.modalities <= p.modalities]
    fitting = [p for p in modal if features.total_tokens <= p.max_model_len]
    if not fitting:
        # The prompt size is an estimate: send the request where it has the most room and
        # let that pool's exact count answer 400 with the real numbers if it does not fit.
        largest = max(p.max_model_len for p in modal)
        widest = tuple(p for p in modal if p.max_model_len == largest)
        return Candidates(widest, "context:largest")
    media = sorted(features.modalities - {Modality.TEXT})
    if len(fitting) == len(candidates.pools):
        return Candidates(tuple(fitting), candidates.reason)
    if media and len(modal) < len(candidates.pools):
        return Candidates(tuple(fitting), f"modality:{media[0]}")
    return Candidates(tuple(fitting), "context:long-request")


def size_shape(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    thresholds: Thresholds,
) -> Candidates:
    if len(candidates.pools) < 2:
        return candidates
    wants_quality, reason = _shape(features, thresholds)
    preferred = thresholds.quality_pool if wants_quality else thresholds.interactive_pool
    ordered = sorted(candidates.pools, key=lambda p: p.id != preferred)
    if ordered[0].id != preferred:
        return candidates
    return Candidates(tuple(ordered), reason)


def _shape(features: RequestFeatures, t: Thresholds) -> tuple[bool, str]:
    if features.tier in t.quality_tiers:
        return True, f"tier:{features.tier}"
    if t.long_prompt_tokens is not None and features.prompt_tokens >= t.long_prompt_tokens:
        return True, "size:long-prompt"
    if features.max_tokens >= t.long_output_tokens:
        return True, "size:long-output"
    if features.uses_tools and t.dense_for_tools:
        return True, "shape:tools"
    if features.structured_output and t.dense_for_structured_output:
        return True, "shape:structured-output"
    return False, "shape:interactive"


def spill_over(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    thresholds: Thresholds,
) -> Candidates:
    """The first candidate with a healthy replica and room; the order of the rest is kept."""
    unhealthy = [p.id for p in candidates.pools if not _healthy(loads.get(p.id))]
    for index, pool in enumerate(candidates.pools):
        if pool.id not in unhealthy and not is_saturated(loads.get(pool.id), thresholds):
            if index == 0:
                return candidates
            rest = candidates.pools[:index] + candidates.pools[index + 1 :]
            why = "unhealthy" if candidates.pools[0].id in unhealthy else "saturated"
            return Candidates((pool, *rest), f"spill:{why}")
    if len(unhealthy) == len(candidates.pools):
        raise NoHealthyPool(
            "no model that can serve this request has a replica up ("
            + ", ".join(unhealthy)
            + "); retry shortly",
            pool_id=candidates.pools[0].id,
            retry_after_s=thresholds.retry_after_s,
        )
    raise AllSaturated(
        "every model that can serve this request is at capacity or down ("
        + ", ".join(p.id for p in candidates.pools)
        + "); retry shortly",
        pool_id=candidates.pools[0].id,
        retry_after_s=thresholds.retry_after_s,
    )


def _healthy(load: PoolLoad | None) -> bool:
    return load is None or load.healthy


def is_saturated(load: PoolLoad | None, t: Thresholds) -> bool:
    """A missing load, or engine figures gone stale (dropped by the tracker), never saturates
    a pool: routing fails open on what it cannot see. The in-flight counts are exact, though,
    and a replica count the controller has not refreshed lately is still the best one known:
    they decide even then (a gateway whose controller reads lag under a burst of 1,000 streams
    had stopped shedding exactly when it mattered).

    The request counts are where shedding may begin, not where it must: a pool past them
    still takes a request whose predicted wait is within `max_queue_wait_s`. A burst a pool
    drains in seconds is queued, not refused; one it would take minutes over is refused at
    once, with Retry-After, rather than timing out later."""
    if load is None:
        return False
    if load.replicas == 0:
        return False  # scaled to zero: the request wakes it up
    if load.kv_usage >= t.max_kv_usage:
        return True
    past_counts = (
        load.ongoing >= t.max_ongoing_per_replica * load.replicas
        # Strict: a queue bound of 0 (or one scaled down to 0) means "no queue", not "full".
        or load.queued > t.max_queued_per_replica * load.replicas
    )
    if not past_counts:
        return False
    wait = load.predicted_wait_s
    return t.max_queue_wait_s is None or wait is None or wait > t.max_queue_wait_s


STEPS: dict[StepName, Step] = {
    "capability": capability,
    "size_shape": size_shape,
    "spill_over": spill_over,
}


@dataclass(frozen=True)
class RoutingPolicy:
    pools: tuple[PoolInfo, ...]
    steps: tuple[StepName, ...] = STEP_NAMES
    thresholds: Thresholds = Thresholds()

    def route(self, features: RequestFeatures, loads: Mapping[str, PoolLoad]) -> Decision:
        """Choose among all pools (the request named an alias)."""
        candidates = Candidates(self.pools, "default")
        for name in self.steps:
            candidates = STEPS[name](features, candidates, loads, self.thresholds)
        return Decision(candidates.pools[0].id, candidates.reason)

    def pin(self, pool_id: str, features: RequestFeatures) -> Decision:
        """A concrete model id: that pool or an error, never another pool."""
        pool = next(p for p in self.pools if p.id == pool_id)
        missing = sorted(features.modalities - pool.modalities)
        if missing:
            raise NoCapablePool(
                f"the model '{pool_id}' does not accept {' and '.join(missing)} input "
                f"(it takes {', '.join(sorted(pool.modalities))})",
                param="messages",
            )
        return Decision(pool_id, "pinned")
