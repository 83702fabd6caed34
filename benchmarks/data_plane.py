"""The data plane with a mock engine: what the serving stack delivers when the engine is fast.

The engine is service/mock_engine.py: no compute, one token every `--itl-ms` (20 ms, a GPU's
decode step) on each stream, injected into Ray Serve LLM by import path
(RAYLLM_VLLM_ENGINE_CLS). `--streams` decode-heavy chat streams (256 of 256 tokens) start at
once; ideal delivery is streams / ITL (12,800 tokens/s). Three paths, one after the other:

  gemma-serve         the full stack (`gemma-serve up`): HAProxy -> gateway -> the pool
                      replica's own HTTP server (the data plane) -> mock engine
  gemma-serve-handle  the same stack with the pool's HTTP server off (GEMMA_SERVE_POOL_HTTP=0):
                      the gateway falls back to the Serve handle, tokens cross Ray in batches
                      of stream_batching_interval_ms
  ray-direct          Ray Serve LLM's own direct streaming (HAProxy -> LLMServer replica's
                      HTTP app -> mock engine), no gateway

Reported per path: delivered output tokens/s and its share of ideal; TTFT p50/p99 (the mock's
first token comes one ITL after the request, so ITL is TTFT's floor); ITL p50/p99 between
consecutive content chunks of a stream, pooled over streams, and p99 over the configured ITL.
The client (aiohttp) runs in this process: on a small machine it shares the cores with the
stack, and its own CPU time is in the JSON. Chunk ids say which path served each stream; a
path that served any stream another way fails.

    make bench-data-plane    # or: .venv/bin/python benchmarks/data_plane.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import (  # noqa: E402
    add_stack_options,
    bench_env,
    dense_checkpoint,
    direct_streaming_env,
    machine_info,
    percentile,
    ray_llm_config,
    run_each,
    serve_ray_llm,
    stop,
    write_report,
)

from service.local_ports import free_port  # noqa: E402
from service.mock_engine import ENGINE_CLS, ENGINE_CLS_ENV, ITL_ENV  # noqa: E402
from service.streaming import sse_line_carries_output  # noqa: E402

POOL_ID = "gemma-4-31b-it"
MAX_MODEL_LEN = 2048
PATHS = ("gemma-serve", "gemma-serve-handle", "ray-direct")
# Which route served a stream, by the mock's chunk ids (service/mock_engine.py).
EXPECTED_ROUTE = {"gemma-serve": "http", "gemma-serve-handle": "handle", "ray-direct": "http"}
POOL_HTTP_ENV = "GEMMA_SERVE_POOL_HTTP"  # service/pool.py
WORKDIR = ROOT / ".cache" / "bench"
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."


# --- measuring -----------------------------------------------------------------------------


@dataclass
class StreamRecord:
    started: float
    ended: float = 0.0
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    tokens: int = 0  # content chunks received
    usage_tokens: int | None = None  # completion_tokens of the usage chunk
    route: str | None = None
    error: str | None = None


@dataclass
class PathResult:
    path: str
    streams: int
    ok_streams: int
    tokens_per_stream: int
    itl_ms: float
    wall_s: float
    delivered_tokens: int
    tokens_per_s: float
    ideal_tokens_per_s: float
    share_of_ideal: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    itl_p50_over_configured: float
    itl_p99_over_configured: float
    routes: dict[str, int]
    errors: list[str]
    client_cpu_s: float = 0.0


USAGE_MARK = b'"choices":[],"usage":{'


def classify(line: bytes) -> str:
    """One SSE line: content (a chunk with generated text), usage, done, error, or other
    (role and finish chunks, blank lines)."""
    if not line.startswith(b"data: "):
        return "other"
    if line.startswith(b"data: [DONE]"):
        return "done"
    if line.startswith(b'data: {"error"'):
        return "error"
    if USAGE_MARK in line:
        return "usage"
    if sse_line_carries_output(line):
        return "content"
    return "other"


def route_of(line: bytes) -> str:
    """`http` or `handle` from a mock chunk's id (`chatcmpl-mock-<route>-...`), else other."""
    marker = b'"id":"chatcmpl-mock-'
    at = line.find(marker)
    if at < 0:
        return "other"
    rest = line[at + len(marker) :]
    return rest[: rest.find(b"-")].decode() if b"-" in rest else "other"


def summarize(
    path: str, records: list[StreamRecord], tokens: int, itl_ms: float, client_cpu_s: float = 0.0
) -> PathResult:
    ok = [r for r in records if r.error is None]
    started = min((r.started for r in records), default=0.0)
    ended = max((r.ended for r in records), default=0.0)
    wall_s = max(ended - started, 1e-9)
    delivered = sum(r.tokens for r in records)
    ideal = len(records) / (itl_ms / 1000)
    ttfts = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    itls = [itl * 1000 for r in ok for itl in r.itls_s]
    p50, p99 = percentile(itls, 50), percentile(itls, 99)
    return PathResult(
        path=path,
        streams=len(records),
        ok_streams=len(ok),
        tokens_per_stream=tokens,
        itl_ms=itl_ms,
        wall_s=wall_s,
        delivered_tokens=delivered,
        tokens_per_s=delivered / wall_s,
        ideal_tokens_per_s=ideal,
        share_of_ideal=delivered / wall_s / ideal if ideal else math.nan,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        itl_p50_ms=p50,
        itl_p99_ms=p99,
        itl_p50_over_configured=p50 / itl_ms,
        itl_p99_over_configured=p99 / itl_ms,
        routes=dict(Counter(r.route or "none" for r in records)),
        errors=sorted({r.error for r in records if r.error is not None}),
        client_cpu_s=client_cpu_s,
    )


def render_table(results: list[PathResult]) -> str:
    lines = [
        "| path | delivered tok/s | share of ideal | TTFT p50 ms | TTFT p99 ms "
        "| ITL p50 ms | ITL p99 ms | ITL p99 / configured | ok streams |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.path} | {r.tokens_per_s:,.0f} | {r.share_of_ideal:.1%} "
            f"| {r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} | {r.itl_p50_ms:.1f} "
            f"| {r.itl_p99_ms:.1f} | {r.itl_p99_over_configured:.2f}x "
            f"| {r.ok_streams}/{r.streams} |"
        )
    return "\n".join(lines)


def request_body(tokens: int, model: str = POOL_ID) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
    ).encode()


async def one_stream(session, url: str, body: bytes) -> StreamRecord:
    record = StreamRecord(started=time.perf_counter())
    last = None
    try:
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as response:
            if response.status != 200:
                text = (await response.read())[:200].decode(errors="replace")
                record.error = f"HTTP {response.status}: {text}"
                return record
            async for line in response.content:
                now = time.perf_counter()
                kind = classify(line)
                if record.route is None and line.startswith(b"data: {"):
                    record.route = route_of(line)
                if kind == "content":
                    if last is None:
                        record.ttft_s = now - record.started
                    else:
                        record.itls_s.append(now - last)
                    last = now
                    record.tokens += 1
                elif kind == "usage":
                    record.usage_tokens = json.loads(line[6:])["usage"]["completion_tokens"]
                elif kind == "error":
                    record.error = line[6:206].decode(errors="replace").strip()
    except Exception as exc:  # a stream cut off counts as failed; the others go on
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.ended = time.perf_counter()
    return record


def check_stream(record: StreamRecord, tokens: int, route: str) -> None:
    """Marks a stream failed when it was short, unaccounted, or served by the wrong path."""
    if record.error is not None:
        return
    if record.tokens != tokens:
        record.error = f"{record.tokens} content chunks, {tokens} expected"
    elif record.usage_tokens != tokens:
        record.error = f"usage said {record.usage_tokens} completion tokens, {tokens} expected"
    elif record.route != route:
        record.error = f"served by the {record.route} route, {route} expected"


async def run_streams(
    base: str, streams: int, tokens: int, route: str
) -> tuple[list[StreamRecord], float]:
    """`streams` streams at once; the records, and this process's CPU seconds meanwhile."""
    import aiohttp

    body = request_body(tokens)
    url = f"{base}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = time.process_time()
        records = await asyncio.gather(*(one_stream(session, url, body) for _ in range(streams)))
        cpu = time.process_time() - cpu
    for record in records:
        check_stream(record, tokens, route)
    return list(records), cpu


async def wait_ready(base: str, route: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Until a stream is served by the expected route (the gateway learns of the pool
    replica's HTTP server within a second or two of the replica starting)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stack exited with {process.returncode} before it was ready")
        try:
            records, _ = await run_streams(base, 1, 2, route)
            if records[0].error is None:
                return
            last = records[0].error
        except Exception as exc:
            last = repr(exc)
        await asyncio.sleep(1)
    raise TimeoutError(f"{base} did not serve by the {route} route in {timeout_s:g} s: {last}")


# --- the stacks ----------------------------------------------------------------------------


def stack_config(max_ongoing: int, batch_ms: float, metrics_port: int) -> str:
    """One tiny dense pool (the mock ignores its weights), room for every stream at once."""
    pool = (
        f"{{id: {POOL_ID}, checkpoint: 'tiny:dense', device: cpu, max_model_len: {MAX_MODEL_LEN},"
        f" max_grammar_compile_s: null, max_ongoing_requests: {max_ongoing},"
        f" target_ongoing_requests: {max_ongoing}, stream_batching_interval_ms: {batch_ms:g}}}"
    )
    return (
        f"server: {{gateway_max_ongoing_requests: {max(1000, max_ongoing)}}}\n"
        f"telemetry: {{metrics_port: {metrics_port}}}\n"
        f"pools:\n  - {pool}\n"
    )


def mock_env(env: dict[str, str], itl_ms: float) -> dict[str, str]:
    return env | {ENGINE_CLS_ENV: ENGINE_CLS, ITL_ENV: f"{itl_ms:g}"}


def start_gemma_serve(
    path: str, port: int, env: dict[str, str], args: argparse.Namespace, log
) -> subprocess.Popen:
    config = WORKDIR / f"data_plane-{path}.yaml"
    config.write_text(stack_config(2 * args.streams, args.batch_ms, free_port()))
    env = mock_env(env, args.itl_ms)
    if path == "gemma-serve-handle":
        env[POOL_HTTP_ENV] = "0"
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/gemma-serve"), "up", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_ray_direct(
    port: int, env: dict[str, str], args: argparse.Namespace, log, haproxy: Path
) -> subprocess.Popen:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_serve-direct",
        "--port",
        str(port),
        "--itl-ms",
        f"{args.itl_ms:g}",
        "--max-ongoing",
        str(2 * args.streams),
    ]
    return subprocess.Popen(
        command,
        env=direct_streaming_env(mock_env(env, args.itl_ms), haproxy),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )


async def run_path(path: str, env: dict[str, str], args: argparse.Namespace) -> PathResult:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    route = EXPECTED_ROUTE[path]
    log_path = WORKDIR / f"data_plane-{path}.log"
    scratch = Path(tempfile.mkdtemp(prefix="dp-haproxy-")) if path == "ray-direct" else None
    with log_path.open("w") as log:
        if scratch is not None:
            process = start_ray_direct(port, env, args, log, scratch)
        else:
            process = start_gemma_serve(path, port, env, args, log)
        started = time.monotonic()
        try:
            await wait_ready(base, route, process, args.start_timeout_s)
            print(f"  {path}: ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
            warm, _ = await run_streams(base, args.warmup_streams, min(args.tokens, 16), route)
            if bad := [r.error for r in warm if r.error]:
                raise RuntimeError(f"{path}: warm-up failed: {bad[0]}")
            await asyncio.sleep(args.settle_s)
            records, cpu = await run_streams(base, args.streams, args.tokens, route)
        except BaseException:
            print(f"  {path}: failed; its log: {log_path}", file=sys.stderr)
            raise
        finally:
            stop(process)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    result = summarize(path, records, args.tokens, args.itl_ms, cpu)
    print(
        f"  {path}: {result.tokens_per_s:,.0f} tok/s, ok {result.ok_streams}/{result.streams}, "
        f"routes {result.routes}" + (f", errors {result.errors[:3]}" if result.errors else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


def client_description() -> str:
    import aiohttp

    loop = type(asyncio.get_running_loop())
    return f"aiohttp {aiohttp.__version__} on {loop.__module__}.{loop.__name__}, in this process"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=256, help="output tokens per stream")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="the mock's inter-token gap")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to measure"
    )
    parser.add_argument(
        "--batch-ms",
        type=float,
        default=50.0,
        help="the pool's stream_batching_interval_ms (the Serve-handle path's batches)",
    )
    parser.add_argument("--warmup-streams", type=int, default=4)
    add_stack_options(parser, "data_plane", settle_s=3.0, start_timeout_s=240.0)
    args = parser.parse_args(argv)
    if args.streams < 1 or args.tokens < 2 or args.itl_ms <= 0:
        parser.error("--streams >= 1, --tokens >= 2 and --itl-ms > 0, please")
    return args


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    os.environ.update({k: env[k] for k in ("GEMMA_SERVE_CACHE_DIR", "HF_HUB_OFFLINE")})
    from service.tinymodels import build_tiny_checkpoints

    build_tiny_checkpoints(Path(env["GEMMA_SERVE_CACHE_DIR"]))
    results, failures = await run_each(args.paths, lambda path: run_path(path, env, args))
    machine = machine_info()
    print(
        f"\nmachine: {machine['cpu_model']}, {machine['nproc']} CPUs; {args.streams} streams "
        f"of {args.tokens} tokens at once, mock ITL {args.itl_ms:g} ms (ideal "
        f"{args.streams / (args.itl_ms / 1000):,.0f} tok/s); pool batching {args.batch_ms:g} ms\n"
    )
    if results:
        print(render_table(results))
    for path, error in failures.items():
        print(f"\n{path}: FAILED: {error}")
    report = {
        "machine": machine,
        "config": {
            "streams": args.streams,
            "tokens": args.tokens,
            "itl_ms": args.itl_ms,
            "batch_ms": args.batch_ms,
            "warmup_streams": args.warmup_streams,
            "ideal_tokens_per_s": args.streams / (args.itl_ms / 1000),
            "client": client_description(),
        },
        "results": [asdict(r) for r in results],
        "failures": failures,
    }
    write_report("data_plane", argv if argv is not None else sys.argv[1:], args.out, report)
    return 1 if failures or any(r.ok_streams < r.streams for r in results) else 0


def serve_direct(argv: list[str]) -> int:
    """The ray-direct driver (a subprocess of the benchmark)."""
    parser = argparse.ArgumentParser(prog="data_plane.py _serve-direct")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--itl-ms", type=float, required=True)
    parser.add_argument("--max-ongoing", type=int, required=True)
    args = parser.parse_args(argv)
    config = ray_llm_config(
        POOL_ID,
        dense_checkpoint(dict(os.environ)),
        {"max_model_len": MAX_MODEL_LEN, "enforce_eager": True},
        args.max_ongoing,
        # The replica reads the engine class; the driver's environment has it too.
        env_vars={ENGINE_CLS_ENV: ENGINE_CLS, ITL_ENV: f"{args.itl_ms:g}"},
    )
    return serve_ray_llm(args.port, config, "ray-direct")


def run(argv: list[str]) -> int:
    if argv[:1] == ["_serve-direct"]:
        return serve_direct(argv[1:])
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(argv))
    return uvloop.run(main(argv))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
