"""Usage accounting per tenant and model, by the minute, for the admin usage report.

With several gateway replicas the counters live in Redis: one hash per minute, fields
"{tenant}|{model}|{counter}", expiring a retention (default 25 h) after the minute ends. The
embedded default keeps the same minutes in memory. A report sums the minutes that overlap its
window, so its resolution is one minute and a window never exceeds the retention.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.access.redis_connection import STORE_ERRORS

MINUTE_S = 60
RETENTION_S = 25 * 3600  # a day's report, plus slack for a late admin
SEPARATOR = "|"
COUNTERS = ("requests", "prompt_tokens", "completion_tokens")


class UsageUnavailable(Exception):
    """The usage store cannot be reached."""


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


# (tenant, model, counter, amount), as a store reads its minutes back.
Count = tuple[str, str, str, int]


class UsageStore(ABC):
    """What both stores share: checking a record, the clock, and summing a report's minutes.
    `now` is injected by tests."""

    def __init__(self, *, retention_s: int = RETENTION_S):
        self._retention_s = retention_s

    async def record(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        now: float | None = None,
    ) -> None:
        _check_record(tenant, model, prompt_tokens, completion_tokens)
        now = time.time() if now is None else now
        counts = dict(zip(COUNTERS, (1, prompt_tokens, completion_tokens), strict=True))
        await self._add(tenant, model, counts, now)

    async def report(self, window_s: int, now: float | None = None) -> list[UsageRow]:
        now = time.time() if now is None else now
        totals: dict[tuple[str, str], dict[str, int]] = {}
        minutes = minutes_overlapping(window_s, now, self._retention_s)
        for tenant, model, counter, n in await self._counts(minutes):
            _add(totals, tenant, model, counter, n)
        return _rows(totals)

    @abstractmethod
    async def _add(self, tenant: str, model: str, counts: dict[str, int], now: float) -> None:
        """Add `counts` (counter -> amount) to the minute holding `now`."""

    @abstractmethod
    async def _counts(self, minutes: range) -> list[Count]:
        """Every count recorded in these minutes (their start times)."""

    @abstractmethod
    async def aclose(self) -> None: ...


def _check_record(tenant: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    # The separator splits Redis hash fields back into tenant and model.
    for name, value in (("tenant id", tenant), ("model id", model)):
        if not value or SEPARATOR in value:
            raise ValueError(f"{name} {value!r} is empty or contains {SEPARATOR!r}")
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts must not be negative: {prompt_tokens}, {completion_tokens}")


def minute_of(now: float) -> int:
    """The start (epoch seconds) of the minute holding `now`."""
    return math.floor(now / MINUTE_S) * MINUTE_S


def minutes_overlapping(window_s: int, now: float, retention_s: int) -> range:
    """Minute starts of every minute that overlaps (now - window_s, now]."""
    if not 1 <= window_s <= retention_s:
        raise ValueError(
            f"window_s must be between 1 and {retention_s} seconds (the usage retention), "
            f"got {window_s}"
        )
    return range(minute_of(now - window_s), minute_of(now) + 1, MINUTE_S)


def _rows(totals: Mapping[tuple[str, str], Mapping[str, int]]) -> list[UsageRow]:
    return [
        UsageRow(tenant, model, *(counts.get(counter, 0) for counter in COUNTERS))
        for (tenant, model), counts in sorted(totals.items())
    ]


def _add(
    totals: dict[tuple[str, str], dict[str, int]], tenant: str, model: str, counter: str, n: int
) -> None:
    counts = totals.setdefault((tenant, model), {})
    counts[counter] = counts.get(counter, 0) + n


# --- In memory: one gateway replica --------------------------------------------------------------


class MemoryUsageStore(UsageStore):
    def __init__(self, *, retention_s: int = RETENTION_S):
        super().__init__(retention_s=retention_s)
        # minute start -> (tenant, model) -> counter -> total
        self._minutes: dict[int, dict[tuple[str, str], dict[str, int]]] = {}

    async def _add(self, tenant: str, model: str, counts: dict[str, int], now: float) -> None:
        self._expire(now)
        minute = self._minutes.setdefault(minute_of(now), {})
        for counter, n in counts.items():
            _add(minute, tenant, model, counter, n)

    async def _counts(self, minutes: range) -> list[Count]:
        return [
            (tenant, model, counter, n)
            for start in minutes
            for (tenant, model), counts in self._minutes.get(start, {}).items()
            for counter, n in counts.items()
        ]

    async def aclose(self) -> None:
        self._minutes.clear()

    def _expire(self, now: float) -> None:
        # As in Redis: a minute is kept for the retention after it ends.
        for start in [s for s in self._minutes if s + MINUTE_S + self._retention_s <= now]:
            del self._minutes[start]


# --- Redis: any number of gateway replicas --------------------------------------------------------


def _parse(fields: Mapping[bytes | str, bytes | str]) -> Iterable[Count]:
    for field, value in fields.items():
        text = field.decode() if isinstance(field, bytes) else field
        tenant, model, counter = text.split(SEPARATOR)
        yield tenant, model, counter, int(value)


class RedisUsageStore(UsageStore):
    def __init__(
        self, client: aioredis.Redis, *, retention_s: int = RETENTION_S, prefix: str = "gs:"
    ):
        super().__init__(retention_s=retention_s)
        self._client = client
        self._prefix = prefix

    def key(self, minute: int) -> str:
        return f"{self._prefix}usage:{minute}"

    async def _add(self, tenant: str, model: str, counts: dict[str, int], now: float) -> None:
        minute = minute_of(now)
        key = self.key(minute)
        # Until the minute ends plus the retention, relative to `now` so that an injected clock
        # behaves like the real one; every minute a report may ask for is therefore still there.
        ttl_s = math.ceil(minute + MINUTE_S + self._retention_s - now)
        base = f"{tenant}{SEPARATOR}{model}{SEPARATOR}"
        try:
            # MULTI/EXEC: a report never sees a request counted without its tokens.
            async with self._client.pipeline(transaction=True) as pipe:
                for counter, n in counts.items():
                    pipe.hincrby(key, base + counter, n)
                pipe.expire(key, ttl_s)
                await pipe.execute()
        except STORE_ERRORS as error:
            raise UsageUnavailable(f"usage store unavailable: {error!r}") from error

    async def _counts(self, minutes: range) -> list[Count]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for start in minutes:
                    pipe.hgetall(self.key(start))
                hashes = await pipe.execute()
        except STORE_ERRORS as error:
            raise UsageUnavailable(f"usage store unavailable: {error!r}") from error
        return [count for fields in hashes for count in _parse(fields)]

    async def aclose(self) -> None:
        await self._client.aclose()
