"""Routing on the embedded default: requests reach the pool that fits them, and say why."""

import asyncio
import base64
import time

import httpx
import pytest

from tests.integration.conftest import DENSE, MAX_IMAGE_BYTES, MOE

CHAT = "/v1/chat/completions"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def ask(http, content="hi", headers=None, **extra):
    body = {
        "model": "gemma-4",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        **extra,
    }
    return http.post(CHAT, json=body, headers=headers or {})


def routed(response):
    assert response.status_code == 200, response.text
    assert response.json()["model"] == response.headers["x-routed-model"]
    return response.headers["x-routed-model"], response.headers["x-route-reason"]


@pytest.mark.parametrize(
    ("request_fields", "pool", "reason"),
    [
        ({}, MOE, "shape:interactive"),
        ({"content": "word " * 200}, DENSE, "size:long-prompt"),
        ({"tools": [TOOL]}, DENSE, "shape:tools"),
        ({"response_format": SCHEMA}, DENSE, "shape:structured-output"),
        ({"headers": {"x-gemma-tier": "quality"}}, DENSE, "tier:quality"),
    ],
)
def test_requests_reach_the_pool_that_fits_them(http, request_fields, pool, reason):
    assert routed(ask(http, **request_fields)) == (pool, reason)


def test_audio_pinned_to_a_pool_that_takes_no_audio_gets_a_clear_400(http):
    wav = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
    part = {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}
    response = ask(http, [part], model=DENSE)
    assert response.status_code == 400
    assert "does not accept audio input" in response.json()["error"]["message"]


def test_an_oversized_image_is_413_naming_the_part(http):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * MAX_IMAGE_BYTES)).decode()
    response = ask(
        http, [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    )
    assert response.status_code == 413
    assert "messages[0].content[0].image_url.url" in response.json()["error"]["message"]


async def test_a_saturated_pool_spills_over_to_the_other(stack):
    long_stream = {
        "model": MOE,
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "max_tokens": 1500,
        "ignore_eos": True,
    }

    async def hold(client, started):
        async with client.stream("POST", CHAT, json=long_stream) as response:
            async for _ in response.aiter_lines():
                started.set()
                await asyncio.sleep(0.5)

    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
        events = [asyncio.Event(), asyncio.Event()]
        holders = [asyncio.create_task(hold(client, e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        response = await client.post(
            CHAT,
            json={
                "model": "gemma-4",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        for task in holders:
            task.cancel()
    assert response.headers["x-routed-model"] == DENSE
    assert response.headers["x-route-reason"] == "spill:saturated"


def test_routing_decisions_are_counted_in_the_metrics(http, stack):
    routed(ask(http, tools=[TOOL]))
    deadline = time.monotonic() + 40  # Ray exports user metrics every few seconds
    lines: list[str] = []
    while time.monotonic() < deadline:
        text = httpx.get(stack.metrics_url, timeout=10).text
        lines = [x for x in text.splitlines() if x.startswith("ray_gemma_serve_route_decisions")]
        if any('reason="shape:tools"' in x and f'pool="{DENSE}"' in x for x in lines):
            return
        time.sleep(2)
    raise AssertionError(f"no route-decision series for shape:tools; saw {lines}")
