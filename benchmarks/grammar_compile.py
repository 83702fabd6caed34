"""How long the grammars that pass the gateway's bounds take to compile, and whether compiling
holds the GIL.

vLLM compiles a request's grammar with xgrammar in a thread of the engine process while the
engine goes on stepping other requests: a slow compile delays its own request, and stalls the
others only if it holds the GIL. The gateway's bounds (service/gateway/bounds.py) are what stands
between a client and that compiler. Each case below is a worst case of one kind that passes them.
It is compiled in a child process (killed at --timeout-s) with the settings vLLM uses. The
vocabulary is a synthetic one of Gemma 4's size (262,144 tokens of 1 to 10 characters) by
default: the tiny checkpoints' 438-token vocabulary would understate the cost, which grows with
the vocabulary; `--vocab tiny` uses it. A Python thread counts in the child meanwhile. The `gil`
figure is its count rate during the compile over its rate beforehand: 1.0 means the compile never
held the GIL, near 0 means it stalled every Python thread of the engine.

    make bench-grammar
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import string
import threading
import time
from collections.abc import Callable
from typing import Any

from service.settings import BoundsSettings, load_settings
from service.tinymodels import build_tiny_checkpoints


def wide_object(limit: int) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    schema = {"type": "object", "properties": properties, "required": []}
    while len(json.dumps(schema)) < limit - 64:
        name = f"p{len(properties)}"
        properties[name] = {"type": "string"}
        schema["required"].append(name)
    return schema


def deep_object(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    while _json_depth(schema) + 2 <= depth:
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


def wide_enum(limit: int) -> dict[str, Any]:
    values: list[str] = []
    while len(json.dumps(values)) < limit - 64:
        values.append(f"value-{len(values)}")
    return {"type": "string", "enum": values}


def many_tools(limit: int) -> dict[str, Any]:
    """What `tool_choice: required` with many tools compiles: one choice per tool."""
    tool = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
    }
    variants: list[dict[str, Any]] = []
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    while len(json.dumps(schema)) < limit - 256:
        name = {"const": f"tool_{len(variants)}"}
        item = {"type": "object", "properties": {"name": name, "parameters": tool}}
        variants.append(item)
    return schema


def _json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_json_depth(v) for v in value), default=0)
    return 0


def cases(bounds: BoundsSettings) -> dict[str, tuple[str, str]]:
    """name -> (kind, spec): every one passes the bounds' size and depth checks."""
    size, depth = bounds.max_schema_bytes, bounds.max_schema_depth
    return {
        "object, 64 KiB of properties": ("json", json.dumps(wide_object(size))),
        f"object nested to depth {depth}": ("json", json.dumps(deep_object(depth))),
        "enum, 64 KiB of values": ("json", json.dumps(wide_enum(size))),
        "tool_choice required, 64 KiB of tools": ("json", json.dumps(many_tools(size))),
        "string, maxLength 100000": ("json", '{"type": "string", "maxLength": 100000}'),
        "array, maxItems 100000": (
            "json",
            '{"type": "array", "items": {"type": "integer"}, "maxItems": 100000}',
        ),
        "regex, nested counted repeats": ("regex", "((a|b){1,100}c){1,100}"),
        "regex, alternation of 64 KiB": (
            "regex",
            "|".join(f"w{i}" for i in range(size // 7)),
        ),
    }


GEMMA4_VOCAB = 262_144


def synthetic_vocab(size: int) -> list[str]:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n"
    rng = random.Random(0)
    vocab = dict.fromkeys(alphabet)
    while len(vocab) < size:
        length = rng.randint(2, 10)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        vocab[rng.choice(("", " ", " ", "_")) + word] = None
    return list(vocab)


def _tokenizer_info(vocab: str, tokenizer_dir: str) -> Any:
    import xgrammar as xgr

    if vocab == "tiny":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    return xgr.TokenizerInfo(synthetic_vocab(GEMMA4_VOCAB), vocab_type=xgr.VocabType.RAW)


def _compile(vocab: str, tokenizer_dir: str, kind: str, spec: str, out: Any) -> None:
    import xgrammar as xgr

    info = _tokenizer_info(vocab, tokenizer_dir)
    # As vLLM builds it (vllm/v1/structured_output/backend_xgrammar.py).
    compiler = xgr.GrammarCompiler(info, max_threads=8, cache_enabled=False)
    compile_: Callable[[], object] = (
        (lambda: compiler.compile_json_schema(spec, any_whitespace=True))
        if kind == "json"
        else (lambda: compiler.compile_regex(spec))
    )
    counter = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    time.sleep(0.5)
    before, at = counter[0], time.monotonic()
    time.sleep(0.5)
    idle_rate = (counter[0] - before) / (time.monotonic() - at)
    before, started = counter[0], time.monotonic()
    compile_()
    seconds = time.monotonic() - started
    busy_rate = (counter[0] - before) / max(seconds, 1e-9)
    stop.set()
    out.put({"compile_s": round(seconds, 3), "gil": round(busy_rate / idle_rate, 2)})


def measure(
    vocab: str, tokenizer_dir: str, kind: str, spec: str, timeout_s: float
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_compile, args=(vocab, tokenizer_dir, kind, spec, out))
    child.start()
    child.join(timeout_s + 60)  # the child builds its vocabulary before it starts the clock
    if child.is_alive():
        child.kill()
        return {"compile_s": f">{timeout_s:g}", "gil": None}
    if child.exitcode != 0 or out.empty():
        return {"compile_s": f"failed (exit {child.exitcode})", "gil": None}
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--vocab", choices=("gemma4-size", "tiny"), default="gemma4-size")
    args = parser.parse_args()
    settings = load_settings()
    build_tiny_checkpoints(settings.resolved_cache_dir)
    tokenizer_dir = str(settings.resolved_cache_dir / "gemma4-tiny-dense")
    for name, (kind, spec) in cases(settings.bounds).items():
        if args.only and args.only not in name:
            continue
        row = {"case": name, "bytes": len(spec)}
        row |= measure(args.vocab, tokenizer_dir, kind, spec, args.timeout_s)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
