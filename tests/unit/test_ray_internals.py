"""The Ray Serve LLM internals gemma-serve relies on still have the shape it uses them in.

Run after a Ray upgrade: each test names the module that would break."""

import inspect
import logging

from service import ray_internals
from service.ray_internals import (
    Batcher,
    LLMEngine,
    LLMServer,
    RawRequestInfo,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    sanitize_chat_request,
)


def test_the_installed_ray_is_the_release_the_internals_were_checked_against(caplog):
    assert ray_internals.check_version()
    with caplog.at_level(logging.WARNING):
        assert not ray_internals.check_version("9.9.9")
    assert "9.9.9" in caplog.text and ray_internals.CHECKED_RAY_VERSION in caplog.text


def test_pool_server_can_extend_llm_server_where_it_overrides_it():
    # service/pool.py overrides these.
    for name in ("start", "chat", "completions", "_get_batch_interval_ms"):
        assert callable(getattr(LLMServer, name)), name


def test_the_first_token_batcher_can_subclass_rays_batcher():
    # service/pool.py: FirstTokenBatcher(generator, interval_ms=...).stream()
    parameters = inspect.signature(Batcher.__init__).parameters
    assert "interval_ms" in parameters
    assert callable(Batcher.stream)


def test_the_mock_engine_implements_rays_engine_interface():
    # service/mock_engine.py
    from service.mock_engine import MockEngine

    assert issubclass(MockEngine, LLMEngine)
    abstract = getattr(LLMEngine, "__abstractmethods__", frozenset())
    assert abstract <= set(vars(MockEngine)), sorted(abstract - set(vars(MockEngine)))
    assert TokenizeResponse(count=2, max_model_len=8, tokens=[0, 0]).count == 2


def test_the_gateway_passes_trace_headers_as_raw_request_info():
    # service/gateway/deployment.py
    assert RawRequestInfo(headers={"traceparent": "x"}).headers == {"traceparent": "x"}


def test_tokenize_requests_carry_the_fields_the_pool_counts_with():
    # service/pool.py builds these to count prompt tokens.
    assert {"model", "messages"} <= set(TokenizeChatRequest.model_fields)
    assert {"model", "prompt"} <= set(TokenizeCompletionRequest.model_fields)


def test_the_chat_sanitiser_takes_and_returns_a_request_body():
    # service/gateway/apis.py
    assert len(inspect.signature(sanitize_chat_request).parameters) == 1
