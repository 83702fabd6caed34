"""A throwaway redis-server for tests: a free loopback port, no persistence, stopped after.

Tests run against the real server rather than a fake, because what they check (one atomic Lua
script per admission, key expiry, Redis's own clock) is exactly what a fake would get wrong.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis.exceptions import TimeoutError as RedisTimeoutError

from service.access.redis_connection import RedisOptions, redis_client
from service.access.redis_limiter import RedisRateLimiter
from service.local_ports import free_port

BINARY = "redis-server"
# Behaviour tests wait as long as a loaded CI machine needs; the outage tests use defaults.
PATIENT = RedisOptions(socket_timeout_s=5, connect_timeout_s=5, pool_timeout_s=5)
MISSING = "redis-server is not installed (Debian: apt-get install redis-server)"


class RedisServerFailed(RuntimeError):
    """redis-server did not start answering PING."""


def find_binary() -> str | None:
    return shutil.which(BINARY)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    log = workdir / f"redis-{port}.log"
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _answers_ping(port):
            return process
        if process.poll() is not None:  # e.g. the port was taken between probe and bind
            break
        time.sleep(0.01)
    _stop(process)
    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
    raise RedisServerFailed(f"redis-server on port {port} did not answer PING: {tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def redis_server(attempts: int = 3, port: int | None = None) -> Iterator[str]:
    """Runs redis-server on a free port (or `port`: a restart on the same address) and yields
    its URL; the server is gone afterwards."""
    binary = find_binary()
    if binary is None:
        raise RedisServerFailed(MISSING)
    with tempfile.TemporaryDirectory(prefix="gemma-serve-redis-") as workdir:
        for attempt in range(attempts):
            bound = port or free_port()
            try:
                process = _start(binary, bound, Path(workdir))
                break
            except RedisServerFailed:
                if attempt == attempts - 1:
                    raise
        try:
            yield f"redis://127.0.0.1:{bound}/0"
        finally:
            _stop(process)


def lossy_limiter(redis_url: str, *, script_runs: bool = True) -> RedisRateLimiter:
    """A limiter on its own key prefix whose next admission reply is lost (a timeout): after
    the script ran on Redis and charged, or before it got there."""
    limiter = RedisRateLimiter(
        redis_client(redis_url, PATIENT), lease_ttl_s=30, prefix=f"t-{uuid.uuid4().hex}:"
    )
    script = limiter._admit

    async def lost(**kwargs):
        limiter._admit = script
        if script_runs:
            await script(**kwargs)
        raise RedisTimeoutError("Timeout reading from socket")

    limiter._admit = lost
    return limiter
