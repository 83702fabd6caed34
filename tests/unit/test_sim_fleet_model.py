"""The fleet cost model and its replica simulator (benchmarks/sim/fleet_model.py)."""

from __future__ import annotations

import pytest

from benchmarks.sim import fleet_model as fm

DENSE = fm.replica_type("gemma-4-31b-it", "fp8", "fp8")
MOE = fm.replica_type("gemma-4-26b-a4b-it", "bf16", "fp8")


# --- cost model ----------------------------------------------------------------------------


@pytest.mark.parametrize("rt", [DENSE, MOE], ids=["31b", "26b"])
def test_more_tokens_take_longer(rt: fm.ReplicaType):
    prefills = [rt.prefill_time(n) for n in (100, 1000, 8192, 8193, 32768, 65536)]
    assert prefills == sorted(prefills) and len(set(prefills)) == len(prefills)
    decode_by_batch = [rt.decode_step_time(b, 2048) for b in (1, 8, 64, 256)]
    assert decode_by_batch == sorted(decode_by_batch)
    decode_by_context = [rt.decode_step_time(16, c) for c in (100, 1000, 10000, 100000)]
    assert decode_by_context == sorted(decode_by_context)
    assert rt.prefill_time(4096, media_inputs=9 * 280) > rt.prefill_time(4096)


@pytest.mark.parametrize("model", ["gemma-4-31b-it", "gemma-4-26b-a4b-it"])
def test_fp8_kv_halves_kv_bytes(model: str):
    bf16, fp8 = fm.replica_type(model, "bf16", "auto"), fm.replica_type(model, "bf16", "fp8")
    for context in (1, 500, 1024, 4096, 131072):
        assert fp8.kv_bytes(context) == pytest.approx(bf16.kv_bytes(context) / 2)
    assert fp8.kv_capacity_tokens(4096) == pytest.approx(2 * bf16.kv_capacity_tokens(4096))


def test_kv_per_token_matches_the_research_notes():
    # gemma4.md 2.6: 80 KiB/token global + ~0.8 GiB/seq sliding (31B), 20 KiB + 0.2 GiB (26B).
    bf16_31b = fm.replica_type("gemma-4-31b-it", "fp8", "auto")
    grows = bf16_31b.kv_bytes(10_000) - bf16_31b.kv_bytes(9_000)
    assert grows == 1000 * 80 * fm.KiB
    assert bf16_31b.kv_bytes(1024) - 1024 * 80 * fm.KiB == pytest.approx(0.78 * fm.GiB, rel=0.01)
    assert MOE.kv_bytes(10_000) - MOE.kv_bytes(9_000) == 1000 * 10 * fm.KiB  # FP8


def test_moe_decode_reads_few_experts_alone_and_all_when_busy():
    assert MOE.weight_bytes_read(1) < 0.2 * MOE.weight_bytes
    assert MOE.weight_bytes_read(256) == pytest.approx(
        MOE.weight_bytes - 2 * MOE.model.encoder_params, rel=0.001
    )
    assert DENSE.weight_bytes_read(1) == DENSE.weight_bytes_read(256)


def test_a_pure_decode_run_costs_the_sum_of_its_steps():
    # The replica plans decode runs in closed form; past the sliding window that is exact.
    replica = fm.Replica(DENSE)
    wake = None
    for prompt in (2000, 3000, 3000):
        wake = replica.submit(fm.SimpleJob(prompt, 300), 0.0) or wake
    while replica.plan is not None and replica.plan.chunks:  # prefill steps
        _, wake = replica.advance(replica.plan.end)
    run = replica.plan
    assert run is not None and run.steps > 100
    contexts = [s.context for s in run.decode]
    expected = sum(DENSE.step_time([c + j for c in contexts], []) for j in range(run.steps))
    assert run.end - run.start == pytest.approx(expected, rel=1e-9)


# --- replica simulator ---------------------------------------------------------------------


def _jobs(n: int, seed: int = 0) -> list[tuple[float, fm.SimpleJob]]:
    """Poisson arrivals of mixed sizes; every other job shares one of 3 prefixes."""
    import random

    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(20.0)
        prompt = rng.choice([50, 400, 3500, 9000, 40000])
        key, prefix = (i % 3, 3000) if i % 2 else (None, 0)
        job = fm.SimpleJob(
            prompt_tokens=prompt + prefix,
            output_tokens=rng.choice([1, 2, 50, 300]),
            media_inputs=rng.choice([0.0, 2520.0]),
            prefix_key=key,
            prefix_tokens=prefix,
        )
        out.append((t, job))
    return out


@pytest.mark.parametrize("rt", [DENSE, MOE], ids=["31b", "26b"])
def test_a_replica_finishes_everything_it_is_given(rt: fm.ReplicaType):
    arrivals = _jobs(300)
    done = fm.run_replica(rt, arrivals)
    assert sorted(id(s.job) for s in done) == sorted(id(j) for _, j in arrivals)
    for s in done:
        assert s.generated == s.job.output_tokens
        assert s.context == s.job.prompt_tokens + s.job.output_tokens - 1
        assert s.arrived_at <= s.admitted_at <= s.first_token_at <= s.finished_at
        assert s.ttft > 0 and s.tpot >= 0
    assert any(s.prefix_hit for s in done)


def test_an_arrival_joins_a_decode_run_at_the_next_step():
    long_run = fm.SimpleJob(prompt_tokens=2000, output_tokens=1000)
    late = fm.SimpleJob(prompt_tokens=100, output_tokens=10)
    done = {id(s.job): s for s in fm.run_replica(DENSE, [(0.0, long_run), (1.0, late)])}
    step = DENSE.decode_step_time(1, 3000)
    assert 1.0 <= done[id(late)].admitted_at < 1.0 + 1.5 * step
    # The long sequence kept decoding across the cut: same length, one step slower at most.
    alone = fm.run_replica(DENSE, [(0.0, long_run)])[0]
    assert done[id(long_run)].finished_at > alone.finished_at


def test_kv_bounds_concurrency_and_requests_wait():
    job = fm.SimpleJob(prompt_tokens=100, output_tokens=60000)  # tiny prompt, huge KV need
    capacity = int(DENSE.kv_capacity_bytes // DENSE.kv_bytes(60100))
    replica = fm.Replica(DENSE)
    wake = None
    for _ in range(capacity + 3):
        wake = replica.submit(job, 0.0) or wake
    _, wake = replica.advance(wake)  # the first step took the first job; now the rest
    assert (replica.running, replica.queued) == (capacity, 3)
    assert replica.kv_usage <= 1.0
    finished = []
    while wake is not None:
        done, wake = replica.advance(wake)
        finished += done
        assert replica.kv_usage <= 1.0 + 1e-9
    assert len(finished) == capacity + 3 and replica.ongoing == 0
