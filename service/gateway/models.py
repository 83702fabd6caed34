"""Which pool serves a requested model id, and what /v1/models lists."""

from __future__ import annotations

import time
from typing import Any

from service import catalog
from service.errors import ModelNotFound
from service.settings import Settings


class ModelDirectory:
    def __init__(self, settings: Settings):
        self._pools = {p.id: p for p in settings.pools}
        self._aliases = {alias: settings.default_pool_id for alias in settings.server.aliases}
        self._created = int(time.time())

    @property
    def ids(self) -> list[str]:
        return [*self._pools, *self._aliases]

    def is_alias(self, model: str | None) -> bool:
        return model in self._aliases

    def resolve(self, model: str | None) -> str:
        """The pool id for a requested model: an alias goes to the default pool,
        a pool id pins its pool."""
        if model in self._pools:
            return model
        if model in self._aliases:
            return self._aliases[model]
        raise ModelNotFound(
            f"the model '{model}' does not exist; available models: {', '.join(self.ids)}",
            param="model",
        )

    def cards(self) -> list[dict[str, Any]]:
        cards = [self._pool_card(pool_id) for pool_id in self._pools]
        for alias, target in self._aliases.items():
            card = self._pool_card(target) | {"id": alias, "owned_by": "gemma-serve"}
            card["metadata"] = card["metadata"] | {"alias_for": target}
            cards.append(card)
        return cards

    def _pool_card(self, pool_id: str) -> dict[str, Any]:
        pool = self._pools[pool_id]
        facts = catalog.facts(pool)
        return {
            "id": pool_id,
            "object": "model",
            "created": self._created,
            "owned_by": "google",
            "root": facts.hf_id,
            "max_model_len": catalog.max_model_len(pool),
            "metadata": {
                "architecture": facts.architecture,
                "modalities": sorted(catalog.modalities(pool)),
                "active_params_b": facts.active_params_b,
            },
        }
