"""Error types and their one mapping to the OpenAI error shape.

Every failure a client can see is one of these; `error_body` is the only place that turns
them into `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; raised before anything starts."""


class ServiceError(Exception):
    status: int = 500
    # Set on refusals for load (counted as shed in the metrics), e.g. "capacity".
    shed_reason: str | None = None
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class MalformedJSON(InvalidRequest):
    code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ClientClosed(ServiceError):
    """The client left before the request was read: nothing can be answered, only counted."""

    status = 499  # nginx's "client closed request", as the metrics and audit name it
    type = "invalid_request_error"
    code = "client_closed"


class DeadlineExceeded(ServiceError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class ServiceUnavailable(ServiceError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class PoolAtCapacity(ServiceUnavailable):
    """The pool's replicas are all at max_ongoing_requests and its queue is full."""

    shed_reason = "capacity"


class RateLimited(ServiceError):
    """A tenant's requests, tokens or concurrency limit is used up (OpenAI's 429 shape)."""

    status = 429
    code = "rate_limit_exceeded"
    shed_reason = "rate_limit"

    def __init__(self, message: str, *, limited_by: str, retry_after_s: int, headers: dict):
        super().__init__(message)
        self.type = limited_by  # OpenAI names the exhausted limit here: requests | tokens
        self.retry_after_s = retry_after_s
        self._headers = headers

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s), **self._headers}


class TooLargeForTokenLimit(ServiceError):
    """The request alone needs more tokens than the tenant's whole minute: waiting cannot
    help, so no Retry-After (OpenAI's "Request too large ... on tokens per min")."""

    status = 429
    type = "tokens"
    code = "rate_limit_exceeded"
    shed_reason = "rate_limit"


class ShedForPriority(ServiceError):
    """The pool is busy and keeps its remaining room for higher priority classes."""

    status = 429
    type = "overloaded"
    code = "shed_for_priority"
    shed_reason = "priority"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class EngineError(ServiceError):
    """The engine failed; the client gets a generic message, the log gets the cause."""

    status = 500
    type = "server_error"
    code = "engine_error"


def error_body(err: ServiceError) -> dict[str, Any]:
    return {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }


# vLLM answers with its own ErrorResponse (message, type, param, numeric code). Its 4xx are
# the client's fault and their messages are safe to pass on; anything else is ours to hide.
_ENGINE_CLIENT_ERRORS: dict[int, type[ServiceError]] = {400: InvalidRequest, 404: ModelNotFound}


def from_engine_error(
    status: int, message: str, param: str | None, request_id: str
) -> ServiceError:
    if status in _ENGINE_CLIENT_ERRORS:
        cls = _ENGINE_CLIENT_ERRORS[status]
        if cls is InvalidRequest and "maximum context length" in message:
            cls = ContextLengthExceeded
        return cls(message, param=param)
    if 400 <= status < 500:
        err = InvalidRequest(message, param=param)
        err.status = status
        return err
    return EngineError(f"the model engine failed to serve this request (request id {request_id})")
