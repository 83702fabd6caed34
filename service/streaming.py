"""Reading OpenAI SSE chunks as vLLM writes them, cheaply: most chunks are never parsed."""

from __future__ import annotations

import json
from typing import Any

DATA = "data: "
# vLLM's final usage chunk (stream_options.include_usage) has no choices and a usage object.
USAGE_MARK = '"choices":[],"usage":{'


def carries_output(item: Any) -> bool:
    """Whether a stream chunk holds generated text (anything unrecognised counts as output)."""
    if not isinstance(item, str) or not item.startswith("data: {"):
        return True
    try:
        chunk = json.loads(item[len(DATA) :])
    except json.JSONDecodeError:
        return True
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or any(delta.get(k) for k in ("content", "reasoning", "tool_calls")):
            return True
    return "choices" not in chunk


def usage_of(item: str) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) when the chunk is the usage chunk, else None."""
    if USAGE_MARK not in item:
        return None
    try:
        usage = json.loads(item[len(DATA) :])["usage"]
        return int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError):
        return None
