"""The gateway's request path, as named stages:

    authenticate -> parse -> check (needs no pool) -> route -> check for the pool -> admit
    -> forward

`prepare` runs every stage up to the forward and returns one `PreparedRequest`; `forward`
sends it to the pool and relays the answer. The stages are the same for every generation
API; what differs between the APIs is asked of the request's `GenerationApi` (apis.py). Each
stage either returns what the next needs or raises a ServiceError, which api.py maps to HTTP.
What a refusal must not depend on comes first: 401 before 400, 404 before 403, and every
refusal the request would get anyway before any refusal for load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import catalog
from service.access.gate import AccessControl, RequestContext
from service.errors import ContextLengthExceeded, InvalidRequest
from service.gateway.apis import GenerationApi, Outgoing
from service.gateway.dispatch import PoolBackend, call_pool
from service.gateway.models import ModelDirectory, anyone
from service.gateway.multimodal import MediaSummary, check_pool_accepts
from service.gateway.remote_media import check_public_hosts
from service.gateway.requests import read_json_object
from service.routing.features import RequestFeatures
from service.routing.load import LoadTracker
from service.routing.policy import RouteDecision
from service.routing.setup import build_policy
from service.saturation import PoolLoad
from service.settings import PoolSettings, Settings
from service.telemetry.request import RequestTelemetry

REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"


@dataclass
class Parsed:
    raw: dict[str, Any]  # the JSON as the client sent it (bounded)
    body: Any  # the API's protocol model, validated


@dataclass
class Checked:
    """What the checks that need no pool found."""

    default_cap: int | None  # the tenant's max_tokens, when the request set none
    media: MediaSummary | None


@dataclass
class Routed:
    decision: RouteDecision
    features: RequestFeatures
    load: PoolLoad | None  # the chosen pool's, from the same view routing used


@dataclass
class PreparedRequest:
    """A request that passed every stage: what goes to which pool, with which headers."""

    api: GenerationApi
    pool: PoolSettings
    outgoing: Outgoing
    headers: dict[str, str]  # for the client's response


class RequestPipeline:
    def __init__(
        self,
        settings: Settings,
        backend: PoolBackend,
        loads: LoadTracker,
        access: AccessControl | None,
    ):
        self._settings = settings
        self._backend = backend
        self._loads = loads
        self._access = access
        self.directory = ModelDirectory(settings)
        self.policy = build_policy(settings)
        self._media_limits = settings.media

    async def run(
        self, request: Request, api: GenerationApi, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> Response:
        return await self.forward(await self.prepare(request, api, telemetry, ctx), telemetry, ctx)

    async def prepare(
        self, request: Request, api: GenerationApi, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> PreparedRequest:
        await self.authenticate(request, telemetry, ctx)
        parsed = await self.parse(request, api, ctx)
        checked = await self.check(api, parsed, ctx)
        with telemetry.span("route") as span:
            routed = self.route(request, api, parsed, checked)
            if span is not None:
                span.set_attributes(
                    {"gemma.route.pool": routed.decision.pool_id,
                     "gemma.route.reason": routed.decision.reason,
                     "gemma.request.model": parsed.body.model}
                )  # fmt: skip
        telemetry.routed(routed.decision.pool_id, routed.decision.reason)
        telemetry.prompt_estimate = routed.features.billed_prompt_tokens
        ctx.route_reason = routed.decision.reason
        pool = self._settings.pool(routed.decision.pool_id)
        self.check_for_pool(api, parsed.body, pool, checked, routed, ctx)
        headers = {"x-routed-model": pool.id, "x-route-reason": routed.decision.reason}
        headers |= await self.admit(ctx, routed.features)
        if telemetry.trace_id:
            headers[TRACE_ID_HEADER] = telemetry.trace_id
        outgoing = api.for_pool(parsed.body, pool.id, catalog.max_model_len(pool))
        return PreparedRequest(api, pool, outgoing, headers)

    # --- the stages ----------------------------------------------------------------------

    async def authenticate(
        self, request: Request, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> None:
        with telemetry.span("auth") as span:
            access = self._access
            ctx.principal = await access.authenticate(request.headers) if access else None
            if ctx.principal is not None and ctx.principal.tenant is not None:
                telemetry.tenant = ctx.principal.tenant.id
            if span is not None:
                span.set_attribute("gemma.auth.mode", "api_key" if ctx.principal else "none")
                span.set_attribute("gemma.tenant", telemetry.tenant)

    async def parse(self, request: Request, api: GenerationApi, ctx: RequestContext) -> Parsed:
        raw = await read_json_object(request, self._settings.server.max_body_bytes)
        api.check_raw(raw, self._settings.bounds)
        body = api.parse(raw)
        ctx.model = body.model
        if self._audits_content():
            ctx.prompt = api.prompt_text(raw)
        return Parsed(raw, body)

    async def check(self, api: GenerationApi, parsed: Parsed, ctx: RequestContext) -> Checked:
        """The model (404, then 403), the tenant's caps, the media: all without a pool."""
        self.check_model(ctx, parsed.body.model)
        access = self._access
        default_cap = access.check_request(ctx.principal, parsed.body) if access else None
        media = api.media(parsed.body, self._media_limits)
        if media is not None and media.remote_hosts:
            await check_public_hosts(media.remote_hosts)
        return Checked(default_cap, media)

    def route(
        self, request: Request, api: GenerationApi, parsed: Parsed, checked: Checked
    ) -> Routed:
        routing = self._settings.routing
        features = api.features(parsed.body, parsed.raw, checked.media, routing)
        features = dataclasses.replace(features, tier=request.headers.get(routing.tier_header))
        snapshot = self._loads.snapshot()  # one view of pool load for routing and shedding
        model = parsed.body.model
        if self.directory.is_alias(model):
            decision = self.policy.route(features, snapshot)
        else:
            decision = self.policy.pin(self.directory.pool_id(model), features)
        return Routed(decision, features, snapshot.get(decision.pool_id))

    def check_for_pool(
        self,
        api: GenerationApi,
        body: Any,
        pool: PoolSettings,
        checked: Checked,
        routed: Routed,
        ctx: RequestContext,
    ) -> None:
        """What the chosen pool refuses (media it does not take, output past its context),
        then priority shedding: a request refused anyway is not counted as shed."""
        max_model_len = catalog.max_model_len(pool)
        if checked.media is not None:
            check_pool_accepts(
                checked.media, pool.id, catalog.modalities(pool), pool.max_items_per_prompt
            )
        if checked.default_cap is not None:
            # A cap the client did not ask for must not make its prompt overflow the context.
            room = max_model_len - api.prompt_bound(body, routed.features)
            api.cap_output(body, max(1, min(checked.default_cap, room)))
        check_output_fits(api, body, max_model_len)
        if self._access is not None:
            self._access.check_priority(ctx.principal, routed.load, self.policy.thresholds, pool.id)

    async def admit(self, ctx: RequestContext, features: RequestFeatures) -> dict[str, str]:
        """Rate limits and the token charge; the limit headers for the response."""
        if self._access is None:
            return {}
        ctx.admission = await self._access.admit(
            ctx.principal, ctx.request_id, features.billed_tokens
        )
        return ctx.admission.headers if ctx.admission is not None else {}

    async def forward(
        self, prepared: PreparedRequest, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> Response:
        outgoing = prepared.outgoing
        return await call_pool(
            self._backend,
            prepared.api.endpoint,
            outgoing.body,
            telemetry=telemetry,
            timeout_s=self._settings.server.request_timeout_s,
            request_id=ctx.request_id,
            headers=prepared.headers,
            strip_usage=outgoing.strip_usage,
            checks=outgoing.checks,
            dialect=prepared.api.dialect,
            finish=self._loads.started(prepared.pool.id),
        )

    # --- the tokenizer -------------------------------------------------------------------

    async def tokenizer(
        self, request: Request, endpoint: str, telemetry: RequestTelemetry, ctx: RequestContext
    ) -> Response:
        """/tokenize and /detokenize: the pool's own tokenizer (an alias uses its quality
        pool's; Gemma 4's models share one). Not admitted or counted as load: no generation."""
        await self.authenticate(request, telemetry, ctx)
        raw = await read_json_object(request, self._settings.server.max_body_bytes)
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required", param="model")
        ctx.model = model
        self.check_model(ctx, model)
        if ctx.principal is not None:
            ctx.principal.check_model(model)
        pool_id = (
            self.policy.thresholds.quality_pool
            if self.directory.is_alias(model)
            else self.directory.pool_id(model)
        )
        telemetry.routed(pool_id, "tokenizer")
        raw["model"] = pool_id
        return await call_pool(
            self._backend,
            endpoint,
            RawBody(raw),
            telemetry=telemetry,
            timeout_s=self._settings.server.request_timeout_s,
            request_id=ctx.request_id,
            headers={"x-routed-model": pool_id},
        )

    def check_model(self, ctx: RequestContext, model: str) -> None:
        if not self.directory.is_alias(model):
            # An unknown model is 404 before it is 403; the 404 lists what the caller may use.
            tenant = ctx.principal.tenant if ctx.principal is not None else None
            self.directory.pool_id(model, tenant.may_use if tenant is not None else anyone)

    def _audits_content(self) -> bool:
        access = self._access
        return access is not None and access.audit is not None and access.audit.include_content


def check_output_fits(api: GenerationApi, body: Any, max_model_len: int) -> None:
    """The prompt is counted by the engine; the output limit alone is refused here, free."""
    requested = api.requested_output(body)
    if requested is not None and requested >= max_model_len:
        name = api.max_tokens_field
        raise ContextLengthExceeded(
            f"{name} is {requested}, but the model '{body.model}' has a context of "
            f"{max_model_len} tokens, which must hold the prompt and {name}",
            param=name,
        )


class RawBody:
    """A body the gateway validated as plain JSON (tokenize), sent as it was parsed."""

    def __init__(self, data: dict[str, Any]):
        self._data = data
        self.stream = False

    def model_dump_json(self, **_: Any) -> str:
        return json.dumps(self._data)
