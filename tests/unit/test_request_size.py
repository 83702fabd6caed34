"""The one estimator of a request's size: an estimate for routing, a bound for the context
check (the bound never under-counts: test_context_budget.py), and the output it asks for."""

import math

from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from service import request_size
from service.catalog import Modality
from service.mock_engine import output_tokens

HELLO = [{"role": "user", "content": "hello there"}]  # 11 bytes


def test_max_completion_tokens_wins_over_max_tokens():
    request = ChatCompletionRequest(model="m", messages=[], max_tokens=5, max_completion_tokens=7)
    assert request_size.requested_output(request) == 7


def test_max_tokens_is_the_output_without_max_completion_tokens():
    assert (
        request_size.requested_output(CompletionRequest(model="m", prompt="x", max_tokens=5)) == 5
    )


def test_no_output_length_asked_is_none():
    assert request_size.requested_output(ChatCompletionRequest(model="m", messages=[])) is None


def test_the_mock_engine_generates_what_the_request_asks_for():
    request = ChatCompletionRequest(model="m", messages=[], max_tokens=5, max_completion_tokens=7)
    assert output_tokens(request) == 7


def test_a_chat_estimate_is_the_template_tokens_plus_bytes_over_the_ratio():
    request = ChatCompletionRequest(model="m", messages=HELLO)
    expected = (
        request_size.ESTIMATE_TOKENS_BASE
        + request_size.ESTIMATE_TOKENS_PER_MESSAGE
        + math.ceil(11 / 4.0)
    )
    assert request_size.estimate_chat_prompt(request, {}, 4.0) == expected


def test_a_chat_estimate_adds_each_media_part_at_its_default_budget():
    request = ChatCompletionRequest(model="m", messages=HELLO)
    plain = request_size.estimate_chat_prompt(request, {}, 4.0)
    with_media = request_size.estimate_chat_prompt(
        request, {Modality.IMAGE: 2, Modality.AUDIO: 1}, 4.0
    )
    assert with_media - plain == 2 * 280 + 750


def test_the_bound_of_a_prompt_is_at_least_its_estimate():
    request = ChatCompletionRequest(model="m", messages=HELLO)
    assert request_size.chat_prompt_bound(request) >= request_size.estimate_chat_prompt(
        request, {}, 1.0
    )


def test_a_batch_of_prompts_is_estimated_one_by_one():
    assert request_size.estimate_completion_prompts(
        CompletionRequest(model="m", prompt=["x" * 8, "x" * 20]), 4.0
    ) == [2, 5]
    batch = CompletionRequest(model="m", prompt=[[1, 2], [1, 2, 3]])
    assert request_size.estimate_completion_prompts(batch, 4.0) == [2, 3]
