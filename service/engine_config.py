"""Pool settings turned into what Ray Serve LLM and vLLM receive: the `LLMConfig` of each pool.

The engine arguments derived here are exactly what vLLM receives; `gemma-serve check-config`
prints them. The model facts they start from are in `service/catalog.py`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.autoscaling.decision import ScalingParams
from service.catalog import (
    Modality,
    checkpoint_modalities,
    checkpoint_source,
    is_tiny,
    max_model_len,
    modalities,
)
from service.settings import MediaSettings, PoolSettings, TelemetrySettings

if TYPE_CHECKING:
    from ray.serve.llm import LLMConfig


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

    params = scaling_params(pool)
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


def scaling_params(pool: PoolSettings) -> dict[str, Any]:
    """`ScalingParams`' fields, each from the pool setting of the same name (the replica
    bounds and request target from the pool, the rest from its `autoscaling`)."""
    from_pool = {
        "min_replicas": pool.replicas.min,
        "max_replicas": pool.replicas.max,
        "target_ongoing_requests": pool.target_ongoing_requests,
        "ttft_slo_s": pool.autoscaling.ttft_p95_slo_s,
    }
    return {
        f.name: from_pool[f.name] if f.name in from_pool else getattr(pool.autoscaling, f.name)
        for f in fields(ScalingParams)
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
