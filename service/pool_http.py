"""A pool replica's own HTTP server: vLLM's OpenAI app on a port of the replica's node.

Gateways send requests here directly (the data plane), so tokens go from vLLM's own server
to the gateway over one HTTP connection instead of as Ray objects through Serve's router.
The server counts what it serves (for autoscaling and for the gateway's replica choice) and
runs the checks the gateway asks for in a header before vLLM sees the request: a prompt that
may overflow the context is counted by the engine's tokenizer (vLLM would clamp
max_tokens silently), and a grammar is compiled under the pool's time limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

# The gateway sets it when a request needs the pool's own checks (most need none).
CHECK_HEADER = "x-gemma-check"
# On a 503 from a replica that takes no new requests (it is going, or its engine died): the
# gateway sends the request to another replica instead of relaying the refusal.
UNAVAILABLE_HEADER = "x-gemma-replica-unavailable"
CHECKED_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}

# (endpoint, body) -> an error body with its status, or None when the request may go on.
Checker = Callable[[str, bytes], Awaitable[tuple[int, dict[str, Any]] | None]]


class GuardMiddleware:
    """Counts requests in flight and runs the pool's checks when the gateway asks for them."""

    def __init__(self, app: Any, checker: Checker):
        self.app = app
        self._checker = checker
        self.ongoing = 0
        self.refusing: str | None = None  # why new requests are refused ("draining", ...)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.refusing is not None:
            await _send_unavailable(send, self.refusing)
            return
        self.ongoing += 1
        try:
            endpoint = CHECKED_PATHS.get(scope["path"])
            if endpoint is not None and _has_header(scope, CHECK_HEADER):
                body = await _read_body(receive)
                refusal = await self._checker(endpoint, body)
                if refusal is not None:
                    await _send_json(send, *refusal)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.ongoing -= 1


class PoolHttpServer:
    def __init__(self, app: Any, checker: Checker):
        self.guard = GuardMiddleware(app, checker)
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self.url = ""

    async def start(self, host: str) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.guard,
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            # Gateways keep connections to every replica; a short idle timeout would make
            # them reconnect on most requests.
            timeout_keep_alive=300,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return self.url

    async def drain(self, timeout_s: float) -> None:
        """Refuses new requests (a gateway that has not seen the withdrawal yet sends them to
        another replica), waits for those in flight, at most `timeout_s`; then stops."""
        self.guard.refusing = "draining"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.guard.ongoing and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.guard.ongoing:
            log.warning("pool replica stops with %d requests in flight", self.guard.ongoing)
        if self._server is not None:
            self._server.should_exit = True
            if self._task is not None:
                await asyncio.wait({self._task}, timeout=5)


def _has_header(scope: Any, name: str) -> bool:
    wanted = name.encode()
    return any(key == wanted for key, _ in scope["headers"])


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> Any:
        nonlocal sent
        if sent:
            return await receive()  # a disconnect, as the app expects
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _send_unavailable(send: Any, why: str) -> None:
    message = f"this pool replica takes no new requests ({why})"
    body = {"error": {"message": message, "type": "ServiceUnavailable", "param": None, "code": 503}}
    await _send_json(send, 503, body, [(UNAVAILABLE_HEADER.encode(), why.encode())])


async def _send_json(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
