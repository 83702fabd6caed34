"""What the router reads off a request."""

from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from service.catalog import Modality
from service.request_size import ESTIMATE_MEDIA_TOKENS, estimate_text_tokens
from service.routing.features import MEDIA_TOKENS, chat_features, completion_features

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="gemma-4", messages=[{"role": "user", "content": "hello there"}], **fields
    )


def features(request, media=None):
    return chat_features(request, media or {}, bytes_per_token=4.0, default_max_tokens=512)


def test_the_estimate_is_bytes_over_the_calibrated_ratio():
    assert estimate_text_tokens("x" * 400, 4.0) == 100
    assert estimate_text_tokens("日本", 3.0) == 2  # six UTF-8 bytes


def test_plain_chat_is_text_with_the_default_output():
    f = features(chat())
    assert f.modalities == {Modality.TEXT}
    assert f.max_tokens == 512
    assert not f.uses_tools and not f.structured_output


def test_max_completion_tokens_is_the_output_length():
    assert features(chat(max_completion_tokens=77)).max_tokens == 77


def test_media_adds_its_kind_and_its_tokens():
    plain = features(chat())
    with_images = features(chat(), {Modality.IMAGE: 2})
    assert with_images.modalities == {Modality.TEXT, Modality.IMAGE}
    assert (
        with_images.prompt_tokens - plain.prompt_tokens == 2 * ESTIMATE_MEDIA_TOKENS[Modality.IMAGE]
    )


def test_tools_count_unless_tool_choice_is_none():
    assert features(chat(tools=[TOOL])).uses_tools
    assert not features(chat(tools=[TOOL], tool_choice="none")).uses_tools


def test_json_schema_output_is_structured():
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert features(chat(response_format=schema)).structured_output


def test_completion_prompt_of_token_ids_is_counted_exactly():
    f = completion_features(
        CompletionRequest(model="m", prompt=[1, 2, 3]), bytes_per_token=4.0, default_max_tokens=16
    )
    assert (f.prompt_tokens, f.max_tokens) == (3, 16)


def test_tier_is_carried_through():
    assert features(chat()).tier is None
    f = chat_features(chat(), {}, bytes_per_token=4.0, default_max_tokens=1, tier="quality")
    assert f.tier == "quality"


def test_the_routing_media_estimate_is_the_one_estimator_s():
    assert MEDIA_TOKENS is ESTIMATE_MEDIA_TOKENS


def test_a_completion_prompt_of_text_is_estimated_without_template_tokens():
    f = completion_features(
        CompletionRequest(model="m", prompt="x" * 40), bytes_per_token=4.0, default_max_tokens=1
    )
    assert f.prompt_tokens == 10
