"""`spill_over`: take the first preferred pool that is healthy and not saturated; when every
one is saturated or down, refuse with 503 and Retry-After rather than queue without bound.
Past its request counts a pool still takes work while what is ahead drains within
`max_queue_wait_s` at the rate it has shown it drains (service/saturation.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.errors import ServiceUnavailable
from service.routing.candidates import Candidates
from service.routing.features import RequestFeatures
from service.saturation import PoolLoad, SaturationLimits, is_saturated

NAME: Final = "spill_over"


@dataclass(frozen=True)
class SpillOverParams(SaturationLimits):
    """Where a pool is saturated, and the Retry-After of a refusal."""

    retry_after_s: int = 2


class AllSaturated(ServiceUnavailable):
    shed_reason = "saturated"

    def __init__(self, message: str, *, pool_id: str, retry_after_s: int):
        super().__init__(message, retry_after_s=retry_after_s)
        self.pool_id = pool_id  # the preferred pool: where the shed request is counted


class NoHealthyPool(AllSaturated):
    shed_reason = "unhealthy"


def spill_over(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    params: SpillOverParams,
) -> Candidates:
    """The first candidate with a healthy replica and room; the order of the rest is kept."""
    unhealthy = [p.id for p in candidates.pools if not _healthy(loads.get(p.id))]
    for index, pool in enumerate(candidates.pools):
        if pool.id not in unhealthy and not is_saturated(loads.get(pool.id), params):
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
            retry_after_s=params.retry_after_s,
        )
    raise AllSaturated(
        "every model that can serve this request is at capacity or down ("
        + ", ".join(p.id for p in candidates.pools)
        + "); retry shortly",
        pool_id=candidates.pools[0].id,
        retry_after_s=params.retry_after_s,
    )


def _healthy(load: PoolLoad | None) -> bool:
    return load is None or load.healthy
