"""`capability`: keep the pools that accept every modality of the request and whose context
holds prompt + max_tokens (by estimate; the pool's exact count has the last word)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.catalog import Modality
from service.errors import InvalidRequest
from service.routing.candidates import Candidates
from service.routing.features import RequestFeatures
from service.saturation import PoolLoad

NAME: Final = "capability"


@dataclass(frozen=True)
class CapabilityParams:
    """None: what each pool accepts and holds is a fact of its model, not a threshold."""


class NoCapablePool(InvalidRequest):
    code = "no_capable_model"


def capability(
    features: RequestFeatures,
    candidates: Candidates,
    loads: Mapping[str, PoolLoad],
    params: CapabilityParams,
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
