"""The gateway's Prometheus series, recorded through Ray's metrics agent.

Ray tags each series with the gateway replica that emitted it, so replicas never overwrite
each other and a `sum` over them counts every request once. Labels are bounded: endpoint,
pool, status class, error code and route reason come from fixed sets; request ids, prompts
and keys never become labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NO_POOL = "none"  # refused before a pool was chosen
NO_TENANT = "none"  # authentication off, or refused before the caller was known

TTFT_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5]
TTFT_BUCKETS_S += [10, 15, 20, 30, 60]
ITL_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15]
ITL_BUCKETS_S += [0.2, 0.3, 0.5, 1]
DURATION_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600]


@dataclass(frozen=True)
class RequestOutcome:
    """What one request did, as the gateway saw it."""

    endpoint: str  # chat | completions | responses | messages | tokenize | detokenize
    pool: str
    status: int
    duration_s: float
    error_code: str | None = None
    shed_reason: str | None = None
    ttft_s: float | None = None  # streaming only
    itl_s: float | None = None  # streaming with two or more tokens
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tenant: str = NO_TENANT

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx"


class MetricsRecorder(Protocol):
    def routed(self, pool: str, reason: str) -> None: ...
    def finished(self, outcome: RequestOutcome) -> None: ...
    def in_flight(self, pool: str, count: int) -> None: ...


class NullRecorder:
    def in_flight(self, pool: str, count: int) -> None:
        pass

    def finished(self, outcome: RequestOutcome) -> None:
        pass

    def routed(self, pool: str, reason: str) -> None:
        pass


class RayMetricsRecorder:
    """Must be built inside a Serve replica (Ray's metric objects need a worker)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        def counter(name: str, description: str, *tags: str) -> Counter:
            return Counter(f"gemma_serve_{name}", description=description, tag_keys=tags)

        def histogram(name: str, description: str, buckets: list, *tags: str) -> Histogram:
            return Histogram(
                f"gemma_serve_{name}", description=description, boundaries=buckets, tag_keys=tags
            )

        self._requests = counter(
            "requests", "Requests answered, by endpoint, pool, status class and tenant.",
            "endpoint", "pool", "status_class", "tenant",
        )  # fmt: skip
        self._errors = counter(
            "errors", "Requests answered with an error, by status and error code.",
            "pool", "status", "code",
        )  # fmt: skip
        self._shed = counter(
            "shed_requests", "Requests refused for load or limits.", "pool", "reason", "tenant"
        )
        self._decisions = counter(
            "route_decisions", "Requests routed, by the pool chosen and the rule that chose it.",
            "pool", "reason",
        )  # fmt: skip
        self._limiter_errors = counter(
            "limiter_errors", "Requests whose rate limits could not be checked (Redis down)."
        )
        self._prompt_tokens = counter(
            "prompt_tokens", "Prompt tokens, from usage.", "pool", "tenant"
        )
        self._completion_tokens = counter(
            "completion_tokens", "Generated tokens, from usage.", "pool", "tenant"
        )
        self._in_flight = Gauge(
            "gemma_serve_requests_in_flight",
            description="Requests this gateway replica has sent to a pool and not finished.",
            tag_keys=("pool",),
        )
        self._keys_file_stale = Gauge(
            "gemma_serve_keys_file_stale",
            description="1 while the keys file's present version is broken or missing and "
            "older keys stay in force (revocations in it are not applied).",
        )
        self._ttft = histogram(
            "time_to_first_token_seconds",
            "Streamed requests: arrival at the gateway to the first generated text sent.",
            TTFT_BUCKETS_S, "pool",
        )  # fmt: skip
        self._itl = histogram(
            "inter_token_latency_seconds",
            "Streamed requests: mean time between generated tokens after the first.",
            ITL_BUCKETS_S, "pool",
        )  # fmt: skip
        self._duration = histogram(
            "request_duration_seconds", "Arrival to the last byte, every request.",
            DURATION_BUCKETS_S, "endpoint", "pool", "status_class",
        )  # fmt: skip

    def in_flight(self, pool: str, count: int) -> None:
        self._in_flight.set(count, tags={"pool": pool})

    def keys_file_stale(self, stale: bool) -> None:
        self._keys_file_stale.set(1 if stale else 0)

    def limiter_error(self) -> None:
        self._limiter_errors.inc()

    def routed(self, pool: str, reason: str) -> None:
        self._decisions.inc(tags={"pool": pool, "reason": reason})

    def finished(self, o: RequestOutcome) -> None:
        pool = {"pool": o.pool}
        tenant = pool | {"tenant": o.tenant}
        by_status = {"endpoint": o.endpoint, "pool": o.pool, "status_class": o.status_class}
        self._requests.inc(tags=by_status | {"tenant": o.tenant})
        self._duration.observe(o.duration_s, tags=by_status)
        if o.status >= 400:
            self._errors.inc(tags=pool | {"status": str(o.status), "code": o.error_code or ""})
        if o.shed_reason:
            self._shed.inc(tags=tenant | {"reason": o.shed_reason})
        if o.ttft_s is not None:
            self._ttft.observe(o.ttft_s, tags=pool)
        if o.itl_s is not None:
            self._itl.observe(o.itl_s, tags=pool)
        if o.prompt_tokens:
            self._prompt_tokens.inc(o.prompt_tokens, tags=tenant)
        if o.completion_tokens:
            self._completion_tokens.inc(o.completion_tokens, tags=tenant)
