"""Which cores each CPU engine's threads run on, when one host runs several CPU pools.

vLLM binds a CPU engine's OpenMP threads by itself ('auto'): the cores of the first NUMA node,
less one it reserves for everything else (its scheduler, and here the gateway, Serve's proxy
and Ray). It knows of no other engine, so every engine on a host takes the same cores. The
reserved core matters more than the split: an engine worker busy-polls for its next step, so
an engine given a core to itself starves whatever else runs there. Measured on 2 vCPUs with
both pools busy, one engine per core served 0.45x the requests per second of both engines on
core 0 with core 1 left to the rest (benchmarks/RESULTS.md, "CPU placement").

So `gemma-serve up`, which starts every pool on its own host, keeps the last core for the rest
and splits the others between the CPU pools. On a cluster the pools' replicas land on nodes
this process cannot see: there vLLM's own choice stands.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.pool_settings import Device
from service.settings import Settings


def shares(pool_ids: Sequence[str], cores: Sequence[int]) -> dict[str, str]:
    """One VLLM_CPU_OMP_THREADS_BIND value per pool: the host's cores but the last, split
    into contiguous, disjoint shares; with more pools than cores, pools take turns on them."""
    cores = sorted(cores)
    if not pool_ids or not cores:
        return {}
    engine_cores = cores[:-1] or cores  # one core: nothing can be kept back
    if len(pool_ids) > len(engine_cores):
        return {pool: str(engine_cores[i % len(engine_cores)]) for i, pool in enumerate(pool_ids)}
    size = len(engine_cores) // len(pool_ids)
    last = len(pool_ids) - 1
    return {  # the last share takes the cores left over by the division
        pool: ",".join(
            str(c) for c in engine_cores[i * size : None if i == last else (i + 1) * size]
        )
        for i, pool in enumerate(pool_ids)
    }


def place_cpu_pools(settings: Settings, cores: Sequence[int]) -> Settings:
    """Settings with every CPU pool that has no `cpu_threads_bind` given its own cores."""
    unplaced = [
        p.id for p in settings.pools if p.device == Device.CPU and p.cpu_threads_bind is None
    ]
    if not unplaced:
        return settings
    binds = shares(unplaced, cores)
    pools = [
        p.model_copy(update={"cpu_threads_bind": binds[p.id]}) if p.id in binds else p
        for p in settings.pools
    ]
    return settings.model_copy(update={"pools": pools})
