"""Reading the SSE events vLLM writes (OpenAI chunks, Responses and Messages events), cheaply:
most are never parsed."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DATA = "data: "
# vLLM's final usage chunk (stream_options.include_usage) has no choices and a usage object.
USAGE_MARK = '"choices":[],"usage":{'
REASONING_MARK = '"reasoning":"'


# Where a chat or completions chunk holds generated output: a choice's text, or its delta's
# content, reasoning (vLLM's name, and the one the gateway adds) or tool calls.
DELTA_OUTPUT_KEYS = ("content", "reasoning", "reasoning_content", "tool_calls")


def chunk_carries_output(chunk: Mapping[str, Any]) -> bool:
    """Whether a parsed chat or completions chunk holds generated output in any choice; a
    role announcement, an empty delta or the usage chunk holds none."""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or any(delta.get(k) for k in DELTA_OUTPUT_KEYS):
            return True
    return False


def carries_output(item: Any) -> bool:
    """Whether a stream chunk the pool relays holds generated text. Fails open: anything
    unrecognised (an error, [DONE], not a string) counts as output, so it is never held back."""
    if not isinstance(item, str) or not item.startswith("data: {"):
        return True
    try:
        chunk = json.loads(item[len(DATA) :])
    except json.JSONDecodeError:
        return True
    return "choices" not in chunk or chunk_carries_output(chunk)


def sse_line_carries_output(line: bytes | str) -> bool:
    """A client's reading of one SSE line: only a data line whose chunk holds output counts;
    blank lines, comments, [DONE], errors and the usage chunk do not."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("data:"):
        return False
    data = text[len("data:") :].strip()
    if not data.startswith("{"):
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk_carries_output(chunk)


def usage_of(item: str) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) when the chunk is the usage chunk, else None."""
    if USAGE_MARK not in item:
        return None
    try:
        usage = json.loads(item[len(DATA) :])["usage"]
        return int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError):
        return None


def api_usage(event: str) -> tuple[int, int] | None:
    """(input, output) tokens from a Responses (`response.completed`) or Messages
    (`message_start`, `message_delta`) event that carries a usage object, else None."""
    if '"usage":{' not in event and '"usage": {' not in event:
        return None
    try:
        data = json.loads(event[event.index(DATA) + len(DATA) :])
        usage = next(
            u
            for u in (
                data.get("usage"),
                (data.get("response") or {}).get("usage"),
                (data.get("message") or {}).get("usage"),
            )
            if isinstance(u, dict)
        )
        return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    except (ValueError, StopIteration, TypeError, AttributeError):
        return None


def api_carries_output(event: str) -> bool:
    """Whether a Responses or Messages event holds generated text, reasoning or arguments."""
    return '"type":"content_block_delta"' in event or (
        '"type":"response.' in event and '.delta"' in event
    )


def with_reasoning_content(payload: str) -> str:
    """A chat chunk or body with its `reasoning` also under `reasoning_content`, the name most
    clients read (DeepSeek's API gave it; vLLM 0.32 writes only `reasoning`). Only payloads
    that hold reasoning are parsed."""
    if REASONING_MARK not in payload:
        return payload
    sse = payload.startswith(DATA)
    try:
        data = json.loads(payload[len(DATA) :] if sse else payload)
    except ValueError:
        return payload
    for choice in data.get("choices") or []:
        for key in ("delta", "message"):
            part = choice.get(key)
            if isinstance(part, dict) and part.get("reasoning") is not None:
                part["reasoning_content"] = part["reasoning"]
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{DATA}{text}\n\n" if sse else text


@dataclass(frozen=True)
class Dialect:
    """How one API's stream reads: usage, output, whether it ends with [DONE], and what the
    gateway adds to each event or body on the way out."""

    usage_of: Callable[[str], tuple[int, int] | None]
    carries_output: Callable[[str], bool]
    ends_with_done: bool
    rewrite: Callable[[str], str] | None = None


OPENAI = Dialect(usage_of, carries_output, ends_with_done=True)
CHAT = Dialect(usage_of, carries_output, ends_with_done=True, rewrite=with_reasoning_content)
EVENTS = Dialect(api_usage, api_carries_output, ends_with_done=False)
