"""Which cores each CPU engine's threads run on, when one host runs several CPU pools.

vLLM binds a CPU engine's OpenMP threads by itself ('auto'): the cores of the first NUMA node,
less one reserved for its scheduler. It knows of no other engine, so every engine on a host
takes the same cores: on 2 vCPUs both embedded pools bind to core 0 and leave core 1 to the
rest. `gemma-serve up` starts every pool on its own host, so it hands each CPU pool its own
share instead (measured in benchmarks/RESULTS.md, "CPU placement"). On a cluster the pools'
replicas land on nodes this process cannot see: there vLLM's own choice stands.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.settings import Device, Settings


def shares(pool_ids: Sequence[str], cores: Sequence[int]) -> dict[str, str]:
    """Contiguous, disjoint core lists, one per pool, as VLLM_CPU_OMP_THREADS_BIND values.
    With more pools than cores, pools take turns on the cores."""
    cores = sorted(cores)
    if not pool_ids or not cores:
        return {}
    if len(pool_ids) > len(cores):
        return {pool: str(cores[i % len(cores)]) for i, pool in enumerate(pool_ids)}
    size = len(cores) // len(pool_ids)
    return {
        pool: ",".join(str(c) for c in cores[i * size : (i + 1) * size])
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
