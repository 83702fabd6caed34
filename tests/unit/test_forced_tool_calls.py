"""Forced tool choices (`required`, a named function) constrain decoding to the tools' schemas;
`auto` and `none` keep Gemma 4's own tool-call syntax."""

import pytest
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

from service import engine_config, forced_tool_calls
from service.forced_tool_calls import Gemma4ForcedToolParser, forced_call_schema
from service.settings import PoolSettings
from service.tinymodels import build_tiny_checkpoints

CITY = {"type": "string", "maxLength": 16}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": CITY, "unit": {"$ref": "#/$defs/unit"}},
            "required": ["city"],
            "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def chat(tool_choice, parallel_tool_calls=True, tools=(WEATHER, TIME)) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": list(tools),
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
        }
    )


@pytest.fixture(scope="module")
def parser(tmp_path_factory) -> Gemma4ForcedToolParser:
    built = build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))
    return Gemma4ForcedToolParser(AutoTokenizer.from_pretrained(built["dense"]))


def test_pools_use_the_forcing_parser_registered_in_vllm():
    pool = PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense")
    name = engine_config.engine_kwargs(pool)["tool_call_parser"]
    assert name == forced_tool_calls.PARSER_NAME
    assert ToolParserManager.get_tool_parser(name) is Gemma4ForcedToolParser


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_choices_are_held_to_a_json_schema(parser, choice):
    adjusted = parser.adjust_request(chat(choice))
    assert adjusted.structured_outputs.json == forced_call_schema(chat(choice))


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_auto_and_none_leave_decoding_free(parser, choice):
    adjusted = parser.adjust_request(chat(choice))
    assert adjusted.structured_outputs is None and not adjusted.logit_bias


def test_a_forced_call_never_samples_special_tokens_or_raw_control_characters(parser):
    tokenizer = parser.model_tokenizer
    bias = parser.adjust_request(chat("required")).logit_bias
    banned = {tokenizer.convert_ids_to_tokens(int(i)) for i, b in bias.items() if b == -100}
    assert {"<turn|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<eos>"} <= banned
    newline = tokenizer.convert_ids_to_tokens(tokenizer.encode("\n", add_special_tokens=False))
    assert set(newline) <= banned
    assert "a" not in banned and '"' not in banned


def test_a_forced_call_with_thinking_off_never_opens_the_thought_channel(parser):
    request = chat("required")
    request.chat_template_kwargs = {"enable_thinking": False}
    bias = parser.adjust_request(request).logit_bias
    markers = parser.model_tokenizer.convert_tokens_to_ids(["<|channel>", "<channel|>"])
    assert {str(i) for i in markers} <= set(bias)


def test_the_thought_channel_stays_open_to_a_forced_call_that_may_think(parser):
    bias = parser.adjust_request(chat("required")).logit_bias
    markers = parser.model_tokenizer.convert_tokens_to_ids(["<|channel>", "<channel|>"])
    assert not {str(i) for i in markers} & set(bias)


def test_a_clients_own_logit_bias_is_kept_beside_the_ban(parser):
    request = chat("required")
    request.logit_bias = {"100": 5.0}
    assert parser.adjust_request(request).logit_bias["100"] == 5.0


def test_required_asks_for_one_or_more_calls_of_the_offered_functions():
    schema = forced_call_schema(chat("required"))
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [option["properties"]["name"]["enum"] for option in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]


def test_required_without_parallel_calls_asks_for_exactly_one():
    assert forced_call_schema(chat("required", parallel_tool_calls=False))["maxItems"] == 1


def test_a_named_choice_is_held_to_that_functions_parameters():
    schema = forced_call_schema(chat({"type": "function", "function": {"name": "get_weather"}}))
    assert schema["properties"]["city"] == CITY


def test_a_named_function_without_parameters_still_gives_an_object():
    schema = forced_call_schema(chat({"type": "function", "function": {"name": "get_time"}}))
    assert schema == {"type": "object", "properties": {}}


def test_building_the_schema_leaves_the_requests_tools_as_they_were():
    request = chat("required")
    forced_call_schema(request)
    assert "$defs" in request.tools[0].function.parameters
    assert forced_call_schema(request)["$defs"] == {"unit": {"enum": ["celsius", "fahrenheit"]}}


def test_unforced_choices_have_no_schema():
    assert forced_call_schema(chat("auto")) is None
    assert forced_call_schema(chat("none")) is None


def test_responses_named_choice_is_held_to_that_functions_parameters():
    request = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": "weather in Paris?",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": WEATHER["function"]["parameters"],
                }
            ],
            "tool_choice": {"type": "function", "name": "get_weather"},
        }
    )
    assert forced_call_schema(request)["properties"]["city"] == CITY
