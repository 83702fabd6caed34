"""Live pool load as the gateway sees it.

- In flight: each gateway replica counts the requests it has sent per pool (exact, never
  stale). With several gateway replicas each sees its share; thresholds are per pool replica,
  so a pool is called saturated late, never early.
- Replicas: running replicas per pool, from the Serve controller; a pool is unhealthy when
  it was up, now has none running or announced, and may not sleep at zero.
- Engine: queue length and KV-cache usage sampled from one pool replica at a time; the pool's
  queue is that sample times its replicas (Serve spreads load evenly). Samples older than the
  staleness bound are dropped, so routing fails open.
- Router queue: requests beyond the pool's `max_ongoing_requests` per replica wait at Serve's
  router, in this gateway replica; they count as queued too.
- Drain rate: the highest rate, per pool replica, at which this gateway replica has seen the
  pool finish requests, over 5 s buckets in the last 10 minutes: its capacity as last seen
  under load. The latest rate would under-read capacity whenever the offered load is lighter;
  the peak predicts how fast a backlog drains. But when requests were waiting at every
  completion of the last full bucket, the pool was busy throughout it, and what it drained is
  its capacity now, under the load it has now: that rate is used instead (with 1,000 streams on
  2 cores the streams' own HTTP work took CPU from the engines, and the old peak promised ~4x
  what they drained). With several gateway replicas each sees its share of both the backlog and
  the rate, so the ratio holds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.saturation import PoolLoad

DRAIN_BUCKET_S = 5.0
DRAIN_MEMORY_S = 600.0
# A bucket with fewer completions says little about capacity (an idle pool, a lone request).
MIN_DRAINED = 3


@dataclass
class _Bucket:
    index: float  # time // DRAIN_BUCKET_S
    completions: int
    replicas: int  # the most the pool had during the bucket
    backlogged: bool  # every completion in it left requests waiting: busy throughout


class DrainMeter:
    """Completions of one pool in time buckets, and the peak rate per replica among them. The
    peak is kept up to date as buckets fill and expire: routing reads it on every request."""

    def __init__(self) -> None:
        self._buckets: deque[_Bucket] = deque()
        self._peak: float | None = None

    def finished(self, now: float, replicas: int, backlogged: bool = False) -> None:
        index = now // DRAIN_BUCKET_S
        if self._buckets and self._buckets[-1].index == index:
            last = self._buckets[-1]
            last.completions += 1
            last.replicas = max(last.replicas, replicas)
            last.backlogged = last.backlogged and backlogged
        else:
            last = _Bucket(index, 1, replicas, backlogged)
            self._buckets.append(last)
        self._forget(now)
        rate = _rate(last)
        if rate is not None and (self._peak is None or rate > self._peak):
            self._peak = rate

    def rate_per_replica(self, now: float) -> float | None:
        self._forget(now)
        busy = self._last_full_bucket(now)
        if busy is not None and busy.backlogged and (rate := _rate(busy)) is not None:
            return rate
        return self._peak

    def _last_full_bucket(self, now: float) -> _Bucket | None:
        previous = now // DRAIN_BUCKET_S - 1
        # The newest bucket, or the one before it when the current bucket has begun.
        for back in (1, 2):
            if len(self._buckets) >= back and self._buckets[-back].index == previous:
                return self._buckets[-back]
        return None

    def _forget(self, now: float) -> None:
        oldest = (now - DRAIN_MEMORY_S) // DRAIN_BUCKET_S
        if not self._buckets or self._buckets[0].index >= oldest:
            return
        while self._buckets and self._buckets[0].index < oldest:
            self._buckets.popleft()
        rates = [r for r in map(_rate, self._buckets) if r is not None]
        self._peak = max(rates, default=None)


def _rate(bucket: _Bucket) -> float | None:
    if bucket.completions < MIN_DRAINED:
        return None
    return bucket.completions / DRAIN_BUCKET_S / max(1, bucket.replicas)


@dataclass(frozen=True)
class EngineSample:
    waiting: int
    kv_cache_usage: float
    at: float  # time.monotonic() when the engine reported it


class LoadTracker:
    def __init__(
        self,
        pool_ids: list[str],
        max_age_s: float = 10.0,
        slots_per_replica: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`slots_per_replica`: each pool's max_ongoing_requests; unknown, no router queue."""
        self._clock = clock
        self._ongoing = dict.fromkeys(pool_ids, 0)
        self._slots = dict(slots_per_replica or {})
        self._replicas = dict.fromkeys(pool_ids, 1)
        self._unhealthy: set[str] = set()
        self._seen_up: set[str] = set()
        self._engine: dict[str, EngineSample] = {}
        self._drained = {pool_id: DrainMeter() for pool_id in pool_ids}
        self._max_age_s = max_age_s

    def set_engine(self, pool_id: str, sample: EngineSample) -> None:
        self._engine[pool_id] = sample

    def set_replicas(self, replicas: Mapping[str, int]) -> None:
        self._replicas.update(replicas)

    def set_health(self, healthy: Mapping[str, bool]) -> None:
        """Which pools have a replica up (or may wake one from zero), as the gateway sees it.
        A pool not yet seen up is starting, not down (`serve.run` can return before the
        gateway's first look): its requests wait for its first replica, as before."""
        self._seen_up |= {pool_id for pool_id, ok in healthy.items() if ok}
        self._unhealthy = {
            pool_id for pool_id, ok in healthy.items() if not ok and pool_id in self._seen_up
        }

    def started(self, pool_id: str) -> Finish:
        self._ongoing[pool_id] += 1
        return Finish(self, pool_id)

    def snapshot(self) -> dict[str, PoolLoad]:
        now = self._clock()
        loads = {}
        for pool_id, ongoing in self._ongoing.items():
            replicas = self._replicas[pool_id]
            sample = self._fresh_sample(pool_id, now)
            per_replica = self._drained[pool_id].rate_per_replica(now)
            loads[pool_id] = PoolLoad(
                replicas=replicas,
                ongoing=ongoing,
                queued=self._queued(pool_id, now),
                kv_usage=sample.kv_cache_usage if sample else 0.0,
                drain_rate=None if per_replica is None else per_replica * max(1, replicas),
                healthy=pool_id not in self._unhealthy,
            )
        return loads

    def _fresh_sample(self, pool_id: str, now: float) -> EngineSample | None:
        sample = self._engine.get(pool_id)
        return sample if sample is not None and now - sample.at <= self._max_age_s else None

    def _queued(self, pool_id: str, now: float) -> int:
        """Waiting in the engines' queues (the sample times the replicas) and at the router."""
        replicas = self._replicas[pool_id]
        sample = self._fresh_sample(pool_id, now)
        slots = self._slots.get(pool_id)
        at_router = 0 if slots is None else max(0, self._ongoing[pool_id] - slots * replicas)
        return (sample.waiting * replicas if sample else 0) + at_router

    def _finished(self, pool_id: str) -> None:
        self._ongoing[pool_id] -= 1
        now = self._clock()
        backlogged = self._queued(pool_id, now) > 0
        self._drained[pool_id].finished(now, self._replicas[pool_id], backlogged)


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
