"""The audit log: one JSON line per request, written when the request ends.

Who called (tenant and key id, never the key), what they asked for, where it was routed, and
how it ended. Prompts are recorded only when `access.audit_content` is on; responses never.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

AUDIT_LOGGER = "gemma_serve.audit"


@dataclass(frozen=True)
class AuditEntry:
    request_id: str
    tenant: str
    key_id: str | None
    endpoint: str
    model: str | None  # as the client asked: a pool id or an alias
    pool: str
    route_reason: str | None
    status: int
    error_code: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    ttft_ms: float | None
    prompt: str | None = None  # only with audit_content


class AuditLog:
    def __init__(self, path: Path | None, *, include_content: bool, name: str = AUDIT_LOGGER):
        self.include_content = include_content
        self._logger = logging.getLogger(name)
        self._logger.setLevel(logging.INFO)
        # Its own handler, not the service log's: one bare JSON object per line.
        self._logger.propagate = False
        handler = _handler(path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.handlers = [handler]

    def record(self, entry: AuditEntry) -> None:
        line = {"time": _utc_now(), **asdict(entry)}
        if not self.include_content:
            line.pop("prompt")
        self._logger.info(json.dumps(line, separators=(",", ":"), ensure_ascii=False))


def _handler(path: Path | None) -> logging.Handler:
    if path is None:
        return logging.StreamHandler(sys.stderr)
    return logging.FileHandler(path, encoding="utf-8")


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
