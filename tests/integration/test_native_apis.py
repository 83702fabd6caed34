"""vLLM's Responses, Anthropic Messages and tokenizer APIs through the gateway: the official
`openai` and `anthropic` SDKs against real Ray Serve and real vLLM, under the same policies."""

import anthropic
import pytest

from tests.integration.conftest import DENSE, MOE


@pytest.fixture
def claude(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)


def test_a_response_is_created_on_the_pinned_pool_with_its_usage(client):
    raw = client.responses.with_raw_response.create(
        model=DENSE, input="Name three colours.", max_output_tokens=8, temperature=0.0
    )
    response = raw.parse()
    assert raw.headers["x-routed-model"] == DENSE
    assert response.status in ("completed", "incomplete")
    assert response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 8


def test_a_response_on_the_alias_is_routed_like_a_chat(client):
    raw = client.responses.with_raw_response.create(
        model="gemma-4", input="Hi", max_output_tokens=4
    )
    assert raw.headers["x-routed-model"] == MOE
    assert raw.headers["x-route-reason"]


def test_a_streamed_response_ends_with_response_completed(client):
    events = list(
        client.responses.create(model=DENSE, input="Hi", max_output_tokens=6, stream=True)
    )
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens > 0


def test_previous_response_id_is_refused_naming_the_field(http):
    body = {"model": DENSE, "input": "Hi", "previous_response_id": "resp_1"}
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "previous_response_id"


def test_an_image_part_in_a_response_request_is_refused(http):
    part = {"type": "input_image", "image_url": "http://169.254.169.254/latest"}
    body = {"model": DENSE, "input": [{"role": "user", "content": [part]}]}
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400
    assert "input_image" in response.json()["error"]["message"]


def test_an_unknown_model_on_the_responses_api_is_404(http):
    response = http.post("/v1/responses", json={"model": "gpt-9", "input": "Hi"})
    assert response.status_code == 404


def test_an_anthropic_message_is_answered_with_its_usage(claude):
    message = claude.messages.create(
        model=DENSE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 8


def test_a_streamed_anthropic_message_ends_with_message_stop(claude):
    with claude.messages.stream(
        model=DENSE, max_tokens=6, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert final.usage.output_tokens > 0


def test_a_message_without_max_tokens_is_a_400_naming_it(http):
    body = {"model": DENSE, "messages": [{"role": "user", "content": "Hi"}]}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert "max_tokens" in response.text


def test_max_tokens_past_the_context_is_a_400_on_the_messages_api(http, stack):
    body = {"model": DENSE, "max_tokens": 10**6, "messages": [{"role": "user", "content": "Hi"}]}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_tokenize_and_detokenize_round_trip_through_the_pool(http, stack):
    tokens = http.post("/tokenize", json={"model": DENSE, "prompt": "hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = http.post("/detokenize", json={"model": "gemma-4", "tokens": tokens["tokens"]})
    assert text.status_code == 200
    assert "hello" in text.json()["prompt"]


def test_tokenize_without_a_model_is_a_400(http):
    response = http.post("/tokenize", json={"prompt": "hi"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
