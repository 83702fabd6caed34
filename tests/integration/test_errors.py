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
    error = error_of(
        http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 400
    )
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
    messages = [{"role": "user", "content": "word " * 300}]
    prompt_tokens = len(
        stack.tokenizer(DENSE).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    assert prompt_tokens + 1500 > 2048 > prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DENSE, messages=messages, max_tokens=1500)
    body = err.value.body
    assert body["code"] == "context_length_exceeded"
    assert "2048" in body["message"]
    assert f"{prompt_tokens} in the messages, 1500 in the completion" in body["message"]


def test_completion_prompt_plus_max_tokens_over_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MOE, prompt="word " * 300, max_tokens=1500)
    assert "1500 in the completion" in err.value.body["message"]


def test_prompt_alone_over_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=DENSE, messages=[{"role": "user", "content": "colour " * 2500}]
        )
    assert err.value.body["code"] == "context_length_exceeded"
    assert "2048" in err.value.body["message"]


def test_body_over_the_limit_is_413(http):
    body = {"model": MOE, "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}
    error = error_of(http.post(CHAT, json=body), 413)
    assert str(MAX_BODY_BYTES) in error["message"]


def test_max_tokens_alone_over_the_context_is_400(http):
    error = error_of(
        http.post(
            CHAT,
            json={
                "model": MOE,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4096,
            },
        ),
        400,
    )
    assert "4096" in error["message"] and "2048" in error["message"]
