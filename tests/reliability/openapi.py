"""An OpenAPI description of the generation endpoints, from vLLM's own protocol models: what
the fuzzer mutates. The gateway parses raw JSON itself, so FastAPI publishes none."""

from __future__ import annotations

from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

PATHS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


def spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for path, model in PATHS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        # Raw bytes (off in the engines, and no JSON client sends them) break the generator.
        schema["properties"].pop("prompt_embeds", None)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        paths[path] = {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                },
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "gemma-serve generation endpoints", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
