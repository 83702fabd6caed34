"""Which replica of a pool serves a request: the gateway's choice, made per request.

Without affinity: the replica with the fewest requests this gateway has in flight on it
(ties broken by the engine's reported queue, then at random, so gateways don't herd).
With prefix affinity: requests that share a prompt prefix go to the same replica (rendezvous
hashing, stable as replicas come and go), whose KV cache holds that prefix, unless it has
`max_imbalance` more in flight than the least-loaded replica: then load wins, as Ray's
PrefixCacheAffinityRouter does with its imbalanced_threshold.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    url: str
    waiting: int  # the engine's queue at its last report


def choose(
    candidates: Sequence[Candidate],
    in_flight: Mapping[str, int],
    affinity_key: str | None = None,
    max_imbalance: int = 8,
) -> Candidate:
    if not candidates:
        raise ValueError("no replica to choose from")
    least = min(in_flight.get(c.url, 0) for c in candidates)
    if affinity_key is not None:
        preferred = max(candidates, key=lambda c: _score(affinity_key, c.url))
        if in_flight.get(preferred.url, 0) - least < max_imbalance:
            return preferred
    fewest = [c for c in candidates if in_flight.get(c.url, 0) == least]
    shortest = min(c.waiting for c in fewest)
    return random.choice([c for c in fewest if c.waiting == shortest])


def _score(key: str, url: str) -> int:
    digest = hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
