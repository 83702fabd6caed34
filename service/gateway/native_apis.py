"""vLLM's other APIs, served by the replicas' own apps and passed through under the
gateway's policies: `/v1/responses` (OpenAI Responses), `/v1/messages` (Anthropic Messages),
`/tokenize` and `/detokenize`.

Generation goes through the same steps as chat: authenticate, validate, resolve the model
(404 before 403), route, the tenant's caps, priority shedding, admission (rate limits and
token settle), then the replica; usage comes from each API's own final event. Media parts
are refused here (their URL checks live on /v1/chat/completions), and `previous_response_id`
too: vLLM keeps stored responses in one replica's memory, which another replica cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import catalog
from service.access.gate import AccessControl, RequestContext
from service.errors import ContextLengthExceeded, InvalidRequest
from service.gateway.dispatch import PoolBackend, call_pool
from service.gateway.models import ModelDirectory, anyone
from service.gateway.requests import parse_as, read_json_object
from service.routing.features import RequestFeatures, estimate_text_tokens
from service.routing.load import LoadTracker
from service.routing.policy import RoutingPolicy
from service.settings import Settings
from service.streaming import EVENTS
from service.telemetry.request import RequestTelemetry

# Content part and block types that carry media, in the Responses and Messages APIs.
MEDIA_TYPES = frozenset(
    {"input_image", "input_file", "input_audio", "image", "document", "image_url", "video_url"}
)


@dataclass(frozen=True)
class GenerationApi:
    endpoint: str  # the metrics' endpoint label, and the backend method
    model_cls: type
    max_tokens_field: str
    input_field: str


def responses_api() -> GenerationApi:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    return GenerationApi("responses", ResponsesRequest, "max_output_tokens", "input")


def messages_api() -> GenerationApi:
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest

    return GenerationApi("messages", AnthropicMessagesRequest, "max_tokens", "messages")


class NativeApis:
    def __init__(
        self,
        settings: Settings,
        backend: PoolBackend,
        directory: ModelDirectory,
        policy: RoutingPolicy,
        loads: LoadTracker,
        access: AccessControl | None,
        authenticate: Callable[[Request, RequestTelemetry, RequestContext], None],
    ):
        self._settings = settings
        self._backend = backend
        self._directory = directory
        self._policy = policy
        self._loads = loads
        self._access = access
        self._authenticate = authenticate

    async def generate(
        self, request: Request, api: GenerationApi, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> Response:
        self._authenticate(request, telemetry, ctx)
        raw = await read_json_object(request, self._settings.server.max_body_bytes)
        refuse_media(raw.get(api.input_field))
        if raw.get("previous_response_id") is not None:
            raise InvalidRequest(
                "previous_response_id is not supported: stored responses live in one engine "
                "replica's memory; send the conversation so far in `input`",
                param="previous_response_id",
            )
        body = parse_as(api.model_cls, raw)
        if not body.model:
            raise InvalidRequest("model is required", param="model")
        ctx.model = body.model
        self._check_model(ctx, body.model)
        default_cap = self._access.check_request(ctx.principal, body) if self._access else None
        features = self._features(request, body, api, raw)
        snapshot = self._loads.snapshot()
        if self._directory.is_alias(body.model):
            decision = self._policy.route(features, snapshot)
        else:
            decision = self._policy.pin(self._directory.pool_id(body.model), features)
        telemetry.routed(decision.pool_id, decision.reason)
        telemetry.prompt_estimate = features.billed_prompt_tokens
        ctx.route_reason = decision.reason
        pool = self._settings.pool(decision.pool_id)
        max_model_len = catalog.max_model_len(pool)
        if default_cap is not None:
            cap = max(1, min(default_cap, max_model_len - features.prompt_tokens))
            setattr(body, api.max_tokens_field, cap)
        requested = getattr(body, api.max_tokens_field, None)
        if requested is not None and requested >= max_model_len:
            raise ContextLengthExceeded(
                f"{api.max_tokens_field} is {requested}, but the model '{body.model}' has a "
                f"context of {max_model_len} tokens, which must hold the prompt and the output",
                param=api.max_tokens_field,
            )
        if self._access is not None:
            self._access.check_priority(
                ctx.principal, snapshot.get(pool.id), self._policy.thresholds, pool.id
            )
        body.model = pool.id
        headers = {"x-routed-model": pool.id, "x-route-reason": decision.reason}
        if self._access is not None:
            ctx.admission = await self._access.admit(
                ctx.principal, ctx.request_id, features.billed_tokens
            )
            if ctx.admission is not None:
                headers |= ctx.admission.headers
        return await call_pool(
            self._backend,
            api.endpoint,
            body,
            telemetry=telemetry,
            timeout_s=self._settings.server.request_timeout_s,
            request_id=ctx.request_id,
            headers=headers,
            dialect=EVENTS,
            finish=self._loads.started(pool.id),
        )

    async def tokenizer(
        self, request: Request, endpoint: str, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> Response:
        """/tokenize and /detokenize: the pool's own tokenizer (an alias uses its quality
        pool's; Gemma 4's models share one). Not admitted or counted as load: no generation."""
        self._authenticate(request, telemetry, ctx)
        raw = await read_json_object(request, self._settings.server.max_body_bytes)
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required", param="model")
        ctx.model = model
        self._check_model(ctx, model)
        if ctx.principal is not None:
            ctx.principal.check_model(model)
        pool_id = (
            self._policy.thresholds.quality_pool
            if self._directory.is_alias(model)
            else self._directory.pool_id(model)
        )
        telemetry.routed(pool_id, "tokenizer")
        raw["model"] = pool_id
        return await call_pool(
            self._backend,
            endpoint,
            _Raw(raw),
            telemetry=telemetry,
            timeout_s=self._settings.server.request_timeout_s,
            request_id=ctx.request_id,
            headers={"x-routed-model": pool_id},
        )

    def _check_model(self, ctx: RequestContext, model: str) -> None:
        if not self._directory.is_alias(model):
            # An unknown model is 404 before it is 403; the 404 lists what the caller may use.
            tenant = ctx.principal.tenant if ctx.principal is not None else None
            self._directory.pool_id(model, tenant.may_use if tenant is not None else anyone)

    def _features(
        self, request: Request, body: Any, api: GenerationApi, raw: dict[str, Any]
    ) -> RequestFeatures:
        routing = self._settings.routing
        text = json.dumps(raw.get(api.input_field)) + json.dumps(raw.get("instructions") or "")
        tools = raw.get("tools") or []
        if tools:
            text += json.dumps(tools)
        return RequestFeatures(
            modalities=frozenset({catalog.Modality.TEXT}),
            prompt_tokens=estimate_text_tokens(text, routing.bytes_per_token),
            max_tokens=getattr(body, api.max_tokens_field, None) or routing.default_max_tokens,
            uses_tools=bool(tools) and raw.get("tool_choice") != "none",
            tier=request.headers.get(routing.tier_header),
        )


class _Raw:
    """A body the gateway validated as plain JSON (tokenize), sent as it was parsed."""

    def __init__(self, data: dict[str, Any]):
        self._data = data
        self.stream = False

    def model_dump_json(self, **_: Any) -> str:
        return json.dumps(self._data)


def refuse_media(value: Any) -> None:
    """400 for any media part, however deep (bounded by the JSON depth the parser allows)."""
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in MEDIA_TYPES:
            raise InvalidRequest(
                f"a '{kind}' part: images, audio and files are accepted on "
                "/v1/chat/completions only for now",
                param="input",
            )
        for item in value.values():
            refuse_media(item)
    elif isinstance(value, list):
        for item in value:
            refuse_media(item)
