"""CPU engines run on any x86 host: AMX permission inside every engine worker, and each
embedded pool's engine on its own cores."""

import os

import pytest

from tests.integration.conftest import DENSE, MOE

POOLS = (MOE, DENSE)


def _probe(stack, pool_id: str, method: str) -> list:
    return stack.pool_handle(pool_id).collective_rpc.remote(method).result(timeout_s=60)


@pytest.mark.parametrize("pool_id", POOLS)
def test_every_engine_worker_may_use_amx_tiles_wherever_the_cpu_has_them(stack, pool_id):
    workers = _probe(stack, pool_id, "amx_status")
    assert workers
    for worker in workers:
        if worker["cpu_has_amx"]:
            assert worker["hook_outcome"] == "granted", worker
            assert worker["tile_data_permitted"], worker
        else:
            assert worker["hook_outcome"] == "no_amx", worker  # the hook ran, as a no-op
            assert not worker["tile_data_permitted"], worker


def test_the_dense_pool_answers_short_completions_every_time(http):
    # On an AMX host without the permission, the first of these killed the dense engine.
    for _ in range(5):
        r = http.post("/v1/completions", json={"model": DENSE, "prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: all share it")
def test_engines_leave_the_last_core_to_the_rest_and_split_the_others(stack):
    host = sorted(os.sched_getaffinity(0))
    cores = {pool_id: _probe(stack, pool_id, "cpu_cores") for pool_id in POOLS}
    assert all(len(workers) == 1 for workers in cores.values()), cores
    moe, dense = set(cores[MOE][0]), set(cores[DENSE][0])
    assert host[-1] not in moe | dense, cores
    if len(host) >= 3:
        assert not moe & dense, cores
