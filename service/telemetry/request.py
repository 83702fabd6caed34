"""One request's measurements and spans, from arrival to the last byte.

The API layer opens it on arrival, the dispatcher reports what the pool's answer did
(first output, usage), and whichever exit path comes first closes it; later closes are
no-ops, so a request is counted exactly once however it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import (
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_trace_id,
    set_span_in_context,
)

from service.errors import ServiceError
from service.telemetry.metrics import NO_POOL, NO_TENANT, MetricsRecorder, RequestOutcome
from service.telemetry.tracing import incoming_context, outgoing_headers

log = logging.getLogger(__name__)

# nginx's convention: the client closed the connection before the answer was complete.
CLIENT_CLOSED = 499


def _code_of(status: int) -> str | None:
    return "client_closed" if status == CLIENT_CLOSED else None


class RequestTelemetry:
    def __init__(
        self,
        endpoint: str,
        path: str,
        headers: Mapping[str, str],
        recorder: MetricsRecorder,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._endpoint = endpoint
        self._recorder = recorder
        self._tracer = tracer
        self._clock = clock
        self._start = clock()
        self.pool = NO_POOL
        self.tenant = NO_TENANT
        self._on_close: list[Callable[[RequestOutcome], None]] = []
        self._first_output_at: float | None = None
        self._last_output_at: float | None = None
        self._usage: tuple[int, int] | None = None
        self.prompt_estimate: int | None = None  # the gateway's, for a stream cut before usage
        self._outputs = 0
        self._closed = False
        self._root = self._call = self._queue = None
        if tracer is not None:
            self._root = tracer.start_span(
                f"POST {path}",
                context=incoming_context(headers),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": "POST", "url.path": path,
                            "gen_ai.operation.name": endpoint},
            )  # fmt: skip

    @property
    def trace_id(self) -> str | None:
        if self._root is None:
            return None
        return format_trace_id(self._root.get_span_context().trace_id)

    @contextmanager
    def span(self, name: str) -> Iterator[Any]:
        """A child of the request's span (None when tracing is off)."""
        if self._root is None:
            yield None
            return
        span = self._tracer.start_span(name, context=set_span_in_context(self._root))
        try:
            yield span
        finally:
            span.end()

    def on_close(self, callback: Callable[[RequestOutcome], None]) -> None:
        """Runs once with the outcome when the request ends (accounting, audit)."""
        self._on_close.append(callback)

    def routed(self, pool: str, reason: str) -> None:
        self.pool = pool
        self._recorder.routed(pool, reason)

    def dispatched(self) -> dict[str, str]:
        """Opens the pool call's spans; returns the trace headers the engine continues."""
        if self._root is None:
            return {}
        self._call = self._tracer.start_span(
            "pool.call",
            context=set_span_in_context(self._root),
            kind=SpanKind.CLIENT,
            attributes={"gemma.pool": self.pool},
        )
        self._queue = self._tracer.start_span("queue", context=set_span_in_context(self._call))
        return outgoing_headers(self._call)

    def answered(self) -> None:
        """The pool's first item arrived: queueing (and prefill) are over."""
        if self._queue is not None:
            self._queue.end()
            self._queue = None

    def output(self) -> None:
        """A chunk with generated text was sent to the client."""
        self._outputs += 1
        now = self._clock()
        if self._first_output_at is None:
            self._first_output_at = now
            if self._call is not None:
                self._call.add_event("first_token")
        self._last_output_at = now

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._usage = (prompt_tokens, completion_tokens)

    def close(self, status: int, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        service_error = error if isinstance(error, ServiceError) else None
        if self.pool == NO_POOL and getattr(error, "pool_id", None):
            self.pool = error.pool_id  # refused at routing, on behalf of this pool
        prompt, completion = self._usage or self._usage_so_far()
        outcome = RequestOutcome(
            endpoint=self._endpoint,
            pool=self.pool,
            tenant=self.tenant,
            status=status,
            duration_s=self._clock() - self._start,
            error_code=service_error.code if service_error else _code_of(status),
            shed_reason=service_error.shed_reason if service_error else None,
            ttft_s=self._ttft(),
            itl_s=self._itl(completion),
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        self._recorder.finished(outcome)
        for callback in self._on_close:
            try:
                callback(outcome)
            except Exception:  # accounting must never break the answer
                log.exception("a request's close callback failed")
        self._end_spans(status, error, prompt, completion)

    def _usage_so_far(self) -> tuple[int | None, int | None]:
        """A stream that ended before the engine's usage chunk (the client left, or the
        engine failed) is billed for what was sent: one token per output event (vLLM sends a
        chunk per decode step), and the gateway's prompt estimate."""
        if not self._outputs or self.prompt_estimate is None:
            return None, None
        return self.prompt_estimate, self._outputs

    def _ttft(self) -> float | None:
        return None if self._first_output_at is None else self._first_output_at - self._start

    def _itl(self, completion_tokens: int | None) -> float | None:
        if self._first_output_at is None or not completion_tokens or completion_tokens < 2:
            return None
        return (self._last_output_at - self._first_output_at) / (completion_tokens - 1)

    def _end_spans(
        self, status: int, error: BaseException | None, prompt: int | None, completion: int | None
    ) -> None:
        if self._root is None:
            return
        for span in (self._queue, self._call):
            if span is not None:
                span.end()
        root = self._root
        root.set_attribute("http.response.status_code", status)
        root.set_attribute("gemma.pool", self.pool)
        if prompt is not None:
            root.set_attribute("gen_ai.usage.input_tokens", prompt)
            root.set_attribute("gen_ai.usage.output_tokens", completion)
        if status >= 500:
            root.set_status(Status(StatusCode.ERROR, str(error) if error else None))
        if error is not None and status >= 500:
            root.record_exception(error)
        root.end()
