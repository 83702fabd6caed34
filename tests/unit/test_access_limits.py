"""Per-tenant rate limits, on both backends: in memory, and Redis shared by gateway replicas.

Every test that takes `replicas` runs twice: against the in-memory limiter and against a real
redis-server. Time is injected (`now=`), so a minute of traffic takes milliseconds.
"""

import asyncio
import math
import time
import uuid

import pytest
import redis.exceptions

from service.access.limits import Lease, LimiterUnavailable, Limits, format_duration
from service.access.memory_limiter import MemoryRateLimiter
from service.access.redis_connection import RedisOptions, redis_client
from service.access.redis_limiter import RedisRateLimiter
from service.access.stores import build_limiter
from service.local_ports import free_port
from tests.unit.redis_server import PATIENT, lossy_limiter

T0 = 1_000_000.0  # a whole second, so bucket arithmetic in the tests is easy to follow
LEASE_TTL_S = 30.0


@pytest.fixture(params=["memory", "redis"])
async def replicas(request):
    """`replicas(n)` gives the limiters of n gateway replicas. On Redis each has its own client
    (as separate processes would); in memory all n are the one limiter, since in-memory limits
    hold for a single replica only."""
    made = []
    if request.param == "memory":
        shared = MemoryRateLimiter(lease_ttl_s=LEASE_TTL_S)

        def make(n=1):
            return [shared] * n
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test-{uuid.uuid4().hex[:8]}:"  # each test its own namespace

        def make(n=1):
            new = [
                RedisRateLimiter(redis_client(url, PATIENT), lease_ttl_s=LEASE_TTL_S, prefix=prefix)
                for _ in range(n)
            ]
            made.extend(new)
            return new

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
def limiter(replicas):
    return replicas(1)[0]


async def admit(limiter, limits, now, tokens=0, tenant="acme"):
    return await limiter.admit(
        tenant, limits, request_id=uuid.uuid4().hex, estimated_tokens=tokens, now=now
    )


# --- Requests per minute ------------------------------------------------------------------------


async def test_requests_beyond_the_per_minute_limit_are_refused(limiter):
    limits = Limits(requests_per_minute=3)
    results = [await admit(limiter, limits, T0 + i) for i in range(4)]
    assert [r.admitted for r in results] == [True, True, True, False]
    assert results[3].limited_by == "requests"
    assert results[3].lease is None


async def test_the_window_slides_a_second_at_a_time(limiter):
    limits = Limits(requests_per_minute=2)
    assert (await admit(limiter, limits, T0 + 0.5)).admitted
    assert (await admit(limiter, limits, T0 + 30.5)).admitted
    assert not (await admit(limiter, limits, T0 + 59.9)).admitted
    assert (await admit(limiter, limits, T0 + 60.0)).admitted  # the T0 second has left
    assert not (await admit(limiter, limits, T0 + 61.0)).admitted  # T0+30 is still in


async def test_retry_after_for_requests_is_when_the_oldest_request_leaves_the_window(limiter):
    limits = Limits(requests_per_minute=2)
    await admit(limiter, limits, T0 + 0.5)
    await admit(limiter, limits, T0 + 10.2)
    refused = await admit(limiter, limits, T0 + 20.0)
    assert refused.retry_after_s == 40  # the T0 bucket leaves at T0 + 60
    assert not (await admit(limiter, limits, T0 + 20.0 + refused.retry_after_s - 1)).admitted
    assert (await admit(limiter, limits, T0 + 20.0 + refused.retry_after_s)).admitted


async def test_retry_after_is_rounded_up_to_a_whole_second_and_is_at_least_one(limiter):
    limits = Limits(requests_per_minute=1)
    await admit(limiter, limits, T0)
    assert (await admit(limiter, limits, T0 + 30.4)).retry_after_s == 30  # 29.6 s, rounded up
    assert (await admit(limiter, limits, T0 + 59.99)).retry_after_s == 1


async def test_tenants_are_limited_independently(limiter):
    limits = Limits(requests_per_minute=1)
    assert (await admit(limiter, limits, T0, tenant="acme")).admitted
    assert (await admit(limiter, limits, T0, tenant="globex")).admitted
    assert not (await admit(limiter, limits, T0, tenant="acme")).admitted


# --- Tokens per minute --------------------------------------------------------------------------


async def test_tokens_are_charged_at_admission_as_the_estimate(limiter):
    limits = Limits(tokens_per_minute=1000)
    assert (await admit(limiter, limits, T0, tokens=600)).admitted
    refused = await admit(limiter, limits, T0 + 1, tokens=500)
    assert (refused.admitted, refused.limited_by) == (False, "tokens")
    assert (await admit(limiter, limits, T0 + 1, tokens=400)).admitted


async def test_retry_after_for_tokens_is_when_enough_tokens_leave_the_window(limiter):
    limits = Limits(tokens_per_minute=1000)
    await admit(limiter, limits, T0, tokens=300)
    await admit(limiter, limits, T0 + 10, tokens=600)
    # 400 more needs 300 gone: the T0 bucket alone, at T0 + 60.
    assert (await admit(limiter, limits, T0 + 20, tokens=400)).retry_after_s == 40
    # 500 more needs 400 gone: T0's 300 is not enough, T0+10's leaves at T0 + 70.
    assert (await admit(limiter, limits, T0 + 20, tokens=500)).retry_after_s == 50


async def test_an_estimate_above_the_token_limit_is_admitted_into_an_empty_window(limiter):
    limits = Limits(tokens_per_minute=1000)
    assert (await admit(limiter, limits, T0, tokens=5000)).admitted


async def test_an_estimate_above_the_token_limit_waits_for_an_empty_window(limiter):
    limits = Limits(tokens_per_minute=1000)
    await admit(limiter, limits, T0 + 5, tokens=1)
    refused = await admit(limiter, limits, T0 + 10, tokens=5000)
    assert (refused.admitted, refused.retry_after_s) == (False, 55)
    assert (await admit(limiter, limits, T0 + 65, tokens=5000)).admitted


async def test_an_oversized_admission_is_charged_in_full(limiter):
    limits = Limits(tokens_per_minute=1000)
    await admit(limiter, limits, T0, tokens=5000)
    refused = await admit(limiter, limits, T0 + 1, tokens=1)
    assert (refused.admitted, refused.retry_after_s) == (False, 59)


# --- Settling: the real token count, and the concurrency slot ----------------------------------


async def test_settle_corrects_the_token_charge_to_the_real_usage(limiter):
    limits = Limits(tokens_per_minute=1000)
    lease = (await admit(limiter, limits, T0, tokens=900)).lease
    await limiter.settle(lease, actual_tokens=100, now=T0 + 5)
    assert (await admit(limiter, limits, T0 + 6, tokens=900)).admitted
    assert not (await admit(limiter, limits, T0 + 6, tokens=1)).admitted


async def test_settle_may_charge_more_than_the_estimate(limiter):
    limits = Limits(tokens_per_minute=1000)
    lease = (await admit(limiter, limits, T0, tokens=100)).lease
    await limiter.settle(lease, actual_tokens=900, now=T0 + 5)
    assert not (await admit(limiter, limits, T0 + 6, tokens=200)).admitted


async def test_settle_without_a_usage_keeps_the_estimate(limiter):
    limits = Limits(tokens_per_minute=1000)
    lease = (await admit(limiter, limits, T0, tokens=900)).lease
    await limiter.settle(lease, actual_tokens=None, now=T0 + 5)
    assert not (await admit(limiter, limits, T0 + 6, tokens=200)).admitted


async def test_settle_is_idempotent(limiter):
    limits = Limits(tokens_per_minute=1000, max_concurrent_requests=2)
    first = (await admit(limiter, limits, T0, tokens=900)).lease
    await admit(limiter, limits, T0, tokens=0)
    await limiter.settle(first, actual_tokens=100, now=T0 + 1)
    await limiter.settle(first, actual_tokens=100, now=T0 + 1)  # a second exit path
    assert first.settled
    assert (await admit(limiter, limits, T0 + 2, tokens=900)).admitted  # 100 + 900: corrected once
    assert not (await admit(limiter, limits, T0 + 2, tokens=0)).admitted  # one slot freed, not two


async def test_a_generation_longer_than_the_window_is_charged_its_excess_when_it_ends(limiter):
    limits = Limits(tokens_per_minute=1000)
    lease = (await admit(limiter, limits, T0, tokens=100)).lease
    await limiter.settle(lease, actual_tokens=900, now=T0 + 61)  # a 61 s generation
    assert not (await admit(limiter, limits, T0 + 62, tokens=300)).admitted  # 800 charged now
    assert (await admit(limiter, limits, T0 + 62, tokens=200)).admitted


async def test_a_refund_after_the_bucket_left_the_window_changes_nothing(limiter):
    limits = Limits(tokens_per_minute=1000)
    lease = (await admit(limiter, limits, T0, tokens=900)).lease
    await limiter.settle(lease, actual_tokens=10, now=T0 + 61)
    assert (await admit(limiter, limits, T0 + 61, tokens=1000)).admitted
    assert not (await admit(limiter, limits, T0 + 61, tokens=1)).admitted


async def test_concurrency_slots_are_held_until_settled(limiter):
    limits = Limits(max_concurrent_requests=2)
    first = (await admit(limiter, limits, T0)).lease
    await admit(limiter, limits, T0)
    refused = await admit(limiter, limits, T0)
    assert (refused.admitted, refused.limited_by, refused.retry_after_s) == (
        False,
        "concurrency",
        1,
    )
    await limiter.settle(first, actual_tokens=None, now=T0 + 1)
    assert (await admit(limiter, limits, T0 + 1)).admitted


async def test_a_crashed_replicas_slots_free_when_their_leases_expire(limiter):
    limits = Limits(max_concurrent_requests=2)
    await admit(limiter, limits, T0)  # never settled: the replica died
    await admit(limiter, limits, T0)
    assert not (await admit(limiter, limits, T0 + LEASE_TTL_S - 0.1)).admitted
    assert (await admit(limiter, limits, T0 + LEASE_TTL_S)).admitted


async def test_a_reused_request_id_takes_its_own_concurrency_slot(limiter):
    limits = Limits(max_concurrent_requests=2)
    for _ in range(2):
        await limiter.admit("acme", limits, request_id="same", estimated_tokens=0, now=T0)
    refused = await limiter.admit("acme", limits, request_id="same", estimated_tokens=0, now=T0)
    assert not refused.admitted


# --- What a refusal reports ----------------------------------------------------------------------


async def test_a_refusal_charges_nothing(limiter):
    limits = Limits(requests_per_minute=5, tokens_per_minute=100)
    await admit(limiter, limits, T0, tokens=100)
    for _ in range(10):
        assert (await admit(limiter, limits, T0 + 1, tokens=50)).limited_by == "tokens"
    admitted = await admit(limiter, limits, T0 + 60, tokens=10)
    assert admitted.headers["x-ratelimit-remaining-requests"] == "4"  # only its own request


async def test_a_refusal_names_the_limit_with_the_longest_wait(limiter):
    limits = Limits(requests_per_minute=2, tokens_per_minute=100, max_concurrent_requests=2)
    await admit(limiter, limits, T0, tokens=0)
    await admit(limiter, limits, T0 + 10, tokens=100)
    refused = await admit(limiter, limits, T0 + 20, tokens=50)
    # requests could go at T0 + 60, tokens at T0 + 70, concurrency in a second: tokens bind.
    assert (refused.limited_by, refused.retry_after_s) == ("tokens", 50)


async def test_headers_give_limit_remaining_and_time_to_a_full_window(limiter):
    limits = Limits(requests_per_minute=10, tokens_per_minute=1000)
    admission = await admit(limiter, limits, T0 + 0.25, tokens=100)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "59.75s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "59.75s",
    }


async def test_headers_on_a_refusal_show_nothing_remaining(limiter):
    limits = Limits(requests_per_minute=1)
    await admit(limiter, limits, T0)
    refused = await admit(limiter, limits, T0 + 20.5)
    assert refused.headers == {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "39.5s",
    }


async def test_headers_cover_only_the_limits_that_are_set(limiter):
    requests_only = await admit(limiter, Limits(requests_per_minute=5), T0)
    assert set(requests_only.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert (await admit(limiter, Limits(max_concurrent_requests=5), T0)).headers == {}


async def test_a_tenant_without_limits_is_always_admitted(limiter):
    for _ in range(100):
        admission = await admit(limiter, Limits(), T0, tokens=10**9)
        assert admission.admitted and admission.headers == {} and admission.lease is not None
    await limiter.settle(admission.lease, actual_tokens=5, now=T0)


# --- Several replicas, many tasks at once ---------------------------------------------------------


async def test_concurrent_admissions_at_one_instant_admit_exactly_the_limit(replicas):
    a, b = replicas(2)
    limits = Limits(requests_per_minute=10, tokens_per_minute=250)
    results = await asyncio.gather(
        *(admit(a if i % 2 else b, limits, T0, tokens=10) for i in range(100))
    )
    assert sum(r.admitted for r in results) == 10


async def test_concurrent_token_charges_admit_exactly_what_fits(replicas):
    a, b = replicas(2)
    limits = Limits(tokens_per_minute=250)
    results = await asyncio.gather(
        *(admit(a if i % 2 else b, limits, T0, tokens=10) for i in range(100))
    )
    assert sum(r.admitted for r in results) == 25


async def test_the_concurrency_limit_is_exact_under_concurrent_admissions(replicas):
    a, b = replicas(2)
    limits = Limits(max_concurrent_requests=5)
    results = await asyncio.gather(*(admit(a if i % 2 else b, limits, T0) for i in range(50)))
    assert sum(r.admitted for r in results) == 5


async def test_two_replicas_admit_60_of_200_requests_spread_over_a_minute(replicas):
    """The requirement is 60 ± 3; one atomic script per admission makes it exact. All 200 run
    concurrently, so the replicas' admissions interleave in any order."""
    a, b = replicas(2)
    limits = Limits(requests_per_minute=60)
    results = await asyncio.gather(
        *(admit(a if i % 2 else b, limits, T0 + i * 0.3) for i in range(200))
    )
    admitted = sum(r.admitted for r in results)
    print(f"admitted {admitted} of 200 at 60 rpm over one minute, two replicas")
    assert admitted == 60


async def test_over_two_minutes_no_sliding_window_holds_more_than_the_limit(replicas):
    a, b = replicas(2)
    limits = Limits(requests_per_minute=60)
    arrivals = [T0 + i * 0.3 for i in range(400)]  # 10 every 3 s, for 120 s
    admitted_at: list[float] = []
    for second in range(120):  # each second's arrivals race each other, across both replicas
        batch = [t for t in arrivals if math.floor(t - T0) == second]
        results = await asyncio.gather(
            *(admit(a if i % 2 else b, limits, t) for i, t in enumerate(batch))
        )
        admitted_at += [t for t, r in zip(batch, results, strict=True) if r.admitted]
    seconds = [math.floor(t) for t in admitted_at]
    assert max(sum(1 for s in seconds if end - 60 < s <= end) for end in seconds) == 60
    assert len(admitted_at) == 120  # the arrival pattern repeats every 60 s: 60 per minute


# --- Inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [{"requests_per_minute": 0}, {"tokens_per_minute": -1}, {"max_concurrent_requests": 0}],
)
def test_limits_are_positive_or_unset(limits):
    with pytest.raises(ValueError, match="at least 1"):
        Limits(**limits)


@pytest.mark.parametrize("tenant", ["", "ac{me}", "a|b", "a b"])
async def test_a_tenant_id_that_could_break_a_key_is_refused(limiter, tenant):
    with pytest.raises(ValueError, match="tenant id"):
        await admit(limiter, Limits(requests_per_minute=1), T0, tenant=tenant)


async def test_a_negative_token_estimate_is_refused(limiter):
    with pytest.raises(ValueError, match="estimated_tokens"):
        await admit(limiter, Limits(tokens_per_minute=1), T0, tokens=-1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0004, "1ms"), (0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (59.75, "59.75s"),
     (60, "1m0s"), (61.25, "1m1.25s")],
)  # fmt: skip
def test_reset_durations_are_written_like_openais(seconds, text):
    assert format_duration(seconds) == text


# --- Choosing the backend -------------------------------------------------------------------------


def test_without_a_redis_url_the_limiter_is_in_memory():
    assert isinstance(build_limiter(None, lease_ttl_s=30), MemoryRateLimiter)


async def test_with_a_redis_url_the_limiter_is_shared_through_redis():
    limiter = build_limiter("redis://127.0.0.1:1/0", lease_ttl_s=30)  # connects lazily
    assert isinstance(limiter, RedisRateLimiter)
    await limiter.aclose()


async def test_in_memory_limits_hold_for_one_replica_only():
    """Why several gateway replicas need Redis: each in-memory limiter counts alone."""
    limits = Limits(requests_per_minute=1)
    replica_a, replica_b = (MemoryRateLimiter(lease_ttl_s=30) for _ in range(2))
    assert (await admit(replica_a, limits, T0)).admitted
    assert (await admit(replica_b, limits, T0)).admitted


# --- Redis specifics ------------------------------------------------------------------------------


async def test_redis_keys_carry_the_prefix_and_the_tenant_id_only(redis_url):
    client = redis_client(redis_url, PATIENT)
    limiter = RedisRateLimiter(
        redis_client(redis_url, PATIENT), lease_ttl_s=LEASE_TTL_S, prefix="pfx:"
    )
    limits = Limits(requests_per_minute=5, tokens_per_minute=50, max_concurrent_requests=2)
    admission = await admit(limiter, limits, time.time(), tokens=5)
    keys = sorted([key.decode() async for key in client.scan_iter("pfx:*")])
    record = f"pfx:rl:{{acme}}:adm:{admission.lease.record}"  # a random id, not the request's
    assert keys == [record, "pfx:rl:{acme}:conc", "pfx:rl:{acme}:req", "pfx:rl:{acme}:tok"]
    assert 0 < await client.ttl("pfx:rl:{acme}:req") <= 120
    assert 0 < await client.ttl(record) <= 120
    assert 0 < await client.ttl("pfx:rl:{acme}:conc") <= LEASE_TTL_S + 1
    await client.aclose()
    await limiter.aclose()


async def test_without_a_time_redis_uses_its_own_clock(redis_url):
    limiter = RedisRateLimiter(
        redis_client(redis_url, PATIENT), lease_ttl_s=LEASE_TTL_S, prefix="clock:"
    )
    limits = Limits(requests_per_minute=1)
    first = await limiter.admit("acme", limits, request_id="r1", estimated_tokens=0)
    assert abs(first.lease.second - time.time()) < 5
    second = await limiter.admit("acme", limits, request_id="r2", estimated_tokens=0)
    assert (second.admitted, second.limited_by) == (False, "requests")
    await limiter.settle(first.lease, actual_tokens=3)
    await limiter.aclose()


async def test_an_unreachable_redis_raises_limiter_unavailable_quickly():
    limiter = RedisRateLimiter(
        redis_client(f"redis://127.0.0.1:{free_port()}/0"), lease_ttl_s=LEASE_TTL_S
    )
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await admit(limiter, Limits(requests_per_minute=1), T0)
    assert time.monotonic() - started < 1
    await limiter.aclose()


async def test_a_redis_that_does_not_answer_times_out_as_limiter_unavailable():
    async def swallow(reader, writer):
        while await reader.read(1 << 16):  # reads every command and never replies
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_client(f"redis://127.0.0.1:{port}/0", RedisOptions(socket_timeout_s=0.05))
    limiter = RedisRateLimiter(client, lease_ttl_s=LEASE_TTL_S)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable) as raised:
        await admit(limiter, Limits(requests_per_minute=1), T0)
    assert isinstance(raised.value.__cause__, redis.exceptions.TimeoutError)
    assert time.monotonic() - started < 1
    await limiter.aclose()
    server.close()


async def test_a_settle_against_a_redis_that_stays_down_gives_up_after_its_retry_time():
    limiter = RedisRateLimiter(
        redis_client(f"redis://127.0.0.1:{free_port()}/0"),
        lease_ttl_s=LEASE_TTL_S,
        settle_retry_s=1.0,
    )
    lease = Lease("acme", "r1", int(T0), 10, charged_tokens=True, slot="r1#00")
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await limiter.settle(lease, actual_tokens=20, now=T0)
    assert 0.5 <= time.monotonic() - started < 3  # retried, then gave up
    await limiter.aclose()


TOKENS_AND_SLOT = Limits(tokens_per_minute=150, max_concurrent_requests=1)


def own_limiter(redis_url: str) -> RedisRateLimiter:
    prefix = f"t-{uuid.uuid4().hex}:"
    return RedisRateLimiter(
        redis_client(redis_url, PATIENT), lease_ttl_s=LEASE_TTL_S, prefix=prefix
    )


def flaky_settles(limiter: RedisRateLimiter, failures: int, *, script_runs: bool) -> None:
    """The limiter's next `failures` settles time out: after the script ran, or before."""
    script = limiter._settle
    left = [failures]

    async def flaky(**kwargs):
        if left[0] == 0:
            return await script(**kwargs)
        left[0] -= 1
        if script_runs:
            await script(**kwargs)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    limiter._settle = flaky


async def test_a_settle_that_fails_while_redis_is_away_frees_the_slot_once_it_is_back(redis_url):
    limiter = own_limiter(redis_url)
    first = await admit(limiter, TOKENS_AND_SLOT, T0, tokens=100)
    flaky_settles(limiter, 2, script_runs=False)
    await limiter.settle(first.lease, actual_tokens=30, now=T0 + 1)
    assert (await admit(limiter, TOKENS_AND_SLOT, T0 + 2, tokens=120)).admitted
    await limiter.aclose()


async def test_a_settle_whose_reply_was_lost_is_retried_and_corrects_the_charge_once(redis_url):
    limiter = own_limiter(redis_url)
    first = await admit(limiter, TOKENS_AND_SLOT, T0, tokens=100)
    flaky_settles(limiter, 1, script_runs=True)
    await limiter.settle(first.lease, actual_tokens=30, now=T0 + 1)
    # 30 tokens used: twice corrected, the window would read -40 and admit 121.
    assert not (await admit(limiter, TOKENS_AND_SLOT, T0 + 2, tokens=121)).admitted
    assert (await admit(limiter, TOKENS_AND_SLOT, T0 + 2, tokens=120)).admitted
    await limiter.aclose()


async def test_a_tenant_without_limits_never_waits_on_redis():
    limiter = RedisRateLimiter(
        redis_client(f"redis://127.0.0.1:{free_port()}/0"), lease_ttl_s=LEASE_TTL_S
    )
    admission = await admit(limiter, Limits(), T0)
    assert admission.admitted
    await limiter.settle(admission.lease, actual_tokens=5, now=T0)
    await limiter.aclose()


async def lost_admission(limiter: RedisRateLimiter, tokens: int) -> Lease:
    with pytest.raises(LimiterUnavailable) as raised:
        await admit(limiter, TOKENS_AND_SLOT, T0, tokens=tokens)
    assert raised.value.pending is not None
    return raised.value.pending


async def test_settling_a_lost_admission_with_nothing_served_frees_its_slot_and_tokens(redis_url):
    limiter = lossy_limiter(redis_url)
    pending = await lost_admission(limiter, tokens=100)
    assert not (await admit(limiter, TOKENS_AND_SLOT, T0 + 1, tokens=100)).admitted  # charged
    await limiter.settle(pending, actual_tokens=0, now=T0 + 2)
    assert (await admit(limiter, TOKENS_AND_SLOT, T0 + 3, tokens=150)).admitted
    await limiter.aclose()


async def test_settling_a_lost_admission_corrects_its_charge_to_the_real_usage(redis_url):
    limiter = lossy_limiter(redis_url)
    pending = await lost_admission(limiter, tokens=100)
    await limiter.settle(pending, actual_tokens=30, now=T0 + 2)
    assert not (await admit(limiter, TOKENS_AND_SLOT, T0 + 3, tokens=121)).admitted
    assert (await admit(limiter, TOKENS_AND_SLOT, T0 + 3, tokens=120)).admitted
    await limiter.aclose()


async def test_a_lost_admission_that_never_reached_redis_settles_to_nothing(redis_url):
    limiter = lossy_limiter(redis_url, script_runs=False)
    pending = await lost_admission(limiter, tokens=100)
    await limiter.settle(pending, actual_tokens=30, now=T0 + 2)
    assert (await admit(limiter, TOKENS_AND_SLOT, T0 + 3, tokens=150)).admitted
    await limiter.aclose()


async def test_a_settled_admission_leaves_no_record_behind(redis_url):
    limiter = RedisRateLimiter(
        redis_client(redis_url, PATIENT), lease_ttl_s=LEASE_TTL_S, prefix=f"t-{uuid.uuid4().hex}:"
    )
    admission = await admit(limiter, TOKENS_AND_SLOT, T0, tokens=100)
    record = limiter.record_key("acme", admission.lease.record)
    assert await limiter._client.exists(record)
    await limiter.settle(admission.lease, actual_tokens=30, now=T0 + 1)
    assert not await limiter._client.exists(record)
    await limiter.aclose()


async def test_after_redis_restarts_empty_the_next_admission_works_and_counts_from_zero():
    from tests.unit.redis_server import redis_server

    port = free_port()
    limits = Limits(requests_per_minute=1)
    with redis_server(port=port) as url:
        limiter = RedisRateLimiter(redis_client(url, PATIENT), lease_ttl_s=LEASE_TTL_S)
        assert (await admit(limiter, limits, None)).admitted
        assert not (await admit(limiter, limits, None)).admitted
    with pytest.raises(LimiterUnavailable):  # down: refused quickly, not hung
        await admit(limiter, limits, None)
    with redis_server(port=port):  # back, empty, on the same address
        assert (await admit(limiter, limits, None)).admitted
    await limiter.aclose()


async def test_a_connection_cut_mid_command_under_uvloop_is_limiter_unavailable(redis_url):
    limiter = own_limiter(redis_url)

    async def cut(**kwargs):  # what redis-py raises under uvloop when its transport was closed
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    limiter._admit = cut
    with pytest.raises(LimiterUnavailable):
        await admit(limiter, TOKENS_AND_SLOT, T0, tokens=10)
    await limiter.aclose()
