"""How many tokens a request's prompt takes before any tokenizer has seen it, and how many
it asks to generate.

Two figures from the same walk over a request, for two uses, named so:
- the **estimate** (`estimate_*`): routing and the tokens a request is charged before its
  usage is known. UTF-8 bytes over the tokenizer's mean bytes per token
  (`routing.bytes_per_token`), plus the chat template's own tokens: close on average, low
  on text that tokenizes densely (code, CJK, numbers). See docs/routing.md.
- the **upper bound** (`*_bound*`): the context check, which counts a prompt exactly only
  when its bound and max_tokens might overflow the context (service/context_budget.py). It
  must never be below the real count, or an overflowing request would skip the count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from service.catalog import Modality

# --- the estimate ---------------------------------------------------------------------------
# Gemma 4's template wraps each turn as <|turn>role\n ... <turn|>\n: about six tokens.
ESTIMATE_TOKENS_PER_MESSAGE = 6
# <bos> and the generation prompt (<|turn>model\n), with a token or two to spare.
ESTIMATE_TOKENS_BASE = 8
# A media part expands to this many tokens at the processor's default budget (gemma4.md 1.3):
# 280 per image, up to 32 frames x 70 per video, 25 tokens a second of audio up to 30 s.
ESTIMATE_MEDIA_TOKENS = {Modality.IMAGE: 280, Modality.VIDEO: 2240, Modality.AUDIO: 750}

# --- the upper bound ------------------------------------------------------------------------
# Gemma's tokenizer (byte fallback) and the tiny byte-level BPE never emit more tokens than
# UTF-8 bytes, so a text's bytes bound its tokens; the constants bound what the template adds.
# A turn's markers and its role name (not part of the content's bytes): generously.
BOUND_TOKENS_PER_MESSAGE = 32
# What the template wraps around each tool declaration, beyond the declaration's JSON bytes.
BOUND_TOKENS_PER_TOOL = 64
# <bos>, the generation prompt and whatever preamble the template adds once.
BOUND_TOKENS_BASE = 64
# The largest expansion of any media part: a video's 32 x 70 tokens (an image takes at most
# 1120 at the largest budget, a 30 s audio clip about 750).
BOUND_TOKENS_PER_MEDIA_PART = 2240


def requested_output(request: Any) -> int | None:
    """The output length the request asks for: max_completion_tokens, else max_tokens."""
    return getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)


def estimate_text_tokens(text: str, bytes_per_token: float) -> int:
    """A calibrated estimate: UTF-8 bytes over the tokenizer's mean bytes per token."""
    return math.ceil(len(text.encode()) / bytes_per_token)


def estimate_chat_prompt(
    request: Any, media_counts: Mapping[Modality, int], bytes_per_token: float
) -> int:
    """A chat request's prompt: its messages, its tools as JSON, its media parts."""
    tokens = ESTIMATE_TOKENS_BASE
    for message in request.messages:
        tokens += ESTIMATE_TOKENS_PER_MESSAGE + estimate_text_tokens(
            _text_of(message), bytes_per_token
        )
    if request.tools:
        tools = json.dumps([t.model_dump(exclude_none=True) for t in request.tools])
        tokens += estimate_text_tokens(tools, bytes_per_token)
    return tokens + sum(ESTIMATE_MEDIA_TOKENS.get(kind, 0) * n for kind, n in media_counts.items())


def estimate_completion_prompts(request: Any, bytes_per_token: float) -> list[int]:
    """One estimate per prompt (a completion request may carry a batch); token ids count
    exactly."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [estimate_text_tokens(prompt, bytes_per_token)]
    if prompt and isinstance(prompt[0], int):
        return [len(prompt)]
    return [
        len(p) if isinstance(p, list) else estimate_text_tokens(str(p), bytes_per_token)
        for p in prompt or [""]
    ]


def chat_prompt_bound(request: Any) -> int:
    total = BOUND_TOKENS_BASE
    for message in request.messages:
        total += BOUND_TOKENS_PER_MESSAGE + _content_bound(message.get("content"))
        for call in message.get("tool_calls") or []:
            total += len(json.dumps(call, default=str).encode())
    for tool in request.tools or []:
        total += BOUND_TOKENS_PER_TOOL + len(tool.model_dump_json().encode())
    return total


def completion_prompt_bounds(request: Any) -> list[int]:
    """One bound per prompt: a completion request may carry a batch of prompts."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [BOUND_TOKENS_BASE + len(prompt.encode())]
    if prompt and isinstance(prompt[0], int):
        return [len(prompt)]
    return [
        len(p) if isinstance(p, list) else BOUND_TOKENS_BASE + len(str(p).encode())
        for p in prompt or []
    ]


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    for call in message.get("tool_calls") or []:
        text += json.dumps(call, default=str)
    return text


def _content_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    total = 0
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        total += len(text.encode()) if isinstance(text, str) else BOUND_TOKENS_PER_MEDIA_PART
    return total
