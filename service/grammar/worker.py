"""A compile worker: a child process of the pool replica that compiles grammars one at a time
and sends them back serialised. The replica kills it when a compile runs past its limit; that
is the only way to stop xgrammar mid-compile."""

from __future__ import annotations

from multiprocessing.connection import Connection

from service.grammar.specs import GrammarSpec, compile_spec


def serve(conn: Connection, tokenizer_info_json: str, disable_any_whitespace: bool) -> None:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.deserialize_json(tokenizer_info_json)
    # As vLLM builds it; the service caches compiled grammars, so xgrammar need not.
    compiler = xgr.GrammarCompiler(info, max_threads=8, cache_enabled=False)
    # Warms xgrammar's first compile, off any request's clock.
    compile_spec(compiler, GrammarSpec("json_object", ""), disable_any_whitespace)
    conn.send(("ready", None))
    while True:
        try:
            grammar: GrammarSpec = conn.recv()
        except EOFError:
            return
        try:
            compiled = compile_spec(compiler, grammar, disable_any_whitespace)
            conn.send(("ok", compiled.serialize_json()))
        except Exception as error:  # an invalid grammar: vLLM's own validation will say so
            conn.send(("error", f"{type(error).__name__}: {error}"))
