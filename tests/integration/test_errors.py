"""Every error case through the real stack answers in the OpenAI shape."""

import openai
import pytest

from tests.integration.conftest import DENSE, MAX_BODY_BYTES, MOE

CHAT = "/v1/chat/completions"


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_malformed_json_is_400(http):
    error = error_of(http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json"


def test_schema_violation_is_400_naming_the_field(http):
    error = error_of(http.post(CHAT, json={"model": MOE, "messages": "hello"}), 400)
    assert error["param"] == "messages"


def test_unknown_model_is_404_listing_the_ids(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    message = err.value.body["message"]
    assert MOE in message and DENSE in message and "gemma-4" in message


def test_prompt_plus_max_tokens_over_the_context_is_400_with_both_numbers(client, stack):
    long_prompt = "colour " * 2500  # well over the 2048-token context of the tiny pools
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DENSE, messages=[{"role": "user", "content": long_prompt}], max_tokens=100)
    message = err.value.body["message"]
    assert "2048" in message
    assert err.value.body["code"] == "context_length_exceeded"
    # and the prompt's own size is named
    prompt_tokens = len(stack.tokenizer(DENSE)(long_prompt)["input_ids"])
    assert any(str(n) in message for n in range(prompt_tokens - 10, prompt_tokens + 40))


def test_body_over_the_limit_is_413(http):
    body = {"model": MOE, "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}
    error = error_of(http.post(CHAT, json=body), 413)
    assert str(MAX_BODY_BYTES) in error["message"]


def test_max_tokens_alone_over_the_context_is_400(http):
    error = error_of(http.post(CHAT, json={"model": MOE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096}), 400)
    assert "4096" in error["message"] and "2048" in error["message"]
