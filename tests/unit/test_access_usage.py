"""Usage accounting per tenant and model, on both backends: in memory, and Redis shared by
gateway replicas. Every test that takes `stores` runs against both; time is injected."""

import asyncio
import time
import uuid

import pytest

from service.access.redis_connection import redis_client
from service.access.stores import build_usage_store
from service.access.usage import (
    RETENTION_S,
    MemoryUsageStore,
    RedisUsageStore,
    UsageRow,
    UsageUnavailable,
)
from service.local_ports import free_port
from tests.unit.redis_server import PATIENT

T0 = 1_000_020.0  # on a minute boundary (16667 * 60)
HOUR_S = 3600


@pytest.fixture(params=["memory", "redis"])
async def stores(request):
    """`stores(n)` gives the usage stores of n gateway replicas: separate Redis clients on one
    server, or (in memory) the one store, since in-memory usage is one replica's only."""
    made = []
    if request.param == "memory":
        shared: dict[int, MemoryUsageStore] = {}

        def make(n=1, retention_s=RETENTION_S):
            store = shared.setdefault(retention_s, MemoryUsageStore(retention_s=retention_s))
            return [store] * n
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test-{uuid.uuid4().hex[:8]}:"

        def make(n=1, retention_s=RETENTION_S):
            new = [
                RedisUsageStore(redis_client(url, PATIENT), retention_s=retention_s, prefix=prefix)
                for _ in range(n)
            ]
            made.extend(new)
            return new

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
def store(stores):
    return stores(1)[0]


async def test_usage_is_summed_per_tenant_and_model(store):
    await store.record("acme", "gemma-4-31b-it", 100, 20, now=T0)
    await store.record("acme", "gemma-4-31b-it", 50, 5, now=T0 + 1)
    await store.record("acme", "gemma-4-26b-a4b-it", 7, 3, now=T0 + 2)
    assert await store.report(HOUR_S, now=T0 + 10) == [
        UsageRow("acme", "gemma-4-26b-a4b-it", requests=1, prompt_tokens=7, completion_tokens=3),
        UsageRow("acme", "gemma-4-31b-it", requests=2, prompt_tokens=150, completion_tokens=25),
    ]


async def test_rows_are_sorted_by_tenant_then_model(store):
    for tenant, model in [("globex", "b"), ("acme", "b"), ("globex", "a"), ("acme", "a")]:
        await store.record(tenant, model, 1, 1, now=T0)
    rows = await store.report(60, now=T0)
    assert [(r.tenant, r.model) for r in rows] == [
        ("acme", "a"),
        ("acme", "b"),
        ("globex", "a"),
        ("globex", "b"),
    ]


async def test_usage_spread_over_minutes_is_summed_across_them(store):
    for minute in range(10):
        await store.record("acme", "m", 10, 1, now=T0 + minute * 60 + 30)
    (row,) = await store.report(HOUR_S, now=T0 + 600)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (10, 100, 10)


async def test_a_report_leaves_out_the_minutes_before_its_window(store):
    await store.record("acme", "m", 1, 1, now=T0 + 30)  # minute [T0, T0+60)
    await store.record("acme", "m", 2, 2, now=T0 + 150)  # minute [T0+120, T0+180)
    (row,) = await store.report(60, now=T0 + 170)
    assert row.prompt_tokens == 2


async def test_a_report_counts_whole_minutes_overlapping_its_window(store):
    """The resolution is a minute: a window starting mid-minute takes that whole minute."""
    await store.record("acme", "m", 1, 1, now=T0 + 5)
    (row,) = await store.report(60, now=T0 + 90)  # window (T0+30, T0+90] overlaps [T0, T0+60)
    assert row.requests == 1


async def test_usage_after_the_report_time_is_not_counted(store):
    await store.record("acme", "m", 1, 1, now=T0 + 120)
    assert await store.report(60, now=T0 + 30) == []


async def test_an_empty_store_reports_no_rows(store):
    assert await store.report(60, now=T0) == []


async def test_a_window_as_long_as_the_retention_is_answered(stores):
    (store,) = stores(1, retention_s=HOUR_S)
    await store.record("acme", "m", 1, 1, now=T0)
    assert len(await store.report(HOUR_S, now=T0 + HOUR_S - 1)) == 1


async def test_by_default_a_report_may_cover_the_last_day(store):
    await store.record("acme", "m", 1, 1, now=T0)
    assert len(await store.report(24 * HOUR_S, now=T0 + 24 * HOUR_S - 1)) == 1


async def test_a_window_longer_than_the_retention_is_refused(stores):
    (store,) = stores(1, retention_s=HOUR_S)
    with pytest.raises(ValueError, match="usage retention"):
        await store.report(HOUR_S + 1, now=T0)


@pytest.mark.parametrize("window_s", [0, -60])
async def test_an_empty_window_is_refused(store, window_s):
    with pytest.raises(ValueError, match="window_s"):
        await store.report(window_s, now=T0)


@pytest.mark.parametrize(("tenant", "model"), [("a|b", "m"), ("acme", "m|x"), ("", "m")])
async def test_ids_that_could_not_be_split_back_are_refused(store, tenant, model):
    with pytest.raises(ValueError, match="is empty or contains"):
        await store.record(tenant, model, 1, 1, now=T0)


async def test_negative_token_counts_are_refused(store):
    with pytest.raises(ValueError, match="must not be negative"):
        await store.record("acme", "m", -1, 0, now=T0)


async def test_replicas_recording_concurrently_add_up(stores):
    a, b = stores(2)
    await asyncio.gather(
        *((a if i % 2 else b).record("acme", "m", 3, 2, now=T0 + i * 0.1) for i in range(200))
    )
    (row,) = await a.report(60, now=T0 + 30)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (200, 600, 400)


async def test_without_a_time_the_current_time_is_used(store):
    await store.record("acme", "m", 1, 1)
    assert len(await store.report(60)) == 1


# --- Choosing the backend, and Redis specifics ---------------------------------------------------


def test_without_a_redis_url_usage_is_kept_in_memory():
    assert isinstance(build_usage_store(None), MemoryUsageStore)


async def test_with_a_redis_url_usage_is_shared_through_redis():
    store = build_usage_store("redis://127.0.0.1:1/0")  # connects lazily
    assert isinstance(store, RedisUsageStore)
    await store.aclose()


async def test_in_memory_old_minutes_are_dropped_after_the_retention():
    store = MemoryUsageStore(retention_s=HOUR_S)
    await store.record("acme", "m", 1, 1, now=T0)
    await store.record("acme", "m", 1, 1, now=T0 + HOUR_S + 60)  # T0's minute is now gone
    assert len(store._minutes) == 1


async def test_redis_minutes_expire_a_retention_after_they_end(redis_url):
    client = redis_client(redis_url, PATIENT)
    store = RedisUsageStore(redis_client(redis_url, PATIENT), retention_s=HOUR_S, prefix="ttl:")
    now = time.time()
    await store.record("acme", "m", 1, 1, now=now)
    keys = [key.decode() async for key in client.scan_iter("ttl:usage:*")]
    assert keys == [f"ttl:usage:{int(now // 60 * 60)}"]
    assert HOUR_S <= await client.ttl(keys[0]) <= HOUR_S + 60
    await client.aclose()
    await store.aclose()


async def test_an_unreachable_redis_raises_usage_unavailable():
    store = RedisUsageStore(redis_client(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(UsageUnavailable):
        await store.record("acme", "m", 1, 1, now=T0)
    with pytest.raises(UsageUnavailable):
        await store.report(60, now=T0)
    await store.aclose()
