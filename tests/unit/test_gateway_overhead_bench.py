"""The gateway-overhead benchmark's stack config, byte classifier, CPU accounting and table."""

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import gateway_overhead as bench  # noqa: E402
import harness  # noqa: E402

from service.settings import settings_from_mapping  # noqa: E402


def test_the_stack_is_both_embedded_pools_as_make_run_starts_them():
    settings = settings_from_mapping(yaml.safe_load(bench.stack_config(9100)), "bench")
    assert [p.id for p in settings.pools] == [bench.MOE_POOL_ID, bench.POOL_ID]
    assert settings.telemetry.metrics_port == 9100


def test_prompts_differ_from_their_first_token_so_no_prefix_is_cached():
    workload = bench.WORKLOADS["prefill"]
    first, second = bench.prompt(workload, 1), bench.prompt(workload, 2)
    assert first.split()[0] != second.split()[0]
    assert len(first.split()) == workload.prompt_words + 1


def test_engine_processes_are_kept_apart_from_the_stacks_own():
    before = {
        1: harness.ProcessCpu("ray::Gateway", 1.0),
        2: harness.ProcessCpu("VLLM::Worker", 5.0),
    }
    after = {
        1: harness.ProcessCpu("ray::Gateway", 1.5),
        2: harness.ProcessCpu("VLLM::Worker", 7.0),
        3: harness.ProcessCpu("VLLM::EngineCore", 0.25),  # born in the window: counts from zero
    }
    spent = harness.cpu_spent(before, after)
    assert spent.outside_s == pytest.approx(0.5)
    assert spent.engine_s == pytest.approx(2.25)
    assert (spent.engine_processes, spent.processes) == (2, 3)


def test_the_tree_of_this_process_is_found_with_its_cpu_time():
    tree = harness.process_tree(os.getpid())
    assert tree[os.getpid()].cpu_s > 0
    assert "python" in tree[os.getpid()].title


def point(setup, **figures):
    defaults = dict(
        workload="short",
        concurrency=1,
        requests=10,
        prompt_tokens_mean=30.0,
        ttft_p50_ms=20.0,
        ttft_p95_ms=30.0,
        itl_p50_ms=5.0,
        itl_p95_ms=10.0,
        requests_per_s=10.0,
        output_tokens_per_s=160.0,
        cpu_outside_engine_s_per_request=0.01,
        cpu_engine_s_per_request=0.05,
        engine_processes=2,
        stack_processes=2,
    )
    return bench.Point(setup=setup, **(defaults | figures))


def test_the_table_gives_each_setup_as_ratios_of_bare_vllm_in_the_same_run():
    table = bench.render_table(
        [
            point("vllm"),
            point(
                "gemma-serve",
                ttft_p50_ms=26.5,
                requests_per_s=8.0,
                output_tokens_per_s=120.0,
                itl_p95_ms=15.0,
                cpu_outside_engine_s_per_request=0.02,
            ),
        ]
    )
    row = next(line for line in table.splitlines() if "| gemma-serve |" in line)
    assert row.endswith("| +6.5 | 0.80 | 0.75 | 1.50 | 2.00 |")
