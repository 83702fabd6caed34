"""The OpenAI-compatible HTTP surface of the gateway, as a FastAPI app.

Built by `create_app` from settings and a pool backend, so tests can drive it with a fake
backend and the Serve deployment can build it once per replica. Generation and the tokenizer
go through the request pipeline (pipeline.py); the rest (models, usage, health) is here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry.trace import Tracer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from service.access.gate import AccessControl, RequestContext
from service.errors import (
    InvalidRequest,
    MethodNotAllowed,
    RouteNotFound,
    ServiceError,
    error_body,
)
from service.gateway.apis import CHAT, COMPLETIONS, MESSAGES, RESPONSES, GenerationApi
from service.gateway.dispatch import PoolBackend
from service.gateway.pipeline import REQUEST_ID_HEADER, TRACE_ID_HEADER, RequestPipeline
from service.routing.load import LoadTracker
from service.routing.setup import build_load_tracker
from service.settings import Settings
from service.telemetry.metrics import MetricsRecorder, NullRecorder
from service.telemetry.request import CLIENT_CLOSED, RequestTelemetry

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[dict[str, bool]]]
Handler = Callable[[RequestTelemetry, RequestContext], Awaitable[Response]]
USAGE_MAX_WINDOW_S = 24 * 3600


def create_app(
    settings: Settings,
    backend: PoolBackend,
    readiness: Readiness,
    loads: LoadTracker | None = None,
    recorder: MetricsRecorder | None = None,
    tracer: Tracer | None = None,
    access: AccessControl | None = None,
) -> FastAPI:
    app = FastAPI(title="gemma-serve", docs_url=None, redoc_url=None)
    pipeline = RequestPipeline(settings, backend, loads or build_load_tracker(settings), access)
    directory = pipeline.directory
    recorder = recorder or NullRecorder()
    _install_error_handlers(app)

    async def handle(request: Request, endpoint: str, serve: Handler) -> Response:
        """Opens the request's telemetry and accounting, and closes them however it ends."""
        telemetry = RequestTelemetry(endpoint, request.url.path, request.headers, recorder, tracer)
        request.state.trace_id = telemetry.trace_id
        ctx = RequestContext(request_id=request.headers.get(REQUEST_ID_HEADER, ""))
        if access is not None:
            telemetry.on_close(lambda outcome: access.finish(ctx, outcome))
        try:
            return await serve(telemetry, ctx)
        except BaseException as exc:  # a pool answer closes it itself; this is a no-op then
            telemetry.close(_status_of(exc), exc)
            raise

    def generation(path: str, api: GenerationApi) -> None:
        async def generate(request: Request) -> Response:
            return await handle(
                request, api.endpoint, lambda t, ctx: pipeline.run(request, api, t, ctx)
            )

        app.add_api_route(path, generate, methods=["POST"], name=api.endpoint)

    def tokenizer(path: str, endpoint: str) -> None:
        async def tokenize(request: Request) -> Response:
            return await handle(
                request, endpoint, lambda t, ctx: pipeline.tokenizer(request, endpoint, t, ctx)
            )

        app.add_api_route(path, tokenize, methods=["POST"], name=endpoint)

    generation("/v1/chat/completions", CHAT)
    generation("/v1/completions", COMPLETIONS)
    generation("/v1/responses", RESPONSES)
    generation("/v1/messages", MESSAGES)
    tokenizer("/tokenize", "tokenize")
    tokenizer("/detokenize", "detokenize")

    async def visible(request: Request) -> Callable[[str], bool]:
        principal = await access.authenticate(request.headers) if access else None
        if principal is None:
            return lambda model: True
        principal.check_model_api()
        return principal.tenant.may_use

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        may_use = await visible(request)
        return {"object": "list", "data": [c for c in directory.cards() if may_use(c["id"])]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        may_use = await visible(request)
        if not may_use(model):
            raise directory.not_found(model, may_use)
        return directory.card(model)

    if access is not None:  # always in the service; a test's app may have none
        _add_admin_api(app, access)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        pools = await readiness()
        ok = all(pools.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "pools": pools}
        if access is not None and (keys := await access.keys_status()) is not None:
            # A broken new keys file keeps the old keys (and readiness), but says so here.
            body["keys"] = keys
        return JSONResponse(body, status_code=200 if ok else 503)

    return app


def _add_admin_api(app: FastAPI, access: AccessControl) -> None:
    @app.get("/admin/usage")
    async def usage(request: Request, window_s: int = 3600) -> dict[str, Any]:
        await access.authorize_admin(request.headers)
        if not 60 <= window_s <= USAGE_MAX_WINDOW_S:
            raise InvalidRequest(
                f"window_s is {window_s}; it must lie in [60, {USAGE_MAX_WINDOW_S}]",
                param="window_s",
            )
        return {
            "object": "usage",
            "window_s": window_s,
            "data": await access.usage_report(window_s),
        }


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    return CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500


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
