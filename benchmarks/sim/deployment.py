"""What a config deploys, as the simulations see it: each pool's engine and what it accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.sim.fleet_model import ReplicaType, replica_type
from service import catalog
from service.catalog import Modality
from service.routing.features import RequestFeatures
from service.settings import PoolSettings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "h100-fp8.yaml"


def replica_type_for(pool: PoolSettings) -> ReplicaType:
    """The cost model's engine for a pool's settings (weights, KV dtype, engine limits)."""
    return replica_type(
        pool.catalog_id,
        pool.weights,
        pool.kv_cache_dtype,
        gpu_memory_utilization=pool.gpu_memory_utilization,
        max_model_len=pool.max_model_len,
        **({"max_num_seqs": pool.max_num_seqs} if pool.max_num_seqs else {}),
    )


@dataclass(frozen=True)
class SimPool:
    """One deployed pool: its engine type, and what its engines accept (the catalog's view,
    the same figures the routing policy is built from)."""

    id: str
    rtype: ReplicaType
    modalities: frozenset[Modality]
    max_model_len: int

    def accepts(self, features: RequestFeatures) -> bool:
        """The engine takes the request: every modality, and prompt + max_tokens in context."""
        return (
            features.modalities <= self.modalities and features.total_tokens <= self.max_model_len
        )


def sim_pool(pool: PoolSettings) -> SimPool:
    return SimPool(
        id=pool.id,
        rtype=replica_type_for(pool),
        modalities=catalog.modalities(pool),
        max_model_len=catalog.max_model_len(pool),
    )
