"""Does prompt + max_tokens fit the pool's context?

vLLM clamps `max_tokens` silently when the prompt leaves less room; OpenAI's contract is a
400 naming both numbers. Counting a prompt exactly means templating and tokenizing it, so a
cheap upper bound goes first and only requests near the limit are counted.
"""

from __future__ import annotations

import json
from typing import Any

# Gemma's tokenizer (byte fallback) and the tiny byte-level BPE never emit more tokens than
# UTF-8 bytes. The template adds a few tokens per turn; a media part expands to at most
# 1120 image tokens, 32 x 70 video tokens or ~750 audio tokens (30 s).
TOKENS_PER_MESSAGE = 32
TOKENS_PER_TOOL = 64
TOKENS_BASE = 64
TOKENS_PER_MEDIA_PART = 2240


def requested_output(request: Any) -> int | None:
    limits = request.model_dump(include={"max_tokens", "max_completion_tokens"})
    return limits.get("max_completion_tokens") or limits.get("max_tokens")


def chat_prompt_bound(request: Any) -> int:
    total = TOKENS_BASE
    for message in request.messages:
        total += TOKENS_PER_MESSAGE + _content_bound(message.get("content"))
        for call in message.get("tool_calls") or []:
            total += len(json.dumps(call, default=str).encode())
    for tool in request.tools or []:
        total += TOKENS_PER_TOOL + len(tool.model_dump_json().encode())
    return total


def completion_prompt_bounds(request: Any) -> list[int]:
    """One bound per prompt: a completion request may carry a batch of prompts."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [TOKENS_BASE + len(prompt.encode())]
    if prompt and isinstance(prompt[0], int):
        return [len(prompt)]
    return [
        len(p) if isinstance(p, list) else TOKENS_BASE + len(str(p).encode()) for p in prompt or []
    ]


def _content_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    total = 0
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        total += len(text.encode()) if isinstance(text, str) else TOKENS_PER_MEDIA_PART
    return total


def overflow_message(
    max_model_len: int, prompt_tokens: int, max_tokens: int, prompt_name: str
) -> str:
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_name}, {max_tokens} "
        f"in the completion). Please reduce the length of the {prompt_name} or max_tokens."
    )
