"""Live pool load as the gateway sees it.

Each gateway replica counts the requests it has in flight per pool (exact, no staleness) and
learns replica counts from the Serve controller (refreshed with readiness). With several
gateway replicas each sees its share; thresholds are per replica of a pool, so the error is
bounded by the gateway's share of traffic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from service.routing.policy import PoolLoad


class LoadTracker:
    def __init__(self, pool_ids: list[str]):
        self._ongoing = dict.fromkeys(pool_ids, 0)
        self._replicas = dict.fromkeys(pool_ids, 1)
        self._replicas_at = time.monotonic()

    def set_replicas(self, replicas: Mapping[str, int]) -> None:
        self._replicas.update(replicas)
        self._replicas_at = time.monotonic()

    def started(self, pool_id: str) -> Finish:
        self._ongoing[pool_id] += 1
        return Finish(self, pool_id)

    def snapshot(self) -> dict[str, PoolLoad]:
        age = time.monotonic() - self._replicas_at
        return {
            pool_id: PoolLoad(replicas=self._replicas[pool_id], ongoing=ongoing, age_s=age)
            for pool_id, ongoing in self._ongoing.items()
        }

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
