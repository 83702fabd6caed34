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
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# What a Redis call raises when the store is slow, down or cut off. Under uvloop, a connection
# Redis (or the network) closed mid-command raises RuntimeError ("unable to perform operation on
# <TCPTransport closed=True>") rather than a RedisError: seen with the store cut under load.
STORE_ERRORS = (RedisError, OSError, RuntimeError)

WINDOW_S = 60
# Buckets are read back for WINDOW_S; a hash outlives its last write by twice that, so an idle
# tenant's counters disappear on their own without ever expiring a live bucket.
BUCKET_TTL_S = 2 * WINDOW_S
# A refusal for concurrency cannot know when a slot frees (that is when some request ends):
# one second is a cheap poll interval.
CONCURRENCY_RETRY_S = 1
# A failed settle is retried with backoff from this delay, doubling up to the cap.
SETTLE_RETRY_FIRST_S = 0.5
SETTLE_RETRY_MAX_S = 15.0

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


class RateLimiter(Protocol):
    async def admit(
        self,
        tenant: str,
        limits: Limits,
        *,
        request_id: str,
        estimated_tokens: int,
        now: float | None = None,
    ) -> Admission: ...

    async def settle(
        self, lease: Lease, actual_tokens: int | None, now: float | None = None
    ) -> None: ...

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


def decide(
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


def _unlimited(tenant: str, request_id: str, estimated_tokens: int, now: float) -> Admission:
    lease = Lease(tenant, request_id, math.floor(now), estimated_tokens, False, None)
    return Admission(True, None, 0, {}, lease)


# --- In memory: one gateway replica --------------------------------------------------------------


@dataclass
class _TenantState:
    requests: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    slots: dict[str, float] = field(default_factory=dict)  # member -> lease expiry


def _prune(buckets: dict[int, int], second: int) -> list[tuple[int, int]]:
    for stale in [bucket for bucket in buckets if not in_window(second, bucket)]:
        del buckets[stale]
    return list(buckets.items())


class MemoryRateLimiter:
    """Exact for one process. Every method runs without awaiting, so asyncio tasks cannot
    interleave inside an admission. Two processes each count alone (docs/limits.md)."""

    def __init__(self, *, lease_ttl_s: float):
        self._lease_ttl_s = lease_ttl_s
        self._tenants: dict[str, _TenantState] = {}

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
        now = time.time() if now is None else now
        if not limits.any:
            return _unlimited(tenant, request_id, estimated_tokens, now)
        second = math.floor(now)
        state = self._tenants.setdefault(tenant, _TenantState())
        checks: dict[Window, WindowCheck] = {}
        if limits.requests_per_minute is not None:
            buckets = _prune(state.requests, second)
            checks["requests"] = check_window(buckets, limits.requests_per_minute, 1, now)
        if limits.tokens_per_minute is not None:
            buckets = _prune(state.tokens, second)
            checks["tokens"] = check_window(
                buckets, limits.tokens_per_minute, estimated_tokens, now
            )
        full = False
        if limits.max_concurrent_requests is not None:
            for member in [m for m, expiry in state.slots.items() if expiry <= now]:
                del state.slots[member]
            full = len(state.slots) >= limits.max_concurrent_requests
        limited_by, retry_after_s, headers = decide(checks, full, second, now)
        if limited_by is not None:
            return Admission(False, limited_by, retry_after_s, headers, None)
        if "requests" in checks:
            state.requests[second] = state.requests.get(second, 0) + 1
        if "tokens" in checks:
            state.tokens[second] = state.tokens.get(second, 0) + estimated_tokens
        slot = None
        if limits.max_concurrent_requests is not None:
            slot = _slot_member(request_id)
            state.slots[slot] = now + self._lease_ttl_s
        lease = Lease(tenant, request_id, second, estimated_tokens, "tokens" in checks, slot)
        return Admission(True, None, 0, headers, lease)

    async def settle(
        self, lease: Lease, actual_tokens: int | None, now: float | None = None
    ) -> None:
        if lease.settled:
            return
        lease.settled = True
        now = time.time() if now is None else now
        state = self._tenants.get(lease.tenant)
        if state is None:
            return
        if lease.slot is not None:
            state.slots.pop(lease.slot, None)
        delta = _token_correction(lease, actual_tokens)
        second = math.floor(now)
        bucket = lease.second
        if delta and bucket is not None and in_window(second, bucket) and bucket in state.tokens:
            state.tokens[bucket] += delta
        elif delta > 0:  # the lease's bucket has left the window: charge the excess now
            state.tokens[second] = state.tokens.get(second, 0) + delta

    async def aclose(self) -> None:
        self._tenants.clear()


def _slot_member(request_id: str) -> str:
    # Request ids may come from clients (x-request-id); a random suffix keeps a reused id from
    # sharing, and so bypassing, one concurrency slot.
    return f"{request_id}#{secrets.token_hex(4)}"


def _token_correction(lease: Lease, actual_tokens: int | None) -> int:
    if not lease.charged_tokens or actual_tokens is None:
        return 0
    return actual_tokens - lease.estimated_tokens


# --- Redis: any number of gateway replicas --------------------------------------------------------

# KEYS: requests hash, tokens hash, concurrency zset, admission record (one tenant: one Cluster
#       hash slot).
# ARGV: now ("" = Redis's clock), requests limit, tokens limit, token cost, concurrency limit
#       (0 = no such limit), slot member, lease TTL, bucket TTL, window.
# Returns: admitted (0/1), now (string: Lua numbers come back as integers), second,
#          requests buckets {second, amount, ...}, tokens buckets, concurrency full (0/1).
_ADMIT = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local second = math.floor(now)
local window = tonumber(ARGV[9])

local function live_buckets(key)
  local flat = redis.call('HGETALL', key)
  local live, stale, used = {}, {}, 0
  for i = 1, #flat, 2 do
    local bucket = tonumber(flat[i])
    if bucket > second - window then
      local amount = tonumber(flat[i + 1])
      live[#live + 1] = bucket
      live[#live + 1] = amount
      used = used + amount
    else
      stale[#stale + 1] = flat[i]
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return live, used
end

local function fits(used, cost, limit)
  return used + math.min(cost, limit) <= limit
end

local admitted = true
local req_limit, tok_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local tok_cost, conc_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local req_live, tok_live, full = {}, {}, 0
if req_limit > 0 then
  local used
  req_live, used = live_buckets(KEYS[1])
  if not fits(used, 1, req_limit) then admitted = false end
end
if tok_limit > 0 then
  local used
  tok_live, used = live_buckets(KEYS[2])
  if not fits(used, tok_cost, tok_limit) then admitted = false end
end
if conc_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc_limit then
    full = 1
    admitted = false
  end
end

if admitted then
  local bucket_ttl = tonumber(ARGV[8])
  if req_limit > 0 then
    redis.call('HINCRBY', KEYS[1], second, 1)
    redis.call('EXPIRE', KEYS[1], bucket_ttl)
  end
  if tok_limit > 0 then
    redis.call('HINCRBY', KEYS[2], second, tok_cost)
    redis.call('EXPIRE', KEYS[2], bucket_ttl)
  end
  if conc_limit > 0 then
    local lease_ttl = tonumber(ARGV[7])
    redis.call('ZADD', KEYS[3], now + lease_ttl, ARGV[6])
    redis.call('EXPIRE', KEYS[3], math.ceil(lease_ttl) + 1)
  end
  if tok_limit > 0 or conc_limit > 0 then
    -- Lives as long as the lease may: the settle of the longest request still finds it.
    local record_ttl = math.max(bucket_ttl, math.ceil(tonumber(ARGV[7])) + 1)
    redis.call('SET', KEYS[4], second, 'EX', record_ttl)
  end
end
return {admitted and 1 or 0, tostring(now), second, req_live, tok_live, full}
"""

# KEYS: tokens hash, concurrency zset, admission record. ARGV: now ("" = Redis's clock), the
# lease's second ("" = the record's), token correction, slot member ("" = none), window.
# Without a record the lease was never charged or is settled already: nothing to correct, so a
# settle run twice (a retry after a lost reply) corrects once.
_SETTLE = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
local recorded = redis.call('GET', KEYS[3])
if not recorded then return 0 end
redis.call('DEL', KEYS[3])
local lease_second = tonumber(ARGV[2]) or tonumber(recorded)
local delta = tonumber(ARGV[3])
local second = math.floor(now)
if delta ~= 0 and lease_second > second - tonumber(ARGV[5]) then
  redis.call('HINCRBY', KEYS[1], lease_second, delta)
elseif delta > 0 then
  -- The lease's bucket has left the window (a request longer than a minute): what it used
  -- beyond its estimate is charged now. A refund there would limit no one.
  redis.call('HINCRBY', KEYS[1], second, delta)
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[5])) end
end
return 1
"""


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


def _pairs(flat: Iterable[int | bytes]) -> list[tuple[int, int]]:
    values = [int(value) for value in flat]
    return list(zip(values[::2], values[1::2], strict=True))


class RedisRateLimiter:
    """Exact across replicas: every admission is one atomic script on the shared counters."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lease_ttl_s: float,
        prefix: str = "gs:",
        settle_retry_s: float | None = None,
    ):
        self._client = client
        self._lease_ttl_s = lease_ttl_s
        # Past the lease's end its slot has expired by itself: retrying longer frees nothing.
        self._settle_retry_s = lease_ttl_s if settle_retry_s is None else settle_retry_s
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def keys(self, tenant: str) -> list[str]:
        """The requests hash, tokens hash and concurrency set; {tenant} is a Cluster hash tag."""
        base = f"{self._prefix}rl:{{{tenant}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:conc"]

    def record_key(self, tenant: str, record: str) -> str:
        return f"{self._prefix}rl:{{{tenant}}}:adm:{record}"

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
            now = time.time() if now is None else now
            return _unlimited(tenant, request_id, estimated_tokens, now)
        slot = _slot_member(request_id) if limits.max_concurrent_requests is not None else None
        record = secrets.token_hex(8)
        args = [
            "" if now is None else repr(now),
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            estimated_tokens,
            limits.max_concurrent_requests or 0,
            slot or "",
            self._lease_ttl_s,
            BUCKET_TTL_S,
            WINDOW_S,
        ]
        keys = [*self.keys(tenant), self.record_key(tenant, record)]
        try:
            reply = await self._admit(keys=keys, args=args)
        except STORE_ERRORS as error:
            tpm = limits.tokens_per_minute is not None
            pending = Lease(tenant, request_id, None, estimated_tokens, tpm, slot, record)
            raise LimiterUnavailable(
                f"rate limit store unavailable: {error!r}", pending=pending
            ) from error
        ok, now_s, second, requests, tokens, full = reply
        now, second = float(now_s), int(second)
        checks: dict[Window, WindowCheck] = {}
        if limits.requests_per_minute is not None:
            checks["requests"] = check_window(_pairs(requests), limits.requests_per_minute, 1, now)
        if limits.tokens_per_minute is not None:
            checks["tokens"] = check_window(
                _pairs(tokens), limits.tokens_per_minute, estimated_tokens, now
            )
        limited_by, retry_after_s, headers = decide(checks, bool(full), second, now)
        if bool(ok) != (limited_by is None):
            # The script and `decide` apply one rule to the same buckets, so this is a bug; the
            # script's verdict stands, since it has already charged (or not).
            log.error("rate limit script and window check disagree for tenant %s", tenant)
        if not ok:
            return Admission(False, limited_by or "requests", max(1, retry_after_s), headers, None)
        charged = "tokens" in checks
        lease = Lease(tenant, request_id, second, estimated_tokens, charged, slot, record)
        return Admission(True, None, 0, headers, lease)

    async def settle(
        self, lease: Lease, actual_tokens: int | None, now: float | None = None
    ) -> None:
        if lease.settled:
            return
        lease.settled = True  # before the first await: a second caller does nothing
        delta = _token_correction(lease, actual_tokens)
        if lease.slot is None and not delta:
            return  # nothing to correct; an unread record expires on its own
        tokens, concurrency = self.keys(lease.tenant)[1:]
        record = self.record_key(lease.tenant, lease.record or "")
        second = "" if lease.second is None else lease.second
        args = ["" if now is None else repr(now), second, delta, lease.slot or "", WINDOW_S]
        give_up_at = time.monotonic() + self._settle_retry_s
        delay = SETTLE_RETRY_FIRST_S
        while True:
            try:
                await self._settle(keys=[tokens, concurrency, record], args=args)
                return
            except STORE_ERRORS as error:
                if time.monotonic() + delay > give_up_at:
                    raise LimiterUnavailable(f"rate limit store unavailable: {error!r}") from error
            await asyncio.sleep(delay)
            delay = min(2 * delay, SETTLE_RETRY_MAX_S)

    async def aclose(self) -> None:
        await self._client.aclose()


def build_limiter(
    redis_url: str | None,
    *,
    lease_ttl_s: float,
    prefix: str = "gs:",
    redis_options: RedisOptions | None = None,
) -> RateLimiter:
    """Redis when a URL is given (any number of gateway replicas), else in memory (one)."""
    if redis_url is None:
        return MemoryRateLimiter(lease_ttl_s=lease_ttl_s)
    client = redis_client(redis_url, redis_options or RedisOptions())
    return RedisRateLimiter(client, lease_ttl_s=lease_ttl_s, prefix=prefix)
