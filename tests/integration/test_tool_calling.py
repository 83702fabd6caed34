"""Tool calling for agents through the gateway, with the official `openai` and `anthropic` SDKs
against real vLLM: forced choices always call with schema-valid arguments, `auto` keeps Gemma
4's own syntax, `none` never calls, tool results go back in Gemma 4's format, and thinking is
switched per request.

The tiny checkpoints are random: only the constraint makes their calls valid, which is what
these tests check. Strings carry an ASCII `pattern` because a random model never closes an
unbounded string on its own, and samples byte tokens that are not whole UTF-8 characters,
which decode to U+FFFD and so break a `maxLength` (a real model does neither).
"""

import json

import anthropic
import jsonschema
import pytest

from tests.integration.conftest import DENSE

REPEATS = 20
# Room for the calls a random model strings together under `required` (each ~60-130 tokens,
# about one in four answers holds more than one), in the tiny pools' 2,048-token context.
ROOM = 1400
CITY = {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": CITY, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TRIP_PARAMETERS = {
    "type": "object",
    "properties": {
        "traveller": {
            "type": "object",
            "properties": {"name": CITY, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "stops": {"type": "array", "items": CITY, "minItems": 1, "maxItems": 3},
        "class": {"enum": ["economy", "business"]},
        "refundable": {"type": "boolean"},
    },
    "required": ["traveller", "stops", "class", "refundable"],
    "additionalProperties": False,
}
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "book_trip": TRIP_PARAMETERS}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": name, "parameters": schema}}
    for name, schema in PARAMETERS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def chat(client, tool_choice, **kwargs):
    return client.chat.completions.create(
        model=DENSE,
        messages=kwargs.pop("messages", ASK),
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=kwargs.pop("max_tokens", ROOM),
        temperature=kwargs.pop("temperature", 1.0),
        **kwargs,
    )


def assert_valid_call(name: str, arguments: str) -> dict:
    assert name in PARAMETERS, name
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, PARAMETERS[name])
    return parsed


def test_required_always_calls_an_offered_function_with_valid_arguments(client):
    for _ in range(REPEATS):
        choice = chat(client, "required").choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert call.id and call.type == "function"
            assert_valid_call(call.function.name, call.function.arguments)


def test_a_named_choice_always_calls_that_function_with_valid_arguments(client):
    for _ in range(REPEATS):
        choice = chat(client, NAMED).choices[0]
        # OpenAI ends a call it was told to make with "stop", not "tool_calls".
        assert choice.finish_reason == "stop"
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert_valid_call("get_weather", call.function.arguments)


def test_a_forced_call_with_free_text_strings_always_parses(client):
    # Any character may go in these strings: what a random model samples there included raw
    # control characters and Gemma 4's special tokens, which broke the JSON until the pool
    # kept them out (service/forced_tool_calls.py). maxLength is not checked: see the top.
    note = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 24}},
        "required": ["note"],
    }
    tools = [{"type": "function", "function": {"name": "take_note", "parameters": note}}]
    for _ in range(REPEATS):
        choice = client.chat.completions.create(
            model=DENSE,
            messages=ASK,
            tools=tools,
            tool_choice="required",
            max_tokens=ROOM,
            temperature=1.0,
        ).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert isinstance(json.loads(call.function.arguments)["note"], str)
        assert not getattr(choice.message, "reasoning", None)


def test_a_named_choice_of_a_nested_schema_is_valid(client):
    for _ in range(REPEATS):
        choice = chat(client, {"type": "function", "function": {"name": "book_trip"}})
        [call] = choice.choices[0].message.tool_calls
        assert_valid_call("book_trip", call.function.arguments)


def test_required_without_parallel_calls_makes_exactly_one(client):
    for _ in range(REPEATS):
        calls = chat(client, "required", parallel_tool_calls=False).choices[0].message.tool_calls
        assert len(calls) == 1
        assert_valid_call(calls[0].function.name, calls[0].function.arguments)


def test_parallel_calls_come_back_as_separate_calls_with_their_own_ids(client):
    counts = []
    for _ in range(REPEATS):
        calls = chat(client, "required").choices[0].message.tool_calls
        assert len({call.id for call in calls}) == len(calls)
        counts.append(len(calls))
    assert max(counts) > 1, counts


def test_streamed_required_sends_the_name_first_then_arguments_that_assemble(client):
    for _ in range(REPEATS // 4):
        calls: dict[int, dict] = {}
        finish = None
        for chunk in chat(client, "required", stream=True):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "args": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    assert not call["args"], "the name comes before the arguments"
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["args"] += delta.function.arguments
        assert finish == "tool_calls"
        assert calls
        for call in calls.values():
            assert call["id"]
            assert_valid_call(call["name"], call["args"])


def test_streamed_named_choice_assembles_to_that_function(client):
    name, args = None, ""
    for chunk in chat(client, NAMED, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = delta.function.name or name
            args += delta.function.arguments or ""
    assert name == "get_weather"
    assert_valid_call(name, args)


def test_none_never_calls(client):
    for _ in range(REPEATS // 4):
        choice = chat(client, "none", max_tokens=24).choices[0]
        assert not choice.message.tool_calls
        assert choice.finish_reason in ("stop", "length")


def test_auto_answers_in_text_or_gemma4_calls_never_raw_syntax(client):
    for _ in range(REPEATS // 4):
        message = chat(client, "auto", max_tokens=24).choices[0].message
        for call in message.tool_calls or []:
            assert call.function.name
        assert "<|tool_call>" not in (message.content or "")


def test_a_forced_call_counts_its_tokens_in_usage(client):
    response = chat(client, NAMED)
    assert response.usage.completion_tokens > 0
    assert response.usage.prompt_tokens > 0


# --- the next turn: tool results ---

CALL_ID = "call_1"
CONVERSATION = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": CALL_ID,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C and sunny"},
]


def test_a_tool_result_is_answered_in_the_next_turn(client):
    choice = chat(client, "auto", messages=CONVERSATION, max_tokens=16).choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")


def test_the_engine_sees_the_checkpoints_own_template_rendering_of_tool_results(http, stack):
    body = {"model": DENSE, "messages": CONVERSATION, "tools": TOOLS}
    tokenized = http.post("/tokenize", json=body)
    assert tokenized.status_code == 200, tokenized.text
    # vLLM hands templates call arguments as objects (Transformers' convention).
    as_objects = json.loads(json.dumps(CONVERSATION))
    as_objects[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    expected = stack.tokenizer(DENSE).apply_chat_template(
        as_objects, tools=TOOLS, add_generation_prompt=True, tokenize=True
    )
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert tokenized.json()["tokens"] == expected
    text = http.post("/detokenize", json={"model": DENSE, "tokens": expected}).json()
    prompt = text["prompt"]
    assert "<|tool>declaration:get_weather{" in prompt
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in prompt
    assert '<|tool_response>response:get_weather{value:<|"|>18 C and sunny<|"|>}' in prompt


def test_a_forced_call_after_a_tool_result_is_still_valid(client):
    for _ in range(REPEATS // 4):
        [call] = chat(client, NAMED, messages=CONVERSATION).choices[0].message.tool_calls
        assert_valid_call(call.function.name, call.function.arguments)


# --- thinking ---


def prompt_of(http, **extra) -> str:
    body = {"model": DENSE, "messages": ASK, **extra}
    tokens = http.post("/tokenize", json=body).json()["tokens"]
    return http.post("/detokenize", json={"model": DENSE, "tokens": tokens}).json()["prompt"]


def test_thinking_is_off_by_default(http):
    prompt = prompt_of(http)
    assert "<|think|>" not in prompt
    assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")


def test_thinking_is_switched_on_per_request(http):
    prompt = prompt_of(http, chat_template_kwargs={"enable_thinking": True})
    assert "<|think|>" in prompt
    assert prompt.endswith("<|turn>model\n")


def test_reasoning_effort_switches_thinking_on_like_the_template_flag(client, http):
    def prompt_tokens(**extra):
        reply = client.chat.completions.create(model=DENSE, messages=ASK, max_tokens=1, **extra)
        return reply.usage.prompt_tokens

    body = {"model": DENSE, "messages": ASK, "chat_template_kwargs": {"enable_thinking": True}}
    thinking = len(http.post("/tokenize", json=body).json()["tokens"])
    assert prompt_tokens(reasoning_effort="high") == thinking != prompt_tokens()


def test_a_thinking_request_keeps_reasoning_out_of_content(client):
    response = client.chat.completions.create(
        model=DENSE,
        messages=ASK,
        max_tokens=48,
        temperature=1.0,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    message = response.choices[0].message
    assert "<|channel>" not in (message.content or "")
    assert "<channel|>" not in (message.content or "")


def test_a_forced_call_answers_without_thinking_and_is_valid(client):
    for _ in range(REPEATS // 4):
        choice = chat(
            client, NAMED, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
        ).choices[0]
        [call] = choice.message.tool_calls
        assert_valid_call("get_weather", call.function.arguments)
        assert not getattr(choice.message, "reasoning", None)


# --- the Responses API ---

RESPONSES_TOOLS = [
    {"type": "function", "name": name, "description": name, "parameters": schema}
    for name, schema in PARAMETERS.items()
]


def respond(client, tool_choice, **kwargs):
    return client.responses.create(
        model=DENSE,
        input="What is the weather in Paris?",
        tools=RESPONSES_TOOLS,
        tool_choice=tool_choice,
        max_output_tokens=ROOM,
        temperature=1.0,
        **kwargs,
    )


def test_responses_required_always_returns_valid_function_calls(client):
    for _ in range(REPEATS):
        calls = [
            item for item in respond(client, "required").output if item.type == "function_call"
        ]
        assert calls
        for call in calls:
            assert call.call_id
            assert_valid_call(call.name, call.arguments)


def test_responses_named_choice_returns_that_function(client):
    for _ in range(REPEATS):
        output = respond(client, {"type": "function", "name": "get_weather"}).output
        [call] = [item for item in output if item.type == "function_call"]
        assert call.name == "get_weather"
        assert_valid_call(call.name, call.arguments)


def test_responses_streamed_named_choice_ends_with_response_completed(client):
    events = list(respond(client, {"type": "function", "name": "get_weather"}, stream=True))
    assert events[-1].type == "response.completed"
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done
    assert_valid_call("get_weather", done[0].arguments)
    [call] = [i for i in events[-1].response.output if i.type == "function_call"]
    assert call.name == "get_weather"


# --- the Anthropic Messages API ---

ANTHROPIC_TOOLS = [
    {"name": name, "description": name, "input_schema": schema}
    for name, schema in PARAMETERS.items()
]


@pytest.fixture
def claude(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)


def message(claude, tool_choice, **kwargs):
    return claude.messages.create(
        model=DENSE,
        max_tokens=ROOM,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=ANTHROPIC_TOOLS,
        tool_choice=tool_choice,
        extra_body={"temperature": 1.0},  # the SDK no longer takes it as an argument
        **kwargs,
    )


def test_messages_any_always_returns_valid_tool_use(claude):
    for _ in range(REPEATS):
        reply = message(claude, {"type": "any"})
        uses = [block for block in reply.content if block.type == "tool_use"]
        assert uses
        assert reply.stop_reason == "tool_use"
        for use in uses:
            assert use.id
            jsonschema.validate(use.input, PARAMETERS[use.name])


def test_messages_named_tool_returns_that_tool(claude):
    for _ in range(REPEATS):
        reply = message(claude, {"type": "tool", "name": "get_weather"})
        [use] = [block for block in reply.content if block.type == "tool_use"]
        assert use.name == "get_weather"
        jsonschema.validate(use.input, WEATHER_PARAMETERS)


def test_messages_streamed_tool_use_assembles_to_valid_input(claude):
    with claude.messages.stream(
        model=DENSE,
        max_tokens=ROOM,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 1.0},
    ) as stream:
        final = stream.get_final_message()
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER_PARAMETERS)


def test_messages_tool_result_is_answered_in_the_next_turn(claude):
    reply = claude.messages.create(
        model=DENSE,
        max_tokens=16,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris", "unit": "celsius"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}],
            },
        ],
        tools=ANTHROPIC_TOOLS,
    )
    assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_every_api_counts_the_same_prompt_tokens_for_the_same_conversation(client, claude):
    """Rate limits and usage take these counts, whichever API a client uses."""
    question = ASK[0]["content"]
    chat_usage = chat(client, "auto", max_tokens=1).usage
    responses_usage = client.responses.create(
        model=DENSE, input=question, tools=RESPONSES_TOOLS, max_output_tokens=1
    ).usage
    messages_usage = claude.messages.create(
        model=DENSE,
        max_tokens=1,
        messages=[{"role": "user", "content": question}],
        tools=ANTHROPIC_TOOLS,
    ).usage
    assert chat_usage.prompt_tokens == responses_usage.input_tokens == messages_usage.input_tokens
    assert chat_usage.completion_tokens == responses_usage.output_tokens == 1
    assert messages_usage.output_tokens == 1
