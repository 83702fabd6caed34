"""Access control on a real stack: two gateway replicas sharing a real Redis, a keys file,
an audit file. Runs before the session stack (module order) and alone."""

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.access.keys import create_key, revoke_key
from service.cli import start_service, stop_service
from service.local_ports import free_port
from service.settings import Settings
from service.tinymodels import build_tiny_checkpoints
from tests.integration.conftest import DENSE
from tests.integration.observability import wait_for
from tests.unit.redis_server import redis_server

RPM = 60
BURST = 200  # sent evenly over one minute, across both gateway replicas


@pytest.fixture(scope="module")
def access_stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("access")
    keys = workdir / "keys.yaml"
    audit = workdir / "audit.jsonl"
    with redis_server() as redis_url:
        settings = Settings(
            server={"port": free_port(), "gateway_replicas": 2, "request_timeout_s": 60},
            telemetry={"metrics_port": free_port()},
            access={"keys_file": keys, "redis_url": redis_url, "audit_file": audit,
                    "keys_reload_interval_s": 0.5},
            pools=[{"id": DENSE, "checkpoint": "tiny:dense", "device": "cpu",
                    "max_model_len": 2048}],
        )  # fmt: skip
        stack = AccessStack(settings, keys, audit)
        stack.team = create_key(keys, "team-a", models=["gemma-4", DENSE])
        stack.limited = create_key(keys, "limited", models=["*"], requests_per_minute=RPM)
        stack.admin = create_key(keys, None, admin=True)
        build_tiny_checkpoints(settings.resolved_cache_dir)
        start_service(settings)
        try:
            yield stack
        finally:
            stop_service()


class AccessStack:
    def __init__(self, settings: Settings, keys: Path, audit: Path):
        self.settings, self.keys, self.audit = settings, keys, audit
        self.base = f"http://127.0.0.1:{settings.server.port}"
        self.team = self.limited = self.admin = ""

    def chat(self, key: str | None, model: str = "gemma-4") -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return httpx.post(
            f"{self.base}/v1/chat/completions", json=body, headers=headers, timeout=60
        )


def code(response: httpx.Response) -> tuple[int, str | None]:
    if response.status_code == 200:
        return 200, None
    return response.status_code, response.json()["error"]["code"]


def test_the_auth_matrix(access_stack):
    s = access_stack
    assert code(s.chat(s.team)) == (200, None)
    assert code(s.chat(None)) == (401, "missing_api_key")
    assert code(s.chat("gsk_0123456789ab_" + "a" * 43)) == (401, "invalid_api_key")
    assert code(s.chat(s.team, model="gemma-4-26b-a4b-it")) == (404, "model_not_found")
    assert code(s.chat(s.admin)) == (403, "admin_key_not_allowed")
    # Keys added and revoked while the service runs take effect within the reload interval.
    extra = create_key(s.keys, "alias-only", models=["gemma-4"])
    wait_for(lambda: code(s.chat(extra, model=DENSE)) == (403, "model_not_allowed"), timeout_s=10)
    revoke_key(s.keys, extra.split("_")[1])
    wait_for(lambda: code(s.chat(extra)) == (401, "api_key_revoked"), timeout_s=10)


def test_a_60_rpm_key_is_held_to_60_across_two_gateway_replicas(access_stack):
    s = access_stack
    statuses: list[int] = []
    lock = threading.Lock()

    def send():
        status = s.chat(s.limited).status_code
        with lock:
            statuses.append(status)

    start = time.monotonic()
    senders = []
    for i in range(BURST):
        time.sleep(max(0.0, start + i * 60 / BURST - time.monotonic()))
        sender = threading.Thread(target=send)
        sender.start()
        senders.append(sender)
    for sender in senders:
        sender.join(timeout=120)
    admitted = statuses.count(200)
    print(f"\n60 rpm key, {BURST} requests over 60 s, 2 gateway replicas: {admitted} admitted, "
          f"{statuses.count(429)} refused with 429")  # fmt: skip
    assert statuses.count(200) + statuses.count(429) == BURST
    assert abs(admitted - RPM) <= 3


def test_usage_is_reported_to_the_admin_key(access_stack):
    s = access_stack
    headers = {"authorization": f"Bearer {s.admin}"}

    def team_usage():
        rows = httpx.get(f"{s.base}/admin/usage", headers=headers, timeout=10).json()["data"]
        return [r for r in rows if r["tenant"] == "team-a" and r["requests"] >= 1]

    rows = wait_for(team_usage, timeout_s=10)
    assert rows[0]["model"] == DENSE and rows[0]["prompt_tokens"] > 0


def test_every_request_is_audited_once_without_content_or_keys(access_stack):
    s = access_stack
    lines = [json.loads(x) for x in s.audit.read_text().splitlines()]
    assert {"team-a", "none"} <= {x["tenant"] for x in lines}
    assert all(set(x) >= {"request_id", "tenant", "model", "pool", "status", "latency_ms"}
               for x in lines)  # fmt: skip
    text = s.audit.read_text()
    assert "hi" not in {x.get("prompt") for x in lines}
    for key in (s.team, s.limited, s.admin):
        assert key not in text


def test_keys_never_reach_logs_or_metrics(access_stack):
    import ray

    s = access_stack
    secrets = [k.split("_", 2)[2] for k in (s.team, s.limited, s.admin)]
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    url = f"http://127.0.0.1:{s.settings.telemetry.metrics_port}/metrics"

    def scrape() -> str | None:
        text = httpx.get(url).text
        return text if 'tenant="team-a"' in text else None

    metrics = wait_for(scrape)
    for secret in secrets:
        assert secret not in metrics
        for path in logs.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"key material in {path}"
