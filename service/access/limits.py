"""Per-tenant rate limits: requests and tokens per sliding minute, and concurrent requests.

Every gateway replica must see the same counts, so with several replicas the counters live in
Redis and one Lua script per admission reads and charges them atomically. The embedded default
(one gateway replica) keeps them in memory behind the same interface. docs/limits.md says why.

The window is 60 one-second buckets. An admission checks every limit that is set before it
charges any, so a refusal costs the tenant nothing. Tokens are charged at admission as an
estimate (prompt estimate + max_tokens) and corrected to the real usage when the lease is
settled. A concurrency slot is a member of a sorted set scored by its lease's expiry: a replica
that dies holding slots gives them back when their leases expire.

A Redis reply can be lost after the script has charged (a timeout). Each admission the script
grants therefore leaves a record under a random id, naming the bucket it charged; the caller gets
a pending lease with that id, and settling it reads the record, so the charge is corrected (or
refunded) exactly as if the reply had arrived. No record means the script never charged, or
the lease is settled already: a settle is idempotent, so one that fails (Redis slow or down) is
retried until the lease would have expired anyway.

This module holds what both backends share: the types, the window arithmetic and the checks of
a request. The backends are memory_limiter.py and redis_limiter.py; stores.py picks one.
"""

from __future__ import annotations

import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

WINDOW_S = 60
# Buckets are read back for WINDOW_S; a hash outlives its last write by twice that, so an idle
# tenant's counters disappear on their own without ever expiring a live bucket.
BUCKET_TTL_S = 2 * WINDOW_S
# A refusal for concurrency cannot know when a slot frees (that is when some request ends):
# one second is a cheap poll interval.
CONCURRENCY_RETRY_S = 1

Window = Literal["requests", "tokens"]
LimitedBy = Literal["requests", "tokens", "concurrency"]


class LimiterUnavailable(Exception):
    """The shared counters cannot be reached; the caller chooses to fail open or closed.

    `pending` is the lease of an admission whose reply was lost: it may have been charged, so
    the caller settles it like any lease (with what was served, 0 when refused)."""

    def __init__(self, message: str, pending: Lease | None = None):
        super().__init__(message)
        self.pending = pending


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None

    def __post_init__(self) -> None:
        # Zero would mean "refuse everything": disabling the tenant's keys says that plainly.
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or unset, got {value}")

    @property
    def any(self) -> bool:
        return any(
            value is not None
            for value in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.max_concurrent_requests,
            )
        )


@dataclass(eq=False)
class Lease:
    """What one admitted request holds; settle it exactly once (later settles do nothing)."""

    tenant: str
    request_id: str
    second: int | None  # the bucket the request was charged to; None: read from the record
    estimated_tokens: int
    charged_tokens: bool  # False when the tenant has no token limit: nothing to correct
    slot: str | None  # the concurrency set member, None when no concurrency limit
    record: str | None = None  # the admission record's id (Redis only)
    settled: bool = field(default=False, init=False)


@dataclass(frozen=True)
class Admission:
    admitted: bool
    limited_by: LimitedBy | None  # the limit a retry waits on, when refused
    retry_after_s: int  # >= 1 when refused: a retry this much later fits; 0 when admitted
    headers: dict[str, str]  # x-ratelimit-{limit,remaining,reset}-{requests,tokens}
    lease: Lease | None  # present when admitted


class RateLimiter(ABC):
    """What both stores share: the checks of a request, the admission of a tenant without
    limits, and settling each lease once. `now` is injected by tests; None is the store's
    own clock."""

    async def admit(
        self,
        tenant: str,
        limits: Limits,
        *,
        request_id: str,
        estimated_tokens: int,
        now: float | None = None,
    ) -> Admission:
        _check_request(tenant, estimated_tokens)
        if not limits.any:
            second = math.floor(time.time() if now is None else now)
            lease = Lease(tenant, request_id, second, estimated_tokens, False, None)
            return Admission(True, None, 0, {}, lease)
        return await self._admit_limited(tenant, limits, request_id, estimated_tokens, now)

    async def settle(
        self, lease: Lease, actual_tokens: int | None, now: float | None = None
    ) -> None:
        """Frees the lease's slot and corrects its token charge to `actual_tokens` (None:
        keep the estimate). Later settles of the same lease do nothing."""
        if lease.settled:
            return
        lease.settled = True  # before the first await: a second caller does nothing
        await self._settle_lease(lease, _token_correction(lease, actual_tokens), now)

    @abstractmethod
    async def _admit_limited(
        self,
        tenant: str,
        limits: Limits,
        request_id: str,
        estimated_tokens: int,
        now: float | None,
    ) -> Admission: ...

    @abstractmethod
    async def _settle_lease(self, lease: Lease, token_delta: int, now: float | None) -> None: ...

    @abstractmethod
    async def aclose(self) -> None: ...


# --- The window arithmetic, shared by both backends -------------------------------------------


@dataclass(frozen=True)
class WindowCheck:
    """One per-minute limit against the buckets in the window, before this request."""

    limit: int
    used: int
    cost: int  # what this request adds: 1 request, or its token estimate
    fits: bool
    retry_after_s: int  # 0 when it fits
    newest: int | None  # the newest second with a charge, None when the window is empty


def in_window(second: int, bucket: int) -> bool:
    # Buckets newer than `second` count too: a replica whose clock runs ahead must not create
    # charges the others cannot see.
    return bucket > second - WINDOW_S


def check_window(
    buckets: Sequence[tuple[int, int]], limit: int, cost: int, now: float
) -> WindowCheck:
    """`buckets` are (second, amount) in the window. A cost above the limit is checked as the
    limit, so the arithmetic stays finite; the gateway refuses such a request before it gets
    here (TooLargeForTokenLimit)."""
    used = sum(amount for _, amount in buckets)
    need = used + min(cost, limit) - limit  # what has to leave the window first
    charged = [second for second, amount in buckets if amount > 0]
    return WindowCheck(
        limit=limit,
        used=used,
        cost=cost,
        fits=need <= 0,
        retry_after_s=0 if need <= 0 else _retry_after(buckets, need, now),
        newest=max(charged) if charged else None,
    )


def _retry_after(buckets: Sequence[tuple[int, int]], need: int, now: float) -> int:
    """Whole seconds until the oldest buckets holding `need` have left the window.

    Bucket s leaves when floor(t) - WINDOW_S >= s, i.e. at t = s + WINDOW_S exactly.
    """
    left = 0
    for second, amount in sorted(buckets):
        left += amount
        if left >= need:
            return max(1, math.ceil(second + WINDOW_S - now))
    # Unreachable: a cost is checked as at most the limit, so an empty window always fits.
    return WINDOW_S


def check_windows(
    limits: Limits,
    estimated_tokens: int,
    now: float,
    buckets: Callable[[Window], Sequence[tuple[int, int]]],
) -> dict[Window, WindowCheck]:
    """Each per-minute limit that is set, against `buckets(kind)`: its (second, amount) pairs
    in the window. Read only for the limits that are set."""
    costs: dict[Window, tuple[int | None, int]] = {
        "requests": (limits.requests_per_minute, 1),
        "tokens": (limits.tokens_per_minute, estimated_tokens),
    }
    return {
        kind: check_window(buckets(kind), limit, cost, now)
        for kind, (limit, cost) in costs.items()
        if limit is not None
    }


def format_duration(seconds: float) -> str:
    """OpenAI's reset format, rounded up to the millisecond: "20ms", "1.5s", "1m0s"."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _headers(
    checks: dict[Window, WindowCheck], admitted: bool, second: int, now: float
) -> dict[str, str]:
    headers = {}
    for kind, check in checks.items():
        used = check.used + (check.cost if admitted else 0)
        newest = check.newest
        if admitted and check.cost > 0:
            newest = second if newest is None else max(newest, second)
        # Reset, as OpenAI defines it: until the window is back to its full limit.
        reset = 0.0 if newest is None else newest + WINDOW_S - now
        headers[f"x-ratelimit-limit-{kind}"] = str(check.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, check.limit - used))
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
    return headers


def binding_limit(
    checks: dict[Window, WindowCheck], concurrency_full: bool, second: int, now: float
) -> tuple[LimitedBy | None, int, dict[str, str]]:
    """The binding limit (None: admitted), Retry-After and headers. A retry must wait for every
    limit that refused, so the binding one is the one with the longest wait."""
    waits: list[tuple[int, LimitedBy]] = [
        (check.retry_after_s, kind) for kind, check in checks.items() if not check.fits
    ]
    if concurrency_full:
        waits.append((CONCURRENCY_RETRY_S, "concurrency"))
    retry_after_s, limited_by = max(waits) if waits else (0, None)
    return limited_by, retry_after_s, _headers(checks, limited_by is None, second, now)


def _check_request(tenant: str, estimated_tokens: int) -> None:
    # A brace would break the Redis Cluster hash tag that keeps a tenant's keys in one slot.
    if not tenant or any(char in tenant for char in "{}| \t\r\n"):
        raise ValueError(f"tenant id {tenant!r} is empty or contains one of '{{}}|' or space")
    if estimated_tokens < 0:
        raise ValueError(f"estimated_tokens must not be negative, got {estimated_tokens}")


def slot_member(request_id: str) -> str:
    # Request ids may come from clients (x-request-id); a random suffix keeps a reused id from
    # sharing, and so bypassing, one concurrency slot.
    return f"{request_id}#{secrets.token_hex(4)}"


def _token_correction(lease: Lease, actual_tokens: int | None) -> int:
    if not lease.charged_tokens or actual_tokens is None:
        return 0
    return actual_tokens - lease.estimated_tokens
