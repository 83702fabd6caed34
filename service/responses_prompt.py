"""One `<bos>`, not two, at the start of a Responses API prompt.

vLLM 0.32's `ResponsesRequest.build_tok_params` leaves `TokenizeParams.add_special_tokens` at its
default, True, where chat passes the request's own (False): Gemma 4's chat template already
opens with `<bos>`, so tokenizing the templated Responses prompt added a second one. Measured on
the tiny checkpoint: the same conversation and tools counted 499 prompt tokens on
`/v1/responses` against 498 on chat and Messages (tests/integration/test_tool_calling.py). The
pool replicas install this before vLLM serves (service/pool.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vllm.entrypoints.openai.responses.protocol import ResponsesRequest


def install() -> None:
    original = ResponsesRequest.build_tok_params
    if getattr(original, "_gemma_serve", False):
        return

    def build_tok_params(self: ResponsesRequest, model_config: Any) -> Any:
        return dataclasses.replace(original(self, model_config), add_special_tokens=False)

    build_tok_params._gemma_serve = True  # type: ignore[attr-defined]
    ResponsesRequest.build_tok_params = build_tok_params  # type: ignore[method-assign]
