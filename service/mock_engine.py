"""A mock LLM engine for data-plane benchmarks: no model and no compute, one token every
inter-token latency (ITL), so what is measured is the serving stack around it, as a GPU node
would see it (benchmarks/data_plane.py).

Ray Serve LLM takes it by import path, read in each replica process:
`RAYLLM_VLLM_ENGINE_CLS=service.mock_engine.MockEngine` (in the driver's environment before
`ray.init`, which Ray's processes inherit, or in the LLMConfig's runtime_env env_vars). It
answers both ways a replica is reached: `chat` for the Serve handle (SSE strings, as
VLLMEngine yields them) and `build_asgi_app` for HTTP (the pool's own server, or Ray's direct
streaming). Chunk ids say which one served: `chatcmpl-mock-handle-...` or `chatcmpl-mock-http-...`.

Timing: the role chunk at once, then token i at start + (i + 1) * ITL on the replica's event
loop (each deadline advances by one ITL from the last, not from when the sleep ended, so a
late wake-up does not push every later token back). A stream of N tokens takes N * ITL.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
)
from starlette.responses import JSONResponse, Response, StreamingResponse

from service import request_size
from service.ray_internals import LLMEngine, TokenizeResponse

ENGINE_CLS = "service.mock_engine.MockEngine"
ENGINE_CLS_ENV = "RAYLLM_VLLM_ENGINE_CLS"  # ray.llm._internal.serve.constants
ITL_ENV = "GEMMA_SERVE_MOCK_ITL_MS"
DEFAULT_ITL_MS = 20.0
DEFAULT_MAX_TOKENS = 16
DONE = "data: [DONE]\n\n"
ROUTE_HANDLE = "handle"
ROUTE_HTTP = "http"


class ChunkWriter:
    """One stream's SSE events in vLLM's chat.completion.chunk shape, compact JSON (the
    gateway finds the usage chunk by its `"choices":[],"usage":{` text)."""

    def __init__(self, chunk_id: str, model: str, created: int):
        head = json.dumps(
            {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model},
            separators=(",", ":"),
        )
        self._head = "data: " + head[:-1] + ',"choices":['

    def role(self) -> str:
        return (
            self._head + '{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def content(self, text: str) -> str:
        return (
            self._head + '{"index":0,"delta":{"content":' + json.dumps(text) + "},"
            '"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def finish(self, reason: str = "length") -> str:
        return (
            self._head
            + '{"index":0,"delta":{},"logprobs":null,"finish_reason":'
            + json.dumps(reason)
            + ',"stop_reason":null}]}\n\n'
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._head + '],"usage":' + json.dumps(usage, separators=(",", ":")) + "}\n\n"


def token_text(i: int) -> str:
    return f"t{i} "


def output_tokens(request: Any) -> int:
    """What the mock generates: max_completion_tokens, else max_tokens, else a default (it
    never stops early, as with ignore_eos)."""
    return request_size.requested_output(request) or DEFAULT_MAX_TOKENS


def prompt_tokens(messages: Any) -> int:
    """A rough prompt length (4 characters a token), for usage and tokenize."""
    chars = sum(len(json.dumps(m, default=str)) for m in messages or [])
    return max(1, chars // 4)


def wants_usage(request: Any) -> bool:
    options = getattr(request, "stream_options", None)
    return bool(options is not None and options.include_usage)


class MockEngine(LLMEngine):
    def __init__(self, llm_config: Any):
        self.llm_config = llm_config
        self.model_id = llm_config.model_id
        engine_kwargs = getattr(llm_config, "engine_kwargs", None) or {}
        self.max_model_len = int(engine_kwargs.get("max_model_len") or 2048)
        self.itl_s = float(os.environ.get(ITL_ENV, DEFAULT_ITL_MS)) / 1000

    async def start(self) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def routing_stats(self) -> dict:
        return {}

    async def resolve_lora(self, lora_model: Any) -> None:
        raise NotImplementedError("the mock engine has no LoRA")

    async def reset_prefix_cache(self) -> None:
        pass

    async def chat(
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncIterator[str | ChatCompletionResponse | ErrorResponse]:
        if request.stream:
            async for event in self.stream_events(request, ROUTE_HANDLE):
                yield event
        else:
            yield await self.complete(request, ROUTE_HANDLE)

    async def completions(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
        raise NotImplementedError("the mock engine serves chat completions only")
        yield  # an async generator, like the engine's own

    async def embeddings(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
        raise NotImplementedError("the mock engine serves chat completions only")
        yield

    async def transcriptions(
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncIterator[Any]:
        raise NotImplementedError("the mock engine serves chat completions only")
        yield

    async def tokenize(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
        """The pool's context check reads `.count` (only for a request that may overflow)."""
        messages = getattr(request, "messages", None)
        if messages is not None:
            count = prompt_tokens(messages)
        else:
            count = max(1, len(str(getattr(request, "prompt", ""))) // 4)
        yield TokenizeResponse(count=count, max_model_len=self.max_model_len, tokens=[0] * count)

    async def stream_events(self, request: Any, route: str) -> AsyncIterator[str]:
        n = output_tokens(request)
        writer = ChunkWriter(
            f"chatcmpl-mock-{route}-{uuid.uuid4().hex}",
            request.model or self.model_id,
            int(time.time()),
        )
        yield writer.role()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for i in range(n):
            next_at += self.itl_s
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield writer.content(token_text(i))
        yield writer.finish()
        if wants_usage(request):
            yield writer.usage(prompt_tokens(request.messages), n)
        yield DONE

    async def complete(self, request: Any, route: str) -> ChatCompletionResponse:
        n = output_tokens(request)
        await asyncio.sleep(n * self.itl_s)
        prompt = prompt_tokens(request.messages)
        return ChatCompletionResponse(
            id=f"chatcmpl-mock-{route}-{uuid.uuid4().hex}",
            model=request.model or self.model_id,
            choices=[
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(token_text(i) for i in range(n)),
                    },
                    "finish_reason": "length",
                }
            ],
            usage={"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
        )

    async def build_asgi_app(self) -> FastAPI:
        return build_app(self)


def _error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def build_app(engine: MockEngine) -> FastAPI:
    """The OpenAI surface a pool replica or Ray's direct streaming serves over HTTP."""
    app = FastAPI(title="mock-engine", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        try:
            # Parsed as vLLM's server parses it: that cost is part of a request's path.
            request = ChatCompletionRequest.model_validate_json(await raw.body())
        except ValueError as exc:
            return _error(400, str(exc))
        if request.stream:
            return StreamingResponse(
                engine.stream_events(request, ROUTE_HTTP), media_type="text/event-stream"
            )
        response = await engine.complete(request, ROUTE_HTTP)
        return Response(response.model_dump_json(), media_type="application/json")

    @app.post("/v1/completions")
    async def completions() -> Response:
        return _error(400, "the mock engine serves chat completions only")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "mock"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    return app
