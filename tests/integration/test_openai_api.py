"""The OpenAI API through the whole stack: official client, real Ray Serve, real vLLM."""

import json
import re

import jsonschema

from tests.integration.conftest import DENSE, E4B, MOE

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]
GREEDY = {"temperature": 0.0, "max_tokens": 16}


def test_models_lists_every_pool_and_the_aliases(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MOE, DENSE, E4B, "gemma-4", "auto"]


def test_chat_answers_from_the_pinned_pool(client):
    response = client.chat.completions.with_raw_response.create(
        model=DENSE, messages=MESSAGES, **GREEDY
    )
    completion = response.parse()
    assert response.headers["x-routed-model"] == DENSE
    assert completion.model == DENSE
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_a_short_alias_request_is_routed_to_the_interactive_pool(client):
    response = client.chat.completions.with_raw_response.create(
        model="gemma-4", messages=MESSAGES, **GREEDY
    )
    assert response.headers["x-routed-model"] == MOE
    assert response.parse().model == MOE


def templated_length(stack, pool_id, messages) -> int:
    templated = stack.tokenizer(pool_id).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return len(templated["input_ids"])


def test_prompt_tokens_equal_the_tokenizer_count_of_the_templated_prompt(client, stack):
    # Content as parts: vLLM hands this template string content as parts too, and the
    # Gemma 4 template renders a system part with a trailing space.
    messages = [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in MESSAGES
    ]
    usage = client.chat.completions.create(model=MOE, messages=messages, **GREEDY).usage
    assert usage.prompt_tokens == templated_length(stack, MOE, messages)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_prompt_tokens_of_plain_user_turns_equal_the_tokenizer_count(client, stack):
    messages = [{"role": "user", "content": "Name three colours."}]
    usage = client.chat.completions.create(model=DENSE, messages=messages, **GREEDY).usage
    assert usage.prompt_tokens == templated_length(stack, DENSE, messages)


def test_stream_delivers_chunks_usage_and_done(client, http):
    chunks = list(
        client.chat.completions.create(
            model=DENSE,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert all(c.model == DENSE for c in chunks)
    assert usage is not None and usage.completion_tokens > 0
    whole = client.chat.completions.create(model=DENSE, messages=MESSAGES, **GREEDY)
    assert text == whole.choices[0].message.content
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    raw = http.post(
        "/v1/chat/completions",
        json={"model": DENSE, "messages": MESSAGES, "stream": True, **GREEDY},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_completions_stream_and_non_stream_agree(client):
    whole = client.completions.create(model=MOE, prompt="The sky is", **GREEDY)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MOE, prompt="The sky is", stream=True, **GREEDY)
    )
    assert whole.model == MOE
    assert whole.choices[0].text == streamed


def test_n_returns_n_choices(client):
    completion = client.chat.completions.create(
        model=MOE, messages=MESSAGES, n=3, temperature=1.0, max_tokens=8
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]


def test_max_tokens_bounds_the_completion(client):
    completion = client.chat.completions.create(
        model=MOE, messages=MESSAGES, temperature=0.0, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_stop_sequence_cuts_the_text_before_it(client):
    free = (
        client.completions.create(
            model=DENSE,
            prompt="Once upon",
            temperature=0.0,
            max_tokens=24,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    stop = free[6:9]
    assert len(stop) == 3, free
    stopped = client.completions.create(
        model=DENSE,
        prompt="Once upon",
        temperature=0.0,
        max_tokens=24,
        stop=[stop],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_greedy_decoding_is_deterministic(client):
    first = client.chat.completions.create(model=DENSE, messages=MESSAGES, **GREEDY)
    second = client.chat.completions.create(model=DENSE, messages=MESSAGES, **GREEDY)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_seed_makes_sampling_reproducible(client):
    params = {
        "model": MOE,
        "messages": MESSAGES,
        "temperature": 1.0,
        "max_tokens": 16,
        "seed": 1234,
    }
    first = client.chat.completions.create(**params)
    second = client.chat.completions.create(**params)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_json_schema_response_format_yields_valid_json(client):
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
        "required": ["colour", "bright"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=DENSE,
        messages=MESSAGES,
        temperature=0.0,
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "colour", "schema": schema},
        },
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)


def test_a_schema_too_costly_to_compile_is_refused_naming_the_field(http):
    # Counted repetition in a pattern: 5.6 s to compile even on the tiny vocabulary.
    body = {
        "model": DENSE,
        "messages": MESSAGES,
        "max_tokens": 4,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "long",
                "schema": {"type": "string", "pattern": "^[a-z]{1,10000}$"},
            },
        },
    }
    for _ in range(2):  # the second answer comes from the pool's verdict cache
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "response_format"
        assert "max_grammar_compile_s" in error["message"]


def test_a_regex_constraint_holds_with_grammars_compiled_out_of_the_engine(client):
    completion = client.chat.completions.create(
        model=MOE,
        messages=MESSAGES,
        max_tokens=8,
        extra_body={"structured_outputs": {"regex": "[ab]{3}"}},
    )
    assert re.fullmatch("[ab]{3}", completion.choices[0].message.content)


def test_request_id_is_echoed_or_generated(http):
    body = {"model": MOE, "messages": MESSAGES, **GREEDY}
    assert (
        http.post("/v1/chat/completions", json=body, headers={"x-request-id": "abc-123"}).headers[
            "x-request-id"
        ]
        == "abc-123"
    )
    assert http.post("/v1/chat/completions", json=body).headers["x-request-id"]


def test_health_and_ready(http):
    assert http.get("/health").status_code == 200
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["pools"] == {MOE: True, DENSE: True, E4B: True}
