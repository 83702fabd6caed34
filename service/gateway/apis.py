"""What differs between the generation APIs the gateway serves: how each is validated, sized
for routing, capped and prepared for its pool. The request path (pipeline.py) is the same for
all; it asks the request's `GenerationApi` at each step.

Chat and completions are parsed into Ray Serve LLM's (vLLM's) protocol models and checked in
full here. The Responses and Messages APIs are parsed into vLLM's models too and passed to the
replicas' own apps; media parts are refused on them (their URL checks live on
/v1/chat/completions), and `previous_response_id` too: vLLM keeps stored responses in one
replica's memory, which another replica cannot read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.generate.base.protocol import StreamOptions

from service import request_size
from service.catalog import Modality
from service.errors import InvalidRequest
from service.forced_tool_calls import FORCED_CALL_FLAG, forces_a_call
from service.gateway.bounds import check_bounds, check_native_bounds, native_output_format
from service.gateway.multimodal import MediaSummary, inspect_messages
from service.gateway.requests import parse_as
from service.ray_internals import sanitize_chat_request
from service.routing.features import RequestFeatures, chat_features, completion_features
from service.settings import BoundsSettings, MediaSettings, RoutingSettings
from service.streaming import CHAT, EVENTS, OPENAI, Dialect

# Content part and block types that carry media, in the Responses and Messages APIs.
MEDIA_TYPES = frozenset(
    {"input_image", "input_file", "input_audio", "image", "document", "image_url", "video_url"}
)


@dataclass(frozen=True)
class Outgoing:
    """The body a pool receives, and how the gateway treats its answer."""

    body: Any
    strip_usage: bool = False  # usage was asked for by the gateway, not the client
    checks: bool = False  # the pool counts the prompt or times the grammar first


class GenerationApi:
    endpoint: str  # the metrics' endpoint label, and the backend method
    model_cls: type
    dialect: Dialect = OPENAI
    max_tokens_field = "max_tokens"

    def check_raw(self, raw: dict[str, Any], bounds: BoundsSettings) -> None:
        """Refusals on the JSON before it is parsed."""
        check_bounds(raw, bounds)

    def parse(self, raw: dict[str, Any]) -> Any:
        return parse_as(self.model_cls, raw)

    def media(self, body: Any, limits: MediaSettings) -> MediaSummary | None:
        return None

    def features(
        self, body: Any, raw: dict[str, Any], media: MediaSummary | None, routing: RoutingSettings
    ) -> RequestFeatures:
        raise NotImplementedError

    def prompt_bound(self, body: Any, features: RequestFeatures) -> int:
        """An upper bound on the prompt's tokens (the longest prompt of a batch)."""
        return features.prompt_tokens

    def requested_output(self, body: Any) -> int | None:
        return getattr(body, self.max_tokens_field, None)

    def cap_output(self, body: Any, cap: int) -> None:
        setattr(body, self.max_tokens_field, cap)

    def for_pool(self, body: Any, pool_id: str, max_model_len: int) -> Outgoing:
        # vLLM answers only to its served id, and the response's `model` is the pool id.
        body.model = pool_id
        _settings_for_a_forced_call(body)
        return Outgoing(body)

    def prompt_text(self, raw: dict[str, Any]) -> str:
        """The request's input for the audit log (only with access.audit_content)."""
        raise NotImplementedError


class _OpenAiApi(GenerationApi):
    def requested_output(self, body: Any) -> int | None:
        return request_size.requested_output(body)

    def for_pool(self, body: Any, pool_id: str, max_model_len: int) -> Outgoing:
        body.model = pool_id
        _settings_for_a_forced_call(body)
        strip_usage = _streams_without_usage(body)
        if strip_usage:
            _ask_the_engine_for_usage(body)
        return Outgoing(body, strip_usage, needs_pool_checks(body, max_model_len))


class ChatApi(_OpenAiApi):
    endpoint = "chat"
    model_cls = ChatCompletionRequest
    dialect = CHAT

    def media(self, body: Any, limits: MediaSettings) -> MediaSummary:
        return inspect_messages(body.messages, limits)

    def features(
        self, body: Any, raw: dict[str, Any], media: MediaSummary | None, routing: RoutingSettings
    ) -> RequestFeatures:
        return chat_features(
            body,
            media.counts if media is not None else {},
            bytes_per_token=routing.bytes_per_token,
            default_max_tokens=routing.default_max_tokens,
        )

    def prompt_bound(self, body: Any, features: RequestFeatures) -> int:
        return request_size.chat_prompt_bound(body)

    def for_pool(self, body: Any, pool_id: str, max_model_len: int) -> Outgoing:
        outgoing = super().for_pool(body, pool_id, max_model_len)
        body = sanitize_chat_request(outgoing.body)
        return Outgoing(body, outgoing.strip_usage, outgoing.checks)

    def prompt_text(self, raw: dict[str, Any]) -> str:
        return json.dumps(raw.get("messages"))


class CompletionsApi(_OpenAiApi):
    endpoint = "completions"
    model_cls = CompletionRequest

    def features(
        self, body: Any, raw: dict[str, Any], media: MediaSummary | None, routing: RoutingSettings
    ) -> RequestFeatures:
        return completion_features(
            body,
            bytes_per_token=routing.bytes_per_token,
            default_max_tokens=routing.default_max_tokens,
        )

    def prompt_bound(self, body: Any, features: RequestFeatures) -> int:
        return max(request_size.completion_prompt_bounds(body), default=0)

    def prompt_text(self, raw: dict[str, Any]) -> str:
        prompt = raw.get("prompt")
        return json.dumps(prompt if isinstance(prompt, str | list) else str(prompt))


class _NativeApi(GenerationApi):
    """An API vLLM's app serves that the gateway passes through (Responses, Messages)."""

    dialect = EVENTS
    input_field: str

    def check_raw(self, raw: dict[str, Any], bounds: BoundsSettings) -> None:
        check_native_bounds(raw, self.input_field, bounds)
        refuse_media(raw.get(self.input_field))
        if raw.get("previous_response_id") is not None:
            raise InvalidRequest(
                "previous_response_id is not supported: stored responses live in one engine "
                "replica's memory; send the conversation so far in `input`",
                param="previous_response_id",
            )

    def parse(self, raw: dict[str, Any]) -> Any:
        body = parse_as(self.model_cls, raw)
        if not body.model:
            raise InvalidRequest("model is required", param="model")
        return body

    def features(
        self, body: Any, raw: dict[str, Any], media: MediaSummary | None, routing: RoutingSettings
    ) -> RequestFeatures:
        text = json.dumps(raw.get(self.input_field)) + json.dumps(raw.get("instructions") or "")
        tools = raw.get("tools") or []
        if tools:
            text += json.dumps(tools)
        return RequestFeatures(
            modalities=frozenset({Modality.TEXT}),
            prompt_tokens=request_size.estimate_text_tokens(text, routing.bytes_per_token),
            max_tokens=self.requested_output(body) or routing.default_max_tokens,
            uses_tools=bool(tools) and raw.get("tool_choice") not in ("none", {"type": "none"}),
            structured_output=_asks_for_json(raw),
        )

    def prompt_text(self, raw: dict[str, Any]) -> str:
        return json.dumps(raw.get(self.input_field))


class ResponsesApi(_NativeApi):
    endpoint = "responses"
    max_tokens_field = "max_output_tokens"
    input_field = "input"

    @property
    def model_cls(self) -> type:  # imported late: vLLM's Responses models are heavy
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        return ResponsesRequest


class MessagesApi(_NativeApi):
    endpoint = "messages"
    input_field = "messages"

    @property
    def model_cls(self) -> type:
        from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest

        return AnthropicMessagesRequest

    def for_pool(self, body: Any, pool_id: str, max_model_len: int) -> Outgoing:
        # vLLM maps `thinking: enabled` to a token budget only; Gemma 4's template thinks
        # when told to (`enable_thinking`), as chat's reasoning_effort tells it.
        thinking = getattr(body.thinking, "type", None)
        kwargs = body.chat_template_kwargs or {}
        if thinking == "enabled" and "enable_thinking" not in kwargs:
            body.chat_template_kwargs = kwargs | {"enable_thinking": True}
        if getattr(body.tool_choice, "type", None) in ("any", "tool"):  # Anthropic's forced
            _settings_for_a_forced_call(body, forced=True)
        return super().for_pool(body, pool_id, max_model_len)


CHAT, COMPLETIONS, RESPONSES, MESSAGES = ChatApi(), CompletionsApi(), ResponsesApi(), MessagesApi()


def needs_pool_checks(body: Any, max_model_len: int) -> bool:
    """Whether the pool must count the prompt (with max_tokens it may overflow the context)
    or compile a grammar (under its time limit) before it generates; most requests need
    neither, and skip the pool's parse of the body."""
    if body.response_format is not None or body.structured_outputs is not None:
        return True
    if getattr(body, "tools", None) and forces_a_call(body.tool_choice):
        return True  # its grammar is the tools' schemas
    max_tokens = request_size.requested_output(body)
    if max_tokens is None:
        return False
    if isinstance(body, ChatCompletionRequest):
        bounds = [request_size.chat_prompt_bound(body)]
    else:
        bounds = request_size.completion_prompt_bounds(body)
    return any(bound + max_tokens > max_model_len for bound in bounds)


def refuse_media(value: Any) -> None:
    """400 for any media part, however deep (bounded by the JSON depth the parser allows)."""
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in MEDIA_TYPES:
            raise InvalidRequest(
                f"a '{kind}' part: images, audio and files are accepted on "
                "/v1/chat/completions only for now",
                param="input",
            )
        for item in value.values():
            refuse_media(item)
    elif isinstance(value, list):
        for item in value:
            refuse_media(item)


def _streams_without_usage(body: Any) -> bool:
    """Whether the request streams and its client did not ask for usage in the stream."""
    options = body.stream_options
    return bool(body.stream) and not (options is not None and options.include_usage)


def _ask_the_engine_for_usage(body: Any) -> None:
    """Streams always carry usage from the engine (token metrics, and later accounting); the
    gateway drops it on the way out when the client did not ask for it."""
    options = body.stream_options
    body.stream_options = StreamOptions(
        include_usage=True,
        continuous_usage_stats=options.continuous_usage_stats if options else False,
    )


def _asks_for_json(raw: dict[str, Any]) -> bool:
    found = native_output_format(raw)
    if found is None:
        return False
    where, form = found
    # Messages' output_config.format has one type, json_schema, and may leave it out.
    default = "json_schema" if where.startswith("output_config") else "text"
    return form.get("type", default) in ("json_schema", "json_object")


def _settings_for_a_forced_call(body: Any, forced: bool = False) -> None:
    """A forced tool choice answers without thinking: vLLM starts the tools' constraint where
    its engine sees the thought channel close, and its reasoning parser and thinking budget do
    not always agree with that point (measured on the tiny checkpoints: thought text inside
    the arguments). Reliable calls are the contract; reasoning before them is not. The flag
    tells the pool's parser to stream it whole (service/forced_tool_calls.py)."""
    forced = forced or forces_a_call(getattr(body, "tool_choice", None))
    if forced and getattr(body, "tools", None) and hasattr(body, "chat_template_kwargs"):
        kwargs = {"enable_thinking": False, FORCED_CALL_FLAG: True}
        body.chat_template_kwargs = (body.chat_template_kwargs or {}) | kwargs
