"""The gateway as a Ray Serve deployment: holds a handle per pool and builds the app."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from service import engine_config, replica_directory
from service.access.gate import build_access
from service.gateway.api import create_app
from service.gateway.http_backend import HttpBackend
from service.ray_internals import RawRequestInfo
from service.routing.load import EngineSample
from service.routing.setup import build_load_tracker
from service.settings import Settings
from service.telemetry.metrics import RayMetricsRecorder
from service.telemetry.tracing import build_tracer

READINESS_MAX_AGE_S = 2.0
# A replica at its max_ongoing_requests answers late; its in-flight count says enough then.
ENGINE_SAMPLE_TIMEOUT_S = 1.0
# Each store call is bounded by its own 0.5 s timeouts; this only bounds a pile of them.
SETTLE_DRAIN_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)


class HandleBackend:
    """Calls pool deployments through Serve handles, streaming."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self._handles = {pool_id: h.options(stream=True) for pool_id, h in handles.items()}

    def stream(
        self,
        pool_id: str,
        method: str,
        request: Any,
        trace_headers: dict[str, str],
        checks: bool = False,
        request_id: str = "",
    ) -> Any:
        # Only trace context travels on (credentials stay here); the engine's request id
        # is Serve's, which is the client's x-request-id.
        info = RawRequestInfo(headers=trace_headers) if trace_headers else None
        return getattr(self._handles[pool_id], method).remote(request, info)


@serve.ingress()
class Gateway:
    def __init__(self, settings: Settings, pools: dict[str, DeploymentHandle]):
        self._settings = settings
        self._backend = HttpBackend(
            HandleBackend(pools),
            affinity={
                p.id: p.prefix_affinity_max_imbalance if engine_config.prefix_affinity(p) else None
                for p in settings.pools
            },
        )
        self._pools = pools
        self._deployment_names = {pool_id: h.deployment_name for pool_id, h in pools.items()}
        self._loads = build_load_tracker(settings)
        self._replicas: dict[str, int] = {}
        self._refreshed_at = 0.0

    async def __serve_build_asgi_app__(self) -> FastAPI:
        self._recorder = RayMetricsRecorder()
        self._access = build_access(self._settings, self._recorder.limiter_error)
        self._refresher = asyncio.create_task(self._refresh_forever())
        return create_app(
            self._settings,
            self._backend,
            self._readiness,
            self._loads,
            recorder=self._recorder,
            tracer=build_tracer(self._settings.telemetry.tracing),
            access=self._access,
        )

    async def __del__(self) -> None:
        """Serve calls this once the replica's requests have drained (a config change, a
        scale-down, a node drain): what they left to settle is sent before the replica goes."""
        if hasattr(self, "_access"):  # the app was built
            self._refresher.cancel()
            await self._access.aclose(SETTLE_DRAIN_TIMEOUT_S)
            await self._backend.aclose()

    async def _refresh_forever(self) -> None:
        """Running replicas per pool, from the Serve controller: readiness and routing."""
        while True:
            try:
                await self._refresh()
            except Exception:  # the controller may be restarting; keep the last figures
                log.warning("could not read pool replicas from Serve", exc_info=True)
            await asyncio.sleep(self._settings.routing.stats_interval_s)

    async def _refresh(self) -> None:
        for pool_id, load in self._loads.snapshot().items():
            self._recorder.in_flight(pool_id, load.ongoing)
        if (keys := await self._access.keys_status()) is not None:
            self._recorder.keys_file_stale(keys["error"] is not None)
        await self._refresh_replicas()
        # Each pool replica's address and engine figures, as the replicas announce them.
        app_name = serve.get_replica_context().app_name
        directory = await asyncio.to_thread(replica_directory.read, app_name)
        self._backend.set_replicas(directory)
        self._loads.set_health(self._pool_health())  # before the engine samples, which may wait
        await self._read_engine_figures(directory)

    async def _read_engine_figures(
        self, directory: dict[str, list[replica_directory.ReplicaEntry]]
    ) -> None:
        now_wall, now = time.time(), time.monotonic()
        for pool_id in self._pools:
            entries = directory.get(pool_id)
            if not entries:
                await self._sample_engine(pool_id)  # a replica may run without announcing yet
                continue
            newest = max(e.at for e in entries)
            self._loads.set_engine(
                pool_id,
                EngineSample(
                    # The tracker scales the per-replica figure by the replica count.
                    waiting=round(sum(e.waiting for e in entries) / len(entries)),
                    kv_cache_usage=max(e.kv_cache_usage for e in entries),
                    at=now - (now_wall - newest),
                ),
            )

    async def _refresh_replicas(self) -> None:
        self._replicas = await asyncio.to_thread(_running_replicas, self._deployment_names)
        self._loads.set_replicas(self._replicas)
        now = time.monotonic()
        if (gap := now - self._refreshed_at) > self._settings.routing.stats_max_age_s > 0:
            if self._refreshed_at:  # not the first
                log.warning("pool replica counts were %.0f s old: the controller answers late", gap)
        self._refreshed_at = now

    async def _sample_engine(self, pool_id: str) -> None:
        """One replica's scheduler figures; a slow or failed answer just leaves them stale."""
        try:
            load = await asyncio.wait_for(
                self._pools[pool_id].engine_load.remote(), ENGINE_SAMPLE_TIMEOUT_S
            )
        except Exception:
            return
        if load["age_s"] is not None:
            at = time.monotonic() - load["age_s"]
            self._loads.set_engine(
                pool_id, EngineSample(load["waiting"], load["kv_cache_usage"], at)
            )

    async def _readiness(self) -> dict[str, bool]:
        if time.monotonic() - self._refreshed_at > READINESS_MAX_AGE_S:
            await self._refresh_replicas()
        return self._pool_health()

    def _pool_health(self) -> dict[str, bool]:
        """A pool is up with a replica running (Serve's view) or announced (the replica's);
        one allowed to scale to zero is up at zero: a request starts its first replica."""
        return {
            pool.id: pool.replicas.min == 0
            or self._replicas.get(pool.id, 0) > 0
            or self._backend.replica_count(pool.id) > 0
            for pool in self._settings.pools
        }


def _running_replicas(deployment_names: dict[str, str]) -> dict[str, int]:
    app_name = serve.get_replica_context().app_name
    status = serve.status().applications.get(app_name)
    deployments = status.deployments if status else {}
    return {
        pool_id: deployments[name].replica_states.get("RUNNING", 0) if name in deployments else 0
        for pool_id, name in deployment_names.items()
    }
