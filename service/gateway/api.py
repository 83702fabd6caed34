"""The OpenAI-compatible HTTP surface of the gateway, as a FastAPI app.

Built by `create_app` from settings and a pool backend, so tests can drive it with a fake
backend and the Serve deployment can build it once per replica.
"""

from __future__ import annotations

import asyncio
import json
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

from service import catalog, context_budget
from service.access.gate import AccessControl, RequestContext
from service.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    MethodNotAllowed,
    RouteNotFound,
    ServiceError,
    error_body,
)
from service.gateway.bounds import check_bounds
from service.gateway.dispatch import PoolBackend, call_pool
from service.gateway.models import ModelDirectory, anyone
from service.gateway.multimodal import (
    MediaLimits,
    MediaSummary,
    check_pool_accepts,
    inspect_messages,
)
from service.gateway.native_apis import NativeApis, messages_api, responses_api
from service.gateway.remote_media import check_public_hosts
from service.gateway.requests import parse_as, read_json_object
from service.routing.features import RequestFeatures, chat_features, completion_features
from service.routing.load import LoadTracker
from service.routing.policy import Decision, PoolLoad
from service.routing.setup import build_load_tracker, build_policy
from service.settings import Settings
from service.telemetry.metrics import MetricsRecorder, NullRecorder
from service.telemetry.request import CLIENT_CLOSED, RequestTelemetry

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[dict[str, bool]]]
Handler = Callable[[RequestTelemetry, RequestContext], Awaitable[Response]]
REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"
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
    directory = ModelDirectory(settings)
    policy = build_policy(settings)
    loads = loads or build_load_tracker(settings)
    recorder = recorder or NullRecorder()
    media_limits = MediaLimits(**settings.media.model_dump())
    routing = settings.routing
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

    async def generate(request: Request, endpoint: str, model_cls: type) -> Response:
        return await handle(
            request,
            endpoint,
            lambda telemetry, ctx: _generate(request, endpoint, model_cls, telemetry, ctx),
        )

    def authenticate(request: Request, telemetry: RequestTelemetry, ctx: RequestContext) -> None:
        with telemetry.span("auth") as span:
            ctx.principal = access.authenticate(request.headers) if access else None
            if ctx.principal is not None and ctx.principal.tenant is not None:
                telemetry.tenant = ctx.principal.tenant.id
            if span is not None:
                span.set_attribute("gemma.auth.mode", "api_key" if ctx.principal else "none")
                span.set_attribute("gemma.tenant", telemetry.tenant)

    native = NativeApis(settings, backend, directory, policy, loads, access, authenticate)
    responses, messages = responses_api(), messages_api()

    async def _generate(
        request: Request,
        method: str,
        model_cls: type,
        telemetry: RequestTelemetry,
        ctx: RequestContext,
    ) -> Response:
        authenticate(request, telemetry, ctx)
        raw = await read_json_object(request, settings.server.max_body_bytes)
        check_bounds(raw, settings.bounds)
        body = parse_as(model_cls, raw)
        ctx.model = body.model
        if access is not None and access.audit is not None and access.audit.include_content:
            ctx.prompt = _prompt_text(body)
        if not directory.is_alias(body.model):
            # An unknown model is 404 before it is 403; the 404 lists what the caller may use.
            tenant = ctx.principal.tenant if ctx.principal is not None else None
            directory.pool_id(body.model, tenant.may_use if tenant is not None else anyone)
        default_cap = access.check_request(ctx.principal, body) if access else None
        media = None
        if isinstance(body, ChatCompletionRequest):
            media = inspect_messages(body.messages, media_limits)
            if media.remote_hosts:
                await check_public_hosts(media.remote_hosts)
        with telemetry.span("route") as span:
            snapshot = loads.snapshot()  # one view of pool load for routing and shedding
            decision, features = route(request, body, media, snapshot)
            if span is not None:
                span.set_attributes(
                    {"gemma.route.pool": decision.pool_id, "gemma.route.reason": decision.reason,
                     "gemma.request.model": body.model}
                )  # fmt: skip
        telemetry.routed(decision.pool_id, decision.reason)
        telemetry.prompt_estimate = features.billed_prompt_tokens
        ctx.route_reason = decision.reason
        pool = settings.pool(decision.pool_id)
        # What the request would be refused for anyway comes before any refusal for load.
        if media is not None:
            check_pool_accepts(media, pool.id, catalog.modalities(pool), pool.max_items_per_prompt)
        if default_cap is not None:
            # A cap the client did not ask for must not make its prompt overflow the context.
            body.max_tokens = fit_output(default_cap, body, catalog.max_model_len(pool))
        _check_max_tokens(body, catalog.max_model_len(pool))
        if access is not None:
            load = snapshot.get(pool.id)
            access.check_priority(ctx.principal, load, policy.thresholds, pool.id)
        # vLLM answers only to its served id, and the response's `model` is the pool id.
        body.model = pool.id
        if isinstance(body, ChatCompletionRequest):
            body = _sanitize_chat_completion_request(body)
        headers = {"x-routed-model": pool.id, "x-route-reason": decision.reason}
        if access is not None:
            ctx.admission = await access.admit(
                ctx.principal, ctx.request_id, features.billed_tokens
            )
            if ctx.admission is not None:
                headers |= ctx.admission.headers
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
            checks=needs_pool_checks(body, catalog.max_model_len(pool)),
            finish=loads.started(pool.id),
        )

    def route(
        request: Request, body: Any, media: MediaSummary | None, snapshot: dict[str, PoolLoad]
    ) -> tuple[Decision, RequestFeatures]:
        tier = request.headers.get(routing.tier_header)
        if media is not None:
            features = chat_features(
                body,
                media.counts,
                bytes_per_token=routing.bytes_per_token,
                default_max_tokens=routing.default_max_tokens,
                tier=tier,
            )
        else:
            features = completion_features(
                body,
                bytes_per_token=routing.bytes_per_token,
                default_max_tokens=routing.default_max_tokens,
                tier=tier,
            )
        if directory.is_alias(body.model):
            return policy.route(features, snapshot), features
        return policy.pin(directory.pool_id(body.model), features), features

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat", ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "completions", CompletionRequest)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await handle(
            request, "responses", lambda t, ctx: native.generate(request, responses, t, ctx)
        )

    @app.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        return await handle(
            request, "messages", lambda t, ctx: native.generate(request, messages, t, ctx)
        )

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return await handle(
            request, "tokenize", lambda t, ctx: native.tokenizer(request, "tokenize", t, ctx)
        )

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return await handle(
            request, "detokenize", lambda t, ctx: native.tokenizer(request, "detokenize", t, ctx)
        )

    def visible(request: Request) -> Callable[[str], bool]:
        principal = access.authenticate(request.headers) if access else None
        if principal is None:
            return lambda model: True
        principal.check_model_api()
        return principal.tenant.may_use

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        may_use = visible(request)
        return {"object": "list", "data": [c for c in directory.cards() if may_use(c["id"])]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        may_use = visible(request)
        if not may_use(model):
            raise directory.not_found(model, may_use)
        return directory.card(model)

    @app.get("/admin/usage")
    async def usage(request: Request, window_s: int = 3600) -> dict[str, Any]:
        if access is None:
            raise RouteNotFound("the admin API needs access control (settings: access)")
        access.authorize_admin(request.headers)
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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        pools = await readiness()
        ok = all(pools.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "pools": pools}
        if access is not None and (keys := access.keys_status()) is not None:
            # A broken new keys file keeps the old keys (and readiness), but says so here.
            body["keys"] = keys
        return JSONResponse(body, status_code=200 if ok else 503)

    return app


def fit_output(cap: int, body: Any, max_model_len: int) -> int:
    """The tenant's cap, shortened to what the context leaves after the prompt's upper bound."""
    if isinstance(body, ChatCompletionRequest):
        prompt = context_budget.chat_prompt_bound(body)
    else:
        prompt = max(context_budget.completion_prompt_bounds(body), default=0)
    return max(1, min(cap, max_model_len - prompt))


def needs_pool_checks(body: Any, max_model_len: int) -> bool:
    """Whether the pool must count the prompt (with max_tokens it may overflow the context)
    or compile a grammar (under its time limit) before it generates; most requests need
    neither, and skip the pool's parse of the body."""
    if body.response_format is not None or body.structured_outputs is not None:
        return True
    max_tokens = context_budget.requested_output(body)
    if max_tokens is None:
        return False
    if isinstance(body, ChatCompletionRequest):
        bounds = [context_budget.chat_prompt_bound(body)]
    else:
        bounds = context_budget.completion_prompt_bounds(body)
    return any(bound + max_tokens > max_model_len for bound in bounds)


def _prompt_text(body: Any) -> str:
    """The request's input for the audit log (only with access.audit_content)."""
    if isinstance(body, ChatCompletionRequest):
        return json.dumps(body.model_dump(mode="json", include={"messages"})["messages"])
    return json.dumps(body.prompt if isinstance(body.prompt, str | list) else str(body.prompt))


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
