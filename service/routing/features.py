"""What the router knows about a request: modalities, size, shape, tier."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.catalog import Modality

# Template tokens around each turn (<|turn>role\n ... <turn|>\n) and the generation prompt.
TOKENS_PER_MESSAGE = 6
TOKENS_BASE = 8
# A media part expands to this many tokens at the processor's default budget (gemma4.md 1.3):
# 280 per image, up to 32 frames x 70 per video, 25 tokens a second of audio up to 30 s.
MEDIA_TOKENS = {Modality.IMAGE: 280, Modality.VIDEO: 2240, Modality.AUDIO: 750}


@dataclass(frozen=True)
class RequestFeatures:
    modalities: frozenset[Modality]
    prompt_tokens: int
    max_tokens: int
    uses_tools: bool = False
    structured_output: bool = False
    tier: str | None = None
    media_counts: Mapping[Modality, int] = field(default_factory=dict)
    sequences: int = 1  # n, times the number of prompts of a completions batch
    all_prompt_tokens: int | None = None  # every prompt of a batch; None: prompt_tokens

    @property
    def total_tokens(self) -> int:
        """What one sequence needs of the context: its prompt and its output."""
        return self.prompt_tokens + self.max_tokens

    @property
    def billed_prompt_tokens(self) -> int:
        return self.prompt_tokens if self.all_prompt_tokens is None else self.all_prompt_tokens

    @property
    def billed_tokens(self) -> int:
        """What the whole request may cost: every prompt, and every choice's output."""
        return self.billed_prompt_tokens + self.sequences * self.max_tokens


def estimate_text_tokens(text: str, bytes_per_token: float) -> int:
    """A calibrated estimate: UTF-8 bytes over the tokenizer's mean bytes per token."""
    return math.ceil(len(text.encode()) / bytes_per_token)


def chat_features(
    request: Any,
    media_counts: Mapping[Modality, int],
    *,
    bytes_per_token: float,
    default_max_tokens: int,
    tier: str | None = None,
) -> RequestFeatures:
    tokens = TOKENS_BASE
    for message in request.messages:
        tokens += TOKENS_PER_MESSAGE + estimate_text_tokens(_text_of(message), bytes_per_token)
    if request.tools:
        tools = json.dumps([t.model_dump(exclude_none=True) for t in request.tools])
        tokens += estimate_text_tokens(tools, bytes_per_token)
    tokens += sum(MEDIA_TOKENS.get(kind, 0) * n for kind, n in media_counts.items())
    response_format = getattr(request, "response_format", None)
    return RequestFeatures(
        modalities=frozenset({Modality.TEXT, *(k for k, n in media_counts.items() if n)}),
        prompt_tokens=tokens,
        max_tokens=_max_tokens(request, default_max_tokens),
        uses_tools=bool(request.tools) and request.tool_choice != "none",
        structured_output=getattr(response_format, "type", "text") in ("json_schema", "json_object")
        or bool(getattr(request, "structured_outputs", None)),
        tier=tier,
        media_counts=dict(media_counts),
        sequences=request.n or 1,
    )


def completion_features(
    request: Any, *, bytes_per_token: float, default_max_tokens: int, tier: str | None = None
) -> RequestFeatures:
    prompt = request.prompt
    if isinstance(prompt, str):
        each = [estimate_text_tokens(prompt, bytes_per_token)]
    elif prompt and isinstance(prompt[0], int):
        each = [len(prompt)]
    else:
        each = [
            len(p) if isinstance(p, list) else estimate_text_tokens(str(p), bytes_per_token)
            for p in prompt or [""]
        ]
    return RequestFeatures(
        modalities=frozenset({Modality.TEXT}),
        prompt_tokens=max(each),
        max_tokens=_max_tokens(request, default_max_tokens),
        structured_output=bool(getattr(request, "structured_outputs", None)),
        tier=tier,
        sequences=(request.n or 1) * len(each),
        all_prompt_tokens=sum(each),
    )


def _max_tokens(request: Any, default: int) -> int:
    limits = request.model_dump(include={"max_tokens", "max_completion_tokens"})
    return limits.get("max_completion_tokens") or limits.get("max_tokens") or default


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    for call in message.get("tool_calls") or []:
        text += json.dumps(call, default=str)
    return text
