"""The routing policy and the load tracker it reads, built once from settings."""

from __future__ import annotations

from service import catalog
from service.routing.load import LoadTracker
from service.routing.policy import PoolInfo, RoutingPolicy, Thresholds
from service.settings import Settings


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
    r = settings.routing
    thresholds = Thresholds(
        interactive_pool=r.interactive_pool or _first(pools, "moe"),
        quality_pool=r.quality_pool or _first(pools, "dense"),
        long_prompt_tokens=r.long_prompt_tokens,
        long_output_tokens=r.long_output_tokens,
        dense_for_tools=r.dense_for_tools,
        dense_for_structured_output=r.dense_for_structured_output,
        quality_tiers=frozenset(r.quality_tiers),
        max_ongoing_per_replica=r.max_ongoing_per_replica,
        max_queued_per_replica=r.max_queued_per_replica,
        # A wait the request's own deadline would cut short is no wait to queue for.
        max_queue_wait_s=(
            None
            if r.max_queue_wait_s is None
            else min(r.max_queue_wait_s, settings.server.request_timeout_s)
        ),
        max_kv_usage=r.max_kv_usage,
        retry_after_s=r.retry_after_s,
    )
    return RoutingPolicy(pools=pools, steps=tuple(r.steps), thresholds=thresholds)


def build_load_tracker(settings: Settings) -> LoadTracker:
    # No router queue: requests go to the replicas' own servers, and wait in their engines.
    return LoadTracker([p.id for p in settings.pools], settings.routing.stats_max_age_s)


def _first(pools: tuple[PoolInfo, ...], architecture: str) -> str:
    return next((p.id for p in pools if p.architecture == architecture), pools[0].id)
