"""The pool deployment: Ray Serve LLM's `LLMServer` (one vLLM engine per replica), with
stream batching that sends the first chunk at once.

Ray's Batcher waits a full interval (50 ms by default) before the first batch, which lands
on time-to-first-token; with batching off every token crosses an actor boundary and
throughput drops by a third (FACTS.md). Sending the first chunk immediately and batching
the rest keeps both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.batcher import Batcher

T = TypeVar("T")


class FirstChunkBatcher(Batcher[T]):
    """Yields the first item alone, as soon as it exists; then batches every interval."""

    async def stream(self) -> AsyncIterator[list[T]]:
        if self.interval_s == 0:
            async for item in super().stream():
                yield item
            return
        first = asyncio.ensure_future(self.queue.get())
        done = asyncio.ensure_future(self.done_event.wait())
        try:
            await asyncio.wait({first, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
        if first.done():
            yield [first.result()]
        else:
            first.cancel()
        async for batch in super().stream():
            yield batch


class PoolServer(LLMServer):
    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncIterator[list[T]]:
        return FirstChunkBatcher(generator, interval_ms=self._get_batch_interval_ms()).stream()

    async def engine_load(self) -> dict[str, Any]:
        """Requests this replica's engine holds (running or waiting)."""
        client = getattr(self.engine, "_engine_client", None)
        unfinished = client.get_num_unfinished_requests() if client is not None else 0
        return {"unfinished_requests": unfinished}
