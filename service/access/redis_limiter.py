"""Rate limits in Redis: exact across any number of gateway replicas.

One Lua script per admission reads and charges a tenant's counters atomically, and leaves a
record under a random id naming the bucket it charged; settling a lease reads that record, so
an admission whose reply was lost is corrected (or refunded) as if the reply had arrived
(limits.py says more).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from service.access.limits import (
    BUCKET_TTL_S,
    WINDOW_S,
    Admission,
    Lease,
    LimiterUnavailable,
    Limits,
    RateLimiter,
    binding_limit,
    check_windows,
    slot_member,
)
from service.access.redis_connection import STORE_ERRORS

log = logging.getLogger(__name__)

# A failed settle is retried with backoff from this delay, doubling up to the cap.
SETTLE_RETRY_FIRST_S = 0.5
SETTLE_RETRY_MAX_S = 15.0

# Both scripts' first lines: `now` is ARGV[1], or Redis's own clock when that is "". A script
# that reads TIME must replicate its effects, not itself (needed before Redis 5).
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: requests hash, tokens hash, concurrency zset, admission record (one tenant: one Cluster
#       hash slot).
# ARGV: now ("" = Redis's clock), requests limit, tokens limit, token cost, concurrency limit
#       (0 = no such limit), slot member, lease TTL, bucket TTL, window.
# Returns: admitted (0/1), now (string: Lua numbers come back as integers), second,
#          requests buckets {second, amount, ...}, tokens buckets, concurrency full (0/1).
_ADMIT = (
    _NOW
    + """local second = math.floor(now)
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
)

# KEYS: tokens hash, concurrency zset, admission record. ARGV: now ("" = Redis's clock), the
# lease's second ("" = the record's), token correction, slot member ("" = none), window.
# Without a record the lease was never charged or is settled already: nothing to correct, so a
# settle run twice (a retry after a lost reply) corrects once.
_SETTLE = (
    _NOW
    + """if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
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
)


def _pairs(flat: Iterable[int | bytes]) -> list[tuple[int, int]]:
    values = [int(value) for value in flat]
    return list(zip(values[::2], values[1::2], strict=True))


class RedisRateLimiter(RateLimiter):
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

    async def _admit_limited(
        self,
        tenant: str,
        limits: Limits,
        request_id: str,
        estimated_tokens: int,
        now: float | None,
    ) -> Admission:
        slot = slot_member(request_id) if limits.max_concurrent_requests is not None else None
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
        buckets = {"requests": requests, "tokens": tokens}
        checks = check_windows(limits, estimated_tokens, now, lambda kind: _pairs(buckets[kind]))
        limited_by, retry_after_s, headers = binding_limit(checks, bool(full), second, now)
        if bool(ok) != (limited_by is None):
            # The script and `binding_limit` apply one rule to the same buckets, so this is a bug;
            # the script's verdict stands, since it has already charged (or not).
            log.error("rate limit script and window check disagree for tenant %s", tenant)
        if not ok:
            return Admission(False, limited_by or "requests", max(1, retry_after_s), headers, None)
        charged = "tokens" in checks
        lease = Lease(tenant, request_id, second, estimated_tokens, charged, slot, record)
        return Admission(True, None, 0, headers, lease)

    async def _settle_lease(self, lease: Lease, delta: int, now: float | None) -> None:
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
