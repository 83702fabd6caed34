"""Which pool serves a requested model id, and what /v1/models lists."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service import catalog
from service.errors import ModelNotFound
from service.settings import Settings


def anyone(model: str) -> bool:
    """Every model is visible (no access control, or an admin)."""
    return True


class ModelDirectory:
    def __init__(self, settings: Settings):
        self._pools = {p.id: p for p in settings.pools}
        self._aliases = list(settings.server.aliases)
        self._created = int(time.time())

    @property
    def ids(self) -> list[str]:
        return [*self._pools, *self._aliases]

    def is_alias(self, model: str | None) -> bool:
        return model in self._aliases

    def pool_id(self, model: str | None, may_use: Callable[[str], bool] = anyone) -> str:
        """The pool a concrete model id pins (aliases are routed, not looked up here)."""
        if model in self._pools:
            return model
        raise self.not_found(model, may_use)

    def card(self, model: str) -> dict[str, Any]:
        for card in self.cards():
            if card["id"] == model:
                return card
        raise self.not_found(model)

    def not_found(
        self, model: str | None, may_use: Callable[[str], bool] = anyone
    ) -> ModelNotFound:
        """Lists only the models the caller may use: the others are not its business."""
        available = [m for m in self.ids if may_use(m)]
        return ModelNotFound(
            f"the model '{model}' does not exist; available models: {', '.join(available)}",
            param="model",
        )

    def cards(self) -> list[dict[str, Any]]:
        pools = [self._pool_card(pool_id) for pool_id in self._pools]
        return pools + [self._alias_card(alias, pools) for alias in self._aliases]

    def _alias_card(self, alias: str, pools: list[dict[str, Any]]) -> dict[str, Any]:
        """An alias is routed across the pools: it holds what the largest of them holds."""
        return {
            "id": alias,
            "object": "model",
            "created": self._created,
            "owned_by": "gemma-serve",
            "root": None,
            "max_model_len": max(c["max_model_len"] for c in pools),
            "metadata": {
                "routes_to": [c["id"] for c in pools],
                "modalities": sorted({m for c in pools for m in c["metadata"]["modalities"]}),
            },
        }

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
