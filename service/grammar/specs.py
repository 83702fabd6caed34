"""What the engine will compile for a request, named the way vLLM names it, and the compile
itself done exactly as vLLM's xgrammar backend does it."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

JSON_OBJECT_SCHEMA = '{"type": "object"}'


@dataclass(frozen=True)
class GrammarSpec:
    """kind: vLLM's StructuredOutputOptions name, lower-cased, except that a grammar is "lark"
    or "ebnf" (decided here, as vLLM decides it, so compile workers need not import vLLM)."""

    kind: str
    spec: str

    @classmethod
    def of(cls, option_name: str, spec: str) -> GrammarSpec:
        kind = option_name.lower()
        if kind == "grammar":
            from vllm.v1.structured_output.utils import grammar_is_likely_lark

            kind = "lark" if grammar_is_likely_lark(spec) else "ebnf"
        return cls(kind, spec)

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.spec}".encode()).hexdigest()


def from_structured_outputs(params: Any) -> GrammarSpec | None:
    """The spec the engine receives for these StructuredOutputsParams, after vLLM's input
    processing (which turns `choice` into an EBNF grammar)."""
    if params is None:
        return None
    from vllm.v1.structured_output.request import get_structured_output_key
    from vllm.v1.structured_output.utils import choice_as_grammar

    if params.choice is not None:
        params = copy.copy(params)
        params.grammar, params.choice = choice_as_grammar(params.choice), None
    try:
        option, spec = get_structured_output_key(params)
    except ValueError:  # no constraint set
        return None
    return GrammarSpec.of(option.name, spec)


def from_json_schema(schema: dict[str, Any]) -> GrammarSpec:
    """The spec for `structured_outputs.json` set to this schema (serialised as vLLM keys it)."""
    return GrammarSpec("json", json.dumps(schema))


def from_request(request: Any) -> GrammarSpec | None:
    """The grammar a chat or completions request asks for (`response_format` or
    `structured_outputs`), or None."""
    extract = getattr(request, "extract_structured_outputs", None)
    return from_structured_outputs(extract() if extract else None)


def compile_spec(compiler: Any, grammar: GrammarSpec, disable_any_whitespace: bool) -> Any:
    """`XgrammarBackend.compile_grammar` (vllm/v1/structured_output/backend_xgrammar.py) without
    the matcher: the same calls with the same arguments, so the result is what the engine
    would have built."""
    import xgrammar as xgr

    separators = (",", ":") if disable_any_whitespace else None
    whitespace = {"any_whitespace": not disable_any_whitespace, "separators": separators}
    if grammar.kind == "json":
        return compiler.compile_json_schema(grammar.spec, **whitespace)
    if grammar.kind == "json_object":
        return compiler.compile_json_schema(JSON_OBJECT_SCHEMA, **whitespace)
    if grammar.kind == "lark":
        return compiler.compile_lark(grammar.spec)
    if grammar.kind == "ebnf":
        return compiler.compile_grammar(grammar.spec)
    if grammar.kind == "regex":
        return compiler.compile_regex(grammar.spec)
    if grammar.kind == "structural_tag":
        tag = json.loads(grammar.spec)
        if "structures" in tag:  # vLLM's deprecated form
            items = [
                xgr.StructuralTagItem(
                    begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"]
                )
                for s in tag["structures"]
            ]
            return compiler.compile_structural_tag(items, tag["triggers"])
        return compiler.compile_structural_tag(grammar.spec)
    raise ValueError(f"unknown grammar kind {grammar.kind!r}")
