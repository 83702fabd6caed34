"""Bounds on every list and size in a request body, checked on the raw JSON before the
protocol models parse it.

Each of these reaches a loop that runs per token or per request on the engine (stop strings,
logit biases, grammar compilation) or multiplies its cost (`n`, batched prompts); unbounded,
one request can stall every other on its replica. A request over a bound gets a 400 naming the
field and the bound. Containers the protocol models' own validators read before checking their
types are checked for shape here too; other wrong types are left to the models' errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from service.errors import InvalidRequest
from service.settings import BoundsSettings

# Container fields the protocol models' own validators read before checking their types: a
# wrong type here is refused by name instead of tripping them.
_OBJECTS = ("structured_outputs", "response_format", "stream_options", "logit_bias")
_LISTS_OF_OBJECTS = ("messages", "tools")


def check_shapes(body: dict[str, Any]) -> None:
    for key in _OBJECTS:
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"{key} must be an object", param=key)
    for key in _LISTS_OF_OBJECTS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidRequest(f"{key} must be an array of objects", param=key)
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidRequest(f"{key}[{i}] must be an object", param=f"{key}[{i}]")


def check_bounds(body: dict[str, Any], bounds: BoundsSettings) -> None:
    check_shapes(body)
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > bounds.max_n:
        raise InvalidRequest(f"n is {n}; at most {bounds.max_n} choices are allowed", param="n")
    _count(body, "messages", bounds.max_messages)
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                _count(message, "content", bounds.max_content_parts, f"messages[{i}].")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        _count(body, "prompt", bounds.max_prompts)
    _count(body, "stop", bounds.max_stop)
    _count(body, "stop_token_ids", bounds.max_stop_token_ids)
    _count(body, "bad_words", bounds.max_bad_words)
    _count(body, "logit_bias", bounds.max_logit_bias)
    _count(body, "tools", bounds.max_tools)
    for path, schema in _schemas(body):
        _check_schema(schema, path, bounds)


def _count(obj: dict[str, Any], key: str, limit: int, prefix: str = "") -> None:
    value = obj.get(key)
    if isinstance(value, list | dict) and len(value) > limit:
        raise InvalidRequest(
            f"{prefix}{key} has {len(value)} entries; at most {limit} are allowed",
            param=f"{prefix}{key}",
        )


def _schemas(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every grammar the engine would compile: JSON schemas, regexes, grammars."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        json_schema = response_format.get("json_schema")
        if isinstance(json_schema, dict) and "schema" in json_schema:
            yield "response_format.json_schema.schema", json_schema["schema"]
    structured = body.get("structured_outputs")
    if isinstance(structured, dict):
        for key in ("json", "regex", "grammar", "choice", "structural_tag"):
            if structured.get(key) is not None:
                yield f"structured_outputs.{key}", structured[key]
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and function.get("parameters") is not None:
                yield f"tools[{i}].function.parameters", function["parameters"]


def _check_schema(schema: Any, path: str, bounds: BoundsSettings) -> None:
    size = len(schema) if isinstance(schema, str) else len(json.dumps(schema))
    if size > bounds.max_schema_bytes:
        raise InvalidRequest(
            f"{path} is {size} bytes; at most {bounds.max_schema_bytes} are allowed", param=path
        )
    depth = _depth(schema)
    if depth > bounds.max_schema_depth:
        raise InvalidRequest(
            f"{path} is nested {depth} levels deep; at most {bounds.max_schema_depth} are allowed",
            param=path,
        )


def _depth(value: Any) -> int:
    """Nesting depth of lists and objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_native_bounds(body: dict[str, Any], input_field: str, bounds: BoundsSettings) -> None:
    """The Responses and Messages APIs' lists and grammars, under the bounds chat has."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools must be an array of objects", param="tools")
    _count(body, input_field, bounds.max_messages)
    items = body.get(input_field)
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                _count(item, "content", bounds.max_content_parts, f"{input_field}[{i}].")
    _count(body, "stop_sequences", bounds.max_stop)
    _count(body, "tools", bounds.max_tools)
    for path, schema in _native_schemas(body):
        _check_schema(schema, path, bounds)


def _native_schemas(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Function tools' schemas (`parameters` in Responses, `input_schema` in Messages) and
    their structured output's (`text.format.schema`, `output_config.format.schema`)."""
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict):
            for key in ("parameters", "input_schema"):
                if tool.get(key) is not None:
                    yield f"tools[{i}].{key}", tool[key]
    found = native_output_format(body)
    if found is not None and found[1].get("schema") is not None:
        yield f"{found[0]}.schema", found[1]["schema"]


def native_output_format(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Where a Responses (`text.format`) or Messages (`output_config.format`) request asks for
    structured output, and what it asks for."""
    for outer in ("text", "output_config"):
        holder = body.get(outer)
        form = holder.get("format") if isinstance(holder, dict) else None
        if isinstance(form, dict):
            return f"{outer}.format", form
    return None
