"""Typed settings of one pool: its model, engines, replicas and autoscaling.

`service/settings.py` holds them in `Settings.pools`; `embedded_pools` is the embedded default.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service import catalog
from service.autoscaling.decision import ScalingParams
from service.catalog import Modality


class Device(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ReplicaSettings(Strict):
    min: int = Field(1, ge=0)
    max: int = Field(1, ge=1)
    initial: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaSettings:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie in [min, max]")
        return self


class AutoscalingSettings(Strict):
    policy: Literal["slo", "requests"] = Field(
        "slo", description="slo: ours (docs/autoscaling.md); requests: Ray Serve's default"
    )
    ttft_p95_slo_s: float | None = Field(
        2.0, gt=0, description="scale up while TTFT p95 exceeds it (needs a Prometheus)"
    )
    ttft_window_s: int = Field(120, ge=10, description="rate window of the TTFT p95 query")
    max_waiting_per_replica: float = Field(
        ScalingParams.max_waiting_per_replica, ge=0, description="engine queue that adds room"
    )
    kv_cache_high: float = Field(
        ScalingParams.kv_cache_high, gt=0, le=1, description="scale up above this usage"
    )
    kv_cache_low: float = Field(
        ScalingParams.kv_cache_low, gt=0, le=1, description="scale down only below this"
    )
    downscale_headroom: float = Field(
        ScalingParams.downscale_headroom,
        gt=0,
        le=1,
        description="a smaller fleet must carry the load at this share of target",
    )
    upscale_delay_s: float = Field(ScalingParams.upscale_delay_s, ge=0)
    downscale_delay_s: float = Field(ScalingParams.downscale_delay_s, ge=0)
    downscale_to_zero_delay_s: float = Field(
        ScalingParams.downscale_to_zero_delay_s, ge=0, description="with replicas.min 0"
    )
    look_back_period_s: float = Field(15.0, gt=0, description="window Serve averages load over")
    metrics_interval_s: float = Field(2.0, gt=0, description="how often replicas report load")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.kv_cache_low > self.kv_cache_high:
            raise ValueError(
                f"kv_cache_low ({self.kv_cache_low}) must not exceed "
                f"kv_cache_high ({self.kv_cache_high})"
            )
        return self


Weights = Literal["bf16", "fp8", "fp8-online"]


class PoolSettings(Strict):
    id: str = Field(..., min_length=1, description="served model id")
    model: str | None = Field(None, description="catalog entry; defaults to id")
    checkpoint: str | None = Field(
        None,
        description="HF repo id, local path, or tiny:dense / tiny:moe / tiny:multimodal; "
        "default from catalog",
    )
    device: Device = Device.GPU
    weights: Weights = "bf16"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, gt=0, description="defaults to the model's context")
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    max_num_seqs: int | None = Field(None, ge=1)
    enable_prefix_caching: bool = True
    modalities: list[Modality] | None = Field(None, description="defaults to all the model takes")
    max_items_per_prompt: int = Field(4, ge=0, description="images, videos or audio clips each")
    accelerator_type: str = "H100"
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV space of a CPU engine")
    cpu_threads_bind: str | None = Field(
        None,
        pattern=r"^(auto|nobind|\d+(-\d+)?(,\d+(-\d+)?)*)$",
        description="cores of a CPU engine's threads (vLLM's VLLM_CPU_OMP_THREADS_BIND: "
        "'auto', 'nobind' or a list like '0-3'); unset: `gemma-serve up` gives each CPU pool "
        "its own cores, a cluster leaves it to vLLM",
    )
    replicas: ReplicaSettings = Field(default_factory=ReplicaSettings)
    max_ongoing_requests: int = Field(64, ge=1)
    target_ongoing_requests: int = Field(32, ge=1)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    drain_timeout_s: float = Field(
        600.0, gt=0, description="a replica being removed finishes its requests for this long"
    )
    prefix_affinity: bool | None = Field(
        None, description="replica choice by prompt prefix, for KV-cache reuse; on for GPU pools"
    )
    prefix_affinity_max_imbalance: int = Field(
        8, ge=1, description="queue-length spread above which affinity yields to load"
    )
    stream_batching_interval_ms: float = Field(
        50.0, ge=0, description="after the first chunk, tokens are sent in batches this often"
    )
    max_grammar_compile_s: float | None = Field(
        10.0,
        gt=0,
        description="structured-output grammars compile out of the engine, refused (400) past "
        "this; null: the engine compiles them itself, unbounded, as vLLM does",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to vLLM last, overriding derived args"
    )

    @property
    def catalog_id(self) -> str:
        return self.model or self.id

    @model_validator(mode="after")
    def _fits_model(self) -> PoolSettings:
        catalog.check_pool(self)
        return self


def embedded_pools() -> list[PoolSettings]:
    """The tiny stand-ins: MoE for the 26B-A4B pool, dense for the 31B pool (both text-only),
    and the multimodal one (images, audio, video) for the E4B pool."""
    common: dict[str, Any] = {
        "device": Device.CPU,
        "max_model_len": 2048,
        "max_ongoing_requests": 32,
        "target_ongoing_requests": 16,
    }
    return [
        PoolSettings(id="gemma-4-26b-a4b-it", checkpoint="tiny:moe", **common),
        PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense", **common),
        # Room for a video at the processor's budget (32 frames x 70 tokens).
        PoolSettings(
            id="gemma-4-e4b-it", checkpoint="tiny:multimodal", **common | {"max_model_len": 4096}
        ),
    ]
