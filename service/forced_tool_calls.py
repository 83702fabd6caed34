"""Tool calls that `tool_choice` forces: `"required"` and a named function.

vLLM's gemma4 tool parser (0.32) leaves forced choices to the model's own `<|tool_call>`
syntax (`supports_required_and_named = False`), so nothing forces a call: a model may answer in
text, or call a function that does not exist. OpenAI's contract is that `required` always
yields at least one call and a named choice always yields that function with arguments valid
against its schema. This parser keeps the gemma4 parser for `auto` and `none` and takes vLLM's
standard path for the forced choices: decoding constrained to a JSON list of
`{"name": ..., "parameters": ...}` under each function's schema (`get_json_schema_from_tools`,
`maxItems: 1` when `parallel_tool_calls` is false), which vLLM's serving layer turns into OpenAI
tool calls for chat, Responses and Messages, streamed and not.

The constraint applies once reasoning has ended (vLLM holds structured output back until its
engine sees `<channel|>`); the gateway switches thinking off for forced calls, because vLLM's
output parser does not always agree with the engine on where reasoning ended.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from openai.types.responses import ToolChoiceCustom, ToolChoiceFunction
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionNamedToolChoiceParam
from vllm.exceptions import VLLMClientError
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
from vllm.tool_parsers.gemma4_engine_tool_parser import Gemma4EngineToolParser
from vllm.tool_parsers.utils import get_json_schema_from_tools

PARSER_NAME = "gemma4_forced"
FORCED_CALL_FLAG = "gemma_serve_forced_call"
NAMED_CHOICES = (ChatCompletionNamedToolChoiceParam, ToolChoiceFunction, ToolChoiceCustom)


def forces_a_call(tool_choice: Any) -> bool:
    """`required`, or one named function (chat's `{"type": "function", "function": ...}`,
    Responses' `{"type": "function", "name": ...}`)."""
    return tool_choice == "required" or isinstance(tool_choice, NAMED_CHOICES)


def forced_call_schema(request: Any) -> dict[str, Any] | None:
    """The JSON schema decoding is held to for this request's forced tool choice, or None."""
    if not getattr(request, "tools", None) or not forces_a_call(request.tool_choice):
        return None
    try:
        schema = get_json_schema_from_tools(
            tool_choice=request.tool_choice,
            # A copy: it moves each function's `$defs` to the top, out of the request's tools.
            tools=copy.deepcopy(request.tools),
            parallel_tool_calls=request.parallel_tool_calls,
        )
    except (ValueError, VLLMClientError):
        return None  # e.g. a named function not in `tools`, which vLLM's own 400 names
    return schema if isinstance(schema, dict) else None


@ToolParserManager.register_module(PARSER_NAME)
class Gemma4ForcedToolParser(Gemma4EngineToolParser):
    supports_required_and_named = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # vLLM's "engine-based" streaming hands each parser only the new text, and the
        # `required` path (extract_required_tool_call_streaming) scans the whole text so far:
        # given only the delta it streamed no call at all. A forced call streams with the text
        # so far instead. Only the request's template kwargs reach a parser's constructor, so
        # the gateway marks forced calls there (FORCED_CALL_FLAG).
        if (kwargs.get("chat_template_kwargs") or {}).get(FORCED_CALL_FLAG):
            self.engine_based_streaming = False

    def adjust_request(self, request: Any) -> Any:
        if not (request.tools and forces_a_call(request.tool_choice)):
            return super().adjust_request(request)
        request = ToolParser.adjust_request(self, request)
        own = request.logit_bias or {}
        banned = unsampleable_in_json(self.model_tokenizer)
        if _thinks(request):
            # The constraint starts once the engine has seen the thought channel close.
            markers = set(self.model_tokenizer.convert_tokens_to_ids(list(REASONING_MARKERS)))
            banned = tuple(t for t in banned if int(t) not in markers)
        request.logit_bias = own | dict.fromkeys(banned[: MAX_LOGIT_BIAS - len(own)], BANNED)
        return request


def _thinks(request: Any) -> bool:
    """Whether thinking may be on: the gateway switches it off for forced calls; a request
    that reached the pool another way may still ask for it."""
    kwargs = getattr(request, "chat_template_kwargs", None) or {}
    return kwargs.get("enable_thinking") is not False


# Inside a JSON string the thought channel's markers are text to xgrammar, but the reasoning
# parser takes what follows `<|channel>` for reasoning: measured, a forced call's JSON ended in
# `reasoning` and the call was lost.
REASONING_MARKERS = ("<|channel>", "<channel|>")
BANNED = -100.0  # vLLM's floor for logit_bias; the grammar's mask does the rest
# vLLM's GPU model runner takes at most 1,024 biased tokens a request (MAX_NUM_LOGIT_BIAS_TOKENS
# in vllm/v1/worker/gpu/sample/logit_bias.py); special tokens come first in the list.
MAX_LOGIT_BIAS = 1024


@functools.cache  # one tokenizer per replica process
def unsampleable_in_json(tokenizer: Any) -> tuple[str, ...]:
    """The tokens a forced call must not sample, as logit_bias keys, special tokens first.
    They close two gaps in xgrammar 0.2.8 as vLLM 0.32 uses it: special tokens are read as
    their literal text, so `<turn|>` inside a string is allowed there and stops generation
    mid-string, and others vanish from the detokenized text; and a string with `maxLength`
    admits raw control characters, which JSON forbids (the call then fails to parse and is
    silently dropped). Neither kind is ever needed in compact JSON."""
    special = {
        token_id for token_id, added in tokenizer.added_tokens_decoder.items() if added.special
    }
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    control = {i for i, text in enumerate(texts) if any(ord(ch) < 0x20 for ch in text)}
    return tuple(str(i) for i in [*sorted(special), *sorted(control - special)])
