"""Faults a test can put between the gateway and its clients or its Redis: a TCP proxy that
delays Redis's replies or refuses connections, and raw-socket clients that leave at a chosen
moment of a request (what an HTTP library will not do on purpose)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import redis

from service.local_ports import free_port

LIMITER_PREFIX = "gs:"  # service.access.stores.build_limiter's default


class RedisProxy:
    """Forwards loopback TCP to a Redis; `delay_s` holds each reply that long (a slow Redis),
    `down()` cuts every connection and refuses new ones (an outage) until `up()`."""

    def __init__(self, target_url: str):
        target = urlsplit(target_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.delay_s = 0.0
        self._down = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        started.set()
        self._loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, delayed=False),
            self._pipe(up_reader, writer, delayed=True),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def down(self) -> None:
        self._down = True
        self._loop.call_soon_threadsafe(self._cut_all)

    def up(self) -> None:
        self._down = False

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextmanager
def redis_proxy(target_url: str) -> Iterator[RedisProxy]:
    proxy = RedisProxy(target_url)
    try:
        yield proxy
    finally:
        proxy.close()


def slots_held(redis_url: str, tenant: str) -> int:
    """Concurrency slots the tenant holds in the limiter's Redis state."""
    with redis.Redis.from_url(redis_url) as store:
        return store.zcard(f"{LIMITER_PREFIX}rl:{{{tenant}}}:conc")


def admission_records(redis_url: str, tenant: str) -> int:
    """Admission records not yet settled (each names the bucket a request was charged)."""
    with redis.Redis.from_url(redis_url) as store:
        return len(store.keys(f"{LIMITER_PREFIX}rl:{{{tenant}}}:adm:*"))


def _connect(base: str) -> socket.socket:
    url = urlsplit(base)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def _head(path: str, key: str, request_id: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: gemma-serve\r\nauthorization: Bearer {key}\r\n"
        f"x-request-id: {request_id}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


def leave_during_upload(base: str, path: str, key: str, request_id: str, body: dict) -> None:
    """Sends the headers and half the body, then closes the connection."""
    raw = json.dumps(body).encode()
    with _connect(base) as conn:
        conn.sendall(_head(path, key, request_id, len(raw)) + raw[: len(raw) // 2])
        time.sleep(0.5)  # the gateway is now reading the body


def leave_after(
    base: str, path: str, key: str, request_id: str, body: dict, wait_s: float
) -> bytes:
    """Sends the whole request, reads for `wait_s`, then closes; returns what arrived."""
    raw = json.dumps(body).encode()
    received = b""
    with _connect(base) as conn:
        conn.sendall(_head(path, key, request_id, len(raw)) + raw)
        conn.settimeout(0.05)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                received += conn.recv(65536)
            except TimeoutError:
                continue
    return received


def gauge_sum(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of a gauge over every series whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total
