"""OpenTelemetry for the gateway: a tracer of its own (no global provider), W3C context in
from the client and out to the engine."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracer | None:
    """None when tracing is off. Tests pass an exporter (spans are then exported at once)."""
    if exporter is None:
        if not settings.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        # A client's sampling decision stands; traces started here keep this share.
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(processor)
    return provider.get_tracer("gemma_serve.gateway")


def incoming_context(headers: Mapping[str, str]) -> Context:
    """The client's trace (traceparent, tracestate), or an empty context that starts one."""
    return _PROPAGATOR.extract(headers)


def outgoing_headers(span: Span) -> dict[str, str]:
    """traceparent (and tracestate) naming `span` as the parent of what comes next."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    return carrier
