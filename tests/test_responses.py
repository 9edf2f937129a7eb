"""Answers are classified on both the HTTP status and the body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelslab_async import (
    APIError,
    AuthenticationError,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
)
from modelslab_async._responses import classify, classify_plain, retry_after_seconds
from modelslab_async._transport import RawResponse


def raw(status: int, body: Any, headers: dict[str, str] | None = None) -> RawResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawResponse(status, headers or {}, data)


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (
            raw(
                429,
                {
                    "status": "error",
                    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                    "retry_after": 30,
                },
            ),
            RateLimitError,
            30.0,
        ),
        (raw(429, b"Too Many Requests", {"retry-after": "2"}), RateLimitError, 2.0),
        (
            raw(
                200,
                {"status": "error", "message": "Rate limit exceeded."},
                {"retry-after-ms": "1500"},
            ),
            RateLimitError,
            1.5,
        ),
        (raw(401, {"status": "error", "message": "Invalid API key"}), AuthenticationError, None),
        (raw(200, {"status": "error", "messege": "Invalid API key"}), AuthenticationError, None),
        (raw(403, b"<html>Forbidden</html>"), AuthenticationError, None),
        (
            raw(500, {"status": "error", "message": "Internal server error. Please try again."}),
            ServerError,
            None,
        ),
        (
            raw(
                200,
                {
                    "status": "error",
                    "message": "Service temporarily unavailable. Please try again later.",
                },
            ),
            ServerError,
            None,
        ),
        (raw(502, b"<html><title>502 Bad Gateway</title></html>"), ServerError, None),
        (
            raw(503, {"status": "error", "message": "Service temporarily unavailable"}),
            ServerError,
            None,
        ),
        (raw(200, {"status": "error", "messege": "Model not found: x"}), APIError, None),
        (raw(200, {"status": "error", "message": "Insufficient credits"}), APIError, None),
        (raw(400, {"status": "error", "message": "The prompt field is required."}), APIError, None),
        (raw(404, {"status": "success", "output": ["u"]}), APIError, None),
        (
            raw(200, {"status": "processing", "messege": "try again later.", "output": ""}),
            ServerBusyError,
            None,
        ),
        (raw(200, b'{"status": "success", "output": ['), ResponseFormatError, None),
        (raw(200, b"<html>maintenance</html>"), ResponseFormatError, None),
        (raw(200, {"status": "queued?", "id": 1}), ResponseFormatError, None),
    ],
)
def test_each_error_answer_maps_to_its_typed_error(
    answer: RawResponse, error: type[ModelsLabError], retry_after: float | None
) -> None:
    """Error bodies under 200 and under 4xx/5xx, HTML gateways and truncated JSON all map."""
    with pytest.raises(error) as caught:
        classify(answer, server="gpu-1", phase="submit")
    assert type(caught.value) is error
    assert "gpu-1" == caught.value.server
    if retry_after is not None:
        assert isinstance(caught.value, RateLimitError)
        assert retry_after == caught.value.retry_after


def test_api_errors_keep_the_server_message() -> None:
    """The API's own message is kept verbatim."""
    with pytest.raises(APIError) as caught:
        classify(
            raw(200, {"status": "error", "messege": "Model not found: x"}),
            server="s",
            phase="submit",
        )
    assert "Model not found: x" == caught.value.api_message
    assert 200 == caught.value.status_code


def test_processing_without_id_is_still_processing_while_fetching() -> None:
    """Only a submit treats an id-less "processing" as busy; a fetch keeps polling."""
    answer = classify(raw(200, {"status": "processing", "eta": 3}), server="s", phase="fetch")
    assert ("processing", 3.0) == (answer.status, answer.eta)


@pytest.mark.parametrize("status", ["success", "processing", "failed"])
def test_usable_answers_come_back_parsed(status: str) -> None:
    """success, processing with an id, and failed are returned for the caller to act on."""
    answer = classify(
        raw(200, {"status": status, "id": 9, "output": ["u"]}), server="s", phase="submit"
    )
    assert (status, "9") == (answer.status, answer.id)


def test_system_details_shape_is_returned_plain() -> None:
    """system_details has its own shape, with status "ok"."""
    body = {"model_count": 0, "queue_time": 0, "status": "ok"}
    assert body == classify_plain(raw(200, body), server="s")


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({}, None, None),
        ({"retry-after": "3"}, None, 3.0),
        ({"retry-after": "1"}, 0.25, 0.25),
        ({"retry-after-ms": "100", "retry-after": "1"}, 0.25, 0.1),
        ({"retry-after-ms": "250"}, None, 0.25),
        ({"retry-after": "-4"}, None, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, 0.0),
        ({"retry-after": "soon"}, 1.0, 1.0),
    ],
)
def test_retry_after_reads_header_forms_and_body(
    headers: dict[str, str], body: float | None, expected: float | None
) -> None:
    """Retry-After-Ms, then the body's retry_after, then Retry-After (seconds or HTTP date)."""
    assert expected == retry_after_seconds(headers, body)
