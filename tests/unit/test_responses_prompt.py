"""The Responses API tokenizes its templated prompt as chat does: no second `<bos>`."""

from types import SimpleNamespace

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

from service import responses_prompt

MODEL = SimpleNamespace(max_model_len=2048)


def test_a_responses_prompt_gets_no_special_tokens_added_as_chat_gets_none():
    responses_prompt.install()
    responses_prompt.install()  # a second install changes nothing
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    response = ResponsesRequest(model="m", input="hi", max_output_tokens=8)
    params = response.build_tok_params(MODEL)
    assert params.add_special_tokens is chat.build_tok_params(MODEL).add_special_tokens is False
    assert params.max_output_tokens == 8
