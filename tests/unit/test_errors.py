"""Engine errors map to client-facing errors without leaking internals."""

from service.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    error_body,
    from_engine_error,
)


def test_engine_context_error_becomes_context_length_exceeded():
    err = from_engine_error(
        400, "This model's maximum context length is 2048 tokens.", "messages", "r1"
    )
    assert isinstance(err, ContextLengthExceeded)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")


def test_other_engine_400_keeps_its_message():
    err = from_engine_error(400, "top_k must be -1 or at least 1", "top_k", "r1")
    assert type(err) is InvalidRequest
    assert err.message == "top_k must be -1 or at least 1"


def test_engine_404_is_model_not_found():
    assert isinstance(from_engine_error(404, "no such model", None, "r1"), ModelNotFound)


def test_other_engine_4xx_keeps_its_status():
    assert from_engine_error(422, "unprocessable", None, "r1").status == 422


def test_engine_5xx_hides_its_message_but_names_the_request():
    err = from_engine_error(500, "EngineCore died at /opt/vllm/core.py:42", None, "req-7")
    assert isinstance(err, EngineError)
    assert "core.py" not in err.message and "req-7" in err.message


def test_error_body_has_the_openai_shape():
    body = error_body(PayloadTooLarge("too big"))
    assert body == {
        "error": {
            "message": "too big",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


def test_unavailable_tells_when_to_retry():
    assert ServiceUnavailable("busy", retry_after_s=7).headers() == {"Retry-After": "7"}
