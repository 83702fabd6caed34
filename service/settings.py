"""Typed settings: one YAML file plus GEMMA_SERVE_* environment overrides.

Parsed once at start (`load_settings`) and passed down as objects; nothing below this
module reads the environment. With no file, the defaults below are the embedded profile:
three tiny Gemma 4 checkpoints on CPU engines, bound to loopback.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.catalog import Modality
from service.errors import ConfigError
from service.pool_settings import PoolSettings, Strict, embedded_pools

CONFIG_ENV_VAR = "GEMMA_SERVE_CONFIG"
ENV_PREFIX = "GEMMA_SERVE_"


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="413 above this")
    request_timeout_s: float = Field(600.0, gt=0, description="hard deadline per request")
    aliases: list[str] = Field(default_factory=lambda: ["gemma-4", "auto"])
    gateway_replicas: int = Field(1, ge=1)
    gateway_max_ongoing_requests: int = Field(1000, ge=1)
    ingress: Literal["haproxy", "serve-proxy"] = Field(
        "haproxy", description="what takes client connections in front of the gateways"
    )


class BoundsSettings(Strict):
    """Per-request bounds (docs/api.md, "Request bounds"); each over-bound field is a 400."""

    max_n: int = Field(8, ge=1, description="choices per request (`n`)")
    max_messages: int = Field(1000, ge=1)
    max_content_parts: int = Field(64, ge=1, description="content parts per message")
    max_prompts: int = Field(64, ge=1, description="prompts in one completions request")
    max_stop: int = Field(16, ge=0, description="stop strings")
    max_stop_token_ids: int = Field(64, ge=0)
    max_bad_words: int = Field(64, ge=0)
    max_logit_bias: int = Field(300, ge=0, description="entries in logit_bias")
    max_tools: int = Field(128, ge=0)
    max_schema_bytes: int = Field(
        64 * 1024, gt=0, description="each JSON schema, regex or grammar, serialised"
    )
    max_schema_depth: int = Field(32, ge=1, description="nesting of each JSON schema")


class RaySettings(Strict):
    address: str | None = Field(None, description="existing cluster; unset starts local Ray")
    # Local Ray needs more logical CPUs than cores, or the gateway replica never schedules
    # beside the CPU engines (FACTS.md).
    num_cpus: int = Field(8, ge=1)


class MediaSettings(Strict):
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0, description="decoded, per image")
    max_audio_bytes: int = Field(25 * 1024 * 1024, gt=0, description="decoded, per clip")
    max_video_bytes: int = Field(50 * 1024 * 1024, gt=0, description="decoded, per video")
    max_items_per_request: int = Field(16, ge=0, description="media parts of all kinds")
    allow_remote_urls: bool = Field(False, description="http(s) media URLs; data: URLs always")
    allowed_remote_domains: list[str] = Field(
        default_factory=list,
        description="with allow_remote_urls: the only hosts media may come from (also vLLM's "
        "allowed_media_domains); empty: any host that resolves to public addresses only",
    )

    def max_bytes(self, kind: Modality) -> int:
        return {
            Modality.IMAGE: self.max_image_bytes,
            Modality.AUDIO: self.max_audio_bytes,
            Modality.VIDEO: self.max_video_bytes,
        }[kind]


class RoutingSettings(Strict):
    steps: list[Literal["capability", "size_shape", "spill_over"]] = Field(
        default_factory=lambda: ["capability", "size_shape", "spill_over"]
    )
    interactive_pool: str | None = Field(None, description="short requests; first MoE pool")
    quality_pool: str | None = Field(None, description="long/tool/JSON requests; first dense pool")
    long_prompt_tokens: int | None = Field(
        None, ge=1, description="prompts this long prefer the quality pool; unset: never"
    )
    long_output_tokens: int = Field(4096, ge=1)
    dense_for_tools: bool = True
    dense_for_structured_output: bool = True
    quality_tiers: list[str] = Field(default_factory=lambda: ["quality"])
    tier_header: str = Field("x-gemma-tier", description="request header naming a tier")
    max_ongoing_per_replica: int = Field(48, ge=1)
    max_queued_per_replica: int = Field(8, ge=0)
    max_queue_wait_s: float | None = Field(
        20.0,
        gt=0,
        description="past the counts above, shed only a request whose predicted wait (what is "
        "ahead / the pool's drain rate) exceeds this; unset: shed on the counts",
    )
    max_kv_usage: float = Field(0.95, gt=0, le=1)
    stats_max_age_s: float = Field(10.0, gt=0)
    stats_interval_s: float = Field(1.0, gt=0, description="how often engine stats are read")
    retry_after_s: int = Field(2, ge=1)
    bytes_per_token: float = Field(4.0, gt=0, description="prompt estimate: UTF-8 bytes per token")
    default_max_tokens: int = Field(
        512, ge=1, description="assumed output length when a request sets no max_tokens"
    )


class TracingSettings(Strict):
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; unset: off"
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="of traces started here")
    service_name: str = Field("gemma-serve", min_length=1)
    engine_spans: bool = Field(True, description="vLLM's own spans, continuing the request's")


class TelemetrySettings(Strict):
    metrics_port: int = Field(
        8080, ge=1, le=65535, description="local Ray's /metrics port (ignored with ray.address)"
    )
    prometheus_url: str | None = Field(
        None, description="Prometheus the autoscaler reads TTFT from; unset: replica stats only"
    )
    tracing: TracingSettings = Field(default_factory=TracingSettings)


class AccessSettings(Strict):
    keys_file: Path | None = Field(
        None, description="API keys and tenants (docs/operator-guide.md); unset: no authentication"
    )
    keys_reload_interval_s: float = Field(
        2.0, gt=0, description="how often, at most, the file is checked for a change"
    )
    allow_unauthenticated_network_access: bool = Field(
        False,
        description="serve a cluster deployment without API keys (anyone who reaches it may "
        "use every model); only for a network you trust",
    )
    redis_url: str | None = Field(
        None, description="shared limit and usage state for several gateway replicas"
    )
    on_store_error: Literal["open", "closed"] = Field(
        "open", description="when Redis fails: admit (open) or answer 503 (closed)"
    )
    priority_shares: dict[Literal["high", "normal", "low"], float] = Field(
        default_factory=lambda: {"high": 1.0, "normal": 0.85, "low": 0.6},
        description="share of a pool's saturation threshold at which each class is shed",
    )
    audit_file: Path | None = Field(
        None, description="JSON-lines audit log; unset: the gateway's log (stderr)"
    )
    audit_content: bool = Field(False, description="also log each request's prompt")

    @model_validator(mode="after")
    def _shares(self) -> AccessSettings:
        bad = {k: v for k, v in self.priority_shares.items() if not 0 < v <= 1}
        if bad or set(self.priority_shares) != {"high", "normal", "low"}:
            raise ValueError("priority_shares needs high, normal and low, each in (0, 1]")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    bounds: BoundsSettings = Field(default_factory=BoundsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    pools: list[PoolSettings] = Field(default_factory=embedded_pools, min_length=1)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    cache_dir: Path = Field(
        Path("~/.cache/gemma-serve"), description="tiny checkpoints and other build products"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        ids = [p.id for p in self.pools]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"pool ids must be unique; repeated: {duplicates}")
        clash = sorted(set(self.server.aliases) & set(ids))
        if clash:
            raise ValueError(f"server.aliases {clash} collide with pool ids")
        refuse_unsafe_access(self.server, self.access)
        for rule in ("interactive_pool", "quality_pool"):
            named = getattr(self.routing, rule)
            if named is not None and named not in ids:
                raise ValueError(f"routing.{rule} '{named}' is not a pool id; pools: {ids}")
        return self

    def pool(self, pool_id: str) -> PoolSettings:
        return next(p for p in self.pools if p.id == pool_id)

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser().resolve()


def refuse_unsafe_access(server: ServerSettings, access: AccessSettings) -> None:
    """Refuses an open service on a network address, and per-replica limits."""
    if access.keys_file is None and not is_loopback(server.host):
        raise ValueError(
            f"server.host {server.host} is reachable from other machines, and no API keys are "
            "configured: set access.keys_file (docs/operator-guide.md), or bind 127.0.0.1"
        )
    if server.gateway_replicas > 1 and access.keys_file and not access.redis_url:
        raise ValueError(
            "with several gateway replicas, rate limits need shared state: set "
            "access.redis_url (docs/limits.md)"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_path: Path | None = None) -> Settings:
    """Read the YAML file (argument, else $GEMMA_SERVE_CONFIG, else none) and the environment.

    Raises ConfigError naming the offending field, so `up` fails before starting anything.
    """
    if config_path is None and os.environ.get(CONFIG_ENV_VAR):
        config_path = Path(os.environ[CONFIG_ENV_VAR])
    data = _read_yaml(config_path) if config_path is not None else {}
    return settings_from_mapping(data, str(config_path) if config_path else "embedded defaults")


def settings_from_mapping(data: dict[str, Any], source: str) -> Settings:
    """Settings from an already-parsed mapping (a RayService's application args)."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({source}):\n{_describe(exc)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
