"""The cheap prompt bound never under-counts, so skipping the exact count is safe."""

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from transformers import AutoTokenizer

from service import context_budget, request_size
from service.tinymodels import build_tiny_checkpoints

TEXTS = [
    "Name three colours.",
    "Ünïcödé façade — naïve café ☕ 🚀🚀🚀",
    "日本語のテキストと中文文本",
    "x" * 3000,
    "\n\n\t  spaced   out  \n",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(
        build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))["dense"]
    )


@pytest.mark.parametrize("text", TEXTS)
def test_chat_bound_is_at_least_the_templated_token_count(tokenizer, text):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    request = ChatCompletionRequest(model="m", messages=messages, max_tokens=10)
    templated = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    count = len(templated["input_ids"])
    assert request_size.chat_prompt_bound(request) >= count


@pytest.mark.parametrize("text", TEXTS)
def test_completion_bound_is_at_least_the_token_count(tokenizer, text):
    request = CompletionRequest(model="m", prompt=text)
    assert request_size.completion_prompt_bounds(request) == [
        request_size.BOUND_TOKENS_BASE + len(text.encode())
    ]
    assert request_size.completion_prompt_bounds(request)[0] >= len(tokenizer(text)["input_ids"])


def test_token_id_prompts_are_counted_exactly():
    assert request_size.completion_prompt_bounds(
        CompletionRequest(model="m", prompt=[1, 2, 3])
    ) == [3]
    batch = CompletionRequest(model="m", prompt=[[1, 2], [1, 2, 3, 4]])
    assert request_size.completion_prompt_bounds(batch) == [2, 4]


def test_media_parts_count_at_their_largest_expansion():
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
    ]
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": content}])
    assert request_size.chat_prompt_bound(request) >= request_size.BOUND_TOKENS_PER_MEDIA_PART


def test_overflow_message_names_both_numbers():
    message = context_budget.overflow_message(2048, 2000, 100, "messages")
    assert (
        "2048" in message
        and "2000 in the messages" in message
        and "100 in the completion" in message
    )
