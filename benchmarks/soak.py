"""A soak: mixed load on the embedded default for a long time, watching every process for leaks.

Starts the embedded default on free ports (as `make run` would), sends a seeded mix of requests
from a few clients for `--minutes`, and samples the resident memory and open file descriptors
of every process the service runs (Ray's own, the Serve proxy and controller, each gateway and
pool replica, each vLLM EngineCore) every `--sample-s`. It prints one row per process with its
RSS and fd slopes over the run after the warm-up (least squares, per minute), and the request
outcomes. The mix covers what users send: streamed and plain chat on the alias and on pinned
pools, completions, JSON-schema output, tools, requests the gateway refuses with a 400, and
clients that leave mid-stream.

Exit status 1 if any request broke (a 5xx other than a clean 503, a broken connection, a stream
without [DONE]), if the gateway's in-flight gauge is not back to 0 at the end, or if a slope is
over its bound.

    make soak                       # 42 minutes, slopes over the second half (ARGS="--minutes 5")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psutil

POOLS = ("gemma-4-26b-a4b-it", "gemma-4-31b-it")
# RSS may rise by 1 MiB per minute (30 MiB over the default run) before it counts as a leak.
RSS_SLOPE_LIMIT_MIB_PER_MIN = 1.0
FD_SLOPE_LIMIT_PER_MIN = 0.5


def _chat(model: str, stream: bool, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea, briefly."}],
        "max_tokens": 24,
        "stream": stream,
        **extra,
    }


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
    },
}


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    body: dict[str, object]
    expect: int = 200
    leave_after_chunks: int | None = None  # the client leaves mid-stream


KINDS = (
    Kind("chat-stream-alias", "/v1/chat/completions", _chat("gemma-4", True)),
    Kind("chat-alias", "/v1/chat/completions", _chat("gemma-4", False)),
    Kind("chat-stream-moe", "/v1/chat/completions", _chat(POOLS[0], True)),
    Kind("chat-stream-dense", "/v1/chat/completions", _chat(POOLS[1], True)),
    Kind(
        "completions",
        "/v1/completions",
        {"model": "gemma-4", "prompt": ["Once upon", "A sea"], "max_tokens": 16},
    ),
    Kind(
        "json-schema", "/v1/chat/completions", _chat("gemma-4", False, response_format=JSON_FORMAT)
    ),
    Kind("tools", "/v1/chat/completions", _chat("gemma-4", True, tools=[WEATHER_TOOL])),
    Kind("bad-request", "/v1/chat/completions", _chat("gemma-4", False, top_p={}), expect=400),
    Kind("leaves-mid-stream", "/v1/chat/completions", _chat("gemma-4", True), leave_after_chunks=3),
)


@dataclass
class Outcomes:
    by_kind: Counter[str] = field(default_factory=Counter)
    broken: Counter[str] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def fail(self, kind: Kind, why: str) -> None:
        self.broken[kind.name] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind.name}: {why}")


async def send(http: httpx.AsyncClient, kind: Kind, outcomes: Outcomes) -> None:
    outcomes.by_kind[kind.name] += 1
    try:
        async with http.stream("POST", kind.path, json=kind.body) as response:
            if response.status_code in (429, 503) and response.headers.get("retry-after"):
                outcomes.refused[response.status_code] += 1
                await response.aread()
                return
            if response.status_code != kind.expect:
                body = (await response.aread())[:200]
                outcomes.fail(kind, f"status {response.status_code}: {body!r}")
                return
            if not kind.body.get("stream") or kind.expect != 200:
                await response.aread()
                return
            chunks = 0
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    return
                if line.startswith("data: "):
                    if '"error"' in line:
                        outcomes.fail(kind, line[:200])
                        return
                    chunks += 1
                    if kind.leave_after_chunks is not None and chunks >= kind.leave_after_chunks:
                        return  # leaving the `async with` closes the connection mid-stream
            outcomes.fail(kind, "stream ended without [DONE]")
    except httpx.HTTPError as error:
        outcomes.fail(kind, f"{type(error).__name__}: {error}")


async def client(url: str, seed: int, deadline: float, outcomes: Outcomes) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            await send(http, rng.choice(KINDS), outcomes)
            await asyncio.sleep(rng.uniform(0, 0.2))


def _label(process: psutil.Process) -> str:
    try:
        title = " ".join(process.cmdline())[:80] or process.name()
    except psutil.Error:
        return "gone"
    return title.split(" --")[0].strip()


@dataclass
class Series:
    label: str
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (min, RSS MiB, fds)


def sample(series: dict[int, Series], started: float) -> None:
    minute = (time.monotonic() - started) / 60
    for process in psutil.Process().children(recursive=True):
        try:
            with process.oneshot():
                rss = process.memory_info().rss / 2**20
                fds = process.num_fds()
        except psutil.Error:
            continue
        if process.pid not in series:
            series[process.pid] = Series(_label(process))
        series[process.pid].samples.append((minute, rss, fds))


def slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope


async def watch(
    series: dict[int, Series], started: float, every_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await asyncio.to_thread(sample, series, started)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


def in_flight(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_gemma_serve_requests_in_flight{")
    )


async def settled_in_flight(metrics_url: str, within_s: float = 15) -> float:
    """The gauge is sampled every stats interval and exported with a lag: give it time."""
    give_up = time.monotonic() + within_s
    while (left := await asyncio.to_thread(in_flight, metrics_url)) and time.monotonic() < give_up:
        await asyncio.sleep(1)
    return left


def process_rows(series: dict[int, Series], warmup_min: float) -> list[dict[str, object]]:
    rows = []
    for pid, entry in sorted(series.items(), key=lambda item: item[1].label):
        kept = [s for s in entry.samples if s[0] >= warmup_min]
        if len(kept) < 3:
            continue  # a short-lived helper process
        rows.append(
            {
                "pid": pid,
                "process": entry.label,
                "rss_mib_start": round(kept[0][1], 1),
                "rss_mib_end": round(kept[-1][1], 1),
                "rss_mib_per_min": round(slope([(m, r) for m, r, _ in kept]), 3),
                "fds_start": kept[0][2],
                "fds_end": kept[-1][2],
                "fds_per_min": round(slope([(m, float(f)) for m, _, f in kept]), 3),
            }
        )
    return rows


async def soak(url: str, metrics_url: str, args: argparse.Namespace) -> int:
    outcomes = Outcomes()
    series: dict[int, Series] = {}
    started = time.monotonic()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(series, started, args.sample_s, stop))
    deadline = started + args.minutes * 60
    await asyncio.gather(
        *(client(url, args.seed + i, deadline, outcomes) for i in range(args.clients))
    )
    stop.set()
    await watcher
    left_in_flight = await settled_in_flight(metrics_url)

    rows = process_rows(series, args.minutes * args.warmup_share)
    for row in rows:
        print(json.dumps(row))
    summary = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": sum(outcomes.by_kind.values()),
        "by_kind": dict(outcomes.by_kind),
        "broken": dict(outcomes.broken),
        "refused": {str(k): v for k, v in outcomes.refused.items()},
        "in_flight_at_end": left_in_flight,
        "max_rss_mib_per_min": max((r["rss_mib_per_min"] for r in rows), default=0),
        "max_fds_per_min": max((r["fds_per_min"] for r in rows), default=0),
    }
    print(json.dumps(summary))
    for example in outcomes.examples:
        print("broken:", example, file=sys.stderr)
    leaks = [
        r["process"]
        for r in rows
        if r["rss_mib_per_min"] > RSS_SLOPE_LIMIT_MIB_PER_MIN
        or r["fds_per_min"] > FD_SLOPE_LIMIT_PER_MIN
    ]
    for leak in leaks:
        print(f"over a slope bound: {leak}", file=sys.stderr)
    return 1 if outcomes.broken or left_in_flight or leaks else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=42)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--sample-s", type=float, default=20)
    # vLLM's CPU workers grow ~1.5 MiB/min for their first half hour, then level off
    # (benchmarks/RESULTS.md, "Soak"): only the second half is fitted.
    parser.add_argument("--warmup-share", type=float, default=0.5, help="of the run, not fitted")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise

    from service.cli import embedded_default_on_free_ports, metrics_url

    with embedded_default_on_free_ports() as settings:
        url = f"http://127.0.0.1:{settings.server.port}"
        return asyncio.run(soak(url, metrics_url(settings), args))


if __name__ == "__main__":
    raise SystemExit(main())
