"""The pool deployment: Ray Serve LLM's `LLMServer` (one vLLM engine per replica), with
stream batching that sends the first token at once.

Ray's Batcher waits a full interval (50 ms by default) before the first batch, which lands
on time-to-first-token; with batching off every token crosses an actor boundary and
throughput drops by a third (FACTS.md). Sending the first token immediately and batching
the rest keeps both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
)
from vllm.v1.metrics.loggers import StatLoggerBase

from service import (
    context_budget,
    forced_tool_calls,
    replica_directory,
    request_size,
    responses_prompt,
)
from service.autoscaling.decision import ENGINE_WAITING, HTTP_ONGOING, KV_CACHE_USAGE
from service.grammar import specs
from service.grammar.service import GrammarCompileService, TooSlow, engine_tokenizer_info_json
from service.pool_http import PoolHttpServer
from service.ray_internals import Batcher, LLMServer, TokenizeChatRequest, TokenizeCompletionRequest
from service.replica_directory import ReplicaEntry
from service.streaming import carries_output

T = TypeVar("T")
log = logging.getLogger(__name__)
POOL_HTTP_ENV = "GEMMA_SERVE_POOL_HTTP"


class FirstTokenBatcher(Batcher[T]):
    """Passes chunks through one by one until one carries output, then batches every interval.

    vLLM's chat stream opens with a role-only chunk; sending just that at once would still
    hold the first token back for a full interval.
    """

    async def stream(self) -> AsyncIterator[list[T]]:
        if self.interval_s == 0:
            async for item in super().stream():
                yield item
            return
        while True:
            item = await self._next_or_none()
            if item is None:
                break
            yield [item]
            if carries_output(item):
                break
        async for batch in super().stream():
            yield batch

    async def _next_or_none(self) -> T | None:
        """The next item, or None once the stream ended with nothing queued."""
        next_item = asyncio.ensure_future(self.queue.get())
        finished = asyncio.ensure_future(self.done_event.wait())
        try:
            await asyncio.wait({next_item, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
        if next_item.done():
            return next_item.result()
        next_item.cancel()
        return None if self.queue.empty() else self.queue.get_nowait()


class SchedulerStatsProbe(StatLoggerBase):
    """Keeps the engine's latest scheduler figures for routing (queue and KV-cache usage)."""

    def __init__(self, vllm_config: Any = None, engine_index: int = 0):
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.at: float | None = None

    def record(self, scheduler_stats: Any, iteration_stats: Any, **kwargs: Any) -> None:
        if scheduler_stats is not None:
            self.waiting = scheduler_stats.num_waiting_reqs
            self.kv_cache_usage = scheduler_stats.kv_cache_usage
            self.at = time.monotonic()

    def log_engine_initialized(self) -> None:
        pass


class PoolServer(LLMServer):
    async def start(self) -> None:
        responses_prompt.install()
        self._grammar = grammar_service(self._llm_config)
        if self._grammar is not None:
            # Before the engine starts: its EngineCore process inherits the address.
            os.environ.update(self._grammar.listen())
        await super().start()
        if self._grammar is not None:
            client = self.engine._engine_client
            info = await asyncio.to_thread(engine_tokenizer_info_json, client)
            await asyncio.to_thread(self._grammar.start, info)
        self._stats = SchedulerStatsProbe()
        manager = getattr(getattr(self.engine, "_engine_client", None), "logger_manager", None)
        if manager is not None:  # present whenever engine metrics are on (our default)
            manager.stat_loggers.append(self._stats)
        # Ray 2.60 looks vLLM's tokenizer service up under its pre-0.32 name and finds
        # nothing, which breaks tokenize (and our context check). Wire it by its new name.
        if getattr(self.engine, "_oai_serving_tokenization", False) is None:
            state = getattr(self.engine, "_app_state", None)
            self.engine._oai_serving_tokenization = getattr(state, "serving_tokenization", None)
        await self._serve_http()

    async def _serve_http(self) -> None:
        """vLLM's own app on a port of this node, announced to the gateways (the data plane)."""
        import ray
        from ray import serve

        if os.environ.get(POOL_HTTP_ENV, "1") == "0":
            return  # only to measure the Ray-handle path against this one (benchmarks/)
        app = await self.engine.build_asgi_app()
        self._http = PoolHttpServer(app, self._http_check)
        await self._http.start(ray.util.get_node_ip_address())
        context = serve.get_replica_context()
        self._app_name = context.app_name
        self._replica_id = context.replica_id.unique_id
        self._announcer = asyncio.create_task(self._announce_forever())

    async def _announce_forever(self) -> None:
        while not self._engine_dead():
            stats = self._stats
            entry = ReplicaEntry(
                pool_id=self._llm_config.model_id,
                replica_id=self._replica_id,
                url=self._http.url,
                ongoing=self._http.guard.ongoing,
                waiting=stats.waiting,
                kv_cache_usage=stats.kv_cache_usage,
                at=time.time(),
            )
            try:
                await asyncio.to_thread(replica_directory.announce, self._app_name, entry)
            except Exception:  # the GCS may be restarting: the next beat tries again
                log.warning("could not announce this pool replica", exc_info=True)
            await asyncio.sleep(replica_directory.ANNOUNCE_EVERY_S)
        # Gateways stop choosing it now, not when Serve's health check restarts it.
        log.error("the engine of this pool replica died: withdrawn from the gateways")
        self._http.guard.refusing = "engine dead"
        await asyncio.to_thread(self._withdraw)

    def _engine_dead(self) -> bool:
        client = getattr(self.engine, "_engine_client", None)
        return bool(getattr(client, "errored", False))

    def _withdraw(self) -> None:
        replica_directory.withdraw(self._app_name, self._llm_config.model_id, self._replica_id)

    async def __del__(self) -> None:
        """Serve calls this when the replica is removed: gateways stop sending to it, the
        requests they sent finish, then the engine stops."""
        if getattr(self, "_announcer", None) is not None:
            self._announcer.cancel()
            await asyncio.to_thread(self._withdraw)
            timeout_s = self._llm_config.deployment_config.get("graceful_shutdown_timeout_s", 20)
            await self._http.drain(timeout_s)
        if getattr(self, "_grammar", None) is not None:
            self._grammar.close()
        await super().__del__()

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncIterator[list[T]]:
        return FirstTokenBatcher(generator, interval_ms=self._get_batch_interval_ms()).stream()

    async def chat(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
        if error := await self._refusal(request):
            return _single(error)
        return await super().chat(request, raw_request_info)

    async def completions(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
        if error := await self._refusal(request):
            return _single(error)
        return await super().completions(request, raw_request_info)

    async def _refusal(self, request: Any) -> Any:
        """An ErrorResponse for a grammar too slow to compile or a prompt that with its
        max_tokens overflows the context (vLLM would shorten max_tokens silently)."""
        if error := await self._grammar_refusal(request):
            return error
        max_tokens = request_size.requested_output(request)
        if max_tokens is None:
            return None
        if isinstance(request, ChatCompletionRequest):
            if not self._may_overflow(request_size.chat_prompt_bound(request), max_tokens):
                return None
            counted = await self._count(
                TokenizeChatRequest(
                    model=request.model,
                    messages=request.messages,
                    tools=request.tools,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message,
                    chat_template=request.chat_template,
                    chat_template_kwargs=request.chat_template_kwargs,
                )
            )
            return self._overflow(counted, max_tokens, "messages")
        bounds = request_size.completion_prompt_bounds(request)
        if not any(self._may_overflow(b, max_tokens) for b in bounds):
            return None
        prompts = request.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        for prompt in prompts:
            counted = (
                len(prompt)
                if isinstance(prompt, list)
                else await self._count(
                    TokenizeCompletionRequest(
                        model=request.model,
                        prompt=prompt,
                        add_special_tokens=request.add_special_tokens,
                    )
                )
            )
            if error := self._overflow(counted, max_tokens, "prompt"):
                return error
        return None

    async def _http_check(self, endpoint: str, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """The same checks for a request that came over the replica's own HTTP server."""
        model = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        try:
            request = model.model_validate_json(body)
        except ValueError:
            return None  # vLLM's app answers a body it cannot parse itself
        error = await self._refusal(request)
        if error is None:
            return None
        return int(error.error.code), error.model_dump(mode="json")

    async def _grammar_refusal(self, request: Any) -> Any:
        """A 400 when the request's grammar compiles past the pool's limit; the compile also
        fills the cache the engine takes the grammar from."""
        if self._grammar is None:
            return None
        forced = forced_tool_calls.forced_call_schema(request)
        grammar = specs.from_json_schema(forced) if forced else specs.from_request(request)
        if grammar is None:
            return None
        verdict = await self._grammar.verdict(grammar)
        if not isinstance(verdict, TooSlow):
            return None
        if forced:
            param = "tools"
        elif request.response_format is not None:
            param = "response_format"
        else:
            param = "structured_outputs"
        message = (
            f"{param}: the grammar for this {grammar.kind} constraint took longer than "
            f"{verdict.limit_s:g} s to compile (the pool's max_grammar_compile_s); counted "
            "repetition (maxLength, maxItems, minItems, {m,n}) is what makes grammars costly"
        )
        return ErrorResponse(
            error={"message": message, "type": "BadRequestError", "param": param, "code": 400}
        )

    def _may_overflow(self, prompt_bound: int, max_tokens: int) -> bool:
        return prompt_bound + max_tokens > self._llm_config.engine_kwargs["max_model_len"]

    async def _count(self, tokenize_request: Any) -> int | None:
        async for response in self.engine.tokenize(tokenize_request, None):
            # A prompt the engine cannot even template is left for generation to report.
            return getattr(response, "count", None)
        return None

    def _overflow(self, prompt_tokens: int | None, max_tokens: int, name: str) -> Any:
        limit = self._llm_config.engine_kwargs["max_model_len"]
        if prompt_tokens is None or prompt_tokens + max_tokens <= limit:
            return None
        message = context_budget.overflow_message(limit, prompt_tokens, max_tokens, name)
        return ErrorResponse(
            error={"message": message, "type": "BadRequestError", "param": name, "code": 400}
        )

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Figures for the autoscaling policy (service/autoscaling/serve_policy.py): the
        requests on the replica's own HTTP server (Serve counts only those through its
        handles), and the engine's, once it has reported."""
        figures = {}
        if getattr(self, "_http", None) is not None:
            figures[HTTP_ONGOING] = float(self._http.guard.ongoing)
        stats = getattr(self, "_stats", None)
        if stats is not None and stats.at is not None:
            figures |= {ENGINE_WAITING: float(stats.waiting), KV_CACHE_USAGE: stats.kv_cache_usage}
        return figures

    async def engine_load(self) -> dict[str, Any]:
        """This replica's engine load: requests held (read by the integration tests), and
        the scheduler's latest figures with their age in seconds (None when the engine has
        reported none yet), which the gateway samples when the replica has not announced."""
        client = getattr(self.engine, "_engine_client", None)
        stats = self._stats
        return {
            "unfinished_requests": client.get_num_unfinished_requests() if client else 0,
            "waiting": stats.waiting,
            "kv_cache_usage": stats.kv_cache_usage,
            "age_s": None if stats.at is None else time.monotonic() - stats.at,
        }


def grammar_service(llm_config: Any) -> GrammarCompileService | None:
    limit_s = llm_config.experimental_configs.get("max_grammar_compile_s")
    if limit_s is None:
        return None
    structured = llm_config.engine_kwargs.get("structured_outputs_config") or {}
    if not isinstance(structured, dict):  # vLLM's StructuredOutputsConfig
        structured = vars(structured)
    disable_any_whitespace = bool(structured.get("disable_any_whitespace", False))
    return GrammarCompileService(limit_s, disable_any_whitespace)


async def _single(item: Any) -> AsyncIterator[Any]:
    yield item
