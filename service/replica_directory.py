"""Where each pool replica's own HTTP server listens, and how loaded it is.

Pool replicas announce themselves in Ray's GCS key-value store every few seconds; gateway
replicas read the whole directory on the same beat and send requests straight to a replica's
port. An entry not renewed within `STALE_AFTER_S` (a replica killed without withdrawing) is
ignored. The store is the GCS's, so the directory outlives any one replica or gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

NAMESPACE = "gemma-serve"
ANNOUNCE_EVERY_S = 1.0
STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class ReplicaEntry:
    pool_id: str
    replica_id: str
    url: str  # http://host:port of the replica's vLLM app
    ongoing: int  # HTTP requests it is serving now
    waiting: int  # the engine's queue at its last report
    kv_cache_usage: float
    at: float  # wall-clock time of the announcement (time.time(): comparable across nodes)


def _prefix(app_name: str) -> str:
    return f"replicas/{app_name}/"


def _key(app_name: str, entry: ReplicaEntry) -> str:
    return f"{_prefix(app_name)}{entry.pool_id}/{entry.replica_id}"


def announce(app_name: str, entry: ReplicaEntry) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(
        _key(app_name, entry), json.dumps(asdict(entry)), namespace=NAMESPACE
    )


def withdraw(app_name: str, pool_id: str, replica_id: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(f"{_prefix(app_name)}{pool_id}/{replica_id}", namespace=NAMESPACE)


def read(app_name: str, clock: Callable[[], float] = time.time) -> dict[str, list[ReplicaEntry]]:
    """The live replicas of each pool (blocking: call it off the event loop)."""
    from ray.experimental import internal_kv

    now = clock()
    pools: dict[str, list[ReplicaEntry]] = {}
    for key in internal_kv._internal_kv_list(_prefix(app_name), namespace=NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if raw is None:  # withdrawn between the list and the get
            continue
        entry = ReplicaEntry(**json.loads(raw))
        if now - entry.at <= STALE_AFTER_S:
            pools.setdefault(entry.pool_id, []).append(entry)
    return pools
