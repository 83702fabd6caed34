"""Live pool load as the gateway sees it.

- In flight: each gateway replica counts the requests it has sent per pool (exact, never
  stale). With several gateway replicas each sees its share; thresholds are per pool replica,
  so a pool is called saturated late, never early.
- Replicas: running replicas per pool, from the Serve controller.
- Engine: queue length and KV-cache usage sampled from one pool replica at a time; the pool's
  queue is that sample times its replicas (Serve spreads load evenly). Samples older than the
  staleness bound are dropped, so routing fails open.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from service.routing.policy import PoolLoad


@dataclass(frozen=True)
class EngineSample:
    waiting: int
    kv_cache_usage: float
    at: float  # time.monotonic() when the engine reported it


class LoadTracker:
    def __init__(self, pool_ids: list[str], max_age_s: float = 10.0):
        self._ongoing = dict.fromkeys(pool_ids, 0)
        self._replicas = dict.fromkeys(pool_ids, 1)
        self._replicas_at = time.monotonic()
        self._engine: dict[str, EngineSample] = {}
        self._max_age_s = max_age_s

    def set_engine(self, pool_id: str, sample: EngineSample) -> None:
        self._engine[pool_id] = sample

    def set_replicas(self, replicas: Mapping[str, int]) -> None:
        self._replicas.update(replicas)
        self._replicas_at = time.monotonic()

    def started(self, pool_id: str) -> Finish:
        self._ongoing[pool_id] += 1
        return Finish(self, pool_id)

    def snapshot(self) -> dict[str, PoolLoad]:
        now = time.monotonic()
        loads = {}
        for pool_id, ongoing in self._ongoing.items():
            replicas = self._replicas[pool_id]
            sample = self._engine.get(pool_id)
            fresh = sample is not None and now - sample.at <= self._max_age_s
            loads[pool_id] = PoolLoad(
                replicas=replicas,
                ongoing=ongoing,
                queued=sample.waiting * replicas if fresh else 0,
                kv_usage=sample.kv_cache_usage if fresh else 0.0,
                age_s=now - self._replicas_at,
            )
        return loads

    def _finished(self, pool_id: str) -> None:
        self._ongoing[pool_id] -= 1


class Finish:
    """Marks one request done, once, however many exit paths call it."""

    def __init__(self, tracker: LoadTracker, pool_id: str):
        self._tracker = tracker
        self._pool_id = pool_id
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._tracker._finished(self._pool_id)
