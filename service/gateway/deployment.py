"""The gateway as a Ray Serve deployment: holds a handle per pool and builds the app."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.gateway.api import create_app
from service.settings import Settings

READINESS_CACHE_S = 1.0


class HandleBackend:
    """Calls pool deployments through Serve handles, streaming."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self._handles = {pool_id: h.options(stream=True) for pool_id, h in handles.items()}

    def stream(self, pool_id: str, method: str, request: Any) -> Any:
        # No client headers travel on (credentials stay here); the engine's request id
        # is Serve's, which is the client's x-request-id.
        return getattr(self._handles[pool_id], method).remote(request, None)


@serve.ingress()
class Gateway:
    def __init__(self, settings: Settings, pools: dict[str, DeploymentHandle]):
        self._settings = settings
        self._backend = HandleBackend(pools)
        self._deployment_names = {pool_id: h.deployment_name for pool_id, h in pools.items()}
        self._ready_at = 0.0
        self._ready: dict[str, bool] = {}

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._settings, self._backend, self._readiness)

    async def _readiness(self) -> dict[str, bool]:
        """Each pool has at least one running replica (from the Serve controller, cached)."""
        now = time.monotonic()
        if now - self._ready_at > READINESS_CACHE_S:
            self._ready = _running_replicas(self._deployment_names)
            self._ready_at = now
        return self._ready


def _running_replicas(deployment_names: dict[str, str]) -> dict[str, bool]:
    app_name = serve.get_replica_context().app_name
    status = serve.status().applications.get(app_name)
    deployments = status.deployments if status else {}
    ready = {}
    for pool_id, name in deployment_names.items():
        replicas = deployments[name].replica_states if name in deployments else {}
        ready[pool_id] = replicas.get("RUNNING", 0) > 0
    return ready
