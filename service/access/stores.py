"""The stores a gateway replica counts in: Redis when a URL is given (any number of gateway
replicas share it), else memory (one replica)."""

from __future__ import annotations

from service.access.limits import RateLimiter
from service.access.memory_limiter import MemoryRateLimiter
from service.access.redis_connection import RedisOptions, redis_client
from service.access.redis_limiter import RedisRateLimiter
from service.access.usage import RETENTION_S, MemoryUsageStore, RedisUsageStore, UsageStore


def build_limiter(
    redis_url: str | None,
    *,
    lease_ttl_s: float,
    prefix: str = "gs:",
    redis_options: RedisOptions | None = None,
) -> RateLimiter:
    if redis_url is None:
        return MemoryRateLimiter(lease_ttl_s=lease_ttl_s)
    client = redis_client(redis_url, redis_options or RedisOptions())
    return RedisRateLimiter(client, lease_ttl_s=lease_ttl_s, prefix=prefix)


def build_usage_store(
    redis_url: str | None,
    *,
    retention_s: int = RETENTION_S,
    prefix: str = "gs:",
    redis_options: RedisOptions | None = None,
) -> UsageStore:
    if redis_url is None:
        return MemoryUsageStore(retention_s=retention_s)
    client = redis_client(redis_url, redis_options or RedisOptions())
    return RedisUsageStore(client, retention_s=retention_s, prefix=prefix)
