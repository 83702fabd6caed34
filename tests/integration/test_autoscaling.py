"""Scaling and counting on a stack of its own: one tiny pool that may grow to two replicas,
behind two gateway replicas, with delays short enough for a test.

Runs first among the integration modules (and alone: the session stack starts after it)."""

import threading

import httpx
import pytest

from service.app import APP_NAME, POOL_DEPLOYMENT_PREFIX
from service.cli import start_service, stop_service
from service.local_ports import free_port
from service.settings import Settings
from service.tinymodels import build_tiny_checkpoints
from tests.integration.conftest import DENSE
from tests.integration.observability import series, wait_for

REQUESTS = 20
LOAD_CLIENTS = 6  # three times what two replicas are meant to hold (target 2 each)


@pytest.fixture(scope="module")
def scaling_stack():
    settings = Settings(
        server={"port": free_port(), "gateway_replicas": 2, "request_timeout_s": 120},
        telemetry={"metrics_port": free_port()},
        pools=[
            {
                "id": DENSE,
                "checkpoint": "tiny:dense",
                "device": "cpu",
                "max_model_len": 2048,
                "replicas": {"min": 1, "max": 2},
                "max_ongoing_requests": 8,
                "target_ongoing_requests": 2,
                "autoscaling": {
                    "ttft_p95_slo_s": None,
                    "upscale_delay_s": 2,
                    "downscale_delay_s": 8,
                    "look_back_period_s": 3,
                    "metrics_interval_s": 0.5,
                },
            }
        ],
    )
    build_tiny_checkpoints(settings.resolved_cache_dir)
    start_service(settings)
    try:
        yield settings
    finally:
        stop_service()


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.server.port}"


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments[POOL_DEPLOYMENT_PREFIX + DENSE]
    return deployment.replica_states.get("RUNNING", 0)


def test_two_gateway_replicas_neither_overwrite_nor_double_count(scaling_stack):
    with httpx.Client(base_url=base_url(scaling_stack), timeout=60) as http:
        for _ in range(REQUESTS):
            body = {"model": DENSE, "prompt": "hi", "max_tokens": 2}
            assert http.post("/v1/completions", json=body).status_code == 200
    url = f"http://127.0.0.1:{scaling_stack.telemetry.metrics_port}/metrics"

    def per_replica():
        lines = [
            line
            for line in httpx.get(url, timeout=10).text.splitlines()
            if line.startswith("ray_gemma_serve_requests_total{") and f'pool="{DENSE}"' in line
        ]
        counts = {line.split('replica="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                  for line in lines}  # fmt: skip
        return counts if sum(counts.values()) == REQUESTS else None

    counts = wait_for(per_replica)
    assert len(counts) == 2, f"expected both gateway replicas to have served: {counts}"
    assert sum(series(httpx.get(url).text, "ray_gemma_serve_requests_total")) == REQUESTS


def test_sustained_load_scales_a_pool_to_two_replicas_and_back_to_one(scaling_stack):
    assert running_replicas() == 1
    stop = threading.Event()
    failures: list[str] = []

    def load():
        with httpx.Client(base_url=base_url(scaling_stack), timeout=120) as http:
            while not stop.is_set():
                body = {"model": DENSE, "prompt": "tell me a story", "max_tokens": 200}
                response = http.post("/v1/completions", json=body)
                if response.status_code != 200:
                    failures.append(response.text)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(LOAD_CLIENTS)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: running_replicas() == 2, timeout_s=180, interval_s=2)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=120)
    assert not failures, failures[:3]
    wait_for(lambda: running_replicas() == 1, timeout_s=120, interval_s=2)
