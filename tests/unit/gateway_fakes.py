"""A fake pool backend and recorder: they isolate the gateway from Ray and vLLM."""

import asyncio

from ray.serve.llm.openai_api_models import ChatCompletionResponse

from service.telemetry.metrics import RequestOutcome


def chat_body(model="gemma-4", **extra):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def chat_response(model: str) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id="chatcmpl-1",
        model=model,
        choices=[
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    )


class FakeStream:
    def __init__(self, items, delay_s=0.0):
        self._items = list(items)
        self._delay_s = delay_s
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(self._delay_s)
        if not self._items:
            raise StopAsyncIteration
        item = self._items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class FakeBackend:
    """Answers like a pool: records what it was asked, replays scripted items."""

    def __init__(self):
        self.calls = []
        self.script = None
        self.delay_s = 0.0
        self.streams = []

    def stream(self, pool_id, method, request, trace_headers, checks=False, request_id=""):
        self.calls.append((pool_id, method, request))
        self.trace_headers = trace_headers
        items = self.script(request) if self.script else [chat_response(request.model)]
        stream = FakeStream(items, self.delay_s)
        self.streams.append(stream)
        return stream


class RecordingRecorder:
    """Keeps what the gateway would export, for assertions."""

    def __init__(self):
        self.outcomes: list[RequestOutcome] = []
        self.decisions: list[tuple[str, str]] = []
        self.in_flight_counts: dict[str, int] = {}

    def routed(self, pool, reason):
        self.decisions.append((pool, reason))

    def finished(self, outcome):
        self.outcomes.append(outcome)

    def in_flight(self, pool, count):
        self.in_flight_counts[pool] = count
