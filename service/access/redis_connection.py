"""How a gateway replica connects to Redis, for the rate limits and the usage counters."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

# What a Redis call raises when the store is slow, down or cut off. Under uvloop, a connection
# Redis (or the network) closed mid-command raises RuntimeError ("unable to perform operation on
# <TCPTransport closed=True>") rather than a RedisError: seen with the store cut under load.
STORE_ERRORS = (RedisError, OSError, RuntimeError)


@dataclass(frozen=True)
class RedisOptions:
    """How a gateway replica talks to Redis. The limiter sits in every request's path, so every
    wait is short and bounded; a failure surfaces as LimiterUnavailable, quickly."""

    # Half a second: long enough for a busy gateway host's event loop to get back to the
    # socket (0.2 s timed out under a loaded 2-core CI run), short enough to fail open fast.
    socket_timeout_s: float = 0.5
    connect_timeout_s: float = 0.5
    # A burst of requests shares a few connections instead of opening one each: thousands of
    # simultaneous connects would themselves time out. A script takes about 60 µs in Redis, so
    # 32 connections carry more admissions than one Redis core (or one Python process) can.
    max_connections: int = 32
    pool_timeout_s: float = 0.5  # waiting for a free connection


def redis_client(url: str, options: RedisOptions = RedisOptions()) -> aioredis.Redis:
    """redis-py's default retries three times with up to 10 s of backoff; here a refused
    connection is retried once at once (a pooled connection gone stale after a Redis restart),
    and a timeout is not retried at all."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=options.max_connections,
        timeout=options.pool_timeout_s,
        socket_timeout=options.socket_timeout_s,
        socket_connect_timeout=options.connect_timeout_s,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)
