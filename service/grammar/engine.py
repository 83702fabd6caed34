"""The engine side: a vLLM plugin (`vllm.general_plugins`: `gemma_serve_grammar`) that makes the
xgrammar backend take compiled grammars from the replica's compile service.

vLLM runs general plugins in every process it starts; this one acts only where the replica set
`GEMMA_SERVE_GRAMMAR_SOCKET` (pools with `max_grammar_compile_s`). It wraps
`XgrammarBackend.compile_grammar` (vllm/v1/structured_output/backend_xgrammar.py, vLLM 0.32):
the matcher is built exactly as there, from a grammar the service compiled. Where the service
cannot be used (unreachable, or a vocabulary that differs from the replica's) the backend
compiles in process as upstream does, and says so once in the log. Remove this module if vLLM
learns to compile grammars out of process with a time limit.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Client
from typing import Any

from service.grammar.service import (
    AUTHKEY_ENV,
    SOCKET_ENV,
    Compiled,
    TooSlow,
    Verdict,
    fingerprint,
)
from service.grammar.specs import GrammarSpec

log = logging.getLogger(__name__)


class GrammarTooSlow(ValueError):
    """The compile ran past the pool's limit; vLLM finishes the request with an error."""


class ServiceClient:
    def __init__(self, address: str, authkey: bytes):
        self._address, self._authkey = address, authkey

    def ask(self, what: str, payload: Any) -> Any:
        # A connection per ask: vLLM compiles in several threads at once.
        with Client(self._address, family="AF_UNIX", authkey=self._authkey) as conn:
            conn.send((what, payload))
            return conn.recv()


def client_for(backend: Any) -> tuple[ServiceClient, Any] | None:
    """This backend's service client and tokenizer info, checked once; None to compile here."""
    cached = backend.__dict__.get("_gemma_serve_client", False)
    if cached is not False:
        return cached
    result = None
    try:
        # The compiler's own TokenizerInfo: a compiled grammar carries it.
        info = backend.compiler.compile_builtin_json_grammar().tokenizer_info
        client = ServiceClient(os.environ[SOCKET_ENV], bytes.fromhex(os.environ[AUTHKEY_ENV]))
        if client.ask("hello", fingerprint(info.serialize_json())):
            result = (client, info)
        else:
            log.warning("grammar service: another vocabulary than the engine's; compiling here")
    except Exception:
        log.warning("grammar service unreachable; compiling grammars here", exc_info=True)
    backend.__dict__["_gemma_serve_client"] = result
    return result


def install() -> None:
    if not os.environ.get(SOCKET_ENV):
        return
    from vllm.v1.structured_output import backend_xgrammar

    backend_cls = backend_xgrammar.XgrammarBackend
    if getattr(backend_cls.compile_grammar, "_gemma_serve", False):
        return  # vLLM may load plugins more than once in a process
    compile_here = backend_cls.compile_grammar

    def compile_grammar(
        self: Any, request_type: Any, grammar_spec: str, stop_token_ids: set[int] | None = None
    ) -> Any:
        import xgrammar as xgr

        found = client_for(self)
        if found is None:
            return compile_here(self, request_type, grammar_spec, stop_token_ids)
        client, info = found
        verdict: Verdict = client.ask("compile", GrammarSpec.of(request_type.name, grammar_spec))
        if isinstance(verdict, TooSlow):
            raise GrammarTooSlow(f"grammar compile ran past {verdict.limit_s:g} s")
        if not isinstance(verdict, Compiled):  # invalid: let xgrammar raise its own error
            return compile_here(self, request_type, grammar_spec, stop_token_ids)
        ctx = xgr.CompiledGrammar.deserialize_json(verdict.blob, info)
        return backend_xgrammar.XgrammarGrammar(
            matcher=xgr.GrammarMatcher(
                ctx,
                override_stop_tokens=list(stop_token_ids) if stop_token_ids else None,
                max_rollback_tokens=self.num_speculative_tokens,
            ),
            vocab_size=self.vocab_size,
            ctx=ctx,
        )

    compile_grammar._gemma_serve = True  # type: ignore[attr-defined]
    backend_cls.compile_grammar = compile_grammar
