"""A burst of concurrent streams against a running service: how many are served, how many are
refused (and with what), how many break, and how long the served ones waited.

The same burst is sent twice, the second once the first has drained. On a freshly started
service the first burst meets pools that have not yet shown a drain rate, so their request
counts alone decide what is shed; the second meets pools whose drain rate the gateway has
measured, so it sheds on the predicted wait (docs/routing.md). The ratio of the two is the
figure; both run on the same service, minutes apart.

    make run            # in one shell: a fresh embedded default
    make bench-burst    # in another (ARGS="--streams 100 --url ..." to change it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: the connection broke
    complete: bool  # a 200 stream that ended with [DONE]
    ttft_s: float | None
    total_s: float
    retry_after: bool = False  # a refusal (429/503) that said when to come back


async def stream_once(http: httpx.AsyncClient, model: str, max_tokens: int) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    started = time.monotonic()
    ttft = None
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                retry_after = "retry-after" in response.headers
                elapsed = time.monotonic() - started
                return Outcome(response.status_code, False, None, elapsed, retry_after)
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                elif ttft is None and json.loads(line[6:]).get("choices"):
                    ttft = time.monotonic() - started
            return Outcome(200, done, ttft, time.monotonic() - started)
    except httpx.HTTPError:
        return Outcome(0, False, ttft, time.monotonic() - started)


async def burst(url: str, model: str, streams: int, max_tokens: int) -> list[Outcome]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        return list(
            await asyncio.gather(*(stream_once(http, model, max_tokens) for _ in range(streams)))
        )


def report(name: str, outcomes: list[Outcome], wall_s: float) -> dict[str, object]:
    served = [o for o in outcomes if o.complete]
    ttfts = sorted(o.ttft_s for o in served if o.ttft_s is not None)
    statuses = Counter(o.status for o in outcomes if not o.complete)
    row = {
        "burst": name,
        "sent": len(outcomes),
        "served": len(served),
        "refused": {str(k): v for k, v in sorted(statuses.items()) if k not in (0, 200)},
        "refused_without_retry_after": sum(
            1 for o in outcomes if o.status in (429, 503) and not o.retry_after
        ),
        "broken": statuses.get(0, 0) + statuses.get(200, 0),
        "ttft_p50_s": round(statistics.median(ttfts), 2) if ttfts else None,
        "ttft_max_s": round(ttfts[-1], 2) if ttfts else None,
        "wall_s": round(wall_s, 1),
    }
    print(json.dumps(row))
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="gemma-4", help="an alias or a pool id")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--pause-s", type=float, default=5.0, help="between the two bursts")
    args = parser.parse_args()
    rows = []
    for name in ("first (counts decide)", "second (drain rate known)"):
        started = time.monotonic()
        outcomes = await burst(args.url, args.model, args.streams, args.max_tokens)
        rows.append(report(name, outcomes, time.monotonic() - started))
        await asyncio.sleep(args.pause_s)
    first, second = (row["served"] for row in rows)
    print(f"served, second burst / first: {second}/{first} = {second / max(1, first):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
