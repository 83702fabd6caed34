"""Fuzzing the generation endpoints: schemathesis generates bodies from vLLM's protocol models
(valid ones, and ones that break the schema), and every answer must be a success or an error in
the OpenAI shape with a client-error status: never a 5xx, never a hang."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from tests.reliability.openapi import PATHS, spec

# Cases per endpoint and mode; `make reliability` raises it (RELIABILITY_FUZZ_CASES).
CASES = int(os.environ.get("RELIABILITY_FUZZ_CASES", "250"))
CLIENT_ERRORS = {400, 401, 403, 404, 413, 422, 429}


def run(
    path: str,
    mode: GenerationMode,
    send: Callable[[Any], tuple[int, Any]],
    cases: int = CASES,
    shape: Callable[[Any], Any] = lambda body: body,
) -> list[tuple[int, Any]]:
    """Sends `cases` generated bodies through `send(body) -> (status, json or text)`; returns
    the answers that break the contract (empty when all hold)."""
    operation = schemathesis.openapi.from_dict(spec())[path]["POST"]
    broken: list[tuple[int, Any]] = []

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(mode))
    def one(case: Any) -> None:
        status, answer = send(shape(case.body))
        if not contract_holds(status, answer):
            broken.append((status, {"body": case.body, "answer": answer}))

    one()
    return broken


def contract_holds(status: int, answer: Any) -> bool:
    if status == 200:
        return True
    if status not in CLIENT_ERRORS and status != 503:
        return False
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


__all__ = ["CASES", "PATHS", "run", "contract_holds"]
