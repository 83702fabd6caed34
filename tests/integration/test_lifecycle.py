"""Requests in flight: disconnects abort engine work, pools serve concurrently, and a bad
request never disturbs the others."""

import asyncio
import time

import httpx

from tests.integration.conftest import DENSE, MOE

LONG = {"temperature": 0.0, "max_tokens": 1500, "extra_body": {"ignore_eos": True}}


def engine_unfinished(stack, pool_id) -> int:
    return stack.pool_handle(pool_id).engine_load.remote().result()["unfinished_requests"]


def wait_until(predicate, timeout_s=30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_client_disconnect_mid_stream_aborts_the_engine_request(stack):
    body = {
        "model": DENSE,
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "temperature": 0.0,
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
            assert engine_unfinished(stack, DENSE) == 1
        # leaving the block closes the connection mid-stream
    assert wait_until(lambda: engine_unfinished(stack, DENSE) == 0)


async def test_two_streams_to_different_pools_run_concurrently(aclient):
    async def stream(model):
        chunks = await aclient.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            temperature=0.0,
            max_tokens=64,
            extra_body={"ignore_eos": True},
        )
        models, text = set(), []
        async for chunk in chunks:
            models.add(chunk.model)
            text.extend(c.delta.content or "" for c in chunk.choices)
        return models, "".join(text)

    (moe_models, moe_text), (dense_models, dense_text) = await asyncio.gather(
        stream(MOE), stream(DENSE)
    )
    assert moe_models == {MOE} and dense_models == {DENSE}
    assert moe_text and dense_text


async def test_bad_requests_do_not_disturb_a_stream_in_flight(aclient, stack):
    async def good_stream():
        chunks = await aclient.chat.completions.create(
            model=MOE,
            messages=[{"role": "user", "content": "talk"}],
            stream=True,
            temperature=0.0,
            max_tokens=200,
            extra_body={"ignore_eos": True},
        )
        finish = None
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish

    async def bad_requests():
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
            statuses = []
            for body in (b"{oops", b'{"model": "nope", "messages": []}', b'{"model": "gemma-4"}'):
                r = await http.post(
                    "/v1/chat/completions",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                statuses.append(r.status_code)
            r = await http.post(
                "/v1/chat/completions",
                json={
                    "model": MOE,
                    "messages": [{"role": "user", "content": "w " * 3000}],
                    "max_tokens": 10,
                },
            )
            statuses.append(r.status_code)
            return statuses

    finish, statuses = await asyncio.gather(good_stream(), bad_requests())
    assert finish == "length"
    assert statuses == [400, 404, 400, 400]


def test_pools_report_their_scheduler_figures_for_routing(stack, client):
    client.chat.completions.create(
        model=MOE, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    load = stack.pool_handle(MOE).engine_load.remote().result()
    assert load["age_s"] is not None and load["age_s"] >= 0
    assert 0.0 <= load["kv_cache_usage"] <= 1.0
    assert load["waiting"] >= 0
