"""Builds the Ray Serve application from settings: one LLM deployment per pool behind
one gateway ingress."""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import build_llm_deployment

from service import engine_config, ray_internals
from service.errors import ConfigError
from service.gateway.deployment import Gateway
from service.pool import PoolServer
from service.settings import AccessSettings, Settings, settings_from_mapping

APP_NAME = "gemma-serve"
POOL_DEPLOYMENT_PREFIX = "pool:"


def build_app(settings: Settings) -> Application:
    ray_internals.check_version()
    cache_dir = settings.resolved_cache_dir
    pools = {
        pool.id: build_llm_deployment(
            engine_config.llm_config(pool, cache_dir, settings.telemetry, settings.media),
            name_prefix=POOL_DEPLOYMENT_PREFIX,
            deployment_cls=PoolServer,
        )
        for pool in settings.pools
    }
    gateway = serve_gateway(settings)
    return gateway.bind(settings, pools)


def from_args(args: dict[str, Any]) -> Application:
    """Ray Serve application builder for a RayService (`import_path: service.app:from_args`):
    `args` is the settings mapping, validated exactly like a config file."""
    settings = settings_from_mapping(dict(args), "serveConfigV2 args")
    refuse_open_cluster_access(settings.access)
    return build_app(settings)


def refuse_open_cluster_access(access: AccessSettings) -> None:
    """On a cluster Serve's proxy listens on the pod network whatever server.host says, so a
    deployment without keys is open to the network: refuse it unless asked for by name."""
    if access.keys_file is None and not access.allow_unauthenticated_network_access:
        raise ConfigError(
            "serveConfigV2 args: no API keys are configured (access.keys_file), and a cluster "
            "deployment is reachable from the pod network; set access.keys_file "
            "(docs/operator-guide.md), or access.allow_unauthenticated_network_access: true "
            "for a network you trust"
        )


def serve_gateway(settings: Settings):
    from ray import serve

    return serve.deployment(
        Gateway,
        name="gateway",
        num_replicas=settings.server.gateway_replicas,
        max_ongoing_requests=settings.server.gateway_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0.5},
        # A gateway replica carries its streams and their settle tasks: it drains as long as
        # the pools do (Serve's 20 s default would cut both on every config change).
        graceful_shutdown_timeout_s=max(p.drain_timeout_s for p in settings.pools),
    )
