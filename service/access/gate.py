"""Access control in the request path: who is calling, may they, and is there room for them.

The gateway asks, in this order: authenticate, model allowed, max_tokens within the tenant's
cap, (routing), priority shedding on the chosen pool, then the tenant's rate limits. The
limits come last so a request refused for any other reason costs no quota. When the request
ends, `finish` settles the tokens charged, records usage and writes the audit line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from service.access.audit import AuditEntry, AuditLog
from service.access.authentication import Principal
from service.access.keys_reload import KeyFile
from service.access.keys_schema import Tenant
from service.access.limits import Admission, LimiterUnavailable, Limits, RateLimiter
from service.access.stores import build_limiter, build_usage_store
from service.access.usage import UsageStore, UsageUnavailable
from service.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    ShedForPriority,
    TooLargeForTokenLimit,
)
from service.saturation import PoolLoad, SaturationLimits, is_saturated
from service.settings import AccessSettings, Settings
from service.telemetry.metrics import RequestOutcome

log = logging.getLogger(__name__)

NO_TENANT = "none"  # authentication off


class MaxTokensAboveCap(InvalidRequest):
    code = "max_tokens_exceeded"


@dataclasses.dataclass
class RequestContext:
    """What access control learns about one request on its way through the gateway."""

    request_id: str
    principal: Principal | None = None
    admission: Admission | None = None
    model: str | None = None
    route_reason: str | None = None
    prompt: str | None = None  # only with audit_content


class AccessControl:
    def __init__(
        self,
        settings: AccessSettings,
        *,
        keys: KeyFile | None,
        limiter: RateLimiter,
        usage: UsageStore,
        audit: AuditLog | None,
        retry_after_s: int,
        on_store_error: Callable[[], None] = lambda: None,
    ):
        self._settings = settings
        self._keys = keys
        self._limiter = limiter
        self._usage = usage
        self.audit = audit
        self._retry_after_s = retry_after_s
        self._on_store_error = on_store_error
        self._tasks: set[asyncio.Task] = set()

    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller, or None when authentication is off (loopback only, by settings)."""
        if self._keys is None:
            return None
        ring = await self._keys.refreshed()
        return ring.authenticate(headers.get("authorization"))

    async def authorize_admin(self, headers: Mapping[str, str]) -> None:
        principal = await self.authenticate(headers)
        if principal is not None:
            principal.check_admin()

    def check_request(self, principal: Principal | None, body: Any) -> int | None:
        """Model allowed and max_tokens within the tenant's cap. Returns the cap when the
        request set no max_tokens: the caller fits it to the chosen pool's context."""
        if principal is None:
            return None
        principal.check_model(body.model)
        return cap_max_tokens(principal.tenant, body)

    async def keys_status(self) -> dict[str, Any] | None:
        """The keys file in force, and why its present version is not, if it is not."""
        if self._keys is None:
            return None
        await self._keys.refreshed()  # a due reload happens here, not only on a request
        return {
            "file": str(self._keys.path),
            "loaded_at": self._keys.loaded_at.isoformat("T", "seconds"),
            "error": self._keys.last_error,
        }

    def check_priority(
        self,
        principal: Principal | None,
        load: PoolLoad | None,
        limits: SaturationLimits,
        pool: str,
    ) -> None:
        if principal is None:
            return
        priority = str(principal.tenant.priority)
        share = self._settings.priority_shares[priority]
        if share < 1.0 and is_saturated(load, limits.scaled(share)):
            raise ShedForPriority(
                f"the model pool '{pool}' is busy and keeps its remaining room for higher "
                f"priority traffic ({priority} is shed first); retry in {self._retry_after_s} s",
                retry_after_s=self._retry_after_s,
            )

    async def admit(
        self, principal: Principal | None, request_id: str, estimated_tokens: int
    ) -> Admission | None:
        if principal is None:
            return None
        tenant = principal.tenant
        limits = limits_of(tenant)
        if not limits.any:
            return None
        tpm = limits.tokens_per_minute
        if tpm is not None and estimated_tokens > tpm:
            raise TooLargeForTokenLimit(
                f"request too large for tenant '{tenant.id}' on tokens per minute: limit {tpm}, "
                f"requested {estimated_tokens} (prompt estimate + max_tokens x choices); "
                "reduce the input, max_tokens or n"
            )
        charge = asyncio.ensure_future(
            self._limiter.admit(
                tenant.id, limits, request_id=request_id, estimated_tokens=estimated_tokens
            )
        )
        try:
            # Shielded: a client that leaves now must not leave behind a charge and a slot
            # the store took but nobody will release.
            admission = await asyncio.shield(charge)
        except asyncio.CancelledError:
            charge.add_done_callback(self._release_abandoned)
            raise
        except LimiterUnavailable as exc:
            self._on_store_error()
            fail = self._settings.on_store_error
            log.error("rate-limit store unavailable (on_store_error=%s): %s", fail, exc)
            if fail == "closed":
                if exc.pending is not None:  # refused: undo whatever the lost reply charged
                    self._spawn(self._limiter.settle(exc.pending, 0))
                raise ServiceUnavailable("rate limits cannot be checked; retry shortly") from None
            # Served unlimited; its pending lease is settled with what it used, like any other.
            return None if exc.pending is None else Admission(True, None, 0, {}, exc.pending)
        if not admission.admitted:
            raise RateLimited(
                f"rate limit reached for tenant '{tenant.id}' on {admission.limited_by}; "
                f"retry in {admission.retry_after_s} s",
                limited_by=admission.limited_by or "requests",
                retry_after_s=admission.retry_after_s,
                headers=admission.headers,
            )
        return admission

    def _release_abandoned(self, charge: asyncio.Future) -> None:
        """The admission of a request whose client left while it was decided: nothing was
        served, so its slot is freed and its token estimate refunded."""
        if charge.cancelled():
            return
        error = charge.exception()
        if error is None:
            lease = charge.result().lease
        else:
            lease = error.pending if isinstance(error, LimiterUnavailable) else None
        if lease is not None:
            self._spawn(self._limiter.settle(lease, 0))

    def finish(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        """Runs when the request ends (from a sync close): the store calls go in the background."""
        tokens = None
        if outcome.prompt_tokens is not None:
            tokens = outcome.prompt_tokens + (outcome.completion_tokens or 0)
        elif outcome.ttft_s is None:
            tokens = 0  # nothing was served (an engine failure, a client gone): refund it all
        if ctx.admission is not None and ctx.admission.lease is not None:
            self._spawn(self._limiter.settle(ctx.admission.lease, tokens))
        if ctx.principal is not None and ctx.principal.tenant and outcome.prompt_tokens is not None:
            self._spawn(
                self._usage.record(
                    ctx.principal.tenant.id,
                    outcome.pool,
                    outcome.prompt_tokens,
                    outcome.completion_tokens or 0,
                )
            )
        if self.audit is not None:
            self.audit.record(audit_entry(ctx, outcome))

    async def usage_report(self, window_s: int) -> list[dict[str, Any]]:
        try:
            rows = await self._usage.report(window_s)
        except UsageUnavailable as exc:
            log.error("usage store unavailable: %s", exc)
            raise ServiceUnavailable("usage cannot be read now; retry shortly") from None
        return [dataclasses.asdict(row) for row in rows]

    async def aclose(self, timeout_s: float) -> None:
        """Waits up to `timeout_s` for the settles and usage records still in flight (a
        replica that stops must not drop them: its requests' slots would stay held until their
        leases ran out), then closes the stores."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            if pending:
                log.error("stopping with %d limit or usage updates unsent", len(pending))
        await self._limiter.aclose()
        await self._usage.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a request's limits or usage failed: %s", task.exception())


def limits_of(tenant: Tenant) -> Limits:
    return Limits(
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
        max_concurrent_requests=tenant.max_concurrent_requests,
    )


def cap_max_tokens(tenant: Tenant, body: Any) -> int | None:
    cap = tenant.max_tokens
    if cap is None:
        return None
    # Chat's max_completion_tokens wins over max_tokens; Responses names it max_output_tokens.
    field = next(
        (f for f in ("max_completion_tokens", "max_output_tokens") if getattr(body, f, None)),
        "max_tokens",
    )
    requested = getattr(body, field, None)
    if requested is None:
        # The caller writes it into the body once a pool is chosen: written now, it would
        # route every such request as a long output and charge the whole cap.
        return cap
    if requested > cap:
        raise MaxTokensAboveCap(
            f"{field} is {requested}, above the limit of {cap} for tenant '{tenant.id}'",
            param=field,
        )
    return None


def audit_entry(ctx: RequestContext, outcome: RequestOutcome) -> AuditEntry:
    principal = ctx.principal
    return AuditEntry(
        request_id=ctx.request_id,
        tenant=principal.tenant.id if principal and principal.tenant else NO_TENANT,
        key_id=principal.key_id if principal else None,
        endpoint=outcome.endpoint,
        model=ctx.model,
        pool=outcome.pool,
        route_reason=ctx.route_reason,
        status=outcome.status,
        error_code=outcome.error_code,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        latency_ms=round(outcome.duration_s * 1000, 1),
        ttft_ms=None if outcome.ttft_s is None else round(outcome.ttft_s * 1000, 1),
        prompt=ctx.prompt,
    )


def build_access(settings: Settings, on_store_error: Callable[[], None]) -> AccessControl:
    """One per gateway replica: the keys file it re-reads, and the shared (or local) stores."""
    a = settings.access
    keys = KeyFile(a.keys_file, reload_interval_s=a.keys_reload_interval_s) if a.keys_file else None
    # A slot outlives its request only if a gateway replica dies: free it after the deadline.
    lease_ttl_s = settings.server.request_timeout_s + 30
    return AccessControl(
        a,
        keys=keys,
        limiter=build_limiter(a.redis_url, lease_ttl_s=lease_ttl_s),
        usage=build_usage_store(a.redis_url),
        audit=AuditLog(a.audit_file, include_content=a.audit_content),
        retry_after_s=settings.routing.retry_after_s,
        on_store_error=on_store_error,
    )
