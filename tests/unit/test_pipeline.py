"""The gateway's request path, stage by stage (no Ray, no engine)."""

import json

import pytest
from starlette.requests import Request

from service.access.gate import RequestContext
from service.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from service.gateway.apis import CHAT, COMPLETIONS, MESSAGES, RESPONSES
from service.gateway.pipeline import Checked, RequestPipeline
from service.routing.setup import build_load_tracker
from service.routing.steps.spill_over import AllSaturated
from service.settings import Settings
from service.telemetry.metrics import NullRecorder
from service.telemetry.request import RequestTelemetry
from tests.unit.gateway_fakes import FakeBackend, chat_body

MOE, DENSE, E4B = "gemma-4-26b-a4b-it", "gemma-4-31b-it", "gemma-4-e4b-it"


def http_request(body: dict, headers: dict[str, str] | None = None) -> Request:
    payload = json.dumps(body).encode()
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    pairs = {"content-type": "application/json", "content-length": str(len(payload))}
    pairs |= headers or {}
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in pairs.items()],
    }
    return Request(scope, receive)


@pytest.fixture
def settings():
    return Settings()


@pytest.fixture
def loads(settings):
    return build_load_tracker(settings)


@pytest.fixture
def pipeline(settings, loads):
    return RequestPipeline(settings, FakeBackend(), loads, access=None)


def telemetry(endpoint="chat"):
    return RequestTelemetry(endpoint, "/v1/chat/completions", {}, NullRecorder())


async def prepare(pipeline, api, body, headers=None):
    return await pipeline.prepare(
        http_request(body, headers), api, telemetry(api.endpoint), RequestContext("r-1")
    )


async def parsed(pipeline, api, body):
    return await pipeline.parse(http_request(body), api, RequestContext("r-1"))


async def test_parse_refuses_a_list_over_its_bound_by_name(pipeline, settings):
    too_many = [{"role": "user", "content": "hi"}] * (settings.bounds.max_messages + 1)
    with pytest.raises(InvalidRequest) as refused:
        await parsed(pipeline, RESPONSES, {"model": "gemma-4", "input": too_many})
    assert refused.value.param == "input"


async def test_parse_bounds_the_tools_of_the_messages_api(pipeline, settings):
    tool = {"name": "t", "input_schema": {"type": "object"}}
    body = {"model": "gemma-4", "max_tokens": 8, "messages": [], "tools": [tool] * 129}
    with pytest.raises(InvalidRequest) as refused:
        await parsed(pipeline, MESSAGES, body)
    assert refused.value.param == "tools"


async def test_parse_bounds_a_messages_tool_schema_by_size(pipeline, settings):
    schema = {"type": "object", "description": "x" * settings.bounds.max_schema_bytes}
    body = {"model": "gemma-4", "max_tokens": 8, "messages": [], "tools": [
        {"name": "t", "input_schema": schema}
    ]}  # fmt: skip
    with pytest.raises(InvalidRequest) as refused:
        await parsed(pipeline, MESSAGES, body)
    assert refused.value.param == "tools[0].input_schema"


async def test_parse_refuses_media_parts_on_the_responses_api(pipeline):
    part = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    body = {"model": "gemma-4", "input": [{"role": "user", "content": [part]}]}
    with pytest.raises(InvalidRequest, match="input_image"):
        await parsed(pipeline, RESPONSES, body)


async def test_check_answers_an_unknown_model_with_404(pipeline):
    found = await parsed(pipeline, CHAT, chat_body("gpt-4"))
    with pytest.raises(ModelNotFound):
        await pipeline.check(CHAT, found, RequestContext("r-1"))


async def test_route_reads_the_tier_header(pipeline):
    found = await parsed(pipeline, CHAT, chat_body())
    request = http_request(chat_body(), {"x-gemma-tier": "quality"})
    routed = pipeline.route(request, CHAT, found, Checked(None, None))
    assert (routed.decision.pool_id, routed.decision.reason) == (DENSE, "tier:quality")


async def test_route_pins_a_concrete_id(pipeline):
    found = await parsed(pipeline, COMPLETIONS, {"model": DENSE, "prompt": "hi"})
    routed = pipeline.route(http_request({}), COMPLETIONS, found, Checked(None, None))
    assert (routed.decision.pool_id, routed.decision.reason) == (DENSE, "pinned")


async def test_route_spills_an_alias_request_off_a_saturated_pool(pipeline, loads, settings):
    per_replica = settings.routing.max_ongoing_per_replica
    for _ in range(per_replica):
        loads.started(MOE)
    loads.set_replicas({MOE: 1, DENSE: 1})
    found = await parsed(pipeline, CHAT, chat_body())
    routed = pipeline.route(http_request({}), CHAT, found, Checked(None, None))
    assert (routed.decision.pool_id, routed.decision.reason) == (DENSE, "spill:saturated")


async def test_check_for_pool_refuses_an_output_limit_past_the_context(pipeline, settings):
    pool = settings.pool(DENSE)
    body = {"model": DENSE, "input": "hi", "max_output_tokens": 10**6}
    found = await parsed(pipeline, RESPONSES, body)
    routed = pipeline.route(http_request({}), RESPONSES, found, Checked(None, None))
    with pytest.raises(ContextLengthExceeded) as refused:
        pipeline.check_for_pool(
            RESPONSES, found.body, pool, Checked(None, None), routed, RequestContext("r")
        )
    assert refused.value.param == "max_output_tokens"


async def test_check_for_pool_fits_a_default_cap_to_the_room_the_prompt_leaves(pipeline):
    settings = Settings(pools=[{"id": DENSE, "max_model_len": 1024}])
    pipeline = RequestPipeline(settings, FakeBackend(), build_load_tracker(settings), None)
    found = await parsed(pipeline, COMPLETIONS, {"model": DENSE, "prompt": "x" * 500})
    checked = Checked(default_cap=4096, media=None)
    routed = pipeline.route(http_request({}), COMPLETIONS, found, checked)
    pool = settings.pool(DENSE)
    pipeline.check_for_pool(COMPLETIONS, found.body, pool, checked, routed, RequestContext("r"))
    bound = COMPLETIONS.prompt_bound(found.body, routed.features)
    assert found.body.max_tokens == 1024 - bound


async def test_prepare_names_the_pool_and_asks_for_usage_the_client_did_not(pipeline):
    prepared = await prepare(pipeline, CHAT, chat_body(stream=True))
    assert prepared.outgoing.body.model == MOE
    assert prepared.outgoing.body.stream_options.include_usage
    assert prepared.outgoing.strip_usage
    assert prepared.headers["x-routed-model"] == MOE
    assert prepared.headers["x-route-reason"] == "shape:interactive"


async def test_prepare_keeps_the_usage_a_streaming_client_asked_for(pipeline):
    body = chat_body(stream=True, stream_options={"include_usage": True})
    prepared = await prepare(pipeline, CHAT, body)
    assert prepared.outgoing.body.stream_options.include_usage
    assert not prepared.outgoing.strip_usage


async def test_prepare_asks_for_no_usage_without_a_stream(pipeline):
    prepared = await prepare(pipeline, CHAT, chat_body())
    assert prepared.outgoing.body.stream_options is None
    assert not prepared.outgoing.strip_usage


async def test_prepare_asks_the_pool_to_check_a_grammar(pipeline):
    body = chat_body(response_format={"type": "json_object"})
    prepared = await prepare(pipeline, CHAT, body)
    assert prepared.outgoing.checks
    assert not (await prepare(pipeline, CHAT, chat_body())).outgoing.checks


async def test_prepare_sends_messages_requests_with_tools_to_the_quality_pool(pipeline):
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    body = {"model": "gemma-4", "max_tokens": 8, "messages": [], "tools": [tool]}
    prepared = await prepare(pipeline, MESSAGES, body)
    assert prepared.pool.id == DENSE
    assert prepared.headers["x-route-reason"] == "shape:tools"


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (RESPONSES, {"input": "hi", "tools": [{"type": "function", "name": "f"}]}),
        (RESPONSES, {"input": "hi", "text": {"format": {"type": "json_object"}}}),
        (MESSAGES, {"max_tokens": 8, "messages": [], "output_config": {"format": {"schema": {}}}}),
    ],
    ids=["responses-tools", "responses-json", "messages-json"],
)
async def test_native_apis_route_tools_and_structured_output_as_chat_does(pipeline, api, body):
    prepared = await prepare(pipeline, api, {"model": "gemma-4"} | body)
    assert prepared.pool.id == DENSE
    assert prepared.headers["x-route-reason"] in ("shape:tools", "shape:structured-output")


async def test_anthropic_thinking_switches_on_gemma4_thinking(pipeline):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    body = {"model": DENSE, "max_tokens": 1100, "messages": [], "thinking": thinking}
    prepared = await prepare(pipeline, MESSAGES, body)
    assert prepared.outgoing.body.chat_template_kwargs == {"enable_thinking": True}
    off = body | {"chat_template_kwargs": {"enable_thinking": False}}
    prepared = await prepare(pipeline, MESSAGES, off)
    assert prepared.outgoing.body.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (CHAT, chat_body(tool_choice="required", reasoning_effort="high")),
        (RESPONSES, {"input": "hi", "tool_choice": "required", "reasoning": {"effort": "high"}}),
        (
            MESSAGES,
            {
                "max_tokens": 1100,
                "messages": [],
                "tool_choice": {"type": "any"},
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
        ),
    ],
    ids=["chat", "responses", "messages"],
)
async def test_a_forced_tool_choice_answers_without_thinking(pipeline, api, body):
    tools = {
        CHAT: [{"type": "function", "function": {"name": "f"}}],
        RESPONSES: [{"type": "function", "name": "f"}],
        MESSAGES: [{"name": "f", "input_schema": {"type": "object"}}],
    }[api]
    prepared = await prepare(pipeline, api, {"model": DENSE} | body | {"tools": tools})
    assert prepared.outgoing.body.chat_template_kwargs["enable_thinking"] is False


async def test_a_native_request_whose_tool_choice_is_none_is_not_routed_for_tools(pipeline):
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    body = {"model": "gemma-4", "max_tokens": 8, "messages": [], "tools": [tool]}
    prepared = await prepare(pipeline, MESSAGES, body | {"tool_choice": {"type": "none"}})
    assert prepared.headers["x-route-reason"] != "shape:tools"


async def test_prepare_refuses_when_every_capable_pool_is_saturated(pipeline, loads, settings):
    for pool in (MOE, DENSE, E4B):
        for _ in range(settings.routing.max_ongoing_per_replica):
            loads.started(pool)
    loads.set_replicas({MOE: 1, DENSE: 1, E4B: 1})
    with pytest.raises(AllSaturated):
        await prepare(pipeline, CHAT, chat_body())
