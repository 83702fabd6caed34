"""`size_shape`: order the pools by preference. A quality tier, a long prompt (when
configured), a long output, tool use and structured output prefer the quality (dense) pool;
the rest the interactive (MoE) pool. The other pools stay behind it as fallbacks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.routing.candidates import Candidates
from service.routing.features import RequestFeatures
from service.saturation import PoolLoad

NAME: Final = "size_shape"


@dataclass(frozen=True)
class SizeShapeParams:
    """The fields are named as the `routing.*` settings that set them."""

    interactive_pool: str = ""  # where short requests go (the MoE pool by default)
    quality_pool: str = ""  # where long, tool or structured requests go (the dense pool)
    # Unset by default: by the fleet cost model a long prefill costs ~3x more on the dense
    # pool, so sending long prompts there trades latency for quality (docs/routing.md).
    long_prompt_tokens: int | None = None
    long_output_tokens: int = 4096
    dense_for_tools: bool = True
    dense_for_structured_output: bool = True
    quality_tiers: frozenset[str] = frozenset({"quality"})

    def __post_init__(self) -> None:
        # Settings hold a list; a frozen record holds a frozen set.
        object.__setattr__(self, "quality_tiers", frozenset(self.quality_tiers))


def size_shape(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    params: SizeShapeParams,
) -> Candidates:
    if len(candidates.pools) < 2:
        return candidates
    wants_quality, reason = _shape(features, params)
    preferred = params.quality_pool if wants_quality else params.interactive_pool
    ordered = sorted(candidates.pools, key=lambda p: p.id != preferred)
    if ordered[0].id != preferred:
        return candidates
    return Candidates(tuple(ordered), reason)


def _shape(features: RequestFeatures, p: SizeShapeParams) -> tuple[bool, str]:
    if features.tier in p.quality_tiers:
        return True, f"tier:{features.tier}"
    if p.long_prompt_tokens is not None and features.prompt_tokens >= p.long_prompt_tokens:
        return True, "size:long-prompt"
    if features.max_tokens >= p.long_output_tokens:
        return True, "size:long-output"
    if features.uses_tools and p.dense_for_tools:
        return True, "shape:tools"
    if features.structured_output and p.dense_for_structured_output:
        return True, "shape:structured-output"
    return False, "shape:interactive"
