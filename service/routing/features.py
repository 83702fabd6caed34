"""What the router knows about a request: modalities, size, shape, tier (the sizes are
estimates: service/request_size.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.catalog import Modality

# The name benchmarks/routing_sim.py and the tests read the media estimate under.
from service.request_size import ESTIMATE_MEDIA_TOKENS as MEDIA_TOKENS
from service.request_size import (
    estimate_chat_prompt,
    estimate_completion_prompts,
    requested_output,
)

__all__ = ["MEDIA_TOKENS", "RequestFeatures", "chat_features", "completion_features"]


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


def chat_features(
    request: Any,
    media_counts: Mapping[Modality, int],
    *,
    bytes_per_token: float,
    default_max_tokens: int,
    tier: str | None = None,
) -> RequestFeatures:
    response_format = getattr(request, "response_format", None)
    return RequestFeatures(
        modalities=frozenset({Modality.TEXT, *(k for k, n in media_counts.items() if n)}),
        prompt_tokens=estimate_chat_prompt(request, media_counts, bytes_per_token),
        max_tokens=requested_output(request) or default_max_tokens,
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
    each = estimate_completion_prompts(request, bytes_per_token)
    return RequestFeatures(
        modalities=frozenset({Modality.TEXT}),
        prompt_tokens=max(each),
        max_tokens=requested_output(request) or default_max_tokens,
        structured_output=bool(getattr(request, "structured_outputs", None)),
        tier=tier,
        sequences=(request.n or 1) * len(each),
        all_prompt_tokens=sum(each),
    )
