"""The routing policy and the load tracker it reads, built once from settings."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from service import catalog
from service.routing.candidates import PoolInfo
from service.routing.load import LoadTracker
from service.routing.policy import RoutingPolicy, Thresholds
from service.settings import Settings

T = TypeVar("T")


def build_policy(settings: Settings) -> RoutingPolicy:
    pools = tuple(
        PoolInfo(
            id=p.id,
            architecture=catalog.facts(p).architecture,
            modalities=catalog.modalities(p),
            max_model_len=catalog.max_model_len(p),
        )
        for p in settings.pools
    )
    thresholds = from_settings(Thresholds, settings.routing, **derived_thresholds(settings, pools))
    return RoutingPolicy(pools=pools, steps=tuple(settings.routing.steps), thresholds=thresholds)


def build_load_tracker(settings: Settings) -> LoadTracker:
    # No router queue: requests go to the replicas' own servers, and wait in their engines.
    return LoadTracker([p.id for p in settings.pools], settings.routing.stats_max_age_s)


def from_settings(model: type[T], section: object, **derived: Any) -> T:
    """`model` (a dataclass) with each field read from the setting of the same name in
    `section`, except those in `derived`."""
    values = {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(model)  # type: ignore[arg-type]
        if f.init and f.name not in derived
    }
    return model(**values, **derived)


def derived_thresholds(settings: Settings, pools: tuple[PoolInfo, ...]) -> dict[str, Any]:
    """The thresholds that are not a setting as it stands."""
    r = settings.routing
    return {
        "interactive_pool": r.interactive_pool or _first(pools, "moe"),
        "quality_pool": r.quality_pool or _first(pools, "dense"),
        # A wait the request's own deadline would cut short is no wait to queue for.
        "max_queue_wait_s": (
            None
            if r.max_queue_wait_s is None
            else min(r.max_queue_wait_s, settings.server.request_timeout_s)
        ),
    }


def _first(pools: tuple[PoolInfo, ...], architecture: str) -> str:
    return next((p.id for p in pools if p.architecture == architecture), pools[0].id)
