"""Stream batching in the pool: the first chunk goes at once, the rest in batches."""

import asyncio

from service.pool import FirstChunkBatcher


async def tokens(n, gap_s):
    for i in range(n):
        await asyncio.sleep(gap_s)
        yield i


async def collect(batcher):
    return [batch async for batch in batcher.stream()]


async def test_first_chunk_is_not_held_for_the_batching_interval():
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = FirstChunkBatcher(tokens(3, 0.0), interval_ms=10_000).stream()
    first = await anext(stream)
    assert first == [0]
    assert loop.time() - started < 5  # far below the 10 s interval
    await stream.aclose()


async def test_later_chunks_arrive_batched_and_none_is_lost():
    batches = await collect(FirstChunkBatcher(tokens(20, 0.001), interval_ms=50))
    assert batches[0] == [0]
    assert [t for b in batches for t in b] == list(range(20))
    assert len(batches) < 20


async def test_empty_stream_yields_nothing():
    assert await collect(FirstChunkBatcher(tokens(0, 0), interval_ms=50)) == []


async def test_zero_interval_sends_every_chunk_alone():
    assert await collect(FirstChunkBatcher(tokens(3, 0), interval_ms=0)) == [[0], [1], [2]]


async def test_engine_error_reaches_the_caller():
    async def failing():
        yield 1
        raise RuntimeError("engine died")

    stream = FirstChunkBatcher(failing(), interval_ms=10).stream()
    assert await anext(stream) == [1]
    try:
        async for _ in stream:
            pass
    except RuntimeError as exc:
        assert "engine died" in str(exc)
    else:
        raise AssertionError("the error was swallowed")
