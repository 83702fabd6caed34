"""Fuzzed bodies through the real stack: what passes the gateway reaches real engines, which must
answer it or refuse it in the OpenAI shape, and never fail for one request's sake. Outputs are
capped so the run stays short; tests/reliability/test_fuzz_gateway.py fuzzes the gateway alone,
with more cases."""

import os

import httpx
import pytest
from schemathesis.generation import GenerationMode

from tests.reliability.fuzz import PATHS, run

CASES = int(os.environ.get("RELIABILITY_STACK_FUZZ_CASES", "60"))


def _short(body):
    """The generated body with its output capped: the engines' time goes to many cases."""
    if isinstance(body, dict):
        body = dict(body)
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = 2
        if isinstance(body.get("n"), int):
            body["n"] = min(max(body["n"], 1), 2)
        body.pop("min_tokens", None)
    return body


@pytest.mark.parametrize("path", list(PATHS))
def test_fuzzed_bodies_never_break_the_real_stack(stack, path):
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:

        def send(body):
            response = client.post(path, json=body)
            try:
                return response.status_code, response.json()
            except ValueError:
                return response.status_code, response.text

        broken = run(path, GenerationMode.POSITIVE, send, cases=CASES, shape=_short)
        assert not broken, f"{len(broken)} answers broke the contract; first: {broken[0]}"
        health = client.get("/ready")
    assert health.status_code == 200, health.text
