"""An engine killed mid-stream: its stream ends with a clean error, the other pool keeps
answering, and the pool comes back. Long (the engine's restart takes a minute or more), so it
runs in `make reliability`, last, on the session stack."""

import json
import os
import signal
import time

import httpx
import psutil

from tests.integration.conftest import DENSE, long_run
from tests.integration.observability import wait_for

RECOVERY_TIMEOUT_S = 300
LEAKED = ("EngineCore", "Traceback", "stack trace", "InternalServerError")


def engine_worker(pool_id: str) -> psutil.Process:
    """The vLLM worker process under the pool's Serve replica (Ray titles each process)."""
    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:gemma-serve:pool:{pool_id}" in " ".join(process.info["cmdline"] or []):
            for child in process.children(recursive=True):
                if "Worker" in " ".join(child.cmdline()):
                    return child
    raise AssertionError(f"no vLLM worker process found for pool {pool_id}")


def alias_answers(http: httpx.Client) -> int:
    body = {"model": "gemma-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return http.post("/v1/chat/completions", json=body).status_code


def dense_answers(http: httpx.Client) -> bool:
    body = {"model": DENSE, "prompt": "hi", "max_tokens": 2}
    return http.post("/v1/completions", json=body, timeout=120).status_code == 200


@long_run
def test_an_engine_killed_mid_stream_ends_the_stream_cleanly_and_its_pool_recovers(http):
    body = {
        "model": DENSE,
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        events = 0
        for line in lines:
            events += line.startswith("data: {")
            if events == 5:
                break
        os.kill(engine_worker(DENSE).pid, signal.SIGKILL)
        killed_at = time.monotonic()
        rest = list(lines)
    data = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
    error = data[-1]["error"]
    assert error["code"] == "engine_error" and error["type"] == "server_error", error
    assert not any(word in error["message"] for word in LEAKED), error["message"]
    assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest

    alias: list[int] = []

    def recovered() -> bool:
        alias.append(alias_answers(http))
        return dense_answers(http)

    wait_for(recovered, timeout_s=RECOVERY_TIMEOUT_S, interval_s=2)
    wait_for(lambda: http.get("/ready").status_code == 200, timeout_s=30)
    print(f"\nengine SIGKILL: the pool served again {time.monotonic() - killed_at:.0f} s later; "
          f"alias answers meanwhile {sorted(set(alias))}")  # fmt: skip
    assert set(alias) == {200}
