"""Locust users that speak the OpenAI HTTP API to gemma-serve, streamed or not.

The runner (:mod:`loadtests.runner`) sets these environment variables:

``GEMMA_LOADTEST_PROFILE``  profile name or YAML path (required)
``GEMMA_LOADTEST_SEED``     payload seed (defaults to the profile's seed)
``GEMMA_LOADTEST_RESULTS``  JSONL file that gets one line per request (optional)
``GEMMA_LOADTEST_QPS``      open-loop total rate; unset means closed loop
``GEMMA_LOADTEST_USERS``    user count, used to split the open-loop rate between users

Arrivals. Closed loop: each user sends its next request after a short random pause
(``0..CLOSED_LOOP_MAX_WAIT_S``), so concurrency equals the user count. Open loop: locust has no
true open-loop mode, so each user paces itself as a Poisson process of rate ``qps / users``
(exponential gaps between *scheduled start times*, not after each response). The sum of
independent Poisson processes is a Poisson process of rate ``qps``. It is an approximation: a user
is busy while its request runs, so when a response takes longer than the next gap that arrival
starts late. Run enough users that each one's rate is well below ``1 / E2E latency``.

Streams are timed line by line as the bytes arrive (``requests`` ``iter_lines`` over a chunked
response); besides the POST entry (time to response headers) each request adds locust entries of
type ``TTFT``, ``ITL`` and ``E2E``. API keys are read from the tenants' environment variables and
sent as bearer tokens; they are never logged or written to the results.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

from locust import HttpUser, between, task

from loadtests import measure
from loadtests.profiles import Profile, generate_payloads, load_profile

CLOSED_LOOP_MAX_WAIT_S = 0.1
PAYLOAD_POOL = 128
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

_profile: Profile | None = None
_payloads: list[dict] = []
_user_ids = itertools.count()


def _load() -> tuple[Profile, list[dict]]:
    """Load the profile and a deterministic payload pool once per process."""
    global _profile, _payloads
    if _profile is None:
        _profile = load_profile(os.environ["GEMMA_LOADTEST_PROFILE"])
        seed_text = os.environ.get("GEMMA_LOADTEST_SEED")
        seed = int(seed_text) if seed_text else None
        _payloads = generate_payloads(_profile, PAYLOAD_POOL, seed=seed)
    return _profile, _payloads


def _qps() -> float | None:
    text = os.environ.get("GEMMA_LOADTEST_QPS")
    return float(text) if text else None


class _OpenAIUser(HttpUser):
    abstract = True
    endpoint = "chat"

    def wait_time(self) -> float:  # type: ignore[override]
        qps = _qps()
        if qps is None:
            return between(0, CLOSED_LOOP_MAX_WAIT_S)(self)
        now = time.monotonic()
        # A user more than a second behind its schedule drops the backlog instead of bursting.
        self._next_arrival = max(self._next_arrival, now - 1.0) + random.expovariate(
            qps / self._num_users
        )
        return max(0.0, self._next_arrival - now)

    def on_start(self) -> None:
        self.profile, self.payloads = _load()
        self.index = next(_user_ids)
        self._num_users = max(1, int(os.environ.get("GEMMA_LOADTEST_USERS") or 1))
        self._next_arrival = time.monotonic()
        qps = _qps()
        if qps is not None:
            # Poisson arrivals are memoryless: the first one comes an exponential gap after start
            # (without this every user would fire at once when spawned).
            self._next_arrival += random.expovariate(qps / self._num_users)
            time.sleep(self._next_arrival - time.monotonic())  # gevent-patched by locust
        self._sent = 0
        self.headers = {
            "Accept": "text/event-stream" if self.profile.stream else "application/json"
        }
        self.tenant: str | None = None
        if self.profile.tenants:
            tenant = self.profile.tenants[self.index % len(self.profile.tenants)]
            self.tenant = tenant.name
            self.headers["Authorization"] = f"Bearer {os.environ[tenant.key_env]}"
        path = os.environ.get("GEMMA_LOADTEST_RESULTS")
        self._results = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115

    def on_stop(self) -> None:
        if self._results is not None:
            self._results.close()
            self._results = None

    def _next_payload(self) -> dict:
        # User i takes payloads i, i + users, i + 2 * users, ... of the seeded pool.
        i = (self.index + self._sent * self._num_users) % len(self.payloads)
        self._sent += 1
        return self.payloads[i]

    def _fire(self, kind: str, name: str, seconds: float | None) -> None:
        if seconds is None:
            return
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=None,
            context={},
        )

    @task
    def send(self) -> None:
        body = self._next_payload()
        path = PATHS[self.endpoint]
        name = f"{self.endpoint}{' stream' if body.get('stream') else ''}"
        record: dict = {
            "start": time.time(),
            "ok": False,
            "status": 0,
            "stream": bool(body.get("stream")),
            "model": body.get("model"),
            "ttft_s": None,
            "itl_s": None,
            "e2e_s": None,
            "output_tokens": 0,
            "tenant": self.tenant,
            "error": None,
        }
        t0 = time.perf_counter()
        with self.client.post(
            path, json=body, headers=self.headers, stream=True, catch_response=True, name=name
        ) as resp:
            record["status"] = resp.status_code
            try:
                if resp.status_code != 200:
                    text = (resp.text or str(resp.error or ""))[:300]
                    raise RuntimeError(f"HTTP {resp.status_code}: {text}")
                if body.get("stream"):
                    timing = self._read_stream(resp, t0)
                    record["ttft_s"] = measure.ttft_s(timing)
                    record["itl_s"] = measure.itl_s(timing)
                    record["output_tokens"] = timing.output_tokens
                    record["e2e_s"] = measure.e2e_s(timing)
                else:
                    data = resp.json()
                    record["e2e_s"] = time.perf_counter() - t0
                    usage = data.get("usage") or {}
                    record["output_tokens"] = int(usage.get("completion_tokens") or 0)
                record["ok"] = True
                resp.success()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a failed request
                record["e2e_s"] = time.perf_counter() - t0
                record["error"] = f"{type(exc).__name__}: {exc}"[:500]
                resp.failure(record["error"])
        if record["ok"]:
            self._fire("TTFT", name, record["ttft_s"])
            self._fire("ITL", name, record["itl_s"])
            self._fire("E2E", name, record["e2e_s"])
        if self._results is not None:
            self._results.write(json.dumps(record) + "\n")

    @staticmethod
    def _read_stream(resp, t0: float) -> measure.StreamTiming:
        events: list[tuple[float, str]] = []
        done = False
        resp.encoding = "utf-8"  # SSE is UTF-8; without this requests yields bytes
        for line in resp.iter_lines(chunk_size=1024, decode_unicode=True):
            events.append((time.perf_counter() - t0, line))
            if line.strip() == "data: [DONE]":
                done = True
                break
        timing = measure.timing_from_events(events)
        if not done:
            raise measure.StreamError("stream ended without data: [DONE]")
        return timing


class ChatUser(_OpenAIUser):
    endpoint = "chat"


class CompletionUser(_OpenAIUser):
    endpoint = "completions"
