"""Pool settings turned into the engine arguments and Serve options each pool gets."""

from pathlib import Path

import pytest

from service import engine_config
from service.autoscaling.decision import ScalingParams
from service.settings import MediaSettings, PoolSettings, TelemetrySettings, load_settings

CONFIGS = Path(__file__).parents[2] / "configs"
CACHE = Path("/cache")


def pools(name: str) -> dict[str, PoolSettings]:
    return {p.id: p for p in load_settings(CONFIGS / name).pools}


def test_31b_fp8_on_one_h100_uses_the_fp8_checkpoint_and_fp8_kv():
    pool = pools("h100-fp8.yaml")["gemma-4-31b-it"]
    kwargs = engine_config.llm_config_kwargs(pool, CACHE)
    engine = kwargs["engine_kwargs"]
    assert kwargs["model_loading_config"]["model_source"] == "RedHatAI/gemma-4-31B-it-FP8-dynamic"
    assert engine["tensor_parallel_size"] == 1
    assert engine["kv_cache_dtype"] == "fp8"
    assert "quantization" not in engine  # the checkpoint carries its own scheme
    assert kwargs["accelerator_type"] == "H100"


def test_31b_bf16_uses_two_gpus_per_replica():
    pool = pools("h100-bf16.yaml")["gemma-4-31b-it"]
    kwargs = engine_config.llm_config_kwargs(pool, CACHE)
    assert kwargs["model_loading_config"]["model_source"] == "google/gemma-4-31B-it"
    assert kwargs["engine_kwargs"]["tensor_parallel_size"] == 2
    assert "kv_cache_dtype" not in kwargs["engine_kwargs"]


def test_gpu_pools_get_gemma4_parsers_prefix_caching_and_context_cap():
    engine = engine_config.engine_kwargs(pools("h100-fp8.yaml")["gemma-4-26b-a4b-it"])
    assert engine["tool_call_parser"] == "gemma4_forced"
    assert engine["reasoning_parser"] == "gemma4"
    assert engine["enable_auto_tool_choice"] is True
    assert engine["enable_prefix_caching"] is True
    assert engine["max_model_len"] == 131072


def test_multimodal_limits_follow_the_pool_modalities():
    pool = PoolSettings(id="gemma-4-31b-it", modalities=["text", "image"], max_items_per_prompt=2)
    assert engine_config.engine_kwargs(pool)["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    e4b = PoolSettings(id="gemma-4-e4b-it")
    assert engine_config.engine_kwargs(e4b)["limit_mm_per_prompt"] == {
        "image": 4,
        "video": 4,
        "audio": 4,
    }


def test_text_only_gpu_pool_skips_the_encoders():
    pool = PoolSettings(id="gemma-4-31b-it", modalities=["text"])
    assert engine_config.engine_kwargs(pool)["language_model_only"] is True


def test_embedded_pools_are_tiny_cpu_engines():
    for pool in load_settings().pools:
        kwargs = engine_config.llm_config_kwargs(pool, CACHE)
        assert kwargs["placement_group_config"] == {"bundles": [{"CPU": 1}]}
        assert "accelerator_type" not in kwargs
        assert kwargs["model_loading_config"]["model_source"].startswith(str(CACHE))
        assert kwargs["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert "tensor_parallel_size" not in kwargs["engine_kwargs"]


def test_a_tiny_multimodal_cpu_pool_gets_media_limits_and_text_only_ones_none():
    embedded = {pool.id: engine_config.engine_kwargs(pool) for pool in load_settings().pools}
    assert embedded["gemma-4-e4b-it"]["limit_mm_per_prompt"] == {"image": 4, "video": 4, "audio": 4}
    assert "limit_mm_per_prompt" not in embedded["gemma-4-31b-it"]


def test_a_tiny_multimodal_pool_narrowed_to_images_refuses_audio_in_the_engine():
    pool = PoolSettings(
        id="gemma-4-e4b-it",
        checkpoint="tiny:multimodal",
        device="cpu",
        modalities=["text", "image"],
    )
    assert engine_config.engine_kwargs(pool)["limit_mm_per_prompt"] == {
        "image": 4,
        "video": 0,
        "audio": 0,
    }


def test_request_targets_are_set_so_autoscaling_works():
    config = engine_config.deployment_config(
        PoolSettings(id="gemma-4-31b-it", replicas={"min": 1, "max": 3})
    )
    assert config["max_ongoing_requests"] == 64
    autoscaling = config["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 3)
    assert autoscaling["target_ongoing_requests"] == 32


def test_a_replica_removed_by_scale_down_finishes_its_requests_first():
    config = engine_config.deployment_config(PoolSettings(id="gemma-4-31b-it", drain_timeout_s=900))
    assert config["graceful_shutdown_timeout_s"] == 900


def test_pools_scale_with_our_policy_whose_delays_replace_serves():
    config = engine_config.autoscaling_config(
        PoolSettings(id="gemma-4-31b-it", autoscaling={"upscale_delay_s": 7}), None
    )
    policy = config["policy"]
    assert policy["policy_function"] == engine_config.SLO_POLICY
    assert policy["policy_kwargs"]["params"]["upscale_delay_s"] == 7
    assert config["upscale_delay_s"] == config["downscale_delay_s"] == 0
    assert "prometheus_url" not in policy["policy_kwargs"]


def test_the_policy_reads_ttft_from_prometheus_when_one_is_configured():
    config = engine_config.autoscaling_config(PoolSettings(id="gemma-4-31b-it"), "http://prom:9090")
    kwargs = config["policy"]["policy_kwargs"]
    assert kwargs["prometheus_url"] == "http://prom:9090"
    assert 'pool="gemma-4-31b-it"' in kwargs["ttft_query"]


def test_the_requests_policy_is_serves_default_with_our_delays():
    pool = PoolSettings(id="gemma-4-31b-it", autoscaling={"policy": "requests"})
    config = engine_config.autoscaling_config(pool, None)
    assert "policy" not in config
    assert config["downscale_delay_s"] == 300


def test_engine_spans_go_to_the_configured_collector_over_http():
    telemetry = TelemetrySettings(tracing={"otlp_endpoint": "http://otel:4318/v1/traces"})
    pool = PoolSettings(id="gemma-4-31b-it")
    assert engine_config.engine_kwargs(pool, telemetry)["otlp_traces_endpoint"].startswith(
        "http://otel"
    )
    env = engine_config.runtime_env(pool, telemetry)["env_vars"]
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert "otlp_traces_endpoint" not in engine_config.engine_kwargs(pool, TelemetrySettings())


def test_engine_kwargs_override_derived_args_last():
    pool = PoolSettings(id="gemma-4-31b-it", engine_kwargs={"max_model_len": 1024, "seed": 7})
    engine = engine_config.engine_kwargs(pool)
    assert engine["max_model_len"] == 1024
    assert engine["seed"] == 7


@pytest.mark.parametrize("name", ["h100-fp8.yaml", "h100-bf16.yaml", "embedded.yaml"])
def test_every_shipped_profile_builds_valid_llm_configs(name):
    for pool in load_settings(CONFIGS / name).pools:
        config = engine_config.llm_config(pool, CACHE)
        assert config.model_id == pool.id


def test_gpu_pools_route_by_prefix_with_a_load_guard():
    config = engine_config.deployment_config(PoolSettings(id="gemma-4-31b-it"))
    router = config["request_router_config"]
    assert router["request_router_class"].endswith("PrefixCacheAffinityRouter")
    assert router["request_router_kwargs"]["imbalanced_threshold"] == 8


def test_prefix_affinity_is_off_for_cpu_pools_unless_asked():
    cpu = dict(id="gemma-4-31b-it", checkpoint="tiny:dense", device="cpu")
    assert "request_router_config" not in engine_config.deployment_config(PoolSettings(**cpu))
    on = engine_config.deployment_config(PoolSettings(**cpu, prefix_affinity=True))
    assert "request_router_config" in on


def test_a_tensor_parallel_replica_is_kept_on_one_node():
    pool = PoolSettings(id="gemma-4-31b-it", tensor_parallel_size=2)
    placement = engine_config.llm_config_kwargs(pool, CACHE)["placement_group_config"]
    assert placement["strategy"] == "STRICT_PACK"
    assert engine_config.llm_config(pool, CACHE).placement_group_config["strategy"] == "STRICT_PACK"


def test_a_cpu_pools_core_binding_reaches_vllm_and_its_workers_can_be_probed():
    pool = PoolSettings(
        id="gemma-4-31b-it", checkpoint="tiny:dense", device="cpu", cpu_threads_bind="1"
    )
    assert engine_config.runtime_env(pool)["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert engine_config.engine_kwargs(pool)["worker_extension_cls"] == (
        "service.engine_probe.CpuEngineProbe"
    )


def test_an_unbound_cpu_pool_leaves_the_binding_to_vllm():
    pool = PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense", device="cpu")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_config.runtime_env(pool)["env_vars"]


def test_engines_fetch_media_only_from_the_allowed_domains_and_never_follow_redirects():
    pool = PoolSettings(id="gemma-4-31b-it")
    media = MediaSettings(allow_remote_urls=True, allowed_remote_domains=["img.example.com"])
    assert engine_config.engine_kwargs(pool, media=media)["allowed_media_domains"] == [
        "img.example.com"
    ]
    assert engine_config.runtime_env(pool)["env_vars"]["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


def test_every_scaling_parameter_comes_from_the_pool_setting_of_its_name():
    pool = PoolSettings(
        id="gemma-4-31b-it",
        replicas={"min": 2, "max": 5},
        target_ongoing_requests=7,
        autoscaling={"kv_cache_high": 0.8, "downscale_delay_s": 60, "ttft_p95_slo_s": 1.5},
    )
    params = ScalingParams(**engine_config.scaling_params(pool))
    assert (params.min_replicas, params.max_replicas, params.target_ongoing_requests) == (2, 5, 7)
    assert (params.kv_cache_high, params.downscale_delay_s, params.ttft_slo_s) == (0.8, 60, 1.5)


def test_autoscaling_settings_default_to_the_policys_own_defaults():
    defaults = ScalingParams(**engine_config.scaling_params(PoolSettings(id="gemma-4-31b-it")))
    assert defaults == ScalingParams(
        min_replicas=1, max_replicas=1, target_ongoing_requests=32, ttft_slo_s=2.0
    )
