"""The OpenAI-compatible HTTP surface of the gateway, as a FastAPI app.

Built by `create_app` from settings and a pool backend, so tests can drive it with a fake
backend and the Serve deployment can build it once per replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry.trace import Tracer
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from vllm.entrypoints.generate.base.protocol import StreamOptions

from service import catalog
from service.errors import (
    ContextLengthExceeded,
    MethodNotAllowed,
    RouteNotFound,
    ServiceError,
    error_body,
)
from service.gateway.dispatch import PoolBackend, call_pool
from service.gateway.models import ModelDirectory
from service.gateway.multimodal import MediaLimits, check_pool_accepts, inspect_messages
from service.gateway.requests import parse_as, read_json_object
from service.routing.features import chat_features, completion_features
from service.routing.load import LoadTracker
from service.routing.policy import Decision
from service.routing.setup import build_policy
from service.settings import Settings
from service.telemetry.metrics import MetricsRecorder, NullRecorder
from service.telemetry.request import CLIENT_CLOSED, RequestTelemetry

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[dict[str, bool]]]
REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"


def create_app(
    settings: Settings,
    backend: PoolBackend,
    readiness: Readiness,
    loads: LoadTracker | None = None,
    recorder: MetricsRecorder | None = None,
    tracer: Tracer | None = None,
) -> FastAPI:
    app = FastAPI(title="gemma-serve", docs_url=None, redoc_url=None)
    directory = ModelDirectory(settings)
    policy = build_policy(settings)
    loads = loads or LoadTracker([p.id for p in settings.pools], settings.routing.stats_max_age_s)
    recorder = recorder or NullRecorder()
    media_limits = MediaLimits(**settings.media.model_dump())
    routing = settings.routing
    _install_error_handlers(app)

    async def generate(request: Request, endpoint: str, model_cls: type) -> Response:
        telemetry = RequestTelemetry(endpoint, request.url.path, request.headers, recorder, tracer)
        request.state.trace_id = telemetry.trace_id
        try:
            return await _generate(request, endpoint, model_cls, telemetry)
        except BaseException as exc:  # a pool answer closes it itself; this is a no-op then
            telemetry.close(_status_of(exc), exc)
            raise

    async def _generate(
        request: Request, method: str, model_cls: type, telemetry: RequestTelemetry
    ) -> Response:
        with telemetry.span("auth") as span:
            if span is not None:
                span.set_attribute("gemma.auth.mode", "none")
        body = parse_as(model_cls, await read_json_object(request, settings.server.max_body_bytes))
        with telemetry.span("route") as span:
            decision, media = route(request, body)
            if span is not None:
                span.set_attributes(
                    {"gemma.route.pool": decision.pool_id, "gemma.route.reason": decision.reason,
                     "gemma.request.model": body.model}
                )  # fmt: skip
        telemetry.routed(decision.pool_id, decision.reason)
        pool = settings.pool(decision.pool_id)
        if media is not None:
            check_pool_accepts(media, pool.id, catalog.modalities(pool), pool.max_items_per_prompt)
        _check_max_tokens(body, catalog.max_model_len(pool))
        # vLLM answers only to its served id, and the response's `model` is the pool id.
        body.model = pool.id
        if isinstance(body, ChatCompletionRequest):
            body = _sanitize_chat_completion_request(body)
        headers = {"x-routed-model": pool.id, "x-route-reason": decision.reason}
        if telemetry.trace_id:
            headers[TRACE_ID_HEADER] = telemetry.trace_id
        return await call_pool(
            backend,
            method,
            body,
            telemetry=telemetry,
            timeout_s=settings.server.request_timeout_s,
            request_id=request.headers.get(REQUEST_ID_HEADER, ""),
            headers=headers,
            strip_usage=_ask_for_usage(body),
            finish=loads.started(pool.id),
        )

    def route(request: Request, body: Any) -> tuple[Decision, Any]:
        tier = request.headers.get(routing.tier_header)
        if isinstance(body, ChatCompletionRequest):
            media = inspect_messages(body.messages, media_limits)
            features = chat_features(
                body,
                media.counts,
                bytes_per_token=routing.bytes_per_token,
                default_max_tokens=routing.default_max_tokens,
                tier=tier,
            )
        else:
            media = None
            features = completion_features(
                body,
                bytes_per_token=routing.bytes_per_token,
                default_max_tokens=routing.default_max_tokens,
                tier=tier,
            )
        if directory.is_alias(body.model):
            return policy.route(features, loads.snapshot()), media
        return policy.pin(directory.pool_id(body.model), features), media

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat", ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "completions", CompletionRequest)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": directory.cards()}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        return directory.card(model)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        pools = await readiness()
        ok = all(pools.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "pools": pools},
            status_code=200 if ok else 503,
        )

    return app


def _ask_for_usage(body: Any) -> bool:
    """Streams always carry usage from the engine (token metrics, and later accounting);
    True when the client did not ask for it, so the gateway drops it on the way out."""
    if not body.stream:
        return False
    options = body.stream_options
    if options is not None and options.include_usage:
        return False
    body.stream_options = StreamOptions(
        include_usage=True,
        continuous_usage_stats=options.continuous_usage_stats if options else False,
    )
    return True


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    return CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500


def _check_max_tokens(body: Any, max_model_len: int) -> None:
    # The prompt is counted by the engine; max_tokens alone can be refused here, for free.
    limits = body.model_dump(include={"max_tokens", "max_completion_tokens"})
    requested = limits.get("max_completion_tokens") or limits.get("max_tokens")
    if requested is not None and requested >= max_model_len:
        raise ContextLengthExceeded(
            f"max_tokens is {requested}, but the model '{body.model}' has a context of "
            f"{max_model_len} tokens, which must hold the prompt and max_tokens",
            param="max_tokens",
        )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = exc.headers()
        if trace_id := getattr(request.state, "trace_id", None):
            headers[TRACE_ID_HEADER] = trace_id
        return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            err: ServiceError = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}"
            )
        else:
            err = RouteNotFound(f"no route {request.method} {request.url.path}")
        return await service_error(request, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get(REQUEST_ID_HEADER, "")
        log.exception("unhandled error (request id %s)", request_id)
        err = ServiceError(f"internal error (request id {request_id})")
        return JSONResponse(error_body(err), status_code=500)
