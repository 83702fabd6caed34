"""`gemma-serve up` as a user runs it: a real process, a real engine, a signal to stop.

Runs before the session stack starts (file order), so the two never share the machine.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.local_ports import free_port
from tests.integration.observability import wait_for

READY_TIMEOUT_S = 300
DEADLINE_S = 3


@pytest.fixture(scope="module")
def served():
    port, metrics_port = free_port(), free_port()
    # A short RAY_TMPDIR: Ray's socket paths must stay under 107 characters.
    workdir = Path(tempfile.mkdtemp(prefix="gs-"))
    config = workdir / "config.yaml"
    config.write_text(
        f"server: {{request_timeout_s: {DEADLINE_S}}}\n"
        f"telemetry: {{metrics_port: {metrics_port}}}\n"
        "pools:\n"
        "  - {id: gemma-4-31b-it, checkpoint: 'tiny:dense', device: cpu, max_model_len: 2048}\n"
    )
    env = os.environ | {"RAY_TMPDIR": str(workdir / "ray"), "PYTHONUNBUFFERED": "1"}
    log = (workdir / "up.log").open("w+")
    cli = Path(sys.executable).parent / "gemma-serve"
    process = subprocess.Popen(
        [str(cli), "up", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "is ready at" not in (workdir / "up.log").read_text():
        assert process.poll() is None, (workdir / "up.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "gemma-serve up did not become ready"
        time.sleep(1)
    try:
        yield process, f"http://127.0.0.1:{port}", workdir / "up.log", metrics_port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def test_up_prints_the_base_url_and_a_curl_example(served):
    _, base, log, _ = served
    text = log.read_text()
    assert f"gemma-serve is ready at {base}/v1" in text
    assert f"curl {base}/v1/chat/completions" in text


def test_up_says_loudly_that_authentication_is_off(served):
    _, _, log, _ = served
    text = log.read_text()
    assert "WARNING: authentication is OFF" in text
    assert "authentication: OFF" in text


def test_up_prints_the_metrics_url_and_it_serves_every_family(served):
    _, base, log, metrics_port = served
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    assert f"metrics: {url}" in log.read_text()
    body = {"model": "gemma-4", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{base}/v1/completions", json=body, timeout=60).status_code == 200
    families = ("ray_gemma_serve_requests_total", "ray_vllm_num_requests_running",
                "ray_serve_deployment_replica_healthy")  # fmt: skip
    wait_for(lambda: all(f in httpx.get(url, timeout=10).text for f in families))


def test_up_answers_the_openai_api(served):
    _, base, _, _ = served
    r = httpx.post(
        f"{base}/v1/chat/completions",
        timeout=60,
        json={"model": "gemma-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert r.status_code == 200
    assert r.headers["x-routed-model"] == "gemma-4-31b-it"


def test_a_stream_past_the_deadline_ends_with_an_error_event(served):
    _, base, _, _ = served
    body = {
        "model": "gemma-4-31b-it",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_S + 5
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "deadline_exceeded"
    assert events[-1] == "data: [DONE]"
    # The service goes on serving.
    r = httpx.post(
        f"{base}/v1/completions",
        timeout=30,
        json={"model": "gemma-4", "prompt": "a", "max_tokens": 2},
    )
    assert r.status_code == 200


def test_sigterm_stops_everything_it_started(served):
    process, _, _, _ = served
    family = psutil.Process(process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in family)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
