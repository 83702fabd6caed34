"""The gateway's HTTP contract, isolated from Ray and vLLM by a fake pool backend."""

import asyncio
import json

import httpx
import pytest
from ray.serve.llm.openai_api_models import ErrorResponse

from service.gateway.api import create_app
from service.settings import Settings, embedded_pools
from service.telemetry.request import RequestTelemetry
from tests.unit.gateway_fakes import (
    FakeBackend,
    RecordingRecorder,
    chat_body,
    chat_response,
)

CHAT = "/v1/chat/completions"
TEXT_POOLS = embedded_pools()[:2]  # the MoE and the dense stand-ins, text only


@pytest.fixture
def settings():
    return Settings(server={"max_body_bytes": 2048, "request_timeout_s": 0.5})


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def ready():
    return {"gemma-4-26b-a4b-it": True, "gemma-4-31b-it": True}


@pytest.fixture
async def client(settings, backend, ready):
    async def readiness():
        return ready

    app = create_app(settings, backend, readiness)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def assert_openai_error(response, status, code=None):
    assert response.status_code == status
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code
    return body["error"]


async def test_alias_is_routed_and_says_where(client, backend):
    response = await client.post(CHAT, json=chat_body("gemma-4"))
    assert response.status_code == 200
    assert response.headers["x-routed-model"] == "gemma-4-26b-a4b-it"
    assert response.json()["model"] == "gemma-4-26b-a4b-it"
    assert backend.calls[0][:2] == ("gemma-4-26b-a4b-it", "chat")


async def test_concrete_id_pins_its_pool(client, backend):
    response = await client.post(CHAT, json=chat_body("gemma-4-31b-it"))
    assert response.headers["x-routed-model"] == "gemma-4-31b-it"
    assert backend.calls[0][0] == "gemma-4-31b-it"


async def test_unknown_model_is_404_listing_the_available_ids(client, backend):
    error = assert_openai_error(
        await client.post(CHAT, json=chat_body("gpt-4")), 404, "model_not_found"
    )
    for model_id in ("gemma-4-26b-a4b-it", "gemma-4-31b-it", "gemma-4", "auto"):
        assert model_id in error["message"]
    assert error["param"] == "model"
    assert backend.calls == []


async def test_malformed_json_is_400(client):
    response = await client.post(
        CHAT, content=b'{"model": ', headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400, "invalid_json")
    assert "not valid JSON" in error["message"]


async def test_json_that_is_not_an_object_is_400(client):
    assert_openai_error(await client.post(CHAT, json=[1, 2]), 400, "invalid_json")


async def test_schema_violation_is_400_naming_the_field(client):
    error = assert_openai_error(await client.post(CHAT, json=chat_body(temperature="hot")), 400)
    assert error["param"] == "temperature"
    assert "temperature" in error["message"]


async def test_missing_messages_is_400_naming_the_field(client):
    error = assert_openai_error(await client.post(CHAT, json={"model": "gemma-4"}), 400)
    assert error["param"] == "messages"


async def test_max_tokens_beyond_the_context_is_400_with_both_numbers(client, backend):
    error = assert_openai_error(
        await client.post(CHAT, json=chat_body(max_tokens=5000)), 400, "context_length_exceeded"
    )
    assert "5000" in error["message"] and "4096" in error["message"]  # the alias's largest
    assert backend.calls == []


async def test_body_over_the_limit_is_413_before_reading_it(client, backend):
    body = chat_body(messages=[{"role": "user", "content": "x" * 4096}])
    error = assert_openai_error(await client.post(CHAT, json=body), 413, "request_too_large")
    assert "2048" in error["message"]
    assert backend.calls == []


async def test_streamed_body_over_the_limit_is_413(client):
    async def chunks():
        for _ in range(10):
            yield b"x" * 1024

    assert_openai_error(await client.post(CHAT, content=chunks()), 413, "request_too_large")


async def test_engine_client_error_passes_through_in_openai_shape(client, backend):
    backend.script = lambda req: [
        ErrorResponse(
            error={
                "message": "This model's maximum context length is 2048 tokens. However, "
                "you requested 3000 tokens",
                "type": "BadRequestError",
                "code": 400,
            }
        )
    ]
    error = assert_openai_error(
        await client.post(CHAT, json=chat_body()), 400, "context_length_exceeded"
    )
    assert "2048" in error["message"] and "3000" in error["message"]


async def test_engine_failure_is_500_without_internals(client, backend):
    backend.script = lambda req: [RuntimeError("CUDA out of memory at 0xdeadbeef")]
    error = assert_openai_error(await client.post(CHAT, json=chat_body()), 500, "engine_error")
    assert "CUDA" not in error["message"] and "deadbeef" not in error["message"]
    assert backend.streams[0].cancelled


async def test_engine_5xx_error_response_is_hidden(client, backend):
    backend.script = lambda req: [
        ErrorResponse(
            error={
                "message": "EngineCore died: /opt/secret/path",
                "type": "InternalServerError",
                "code": 500,
            }
        )
    ]
    error = assert_openai_error(await client.post(CHAT, json=chat_body()), 500, "engine_error")
    assert "secret" not in error["message"]


async def test_stream_is_sse_ending_with_done(client, backend):
    backend.script = lambda req: [
        ['data: {"a": 1}\n\n'],
        ['data: {"a": 2}\n\n', "data: [DONE]\n\n"],
    ]
    response = await client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-routed-model"] == "gemma-4-26b-a4b-it"
    assert response.text == 'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'


async def test_failure_mid_stream_becomes_an_error_event_then_done(client, backend):
    backend.script = lambda req: [['data: {"a": 1}\n\n'], RuntimeError("boom")]
    response = await client.post(CHAT, json=chat_body(stream=True))
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0] == 'data: {"a": 1}'
    assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "engine_error"
    assert events[2] == "data: [DONE]"
    assert backend.streams[0].cancelled


async def test_request_never_outlives_its_deadline(client, backend):
    backend.delay_s = 5.0
    error = assert_openai_error(await client.post(CHAT, json=chat_body()), 504, "deadline_exceeded")
    assert "0.5 s" in error["message"]
    assert backend.streams[0].cancelled


async def test_stream_past_its_deadline_ends_with_an_error_event(client, backend):
    backend.script = lambda req: [['data: {"a": 1}\n\n']] + [["data: {}\n\n"]] * 100
    backend.delay_s = 0.05
    response = await client.post(CHAT, json=chat_body(stream=True))
    assert '"deadline_exceeded"' in response.text
    assert response.text.endswith("data: [DONE]\n\n")
    assert backend.streams[0].cancelled


async def test_completions_use_the_completions_method(client, backend):
    backend.script = lambda req: [
        ErrorResponse(error={"message": "bad prompt", "type": "BadRequestError", "code": 400})
    ]
    await client.post("/v1/completions", json={"model": "gemma-4-31b-it", "prompt": "hi"})
    assert backend.calls[0][:2] == ("gemma-4-31b-it", "completions")


async def test_models_lists_pools_and_aliases(client):
    models = (await client.get("/v1/models")).json()
    ids = [m["id"] for m in models["data"]]
    pools = ["gemma-4-26b-a4b-it", "gemma-4-31b-it", "gemma-4-e4b-it"]
    assert ids == [*pools, "gemma-4", "auto"]
    alias = models["data"][3]
    assert alias["metadata"]["routes_to"] == pools
    assert alias["max_model_len"] == 4096
    assert models["data"][0]["max_model_len"] == 2048


async def test_one_model_is_retrievable_and_unknown_is_404(client):
    assert (await client.get("/v1/models/gemma-4-31b-it")).json()["id"] == "gemma-4-31b-it"
    assert_openai_error(await client.get("/v1/models/nope"), 404, "model_not_found")


async def test_unknown_route_and_wrong_method_answer_in_openai_shape(client):
    assert_openai_error(await client.get("/v1/nothing"), 404, "not_found")
    assert_openai_error(await client.get(CHAT), 405, "method_not_allowed")


async def test_an_app_built_without_access_control_has_no_admin_api(client):
    assert_openai_error(await client.get("/admin/usage"), 404, "not_found")


async def test_health_is_always_ok(client):
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_ready_is_503_until_every_pool_has_a_replica(client, ready):
    assert (await client.get("/ready")).status_code == 200
    ready["gemma-4-31b-it"] = False
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["pools"]["gemma-4-31b-it"] is False


# routing ------------------------------------------------------------------------------

PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQ"
    "GAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_short_requests_go_to_the_interactive_pool_with_the_reason(client):
    response = await client.post(CHAT, json=chat_body())
    assert response.headers["x-routed-model"] == "gemma-4-26b-a4b-it"
    assert response.headers["x-route-reason"] == "shape:interactive"


async def test_tool_use_goes_to_the_quality_pool(client):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = await client.post(CHAT, json=chat_body(tools=[tool]))
    assert response.headers["x-routed-model"] == "gemma-4-31b-it"
    assert response.headers["x-route-reason"] == "shape:tools"


async def test_a_pinned_model_says_so(client):
    response = await client.post(CHAT, json=chat_body("gemma-4-26b-a4b-it"))
    assert response.headers["x-route-reason"] == "pinned"


async def test_audio_with_no_audio_pool_is_400_saying_so(backend, ready):
    settings = Settings(pools=TEXT_POOLS)
    app = create_app(settings, backend, lambda: asyncio.sleep(0, ready))
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    body = chat_body(messages=[{"role": "user", "content": [audio]}])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        error = assert_openai_error(await c.post(CHAT, json=body), 400, "no_capable_model")
    assert "no deployed model accepts audio input" in error["message"]
    assert backend.calls == []


async def test_audio_on_the_alias_goes_to_the_pool_that_takes_audio(client, backend):
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    body = chat_body(messages=[{"role": "user", "content": [audio]}])
    response = await client.post(CHAT, json=body)
    assert response.headers["x-routed-model"] == "gemma-4-e4b-it"
    assert response.headers["x-route-reason"] == "modality:audio"


async def test_image_to_a_text_only_pool_is_400_naming_the_pool(client, backend):
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}}
    body = chat_body("gemma-4-31b-it", messages=[{"role": "user", "content": [image]}])
    error = assert_openai_error(await client.post(CHAT, json=body), 400)
    assert "'gemma-4-31b-it' does not accept image input" in error["message"]


async def test_oversized_image_is_413_naming_the_part(backend, ready):
    settings = Settings(media={"max_image_bytes": 10})
    app = create_app(settings, backend, lambda: asyncio.sleep(0, ready))
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}}
    body = chat_body(messages=[{"role": "user", "content": [image]}])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        error = assert_openai_error(await c.post(CHAT, json=body), 413)
    assert "messages[0].content[0].image_url.url" in error["message"]


async def test_a_saturated_pool_spills_over_and_both_saturated_is_503(backend, ready):
    settings = Settings(pools=TEXT_POOLS, routing={"max_ongoing_per_replica": 1})
    app = create_app(settings, backend, lambda: asyncio.sleep(0, ready))
    backend.script = lambda req: [["data: {}\n\n"]] * 20
    backend.delay_s = 0.05
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        first = asyncio.create_task(c.post(CHAT, json=chat_body(stream=True)))
        await asyncio.sleep(0.2)  # the first stream holds the interactive pool
        second = asyncio.create_task(c.post(CHAT, json=chat_body(stream=True)))
        await asyncio.sleep(0.2)
        third = await c.post(CHAT, json=chat_body())
        first_response, second_response = await first, await second
    assert first_response.headers["x-routed-model"] == "gemma-4-26b-a4b-it"
    assert second_response.headers["x-routed-model"] == "gemma-4-31b-it"
    assert second_response.headers["x-route-reason"] == "spill:saturated"
    assert third.status_code == 503 and third.headers["retry-after"] == "2"


async def test_a_client_gone_before_the_first_byte_still_frees_the_request(backend):
    from types import SimpleNamespace

    from service.gateway.dispatch import call_pool

    backend.script = lambda req: [["data: {}\n\n"]] * 3
    finished = []
    recorder = RecordingRecorder()
    telemetry = RequestTelemetry("chat", CHAT, {}, recorder)
    telemetry.routed("gemma-4-26b-a4b-it", "pinned")
    response = await call_pool(
        backend,
        "chat",
        SimpleNamespace(model="gemma-4-26b-a4b-it"),
        telemetry=telemetry,
        timeout_s=5,
        request_id="r1",
        headers={},
        finish=lambda: finished.append(1),
    )

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        raise OSError("client gone")

    with pytest.raises(BaseException):  # noqa: B017  (how it surfaces is Starlette's business)
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert finished == [1]
    assert backend.streams[0].cancelled
    assert [(o.status, o.error_code) for o in recorder.outcomes] == [(499, "client_closed")]


# --- hostile and careless bodies: a 400 naming the problem, never a 500 ---------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "undeclared"}},
            },
            "tool_choice",
        ),
        ({"stream_options": -1}, "stream_options"),
        ({"tool_choice": {"a": {"b": []}}}, "tool_choice"),
    ],
)
async def test_fields_that_contradict_each_other_are_400_naming_one(client, backend, extra, param):
    error = assert_openai_error(await client.post(CHAT, json=chat_body(**extra)), 400)
    assert error["param"] == param
    assert not backend.calls


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"model": "gemma-4", "n": ' + b"9" * 5000 + b"}"],
    ids=["nested-100000-deep", "5000-digit-integer"],
)
async def test_json_bombs_are_400(settings, backend, ready, raw):
    settings = Settings(server={"max_body_bytes": 1 << 20})

    async def readiness():
        return ready

    app = create_app(settings, backend, readiness)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        response = await c.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert assert_openai_error(response, 400, "invalid_json")


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 16384, "max_tokens": 1024}, "n"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids"),
        ({"bad_words": ["x"] * 65}, "bad_words"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        (
            {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
            "tools",
        ),
        (
            {"response_format": {"type": "json_schema",
                                 "json_schema": {"name": "s", "schema": {"enum": ["x" * 70000]}}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"json": _nested(40)}}, "structured_outputs.json"),
    ],
)  # fmt: skip
async def test_every_list_and_size_is_bounded(client, backend, extra, param):
    big = Settings(server={"max_body_bytes": 1 << 20})

    async def readiness():
        return {}

    app = create_app(big, backend, readiness)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        response = await c.post(CHAT, json=chat_body(**extra))
    error = assert_openai_error(response, 400)
    assert error["param"] == param
    assert "at most" in error["message"]
    assert not backend.calls


async def test_too_many_messages_are_refused_at_once(backend):
    async def readiness():
        return {}

    app = create_app(Settings(server={"max_body_bytes": 1 << 20}), backend, readiness)
    body = {"model": "gemma-4", "messages": [{"role": "user", "content": "hi"}] * 10_000}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        error = assert_openai_error(await c.post(CHAT, json=body), 400)
    assert error["param"] == "messages"
    assert "10000 entries; at most 1000" in error["message"]


# --- remote media URLs: public hosts only ------------------------------------------------------


def _image_at(url: str) -> dict:
    return chat_body(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )


async def _remote_gateway(backend, pools=None, **media):
    async def readiness():
        return {}

    pools = {"pools": pools} if pools else {}  # a GPU pool takes images; the tiny ones do not
    settings = Settings(media={"allow_remote_urls": True, **media}, **pools)
    transport = httpx.ASGITransport(app=create_app(settings, backend, readiness))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://127.0.0.1:8000/admin/usage",
        "http://localhost/cat.png",
        "http://10.1.2.3/cat.png",
        "http://[::1]/cat.png",
        "http://[fd00::1]/cat.png",
    ],
)
async def test_a_media_url_naming_a_non_public_address_is_refused(backend, url):
    async with await _remote_gateway(backend) as c:
        error = assert_openai_error(await c.post(CHAT, json=_image_at(url)), 400)
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert "not a public address" in error["message"]
    assert not backend.calls


async def test_a_media_url_whose_host_does_not_resolve_is_refused(backend):
    async with await _remote_gateway(backend) as c:
        response = await c.post(CHAT, json=_image_at("http://no-such-host.invalid/cat.png"))
    assert "cannot be resolved" in assert_openai_error(response, 400)["message"]


async def test_a_media_url_at_a_public_address_reaches_the_engine(backend):
    async with await _remote_gateway(backend, pools=[{"id": "gemma-4-31b-it"}]) as c:
        response = await c.post(CHAT, json=_image_at("http://93.184.216.34/cat.png"))
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 1


async def test_with_allowed_domains_media_from_any_other_host_is_refused(backend):
    async with await _remote_gateway(backend, allowed_remote_domains=["img.example.com"]) as c:
        response = await c.post(CHAT, json=_image_at("http://93.184.216.34/cat.png"))
    assert "not allowed on this server" in assert_openai_error(response, 400)["message"]


# --- a replica lost before its first item ----------------------------------------------------


async def test_a_replica_lost_before_the_first_item_is_retried_once(client, backend):
    from ray.exceptions import ActorDiedError

    answers = iter([[ActorDiedError()], None])
    backend.script = lambda req: next(answers) or [chat_response(req.model)]
    response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert len(backend.calls) == 2
    assert backend.streams[0].cancelled


async def test_a_replica_lost_twice_is_a_500_without_internals(client, backend):
    from ray.exceptions import ActorDiedError

    backend.script = lambda req: [ActorDiedError()]
    error = assert_openai_error(await client.post(CHAT, json=chat_body()), 500, "engine_error")
    assert "Actor" not in error["message"]
    assert len(backend.calls) == 2


async def test_an_engine_error_is_not_retried(client, backend):
    backend.script = lambda req: [RuntimeError("bad request shape")]
    assert_openai_error(await client.post(CHAT, json=chat_body()), 500, "engine_error")
    assert len(backend.calls) == 1


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "gemma-4", "messages": False}, "messages"),
        (CHAT, {"model": "gemma-4", "messages": [["hi"]]}, "messages[0]"),
        ("/v1/completions", {"model": "gemma-4", "prompt": "x", "structured_outputs": []},
         "structured_outputs"),
    ],
)  # fmt: skip
async def test_wrong_typed_containers_are_400_naming_them(client, backend, path, body, param):
    # vLLM's own "before" validators would crash on these (found by tests/reliability).
    error = assert_openai_error(await client.post(path, json=body), 400)
    assert error["param"] == param
