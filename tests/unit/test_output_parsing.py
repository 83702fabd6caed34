"""How the pools' parsers (vLLM's gemma4 reasoning parser with service/forced_tool_calls.py)
split Gemma 4 output into reasoning, content and calls, on the tiny checkpoint's tokenizer,
streamed token by token and whole. The case vLLM issue 39885 reports, thought text leaking into
content after tool results, is among them."""

import json

import pytest
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser import ParserManager

from service import engine_config
from service.forced_tool_calls import FORCED_CALL_FLAG
from service.settings import PoolSettings
from service.tinymodels import build_tiny_checkpoints

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
AFTER_TOOL_RESULT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
]
FIRST_TURN = AFTER_TOOL_RESULT[:1]
THOUGHT, ANSWER = "The tool says 18 C, so I answer that", "It is 18 C in Paris."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(
        build_tiny_checkpoints(tmp_path_factory.mktemp("t"))["dense"]
    )


@pytest.fixture(scope="module")
def parser_cls():
    engine = engine_config.engine_kwargs(PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense"))
    return ParserManager.get_parser(
        tool_parser_name=engine["tool_call_parser"],
        reasoning_parser_name=engine["reasoning_parser"],
        enable_auto_tools=True,
    )


def prompt_ids(tokenizer, messages, thinking: bool) -> list[int]:
    """The prompt as vLLM renders it, which hands templates call arguments as objects."""
    messages = json.loads(json.dumps(messages))
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    ids = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, enable_thinking=thinking, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def streamed(
    parser_cls,
    tokenizer,
    messages,
    output: str,
    thinking: bool,
    calls: list | None = None,
    tool_choice: str = "auto",
) -> tuple[str, str]:
    """(reasoning, content); each streamed call fragment is appended to `calls`. A forced
    choice carries the flag the gateway sets for it."""
    kwargs = {"enable_thinking": thinking}
    if tool_choice != "auto":
        kwargs[FORCED_CALL_FLAG] = True
    request = ChatCompletionRequest(
        model="m",
        messages=messages,
        tools=TOOLS,
        chat_template_kwargs=kwargs,
        tool_choice=tool_choice,
    )
    parser = parser_cls(tokenizer, request.tools, chat_template_kwargs=kwargs)
    prompt = prompt_ids(tokenizer, messages, thinking)
    ids = tokenizer.encode(output, add_special_tokens=False)
    reasoning = content = ""
    for i, token in enumerate(ids):
        text = tokenizer.decode([token], skip_special_tokens=False)
        delta = parser.parse_delta(text, [token], request, prompt, finished=i == len(ids) - 1)
        if delta is not None:
            reasoning += delta.reasoning or ""
            content += delta.content or ""
            if calls is not None:
                calls.extend(delta.tool_calls or [])
    return reasoning, content


def whole(parser_cls, tokenizer, messages, output: str, thinking: bool) -> tuple[str, str]:
    kwargs = {"enable_thinking": thinking}
    request = ChatCompletionRequest(
        model="m", messages=messages, tools=TOOLS, chat_template_kwargs=kwargs
    )
    parser = parser_cls(tokenizer, request.tools, chat_template_kwargs=kwargs)
    reasoning, content, _ = parser.parse(output, request)
    return reasoning or "", content or ""


@pytest.mark.parametrize("split", [streamed, whole], ids=["streamed", "whole"])
@pytest.mark.parametrize("messages", [FIRST_TURN, AFTER_TOOL_RESULT], ids=["first", "after-tool"])
def test_thinking_output_is_reasoning_and_never_content(parser_cls, tokenizer, split, messages):
    output = f"<|channel>thought\n{THOUGHT}<channel|>{ANSWER}"
    reasoning, content = split(parser_cls, tokenizer, messages, output, thinking=True)
    assert reasoning.strip() == THOUGHT
    assert content.strip() == ANSWER


@pytest.mark.parametrize("split", [streamed, whole], ids=["streamed", "whole"])
def test_with_thinking_off_the_answer_is_content(parser_cls, tokenizer, split):
    reasoning, content = split(parser_cls, tokenizer, AFTER_TOOL_RESULT, ANSWER, thinking=False)
    assert (reasoning, content.strip()) == ("", ANSWER)


def assembled(fragments) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for fragment in fragments:
        name, args = calls.setdefault(fragment.index, ["", ""])
        calls[fragment.index] = [
            name + (fragment.function.name or ""),
            args + (fragment.function.arguments or ""),
        ]
    return [(name, args) for name, args in calls.values()]


def test_a_streamed_required_answer_streams_each_call(parser_cls, tokenizer):
    output = '[{"name":"get_weather","parameters":{"city":"Paris"}},' + (
        '{"name":"get_weather","parameters":{"city":"Rome"}}]'
    )
    fragments: list = []
    streamed(parser_cls, tokenizer, FIRST_TURN, output, False, fragments, "required")
    assert assembled(fragments) == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"Rome"}'),
    ]
    assert fragments[0].id and fragments[0].function.name == "get_weather"


@pytest.mark.parametrize("thinking", [False, True], ids=["plain", "after-thinking"])
def test_a_streamed_gemma4_call_under_auto_is_a_tool_call(parser_cls, tokenizer, thinking):
    call = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
    output = f"<|channel>thought\n{THOUGHT}<channel|>{call}" if thinking else call
    fragments: list = []
    reasoning, content = streamed(parser_cls, tokenizer, FIRST_TURN, output, thinking, fragments)
    assert assembled(fragments) == [("get_weather", '{"city": "Paris"}')]
    assert content == "" and reasoning.strip() == (THOUGHT if thinking else "")


def test_only_a_forced_call_leaves_vllms_engine_based_streaming(parser_cls, tokenizer):
    def engine_based(kwargs):
        return parser_cls(tokenizer, TOOLS, chat_template_kwargs=kwargs)._engine_based

    assert engine_based({"enable_thinking": False})
    assert not engine_based({"enable_thinking": False, FORCED_CALL_FLAG: True})
