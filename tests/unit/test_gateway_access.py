"""Access control in the gateway's request path, with a real keys file and the in-memory
limiter (a real Redis where a lost reply matters): who may call, what they may call, how much,
and what is written down."""

import asyncio
import json
import logging
import threading

import httpx
import pytest

from service.access import keys_schema
from service.access.audit import AUDIT_LOGGER, AuditLog
from service.access.gate import AccessControl
from service.access.keys_editing import create_key, revoke_key
from service.access.keys_reload import KeyFile
from service.access.memory_limiter import MemoryRateLimiter
from service.access.redis_connection import redis_client
from service.access.redis_limiter import RedisRateLimiter
from service.access.usage import MemoryUsageStore, UsageUnavailable
from service.gateway.api import create_app
from service.local_ports import free_port
from service.routing.load import LoadTracker
from service.settings import AccessSettings, Settings
from tests.unit.gateway_fakes import FakeBackend, RecordingRecorder, chat_body
from tests.unit.redis_server import lossy_limiter

CHAT = "/v1/chat/completions"
MOE, DENSE = "gemma-4-26b-a4b-it", "gemma-4-31b-it"


@pytest.fixture
def keys_path(tmp_path):
    return tmp_path / "keys.yaml"


@pytest.fixture
def team_key(keys_path):
    return create_key(keys_path, "team-a", models=["gemma-4", MOE], requests_per_minute=3)


@pytest.fixture
def admin_key(keys_path, team_key):
    return create_key(keys_path, None, admin=True)


class Gateway:
    def __init__(
        self,
        keys_path,
        settings=None,
        loads=None,
        audit_path=None,
        content=False,
        limiter=None,
        on_store_error="open",
    ):
        self.settings = settings or Settings(server={"request_timeout_s": 5})
        self.backend = FakeBackend()
        self.recorder = RecordingRecorder()
        self.usage = MemoryUsageStore(retention_s=3600)
        self.access = AccessControl(
            AccessSettings(keys_file=keys_path, on_store_error=on_store_error),
            keys=KeyFile(keys_path, reload_interval_s=0.0),
            limiter=limiter or MemoryRateLimiter(lease_ttl_s=60),
            usage=self.usage,
            audit=AuditLog(audit_path, include_content=content, name=f"audit-{id(self)}"),
            retry_after_s=2,
        )

        async def readiness():
            return {}

        self.app = create_app(
            self.settings, self.backend, readiness, loads, self.recorder, access=self.access
        )

    def client(self, key=None):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers)

    async def chat(self, key=None, **body):
        async with self.client(key) as c:
            return await c.post(CHAT, json=chat_body(**body))


@pytest.fixture
def gateway(keys_path, team_key, admin_key, tmp_path):
    return Gateway(keys_path, audit_path=tmp_path / "audit.jsonl")


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- who may call -----------------------------------------------------------------------


async def test_no_key_is_401_saying_how_to_send_one(gateway):
    error = error_of(await gateway.chat(), 401)
    assert error["code"] == "missing_api_key" and "Bearer" in error["message"]


async def test_an_unknown_key_is_401_and_not_echoed(gateway):
    bad = "gsk_0123456789ab_" + "x" * 43
    response = await gateway.chat(bad)
    assert error_of(response, 401)["code"] == "invalid_api_key"
    assert "x" * 43 not in response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_revoked_key_is_401_from_the_next_request(gateway, keys_path, team_key):
    assert (await gateway.chat(team_key)).status_code == 200
    revoke_key(keys_path, team_key.split("_")[1])
    assert error_of(await gateway.chat(team_key), 401)["code"] == "api_key_revoked"


async def test_a_key_added_to_the_file_works_without_a_restart(gateway, keys_path):
    new_key = create_key(keys_path, "team-b", models=["*"])
    assert (await gateway.chat(new_key)).status_code == 200


async def test_a_request_never_parses_the_keys_file_on_the_event_loop(
    gateway, keys_path, monkeypatch
):
    new_key = create_key(keys_path, "team-b", models=["*"])
    threads = []
    parse = keys_schema.yaml.safe_load

    def recording(text):
        threads.append(threading.get_ident())
        return parse(text)

    monkeypatch.setattr(keys_schema.yaml, "safe_load", recording)
    assert (await gateway.chat(new_key)).status_code == 200
    assert threads and threading.get_ident() not in threads


async def test_a_model_outside_the_tenants_list_is_403(gateway, team_key):
    error = error_of(await gateway.chat(team_key, model=DENSE), 403)
    assert error["code"] == "model_not_allowed" and DENSE in error["message"]


async def test_an_unknown_model_is_404_even_for_a_restricted_tenant(gateway, team_key):
    assert error_of(await gateway.chat(team_key, model="gpt-4"), 404)["code"] == "model_not_found"


async def test_an_admin_key_cannot_call_models(gateway, admin_key):
    assert error_of(await gateway.chat(admin_key), 403)["code"] == "admin_key_not_allowed"


async def test_models_lists_only_what_the_tenant_may_call(gateway, team_key):
    async with gateway.client(team_key) as c:
        ids = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
    assert ids == {"gemma-4", MOE}


# --- how much -------------------------------------------------------------------------------


async def test_the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(gateway, team_key):
    for _ in range(3):
        ok = await gateway.chat(team_key)
        assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await gateway.chat(team_key)
    error = error_of(refused, 429)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert len(gateway.backend.calls) == 3  # the refused request never reached a pool


async def test_tokens_are_charged_by_estimate_while_a_request_runs(keys_path):
    key = create_key(keys_path, "team-t", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path)
    gateway.backend.delay_s = 0.2
    first, second = await asyncio.gather(
        gateway.chat(key, max_tokens=60), gateway.chat(key, max_tokens=60)
    )  # each estimated at ~62 tokens: both do not fit in 100
    assert sorted([first.status_code, second.status_code]) == [200, 429]
    assert error_of(first if first.status_code == 429 else second, 429)["type"] == "tokens"


async def test_a_request_larger_than_the_whole_token_minute_is_refused_without_retry_after(
    keys_path,
):
    key = create_key(keys_path, "team-t", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path)
    refused = await gateway.chat(key, max_tokens=200)
    error = error_of(refused, 429)
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "limit 100" in error["message"]
    assert "retry-after" not in refused.headers
    assert not gateway.backend.calls


async def test_tokens_per_minute_count_every_choice(keys_path):
    key = create_key(keys_path, "team-t", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path)
    assert (await gateway.chat(key, max_tokens=30)).status_code == 200
    refused = await gateway.chat(key, max_tokens=30, n=4)  # ~4 x 30 tokens of output
    assert error_of(refused, 429)["type"] == "tokens"


async def test_tokens_are_settled_to_real_usage_when_a_request_ends(keys_path):
    key = create_key(keys_path, "team-t", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path)
    assert (await gateway.chat(key, max_tokens=60)).status_code == 200
    await asyncio.sleep(0)  # settled in the background: 4 real tokens, not ~62
    assert (await gateway.chat(key, max_tokens=60)).status_code == 200


async def test_a_lost_limiter_reply_when_failing_closed_is_503_and_charges_nothing(
    keys_path, redis_url
):
    key = create_key(
        keys_path, "team-r", models=["*"], tokens_per_minute=100, max_concurrent_requests=1
    )
    gateway = Gateway(keys_path, limiter=lossy_limiter(redis_url), on_store_error="closed")
    assert error_of(await gateway.chat(key, max_tokens=60), 503)["code"] == "service_unavailable"
    await asyncio.sleep(0.2)  # refunded in the background: the slot and the ~75 tokens
    assert (await gateway.chat(key, max_tokens=80)).status_code == 200  # ~95 tokens


async def test_a_lost_limiter_reply_when_failing_open_is_served_and_billed_its_real_usage(
    keys_path, redis_url
):
    key = create_key(keys_path, "team-r", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path, limiter=lossy_limiter(redis_url), on_store_error="open")
    assert (await gateway.chat(key, max_tokens=60)).status_code == 200
    await asyncio.sleep(0.2)  # settled in the background: 4 real tokens, not ~75
    assert (await gateway.chat(key, max_tokens=80)).status_code == 200  # ~95 tokens


def unreachable_limiter() -> RedisRateLimiter:
    url = f"redis://127.0.0.1:{free_port()}/0"
    return RedisRateLimiter(redis_client(url), lease_ttl_s=30, settle_retry_s=0)


async def test_with_redis_down_failing_closed_refuses_with_503_and_retry_after(keys_path):
    key = create_key(keys_path, "team-r", models=["*"], requests_per_minute=10)
    gateway = Gateway(keys_path, limiter=unreachable_limiter(), on_store_error="closed")
    refused = await gateway.chat(key)
    assert error_of(refused, 503)["code"] == "service_unavailable"
    assert refused.headers["retry-after"]
    assert not gateway.backend.calls


async def test_with_redis_down_failing_open_serves_without_limits(keys_path):
    key = create_key(keys_path, "team-r", models=["*"], requests_per_minute=1)
    gateway = Gateway(keys_path, limiter=unreachable_limiter(), on_store_error="open")
    assert [(await gateway.chat(key)).status_code for _ in range(3)] == [200, 200, 200]


async def test_max_tokens_above_the_tenants_cap_is_400(keys_path):
    key = create_key(keys_path, "team-c", models=["*"], max_tokens=64)
    gateway = Gateway(keys_path)
    error = error_of(await gateway.chat(key, max_tokens=65), 400)
    assert (error["code"], error["param"]) == ("max_tokens_exceeded", "max_tokens")


async def test_a_request_without_max_tokens_gets_the_tenants_cap(keys_path):
    key = create_key(keys_path, "team-c", models=["*"], max_tokens=64)
    gateway = Gateway(keys_path)
    assert (await gateway.chat(key)).status_code == 200
    assert gateway.backend.calls[0][2].max_tokens == 64


async def test_a_cap_the_client_did_not_ask_for_does_not_route_it_as_a_long_output(keys_path):
    key = create_key(keys_path, "team-c", models=["*"], max_tokens=100_000)
    gateway = Gateway(keys_path)
    response = await gateway.chat(key)
    assert response.headers["x-routed-model"] == MOE
    assert response.headers["x-route-reason"] != "size:long-output"


async def test_a_cap_the_client_did_not_ask_for_never_overflows_the_context(keys_path):
    key = create_key(keys_path, "team-c", models=["*"], max_tokens=100_000)
    gateway = Gateway(keys_path)
    assert (await gateway.chat(key)).status_code == 200
    max_tokens = gateway.backend.calls[0][2].max_tokens
    assert 0 < max_tokens < gateway.settings.pool(MOE).max_model_len


async def test_low_priority_is_shed_before_high_on_a_busy_pool(keys_path):
    low = create_key(keys_path, "batch", models=["*"], priority="low")
    high = create_key(keys_path, "interactive", models=["*"], priority="high")
    settings = Settings(routing={"max_ongoing_per_replica": 10})
    loads = LoadTracker([MOE, DENSE])
    for _ in range(7):  # 70 % of the interactive pool: above low's 60 %, below high's 100 %
        loads.started(MOE)
    gateway = Gateway(keys_path, settings=settings, loads=loads)
    shed = await gateway.chat(low, model=MOE)
    assert error_of(shed, 429)["code"] == "shed_for_priority" and shed.headers["retry-after"]
    assert (await gateway.chat(high, model=MOE)).status_code == 200
    assert [o.shed_reason for o in gateway.recorder.outcomes] == ["priority", None]


# --- what is written down -------------------------------------------------------------------


async def test_usage_is_reported_per_tenant_to_admin_keys_only(gateway, team_key, admin_key):
    await gateway.chat(team_key)
    await asyncio.sleep(0)  # usage is recorded in the background once the answer is out
    async with gateway.client(team_key) as c:
        assert error_of(await c.get("/admin/usage"), 403)["code"] == "admin_key_required"
    async with gateway.client(admin_key) as c:
        rows = (await c.get("/admin/usage", params={"window_s": 600})).json()["data"]
    assert rows == [
        {"tenant": "team-a", "model": MOE, "requests": 1, "prompt_tokens": 3,
         "completion_tokens": 1}
    ]  # fmt: skip


async def test_usage_during_a_store_outage_is_503_with_retry_after(gateway, admin_key):
    async def unavailable(window_s, now=None):
        raise UsageUnavailable("usage store unavailable: ConnectionError()")

    gateway.usage.report = unavailable
    async with gateway.client(admin_key) as c:
        response = await c.get("/admin/usage", params={"window_s": 600})
    assert error_of(response, 503)["code"] == "service_unavailable"
    assert response.headers["retry-after"]


async def test_each_request_writes_one_audit_line_without_content(gateway, team_key, tmp_path):
    await gateway.chat(team_key, messages=[{"role": "user", "content": "secret plans"}])
    await gateway.chat()  # a 401 is audited too
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(x["tenant"], x["status"]) for x in lines] == [("team-a", 200), ("none", 401)]
    first = lines[0]
    assert first["key_id"] == team_key.split("_")[1] and first["pool"] == MOE
    assert (first["prompt_tokens"], first["completion_tokens"]) == (3, 1)
    assert "secret plans" not in (tmp_path / "audit.jsonl").read_text()
    assert team_key not in (tmp_path / "audit.jsonl").read_text()


async def test_audit_content_records_the_prompt_when_turned_on(keys_path, team_key, tmp_path):
    gateway = Gateway(keys_path, audit_path=tmp_path / "a.jsonl", content=True)
    await gateway.chat(team_key, messages=[{"role": "user", "content": "secret plans"}])
    assert "secret plans" in json.loads((tmp_path / "a.jsonl").read_text())["prompt"]


async def test_the_key_never_reaches_metrics_or_logs(gateway, team_key, caplog):
    with caplog.at_level(logging.DEBUG):
        await gateway.chat(team_key)
        await gateway.chat(team_key + "x")
    assert team_key not in caplog.text
    assert all(team_key not in repr(o) for o in gateway.recorder.outcomes)
    assert [o.tenant for o in gateway.recorder.outcomes] == ["team-a", "none"]


def test_the_audit_logger_does_not_feed_the_service_log():
    AuditLog(None, include_content=False)
    assert logging.getLogger(AUDIT_LOGGER).propagate is False


async def test_max_concurrent_requests_refuses_the_one_over_while_others_run(keys_path):
    key = create_key(keys_path, "team-p", models=["*"], max_concurrent_requests=1)
    gateway = Gateway(keys_path)
    gateway.backend.delay_s = 0.2
    first, second = await asyncio.gather(gateway.chat(key), gateway.chat(key))
    refused = first if first.status_code == 429 else second
    assert error_of(refused, 429)["type"] == "concurrency"
    await asyncio.sleep(0)  # the slot is released when the running request ends
    assert (await gateway.chat(key)).status_code == 200


async def test_the_key_never_reaches_a_span(keys_path, team_key):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.settings import TracingSettings
    from service.telemetry.tracing import build_tracer

    exporter = InMemorySpanExporter()
    gateway = Gateway(keys_path)
    gateway.app = create_app(
        gateway.settings,
        gateway.backend,
        lambda: None,
        recorder=gateway.recorder,
        tracer=build_tracer(TracingSettings(), exporter),
        access=gateway.access,
    )
    await gateway.chat(team_key)
    spans = exporter.get_finished_spans()
    assert any(s.attributes.get("gemma.tenant") == "team-a" for s in spans)
    assert team_key.split("_", 2)[2] not in "".join(s.to_json() for s in spans)


async def test_a_client_gone_during_admission_leaves_no_slot_or_charge_behind(keys_path):
    key = create_key(
        keys_path, "team-s", models=["*"], max_concurrent_requests=1, tokens_per_minute=1000
    )
    gateway = Gateway(keys_path)
    limiter = gateway.access._limiter
    admit = limiter.admit

    async def slow_admit(*args, **kwargs):
        admission = await admit(*args, **kwargs)  # charged and slot taken...
        await asyncio.sleep(0.05)  # ...then the answer is slow to come back
        return admission

    limiter.admit = slow_admit
    principal = await gateway.access.authenticate({"authorization": f"Bearer {key}"})
    task = asyncio.create_task(gateway.access.admit(principal, "r1", 900))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the abandoned admission completes, then is released
    limiter.admit = admit
    admission = await gateway.access.admit(principal, "r2", 900)  # slot and tokens are back
    assert admission is not None and admission.admitted


async def test_a_broken_keys_file_is_named_in_ready_while_the_old_keys_stay_in_force(
    keys_path, team_key
):
    gateway = Gateway(keys_path)
    keys_path.write_text("keys: [unclosed\n")
    async with gateway.client() as c:
        ready = (await c.get("/ready")).json()
    assert ready["keys"]["file"] == str(keys_path)
    assert ready["keys"]["error"]
    assert (await gateway.chat(team_key)).status_code == 200


async def test_a_request_that_failed_before_any_output_costs_no_tokens(keys_path):
    key = create_key(keys_path, "team-t", models=["*"], tokens_per_minute=100)
    gateway = Gateway(keys_path)
    gateway.backend.script = lambda req: [RuntimeError("engine died")]
    assert (await gateway.chat(key, max_tokens=60)).status_code == 500
    await asyncio.sleep(0)  # refunded in the background
    gateway.backend.script = None
    assert (await gateway.chat(key, max_tokens=60)).status_code == 200


async def test_a_404_lists_only_the_models_the_tenant_may_use(gateway, team_key):
    async with gateway.client(team_key) as c:
        error = error_of(await c.post(CHAT, json=chat_body("gpt-4")), 404)
    assert error["message"].endswith("available models: gemma-4-26b-a4b-it, gemma-4")
    assert DENSE not in error["message"]


async def test_closing_waits_for_the_settles_still_in_flight(keys_path):
    key = create_key(keys_path, "team-d", models=["*"], max_concurrent_requests=1)
    gateway = Gateway(keys_path)
    limiter = gateway.access._limiter
    settle = limiter.settle

    async def slow_settle(*args, **kwargs):
        await asyncio.sleep(0.2)  # a Redis round trip, slow
        await settle(*args, **kwargs)

    limiter.settle = slow_settle
    assert (await gateway.chat(key)).status_code == 200  # its settle is now in flight
    await gateway.access.aclose(timeout_s=5)
    limiter.settle = settle
    principal = await gateway.access.authenticate({"authorization": f"Bearer {key}"})
    assert (await gateway.access.admit(principal, "next", 10)).admitted  # the slot was freed
