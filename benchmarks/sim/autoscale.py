"""Autoscaling policies compared on a simulated day of traffic to one H100 pool.

A seeded discrete-event simulation of the gemma-4-31b-it pool of configs/h100-fp8.yaml (FP8
weights, FP8 KV, one H100 per replica), each replica a continuous-batching engine from
`fleet_model.py`, fed a day-shaped trace (night, morning ramp, midday plateau, afternoon dip,
slow ramp, evening) with 3x bursts and a Prometheus outage. It compares, on the same trace and
the same replica start-up time:

  serve-default   Ray Serve's request-based policy with Serve's own defaults: the real
                  `replica_queue_length_autoscaling_policy`, through Serve's scaling-factor and
                  delay functions (`_apply_scaling_factors`, `_apply_delay_logic`).
  serve-requests  The same policy with this service's delays and look-back (what
                  `autoscaling.policy: requests` deploys): separates delays from signals.
  ours            `service.autoscaling.serve_policy.PoolAutoscalingPolicy`, built from the
                  kwargs `service.engine_config.autoscaling_config` makes from the pool's settings,
                  so every tick runs the real `signals_from_context` and `decide`.

Nothing of either policy is copied here; what is modelled is what Serve feeds them (windowed
request counts, replica stats, a Prometheus TTFT p95) and what a replica count costs.

    .venv/bin/python -m benchmarks.sim.autoscale                  # ~40 s on 2 CPUs
    .venv/bin/python -m benchmarks.sim.autoscale --seed 1 --day-hours 6 --other-seeds 2

Output: a Markdown table (stdout and benchmarks/results/autoscale_sim.md) and
benchmarks/results/autoscale_sim.png. It is a simulation: the numbers come from a cost model
(fleet_model.py), not from GPUs.

Assumptions marked [I] as in fleet_model.py; [ray] cites the installed Ray 2.60 source.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray.serve import autoscaling_policy as serve_ap
from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from benchmarks.sim import report
from benchmarks.sim.deployment import CONFIG, replica_type_for
from benchmarks.sim.events import EventLoop, Handlers
from benchmarks.sim.fleet_model import Replica, ReplicaType
from benchmarks.sim.fleet_model import Sequence as EngineSequence
from benchmarks.sim.signals import SCRAPE_INTERVAL_S, Prometheus, Series
from benchmarks.sim.workload import (
    MIX,
    Request,
    Workload,
    WorkloadClass,
    per_second_requests,
    prefix_groups,
)
from service import engine_config
from service.autoscaling.decision import ScalingDecision, Signals
from service.autoscaling.serve_policy import (
    ENGINE_WAITING,
    KV_CACHE_USAGE,
    PROMETHEUS_FETCH_INTERVAL_S,
    PoolAutoscalingPolicy,
)
from service.settings import PoolSettings, load_settings

POOL = "gemma-4-31b-it"

# The pool's bounds. configs/h100-fp8.yaml gives this pool max 4 (two pools share 8 GPUs);
# alone it may use a whole 8-GPU node, so the day can ask for more than 4. [I]
MIN_REPLICAS = 1
MAX_REPLICAS = 8

# [I] Start-up of one replica on a node that already has a free H100 (no new node): pod and
# Ray actor start plus vLLM imports ~20-30 s; 31.5 GiB of FP8 weights (fleet_model
# WEIGHT_BYTES) from a node-local NVMe cache at ~2-3 GB/s ~12-17 s; torch.compile from its
# cache 10-30 s (a cold compile is minutes); memory profiling and KV allocation 5-10 s; CUDA
# graph capture over vLLM's ~67 batch sizes 15-40 s; Serve health check ~10 s (period 10 s,
# engine_config.deployment_config). 70-140 s in all: 120 s, the same for every policy. A replica is
# paid for (GPU-hours) from the moment it is requested.
COLD_START_S = 120.0

# Trace. By the cost model one replica of this pool holds its target of 32 ongoing requests at
# ~4.5 req/s of the interactive mix (TTFT p95 ~0.65 s, TPOT ~35 ms) and saturates near 6 req/s
# (64 ongoing). So a 12 req/s midday asks for ~3 replicas, and a 3x burst on it (36 req/s)
# for ~8 at target, MAX_REPLICAS, and 6 saturated: bursts can be carried, once scaled.
PEAK_RATE = 12.0
BURST_MULTIPLIER = 3.0
BURSTS = 3
BURST_MINUTES = (5.0, 10.0)
BURST_HOURS = (8.0, 21.0)  # bursts start in this part of the (24 h) clock
OUTAGE_MINUTES = 20.0  # Prometheus unreachable; starts 5 min before the second burst
NOISE_BLOCK_S = 600.0  # the rate wobbles by a seeded factor per block...
NOISE_SIGMA = 0.08  # ... lognormal with this sigma [I]

# (clock hour, share of PEAK_RATE), linear between knots.
DAY_SHAPE: tuple[tuple[float, float], ...] = (
    (0.0, 0.12),
    (5.0, 0.08),  # night low
    (6.5, 0.12),
    (9.5, 0.90),  # morning ramp
    (10.5, 1.00),
    (12.5, 0.95),  # midday plateau
    (13.5, 0.60),  # afternoon dip
    (14.5, 0.60),
    (17.5, 1.00),  # slow ramp
    (18.5, 0.75),
    (21.0, 0.70),  # evening
    (22.5, 0.30),
    (24.0, 0.12),
)

# The interactive classes of the routing mix (no audio: the 31B pool takes none; no 8k-64k
# documents, whose prefill alone misses the TTFT SLO whatever the replica count).
INTERACTIVE: tuple[WorkloadClass, ...] = tuple(
    c for c in MIX if c.kind not in ("audio", "long_doc")
)

TICK_S = 1  # control loop period in the simulation (Serve: 0.1 s); delays are seconds anyway
# Serve's DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S [ray _private/constants.py:270]; the pool's
# deployment_config does not set graceful_shutdown_timeout_s.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0

SERVE_DEFAULT, SERVE_REQUESTS, OURS = "serve-default", "serve-requests", "ours"
POLICIES = (SERVE_DEFAULT, SERVE_REQUESTS, OURS)

# --- Trace ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace(Workload):
    day_hours: float  # the 24 h shape is played over this many simulated hours
    outage: tuple[float, float] | None  # Prometheus unreachable


def make_trace(
    seed: int,
    day_hours: float = 6.0,
    peak_rate: float = PEAK_RATE,
    bursts: Sequence[tuple[float, float]] | None = None,
    outage: tuple[float, float] | None | bool = True,
    shape: Sequence[tuple[float, float]] = DAY_SHAPE,
    mix: tuple[WorkloadClass, ...] = INTERACTIVE,
) -> Trace:
    """Poisson arrivals, piecewise constant per second, at peak_rate x the day shape x a slow
    seeded wobble x BURST_MULTIPLIER inside bursts. `bursts` None: BURSTS seeded ones;
    `outage` True: one starting 5 min before the second burst, None/False: none."""
    rng = np.random.default_rng(seed)
    groups = prefix_groups(rng)
    duration = day_hours * 3600.0
    if bursts is None:
        bursts = _seeded_bursts(rng, duration)
    bursts = tuple(sorted((float(a), float(b)) for a, b in bursts))
    if outage is True:
        anchor = bursts[min(1, len(bursts) - 1)][0] if bursts else duration / 2
        start = max(0.0, anchor - 300.0)
        outage = (start, min(duration, start + OUTAGE_MINUTES * 60.0))
    elif outage is False:
        outage = None
    seconds = np.arange(int(math.ceil(duration)))
    clock = seconds / duration * 24.0
    hours, shares = zip(*shape, strict=True)
    rate = peak_rate * np.interp(clock, hours, shares)
    blocks = int(math.ceil(duration / NOISE_BLOCK_S))
    wobble = np.exp(rng.normal(0.0, NOISE_SIGMA, size=blocks))
    rate = rate * wobble[(seconds // NOISE_BLOCK_S).astype(int)]
    for a, b in bursts:
        rate[(seconds >= a) & (seconds < b)] *= BURST_MULTIPLIER
    requests = per_second_requests(rate, rng, groups, mix)
    return Trace(requests, duration, bursts, day_hours, outage)  # type: ignore[arg-type]


def _seeded_bursts(rng: np.random.Generator, duration: float) -> tuple[tuple[float, float], ...]:
    """BURSTS bursts, one in each equal part of the BURST_HOURS span, at a seeded time."""
    lo, hi = (h / 24.0 * duration for h in BURST_HOURS)
    part = (hi - lo) / BURSTS
    out = []
    for i in range(BURSTS):
        length = min(float(rng.uniform(*BURST_MINUTES)) * 60.0, part)
        start = lo + i * part + float(rng.uniform(0.0, part - length))
        out.append((start, start + length))
    return tuple(out)


# --- Pool and policies ---------------------------------------------------------------------


@dataclass(frozen=True)
class PoolModel:
    settings: PoolSettings
    rtype: ReplicaType
    cold_start_s: float
    request_timeout_s: float


def load_pool(
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = MAX_REPLICAS,
    cold_start_s: float = COLD_START_S,
    overrides: Mapping[str, Any] | None = None,
    config: Path = CONFIG,
) -> PoolModel:
    """The pool's settings from the config, with the bounds above and, for what-ifs, pool
    settings overridden by name ("target_ongoing_requests", "autoscaling.upscale_delay_s")."""
    settings = load_settings(config)
    data = settings.pool(POOL).model_dump()
    data["replicas"] = {"min": min_replicas, "max": max_replicas}
    for key, value in (overrides or {}).items():
        *path, name = key.split(".")
        node = data
        for part in path:
            node = node[part]
        if name not in node:
            raise ValueError(f"no pool setting {key!r}")
        node[name] = value
    pool = PoolSettings.model_validate(data)
    return PoolModel(pool, replica_type_for(pool), cold_start_s, settings.server.request_timeout_s)


class SimulatedPoolPolicy(PoolAutoscalingPolicy):
    """The real policy class; only its two side doors are replaced: the TTFT p95 comes from
    the simulated Prometheus instead of a background HTTP fetch, and the decision is kept
    for the plot instead of being exported as Ray gauges."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.ttft: float | None = None
        self.last: tuple[Signals, ScalingDecision] | None = None

    def _ttft_p95(self) -> float | None:
        return self.ttft

    def _export(self, signals: Signals, decision: ScalingDecision) -> None:
        self.last = (signals, decision)


@dataclass
class Controller:
    """One policy as Serve runs it: its AutoscalingConfig and the callable Serve wraps."""

    name: str
    config: AutoscalingConfig
    policy: Callable[[AutoscalingContext], tuple[Any, dict[str, Any]]]
    ours: SimulatedPoolPolicy | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def decide(self, ctx: AutoscalingContext, now: float) -> int:
        decision, self.state = serve_decision(self.policy, ctx, now)
        return decision


def make_controller(name: str, pool: PoolModel) -> Controller:
    p = pool.settings
    if name == SERVE_DEFAULT:
        # Serve's defaults [ray serve/config.py:642-700]: upscale_delay_s 30, downscale_delay_s
        # 600, look_back_period_s 30, metrics_interval_s 10, factors 1, aggregation mean.
        config = AutoscalingConfig(
            min_replicas=p.replicas.min,
            max_replicas=p.replicas.max,
            target_ongoing_requests=p.target_ongoing_requests,
        )
        return Controller(name, config, serve_ap.default_autoscaling_policy)
    if name == SERVE_REQUESTS:
        requests = p.model_copy(
            update={"autoscaling": p.autoscaling.model_copy(update={"policy": "requests"})}
        )
        config = _serve_config(engine_config.autoscaling_config(requests, None))
        return Controller(name, config, serve_ap.default_autoscaling_policy)
    if name == OURS:
        # The Prometheus address only makes engine_config add the TTFT query; nothing is fetched.
        config = _serve_config(
            engine_config.autoscaling_config(p, "http://prometheus.invalid:9090")
        )
        ours = SimulatedPoolPolicy(**config.policy.policy_kwargs)
        return Controller(name, config, ours, ours)
    raise ValueError(name)


def _serve_config(kwargs: dict[str, Any]) -> AutoscalingConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # metrics_interval_s is deprecated but still used
        return AutoscalingConfig(**kwargs)


def serve_decision(
    policy: Callable[[AutoscalingContext], tuple[Any, dict[str, Any]]],
    ctx: AutoscalingContext,
    now: float,
) -> tuple[int, dict[str, Any]]:
    """What Serve's controller does with a policy each tick, with the clock passed in.

    The composition of [ray serve/autoscaling_policy.py] `_apply_autoscaling_config`'s
    wrapped_policy (l. 248-260), `_apply_default_params_and_merge_state` (l. 190-206) and
    `_apply_default_params` (l. 153-175), whose only difference here is `_now=now` to
    `_apply_delay_logic`; then [ray serve/_private/autoscaling_state.py:666-699]
    get_decision_num_replicas: ceil a float, clip to [min, max]."""
    config = ctx.config
    cold = serve_ap._get_cold_start_scale_up_replicas(ctx)
    if cold is not None:
        decided, state = cold, ctx.policy_state
    else:
        previous = ctx.policy_state.copy()
        desired, user_state = policy(ctx)
        internal = serve_ap._extract_internal_policy_state(previous)
        desired = serve_ap._apply_scaling_factors(desired, ctx.current_num_replicas, config)
        if ctx.current_num_replicas == 0 and desired > 0:
            decided, updated = desired, internal
        else:
            decided, updated = serve_ap._apply_delay_logic(
                max(0, desired), ctx.target_num_replicas, config, internal, _now=now
            )
        if updated:
            user_state.update(updated)
        state = user_state
    if isinstance(decided, float):
        decided = math.ceil(decided)
    return max(config.min_replicas, min(config.max_replicas, decided)), state


# --- The simulation ------------------------------------------------------------------------


@dataclass(eq=False)
class SimReplica:
    engine: Replica
    requested_at: float
    ready_at: float
    state: str = "starting"  # starting | running | draining | stopped
    stopped_at: float | None = None
    drain_started: float | None = None
    waiting: Series | None = None  # engine figures, sampled while running
    kv: Series | None = None


@dataclass(frozen=True)
class RunResult:
    policy: str
    duration_s: float
    ttft: np.ndarray  # per request; nan if not served
    tpot: np.ndarray
    dropped: np.ndarray  # bool: timed out
    gpu_seconds: float
    ups: int  # target raised (actions)
    downs: int
    started: int  # replicas requested
    cancelled: int  # stopped before they served
    cut_by_shutdown_timeout: int  # in flight > 20 s after their replica began draining
    ticks: np.ndarray  # sample times for the series below
    held: np.ndarray  # replicas holding a GPU (starting, running, draining)
    running: np.ndarray  # replicas taking requests
    target: np.ndarray  # the decision
    queue: np.ndarray  # requests waiting at the handle
    ttft_signal: np.ndarray  # what `ours` saw from Prometheus (nan: None)
    reasons: dict[str, int]  # ours: ticks per deciding signal while it wanted a change


def simulate(trace: Trace, pool: PoolModel, policy: str, seed: int = 0) -> RunResult:
    """Replay the trace through one policy. Events: arrivals, engine wake-ups, control ticks
    (activation, metric samples, scrapes, the policy, scaling)."""
    ctl = make_controller(policy, pool)
    cfg = ctl.config
    rng = np.random.default_rng(seed)
    look_back = max(1, int(round(cfg.look_back_period_s / TICK_S)))
    push_every = max(1, int(round(cfg.metrics_interval_s / TICK_S)))
    # Replicas record their figures every min(0.2 x look-back, metrics interval)
    # [ray serve/_private/replica.py:706-711].
    record_every = max(1, int(round(min(0.2 * cfg.look_back_period_s, cfg.metrics_interval_s))))
    max_ongoing = pool.settings.max_ongoing_requests
    n = len(trace.requests)
    ttft = np.full(n, np.nan)
    tpot = np.full(n, np.nan)
    dropped = np.zeros(n, dtype=bool)
    replicas: list[SimReplica] = []
    queue: deque[Request] = deque()  # waiting at the handle for a replica slot
    loop = EventLoop(tick_s=TICK_S, first_tick_s=TICK_S)
    prom = Prometheus(pool.settings.autoscaling.ttft_window_s, trace.outage)
    total = Series()
    target = cfg.min_replicas
    counters = {"ups": 0, "downs": 0, "started": 0, "cancelled": 0, "cut": 0}
    reasons: dict[str, int] = {}
    series: dict[str, list[float]] = {
        "t": [],
        "held": [],
        "running": [],
        "target": [],
        "ttft": [],
        "queue": [],
    }

    def start_replica(now: float, cold_start_s: float) -> None:
        i = len(replicas)
        replica = SimReplica(Replica(pool.rtype, f"{POOL}/{i}"), now, now + cold_start_s)
        if cold_start_s <= 0:
            replica.state = "running"
        replicas.append(replica)
        assert loop.add(replica.engine) == i
        counters["started"] += 1

    def pick() -> int | None:
        best, best_key = None, None
        for i, r in enumerate(replicas):
            if r.state == "running" and r.engine.ongoing < max_ongoing:
                key = (r.engine.ongoing, rng.random())
                if best_key is None or key < best_key:
                    best, best_key = i, key
        return best

    def dispatch(now: float) -> None:
        while queue:
            i = pick()
            if i is None:
                return
            loop.submit(i, queue.popleft(), now)

    def finish(i: int, seqs: list[EngineSequence], now: float) -> None:
        r = replicas[i]
        for s in seqs:
            req: Request = s.job
            first = s.first_token_at - req.arrival
            if s.finished_at - req.arrival > pool.request_timeout_s:
                dropped[req.id] = True  # the gateway's deadline passed: a 504
            else:
                ttft[req.id], tpot[req.id] = first, s.tpot
            prom.observe(first)
            if r.drain_started is not None and now - r.drain_started > GRACEFUL_SHUTDOWN_TIMEOUT_S:
                counters["cut"] += 1
        if r.state == "draining" and r.engine.ongoing == 0:
            r.state, r.stopped_at = "stopped", now
        if r.state == "running":
            dispatch(now)

    def scale_to(new_target: int, now: float) -> None:
        live = [r for r in replicas if r.state in ("starting", "running")]
        if new_target > len(live):
            for _ in range(new_target - len(live)):
                start_replica(now, pool.cold_start_s)
            return
        excess = len(live) - new_target
        # Serve stops replicas that are not running first, then the newest
        # [ray serve/_private/deployment_scheduler.py:1308-1322].
        for r in sorted(live, key=lambda r: (r.state == "running", -r.requested_at))[:excess]:
            if r.state == "starting":
                r.state, r.stopped_at = "stopped", now
                counters["cancelled"] += 1
            else:
                r.state, r.drain_started = "draining", now
                if r.engine.ongoing == 0:
                    r.state, r.stopped_at = "stopped", now

    def control(now: float) -> None:
        nonlocal target
        tick = int(now)
        for r in replicas:
            if r.state == "starting" and r.ready_at <= now:
                r.state = "running"
        while queue and now - queue[0].arrival > pool.request_timeout_s:
            dropped[queue.popleft().id] = True
        dispatch(now)
        running = [r for r in replicas if r.state == "running"]
        total.add(tick, sum(r.engine.ongoing for r in running) + len(queue))
        if ctl.ours is not None and tick % record_every == 0:
            # What PoolServer.record_autoscaling_stats reports: vLLM's scheduler figures.
            for r in running:
                if r.waiting is None or r.kv is None:
                    r.waiting, r.kv = Series(record_every), Series(record_every)
                r.waiting.add(tick, r.engine.backlog)
                r.kv.add(tick, r.engine.kv_in_use)
        if now % SCRAPE_INTERVAL_S == 0:
            prom.scrape(now)
        if ctl.ours is not None and now % PROMETHEUS_FETCH_INTERVAL_S == 0:
            ctl.ours.ttft = prom.query(now)
        ongoing = total.window_mean(tick, look_back, push_every) or 0.0
        metrics: dict[str, dict[str, float]] = {ENGINE_WAITING: {}, KV_CACHE_USAGE: {}}
        for r in running:
            if r.waiting is None or r.kv is None:
                continue
            w = r.waiting.window_mean(tick, look_back, push_every)
            k = r.kv.window_mean(tick, look_back, push_every)
            if w is not None and k is not None:
                metrics[ENGINE_WAITING][r.engine.name] = w
                metrics[KV_CACHE_USAGE][r.engine.name] = k
        ctx = AutoscalingContext(
            deployment_id=DeploymentID(name=POOL, app_name="gemma-serve"),
            deployment_name=POOL,
            app_name="gemma-serve",
            current_num_replicas=len(running),
            target_num_replicas=target,
            running_replicas=[r.engine.name for r in running],  # type: ignore[misc]
            total_num_requests=ongoing,
            total_queued_requests=float(len(queue)),
            aggregated_metrics={k: v for k, v in metrics.items() if v},  # type: ignore[misc]
            raw_metrics={},
            capacity_adjusted_min_replicas=cfg.min_replicas,
            capacity_adjusted_max_replicas=cfg.max_replicas,
            policy_state=ctl.state,
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=now,
            config=cfg,
        )
        decided = ctl.decide(ctx, now)
        if ctl.ours is not None and ctl.ours.last is not None:
            d = ctl.ours.last[1]
            if d.direction != "hold":
                key = f"{d.direction}:{d.reason}"
                reasons[key] = reasons.get(key, 0) + 1
        if decided != target:
            counters["ups" if decided > target else "downs"] += 1
            target = decided
        scale_to(target, now)
        if tick % 10 == 0:
            series["t"].append(now)
            series["held"].append(sum(r.state != "stopped" for r in replicas))
            series["running"].append(len(running))
            series["target"].append(target)
            series["queue"].append(len(queue))
            signal = ctl.ours.ttft if ctl.ours is not None else None
            series["ttft"].append(np.nan if signal is None else signal)

    for _ in range(target):
        start_replica(0.0, 0.0)  # the day starts with the minimum, warm

    def arrive(req: Request, now: float) -> None:
        if not queue:
            i = pick()
            if i is not None:
                loop.submit(i, req, now)
                return
        queue.append(req)

    # Control ticks run through the day, and after it while requests wait for a replica.
    end = float(int(trace.duration_s))
    loop.run(
        trace.requests,
        Handlers(
            arrive,
            finish,
            control,
            ticking=lambda now, _: now <= end or bool(queue),
            backlog=lambda: bool(queue),
        ),
    )
    gpu_s = sum(
        min(trace.duration_s, r.stopped_at if r.stopped_at is not None else math.inf)
        - r.requested_at
        for r in replicas
        if r.requested_at < trace.duration_s
    )
    return RunResult(
        policy=policy,
        duration_s=trace.duration_s,
        ttft=ttft,
        tpot=tpot,
        dropped=dropped,
        gpu_seconds=gpu_s,
        ups=counters["ups"],
        downs=counters["downs"],
        started=counters["started"],
        cancelled=counters["cancelled"],
        cut_by_shutdown_timeout=counters["cut"],
        ticks=np.array(series["t"]),
        held=np.array(series["held"]),
        running=np.array(series["running"]),
        target=np.array(series["target"]),
        queue=np.array(series["queue"]),
        ttft_signal=np.array(series["ttft"]),
        reasons=reasons,
    )


# --- Metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySummary:
    policy: str
    requests: int
    slo_ttft: float  # share of all requests with TTFT <= report.TTFT_SLO_S (timeouts miss)
    slo_both: float  # ... and TPOT <= report.TPOT_SLO_S
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    gpu_hours: float
    mean_replicas: float  # GPUs held on average (starting, running, draining)
    peak_replicas: int
    ups: int
    downs: int
    started: int
    cancelled: int
    dropped: int
    cut_by_shutdown_timeout: int


def met(result: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Per request: TTFT within the SLO; TTFT and TPOT within theirs (timeouts miss both)."""
    return report.within_slo(result.ttft, result.tpot)


def summarise(result: RunResult) -> PolicySummary:
    served = result.ttft[~np.isnan(result.ttft)]
    ttft_ok, both_ok = met(result)
    n = len(result.ttft)
    return PolicySummary(
        policy=result.policy,
        requests=n,
        slo_ttft=float(ttft_ok.mean()) if n else math.nan,
        slo_both=float(both_ok.mean()) if n else math.nan,
        ttft_p50=report.pct(served, 50),
        ttft_p95=report.pct(served, 95),
        ttft_p99=report.pct(served, 99),
        gpu_hours=result.gpu_seconds / 3600.0,
        mean_replicas=result.gpu_seconds / result.duration_s,
        peak_replicas=int(result.held.max()) if len(result.held) else 0,
        ups=result.ups,
        downs=result.downs,
        started=result.started,
        cancelled=result.cancelled,
        dropped=int(result.dropped.sum()),
        cut_by_shutdown_timeout=result.cut_by_shutdown_timeout,
    )


def policy_table(summaries: Sequence[PolicySummary]) -> str:
    head = (
        "policy, TTFT <= 2 s, + TPOT <= 50 ms, TTFT p50 / p95 / p99 s, GPU-hours, mean replicas,"
        " peak, scale-ups / downs, replicas started (cancelled cold), timeouts"
    ).split(", ")
    rows = [
        [
            s.policy,
            f"{s.slo_ttft:.2%}",
            f"{s.slo_both:.2%}",
            f"{s.ttft_p50:.2f} / {s.ttft_p95:.2f} / {s.ttft_p99:.2f}",
            f"{s.gpu_hours:.2f}",
            f"{s.mean_replicas:.2f}",
            str(s.peak_replicas),
            f"{s.ups} / {s.downs}",
            f"{s.started} ({s.cancelled})",
            str(s.dropped),
        ]
        for s in summaries
    ]
    return report.table(head, rows)


def windows(trace: Trace) -> dict[str, list[tuple[float, float]]]:
    """Parts of the day: bursts (and the 10 min after, while queues drain), the outage."""
    bursts = [(a, b + 600.0) for a, b in trace.bursts]
    outage = [trace.outage] if trace.outage else []
    return {"bursts (+10 min)": bursts, "Prometheus outage (spans a burst)": outage}


def window_table(trace: Trace, results: Sequence[RunResult]) -> str:
    arrival = np.array([r.arrival for r in trace.requests])
    masks = {}
    for name, spans in windows(trace).items():
        mask = np.zeros(len(arrival), dtype=bool)
        for a, b in spans:
            mask |= (arrival >= a) & (arrival < b)
        masks[name] = mask
    masks["rest of the day"] = ~np.logical_or.reduce(list(masks.values()))
    head = "| part of the day | requests | " + " | ".join(
        f"{r.policy} TTFT <= 2 s / p95 s" for r in results
    )
    lines = [head + " |", "|---|---|" + "---|" * len(results)]
    for name, mask in masks.items():
        cells = []
        for r in results:
            ok, _ = met(r)
            served = r.ttft[mask & ~np.isnan(r.ttft)]
            cells.append(f"{ok[mask].mean():.1%} / {report.pct(served, 95):.2f}")
        lines.append(f"| {name} | {int(mask.sum())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rolling_p95(trace: Trace, result: RunResult, step_s: float = 60.0, window_s: float = 120.0):
    """TTFT p95 of the requests that arrived in the last `window_s`, every `step_s`; a
    timed-out request counts as infinitely late."""
    arrival = np.array([r.arrival for r in trace.requests])
    ttft = np.where(result.dropped, np.inf, result.ttft)
    times = np.arange(window_s, trace.duration_s + step_s / 2, step_s)
    lo = np.searchsorted(arrival, times - window_s)
    hi = np.searchsorted(arrival, times)
    p95 = np.array(
        [
            np.percentile(ttft[a:b], 95) if b - a >= 5 else np.nan
            for a, b in zip(lo, hi, strict=True)
        ]
    )
    return times, p95


# --- Plot ----------------------------------------------------------------------------------

COLOURS = {SERVE_DEFAULT: "tab:blue", SERVE_REQUESTS: "tab:orange", OURS: "tab:green"}


def plot_day(trace: Trace, results: Sequence[RunResult], path: Path, title: str) -> None:
    with report.figure(path, title, 3, 1, figsize=(13, 10), sharex=True) as axes:
        hours = 1 / 3600.0
        arrival = np.array([r.arrival for r in trace.requests])
        minutes = np.arange(0, trace.duration_s + 60, 60)
        counts, _ = np.histogram(arrival, bins=minutes)
        ax = axes[0]
        ax.step(minutes[:-1] * hours, counts / 60.0, where="post", color="black", linewidth=0.8)
        ax.set_ylabel("arrivals, req/s (1 min bins)")
        ax.set_title("Offered load")
        ax = axes[1]
        for r in results:
            ax.step(
                r.ticks * hours, r.held, where="post", color=COLOURS.get(r.policy), label=r.policy
            )
            ax.step(
                r.ticks * hours,
                r.running,
                where="post",
                color=COLOURS.get(r.policy),
                linestyle=":",
                linewidth=0.8,
            )
        ax.set_ylabel("replicas (solid: GPUs held, dotted: serving)")
        ax.legend(loc="upper left")
        ax.set_title("Replicas")
        ax = axes[2]
        for r in results:
            t, p95 = rolling_p95(trace, r)
            ax.plot(t * hours, p95, color=COLOURS.get(r.policy), label=f"{r.policy}", linewidth=1)
        ours = next((r for r in results if r.policy == OURS), None)
        if ours is not None:
            ax.plot(
                ours.ticks * hours,
                ours.ttft_signal,
                color=COLOURS[OURS],
                linestyle="--",
                linewidth=0.7,
                label="ours: Prometheus p95 it saw",
            )
        ax.axhline(report.TTFT_SLO_S, color="red", linestyle="--", linewidth=0.8, label="SLO 2 s")
        ax.set_yscale("log")
        ax.set_ylabel("TTFT p95, s (2 min rolling, log)")
        ax.set_xlabel(f"simulated hours (the 24 h day shape played over {trace.day_hours:g} h)")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Time to first token")
        for ax in axes:
            for a, b in trace.bursts:
                ax.axvspan(a * hours, b * hours, color="orange", alpha=0.12, linewidth=0)
            if trace.outage:
                a, b = trace.outage
                ax.axvspan(a * hours, b * hours, color="grey", alpha=0.3, linewidth=0, hatch="//")
        axes[0].text(
            0.99,
            0.95,
            "orange: 3x bursts; grey: Prometheus outage",
            transform=axes[0].transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )


# --- Main ----------------------------------------------------------------------------------


def run_policies(seed: int, args: argparse.Namespace) -> tuple[Trace, PoolModel, list[RunResult]]:
    pool = load_pool(args.min_replicas, args.max_replicas, args.cold_start_s, dict(args.set))
    trace = make_trace(seed, args.day_hours, args.peak_rate)
    return trace, pool, [simulate(trace, pool, p, seed) for p in args.policies]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--day-hours", type=float, default=6.0, help="simulated hours the 24 h shape is played over"
    )
    parser.add_argument("--peak-rate", type=float, default=PEAK_RATE, help="req/s at midday")
    parser.add_argument("--min-replicas", type=int, default=MIN_REPLICAS)
    parser.add_argument("--max-replicas", type=int, default=MAX_REPLICAS)
    parser.add_argument("--cold-start-s", type=float, default=COLD_START_S)
    parser.add_argument(
        "--other-seeds", type=int, default=0, help="also run this many further seeds (spread)"
    )
    parser.add_argument(
        "--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="which to run"
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what-if: override a pool setting, e.g. autoscaling.downscale_headroom=0.8"
        " (serve-requests and ours read them; serve-default keeps Serve's defaults)",
    )
    parser.add_argument("--plot", type=Path, default=report.RESULTS / "autoscale_sim.png")
    parser.add_argument("--markdown", type=Path, default=report.RESULTS / "autoscale_sim.md")
    return parser


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _command(argv: list[str] | None) -> str:
    extra = " ".join(argv if argv is not None else sys.argv[1:])
    return f".venv/bin/python -m benchmarks.sim.autoscale {extra}".strip()


def _header(trace: Trace, pool: PoolModel, args: argparse.Namespace) -> str:
    p = pool.settings
    a = p.autoscaling
    n = len(trace.requests)
    bursts = ", ".join(f"{(b - s) / 60:.0f} min at {s / 3600:.2f} h" for s, b in trace.bursts)
    outage = (
        f"{trace.outage[0] / 3600:.2f}-{trace.outage[1] / 3600:.2f} h" if trace.outage else "none"
    )
    return (
        "## Autoscaling simulation (SIMULATED: a cost model, not GPU measurements)\n\n"
        f"Pool: {pool.rtype.name} from {CONFIG.name}, one H100 per replica, replicas"
        f" {p.replicas.min}-{p.replicas.max} (the config's max is 4; one 8-GPU node here),"
        f" target_ongoing_requests {p.target_ongoing_requests}, max_ongoing_requests"
        f" {p.max_ongoing_requests}; a new replica serves {pool.cold_start_s:.0f} s after it is"
        " requested (every policy), and is paid for from the request until it is removed"
        " (draining replicas finish their requests).\n"
        f"Trace: seed {args.seed}; the 24 h day shape played over {trace.day_hours:g} simulated"
        f" hours (bursts and delays in real seconds); peak {args.peak_rate:g} req/s;"
        f" {n} requests of the routing sim's interactive mix (chat, tools/JSON, images,"
        f" shared-prefix); bursts {BURST_MULTIPLIER:g}x: {bursts}; Prometheus outage {outage}.\n"
        f"SLO: TTFT <= {report.TTFT_SLO_S:g} s (the pool's ttft_p95_slo_s), and with TPOT <="
        f" {report.TPOT_SLO_S * 1e3:.0f} ms (the routing sim's objective); shares over all"
        " requests,"
        f" timeouts ({pool.request_timeout_s:.0f} s, server.request_timeout_s) count as misses;"
        " TTFT percentiles over served requests.\n"
        "Policies: serve-default = Ray Serve's request policy with Serve's defaults (delays"
        " 30 s up / 600 s down, look-back 30 s, metrics every 10 s); serve-requests = the same"
        f" policy with this service's settings ({a.upscale_delay_s:g} s / {a.downscale_delay_s:g}"
        f" s, look-back {a.look_back_period_s:g} s, metrics every {a.metrics_interval_s:g} s);"
        " ours = PoolAutoscalingPolicy with the settings' defaults (same delays and look-back,"
        f" downscale_headroom {a.downscale_headroom:g}, max_waiting_per_replica"
        f" {a.max_waiting_per_replica:g}, kv {a.kv_cache_low:g}-{a.kv_cache_high:g}, TTFT p95"
        f" over {a.ttft_window_s} s from a Prometheus scraped every {SCRAPE_INTERVAL_S:.0f} s)."
        + (
            f"\n**What-if**, not the defaults: {', '.join(f'{k}={v}' for k, v in args.set)}."
            if args.set
            else ""
        )
    )


def _reasons_line(results: Sequence[RunResult]) -> str:
    ours = next((r for r in results if r.policy == OURS), None)
    if ours is None or not ours.reasons:
        return ""
    total = sum(ours.reasons.values())
    parts = ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(ours.reasons.items(), key=lambda kv: -kv[1])
    )
    return f"Ours, signal behind each tick that wanted a change (seconds): {parts}."


def _cut_line(results: Sequence[RunResult]) -> str:
    parts = ", ".join(f"{r.policy} {r.cut_by_shutdown_timeout}" for r in results)
    return (
        "Requests still running more than 20 s after their replica began draining (Serve's"
        " default graceful_shutdown_timeout_s, which the pool does not set, would cut them;"
        f" here they finish): {parts}."
    )


def _spread(first: Sequence[PolicySummary], args: argparse.Namespace) -> str:
    """The same policies on further seeds (each its own trace): values per seed and mean,
    then ours against each other policy on the same traces (paired differences)."""
    per_seed = [list(first)]
    for seed in range(args.seed + 1, args.seed + 1 + args.other_seeds):
        _, _, results = run_policies(seed, args)
        per_seed.append([summarise(r) for r in results])
    seeds = list(range(args.seed, args.seed + 1 + args.other_seeds))

    def cells(values: list[float], fmt: str) -> str:
        listed = ", ".join(format(v, fmt) for v in values)
        return f"{listed} ({format(float(np.mean(values)), fmt)})"

    lines = [
        f"Seeds {', '.join(map(str, seeds))}: value per seed (mean).",
        "",
        "| policy | TTFT <= 2 s, % | + TPOT <= 50 ms, % | TTFT p95 s | GPU-hours |"
        " scale-ups / downs |",
        "|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(first):
        runs = [seed_runs[i] for seed_runs in per_seed]
        actions = ", ".join(f"{r.ups}/{r.downs}" for r in runs)
        lines.append(
            f"| {s.policy} | {cells([r.slo_ttft * 100 for r in runs], '.1f')} |"
            f" {cells([r.slo_both * 100 for r in runs], '.1f')} |"
            f" {cells([r.ttft_p95 for r in runs], '.1f')} |"
            f" {cells([r.gpu_hours for r in runs], '.2f')} | {actions} |"
        )
    names = [s.policy for s in first]
    if OURS in names:
        o = names.index(OURS)
        lines.append("")
        for i, name in enumerate(names):
            if i == o:
                continue
            d_slo = [(r[o].slo_ttft - r[i].slo_ttft) * 100 for r in per_seed]
            d_both = [(r[o].slo_both - r[i].slo_both) * 100 for r in per_seed]
            d_gpu = [(r[o].gpu_hours / r[i].gpu_hours - 1) * 100 for r in per_seed]
            lines.append(
                f"- ours vs {name}, per seed: TTFT <= 2 s {cells(d_slo, '+.1f')} points;"
                f" with TPOT {cells(d_both, '+.1f')} points; GPU-hours {cells(d_gpu, '+.1f')} %."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("ray.serve").setLevel(logging.ERROR)
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    trace, pool, results = run_policies(args.seed, args)
    summaries = [summarise(r) for r in results]
    parts = [
        _header(trace, pool, args),
        policy_table(summaries),
        "Inside the day (TTFT <= 2 s share / TTFT p95 of served requests):\n\n"
        + window_table(trace, results),
        _reasons_line(results),
        _cut_line(results),
    ]
    if args.other_seeds > 0:
        parts.append(_spread(summaries, args))
    title = (
        f"Autoscaling one {POOL} pool over a SIMULATED day ({trace.day_hours:g} h, seed"
        f" {args.seed}; cost model, not measurements)"
    )
    plot_day(trace, results, args.plot, title)
    wall = time.perf_counter() - started
    body = "\n\n".join(p for p in parts if p)
    print(body + "\n")
    print(f"Plot: {report.shown(args.plot)} ({wall:.0f} s wall)")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        today = datetime.date.today().isoformat()
        args.markdown.write_text(
            "# Autoscaling simulation: results (SIMULATED, not measured)\n\n"
            f"Produced on {today} by `{_command(argv)}` (seed {args.seed}) in {wall:.0f} s on"
            " the development machine. Every report.figure comes from the cost model in"
            " `benchmarks/sim/fleet_model.py`; no GPU was used. Plot:"
            f" `{report.shown(args.plot)}`.\n\n{body}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
