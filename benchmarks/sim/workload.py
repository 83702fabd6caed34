"""The simulated traffic: a request mix whose requests carry the RequestFeatures the gateway
would build, and the arrival processes that replay it (a bursty Poisson window, or Poisson
arrivals at a rate given per second, such as a day's shape)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from benchmarks.sim.fleet_model import ENCODER_INPUTS_PER_TOKEN
from service.catalog import Modality
from service.routing.features import MEDIA_TOKENS, RequestFeatures

Kind = Literal["chat", "long_doc", "tools_json", "image", "shared_prefix", "audio"]


@dataclass(frozen=True)
class Request:
    """One client request: what the router sees (`features`) and what the engine does."""

    id: int
    kind: Kind
    arrival: float
    prompt_tokens: int
    output_tokens: int
    features: RequestFeatures
    media_inputs: float = 0.0
    prefix_key: int | None = None
    prefix_tokens: int = 0


@dataclass(frozen=True)
class WorkloadClass:
    kind: Kind
    share: float  # of all arrivals
    description: str


# The mix. Shares sum to 1. Token ranges are log-uniform unless noted.
MIX: tuple[WorkloadClass, ...] = (
    WorkloadClass("chat", 0.40, "prompt 50-500, output 50-300; 5% ask for the quality tier"),
    WorkloadClass("long_doc", 0.07, "prompt 8k-64k, output 200-800 (summaries, RAG over files)"),
    WorkloadClass("tools_json", 0.15, "prompt 1-4k, output 100-400; half tools, half JSON schema"),
    WorkloadClass("image", 0.13, "1-4 images x 280 tokens + 50-300 text, output 50-300"),
    WorkloadClass(
        "shared_prefix",
        0.23,
        "20 groups (Zipf 0.8) with fixed 2-6k system prompts + 50-800 suffix, output 100-400;"
        " half the groups are tool-using agents",
    ),
    WorkloadClass("audio", 0.02, "one 30 s clip (750 tokens) + 50-200 text, output 50-200"),
)
PREFIX_GROUPS = 20


@dataclass(frozen=True)
class Workload:
    requests: tuple[Request, ...]
    duration_s: float
    bursts: tuple[tuple[float, float], ...]  # (start, end), in simulated seconds


def log_uniform(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


@dataclass(frozen=True)
class PrefixGroups:
    prefix_tokens: tuple[int, ...]
    uses_tools: tuple[bool, ...]
    weights: tuple[float, ...]


def prefix_groups(rng: np.random.Generator) -> PrefixGroups:
    tokens = tuple(int(rng.integers(2000, 6001)) for _ in range(PREFIX_GROUPS))
    tools = [True] * (PREFIX_GROUPS // 2) + [False] * (PREFIX_GROUPS - PREFIX_GROUPS // 2)
    rng.shuffle(tools)
    raw = [1 / (i + 1) ** 0.8 for i in range(PREFIX_GROUPS)]
    return PrefixGroups(tokens, tuple(tools), tuple(w / sum(raw) for w in raw))


def make_request(
    rid: int, kind: Kind, arrival: float, rng: np.random.Generator, groups: PrefixGroups
) -> Request:
    """Draw one request of a class and build the RequestFeatures the gateway would."""
    media: dict[Modality, int] = {}
    tools = structured = False
    tier: str | None = None
    prefix_key: int | None = None
    prefix_tokens = 0
    max_tokens = 512  # routing.default_max_tokens: what the router assumes when unset
    if kind == "chat":
        prompt, output = log_uniform(rng, 50, 500), log_uniform(rng, 50, 300)
        tier = "quality" if rng.random() < 0.05 else None
    elif kind == "long_doc":
        prompt, output = log_uniform(rng, 8000, 64000), int(rng.integers(200, 801))
        max_tokens = 1024
    elif kind == "tools_json":
        prompt, output = log_uniform(rng, 1000, 4000), int(rng.integers(100, 401))
        tools = bool(rng.random() < 0.5)
        structured = not tools
        max_tokens = 1024
    elif kind == "image":
        media[Modality.IMAGE] = int(rng.integers(1, 5))
        prompt = log_uniform(rng, 50, 300) + MEDIA_TOKENS[Modality.IMAGE] * media[Modality.IMAGE]
        output = log_uniform(rng, 50, 300)
    elif kind == "shared_prefix":
        group = int(rng.choice(PREFIX_GROUPS, p=groups.weights))
        prefix_key, prefix_tokens = group, groups.prefix_tokens[group]
        prompt = prefix_tokens + log_uniform(rng, 50, 800)
        output = int(rng.integers(100, 401))
        tools = groups.uses_tools[group]
        max_tokens = 1024
    elif kind == "audio":
        media[Modality.AUDIO] = 1
        prompt = MEDIA_TOKENS[Modality.AUDIO] + log_uniform(rng, 50, 200)
        output = log_uniform(rng, 50, 200)
    else:
        raise ValueError(kind)
    output = min(output, max_tokens)
    features = RequestFeatures(
        modalities=frozenset({Modality.TEXT, *media}),
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        uses_tools=tools,
        structured_output=structured,
        tier=tier,
        media_counts=media,
    )
    media_inputs = sum(
        MEDIA_TOKENS[m] * n * ENCODER_INPUTS_PER_TOKEN[m.value] for m, n in media.items()
    )
    return Request(
        id=rid,
        kind=kind,
        arrival=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        features=features,
        media_inputs=media_inputs,
        prefix_key=prefix_key,
        prefix_tokens=prefix_tokens,
    )


def bursty_workload(
    seed: int,
    minutes: float,
    rate: float,
    mix: tuple[WorkloadClass, ...] = MIX,
    *,
    burst_multiplier: float,
    burst_s: float,
    burst_every_s: float,
) -> Workload:
    """Poisson arrivals at `rate`, `burst_multiplier` times that during short bursts (one per
    `burst_every_s` on average, each `burst_s` long); classes drawn by share."""
    rng = np.random.default_rng(seed)
    duration = minutes * 60.0
    groups = prefix_groups(rng)
    n_bursts = max(1, round(duration / burst_every_s))
    latest = max(0.0, duration - burst_s)
    starts = sorted(float(rng.uniform(0, latest)) for _ in range(n_bursts))
    bursts = tuple((b, b + burst_s) for b in starts)
    peak = rate * burst_multiplier
    kinds = [c.kind for c in mix]
    shares = np.array([c.share for c in mix]) / sum(c.share for c in mix)
    requests: list[Request] = []
    t = 0.0
    while True:
        # Thinning: candidates at the peak rate, kept with probability rate(t) / peak.
        t += float(rng.exponential(1.0 / peak))
        if t >= duration:
            break
        in_burst = any(a <= t < b for a, b in bursts)
        if rng.random() >= (peak if in_burst else rate) / peak:
            continue
        kind = kinds[int(rng.choice(len(kinds), p=shares))]
        requests.append(make_request(len(requests), kind, t, rng, groups))  # type: ignore[arg-type]
    return Workload(tuple(requests), duration, bursts)


def per_second_requests(
    rate: np.ndarray, rng: np.random.Generator, groups: PrefixGroups, mix: Sequence[WorkloadClass]
) -> tuple[Request, ...]:
    """Poisson arrivals at `rate[s]` requests/s during second s, uniform inside the second;
    classes drawn by share."""
    seconds = np.arange(len(rate))
    counts = rng.poisson(rate)
    arrivals = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
    arrivals.sort()  # within a second; seconds are already in order
    kinds = [c.kind for c in mix]
    p = np.array([c.share for c in mix]) / sum(c.share for c in mix)
    drawn = rng.choice(len(kinds), size=len(arrivals), p=p)
    return tuple(
        make_request(i, kinds[k], float(t), rng, groups)  # type: ignore[arg-type]
        for i, (t, k) in enumerate(zip(arrivals, drawn, strict=True))
    )
