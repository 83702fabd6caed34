"""Is a pool saturated? The one detector that spill-over routing and priority shedding share.

A leaf: it reads a pool's live load and the limits it is held to, nothing of the policy, so
the gateway's access control can ask it with a lower priority class's share of the limits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class PoolLoad:
    """Live load of one pool."""

    replicas: int
    ongoing: int  # requests sent to the pool and not finished (running + queued)
    queued: int = 0  # waiting to start: in the engines' queues and at Serve's router
    kv_usage: float = 0.0
    drain_rate: float | None = None  # requests/s the pool has shown it finishes; None: unknown
    # False when no replica is running or announced and the pool may not sleep at zero: its
    # replicas died or have not started. Requests to the alias go elsewhere (spill_over).
    healthy: bool = True

    @property
    def predicted_wait_s(self) -> float | None:
        """How long a new request waits to start: with continuous batching a request starts
        when one ahead of it in the queue has, and those start as running ones finish."""
        if self.drain_rate is None:
            return None
        return self.queued / self.drain_rate


@dataclass(frozen=True)
class SaturationLimits:
    """Where a pool counts as saturated; the fields are named as the `routing.*` settings."""

    max_ongoing_per_replica: int = 48
    max_queued_per_replica: int = 8
    max_queue_wait_s: float | None = 20.0  # None: the counts alone decide
    max_kv_usage: float = 0.95

    def scaled(self, share: float) -> Self:
        """The saturation point a lower priority class sees: a share of the pool's room."""
        return dataclasses.replace(
            self,
            max_ongoing_per_replica=max(1, int(self.max_ongoing_per_replica * share)),
            max_queued_per_replica=int(self.max_queued_per_replica * share),
            max_queue_wait_s=None
            if self.max_queue_wait_s is None
            else self.max_queue_wait_s * share,
        )


def is_saturated(load: PoolLoad | None, limits: SaturationLimits) -> bool:
    """A missing load, or engine figures gone stale (dropped by the tracker), never saturates
    a pool: routing fails open on what it cannot see. The in-flight counts are exact, though,
    and a replica count the controller has not refreshed lately is still the best one known:
    they decide even then (a gateway whose controller reads lag under a burst of 1,000 streams
    had stopped shedding exactly when it mattered).

    The request counts are where shedding may begin, not where it must: a pool past them
    still takes a request whose predicted wait is within `max_queue_wait_s`. A burst a pool
    drains in seconds is queued, not refused; one it would take minutes over is refused at
    once, with Retry-After, rather than timing out later."""
    if load is None:
        return False
    if load.replicas == 0:
        return False  # scaled to zero: the request wakes it up
    if load.kv_usage >= limits.max_kv_usage:
        return True
    past_counts = (
        load.ongoing >= limits.max_ongoing_per_replica * load.replicas
        # Strict: a queue bound of 0 (or one scaled down to 0) means "no queue", not "full".
        or load.queued > limits.max_queued_per_replica * load.replicas
    )
    if not past_counts:
        return False
    wait = load.predicted_wait_s
    return limits.max_queue_wait_s is None or wait is None or wait > limits.max_queue_wait_s
