"""What the gateway reads from and adds to the events on their way out."""

import json

from service.streaming import with_reasoning_content

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
