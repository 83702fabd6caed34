"""The gateway's validation under fuzzed bodies, isolated from the engines by a fake pool that
answers whatever reaches it (the real-engine run is tests/integration/test_fuzz.py)."""

import asyncio
import json

import httpx
import pytest
from schemathesis.generation import GenerationMode

from service.gateway.api import create_app
from service.settings import Settings
from tests.reliability.fuzz import PATHS, run
from tests.unit.gateway_fakes import FakeBackend


@pytest.fixture(scope="module")
def send():
    async def readiness():
        return {}

    app = create_app(Settings(), FakeBackend(), readiness)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")

    def send(body):
        content = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
        response = loop.run_until_complete(
            client.post(path_of[0], content=content, headers={"content-type": "application/json"})
        )
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    path_of = [""]
    send.path_of = path_of
    yield send
    loop.run_until_complete(client.aclose())
    loop.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("path", list(PATHS))
def test_fuzzed_bodies_get_an_answer_or_a_client_error_in_the_openai_shape(send, path, mode):
    send.path_of[0] = path
    broken = run(path, mode, send)
    assert not broken, f"{len(broken)} answers broke the contract; first: {broken[0]}"
