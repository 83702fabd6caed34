"""Calling a pool and turning its answer into an HTTP response, within a deadline.

A pool answers with a stream of items: one response object (non-streaming), or lists of
SSE chunks (streaming), or an engine ErrorResponse first. Whatever happens here (client
gone, deadline passed, engine failure) the pool request is cancelled, which aborts it in
the engine, and no other request is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import anyio
from starlette.responses import Response, StreamingResponse

from service.errors import (
    DeadlineExceeded,
    EngineError,
    PoolAtCapacity,
    ServiceError,
    error_body,
    from_engine_error,
)
from service.gateway.http_backend import PoolAnswer, ReplicaUnavailable
from service.streaming import OPENAI, Dialect
from service.telemetry.request import CLIENT_CLOSED, RequestTelemetry

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
# In a chat or completions chunk whose choice ended (vLLM writes compact JSON).
FINISH_MARK = '"finish_reason":"'
USAGE_GRACE_S = 1.0
RETRIES_BEFORE_FIRST_ITEM = 1


def _replica_lost(exc: BaseException) -> bool:
    """The replica died, is going, or was unreachable before it answered anything."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(
        exc,
        RayActorError | ActorUnavailableError | aiohttp.ClientConnectionError | ReplicaUnavailable,
    )


class ResponseStream(Protocol):
    def __aiter__(self) -> AsyncIterator[Any]: ...
    async def __anext__(self) -> Any: ...
    def cancel(self) -> None: ...


class PoolBackend(Protocol):
    def stream(
        self,
        pool_id: str,
        method: str,
        request: Any,
        trace_headers: dict[str, str],
        checks: bool = False,
        request_id: str = "",
    ) -> ResponseStream:
        """`checks`: the pool must count the prompt or compile the grammar first."""
        ...


async def call_pool(
    backend: PoolBackend,
    method: str,
    request: Any,
    *,
    telemetry: RequestTelemetry,
    timeout_s: float,
    request_id: str,
    headers: dict[str, str],
    strip_usage: bool = False,
    checks: bool = False,
    dialect: Dialect = OPENAI,
    finish: Callable[[], None] = lambda: None,
) -> Response:
    """The pool's answer as JSON or SSE. However the request ends, `finish` runs once (it
    keeps the gateway's in-flight count exact) and the telemetry is closed. `strip_usage`
    drops the usage chunk the gateway asked for but the client did not."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    responses: ResponseStream | None = None
    try:
        trace_headers = telemetry.dispatched()
        for attempt in range(1 + RETRIES_BEFORE_FIRST_ITEM):
            responses = backend.stream(
                telemetry.pool, method, request, trace_headers, checks, request_id
            )
            try:
                async with asyncio.timeout_at(deadline):
                    first = await anext(responses)
                break
            except Exception as exc:
                if attempt == RETRIES_BEFORE_FIRST_ITEM or not _replica_lost(exc):
                    raise
                # Nothing reached the client yet: Serve sends the retry to a live replica.
                log.warning("pool replica lost before its first item (%r); retrying", exc)
                responses.cancel()
        telemetry.answered()
        item = first[0] if isinstance(first, list) and first else first
        if (error := _engine_error(item, request_id)) is not None:
            raise error
    except BaseException as exc:
        if responses is not None:
            responses.cancel()
        finish()
        raise _as_service_error(exc, timeout_s, request_id) from exc

    if isinstance(item, str):
        tap = _StreamTap(telemetry, strip_usage, request_id, dialect)

        async def close() -> None:
            if tap.finished and not tap.usage_seen:
                # The client left after the last token: the usage event is right behind it.
                await _read_usage(responses, tap)
            responses.cancel()
            finish()
            telemetry.close(tap.status, tap.error)

        return _PoolStream(
            _sse(first, responses, tap, deadline, timeout_s, request_id),
            on_close=close,
            media_type="text/event-stream",
            headers=headers | {"Cache-Control": "no-cache"},
        )
    responses.cancel()
    finish()
    usage = getattr(item, "usage", None)
    if usage is not None:
        telemetry.usage(usage.prompt_tokens, usage.completion_tokens or 0)
    telemetry.close(200)
    # A replica's own bytes are passed on as they are; the Serve handle's answer is an object.
    body = item.body if isinstance(item, PoolAnswer) else item.model_dump_json().encode()
    if dialect.rewrite is not None:
        body = dialect.rewrite(body.decode()).encode()
    return Response(body, media_type="application/json", headers=headers)


class _StreamTap:
    """Watches the SSE events on their way out: first and last output, usage, how it ended."""

    def __init__(
        self, telemetry: RequestTelemetry, strip_usage: bool, request_id: str, dialect: Dialect
    ):
        self._telemetry = telemetry
        self.dialect = dialect
        self._strip_usage = strip_usage
        self._request_id = request_id
        self._output_started = False
        self.status = CLIENT_CLOSED  # until the stream runs to its end
        self.error: BaseException | None = None
        self.engine_error: ServiceError | None = None  # an error event the engine sent
        self.finished = False  # a choice has ended: the engine's work is (nearly) done
        self.usage_seen = False

    def events(self, item: Any) -> str:
        """The item's events as they go to the client."""
        parts = item if isinstance(item, list) else [item]
        out = []
        for part in parts:
            if (engine_error := _engine_error(part, self._request_id)) is not None:
                # The engine's own text may carry internals (stack hints, class names): the
                # client gets the mapped error, in the API's shape; it counts as an error.
                self.engine_error = engine_error
                out.append(f"data: {json.dumps(error_body(engine_error))}\n\n")
                continue
            event = _packet(part)
            if (usage := self.dialect.usage_of(event)) is not None:
                self.usage_seen = True
                self._telemetry.usage(*usage)
                if self._strip_usage:
                    continue
            elif event != DONE and (self._output_started or self.dialect.carries_output(event)):
                self._output_started = True
                self._telemetry.output()
            self.finished = self.finished or FINISH_MARK in event
            out.append(event if self.dialect.rewrite is None else self.dialect.rewrite(event))
        return "".join(out)

    def ended(self, error: ServiceError | None = None) -> None:
        error = error or self.engine_error
        self.status = error.status if error is not None else 200
        self.error = error


def _engine_error(part: Any, request_id: str) -> ServiceError | None:
    """The error an engine sent inside a stream, as an ErrorResponse or its SSE event."""
    error = getattr(part, "error", None)
    if error is not None and hasattr(error, "message"):
        return from_engine_error(int(error.code), error.message, error.param, request_id)
    if not (isinstance(part, str) and part.startswith('data: {"error"')):
        return None
    try:
        info = json.loads(part[len("data: ") :])["error"]
        code = int(info.get("code") or 500)
    except (ValueError, KeyError, TypeError, AttributeError):
        code, info = 500, {}
    return from_engine_error(code, str(info.get("message", "")), info.get("param"), request_id)


class _PoolStream(StreamingResponse):
    """Runs `on_close` however the response ends. The body generator's own `finally` is not
    enough: a client gone before the first byte leaves it never started, and with it the
    engine request running and the in-flight count one too high."""

    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]], **kwargs: Any
    ):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Cancelling a finished pool request is a no-op; after a disconnect it aborts it.
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def _read_usage(responses: ResponseStream, tap: _StreamTap) -> None:
    """Reads what the pool still sends, for USAGE_GRACE_S at most, until its usage event."""
    with contextlib.suppress(Exception), anyio.move_on_after(USAGE_GRACE_S):
        async for item in responses:
            tap.events(item)
            if tap.usage_seen:
                return


def _as_service_error(exc: BaseException, timeout_s: float, request_id: str) -> BaseException:
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, ServiceError | asyncio.CancelledError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"the request did not finish within its {timeout_s:g} s deadline")
    if isinstance(exc, BackPressureError | DeploymentUnavailableError):
        return PoolAtCapacity("the model pool is at capacity; retry shortly")
    if not isinstance(exc, Exception):
        return exc
    log.exception("pool call failed (request id %s)", request_id)
    return EngineError(f"the model engine failed to serve this request (request id {request_id})")


async def _sse(
    first: Any,
    responses: ResponseStream,
    tap: _StreamTap,
    deadline: float,
    timeout_s: float,
    request_id: str,
) -> AsyncIterator[str]:
    done = False
    error = None
    try:
        async with asyncio.timeout_at(deadline):
            events = tap.events(first)
            done = events.rstrip().endswith("data: [DONE]")
            yield events
            async for item in responses:
                events = tap.events(item)
                done = done or events.rstrip().endswith("data: [DONE]")
                yield events
    except Exception as exc:
        # Headers are sent: the failure becomes an error event, then the stream ends.
        error = _as_service_error(exc, timeout_s, request_id)
        prefix = "" if tap.dialect.ends_with_done else "event: error\n"
        yield f"{prefix}data: {json.dumps(error_body(error))}\n\n"
    if not done and tap.dialect.ends_with_done:
        yield DONE
    tap.ended(error if isinstance(error, ServiceError) else None)


def _packet(item: Any) -> str:
    if isinstance(item, list):
        return "".join(_packet(part) for part in item)
    if isinstance(item, str):
        return item
    if hasattr(item, "model_dump_json"):
        return f"data: {item.model_dump_json()}\n\n"
    raise TypeError(f"unexpected item from a pool: {type(item).__name__}")
