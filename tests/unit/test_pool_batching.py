"""Stream batching in the pool: chunks pass at once until the first token, then go batched."""

import asyncio
import json

from service.pool import FirstTokenBatcher
from service.streaming import carries_output

ROLE = 'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'


def token(i: int) -> str:
    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': str(i)}}]})}\n\n"


async def chunks(items, gap_s=0.0):
    for item in items:
        await asyncio.sleep(gap_s)
        yield item


async def collect(batcher):
    return [batch async for batch in batcher.stream()]


async def test_first_token_is_not_held_for_the_batching_interval():
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = FirstTokenBatcher(chunks([ROLE, token(0), token(1)]), interval_ms=10_000).stream()
    assert await anext(stream) == [ROLE]
    assert await anext(stream) == [token(0)]
    assert loop.time() - started < 5  # far below the 10 s interval
    await stream.aclose()


async def test_later_chunks_arrive_batched_and_none_is_lost():
    items = [ROLE] + [token(i) for i in range(20)]
    batches = await collect(FirstTokenBatcher(chunks(items, 0.001), interval_ms=50))
    assert batches[:2] == [[ROLE], [token(0)]]
    assert [c for b in batches for c in b] == items
    assert len(batches) < len(items)


async def test_empty_stream_yields_nothing():
    assert await collect(FirstTokenBatcher(chunks([]), interval_ms=50)) == []


async def test_zero_interval_sends_every_chunk_alone():
    items = [token(0), token(1)]
    assert await collect(FirstTokenBatcher(chunks(items), interval_ms=0)) == [[i] for i in items]


async def test_engine_error_reaches_the_caller():
    async def failing():
        yield token(1)
        raise RuntimeError("engine died")

    stream = FirstTokenBatcher(failing(), interval_ms=10).stream()
    assert await anext(stream) == [token(1)]
    try:
        async for _ in stream:
            pass
    except RuntimeError as exc:
        assert "engine died" in str(exc)
    else:
        raise AssertionError("the error was swallowed")


def test_role_only_chunk_carries_no_output():
    assert not carries_output(ROLE)


def test_content_reasoning_tool_calls_and_text_carry_output():
    assert carries_output(token(0))
    reasoning = {"choices": [{"delta": {"reasoning": "hmm"}}]}
    assert carries_output(f"data: {json.dumps(reasoning)}\n\n")
    assert carries_output('data: {"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}\n\n')
    assert carries_output('data: {"choices": [{"index": 0, "text": "a"}]}\n\n')


def test_errors_and_unknown_items_count_as_output():
    assert carries_output('data: {"error": {"message": "x"}}\n\n')
    assert carries_output("data: [DONE]\n\n")
    assert carries_output(object())


def test_the_stats_probe_keeps_the_latest_scheduler_figures():
    from types import SimpleNamespace

    from service.pool import SchedulerStatsProbe

    probe = SchedulerStatsProbe()
    assert probe.at is None
    stats = SimpleNamespace(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.25)
    probe.record(stats, None, engine_idx=0)
    probe.record(None, None)  # iteration-only records leave the figures alone
    assert (probe.waiting, probe.kv_cache_usage) == (2, 0.25)
    assert probe.at is not None
