"""The data plane's units: what the gateway sends a replica, how it reads the answer, and
which replica it picks. The whole path runs in the integration tests."""

import asyncio
import json

import aiohttp
import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from service.gateway.apis import needs_pool_checks
from service.gateway.http_backend import HttpBackend, PoolAnswer, affinity_key
from service.pool_http import CHECK_HEADER, UNAVAILABLE_HEADER, GuardMiddleware
from service.replica_directory import ReplicaEntry
from service.routing.replicas import Candidate, choose

SCHEMA_BODY = {
    "model": "gemma-4-31b-it",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 8,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    },
}


class Fallback:
    def __init__(self):
        self.calls = []

    def stream(self, pool_id, method, request, trace_headers):
        self.calls.append(pool_id)
        return "handle-stream"


def entry(url, pool_id="dense", waiting=0):
    return ReplicaEntry(pool_id, url.rsplit(":", 1)[-1], url, 0, waiting, 0.0, 0.0)


def test_the_body_sent_to_a_replica_parses_back_to_the_request_the_gateway_validated():
    request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
    backend = HttpBackend(Fallback(), affinity={"dense": None})
    backend.set_replicas({"dense": [entry("http://10.0.0.1:1")]})
    stream = backend.stream("dense", "chat", request, {})
    parsed = ChatCompletionRequest.model_validate_json(stream._body)
    # request_id is a fresh random default on each parse (the engine's id is the header's).
    assert parsed.model_dump(exclude={"request_id"}) == request.model_dump(exclude={"request_id"})
    # Aliased fields go by their wire names (json_schema.schema), which vLLM reads.
    assert json.loads(stream._body)["response_format"]["json_schema"]["schema"] == {
        "type": "object"
    }


def test_only_fields_the_client_or_gateway_set_are_sent():
    request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
    request.max_tokens = 4
    backend = HttpBackend(Fallback(), affinity={"dense": None})
    backend.set_replicas({"dense": [entry("http://10.0.0.1:1")]})
    sent = json.loads(backend.stream("dense", "chat", request, {})._body)
    assert set(sent) == {"model", "messages", "max_tokens", "response_format"}
    assert sent["max_tokens"] == 4


def test_a_pool_without_announced_replicas_is_served_through_its_serve_handle():
    fallback = Fallback()
    backend = HttpBackend(fallback, affinity={"dense": None})
    request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
    assert backend.stream("dense", "chat", request, {}) == "handle-stream"
    assert fallback.calls == ["dense"]


def test_the_pool_checks_are_asked_for_when_a_request_carries_a_grammar_or_may_overflow():
    chat = ChatCompletionRequest.model_validate
    assert needs_pool_checks(chat(SCHEMA_BODY), max_model_len=2048)
    plain = {k: v for k, v in SCHEMA_BODY.items() if k != "response_format"}
    assert not needs_pool_checks(chat(plain), max_model_len=2048)
    assert needs_pool_checks(chat(plain | {"max_tokens": 2047}), max_model_len=2048)
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "max_tokens": 4})
    assert not needs_pool_checks(completion, max_model_len=2048)


def test_a_forced_tool_choice_asks_for_the_pool_checks_its_grammar_needs():
    plain = {k: v for k, v in SCHEMA_BODY.items() if k != "response_format"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    chat = ChatCompletionRequest.model_validate
    assert needs_pool_checks(chat(plain | {"tools": [tool], "tool_choice": "required"}), 2048)
    assert not needs_pool_checks(chat(plain | {"tools": [tool], "tool_choice": "auto"}), 2048)


def test_a_whole_answer_gives_its_usage_without_a_full_parse():
    body = json.dumps(
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    ).encode()
    answer = PoolAnswer(200, body)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 3)
    assert answer.error is None


def test_an_error_answer_carries_the_engines_code_message_and_param():
    body = json.dumps({"error": {"message": "bad", "code": 400, "param": "n"}}).encode()
    error = PoolAnswer(400, body).error
    assert (error.code, error.message, error.param) == (400, "bad", "n")
    assert PoolAnswer(502, b"<html>").error.code == 502


def test_without_affinity_the_replica_with_fewest_requests_in_flight_is_chosen():
    a, b = Candidate("a", 0), Candidate("b", 0)
    assert choose([a, b], {"a": 3, "b": 1}) == b


def test_among_equally_loaded_replicas_the_shorter_engine_queue_wins():
    a, b = Candidate("a", 5), Candidate("b", 0)
    assert choose([a, b], {}) == b


def test_a_shared_prefix_goes_to_the_same_replica_until_it_is_too_far_ahead():
    replicas = [Candidate(u, 0) for u in "abcd"]
    preferred = choose(replicas, {}, affinity_key="system prompt", max_imbalance=8)
    for _ in range(5):
        assert choose(replicas, {}, affinity_key="system prompt", max_imbalance=8) == preferred
    loaded = {preferred.url: 8}
    assert choose(replicas, loaded, affinity_key="system prompt", max_imbalance=8) != preferred


def test_the_affinity_key_is_the_start_of_the_conversation():
    request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
    assert "hi" in affinity_key(request)
    long = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 10_000})
    assert len(affinity_key(long)) == 2048


def asgi_call(app, path, body, headers=()):
    sent = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return sent


async def echo_app(scope, receive, send):
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"]})


def test_the_pool_guard_refuses_what_its_check_refuses_before_vllm_sees_it():
    async def refuse(endpoint, body):
        return 400, {"error": {"message": f"no {endpoint}", "code": 400}}

    guard = GuardMiddleware(echo_app, refuse)
    sent = asgi_call(guard, "/v1/chat/completions", b"{}", [(CHECK_HEADER.encode(), b"1")])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"] == "no chat"
    assert guard.ongoing == 0


def test_the_pool_guard_passes_the_same_body_on_when_the_check_allows_it():
    async def allow(endpoint, body):
        return None

    guard = GuardMiddleware(echo_app, allow)
    sent = asgi_call(guard, "/v1/completions", b'{"a": 1}', [(CHECK_HEADER.encode(), b"1")])
    assert sent[1]["body"] == b'{"a": 1}'


def test_the_pool_guard_checks_nothing_unless_the_gateway_asks():
    async def fail(endpoint, body):
        pytest.fail("checked without the header")

    sent = asgi_call(GuardMiddleware(echo_app, fail), "/v1/chat/completions", b"{}")
    assert sent[0]["status"] == 200


async def serve_sse(parts: list[bytes]):
    from aiohttp import web

    async def handler(request):
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(0.01)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def test_a_relayed_stream_comes_as_whole_events_however_the_bytes_were_cut():
    parts = [b'data: {"a": 1}\n\nda', b'ta: {"b": "\xc3', b'\xa9"}\n', b"\ndata: [DONE]\n\n"]

    async def run():
        runner, url = await serve_sse(parts)
        backend = HttpBackend(Fallback(), affinity={"dense": None})
        backend.set_replicas({"dense": [entry(url)]})
        request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
        items = [item async for item in backend.stream("dense", "chat", request, {})]
        await backend.aclose()
        await runner.cleanup()
        return items, backend

    items, backend = asyncio.run(run())
    events = [event for item in items for event in item]
    assert events == ['data: {"a": 1}\n\n', 'data: {"b": "é"}\n\n', "data: [DONE]\n\n"]
    assert backend._in_flight[backend._replicas["dense"][0].url] == 0


def test_a_replica_that_refuses_connections_is_left_out_for_a_while():
    from service.local_ports import free_port

    async def run():
        dead, live = f"http://127.0.0.1:{free_port()}", "http://127.0.0.1:1"
        backend = HttpBackend(Fallback(), affinity={"dense": None})
        backend.set_replicas({"dense": [entry(dead)]})
        request = ChatCompletionRequest.model_validate(SCHEMA_BODY)
        with pytest.raises(aiohttp.ClientConnectionError):
            await anext(backend.stream("dense", "chat", request, {}))
        backend.set_replicas({"dense": [entry(dead), entry(live)]})
        chosen = backend.stream("dense", "chat", request, {})
        await backend.aclose()
        return chosen._url

    assert asyncio.run(run()).startswith("http://127.0.0.1:1/")


def test_a_draining_pool_guard_refuses_new_requests_and_says_why():
    guard = GuardMiddleware(echo_app, None)
    guard.refusing = "draining"
    sent = asgi_call(guard, "/v1/chat/completions", b"{}")
    assert sent[0]["status"] == 503
    assert (UNAVAILABLE_HEADER.encode(), b"draining") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == 503
    assert guard.ongoing == 0


async def serve_draining_then(parts: list[bytes]):
    """Two replicas: one refusing as a draining one does, one streaming `parts`."""
    from aiohttp import web

    async def draining(request):
        return web.json_response(
            {"error": {"message": "draining", "code": 503}},
            status=503,
            headers={UNAVAILABLE_HEADER: "draining"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", draining)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    live_runner, live_url = await serve_sse(parts)
    return [runner, live_runner], f"http://127.0.0.1:{port}", live_url


def test_a_request_refused_by_a_draining_replica_is_retried_on_another():
    from service.gateway.dispatch import call_pool
    from service.telemetry.metrics import NullRecorder
    from service.telemetry.request import RequestTelemetry

    parts = [b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n', b"data: [DONE]\n\n"]

    async def run():
        runners, draining_url, live_url = await serve_draining_then(parts)
        backend = HttpBackend(Fallback(), affinity={"dense": None})
        # The draining replica first: with nothing in flight the choice falls to chance.
        backend.set_replicas({"dense": [entry(draining_url)]})
        backend._replicas["dense"].append(entry(live_url))
        backend._in_flight[live_url] = 1  # so the draining replica is chosen first
        request = ChatCompletionRequest.model_validate({**SCHEMA_BODY, "stream": True})
        telemetry = RequestTelemetry("chat", "/v1/chat/completions", {}, NullRecorder())
        telemetry.routed("dense", "pinned")
        response = await call_pool(
            backend, "chat", request, telemetry=telemetry, timeout_s=5, request_id="r", headers={}
        )
        body = b"".join(
            [c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator]
        )
        paused = backend._paused_until.get(draining_url, 0)
        await backend.aclose()
        for runner in runners:
            await runner.cleanup()
        return response.status_code, body, paused

    status, body, paused = asyncio.run(run())
    assert status == 200
    assert b'"content": "ok"' in body
    assert paused > 0  # left out for a while, like a replica that refused the connection


def test_a_client_that_leaves_after_the_last_token_is_billed_from_the_usage_behind_it():
    from service.gateway.dispatch import call_pool
    from service.telemetry.request import RequestTelemetry
    from tests.unit.gateway_fakes import RecordingRecorder

    finish = b'data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":8}}\n\n'
    parts = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', finish, usage]

    async def run():
        runner, url = await serve_sse(parts + [b"data: [DONE]\n\n"])
        backend = HttpBackend(Fallback(), affinity={"dense": None})
        backend.set_replicas({"dense": [entry(url)]})
        recorder = RecordingRecorder()
        telemetry = RequestTelemetry("chat", "/v1/chat/completions", {}, recorder)
        telemetry.routed("dense", "pinned")
        request = ChatCompletionRequest.model_validate({**SCHEMA_BODY, "stream": True})
        response = await call_pool(
            backend, "chat", request, telemetry=telemetry, timeout_s=5, request_id="r", headers={}
        )
        received = ""
        async for chunk in response.body_iterator:  # the client reads to the last token...
            received += chunk
            if '"finish_reason":"stop"' in received:
                break
        await response.body_iterator.aclose()  # ...and leaves
        await response._on_close()
        await backend.aclose()
        await runner.cleanup()
        return recorder.outcomes

    [outcome] = asyncio.run(run())
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (5, 8)
