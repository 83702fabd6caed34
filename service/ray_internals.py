"""The parts of Ray Serve LLM we use that are not its public API, in one place.

Ray Serve LLM 2.60 exposes `build_llm_deployment`, `LLMConfig` and the OpenAI models publicly,
but the server class to extend (`LLMServer`), its stream batcher, the engine interface a mock
engine implements, the request-info type its handles take, the tokenize request models and the
chat-request sanitiser live under `ray.llm._internal`, which may change in any release. Every
module imports them from here; `check_version` (called by `gemma-serve up` and the app builder)
says plainly when the installed Ray is not the one these were checked against, and
tests/unit/test_ray_internals.py checks the contract each is used for.
"""

from __future__ import annotations

import logging

import ray
from ray.llm._internal.serve.core.configs.openai_api_models import (
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.batcher import Batcher

__all__ = [
    "Batcher",
    "LLMEngine",
    "LLMServer",
    "RawRequestInfo",
    "TokenizeChatRequest",
    "TokenizeCompletionRequest",
    "TokenizeResponse",
    "check_version",
    "sanitize_chat_request",
]

# The release these internals were read and tested against (requirements/cpu.lock).
CHECKED_RAY_VERSION = "2.60.0"

log = logging.getLogger(__name__)

# Ray's sanitiser drops the fields its own chat endpoint rejects; named for what it does here.
sanitize_chat_request = _sanitize_chat_completion_request


def check_version(installed: str = ray.__version__) -> bool:
    """False, with a warning naming both versions, when Ray is not the checked release."""
    if installed == CHECKED_RAY_VERSION:
        return True
    log.warning(
        "Ray %s is installed; gemma-serve uses Ray Serve LLM internals checked against %s "
        "(service/ray_internals.py): run tests/unit/test_ray_internals.py before relying on it",
        installed,
        CHECKED_RAY_VERSION,
    )
    return False
