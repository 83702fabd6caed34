"""Rate limits in memory: exact for the one gateway replica of the embedded default."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from service.access.limits import (
    Admission,
    Lease,
    Limits,
    RateLimiter,
    binding_limit,
    check_windows,
    in_window,
    slot_member,
)


@dataclass
class _TenantState:
    requests: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    slots: dict[str, float] = field(default_factory=dict)  # member -> lease expiry


def _prune(buckets: dict[int, int], second: int) -> list[tuple[int, int]]:
    for stale in [bucket for bucket in buckets if not in_window(second, bucket)]:
        del buckets[stale]
    return list(buckets.items())


class MemoryRateLimiter(RateLimiter):
    """Exact for one process. Every method runs without awaiting, so asyncio tasks cannot
    interleave inside an admission. Two processes each count alone (docs/limits.md)."""

    def __init__(self, *, lease_ttl_s: float):
        self._lease_ttl_s = lease_ttl_s
        self._tenants: dict[str, _TenantState] = {}

    async def _admit_limited(
        self,
        tenant: str,
        limits: Limits,
        request_id: str,
        estimated_tokens: int,
        now: float | None,
    ) -> Admission:
        now = time.time() if now is None else now
        second = math.floor(now)
        state = self._tenants.setdefault(tenant, _TenantState())
        buckets = {"requests": state.requests, "tokens": state.tokens}
        checks = check_windows(
            limits, estimated_tokens, now, lambda kind: _prune(buckets[kind], second)
        )
        full = False
        if limits.max_concurrent_requests is not None:
            for member in [m for m, expiry in state.slots.items() if expiry <= now]:
                del state.slots[member]
            full = len(state.slots) >= limits.max_concurrent_requests
        limited_by, retry_after_s, headers = binding_limit(checks, full, second, now)
        if limited_by is not None:
            return Admission(False, limited_by, retry_after_s, headers, None)
        if "requests" in checks:
            state.requests[second] = state.requests.get(second, 0) + 1
        if "tokens" in checks:
            state.tokens[second] = state.tokens.get(second, 0) + estimated_tokens
        slot = None
        if limits.max_concurrent_requests is not None:
            slot = slot_member(request_id)
            state.slots[slot] = now + self._lease_ttl_s
        lease = Lease(tenant, request_id, second, estimated_tokens, "tokens" in checks, slot)
        return Admission(True, None, 0, headers, lease)

    async def _settle_lease(self, lease: Lease, delta: int, now: float | None) -> None:
        now = time.time() if now is None else now
        state = self._tenants.get(lease.tenant)
        if state is None:
            return
        if lease.slot is not None:
            state.slots.pop(lease.slot, None)
        second = math.floor(now)
        bucket = lease.second
        if delta and bucket is not None and in_window(second, bucket) and bucket in state.tokens:
            state.tokens[bucket] += delta
        elif delta > 0:  # the lease's bucket has left the window: charge the excess now
            state.tokens[second] = state.tokens.get(second, 0) + delta

    async def aclose(self) -> None:
        self._tenants.clear()
