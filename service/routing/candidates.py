"""What the routing steps pass along: the pools to choose from, in order of preference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.catalog import Modality


@dataclass(frozen=True)
class PoolInfo:
    id: str
    architecture: Literal["dense", "moe"]
    modalities: frozenset[Modality]
    max_model_len: int


@dataclass(frozen=True)
class Candidates:
    """What flows between steps: pools in order of preference and why the first leads."""

    pools: tuple[PoolInfo, ...]
    reason: str
