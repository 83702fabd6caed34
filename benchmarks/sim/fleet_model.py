"""A cost model of Gemma 4 replicas on H100s, and a continuous-batching replica simulator.

Shared by the routing and the autoscaling simulations (`routing.py`, `autoscale.py`), so
nothing here knows about routing: a `ReplicaType` says how long an engine step takes, and a
`Replica` runs jobs through a vLLM-like scheduler in simulated time.

Nothing in this file was measured on a GPU. Every constant carries its source:
  [gemma4.md X]  /work/shared/research/gemma4.md, section X (itself citing configs, issues, cards)
  [H100]         NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16, 1979 dense FP8,
                 3.35 TB/s HBM3, 80 GB (79.6 GiB usable as nvidia-smi reports it)
  [I]            an assumption of this model, stated where it is made

The model in one paragraph. An engine step runs every running sequence's next token plus up
to `max_num_batched_tokens` prompt tokens (chunked prefill). Its time is
    overhead + linear layers + attention (+ vision/audio encoder on a request's first chunk)
where the linear layers cost max(FLOPs / (peak * MFU), weight bytes read / (HBM * efficiency))
(a roofline: one kernel either computes or streams weights), and attention costs its prefill
FLOPs at a lower efficiency plus the KV bytes that decoding sequences read. FLOPs use the
*active* parameters (2 per parameter per token); bytes use the weights actually streamed: all
of them for the dense 31B, and for the MoE the shared weights plus the experts the step's
tokens pick (nearly all of them from ~48 tokens a step; see `weight_bytes_read`).

    .venv/bin/python -m benchmarks.sim.fleet_model --check     # the sanity checks against section 5
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

GiB = 2**30
KiB = 2**10

# --- Hardware ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: float  # usable device memory
    hbm_bytes_per_s: float
    bf16_flops: float  # dense tensor-core peak
    fp8_flops: float


H100_SXM = GpuSpec(
    name="H100 SXM 80GB",
    memory_bytes=79.6 * GiB,  # [gemma4.md 2.6] / [H100]: 80 GB, 81559 MiB visible
    hbm_bytes_per_s=3.35e12,  # [H100] HBM3
    bf16_flops=989e12,  # [H100] dense BF16 (1979 is the 2:4-sparse figure)
    fp8_flops=1979e12,  # [H100] dense FP8
)

# Only for the --check comparisons with published single-GPU numbers [gemma4.md 5], which were
# taken on this card. [I] from NVIDIA's RTX PRO 6000 Blackwell datasheet: 1792 GB/s GDDR7,
# 96 GB; "4000 AI TOPS" is sparse FP4, so dense FP8 ~1000 and dense BF16 ~500 TFLOP/s.
RTX_PRO_6000 = GpuSpec(
    name="RTX PRO 6000 Blackwell 96GB",
    memory_bytes=94.5 * GiB,
    hbm_bytes_per_s=1.792e12,
    bf16_flops=500e12,
    fp8_flops=1000e12,
)

# --- Models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What the cost model needs from a Gemma 4 checkpoint (text_config, [gemma4.md 1.3])."""

    catalog_id: str
    architecture: Literal["dense", "moe"]
    active_params: float  # FLOPs per token = 2 x this
    lm_params: float  # language-model parameters (excludes the encoders)
    expert_params: float  # routed-expert parameters (MoE); 0 for dense
    num_experts: int
    experts_per_token: int
    encoder_params: float  # vision (and audio) towers, kept in BF16 by every checkpoint
    # KV cache per token at BF16, from 2 x kv_heads x head_dim x 2 bytes x layers [gemma4.md 2.6]
    global_kv_bytes: float  # global layers: grows with the context
    sliding_kv_bytes: float  # sliding layers: stops growing after the window
    sliding_window: int
    # Attention FLOPs: 4 x (query heads x head_dim) per (query, key) pair and layer
    global_layers: int
    global_q_dim: int
    sliding_layers: int
    sliding_q_dim: int
    context: int


GEMMA_4_31B = ModelSpec(
    catalog_id="gemma-4-31b-it",
    architecture="dense",
    active_params=30.7e9,  # [gemma4.md 1.1]
    lm_params=30.7e9,
    expert_params=0.0,
    num_experts=0,
    experts_per_token=0,
    encoder_params=0.55e9,  # vision encoder, large models [gemma4.md 1.3]
    global_kv_bytes=80 * KiB,  # 10 global layers x 2 x 4 KV heads x 512 x 2 B [gemma4.md 2.6]
    sliding_kv_bytes=800 * KiB,  # 50 sliding layers x 2 x 16 x 256 x 2 B [gemma4.md 2.6]
    sliding_window=1024,  # [gemma4.md 1.3]
    global_layers=10,
    global_q_dim=32 * 512,  # 32 heads x global_head_dim 512 [gemma4.md 1.3]
    sliding_layers=50,
    sliding_q_dim=32 * 256,
    context=262144,
)

GEMMA_4_26B_A4B = ModelSpec(
    catalog_id="gemma-4-26b-a4b-it",
    architecture="moe",
    active_params=3.8e9,  # 8 of 128 experts [gemma4.md 1.1]
    lm_params=25.2e9,
    expert_params=30 * 761e6,  # 128 x 3 x 2816 x 704 per layer, 30 layers [gemma4.md 1.1]
    num_experts=128,
    experts_per_token=8,
    encoder_params=0.55e9,
    global_kv_bytes=20 * KiB,  # 5 global layers x 2 x 2 KV heads x 512 x 2 B [gemma4.md 2.6]
    sliding_kv_bytes=200 * KiB,  # 25 x 2 x 8 x 256 x 2 B [gemma4.md 2.6]
    sliding_window=1024,
    global_layers=5,
    global_q_dim=16 * 512,
    sliding_layers=25,
    sliding_q_dim=16 * 256,
    context=262144,
)

GEMMA_4_E4B = ModelSpec(
    catalog_id="gemma-4-e4b-it",
    architecture="dense",
    active_params=4.5e9,  # "4.5B effective" [gemma4.md 1.1]
    lm_params=7.5e9,  # ~8B with per-layer embeddings, minus the encoders [gemma4.md 1.1] [I]
    expert_params=0.0,
    num_experts=0,
    experts_per_token=0,
    encoder_params=0.15e9 + 0.3e9,  # small vision encoder + audio conformer [gemma4.md 1.3]
    global_kv_bytes=16 * KiB,  # [gemma4.md 2.6]
    sliding_kv_bytes=40 * KiB,  # ~20 MiB per sequence over a 512 window [gemma4.md 2.6]
    sliding_window=512,
    global_layers=7,
    global_q_dim=8 * 512,
    sliding_layers=35,
    sliding_q_dim=8 * 256,
    context=131072,
)

MODELS: dict[str, ModelSpec] = {
    m.catalog_id: m for m in (GEMMA_4_31B, GEMMA_4_26B_A4B, GEMMA_4_E4B)
}

# Loaded weight memory, (catalog id, weights) -> bytes. Includes the BF16 encoders.
WEIGHT_BYTES: dict[tuple[str, str], float] = {
    ("gemma-4-31b-it", "fp8"): 31.49 * GiB,  # measured, LargitData card [gemma4.md 2.5]
    ("gemma-4-31b-it", "bf16"): 58.9 * GiB,  # measured, same card [gemma4.md 2.5]
    ("gemma-4-26b-a4b-it", "bf16"): 48.0 * GiB,  # 25.8B x 2 B [gemma4.md 2.6]
    ("gemma-4-26b-a4b-it", "fp8"): 27.0 * GiB,  # "26-28 GiB" estimate [gemma4.md 2.6]
    ("gemma-4-e4b-it", "bf16"): 8.0e9 * 2,  # ~8B incl. per-layer embeddings [gemma4.md 1.1] [I]
}

# Encoder work per media soft token: the large vision tower pools 3x3 patches into one token
# (patch 16, pooling 3 [gemma4.md 1.3]); the audio conformer sees one 40 ms frame per token.
ENCODER_INPUTS_PER_TOKEN = {"image": 9, "video": 9, "audio": 1}

# --- Engine constants [I] ------------------------------------------------------------------
# Sanity-checked in --check against [gemma4.md 2.5, 5].

PREFILL_MFU_DENSE = 0.40  # [I] the usual 40% of peak for large-M GEMMs
PREFILL_MFU_MOE = 0.30  # [I] grouped expert GEMMs with top-8 routing run below dense GEMMs
HBM_EFFICIENCY = 0.60  # [I] end to end; one 31B GEMM reaches 0.64-0.85 (vllm#49363, --check)
# [I] of BF16 peak, for prefill attention: head_dim-512 kernels are slow on Hopper [gemma4.md 2.3]
ATTENTION_EFFICIENCY = 0.30
STEP_OVERHEAD_S = 0.002  # [I] scheduler, sampling over the 262K vocabulary, launches
NON_KV_OVERHEAD_BYTES = 4 * GiB  # [gemma4.md 2.6] activations, CUDA graphs, encoder profiling
GPU_MEMORY_UTILIZATION = 0.90  # PoolSettings default = vLLM's
MAX_NUM_SEQS = 256  # [I] vLLM's default on large GPUs
MAX_NUM_BATCHED_TOKENS = 8192  # chunked-prefill token budget per step
PREFIX_CACHE_FRACTION = 0.20  # [I] share of the KV pool that keeps finished prefixes


@dataclass(frozen=True)
class ReplicaType:
    """One engine on one GPU: a model, its dtypes, and the engine constants."""

    model: ModelSpec
    weights: Literal["bf16", "fp8"] = "bf16"
    kv_dtype: Literal["bf16", "fp8"] = "bf16"
    gpu: GpuSpec = H100_SXM
    prefill_mfu: float | None = None  # None: by architecture
    hbm_efficiency: float = HBM_EFFICIENCY
    attention_efficiency: float = ATTENTION_EFFICIENCY
    step_overhead_s: float = STEP_OVERHEAD_S
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    max_num_seqs: int = MAX_NUM_SEQS
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    prefix_cache_fraction: float = PREFIX_CACHE_FRACTION
    max_model_len: int | None = None  # None: the model's context

    @property
    def context(self) -> int:
        return self.max_model_len or self.model.context

    @property
    def name(self) -> str:
        return f"{self.model.catalog_id} ({self.weights} weights, {self.kv_dtype} KV)"

    @property
    def mfu(self) -> float:
        if self.prefill_mfu is not None:
            return self.prefill_mfu
        return PREFILL_MFU_MOE if self.model.architecture == "moe" else PREFILL_MFU_DENSE

    # -- memory --

    @property
    def weight_bytes(self) -> float:
        return WEIGHT_BYTES[(self.model.catalog_id, self.weights)]

    @property
    def kv_scale(self) -> float:
        return 0.5 if self.kv_dtype == "fp8" else 1.0  # FP8 KV halves both kinds of layer

    @property
    def kv_capacity_bytes(self) -> float:
        """KV pool: memory x utilisation, minus weights and non-KV overhead [gemma4.md 2.6]."""
        free = self.gpu.memory_bytes * self.gpu_memory_utilization
        return free - self.weight_bytes - NON_KV_OVERHEAD_BYTES

    def kv_bytes(self, context: int) -> float:
        """KV of one sequence: global layers grow with it, sliding layers stop at the window."""
        m = self.model
        per_seq = m.global_kv_bytes * context + m.sliding_kv_bytes * min(context, m.sliding_window)
        return per_seq * self.kv_scale

    def kv_capacity_tokens(self, context: int) -> float:
        """How many tokens fit when every sequence holds `context` tokens."""
        return self.kv_capacity_bytes / self.kv_bytes(context) * context

    # -- time --

    @property
    def gemm_flops(self) -> float:
        # FP8 checkpoints run FP8 x FP8 GEMMs (dynamic per-token activations) [gemma4.md 2.5].
        return self.gpu.fp8_flops if self.weights == "fp8" else self.gpu.bf16_flops

    @property
    def bytes_per_s(self) -> float:
        return self.gpu.hbm_bytes_per_s * self.hbm_efficiency

    def weight_bytes_read(self, tokens: int) -> float:
        """Weights streamed by one step over `tokens` tokens.

        Dense: all language-model weights. MoE: the shared part, plus each expert that at
        least one token picks: 1 - (1 - k/E)^tokens of them. That is ~6% at one token
        (3.8B active, matching the published single-stream speed, --check) and over 95% at 48
        tokens, where it becomes the "total weight bytes" of a busy replica.
        """
        m = self.model
        encoder = m.encoder_params * 2  # BF16 encoders are not read while decoding
        resident = self.weight_bytes - encoder
        if m.architecture != "moe" or tokens <= 0:
            return resident
        expert_bytes = resident * m.expert_params / m.lm_params
        touched = 1.0 - (1.0 - m.experts_per_token / m.num_experts) ** tokens
        return resident - expert_bytes + expert_bytes * touched

    def linear_time(self, tokens: int) -> float:
        """Linear layers over `tokens` tokens: compute- or weight-bandwidth-bound."""
        compute = 2 * self.model.active_params * tokens / (self.gemm_flops * self.mfu)
        memory = self.weight_bytes_read(tokens) / self.bytes_per_s
        return max(compute, memory)

    def prefill_attention_flops(self, offset: int, tokens: int) -> float:
        """QK^T and AV for `tokens` new query tokens after `offset` cached ones (causal)."""
        m = self.model
        global_pairs = tokens * offset + tokens * (tokens + 1) / 2
        sliding_pairs = _sum_min(offset + 1, offset + tokens, m.sliding_window)
        return 4 * (
            m.global_layers * m.global_q_dim * global_pairs
            + m.sliding_layers * m.sliding_q_dim * sliding_pairs
        )

    def encoder_time(self, media_inputs: float) -> float:
        """Vision/audio tower over `media_inputs` patches or frames, BF16."""
        flops = 2 * self.model.encoder_params * media_inputs
        return flops / (self.gpu.bf16_flops * self.mfu)

    def step_time(
        self,
        decode_contexts: list[int],
        chunks: list[tuple[int, int]],
        media_inputs: float = 0.0,
    ) -> float:
        """One engine step: each decoding sequence's next token (its context given) plus the
        prefill `chunks` as (offset, tokens)."""
        tokens = len(decode_contexts) + sum(n for _, n in chunks)
        if tokens == 0:
            return 0.0
        attn_flops = sum(self.prefill_attention_flops(o, n) for o, n in chunks)
        kv_read = sum(self.kv_bytes(c) for c in decode_contexts)
        kv_read += sum(self.kv_bytes(o) for o, _ in chunks if o)
        attention = attn_flops / (self.gpu.bf16_flops * self.attention_efficiency)
        attention += kv_read / self.bytes_per_s
        return (
            self.step_overhead_s
            + self.linear_time(tokens)
            + attention
            + (self.encoder_time(media_inputs) if media_inputs else 0.0)
        )

    def step_flops(self, tokens: int, chunks: list[tuple[int, int]], media_inputs: float) -> float:
        """Useful FLOPs of a step (linear layers, prefill attention, encoders), for MFU;
        decode attention is left out (it is bandwidth, a few % of the FLOPs)."""
        return (
            2 * self.model.active_params * tokens
            + sum(self.prefill_attention_flops(o, n) for o, n in chunks)
            + 2 * self.model.encoder_params * media_inputs
        )

    def prefill_time(self, prompt_tokens: int, media_inputs: float = 0.0) -> float:
        """A prompt alone on an idle replica, in `max_num_batched_tokens` chunks."""
        total, offset, first = 0.0, 0, True
        while offset < prompt_tokens:
            n = min(self.max_num_batched_tokens, prompt_tokens - offset)
            total += self.step_time([], [(offset, n)], media_inputs if first else 0.0)
            offset, first = offset + n, False
        return total

    def decode_step_time(self, batch: int, context: int) -> float:
        """One decode step of `batch` sequences that each hold `context` tokens."""
        return self.step_time([context] * batch, [])


def _sum_min(lo: int, hi: int, cap: int) -> float:
    """sum(min(x, cap) for x in lo..hi), in O(1)."""
    if hi < lo:
        return 0.0
    if hi <= cap:
        return (lo + hi) * (hi - lo + 1) / 2
    if lo > cap:
        return float(cap * (hi - lo + 1))
    return (lo + cap) * (cap - lo + 1) / 2 + cap * (hi - cap)


def replica_type(
    catalog_id: str,
    weights: str = "bf16",
    kv_dtype: str = "bf16",
    **engine: float | int,
) -> ReplicaType:
    """A replica type from pool-settings vocabulary (kv 'auto' = BF16, 'fp8-online' = fp8)."""
    w = "fp8" if weights.startswith("fp8") else "bf16"
    kv = "fp8" if kv_dtype == "fp8" else "bf16"
    return ReplicaType(model=MODELS[catalog_id], weights=w, kv_dtype=kv, **engine)  # type: ignore[arg-type]


# --- Replica simulator ---------------------------------------------------------------------


class Job(Protocol):
    """What a replica needs to know about a request."""

    prompt_tokens: int
    output_tokens: int  # tokens it will really generate (>= 1)
    media_inputs: float  # encoder patches/frames, see ENCODER_INPUTS_PER_TOKEN
    prefix_key: Hashable | None  # a shared prompt prefix, e.g. a system prompt
    prefix_tokens: int


@dataclass(eq=False)
class Sequence:
    job: Job
    arrived_at: float
    to_prefill: int = 0  # prompt tokens still to compute (after any prefix-cache hit)
    context: int = 0  # tokens whose KV exists
    generated: int = 0
    kv_reserved: float = 0.0
    prefix_hit: bool = False
    encoded: bool = False  # its media went through the encoder (first chunk done)
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def ttft(self) -> float:
        assert self.first_token_at is not None
        return self.first_token_at - self.arrived_at

    @property
    def tpot(self) -> float:
        """Mean time between output tokens after the first (0 for one-token outputs)."""
        assert self.first_token_at is not None and self.finished_at is not None
        if self.job.output_tokens <= 1:
            return 0.0
        return (self.finished_at - self.first_token_at) / (self.job.output_tokens - 1)


@dataclass
class _Plan:
    """What the replica is doing until `end`.

    A mixed step (prefill chunks + one token per decoding sequence) is one step. A run of
    pure decode steps is planned in one piece: step j takes first + growth * j (the global
    KV read grows by one token per sequence per step), so k steps take
    k * first + growth * k (k - 1) / 2, and an arrival cuts the run at the next step boundary.
    Exact once every sequence is past the sliding window; before that, the sliding KV is taken
    to grow for the whole run (a slight overestimate for short contexts).
    """

    start: float
    end: float
    decode: list[Sequence]
    chunks: list[tuple[Sequence, int]] = field(default_factory=list)
    steps: int = 1
    first: float = 0.0
    growth: float = 0.0
    flops_per_step: float = 0.0

    def elapsed(self, steps: int) -> float:
        return steps * self.first + self.growth * steps * (steps - 1) / 2


class Replica:
    """One engine: FCFS waiting queue, KV-bounded admission, chunked prefill, continuous
    batching, and an LRU prefix cache.

    Simplifications [I]: a request reserves the KV of its final length when admitted (vLLM
    allocates as it grows and preempts when full; this never preempts), and a prefix hit skips
    the prefix's prefill but its KV is still counted in full.

    The caller owns the clock: `submit` and `advance` return the time at which `advance`
    must be called next (None: idle), and bump `version` so stale wake-ups can be dropped.
    """

    def __init__(self, rtype: ReplicaType, name: str = ""):
        self.rtype = rtype
        self.name = name or rtype.name
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self.kv_reserved = 0.0
        self.prefix_cache: OrderedDict[Hashable, float] = OrderedDict()
        self.plan: _Plan | None = None
        self.version = 0
        self.busy_s = 0.0
        self.flops = 0.0
        self.output_tokens = 0
        self.prefix_hits = 0
        self.prefix_lookups = 0

    # -- what a router can see --

    def mfu(self, seconds: float) -> float:
        """Useful FLOPs over `seconds` against the GEMM peak (FP8 or BF16)."""
        return self.flops / (self.rtype.gemm_flops * seconds)

    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def ongoing(self) -> int:
        return len(self.waiting) + self.running

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.kv_reserved / self.rtype.kv_capacity_bytes

    # -- what the engine itself reports (vLLM's SchedulerStats) --

    @property
    def backlog(self) -> int:
        """Waiting sequences the scheduler has passed over: vLLM's num_waiting_reqs, taken
        after a step's scheduling, so a request that arrived during the step (still in the
        engine's input queue, scheduled at the next step) is not in it. `queued` counts those
        too. All of them when the head cannot be admitted (KV or max_num_seqs)."""
        if not self.waiting:
            return 0
        if self.plan is None or not self._admissible(self.waiting[0]):
            return len(self.waiting)
        start = self.plan.start
        return sum(1 for s in self.waiting if s.arrived_at < start)

    @property
    def kv_in_use(self) -> float:
        """Share of the KV pool holding the tokens computed so far: vLLM's kv_cache_usage
        (cached prefixes no running request holds count as free). `kv_usage` is the admission
        reservation at final length, always at least this. A prefix shared by running
        sequences is counted once per sequence [I]."""
        rt = self.rtype
        g, s, w = rt.model.global_kv_bytes, rt.model.sliding_kv_bytes, rt.model.sliding_window
        used = 0.0
        for seqs in (self.prefilling, self.decoding):
            for q in seqs:
                c = q.context
                used += g * c + s * (c if c < w else w)
        return used * rt.kv_scale / rt.kv_capacity_bytes

    def holds_prefix(self, key: Hashable) -> bool:
        return key in self.prefix_cache

    def fits(self, job: Job) -> bool:
        """Whether the job could ever be admitted (alone) on this replica."""
        total = job.prompt_tokens + job.output_tokens
        return (
            total <= self.rtype.context
            and self.rtype.kv_bytes(total) <= self.rtype.kv_capacity_bytes
        )

    # -- driving it --

    def submit(self, job: Job, now: float) -> float | None:
        """Queue a job; returns the replica's next wake-up time if it changed, else None."""
        if not self.fits(job):
            raise ValueError(f"job of {job.prompt_tokens}+{job.output_tokens} tokens never fits")
        seq = Sequence(job=job, arrived_at=now)
        head_was_empty = not self.waiting
        self.waiting.append(seq)
        if self.plan is None:
            return self._start(now)
        if self.plan.steps > 1 and head_was_empty and self._admissible(seq):
            return self._cut(now)
        return None  # joins at the end of the current step

    def advance(self, now: float) -> tuple[list[Sequence], float | None]:
        """Finish the current plan (due at `now`); returns finished sequences, next wake-up."""
        plan = self.plan
        assert plan is not None and abs(plan.end - now) < 1e-6, "advance() called off-schedule"
        finished = self._commit(plan, plan.steps, now)
        self.plan = None
        return finished, self._start(now)

    # -- internals --

    def _admissible(self, seq: Sequence) -> bool:
        need = self.rtype.kv_bytes(seq.job.prompt_tokens + seq.job.output_tokens)
        return (
            self.running < self.rtype.max_num_seqs
            and self.kv_reserved + need <= self.rtype.kv_capacity_bytes
        )

    def _admit(self, seq: Sequence, now: float) -> None:
        job = seq.job
        seq.kv_reserved = self.rtype.kv_bytes(job.prompt_tokens + job.output_tokens)
        self.kv_reserved += seq.kv_reserved
        seq.admitted_at = now
        seq.to_prefill = job.prompt_tokens
        if job.prefix_key is not None:
            self.prefix_lookups += 1
            if job.prefix_key in self.prefix_cache:
                self.prefix_cache.move_to_end(job.prefix_key)
                self.prefix_hits += 1
                seq.prefix_hit = True
                # At least one token is computed, as in vLLM, to produce logits.
                seq.context = min(job.prefix_tokens, job.prompt_tokens - 1)
                seq.to_prefill = job.prompt_tokens - seq.context
        self.prefilling.append(seq)

    def _start(self, now: float) -> float | None:
        """Plan the next step(s) from `now`, vLLM-style: decodes first, then prefill chunks
        of admitted prompts, then new admissions, within the token budget."""
        budget = self.rtype.max_num_batched_tokens - len(self.decoding)
        chunks: list[tuple[Sequence, int]] = []
        for seq in self.prefilling:
            if budget <= 0:
                break
            n = min(seq.to_prefill, budget)
            chunks.append((seq, n))
            budget -= n
        while budget > 0 and self.waiting and self._admissible(self.waiting[0]):
            seq = self.waiting.popleft()
            self._admit(seq, now)
            n = min(seq.to_prefill, budget)
            chunks.append((seq, n))
            budget -= n
        decode = list(self.decoding)
        if chunks:
            # Encoders run once, on a request's first chunk.
            media = sum(s.job.media_inputs for s, _ in chunks if not s.encoded)
            duration = self.rtype.step_time(
                [s.context for s in decode], [(s.context, n) for s, n in chunks], media
            )
            flops = self.rtype.step_flops(
                len(decode) + sum(n for _, n in chunks), [(s.context, n) for s, n in chunks], media
            )
            self.plan = _Plan(
                start=now, end=now + duration, decode=decode, chunks=chunks, flops_per_step=flops
            )
        elif decode:
            self.plan = self._decode_run(now, decode)
        else:
            self.plan = None
            return None
        self.version += 1
        return self.plan.end

    def _decode_run(self, now: float, decode: list[Sequence]) -> _Plan:
        rt = self.rtype
        steps = min(s.job.output_tokens - s.generated for s in decode)
        first = rt.step_time([s.context for s in decode], [])
        window = rt.model.sliding_window
        growing = rt.model.global_kv_bytes * len(decode) + rt.model.sliding_kv_bytes * sum(
            1 for s in decode if s.context < window
        )
        growth = growing * rt.kv_scale / rt.bytes_per_s
        flops = rt.step_flops(len(decode), [], 0.0)
        plan = _Plan(
            start=now,
            end=now,
            decode=decode,
            steps=steps,
            first=first,
            growth=growth,
            flops_per_step=flops,
        )
        plan.end = now + plan.elapsed(steps)
        return plan

    def _cut(self, now: float) -> float:
        """End the current decode run at the first step boundary at or after `now`."""
        plan = self.plan
        assert plan is not None
        a, b, r = plan.first, plan.growth, now - plan.start
        # Smallest j >= 1 with a*j + b*j*(j-1)/2 >= r.
        if b > 0:
            j = math.ceil((-(a - b / 2) + math.sqrt((a - b / 2) ** 2 + 2 * b * r)) / b)
        else:
            j = math.ceil(r / a)
        j = max(1, j)
        while j > 1 and plan.elapsed(j - 1) >= r:
            j -= 1
        while plan.elapsed(j) < r:
            j += 1
        if j >= plan.steps:
            return plan.end  # nothing to cut: the run ends first
        plan.steps = j
        plan.end = plan.start + plan.elapsed(j)
        self.version += 1
        return plan.end

    def _commit(self, plan: _Plan, steps: int, now: float) -> list[Sequence]:
        self.busy_s += plan.end - plan.start
        self.flops += plan.flops_per_step * steps
        finished: list[Sequence] = []
        for seq in plan.decode:
            seq.generated += steps
            seq.context += steps
            self.output_tokens += steps
            if seq.generated >= seq.job.output_tokens:
                finished.append(seq)
        for seq, n in plan.chunks:
            seq.encoded = True
            seq.context += n
            seq.to_prefill -= n
            if seq.to_prefill == 0:
                # The step that completes the prompt also samples the first token.
                seq.generated, seq.first_token_at = 1, now
                self.output_tokens += 1
                self.prefilling.remove(seq)
                self._remember_prefix(seq.job)
                if seq.job.output_tokens <= 1:
                    finished.append(seq)
                else:
                    self.decoding.append(seq)
        for seq in finished:
            seq.finished_at = now
            if seq in self.decoding:
                self.decoding.remove(seq)
            self.kv_reserved -= seq.kv_reserved
        if not self.running:
            self.kv_reserved = 0.0  # no drift from float sums
        return finished

    def _remember_prefix(self, job: Job) -> None:
        key = job.prefix_key
        if key is None:
            return
        size = self.rtype.kv_bytes(job.prefix_tokens)
        budget = self.rtype.kv_capacity_bytes * self.rtype.prefix_cache_fraction
        self.prefix_cache[key] = size
        self.prefix_cache.move_to_end(key)
        while sum(self.prefix_cache.values()) > budget and len(self.prefix_cache) > 1:
            self.prefix_cache.popitem(last=False)


def run_replica(rtype: ReplicaType, arrivals: list[tuple[float, Job]]) -> list[Sequence]:
    """Run jobs arriving at the given times through one replica until all finish."""
    replica = Replica(rtype)
    done: list[Sequence] = []
    pending = sorted(arrivals, key=lambda a: a[0])
    wake: float | None = None
    i = 0
    while i < len(pending) or wake is not None:
        if i < len(pending) and (wake is None or pending[i][0] < wake):
            now, job = pending[i]
            i += 1
            changed = replica.submit(job, now)
            if changed is not None:
                wake = changed
        else:
            assert wake is not None
            finished, wake = replica.advance(wake)
            done.extend(finished)
    return done


# --- Sanity checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class SimpleJob:
    prompt_tokens: int
    output_tokens: int
    media_inputs: float = 0.0
    prefix_key: Hashable | None = None
    prefix_tokens: int = 0


def fleet_types() -> dict[str, ReplicaType]:
    """The replica types of configs/h100-fp8.yaml (and an optional E4B for audio)."""
    return {
        "gemma-4-31b-it": replica_type("gemma-4-31b-it", "fp8", "fp8"),
        "gemma-4-26b-a4b-it": replica_type("gemma-4-26b-a4b-it", "bf16", "fp8"),
        "gemma-4-e4b-it": replica_type("gemma-4-e4b-it", "bf16", "bf16"),
    }


def sanity_checks() -> list[tuple[str, str, str, str]]:
    """(quantity, this model, published or derived elsewhere, source) rows."""
    rows: list[tuple[str, str, str, str]] = []
    types = fleet_types()
    dense, moe = types["gemma-4-31b-it"], types["gemma-4-26b-a4b-it"]

    # GEMM microbenchmark, 31B shape N=12288 K=5376 on H100 (vllm#49363): at batch 64 the
    # GEMM is weight-bound, so its TFLOP/s imply an achieved weight bandwidth.
    n, k = 12288, 5376
    for label, tflops, wbytes in (("FP8", 275e12, 1), ("BF16", 183e12, 2)):
        seconds = 2 * 64 * n * k / tflops
        eff = n * k * wbytes / seconds / H100_SXM.hbm_bytes_per_s
        rows.append(
            (
                f"HBM efficiency, one {label} GEMM at batch 64",
                f"{HBM_EFFICIENCY:.2f} (end to end)",
                f"{eff:.2f} implied",
                "vllm#49363 [gemma4.md 2.5]",
            )
        )

    # KV pool sizes and concurrency at 4K context [gemma4.md 2.6 table].
    for rt, pool_gib, seqs in ((dense, "~36", "~65"), (moe, "~20", "~142")):
        at_4k = rt.kv_capacity_bytes / rt.kv_bytes(4096)
        rows.append(
            (
                f"{rt.model.catalog_id} KV pool GiB / seqs at 4K",
                f"{rt.kv_capacity_bytes / GiB:.1f} / {at_4k:.0f}",
                f"{pool_gib} / {seqs}",
                "[gemma4.md 2.6] (arithmetic, same assumptions)",
            )
        )

    # 31B FP8 on RTX PRO 6000, ShareGPT at concurrency 24: ~548 output tok/s peak.
    pro_dense = ReplicaType(model=GEMMA_4_31B, weights="fp8", kv_dtype="bf16", gpu=RTX_PRO_6000)
    step = pro_dense.decode_step_time(24, 1000)
    rows.append(
        (
            "31B FP8, RTX PRO 6000, c=24 decode tok/s",
            f"{24 / step:.0f} (pure decode, ctx 1000)",
            "~548 peak (mixed with prefill)",
            "blog.hexgrid.cloud [gemma4.md 5]",
        )
    )
    # Single stream on the same card, published with MTP x4 speculation (which we do not model).
    for model, published, src in (
        (GEMMA_4_31B, "80-115 with MTP x4", "loftllc.dev [gemma4.md 5]"),
        (GEMMA_4_26B_A4B, "205-312 with MTP x4", "vllm#48848 [gemma4.md 5]"),
    ):
        rt = ReplicaType(model=model, weights="fp8", kv_dtype="fp8", gpu=RTX_PRO_6000)
        rows.append(
            (
                f"{model.catalog_id} FP8, RTX PRO 6000, c=1 tok/s",
                f"{1 / rt.decode_step_time(1, 1000):.0f} (no speculation)",
                published,
                src,
            )
        )
    ratio = dense.decode_step_time(1, 1000) / moe.decode_step_time(1, 1000)
    rows.append(
        (
            "single-stream decode, 26B-A4B vs 31B (H100, fleet dtypes)",
            f"{ratio:.1f}x faster",
            "3-6x expected",
            "[gemma4.md 5] first principles",
        )
    )
    # The fleet on H100, for reference (no published H100 numbers exist [gemma4.md 5]).
    for rt in (dense, moe):
        rows.append(
            (
                f"{rt.name}: prefill 2K / 32K, s",
                f"{rt.prefill_time(2048):.2f} / {rt.prefill_time(32768):.2f}",
                "-",
                "no H100 figures published",
            )
        )
        rows.append(
            (
                f"{rt.name}: TPOT ms at batch 1 / 32 / 64 (ctx 2K)",
                " / ".join(f"{rt.decode_step_time(b, 2048) * 1e3:.1f}" for b in (1, 32, 64)),
                "-",
                "no H100 figures published",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="print the sanity checks")
    args = parser.parse_args()
    if not args.check:
        parser.print_help()
        return
    print("| quantity | this model | published / elsewhere | source |")
    print("|---|---|---|---|")
    for row in sanity_checks():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
