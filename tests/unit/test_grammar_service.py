"""The grammar compile service: grammars compile in worker processes under a time limit, what
compiled is what the engine would have built, and the engine side takes it over the socket."""

import asyncio
import json
import time

import pytest
import xgrammar as xgr
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.v1.structured_output import backend_xgrammar
from vllm.v1.structured_output.backend_types import StructuredOutputOptions

from service.grammar import engine, specs
from service.grammar.engine import ServiceClient
from service.grammar.service import (
    Compiled,
    GrammarCompileService,
    Invalid,
    TooSlow,
    fingerprint,
)
from service.grammar.specs import GrammarSpec
from service.settings import load_settings
from service.tinymodels import build_tiny_checkpoints

SMALL = GrammarSpec(
    "json", json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}})
)
# A counted-repeat pattern: seconds even on the tiny vocabulary (1.5 s for {1,5000} on a 2-vCPU
# EPYC); a plain maxLength: 1000 string compiled in 0.02-0.5 s depending on the machine.
COSTLY = GrammarSpec("json", '{"type": "string", "pattern": "^[a-z]{1,8000}$"}')


@pytest.fixture(scope="module")
def tokenizer_info():
    cache_dir = load_settings().resolved_cache_dir
    build_tiny_checkpoints(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(cache_dir / "gemma4-tiny-dense")
    return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def service(tokenizer_info):
    grammar = GrammarCompileService(limit_s=0.5, disable_any_whitespace=True)
    environment = grammar.listen()
    grammar.start(tokenizer_info.serialize_json())
    grammar.environment = environment
    yield grammar
    grammar.close()


def socket_client(service) -> ServiceClient:
    env = service.environment
    return ServiceClient(env[engine.SOCKET_ENV], bytes.fromhex(env[engine.AUTHKEY_ENV]))


def test_a_grammar_compiles_to_what_the_engine_would_build(service, tokenizer_info):
    verdict = service.compile(SMALL)
    assert isinstance(verdict, Compiled)
    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    here = specs.compile_spec(compiler, SMALL, disable_any_whitespace=True)
    there = xgr.CompiledGrammar.deserialize_json(verdict.blob, tokenizer_info)
    assert str(there.grammar) == str(here.grammar)


def test_a_compile_past_the_limit_is_too_slow_and_the_worker_is_replaced(service):
    started = time.monotonic()
    assert service.compile(COSTLY) == TooSlow(0.5)
    assert time.monotonic() - started < 0.5 + 30  # the limit, plus starting a new worker
    for _ in range(3):  # both workers answer afterwards
        fresh = GrammarSpec("json", json.dumps({"type": "integer", "minimum": time.time_ns()}))
        assert isinstance(service.compile(fresh), Compiled)


def test_a_costly_grammar_asked_again_is_refused_from_the_cache(service):
    service.compile(COSTLY)
    started = time.monotonic()
    assert service.compile(COSTLY) == TooSlow(0.5)
    assert time.monotonic() - started < 0.1


def test_a_compiled_grammar_asked_again_comes_from_the_cache(service):
    assert service.compile(SMALL) is service.compile(SMALL)


def test_the_event_loop_gets_the_same_verdicts_as_a_blocking_caller(service):
    async def ask_twice():
        return await service.verdict(SMALL), await service.verdict(SMALL)

    first, again = asyncio.run(ask_twice())
    assert isinstance(first, Compiled) and again is first


def test_an_invalid_grammar_is_left_for_vllm_to_report(service):
    assert isinstance(service.compile(GrammarSpec("regex", "(unclosed")), Invalid)


def test_the_socket_answers_only_the_same_vocabulary(service, tokenizer_info):
    client = socket_client(service)
    assert client.ask("hello", fingerprint(tokenizer_info.serialize_json())) is True
    assert client.ask("hello", "another vocabulary") is False


def test_the_socket_refuses_a_peer_without_the_key(service):
    env = service.environment
    with pytest.raises(Exception):  # noqa: B017 - multiprocessing raises AuthenticationError
        ServiceClient(env[engine.SOCKET_ENV], b"wrong key").ask("hello", "")


class FakeBackend:
    """What the wrapped compile_grammar reads from vLLM's XgrammarBackend."""

    def __init__(self, tokenizer_info):
        self.compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
        self.num_speculative_tokens = 0
        self.disable_any_whitespace = True
        self.vocab_size = tokenizer_info.vocab_size
        self.compiled_here = 0


@pytest.fixture
def patched_backend(service, monkeypatch):
    monkeypatch.setenv(engine.SOCKET_ENV, service.environment[engine.SOCKET_ENV])
    monkeypatch.setenv(engine.AUTHKEY_ENV, service.environment[engine.AUTHKEY_ENV])
    original = backend_xgrammar.XgrammarBackend.compile_grammar

    def compile_here(self, *args):
        self.compiled_here += 1
        return original(self, *args)

    monkeypatch.setattr(backend_xgrammar.XgrammarBackend, "compile_grammar", compile_here)
    engine.install()
    return backend_xgrammar.XgrammarBackend.compile_grammar


def test_the_engine_takes_the_grammar_from_the_service(patched_backend, tokenizer_info):
    backend = FakeBackend(tokenizer_info)
    grammar = patched_backend(backend, StructuredOutputOptions.JSON, SMALL.spec, {1})
    assert isinstance(grammar, backend_xgrammar.XgrammarGrammar)
    assert backend.compiled_here == 0
    assert grammar.is_terminated() is False


def test_the_engine_refuses_a_grammar_past_the_limit(patched_backend, tokenizer_info):
    with pytest.raises(engine.GrammarTooSlow):
        patched_backend(FakeBackend(tokenizer_info), StructuredOutputOptions.JSON, COSTLY.spec)


def test_the_engine_compiles_itself_when_the_vocabulary_differs(patched_backend):
    other = xgr.TokenizerInfo(["a", "b", "c", "<eos>"], stop_token_ids=[3])
    backend = FakeBackend(other)
    patched_backend(backend, StructuredOutputOptions.JSON, SMALL.spec)
    assert backend.compiled_here == 1


def test_the_plugin_does_nothing_without_a_service(monkeypatch):
    monkeypatch.delenv(engine.SOCKET_ENV, raising=False)
    before = backend_xgrammar.XgrammarBackend.compile_grammar
    engine.install()
    assert backend_xgrammar.XgrammarBackend.compile_grammar is before


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **fields)


def test_a_json_schema_response_format_is_named_as_the_engine_names_it():
    schema = {"type": "object"}
    request = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    assert specs.from_request(request) == GrammarSpec("json", json.dumps(schema))


def test_a_choice_becomes_the_grammar_vllm_compiles_for_it():
    from vllm.v1.structured_output.utils import choice_as_grammar

    request = chat(structured_outputs={"choice": ["yes", "no"]})
    assert specs.from_request(request) == GrammarSpec("ebnf", choice_as_grammar(["yes", "no"]))
    assert request.structured_outputs.choice == ["yes", "no"]  # the request is left alone


def test_a_request_without_constraints_has_no_grammar():
    assert specs.from_request(chat()) is None
