"""Routing strategies compared on a simulated H100 fleet, through the real routing code.

A seeded discrete-event simulation: 4 x gemma-4-26b-a4b-it + 4 x gemma-4-31b-it replicas
(configs/h100-fp8.yaml: 31B FP8 weights, 26B BF16 weights, both FP8 KV), each a
continuous-batching engine from `fleet_model.py`, fed a mixed workload with bursts. The
strategies ask the policy that `service.routing.setup.build_policy` builds from that config
(`RoutingPolicy.route`), with the loads of the production `LoadTracker`, which the simulated
gateway feeds as the real one does (`gateway.py`); nothing of the policy is copied here.

    .venv/bin/python -m benchmarks.sim.routing            # ~10 s on 2 CPUs
    .venv/bin/python -m benchmarks.sim.routing --seed 2 --minutes 5 --rate-scale 1.2

Output: a Markdown table (stdout) and benchmarks/results/routing_sim.png. It is a simulation:
the numbers come from a cost model (fleet_model.py), not from GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks.sim import report
from benchmarks.sim.deployment import CONFIG, SimPool, sim_pool
from benchmarks.sim.events import EventLoop, Handlers
from benchmarks.sim.fleet_model import Replica, Sequence
from benchmarks.sim.gateway import Gateway, RoutingPolicy, build_policy, route
from benchmarks.sim.workload import (
    MIX,
    Kind,
    Request,
    Workload,
    WorkloadClass,
    bursty_workload,
    make_request,
    prefix_groups,
)
from service.settings import PoolSettings, Settings, load_settings

REPLICAS_PER_POOL = 4
E4B = "gemma-4-e4b-it"

# Base arrival rate (requests/s) at --rate-scale 1. By the cost model (`offered_load`: each
# request's prefill plus its output at the per-token cost of a 32-sequence batch, averaged
# over the two pools) the mix costs ~0.43 GPU-s a request, so 5 req/s offers the 8 GPUs ~27%
# of their capacity on average, ~34% with bursts, and ~81% during a 3x burst: the "70-90% at
# peak" that makes saturation and spill-over matter.
BASE_RATE = 5.0
BURST_MULTIPLIER = 3.0
BURST_SECONDS = 20.0
BURST_EVERY_S = 150.0  # one burst per 2.5 simulated minutes on average


def make_workload(
    seed: int, minutes: float, rate: float, mix: tuple[WorkloadClass, ...] = MIX
) -> Workload:
    """Poisson arrivals at `rate`, tripled during 20 s bursts; classes drawn by share."""
    return bursty_workload(
        seed,
        minutes,
        rate,
        mix,
        burst_multiplier=BURST_MULTIPLIER,
        burst_s=BURST_SECONDS,
        burst_every_s=BURST_EVERY_S,
    )


# --- Fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Fleet:
    """The deployed pools (engine types and what they accept), how many replicas each, and
    the settings the policies are built from."""

    settings: Settings
    pools: Mapping[str, SimPool]
    replicas_per_pool: Mapping[str, int]
    prefix_affinity_max_imbalance: int

    @property
    def policy(self) -> RoutingPolicy:
        return self.policy_for()

    def policy_for(self, steps: tuple[str, ...] | None = None, **routing: Any) -> RoutingPolicy:
        """The policy build_policy makes from these settings, with `routing.steps` and other
        routing settings overridden (a strategy's variant)."""
        return _built(self, steps, tuple(sorted(routing.items())))


@functools.lru_cache(maxsize=64)
def _built(
    fleet: Fleet, steps: tuple[str, ...] | None, routing: tuple[tuple[str, Any], ...]
) -> RoutingPolicy:
    update = dict(routing) | ({} if steps is None else {"steps": list(steps)})
    settings = fleet.settings.model_copy(
        update={"routing": fleet.settings.routing.model_copy(update=update)}
    )
    return build_policy(settings)


def load_fleet(with_e4b: bool = False, config: Path = CONFIG) -> Fleet:
    settings = load_settings(config)
    pools = list(settings.pools)
    if with_e4b:
        pools.append(PoolSettings(id=E4B, weights="bf16", max_model_len=131072))
        settings = settings.model_copy(update={"pools": pools})
    # One E4B replica is enough for 2% audio traffic; the big pools get 4 each.
    counts = {p.id: (1 if p.id == E4B else REPLICAS_PER_POOL) for p in pools}
    imbalance = pools[0].prefix_affinity_max_imbalance  # the setting's default: 8
    return Fleet(settings, {p.id: sim_pool(p) for p in pools}, counts, imbalance)


# --- Routing strategies --------------------------------------------------------------------

Outcome = Literal["sent", "rejected", "shed", "failed"]


@dataclass(frozen=True)
class Route:
    outcome: Outcome
    replica: int | None = None
    reason: str = ""


@dataclass
class FleetState:
    """What a router can see: the gateway's tracker (exact in-flight counts, engine figures
    read every stats interval) and each replica's in-flight count, to pick one in a pool."""

    fleet: Fleet
    replicas: list[Replica]
    pool_of: list[str]
    by_pool: dict[str, list[int]]
    rng: random.Random
    gateway: Gateway
    rr_next: int = 0
    affinity: dict[tuple[str, int], int] = field(default_factory=dict)

    def least_loaded(self, candidates: Iterable[int]) -> int:
        """Fewest in-flight requests; ties broken at random (seeded). Full least-loaded,
        not power-of-two choices: one gateway sees every replica's count exactly."""
        return min(candidates, key=lambda i: (self.replicas[i].ongoing, self.rng.random()))


Strategy = Callable[[Request, FleetState, float], Route]


def round_robin(req: Request, state: FleetState, now: float) -> Route:
    """Every replica in turn, blind to capability and size: the engine refuses what it
    cannot take (audio on a 26B/31B, prompt + max_tokens over its max_model_len)."""
    i = state.rr_next % len(state.replicas)
    state.rr_next += 1
    pool = state.fleet.pools[state.pool_of[i]]
    if not req.features.modalities <= pool.modalities:
        return Route("failed", i, f"engine refuses {sorted(req.features.modalities)}")
    if req.features.total_tokens > pool.max_model_len:
        return Route("failed", i, "engine: context length")
    return Route("sent", i, "round-robin")


def capability_least_loaded(req: Request, state: FleetState, now: float) -> Route:
    """Only the policy's capability step (it refuses what no pool takes), then the
    least-loaded replica of any pool whose engines accept the request."""
    routed = route(state.fleet.policy_for(("capability",)), req.features, {})
    if routed.refused is not None or routed.pool_id is None:
        return Route(routed.refused or "rejected", None, routed.reason)
    accepting = {p.id for p in state.fleet.pools.values() if p.accepts(req.features)}
    # None accepts it by estimate: the policy sent it where it has the most room.
    ids = accepting or {routed.pool_id}
    candidates = [i for i, pool in enumerate(state.pool_of) if pool in ids]
    return Route("sent", state.least_loaded(candidates), routed.reason)


def policy_strategy(
    steps: tuple[str, ...], affinity: bool = False, **routing: Any
) -> Callable[[Request, FleetState, float], Route]:
    """Our policy with the given steps (and routing settings overridden); inside the chosen
    pool, the least-loaded replica, or the prefix-affinity replica."""

    def choose(req: Request, state: FleetState, now: float) -> Route:
        policy = state.fleet.policy_for(steps, **routing)
        routed = route(policy, req.features, state.gateway.loads())
        if routed.refused is not None or routed.pool_id is None:
            return Route(routed.refused or "rejected", None, routed.reason)
        idx = state.by_pool[routed.pool_id]
        if affinity and req.prefix_key is not None:
            return Route("sent", _affine(req, routed.pool_id, idx, state), routed.reason)
        return Route("sent", state.least_loaded(idx), routed.reason)

    return choose


def _affine(req: Request, pool: str, idx: list[int], state: FleetState) -> int:
    """The replica this prefix group last went to, unless its queue is more than
    prefix_affinity_max_imbalance longer than the least-loaded one's (load guard).

    Production uses Ray's PrefixCacheAffinityRouter with imbalanced_threshold = the same
    setting (engine_config.deployment_config); Ray's guard compares the pool's longest and shortest
    queues rather than the home replica's with the shortest, and it matches prompt text in a
    prefix tree where this keys on the group. Close enough for a routing comparison."""
    assert req.prefix_key is not None
    key = (pool, req.prefix_key)
    best = state.least_loaded(idx)
    home = state.affinity.get(key)
    limit = state.fleet.prefix_affinity_max_imbalance
    if home is not None and state.replicas[home].ongoing <= state.replicas[best].ongoing + limit:
        return home
    state.affinity[key] = best
    return best


STRATEGIES: dict[str, Strategy] = {
    "1 round-robin": round_robin,
    "2 capability + least-loaded": capability_least_loaded,
    "3 policy, no spill-over": policy_strategy(("capability", "size_shape")),
    "4 policy + spill-over": policy_strategy(("capability", "size_shape", "spill_over")),
    "5 policy + spill + prefix affinity": policy_strategy(
        ("capability", "size_shape", "spill_over"), affinity=True
    ),
    # Not one of the five asked for: strategy 4 with the opt-in long-prompt rule on (prompts
    # of 8k tokens or more to the 31B pool). Shows what that quality choice costs in latency.
    "6 what-if: 4 with long prompts on 31B": policy_strategy(
        ("capability", "size_shape", "spill_over"), long_prompt_tokens=8192
    ),
}
BASELINE, OURS, OURS_AFFINITY = (
    "1 round-robin",
    "4 policy + spill-over",
    "5 policy + spill + prefix affinity",
)

# --- The simulation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    request: Request
    outcome: Outcome
    pool: str | None = None
    ttft: float = math.nan
    tpot: float = math.nan
    finished_at: float = math.nan
    prefix_hit: bool = False


@dataclass(frozen=True)
class RunResult:
    strategy: str
    records: tuple[Record, ...]
    makespan_s: float
    gpus: int
    busy_s: tuple[float, ...]
    mfu: tuple[float, ...]  # per replica, over the makespan
    pool_of: tuple[str, ...]
    output_tokens: int
    saturated_share: Mapping[str, float]  # share of stats reads where is_saturated


def simulate(
    workload: Workload,
    fleet: Fleet,
    strategy: str,
    seed: int = 0,
    stats_interval_s: float | None = None,
) -> RunResult:
    """Replay the workload through one strategy. Events: arrivals, engine wake-ups, and the
    gateway's reads of the engines' figures (every `routing.stats_interval_s`)."""
    interval = stats_interval_s or fleet.settings.routing.stats_interval_s
    loop = EventLoop(tick_s=interval)
    pool_of: list[str] = []
    by_pool: dict[str, list[int]] = {}
    for pool_id, pool in fleet.pools.items():
        for n in range(fleet.replicas_per_pool[pool_id]):
            by_pool.setdefault(pool_id, []).append(loop.add(Replica(pool.rtype, f"{pool_id}/{n}")))
            pool_of.append(pool_id)
    replicas = loop.engines
    engines = {p: [replicas[i] for i in idx] for p, idx in by_pool.items()}
    gateway = Gateway(fleet.settings, engines, clock=lambda: loop.now)
    state = FleetState(fleet, replicas, pool_of, by_pool, random.Random(seed), gateway)
    choose = STRATEGIES[strategy]
    records: dict[int, Record] = {}
    pending: dict[int, tuple[Request, str, Callable[[], None]]] = {}  # id(job) -> ...
    saturated = dict.fromkeys(by_pool, 0)
    reads = 0

    def read_stats(now: float) -> None:
        nonlocal reads
        gateway.read_engines(now)
        reads += 1
        for pool, full in gateway.saturated(fleet.policy).items():
            saturated[pool] += full

    def arrive(req: Request, now: float) -> None:
        decision = choose(req, state, now)
        if decision.outcome != "sent":
            records[req.id] = Record(req, decision.outcome)
            return
        assert decision.replica is not None
        pool = pool_of[decision.replica]
        pending[id(req)] = (req, pool, gateway.sent(pool))
        loop.submit(decision.replica, req, now)

    def finished(_: int, seqs: list[Sequence], now: float) -> None:
        for s in seqs:
            req, pool, done = pending.pop(id(s.job))
            done()
            records[req.id] = Record(
                req, "sent", pool, s.ttft, s.tpot, s.finished_at or math.nan, s.prefix_hit
            )

    # The gateway reads the engines while requests arrive.
    loop.run(
        workload.requests,
        Handlers(arrive, finished, read_stats, ticking=lambda _, arrivals_left: arrivals_left),
    )
    assert not pending, "requests lost in the fleet"
    ordered = tuple(records[r.id] for r in workload.requests)
    makespan = max([workload.duration_s, *(r.finished_at for r in ordered if r.outcome == "sent")])
    return RunResult(
        strategy=strategy,
        records=ordered,
        makespan_s=makespan,
        gpus=len(replicas),
        busy_s=tuple(r.busy_s for r in replicas),
        mfu=tuple(r.mfu(makespan) for r in replicas),
        pool_of=tuple(pool_of),
        output_tokens=sum(r.output_tokens for r in replicas),
        saturated_share={p: n / max(1, reads) for p, n in saturated.items()},
    )


# --- Metrics -------------------------------------------------------------------------------


def servable(req: Request, fleet: Fleet) -> bool:
    """Some deployed pool accepts the request (else a 400 is the right answer)."""
    return any(p.accepts(req.features) for p in fleet.pools.values())


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    requests: int
    servable: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    goodput: float  # share of servable requests that were served within both SLOs
    shed: int
    failed: int
    rejected: int
    tokens_per_s_per_gpu: float
    utilisation: float
    utilisation_by_pool: Mapping[str, float]
    mfu_by_pool: Mapping[str, float]
    prefix_hit_rate: float


def summarise(result: RunResult, fleet: Fleet, kinds: set[str] | None = None) -> StrategySummary:
    records = [r for r in result.records if kinds is None or r.request.kind in kinds]
    ok = [r for r in records if r.outcome == "sent"]
    n_servable = sum(servable(r.request, fleet) for r in records)
    prefixed = [r for r in ok if r.request.prefix_key is not None]
    _, met = report.within_slo(np.array([r.ttft for r in ok]), np.array([r.tpot for r in ok]))
    busy_by_pool: dict[str, list[float]] = {}
    mfu_by_pool: dict[str, list[float]] = {}
    for pool, busy, mfu in zip(result.pool_of, result.busy_s, result.mfu, strict=True):
        busy_by_pool.setdefault(pool, []).append(busy / result.makespan_s)
        mfu_by_pool.setdefault(pool, []).append(mfu)
    return StrategySummary(
        strategy=result.strategy,
        requests=len(records),
        servable=n_servable,
        ttft_p50_ms=report.pct([r.ttft for r in ok], 50) * 1e3,
        ttft_p99_ms=report.pct([r.ttft for r in ok], 99) * 1e3,
        tpot_p50_ms=report.pct([r.tpot for r in ok if r.request.output_tokens > 1], 50) * 1e3,
        goodput=int(met.sum()) / max(1, n_servable),
        shed=sum(r.outcome == "shed" for r in records),
        failed=sum(r.outcome == "failed" for r in records),
        rejected=sum(r.outcome == "rejected" for r in records),
        tokens_per_s_per_gpu=result.output_tokens / result.gpus / result.makespan_s,
        utilisation=sum(result.busy_s) / result.gpus / result.makespan_s,
        utilisation_by_pool={p: float(np.mean(v)) for p, v in busy_by_pool.items()},
        mfu_by_pool={p: float(np.mean(v)) for p, v in mfu_by_pool.items()},
        prefix_hit_rate=sum(r.prefix_hit for r in prefixed) / max(1, len(prefixed)),
    )


def short(pool: str) -> str:
    return {"gemma-4-26b-a4b-it": "26B", "gemma-4-31b-it": "31B", E4B: "E4B"}.get(pool, pool)


def strategy_table(summaries: list[StrategySummary]) -> str:
    head = (
        "strategy, TTFT p50 ms, TTFT p99 ms, TPOT p50 ms, goodput, shed, failed, rejected (400),"
        " out tok/s/GPU, GPU busy (by pool), MFU by pool, prefix hits"
    ).split(", ")
    rows = []
    for s in summaries:
        pools = ", ".join(f"{short(p)} {u:.0%}" for p, u in s.utilisation_by_pool.items())
        mfu = ", ".join(f"{short(p)} {u:.0%}" for p, u in s.mfu_by_pool.items())
        rows.append(
            [
                s.strategy,
                f"{s.ttft_p50_ms:.0f}",
                f"{s.ttft_p99_ms:.0f}",
                f"{s.tpot_p50_ms:.1f}",
                f"{s.goodput:.1%}",
                str(s.shed),
                str(s.failed),
                str(s.rejected),
                f"{s.tokens_per_s_per_gpu:.0f}",
                f"{s.utilisation:.0%} ({pools})",
                mfu,
                f"{s.prefix_hit_rate:.0%}",
            ]
        )
    return report.table(head, rows)


def per_class_table(results: Mapping[str, RunResult], fleet: Fleet, names: list[str]) -> str:
    """Goodput and TTFT p99 per workload class inside the mixed run."""
    head = ["class", "n", *(f"{n.split(' ')[0]} goodput / p99 s" for n in names)]
    rows = []
    for c in MIX:
        cells = []
        for name in names:
            s = summarise(results[name], fleet, {c.kind})
            if s.servable == 0:
                cells.append(f"- ({s.rejected} rej., {s.failed} failed)")
            else:
                cells.append(f"{s.goodput:.0%} / {s.ttft_p99_ms / 1e3:.1f}")
        n = summarise(results[names[0]], fleet, {c.kind}).requests
        rows.append([c.kind, str(n), *cells])
    return report.table(head, rows)


# --- Single-class traffic ------------------------------------------------------------------


def mean_work_s(kind: Kind, fleet: Fleet, seed: int) -> float:
    """GPU-seconds one request of the class costs alone, averaged over the pools: prefill,
    plus its output tokens at the per-token cost of a 32-sequence decode batch."""
    rng = np.random.default_rng(seed)
    groups = prefix_groups(rng)
    reqs = [make_request(i, kind, 0.0, rng, groups) for i in range(400)]
    types = [p.rtype for p in fleet.pools.values() if p.id != E4B]
    total = 0.0
    for r in reqs:
        for rt in types:
            total += rt.prefill_time(r.prompt_tokens, r.media_inputs)
            total += r.output_tokens * rt.decode_step_time(32, r.prompt_tokens) / 32
    return total / (len(reqs) * len(types))


def single_class_rates(fleet: Fleet, base_rate: float, seed: int) -> dict[Kind, float]:
    """Arrival rates that offer each class alone the same GPU work as the mix."""
    work = {c.kind: mean_work_s(c.kind, fleet, seed) for c in MIX}
    mixed = sum(c.share * work[c.kind] for c in MIX)
    return {c.kind: base_rate * mixed / work[c.kind] for c in MIX if c.kind != "audio"}


def single_class_rows(
    fleet: Fleet, base_rate: float, seed: int, minutes: float
) -> list[tuple[str, float, StrategySummary, StrategySummary, StrategySummary]]:
    rows = []
    for kind, rate in single_class_rates(fleet, base_rate, seed).items():
        mix = tuple(dataclasses.replace(c, share=1.0) for c in MIX if c.kind == kind)
        wl = make_workload(seed, minutes, rate, mix)
        summaries = [
            summarise(simulate(wl, fleet, name, seed), fleet)
            for name in (BASELINE, OURS, OURS_AFFINITY)
        ]
        rows.append((kind, rate, *summaries))
    return rows


def offered_load(fleet: Fleet, rate: float, seed: int) -> float:
    """Offered work at `rate` as a share of the big pools' GPU-seconds per second."""
    work = sum(c.share * mean_work_s(c.kind, fleet, seed) for c in MIX)
    gpus = sum(n for p, n in fleet.replicas_per_pool.items() if p != E4B)
    return rate * work / gpus


def verdict(base: StrategySummary, ours: StrategySummary) -> str:
    d = ours.goodput - base.goodput
    if d > 0.02:
        return "policy wins"
    if d < -0.02:
        return "round-robin wins"
    return "no real difference"


# --- Plot ----------------------------------------------------------------------------------


PLOT_LABELS = {
    "1 round-robin": "1 round-\nrobin",
    "2 capability + least-loaded": "2 capability\n+ least-loaded",
    "3 policy, no spill-over": "3 policy,\nno spill",
    "4 policy + spill-over": "4 policy\n+ spill-over",
    "5 policy + spill + prefix affinity": "5 = 4 + prefix\naffinity",
    "6 what-if: 4 with long prompts on 31B": "6 what-if: 4,\nlong on 31B",
}


def plot_strategies(
    results: Mapping[str, RunResult], summaries: list[StrategySummary], path: Path
) -> None:
    names = [s.strategy for s in summaries]
    labels = [PLOT_LABELS.get(n, n) for n in names]
    title = (
        "Routing strategies on a SIMULATED 4x26B-A4B + 4x31B H100 fleet (cost model,"
        " not measurements)"
    )
    with report.figure(path, title, 1, 3, figsize=(18, 5.6), dpi=110) as axes:
        ax = axes[0]
        bars = ax.bar(range(len(names)), [s.goodput * 100 for s in summaries], color="tab:green")
        for bar, s in zip(bars, summaries, strict=True):
            note = f"{s.goodput:.1%}\nshed {s.shed}\nfailed {s.failed}"
            ax.annotate(
                note,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(range(len(names)), labels, fontsize=7)
        slo = f"TTFT <= {report.TTFT_SLO_S:.0f} s and TPOT <= {report.TPOT_SLO_S * 1e3:.0f} ms"
        ax.set_ylabel(f"goodput, % ({slo})")
        ax.set_ylim(0, 115)
        ax.set_title("Goodput")
        ax = axes[1]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [s.ttft_p50_ms / 1e3 for s in summaries], 0.4, label="p50")
        ax.bar(x + 0.2, [s.ttft_p99_ms / 1e3 for s in summaries], 0.4, label="p99")
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("TTFT, s (log)")
        ax.axhline(report.TTFT_SLO_S, color="grey", linestyle="--", linewidth=0.8)
        ax.legend()
        ax.set_title("Time to first token")
        ax = axes[2]
        for name in names:
            ttfts = np.sort([r.ttft for r in results[name].records if r.outcome == "sent"])
            ax.plot(ttfts, np.arange(1, len(ttfts) + 1) / len(ttfts), label=name)
        ax.set_xscale("log")
        ax.axvline(report.TTFT_SLO_S, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("TTFT, s (log)")
        ax.set_ylabel("share of served requests")
        ax.set_title("TTFT CDF")
        ax.legend(fontsize=7, loc="lower right")


# --- Main ----------------------------------------------------------------------------------


def run_strategies(
    seed: int, minutes: float, rate_scale: float, with_e4b: bool = False
) -> tuple[Fleet, Workload, dict[str, RunResult]]:
    fleet = load_fleet(with_e4b)
    workload = make_workload(seed, minutes, BASE_RATE * rate_scale)
    results = {name: simulate(workload, fleet, name, seed) for name in STRATEGIES}
    return fleet, workload, results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated arrival window")
    parser.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help=f"times the base rate of {BASE_RATE} requests/s (bursts at 3x)",
    )
    parser.add_argument(
        "--with-e4b",
        action="store_true",
        help="add one gemma-4-e4b-it replica, the only pool that takes audio",
    )
    parser.add_argument(
        "--class-minutes",
        type=float,
        default=3.0,
        help="simulated minutes of each single-class run (0: skip them)",
    )
    parser.add_argument(
        "--other-seeds",
        type=int,
        default=4,
        help="also run this many further seeds and print the goodput spread (0: skip)",
    )
    parser.add_argument("--plot", type=Path, default=report.RESULTS / "routing_sim.png")
    return parser


def _header(fleet: Fleet, workload: Workload, args: argparse.Namespace) -> str:
    rate = BASE_RATE * args.rate_scale
    load = offered_load(fleet, rate, args.seed)
    pools = ", ".join(
        f"{fleet.replicas_per_pool[p.id]} x {p.rtype.name}" for p in fleet.pools.values()
    )
    return (
        "## Routing simulation (SIMULATED fleet: a cost model, not GPU measurements)\n\n"
        f"Fleet: {pools}; H100 SXM 80GB each. Policy: build_policy({CONFIG.name}).\n"
        f"Workload: seed {args.seed}, {args.minutes:g} min, {len(workload.requests)} requests,"
        f" Poisson {rate:.1f} req/s with {len(workload.bursts)} x {BURST_SECONDS:.0f} s bursts at"
        f" {BURST_MULTIPLIER:.0f}x (offered load by the cost model: {load:.0%} of the fleet,"
        f" {load * BURST_MULTIPLIER:.0%} in bursts). Engine stats every 1 s. Goodput = TTFT <="
        f" {report.TTFT_SLO_S:.0f} s and TPOT <= {report.TPOT_SLO_S * 1e3:.0f} ms, over servable"
        " requests."
        " Tokens/s, busy time and MFU are over the makespan (until the last request finishes)."
    )


def _saturation_line(results: Mapping[str, RunResult]) -> str:
    parts = []
    for name, result in results.items():
        shares = ", ".join(f"{short(p)} {v:.0%}" for p, v in result.saturated_share.items())
        parts.append(f"{name.split(' ')[0]}: {shares}")
    return "Pools saturated (is_saturated on the 1 s stats), share of snapshots: " + "; ".join(
        parts
    )


def _single_class_table(fleet: Fleet, args: argparse.Namespace) -> str:
    lines = [
        f"### Each class alone ({args.class_minutes:g} min, rate set for the same GPU work as"
        " the mix): round-robin vs policy (4) and policy + affinity (5)\n",
        "| class | req/s | RR goodput | policy goodput | + affinity | RR / policy TTFT p99 s"
        " | RR / policy TPOT p50 ms | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rate = BASE_RATE * args.rate_scale
    for kind, kind_rate, base, ours, aff in single_class_rows(
        fleet, rate, args.seed, args.class_minutes
    ):
        ttft = f"{base.ttft_p99_ms / 1e3:.1f} / {ours.ttft_p99_ms / 1e3:.1f}"
        tpot = f"{base.tpot_p50_ms:.0f} / {ours.tpot_p50_ms:.0f}"
        lines.append(
            f"| {kind} | {kind_rate:.1f} | {base.goodput:.1%} | {ours.goodput:.1%} |"
            f" {aff.goodput:.1%} | {ttft} | {tpot} | {verdict(base, ours)} |"
        )
    return "\n".join(lines)


def _seed_spread(args: argparse.Namespace, first: Mapping[str, StrategySummary]) -> str:
    """Goodput per strategy over this seed and `--other-seeds` more: min / mean / max."""
    goodputs = {name: [s.goodput] for name, s in first.items()}
    for seed in range(args.seed + 1, args.seed + 1 + args.other_seeds):
        fleet, _, results = run_strategies(seed, args.minutes, args.rate_scale, args.with_e4b)
        for name, result in results.items():
            goodputs[name].append(summarise(result, fleet).goodput)
    seeds = f"seeds {args.seed}-{args.seed + args.other_seeds}"
    lines = [f"Goodput over {seeds} (min / mean / max):", ""]
    for name, values in goodputs.items():
        lines.append(
            f"- {name}: {min(values):.1%} / {float(np.mean(values)):.1%} / {max(values):.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    fleet, workload, results = run_strategies(
        args.seed, args.minutes, args.rate_scale, args.with_e4b
    )
    summaries = {name: summarise(result, fleet) for name, result in results.items()}
    print(_header(fleet, workload, args) + "\n")
    print(strategy_table(list(summaries.values())) + "\n")
    print(_saturation_line(results) + "\n")
    print("### Per class, inside the mixed run (goodput / TTFT p99 in s)\n")
    print(per_class_table(results, fleet, list(STRATEGIES)) + "\n")
    if args.class_minutes > 0:
        print(_single_class_table(fleet, args) + "\n")
    if args.other_seeds > 0:
        print(_seed_spread(args, summaries) + "\n")
    plot_strategies(results, list(summaries.values()), args.plot)
    print(f"Plot: {report.shown(args.plot)} ({time.perf_counter() - started:.0f} s wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
