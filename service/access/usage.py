"""Usage accounting per tenant and model, by the minute, for the admin usage report.

With several gateway replicas the counters live in Redis: one hash per minute, fields
"{tenant}|{model}|{counter}", expiring a retention (default 25 h) after the minute ends. The
embedded default keeps the same minutes in memory. A report sums the minutes that overlap its
window, so its resolution is one minute and a window never exceeds the retention.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from service.access.limits import STORE_ERRORS, RedisOptions, redis_client

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


class UsageStore(Protocol):
    async def record(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        now: float | None = None,
    ) -> None: ...

    async def report(self, window_s: int, now: float | None = None) -> list[UsageRow]: ...

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


class MemoryUsageStore:
    def __init__(self, *, retention_s: int = RETENTION_S):
        self._retention_s = retention_s
        # minute start -> (tenant, model) -> counter -> total
        self._minutes: dict[int, dict[tuple[str, str], dict[str, int]]] = {}

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
        self._expire(now)
        minute = self._minutes.setdefault(minute_of(now), {})
        for counter, n in zip(COUNTERS, (1, prompt_tokens, completion_tokens), strict=True):
            _add(minute, tenant, model, counter, n)

    async def report(self, window_s: int, now: float | None = None) -> list[UsageRow]:
        now = time.time() if now is None else now
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for start in minutes_overlapping(window_s, now, self._retention_s):
            for (tenant, model), counts in self._minutes.get(start, {}).items():
                for counter, n in counts.items():
                    _add(totals, tenant, model, counter, n)
        return _rows(totals)

    async def aclose(self) -> None:
        self._minutes.clear()

    def _expire(self, now: float) -> None:
        # As in Redis: a minute is kept for the retention after it ends.
        for start in [s for s in self._minutes if s + MINUTE_S + self._retention_s <= now]:
            del self._minutes[start]


# --- Redis: any number of gateway replicas --------------------------------------------------------


def _parse(fields: Mapping[bytes | str, bytes | str]) -> Iterable[tuple[str, str, str, int]]:
    for field, value in fields.items():
        text = field.decode() if isinstance(field, bytes) else field
        tenant, model, counter = text.split(SEPARATOR)
        yield tenant, model, counter, int(value)


class RedisUsageStore:
    def __init__(
        self, client: aioredis.Redis, *, retention_s: int = RETENTION_S, prefix: str = "gs:"
    ):
        self._client = client
        self._retention_s = retention_s
        self._prefix = prefix

    def key(self, minute: int) -> str:
        return f"{self._prefix}usage:{minute}"

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
        minute = minute_of(now)
        key = self.key(minute)
        # Until the minute ends plus the retention, relative to `now` so that an injected clock
        # behaves like the real one; every minute a report may ask for is therefore still there.
        ttl_s = math.ceil(minute + MINUTE_S + self._retention_s - now)
        base = f"{tenant}{SEPARATOR}{model}{SEPARATOR}"
        try:
            # MULTI/EXEC: a report never sees a request counted without its tokens.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, base + "requests", 1)
                pipe.hincrby(key, base + "prompt_tokens", prompt_tokens)
                pipe.hincrby(key, base + "completion_tokens", completion_tokens)
                pipe.expire(key, ttl_s)
                await pipe.execute()
        except STORE_ERRORS as error:
            raise UsageUnavailable(f"usage store unavailable: {error!r}") from error

    async def report(self, window_s: int, now: float | None = None) -> list[UsageRow]:
        now = time.time() if now is None else now
        minutes = minutes_overlapping(window_s, now, self._retention_s)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for start in minutes:
                    pipe.hgetall(self.key(start))
                hashes = await pipe.execute()
        except STORE_ERRORS as error:
            raise UsageUnavailable(f"usage store unavailable: {error!r}") from error
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for fields in hashes:
            for tenant, model, counter, n in _parse(fields):
                _add(totals, tenant, model, counter, n)
        return _rows(totals)

    async def aclose(self) -> None:
        await self._client.aclose()


def build_usage_store(
    redis_url: str | None,
    *,
    retention_s: int = RETENTION_S,
    prefix: str = "gs:",
    redis_options: RedisOptions | None = None,
) -> UsageStore:
    """Redis when a URL is given (any number of gateway replicas), else in memory (one)."""
    if redis_url is None:
        return MemoryUsageStore(retention_s=retention_s)
    client = redis_client(redis_url, redis_options or RedisOptions())
    return RedisUsageStore(client, retention_s=retention_s, prefix=prefix)
