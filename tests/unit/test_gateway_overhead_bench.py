"""The gateway-overhead benchmark's stack configs are ones `gemma-serve up` accepts."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import gateway_overhead as bench  # noqa: E402

from service.settings import settings_from_mapping  # noqa: E402


def pools_of(cpu_binds: str):
    return settings_from_mapping(yaml.safe_load(bench.stack_config(50, cpu_binds)), "bench").pools


def test_the_default_stack_is_both_pools_placed_by_gemma_serve():
    pools = pools_of("default")
    assert [p.id for p in pools] == [bench.MOE_POOL_ID, bench.POOL_ID]
    assert all(p.cpu_threads_bind is None for p in pools)


def test_a_named_placement_binds_each_engine():
    assert [p.cpu_threads_bind for p in pools_of("0:1")] == ["0", "1"]


def test_a_placement_needs_one_binding_per_pool():
    with pytest.raises(ValueError):
        bench.stack_config(50, "0")
