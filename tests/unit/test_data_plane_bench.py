"""The data-plane benchmark's figures and table, and the mock engine's chunks (no Ray)."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.serve.llm.openai_api_models import ChatCompletionRequest, ChatCompletionResponse
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import data_plane as bench  # noqa: E402

from service import mock_engine  # noqa: E402
from service.mock_engine import ChunkWriter, MockEngine  # noqa: E402
from service.settings import settings_from_mapping  # noqa: E402
from service.streaming import carries_output, usage_of  # noqa: E402


def test_percentiles_interpolate_between_ranks_like_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 99) == pytest.approx(4.96)
    assert bench.percentile([7.0], 99) == 7.0
    assert math.isnan(bench.percentile([], 50))
    with pytest.raises(ValueError):
        bench.percentile(values, 101)


def record(started, gaps_ms, ttft_ms=20.0, route="http", error=None):
    tokens = len(gaps_ms) + 1
    ended = started + (ttft_ms + sum(gaps_ms)) / 1000
    return bench.StreamRecord(
        started=started,
        ended=ended,
        ttft_s=ttft_ms / 1000,
        itls_s=[g / 1000 for g in gaps_ms],
        tokens=tokens,
        usage_tokens=tokens,
        route=route,
        error=error,
    )


def test_summary_pools_gaps_over_streams_and_compares_with_ideal():
    # Two streams of 4 tokens at a 20 ms ITL: ideal is 2 / 0.020 = 100 tok/s.
    records = [record(0.0, [20, 20, 20]), record(0.0, [20, 20, 60], ttft_ms=40)]
    result = bench.summarize("gemma-serve", records, tokens=4, itl_ms=20.0)
    assert result.ideal_tokens_per_s == 100
    assert result.wall_s == pytest.approx(0.14)
    assert result.tokens_per_s == pytest.approx(8 / 0.14)
    assert result.share_of_ideal == pytest.approx(8 / 0.14 / 100)
    assert result.itl_p50_ms == pytest.approx(20)
    assert result.itl_p99_ms == pytest.approx(20 + 40 * 0.95)
    assert result.itl_p99_over_configured == pytest.approx(result.itl_p99_ms / 20)
    assert result.ttft_p50_ms == pytest.approx(30)
    assert result.ok_streams == 2 and result.routes == {"http": 2} and result.errors == []


def test_failed_streams_count_in_delivery_but_not_in_latencies():
    records = [record(0.0, [20, 20, 20]), bench.StreamRecord(0.0, 0.01, error="HTTP 503: x")]
    result = bench.summarize("ray-direct", records, tokens=4, itl_ms=20.0)
    assert result.ok_streams == 1 and result.errors == ["HTTP 503: x"]
    assert result.delivered_tokens == 4
    assert result.ttft_p99_ms == pytest.approx(20)


def test_a_stream_is_checked_for_length_usage_and_route():
    ok = record(0.0, [20, 20, 20])
    bench.check_stream(ok, 4, "http")
    assert ok.error is None
    short = record(0.0, [20])
    bench.check_stream(short, 4, "http")
    assert "2 content chunks" in short.error
    wrong = record(0.0, [20, 20, 20], route="handle")
    bench.check_stream(wrong, 4, "http")
    assert "handle route" in wrong.error
    unaccounted = record(0.0, [20, 20, 20])
    unaccounted.usage_tokens = None
    bench.check_stream(unaccounted, 4, "http")
    assert "usage" in unaccounted.error


def test_the_table_has_one_row_per_path():
    records = [record(0.0, [20, 20, 20])]
    results = [bench.summarize(p, records, 4, 20.0) for p in ("gemma-serve", "ray-direct")]
    table = bench.render_table(results).splitlines()
    assert table[0].startswith("| path | delivered tok/s | share of ideal | TTFT p50 ms")
    assert "ITL p99 / configured" in table[0]
    assert len(table) == 4
    assert table[2] == "| gemma-serve | 50 | 100.0% | 20.0 | 20.0 | 20.0 | 20.0 | 1.00x | 1/1 |"
    assert table[3].startswith("| ray-direct |")


def test_lines_are_classified_by_what_they_carry():
    writer = ChunkWriter("chatcmpl-mock-http-abc", "m", 1)
    kinds = [bench.classify(e.encode().split(b"\n")[0]) for e in all_events(writer)]
    assert kinds == ["other", "content", "content", "other", "usage", "done"]
    assert bench.classify(b"\n") == "other"
    assert bench.classify(b'data: {"error": {"message": "x"}}') == "error"
    assert bench.route_of(writer.role().encode()) == "http"
    assert bench.route_of(b'data: {"id":"chatcmpl-123"}') == "other"


def all_events(writer):
    return [
        writer.role(),
        writer.content("t0 "),
        writer.content('"quoted"'),
        writer.finish(),
        writer.usage(7, 2),
        mock_engine.DONE,
    ]


def test_mock_chunks_have_the_openai_stream_shapes():
    writer = ChunkWriter("chatcmpl-mock-http-abc", "gemma-4-31b-it", 123)
    events = all_events(writer)
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-mock-http-abc"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == 123 and chunk["model"] == "gemma-4-31b-it"
    role, first, second, final, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["delta"] == {"content": "t0 "}
    assert second["choices"][0]["delta"] == {"content": '"quoted"'}
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    # As the gateway reads them (service/streaming.py).
    assert not carries_output(events[0]) and carries_output(events[1])
    assert usage_of(events[4]) == (7, 2)


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setenv(mock_engine.ITL_ENV, "1")
    return MockEngine(SimpleNamespace(model_id="gemma-4-31b-it", engine_kwargs={}))


def chat_request(stream=True, usage=True, tokens=3):
    return ChatCompletionRequest(
        model="gemma-4-31b-it",
        messages=[{"role": "user", "content": "hello there"}],
        max_completion_tokens=tokens,
        stream=stream,
        stream_options={"include_usage": True} if stream and usage else None,
    )


async def test_the_handle_path_yields_sse_strings_in_order(engine):
    events = [e async for e in engine.chat(chat_request())]
    assert all(isinstance(e, str) for e in events)
    assert [bench.classify(e.encode()) for e in events] == [
        "other", "content", "content", "content", "other", "usage", "done",
    ]  # fmt: skip
    assert bench.route_of(events[0].encode()) == "handle"
    assert usage_of(events[5])[1] == 3


async def test_without_include_usage_there_is_no_usage_chunk(engine):
    events = [e async for e in engine.chat(chat_request(usage=False, tokens=2))]
    assert [bench.classify(e.encode()) for e in events] == [
        "other", "content", "content", "other", "done",
    ]  # fmt: skip


async def test_tokens_come_one_itl_apart(monkeypatch):
    monkeypatch.setenv(mock_engine.ITL_ENV, "20")
    engine = MockEngine(SimpleNamespace(model_id="m", engine_kwargs={}))
    import time

    started = time.perf_counter()
    events = [e async for e in engine.chat(chat_request(tokens=5))]
    assert len(events) == 9
    assert 0.095 <= time.perf_counter() - started < 0.5  # 5 tokens x 20 ms


async def test_a_whole_answer_is_a_chat_completion_response(engine):
    (response,) = [r async for r in engine.chat(chat_request(stream=False))]
    assert isinstance(response, ChatCompletionResponse)
    assert response.choices[0].message.content == "t0 t1 t2 "
    assert response.usage.completion_tokens == 3
    assert response.id.startswith("chatcmpl-mock-handle-")


async def test_tokenize_counts_the_prompt(engine):
    request = SimpleNamespace(messages=[{"role": "user", "content": "x" * 400}])
    (response,) = [r async for r in engine.tokenize(request)]
    assert response.count > 100


async def test_the_http_app_streams_the_same_chunks(engine):
    app = await engine.build_asgi_app()
    with TestClient(app) as client:
        body = chat_request().model_dump(mode="json", exclude_unset=True)
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
        kinds = [bench.classify(line.encode()) for line in lines]
        assert kinds == ["other", "content", "content", "content", "other", "usage", "done"]
        assert bench.route_of(lines[0].encode()) == "http"
        whole = client.post(
            "/v1/chat/completions", json=chat_request(stream=False).model_dump(mode="json")
        )
        assert whole.json()["usage"]["completion_tokens"] == 3
        assert client.get("/v1/models").json()["data"][0]["id"] == "gemma-4-31b-it"
        assert client.get("/health").status_code == 200
        assert client.post("/v1/chat/completions", content=b"{").status_code == 400


def test_the_stack_config_is_one_gemma_serve_accepts():
    settings = settings_from_mapping(yaml.safe_load(bench.stack_config(512, 50, 9999)), "bench")
    (pool,) = settings.pools
    assert pool.id == bench.POOL_ID and pool.checkpoint == "tiny:dense"
    assert pool.max_ongoing_requests == 512 and pool.max_grammar_compile_s is None
    assert settings.telemetry.metrics_port == 9999
    assert settings.server.gateway_max_ongoing_requests >= 512


def test_paths_expect_their_route_and_mock_env():
    assert set(bench.EXPECTED_ROUTE) == set(bench.PATHS)
    env = bench.mock_env({}, 20.0)
    assert env == {
        mock_engine.ENGINE_CLS_ENV: "service.mock_engine.MockEngine",
        mock_engine.ITL_ENV: "20",
    }
    direct = bench.direct_streaming_env(env, Path("/nowhere"))
    assert direct["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert direct["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"
    assert direct["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/nowhere/admin.sock"


def test_the_engine_class_constant_is_rays():
    from ray.llm._internal.serve import constants

    assert constants.RAYLLM_VLLM_ENGINE_CLS_ENV == mock_engine.ENGINE_CLS_ENV
    from ray._common.utils import import_attr

    assert import_attr(mock_engine.ENGINE_CLS) is MockEngine
