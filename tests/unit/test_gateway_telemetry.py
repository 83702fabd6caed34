"""What the gateway measures and traces per request, isolated from Ray by a fake pool."""

import asyncio
import json

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.gateway.api import create_app
from service.settings import Settings, TracingSettings
from service.telemetry.tracing import build_tracer
from tests.unit.gateway_fakes import FakeBackend, RecordingRecorder, chat_body

CHAT = "/v1/chat/completions"
POOL = "gemma-4-26b-a4b-it"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


ROLE = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
USAGE = event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def token(text: str) -> str:
    return event({"choices": [{"index": 0, "delta": {"content": text}}]})


STREAM = [[ROLE], [token("a")], [token("b"), token("c")], [USAGE, "data: [DONE]\n\n"]]


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def recorder():
    return RecordingRecorder()


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


def client_for(backend, recorder, tracer=None):
    app = create_app(
        Settings(server={"request_timeout_s": 2}),
        backend,
        lambda: None,
        recorder=recorder,
        tracer=tracer,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def post(backend, recorder, body, tracer=None, headers=None):
    async with client_for(backend, recorder, tracer) as client:
        return await client.post(CHAT, json=body, headers=headers or {})


async def test_a_stream_records_ttft_inter_token_latency_and_usage(backend, recorder):
    backend.script = lambda req: STREAM
    await post(backend, recorder, chat_body(stream=True))
    (outcome,) = recorder.outcomes
    assert (outcome.endpoint, outcome.pool, outcome.status) == ("chat", POOL, 200)
    assert 0 < outcome.ttft_s <= outcome.duration_s
    assert outcome.itl_s is not None and outcome.itl_s >= 0
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (7, 3)


async def test_the_gateway_asks_for_usage_and_hides_it_from_a_client_that_did_not(
    backend, recorder
):
    backend.script = lambda req: STREAM
    response = await post(backend, recorder, chat_body(stream=True))
    assert backend.calls[0][2].stream_options.include_usage
    assert '"usage"' not in response.text
    assert response.text.endswith("data: [DONE]\n\n")


async def test_a_client_that_asked_for_usage_gets_it(backend, recorder):
    backend.script = lambda req: STREAM
    body = chat_body(stream=True, stream_options={"include_usage": True})
    response = await post(backend, recorder, body)
    assert '"prompt_tokens":7' in response.text


async def test_a_plain_response_records_usage_but_no_ttft(backend, recorder):
    await post(backend, recorder, chat_body())
    (outcome,) = recorder.outcomes
    assert outcome.status == 200 and outcome.ttft_s is None
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (3, 1)


async def test_the_routing_decision_is_recorded(backend, recorder):
    await post(backend, recorder, chat_body())
    assert recorder.decisions == [(POOL, "shape:interactive")]


async def test_a_request_refused_before_routing_counts_under_no_pool(backend, recorder):
    async with client_for(backend, recorder) as client:
        await client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    (outcome,) = recorder.outcomes
    assert (outcome.pool, outcome.status, outcome.error_code) == ("none", 400, "invalid_json")


async def test_a_pool_at_capacity_counts_as_shed(backend, recorder):
    from ray.serve.exceptions import BackPressureError

    backend.script = lambda req: [BackPressureError(num_queued_requests=1, max_queued_requests=1)]
    response = await post(backend, recorder, chat_body())
    assert response.status_code == 503
    (outcome,) = recorder.outcomes
    assert (outcome.pool, outcome.shed_reason) == (POOL, "capacity")


async def test_a_failure_mid_stream_is_recorded_with_its_status(backend, recorder):
    backend.script = lambda req: [[ROLE], [token("a")], RuntimeError("engine died")]
    await post(backend, recorder, chat_body(stream=True))
    (outcome,) = recorder.outcomes
    assert (outcome.status, outcome.error_code) == (500, "engine_error")


async def test_each_request_is_recorded_once(backend, recorder):
    backend.script = lambda req: STREAM
    for _ in range(3):
        await post(backend, recorder, chat_body(stream=True))
    assert len(recorder.outcomes) == 3


# --- tracing ---------------------------------------------------------------------------


def spans_by_name(exporter):
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_one_request_is_one_span_tree_under_the_clients_trace(backend, recorder, exporter):
    backend.script = lambda req: STREAM
    tracer = build_tracer(TracingSettings(), exporter)
    response = await post(
        backend, recorder, chat_body(stream=True), tracer, {"traceparent": TRACEPARENT}
    )
    spans = spans_by_name(exporter)
    assert set(spans) == {"POST /v1/chat/completions", "auth", "route", "pool.call", "queue"}
    root = spans["POST /v1/chat/completions"]
    assert root.kind == SpanKind.SERVER
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {CLIENT_TRACE}
    for child in ("auth", "route", "pool.call"):
        assert spans[child].parent.span_id == root.context.span_id
    assert spans["queue"].parent.span_id == spans["pool.call"].context.span_id
    assert response.headers["x-trace-id"] == CLIENT_TRACE


async def test_the_route_span_carries_the_decision(backend, recorder, exporter):
    await post(backend, recorder, chat_body(), build_tracer(TracingSettings(), exporter))
    route = spans_by_name(exporter)["route"].attributes
    assert route["gemma.route.pool"] == POOL
    assert route["gemma.route.reason"] == "shape:interactive"


async def test_the_engine_continues_the_trace_from_the_pool_call_span(backend, recorder, exporter):
    tracer = build_tracer(TracingSettings(), exporter)
    await post(backend, recorder, chat_body(), tracer, {"traceparent": TRACEPARENT})
    call = spans_by_name(exporter)["pool.call"]
    _, trace_id, parent_id, _ = backend.trace_headers["traceparent"].split("-")
    assert (trace_id, parent_id) == (CLIENT_TRACE, f"{call.context.span_id:016x}")


async def test_the_request_span_records_status_and_tokens(backend, recorder, exporter):
    backend.script = lambda req: STREAM
    await post(backend, recorder, chat_body(stream=True), build_tracer(TracingSettings(), exporter))
    root = spans_by_name(exporter)["POST /v1/chat/completions"].attributes
    assert root["http.response.status_code"] == 200
    assert (root["gen_ai.usage.input_tokens"], root["gen_ai.usage.output_tokens"]) == (7, 3)


async def test_without_a_traceparent_a_new_trace_starts_and_its_id_is_returned(
    backend, recorder, exporter
):
    response = await post(backend, recorder, chat_body(), build_tracer(TracingSettings(), exporter))
    root = spans_by_name(exporter)["POST /v1/chat/completions"]
    assert root.parent is None
    assert response.headers["x-trace-id"] == f"{root.context.trace_id:032x}"


async def test_an_error_answer_carries_the_trace_id_too(backend, recorder, exporter):
    tracer = build_tracer(TracingSettings(), exporter)
    response = await post(backend, recorder, chat_body(model="nope"), tracer)
    assert response.status_code == 404
    assert len(response.headers["x-trace-id"]) == 32


async def test_a_zero_sample_ratio_exports_nothing(backend, recorder, exporter):
    await post(
        backend, recorder, chat_body(), build_tracer(TracingSettings(sample_ratio=0), exporter)
    )
    assert exporter.get_finished_spans() == ()


async def test_with_tracing_off_no_trace_header_is_sent_and_none_goes_to_the_engine(
    backend, recorder
):
    response = await post(backend, recorder, chat_body(), headers={"traceparent": TRACEPARENT})
    assert "x-trace-id" not in response.headers
    assert backend.trace_headers == {}


def test_tracing_is_off_unless_an_endpoint_is_configured():
    assert build_tracer(TracingSettings()) is None


async def test_a_request_refused_because_every_pool_is_saturated_counts_as_shed(recorder):
    from service.routing.load import LoadTracker

    settings = Settings(routing={"max_ongoing_per_replica": 1})
    loads = LoadTracker([p.id for p in settings.pools])
    for pool in settings.pools:
        loads.started(pool.id)
    app = create_app(settings, FakeBackend(), lambda: None, loads, recorder=recorder)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        response = await c.post(CHAT, json=chat_body())
    assert response.status_code == 503
    (outcome,) = recorder.outcomes
    assert (outcome.pool, outcome.shed_reason) == (POOL, "saturated")


ENGINE_CRASH = (
    'data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for '
    'the root cause.", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
)


async def test_an_engine_error_inside_a_stream_reaches_the_client_without_internals(
    backend, recorder
):
    backend.script = lambda req: [[ROLE], [token("a")], [ENGINE_CRASH, "data: [DONE]\n\n"]]
    response = await post(backend, recorder, chat_body(stream=True), headers={"x-request-id": "r1"})
    events = [e for e in response.text.split("\n\n") if e]
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("server_error", "engine_error")
    assert "EngineCore" not in error["message"] and "r1" in error["message"]
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1


async def test_an_engine_error_inside_a_stream_is_counted_as_an_error(backend, recorder):
    backend.script = lambda req: [[ROLE], [token("a")], [ENGINE_CRASH, "data: [DONE]\n\n"]]
    await post(backend, recorder, chat_body(stream=True))
    (outcome,) = recorder.outcomes
    assert outcome.status == 500


async def test_a_client_error_inside_a_stream_keeps_its_message(backend, recorder):
    bad = 'data: {"error": {"message": "bad grammar", "type": "BadRequestError", "code": 400}}\n\n'
    backend.script = lambda req: [[ROLE], [bad, "data: [DONE]\n\n"]]
    response = await post(backend, recorder, chat_body(stream=True))
    assert '"bad grammar"' in response.text
    assert recorder.outcomes[0].status == 400


async def test_a_stream_whose_first_batch_ends_it_gets_one_done(backend, recorder):
    backend.script = lambda req: [[ROLE, token("a"), USAGE, "data: [DONE]\n\n"]]
    response = await post(backend, recorder, chat_body(stream=True))
    assert response.text.count("data: [DONE]") == 1


async def test_a_client_that_leaves_before_the_usage_chunk_is_billed_for_what_it_got(
    backend, recorder
):
    from types import SimpleNamespace

    from service.gateway.dispatch import call_pool
    from service.telemetry.request import RequestTelemetry

    backend.script = lambda req: [[ROLE], [token("a")], [token("b")], [token("c")], STREAM[-1]]
    telemetry = RequestTelemetry("chat", CHAT, {}, recorder)
    telemetry.routed(POOL, "pinned")
    telemetry.prompt_estimate = 12
    response = await call_pool(
        backend,
        "chat",
        SimpleNamespace(model=POOL),
        telemetry=telemetry,
        timeout_s=5,
        request_id="r1",
        headers={},
    )
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)
        if len(sent) > 3:  # the start, the role chunk and one token got out; the next fails
            raise OSError("client gone")

    with pytest.raises(BaseException):  # noqa: B017
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    (outcome,) = recorder.outcomes
    assert outcome.status == 499
    # The token whose send failed counts too: it was generated for this client.
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (12, 2)


async def test_a_client_that_leaves_during_upload_is_counted_as_client_closed(backend, recorder):
    app = create_app(Settings(), backend, lambda: None, recorder=recorder)
    sent: list[dict] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"model": "gemma-4", "mess', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": CHAT, "raw_path": CHAT.encode(),
        "query_string": b"", "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1", "scheme": "http", "server": ("gw", 80), "client": ("c", 1),
    }  # fmt: skip
    await app(scope, receive, send)
    (outcome,) = recorder.outcomes
    assert outcome.status == 499
    assert backend.calls == []
