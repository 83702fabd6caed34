"""Calling a pool and turning its answer into an HTTP response, within a deadline.

A pool answers with a stream of items: one response object (non-streaming), or lists of
SSE chunks (streaming), or an engine ErrorResponse first. Whatever happens here (client
gone, deadline passed, engine failure) the pool request is cancelled, which aborts it in
the engine, and no other request is touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.responses import JSONResponse, Response, StreamingResponse

from service.errors import (
    DeadlineExceeded,
    EngineError,
    ServiceError,
    ServiceUnavailable,
    error_body,
    from_engine_error,
)

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


class ResponseStream(Protocol):
    def __aiter__(self) -> AsyncIterator[Any]: ...
    async def __anext__(self) -> Any: ...
    def cancel(self) -> None: ...


class PoolBackend(Protocol):
    def stream(self, pool_id: str, method: str, request: Any) -> ResponseStream: ...


async def call_pool(
    backend: PoolBackend,
    pool_id: str,
    method: str,
    request: Any,
    *,
    timeout_s: float,
    request_id: str,
    headers: dict[str, str],
    finish: Callable[[], None] = lambda: None,
) -> Response:
    """The pool's answer as JSON or SSE; `finish` runs once the request is over, however
    it ends (it keeps the gateway's in-flight count exact)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    responses: ResponseStream | None = None
    try:
        responses = backend.stream(pool_id, method, request)
        async with asyncio.timeout_at(deadline):
            first = await anext(responses)
        item = first[0] if isinstance(first, list) and first else first
        _raise_if_error(item, request_id)
    except BaseException as exc:
        if responses is not None:
            responses.cancel()
        finish()
        raise _as_service_error(exc, timeout_s, request_id) from exc

    if isinstance(item, str):
        return _PoolStream(
            _sse(first, responses, deadline, timeout_s, request_id),
            on_close=lambda: (responses.cancel(), finish()),
            media_type="text/event-stream",
            headers=headers | {"Cache-Control": "no-cache"},
        )
    responses.cancel()
    finish()
    return JSONResponse(item.model_dump(mode="json"), headers=headers)


class _PoolStream(StreamingResponse):
    """Runs `on_close` however the response ends. The body generator's own `finally` is not
    enough: a client gone before the first byte leaves it never started, and with it the
    engine request running and the in-flight count one too high."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Any], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Cancelling a finished pool request is a no-op; after a disconnect it aborts it.
            self._on_close()


def _raise_if_error(item: Any, request_id: str) -> None:
    error = getattr(item, "error", None)
    if error is not None and hasattr(error, "message"):
        raise from_engine_error(int(error.code), error.message, error.param, request_id)


def _as_service_error(exc: BaseException, timeout_s: float, request_id: str) -> BaseException:
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, ServiceError | asyncio.CancelledError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"the request did not finish within its {timeout_s:g} s deadline")
    if isinstance(exc, BackPressureError | DeploymentUnavailableError):
        return ServiceUnavailable("the model pool is at capacity; retry shortly")
    if not isinstance(exc, Exception):
        return exc
    log.exception("pool call failed (request id %s)", request_id)
    return EngineError(f"the model engine failed to serve this request (request id {request_id})")


async def _sse(
    first: Any, responses: ResponseStream, deadline: float, timeout_s: float, request_id: str
) -> AsyncIterator[str]:
    done = False
    try:
        async with asyncio.timeout_at(deadline):
            yield _packet(first)
            async for item in responses:
                packet = _packet(item)
                done = done or packet.rstrip().endswith("data: [DONE]")
                yield packet
    except Exception as exc:
        # Headers are sent: the failure becomes an error event, then the stream ends.
        err = _as_service_error(exc, timeout_s, request_id)
        yield f"data: {json.dumps(error_body(err))}\n\n"
    if not done:
        yield DONE


def _packet(item: Any) -> str:
    if isinstance(item, list):
        return "".join(_packet(part) for part in item)
    if isinstance(item, str):
        return item
    if hasattr(item, "model_dump_json"):
        return f"data: {item.model_dump_json()}\n\n"
    raise TypeError(f"unexpected item from a pool: {type(item).__name__}")
