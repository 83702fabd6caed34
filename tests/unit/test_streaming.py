"""What the gateway reads from and adds to the events on their way out."""

import json

import pytest

from service.streaming import (
    carries_output,
    chunk_carries_output,
    sse_line_carries_output,
    with_reasoning_content,
)

DELTA = {"choices": [{"index": 0, "delta": {"reasoning": "thinking it over"}}]}
MESSAGE = {"choices": [{"index": 0, "message": {"content": "hi", "reasoning": "so"}}]}


def test_streamed_reasoning_is_also_sent_as_reasoning_content():
    event = with_reasoning_content(f"data: {json.dumps(DELTA, separators=(',', ':'))}\n\n")
    assert event.startswith("data: ") and event.endswith("\n\n")
    delta = json.loads(event[len("data: ") :])["choices"][0]["delta"]
    assert delta == {"reasoning": "thinking it over", "reasoning_content": "thinking it over"}


def test_a_whole_answers_reasoning_is_also_sent_as_reasoning_content():
    body = json.loads(with_reasoning_content(json.dumps(MESSAGE, separators=(",", ":"))))
    assert body["choices"][0]["message"]["reasoning_content"] == "so"


def test_payloads_without_reasoning_pass_unchanged():
    for payload in (
        'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        '{"choices":[{"message":{"content":"hi","reasoning":null}}]}',
        "data: [DONE]\n\n",
    ):
        assert with_reasoning_content(payload) is payload


@pytest.mark.parametrize(
    ("line", "output"),
    [
        (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n', True),
        (b'data: {"choices":[{"delta":{"reasoning":"hm"}}]}\n', True),
        (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n', False),
        (b'data: {"choices":[],"usage":{"completion_tokens":3}}\n', False),
        (b"data: [DONE]\n", False),
        (b"\n", False),
        (b": keep-alive\n", False),
        (b'data: {"error":{"message":"x"}}\n', False),
        (b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n', True),
        (b'data: {"choices":[{"index":0,"text":"a"}]}\n', True),
    ],
)
def test_a_client_tells_output_lines_from_role_usage_and_done_lines(line, output):
    assert sse_line_carries_output(line) is output
    assert sse_line_carries_output(line.decode()) is output


def test_one_predicate_reads_the_chunk_for_the_pool_and_the_clients():
    chunk = {"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}
    line = f"data: {json.dumps(chunk)}\n\n"
    assert chunk_carries_output(chunk) and carries_output(line) and sse_line_carries_output(line)
    role = {"choices": [{"delta": {"role": "assistant"}}]}
    assert not chunk_carries_output(role) and not chunk_carries_output({"choices": []})


def test_the_pool_fails_open_where_a_client_does_not():
    for line in ("data: [DONE]\n\n", 'data: {"error": {"message": "x"}}\n\n'):
        assert carries_output(line) and not sse_line_carries_output(line)
