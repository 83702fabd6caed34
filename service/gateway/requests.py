"""Reading and validating request bodies before any engine sees them."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ray.exceptions import TaskCancelledError
from starlette.requests import ClientDisconnect, Request
from vllm.exceptions import VLLMValidationError

from service.errors import ClientClosed, InvalidRequest, MalformedJSON, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

# Parsing a body this large takes long enough (about 1 s for 8 MB) to stall every other
# request on the event loop, and with them the limiter's Redis calls: it runs in a thread.
OFF_LOOP_BYTES = 256 * 1024


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past max_bytes (before reading it, where the client
    declared its length), 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(_too_large(int(declared), max_bytes))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(_too_large(size, max_bytes, at_least=True))
            chunks.append(chunk)
    # Serve's proxy reports a client gone mid-body either way, depending on timing.
    except (ClientDisconnect, TaskCancelledError):
        raise ClientClosed(f"the client left after sending {size} bytes of the body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise MalformedJSON("the request body is empty; send a JSON object")
    data = await asyncio.to_thread(_loads, raw) if len(raw) > OFF_LOOP_BYTES else _loads(raw)
    if not isinstance(data, dict):
        raise MalformedJSON(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedJSON("the request body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise MalformedJSON(f"the request body has a value out of range: {exc}") from None


def _too_large(size: int, limit: int, *, at_least: bool = False) -> str:
    qualifier = "at least " if at_least else ""
    return f"the request body is {qualifier}{size} bytes; the limit is {limit} bytes"


def parse_as(model: type[M], data: dict[str, Any]) -> M:
    """Validate against vLLM's protocol model; 400 naming the first offending field."""
    try:
        return model.model_validate(data)
    except VLLMValidationError as exc:  # vLLM's cross-field checks raise their own type
        where = f"'{exc.parameter}'" if exc.parameter else "the request"
        raise InvalidRequest(f"invalid {where}: {exc.args[0]}", param=exc.parameter) from None
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply") from None
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # vLLM's "before" validators read fields before pydantic checked their types.
        log.info("a body broke a protocol validator: %r", exc)
        raise InvalidRequest(
            "the request does not match the API schema: a field has the wrong type"
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(first["loc"])
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        where = f"'{field}'" if field else "the request"
        raise InvalidRequest(f"invalid {where}: {first['msg']}{suffix}", param=field) from None


def _field_path(loc: tuple[Any, ...]) -> str | None:
    # Pydantic puts union branch names and validator tags in loc; keep what a client wrote.
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif isinstance(part, str) and part.isidentifier() and not part[0].isupper():
            parts.append(("." if parts else "") + part)
    return "".join(parts) or None
