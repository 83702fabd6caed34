"""What the full gemma-serve stack costs over vLLM's own OpenAI server, same tiny checkpoint.

Runs (b) `python -m vllm.entrypoints.openai.api_server` alone, then (a) the full stack
(Serve proxy -> gateway -> pool LLMServer -> vLLM) with both embedded pools up, as `make run`
starts them, and drives each with streamed chat requests at concurrency 1 and 8, pinned to the
dense pool (or spread over both pools with `--traffic both`). Prints TTFT p50/p95 and
requests/s, with the ratio a/b measured in the same run. `--cpu-binds` compares placements of
the two CPU engines' threads (`MOE_BIND:DENSE_BIND`, each a VLLM_CPU_OMP_THREADS_BIND value, or
`default` for gemma-serve's own).

    make bench            # or: .venv/bin/python benchmarks/gateway_overhead.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.local_ports import free_port

ROOT = Path(__file__).resolve().parents[1]
POOL_ID = "gemma-4-31b-it"
MOE_POOL_ID = "gemma-4-26b-a4b-it"
MAX_MODEL_LEN = 2048


@dataclass
class Figures:
    ttft_p50_ms: float
    ttft_p95_ms: float
    requests_per_s: float


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def bench_env() -> dict[str, str]:
    cache = ROOT / ".cache"
    env = dict(os.environ)
    for name, value in {
        "GEMMA_SERVE_CACHE_DIR": str(cache / "gemma-serve"),
        "RAY_TMPDIR": str(cache / "ray"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }.items():
        env.setdefault(name, value)
    return env


def tiny_checkpoint(env: dict[str, str]) -> Path:
    from service.tinymodels import build_tiny_checkpoints

    return build_tiny_checkpoints(Path(env["GEMMA_SERVE_CACHE_DIR"]))["dense"]


def start_vllm(checkpoint: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(checkpoint),
            "--served-model-name",
            POOL_ID,
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-prefix-caching",
            "--enforce-eager",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "gemma4",
            "--reasoning-parser",
            "gemma4",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stack_config(interval_ms: float, cpu_binds: str) -> str:
    """Both embedded pools; `cpu_binds` is `MOE:DENSE` or `default`."""
    binds = (
        {}
        if cpu_binds == "default"
        else dict(zip(("moe", "dense"), cpu_binds.split(":"), strict=True))
    )
    lines = ["pools:"]
    for pool_id, variant in ((MOE_POOL_ID, "moe"), (POOL_ID, "dense")):
        bind = f", cpu_threads_bind: '{binds[variant]}'" if binds else ""
        lines.append(
            f"  - {{id: {pool_id}, checkpoint: 'tiny:{variant}', device: cpu,"
            f" max_model_len: {MAX_MODEL_LEN}, stream_batching_interval_ms: {interval_ms}{bind}}}"
        )
    return "\n".join(lines) + "\n"


def start_stack(
    port: int, env: dict[str, str], interval_ms: float, cpu_binds: str, workdir: Path
) -> subprocess.Popen:
    config = workdir / f"bench-{int(interval_ms)}-{cpu_binds.replace(':', '_')}.yaml"
    config.write_text(stack_config(interval_ms, cpu_binds))
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/gemma-serve"), "up", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    # SIGINT lets `gemma-serve up` shut Serve and Ray down; the group kill is a backstop.
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def wait_ready(base: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                r = await client.post(f"{base}/v1/chat/completions", json=request_body(1))
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(2)
    raise TimeoutError(f"{base} did not become ready in {timeout_s} s")


def request_body(max_tokens: int, model: str = POOL_ID) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }


async def one_request(
    client: httpx.AsyncClient, base: str, tokens: int, model: str = POOL_ID
) -> float:
    started = time.perf_counter()
    ttft = None
    body = request_body(tokens, model)
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if any(_has_token(c.get("delta", {})) for c in chunk.get("choices", [])):
                    ttft = time.perf_counter() - started
    assert ttft is not None, "no content streamed"
    return ttft


def _has_token(delta: dict) -> bool:
    # Gemma 4's reasoning parser may put the first tokens in `reasoning`, not `content`.
    return bool(delta.get("content") or delta.get("reasoning") or delta.get("tool_calls"))


async def measure(
    base: str, concurrency: int, requests: int, tokens: int, models: list[str]
) -> Figures:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts: list[float] = []
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for model in models * 3:  # warm connections and caches
            await one_request(client, base, tokens, model)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                ttfts.append(await one_request(client, base, tokens, models[i % len(models)]))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    q = statistics.quantiles(ttfts, n=20)
    return Figures(statistics.median(ttfts) * 1000, q[18] * 1000, requests / wall)


async def run_target(
    name: str, start, base: str, args, models: list[str] | None = None
) -> dict[int, Figures]:
    process = start()
    try:
        await wait_ready(base)
        await asyncio.sleep(args.settle_s)  # let start-up work drain off the 2 cores
        results = {}
        for c in args.concurrency:
            results[c] = await measure(base, c, args.requests, args.tokens, models or [POOL_ID])
            print(f"  {name} c={c}: {results[c]}", file=sys.stderr, flush=True)
        return results
    finally:
        stop(process)
        await asyncio.sleep(5)


def table(results: dict[str, dict[int, Figures]], concurrency: list[int]) -> str:
    bare = results["vllm"]
    lines = [
        "| setup | conc. | TTFT p50 ms | TTFT p95 ms | req/s | TTFT p50 a-b ms | req/s a/b |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_c in results.items():
        for c in concurrency:
            f = by_c[c]
            delta = f"{f.ttft_p50_ms - bare[c].ttft_p50_ms:+.1f}" if name != "vllm" else "-"
            ratio = f"{f.requests_per_s / bare[c].requests_per_s:.2f}" if name != "vllm" else "-"
            lines.append(
                f"| {name} | {c} | {f.ttft_p50_ms:.1f} | {f.ttft_p95_ms:.1f} | "
                f"{f.requests_per_s:.1f} | {delta} | {ratio} |"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=80, help="measured requests per point")
    parser.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        default=[50.0],
        help="stream_batching_interval_ms values of the full stack to measure",
    )
    parser.add_argument(
        "--cpu-binds",
        nargs="+",
        default=["default"],
        metavar="MOE:DENSE",
        help="CPU thread placements of the two engines to measure, e.g. auto:auto 0:1",
    )
    parser.add_argument(
        "--traffic",
        choices=["dense", "both"],
        default="dense",
        help="the full stack's requests: pinned to the dense pool, or alternating both pools",
    )
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument(
        "--stack-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the full stack, e.g. Ray Serve flags",
    )
    args = parser.parse_args()

    env = bench_env()
    checkpoint = tiny_checkpoint(env)
    stack_env = env | dict(item.split("=", 1) for item in args.stack_env)
    workdir = ROOT / ".cache" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, Figures]] = {}

    port = free_port()
    results["vllm"] = await run_target(
        "vllm", lambda: start_vllm(checkpoint, port, env), f"http://127.0.0.1:{port}", args
    )
    models = [MOE_POOL_ID, POOL_ID] if args.traffic == "both" else [POOL_ID]
    for interval in args.intervals:
        for binds in args.cpu_binds:
            port = free_port()
            extra = ", ".join([f"cpu {binds}", *args.stack_env])
            name = f"gemma-serve (batch {interval:g} ms, {extra})"
            results[name] = await run_target(
                name,
                lambda p=port, i=interval, b=binds: start_stack(p, stack_env, i, b, workdir),
                f"http://127.0.0.1:{port}",
                args,
                models,
            )

    print(
        f"\nmachine: {platform.node()} {cpu_model()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {args.requests} streamed chat requests of "
        f"{args.tokens} tokens per point to {' and '.join(models)} (bare vLLM: {POOL_ID}); "
        "tiny Gemma 4 checkpoints on vllm-cpu\n"
    )
    print(table(results, args.concurrency))


if __name__ == "__main__":
    asyncio.run(main())
