"""The data plane: the gateway sends each request to one pool replica's own vLLM server over
HTTP and relays its answer, so generated tokens never cross a Ray actor call.

A pool with no replica in the directory (scaled to zero, or starting) is served through its
Serve handle instead, which also makes Serve start a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.errors import PoolAtCapacity
from service.pool_http import CHECK_HEADER, UNAVAILABLE_HEADER
from service.replica_directory import ReplicaEntry
from service.routing.replicas import Candidate, choose

log = logging.getLogger(__name__)

PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "tokenize": "/tokenize",
    "detokenize": "/detokenize",
}
# What a pool's Serve handle serves too, for a pool with no replica announced yet.
HANDLE_METHODS = {"chat", "completions"}
# A replica that refused a connection or a request is left out for this long (it may be gone).
FAILED_REPLICA_PAUSE_S = 5.0
CONNECT_TIMEOUT_S = 5.0
AFFINITY_PREFIX_CHARS = 2048
EVENT_END = b"\n\n"
RETRY_AFTER_S = 5
# A pool serves its vLLM-only APIs (Responses, Messages, tokenizer) over HTTP only.
WAIT_FOR_REPLICA_S = 5.0


class ReplicaUnavailable(Exception):
    """The replica refused the request before starting it: it is draining or its engine died.
    Nothing reached the client; the request may go to another replica."""


@dataclass(frozen=True)
class PoolAnswer:
    """A whole (non-streamed) answer from a replica: status and JSON body, as sent."""

    status: int
    body: bytes

    @property
    def error(self) -> Any:
        """The engine's error, when it sent one (`_engine_error` in dispatch reads it)."""
        if self.status < 400:
            return None
        try:
            info = json.loads(self.body).get("error") or {}
        except (ValueError, AttributeError):
            info = {}
        return _ErrorInfo(
            code=int(info.get("code") or self.status) if isinstance(info, dict) else self.status,
            message=str(info.get("message", "")) if isinstance(info, dict) else "",
            param=info.get("param") if isinstance(info, dict) else None,
        )

    @property
    def usage(self) -> Any:
        """The usage object, read from the end of the body without parsing the rest."""
        at = self.body.rfind(b'"usage":')
        if at < 0:
            return None
        try:
            usage, _ = json.JSONDecoder().raw_decode(self.body[at + 8 :].decode().lstrip())
            # Chat and completions name them prompt/completion; Responses and Messages input/output.
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            output = usage.get("completion_tokens", usage.get("output_tokens"))
            return _Usage(int(prompt), int(output or 0))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class _ErrorInfo:
    code: int
    message: str
    param: str | None


@dataclass(frozen=True)
class _Usage:
    prompt_tokens: int
    completion_tokens: int


class HttpStream:
    """One request to one replica: a PoolAnswer, or the SSE events as lists of whole events."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        url: str,
        body: bytes,
        headers: dict[str, str],
        release: Callable[[bool], None],
    ):
        self._session = session
        self._url = url
        self._body = body
        self._headers = headers
        self._release = release
        self._response: aiohttp.ClientResponse | None = None
        self._streaming = False
        self._pending = b""
        self._released = False

    def __aiter__(self) -> HttpStream:
        return self

    async def __anext__(self) -> Any:
        if self._response is None:
            return await self._open()
        if not self._streaming:
            raise StopAsyncIteration
        return await self._next_events()

    async def _open(self) -> Any:
        try:
            self._response = await self._session().post(
                self._url, data=self._body, headers=self._headers
            )
        except aiohttp.ClientConnectionError:
            self._finish(failed=True)
            raise
        if self._response.status == 503 and UNAVAILABLE_HEADER in self._response.headers:
            why = self._response.headers[UNAVAILABLE_HEADER]
            self._response.release()
            self._finish(failed=True)
            raise ReplicaUnavailable(f"{self._url}: {why}")
        kind = self._response.headers.get("content-type", "")
        if self._response.status != 200 or not kind.startswith("text/event-stream"):
            body = await self._response.read()
            self._finish()
            return PoolAnswer(self._response.status, body)
        self._streaming = True
        return await self._next_events()

    async def _next_events(self) -> list[str]:
        """The next whole events. State lives here, not in a generator, so a read cancelled
        (the client left) can be followed by another (the gateway still wants the usage)."""
        assert self._response is not None
        while True:
            data = await self._response.content.readany()
            if not data:
                self._streaming = False
                self._finish()
                rest, self._pending = self._pending, b""
                if rest.strip():
                    return [rest.decode() + "\n\n"]
                raise StopAsyncIteration
            self._pending += data
            end = self._pending.rfind(EVENT_END)
            if end >= 0:
                whole, self._pending = self._pending[: end + 2], self._pending[end + 2 :]
                return [e.decode() + "\n\n" for e in whole.split(EVENT_END) if e]

    def cancel(self) -> None:
        """Closing the connection makes vLLM abort the request (it watches for disconnects)."""
        if self._response is not None and not self._response.closed:
            self._response.close()
        self._finish()

    def _finish(self, failed: bool = False) -> None:
        if not self._released:
            self._released = True
            self._release(failed)


class HttpBackend:
    """Chooses a replica of the pool and streams from it; the Serve handle when none is known."""

    def __init__(self, fallback: Any, affinity: dict[str, int | None]):
        """`affinity`: per pool, the imbalance at which prefix affinity yields to load, or
        None for no affinity."""
        self._fallback = fallback
        self._affinity = affinity
        self._replicas: dict[str, list[ReplicaEntry]] = {}
        self._in_flight: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._updated = asyncio.Event()  # set, and replaced, on every directory read

    def set_replicas(self, replicas: dict[str, list[ReplicaEntry]]) -> None:
        self._replicas = replicas
        self._updated.set()
        self._updated = asyncio.Event()

    async def _wait_for_replica(self, pool_id: str) -> None:
        """Waits a few directory reads for a replica of the pool (one that just started may
        not have been read yet); 503 if none comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_FOR_REPLICA_S
        while not self._candidates(pool_id):
            if (left := deadline - loop.time()) <= 0:
                raise PoolAtCapacity(
                    f"the model pool '{pool_id}' has no replica ready; retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._updated.wait(), left)

    def replica_count(self, pool_id: str) -> int:
        return len(self._replicas.get(pool_id, ()))

    def stream(
        self,
        pool_id: str,
        method: str,
        request: Any,
        trace_headers: dict[str, str],
        checks: bool = False,
        request_id: str = "",
    ) -> Any:
        candidates = self._candidates(pool_id)
        if not candidates:
            if method in HANDLE_METHODS:
                return self._fallback.stream(pool_id, method, request, trace_headers)
            return _Deferred(
                lambda: self._wait_for_replica(pool_id),
                lambda: self.stream(pool_id, method, request, trace_headers, checks, request_id),
            )
        imbalance = self._affinity.get(pool_id)
        key = affinity_key(request) if imbalance is not None else None
        chosen = choose(candidates, self._in_flight, key, imbalance or 0)
        headers = {"content-type": "application/json", **trace_headers}
        if request_id:
            headers["x-request-id"] = request_id
        if checks:
            headers[CHECK_HEADER] = "1"
        body = request.model_dump_json(exclude_unset=True, by_alias=True).encode()
        url = chosen.url
        self._in_flight[url] = self._in_flight.get(url, 0) + 1

        def release(failed: bool) -> None:
            self._in_flight[url] -= 1
            if failed:
                self._paused_until[url] = time.monotonic() + FAILED_REPLICA_PAUSE_S

        return HttpStream(self._client, url + PATHS[method], body, headers, release)

    def _candidates(self, pool_id: str) -> list[Candidate]:
        now = time.monotonic()
        entries = self._replicas.get(pool_id, ())
        live = [e for e in entries if self._paused_until.get(e.url, 0.0) <= now]
        return [Candidate(e.url, e.waiting) for e in live]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Deferred:
    """A stream that first waits for the pool to have a replica, then opens one to it."""

    def __init__(self, wait: Callable[[], Any], open_stream: Callable[[], Any]):
        self._wait = wait
        self._open = open_stream
        self._stream: Any = None

    def __aiter__(self) -> _Deferred:
        return self

    async def __anext__(self) -> Any:
        if self._stream is None:
            await self._wait()
            self._stream = self._open()
        return await anext(self._stream)

    def cancel(self) -> None:
        if self._stream is not None:
            self._stream.cancel()


def affinity_key(request: Any) -> str:
    """The start of the prompt, which requests sharing a cached prefix have in common."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        text = json.dumps(messages[:2], default=str)
    else:
        text = str(getattr(request, "prompt", ""))
    return text[:AFFINITY_PREFIX_CHARS]
