"""Load-test profiles: validated YAML descriptions of a workload, and deterministic payloads.

A profile names the endpoint, the prompt shapes, the arrival process (closed-loop ``users`` or
open-loop Poisson ``qps``), how long to run, which tenants to impersonate (each reads its API key
from an environment variable: keys never live in a profile file) and the SLO gates a run must pass.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
CHARS_PER_TOKEN = 4

# A valid 1x1 transparent PNG, small enough to embed in every multimodal request.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
TINY_PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode("ascii")

WORDS = (
    "the of and to in is was for on that with as by at from his her they this which have "
    "river mountain garden library engine window market station village harbor signal "
    "morning winter summer number system question answer report history science music "
    "travel simple careful quiet bright ancient modern gentle rapid steady narrow "
    "explain describe compare imagine consider measure discover follow remember build"
).split()


class ProfileError(ValueError):
    """A profile could not be found or did not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenRange(_Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> TokenRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class PromptConfig(_Strict):
    kind: Literal["short_chat", "long_context", "shared_prefix", "multimodal_mix"]
    prompt_tokens: TokenRange
    max_tokens: TokenRange
    prefix_groups: int | None = Field(default=None, ge=1)
    prefix_tokens: int | None = Field(default=None, ge=1)
    images_per_request: int = Field(default=0, ge=0, le=8)
    image_fraction: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _kind_fields(self) -> PromptConfig:
        if self.kind == "shared_prefix" and (self.prefix_groups is None or not self.prefix_tokens):
            raise ValueError("shared_prefix needs prefix_groups and prefix_tokens")
        if self.kind != "shared_prefix" and (self.prefix_groups or self.prefix_tokens):
            raise ValueError("prefix_groups and prefix_tokens apply only to kind shared_prefix")
        if self.kind == "multimodal_mix" and self.images_per_request < 1:
            raise ValueError("multimodal_mix needs images_per_request >= 1")
        if self.kind != "multimodal_mix" and self.images_per_request:
            raise ValueError("images_per_request applies only to kind multimodal_mix")
        return self


class Arrival(_Strict):
    users: int | None = Field(default=None, ge=1, description="closed-loop concurrency")
    qps: float | None = Field(default=None, gt=0, description="open-loop Poisson rate")

    @model_validator(mode="after")
    def _exactly_one(self) -> Arrival:
        if (self.users is None) == (self.qps is None):
            raise ValueError("set exactly one of users (closed loop) or qps (open loop)")
        return self


class Tenant(_Strict):
    name: str = Field(min_length=1)
    key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", description="env var holding the API key")


class RequestSlo(_Strict):
    """Per-request objectives used to count goodput."""

    ttft_s: float | None = Field(default=None, gt=0)
    itl_s: float | None = Field(default=None, gt=0)
    e2e_s: float | None = Field(default=None, gt=0)


class SloGates(_Strict):
    """Run-level gates: percentile thresholds, the error-rate ceiling and the goodput floor."""

    ttft_p50_s: float | None = Field(default=None, gt=0)
    ttft_p95_s: float | None = Field(default=None, gt=0)
    ttft_p99_s: float | None = Field(default=None, gt=0)
    itl_p50_s: float | None = Field(default=None, gt=0)
    itl_p95_s: float | None = Field(default=None, gt=0)
    itl_p99_s: float | None = Field(default=None, gt=0)
    e2e_p50_s: float | None = Field(default=None, gt=0)
    e2e_p95_s: float | None = Field(default=None, gt=0)
    e2e_p99_s: float | None = Field(default=None, gt=0)
    error_rate_max: float | None = Field(default=None, ge=0, le=1)
    goodput_min: float | None = Field(default=None, ge=0, le=1)
    request: RequestSlo = RequestSlo()

    def thresholds(self) -> dict[str, float]:
        """The set gates as a flat mapping, in the form :func:`loadtests.measure.gate` takes."""
        return {k: v for k, v in self.model_dump(exclude={"request"}).items() if v is not None}


class Profile(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    endpoint: Literal["chat", "completions"] = "chat"
    stream: bool = True
    models: list[str] = Field(default_factory=lambda: ["gemma-4"], min_length=1)
    prompt: PromptConfig
    arrival: Arrival
    duration_s: float = Field(default=60.0, gt=0)
    seed: int = 0
    tenants: list[Tenant] = Field(default_factory=list)
    slo: SloGates = SloGates()

    @model_validator(mode="after")
    def _compatible(self) -> Profile:
        if self.endpoint == "completions" and self.prompt.kind == "multimodal_mix":
            raise ValueError("multimodal_mix needs endpoint chat")
        return self


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name (``loadtests/profiles/<name>.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError(f"no profile {str(name_or_path)!r}; shipped profiles: {shipped}")
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise ProfileError(f"{path}: {exc}") from exc


def _text(rng: random.Random, tokens: int) -> str:
    """Plain English-like words adding up to roughly ``tokens`` tokens (~4 characters each)."""
    target = tokens * CHARS_PER_TOKEN
    words: list[str] = []
    length = 0
    while length < target:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _prefixes(profile: Profile, seed: int) -> list[str]:
    """One identical long system message per shared-prefix group (fixed for a seed)."""
    cfg = profile.prompt
    if cfg.kind != "shared_prefix":
        return []
    out = []
    for group in range(cfg.prefix_groups or 0):
        rng = random.Random(f"{seed}:prefix:{group}")
        out.append(f"You are assistant {group}. Context: " + _text(rng, cfg.prefix_tokens or 0))
    return out


def generate_payloads(profile: Profile, n: int, seed: int | None = None) -> list[dict]:
    """``n`` OpenAI request bodies for the profile; the same seed gives the same payloads."""
    seed = profile.seed if seed is None else seed
    rng = random.Random(seed)
    cfg = profile.prompt
    prefixes = _prefixes(profile, seed)
    payloads = []
    for i in range(n):
        prompt_tokens = rng.randint(cfg.prompt_tokens.min, cfg.prompt_tokens.max)
        body: dict = {
            "model": rng.choice(profile.models),
            "max_tokens": rng.randint(cfg.max_tokens.min, cfg.max_tokens.max),
            "stream": profile.stream,
        }
        if profile.stream:
            body["stream_options"] = {"include_usage": True}
        user_text = _text(rng, prompt_tokens)
        system = prefixes[i % len(prefixes)] if prefixes else None
        if profile.endpoint == "completions":
            body["prompt"] = f"{system}\n\n{user_text}" if system else user_text
        else:
            messages: list[dict] = []
            if system:
                messages.append({"role": "system", "content": system})
            content: str | list[dict] = user_text
            if cfg.kind == "multimodal_mix" and rng.random() < cfg.image_fraction:
                image = {"type": "image_url", "image_url": {"url": TINY_PNG_DATA_URL}}
                content = [{"type": "text", "text": user_text}] + [
                    image for _ in range(cfg.images_per_request)
                ]
            messages.append({"role": "user", "content": content})
            body["messages"] = messages
        payloads.append(body)
    return payloads
