"""
Turning an HTTP answer into a parsed response or the right typed error.

Real answers are classified on both the HTTP status and the body, because ModelsLab sends
error bodies under HTTP 200 as well as under 4xx/5xx, and gateways answer in HTML.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._converter import ApiResponse, parse_response
from ._decisions import finite_wait
from ._errors import (
    APIError,
    AuthenticationError,
    RateLimitError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
)
from ._transport import RawResponse

Scrub = Callable[[str], str]

__all__ = ["classify", "classify_plain", "retry_after_seconds"]

_KNOWN_STATUSES = frozenset({"success", "processing", "error", "failed"})
_AUTH_WORDS = ("invalid api key", "invalid key", "key field is required", "unauthorized")
_RATE_WORDS = ("rate limit", "too many requests")
_SERVER_WORDS = ("internal server error", "temporarily unavailable", "server error")
_BUSY_WORDS = ("server busy", "server is busy")


def retry_after_seconds(headers: Mapping[str, str], body_value: float | None) -> float | None:
    """
    The wait the server asked for, from its most precise source.

    ``Retry-After-Ms`` first, then the body's ``retry_after`` (ModelsLab's own field, which
    may be fractional), then ``Retry-After`` in seconds or as an HTTP date (whole seconds by
    the standard, so often a rounded-up copy of the body's value).

    Whatever the server sent, the result is finite and non-negative (NaN and garbage are
    ignored, infinity is capped); policies cap it further.
    """
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError, OverflowError):
            if (wait := finite_wait(float(ms) / 1000)) is not None:
                return wait
    if (from_body := finite_wait(body_value)) is not None:
        return from_body
    if (value := headers.get("retry-after")) is not None:
        with contextlib.suppress(ValueError, OverflowError):
            return finite_wait(float(value))
        with contextlib.suppress(ValueError, TypeError, IndexError, OverflowError):
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return finite_wait(when - time.time())
    return None


def _status_error(raw: RawResponse, message: str, server: str, body_wait: float | None) -> None:
    """Raise the error an HTTP error status calls for, whatever the body said."""
    status = raw.status
    if status == 429:
        raise RateLimitError(
            message,
            status_code=status,
            retry_after=retry_after_seconds(raw.headers, body_wait),
            server=server,
        )
    if status in (401, 403):
        raise AuthenticationError(message, status_code=status, server=server)
    if status >= 500:
        raise ServerError(message, status_code=status, server=server)


def _same(text: str) -> str:
    return text


#: Longest server message kept in an error (the rest is cut), and longest job id accepted.
_MESSAGE_CAP = 500
_ID_CAP = 128


def _body_or_raise(raw: RawResponse, server: str, scrub: Scrub) -> dict[str, Any]:
    try:
        body = json.loads(raw.body.decode())  # utf-8, as the API sends (no encoding sniffing)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        snippet = scrub(raw.body[:200].decode("utf-8", "replace"))
        _status_error(raw, f"HTTP {raw.status}: {snippet[:80]!r}", server, None)
        raise ResponseFormatError(
            "the answer is not the API's JSON",
            status_code=raw.status,
            snippet=snippet,
            server=server,
        )
    return body


def _raise_if_error(raw: RawResponse, parsed: ApiResponse, server: str) -> None:
    if raw.status < 400 and parsed.status != "error":
        return  # the common case, first
    message = parsed.message or f"status {parsed.status!r}"
    if raw.status >= 400:
        _status_error(raw, message, server, parsed.retry_after)
    lowered = message.lower()
    if any(word in lowered for word in _RATE_WORDS):
        raise RateLimitError(
            message,
            status_code=raw.status,
            retry_after=retry_after_seconds(raw.headers, parsed.retry_after),
            server=server,
        )
    if any(word in lowered for word in _AUTH_WORDS):
        raise AuthenticationError(message, status_code=raw.status, server=server)
    if any(word in lowered for word in _BUSY_WORDS):
        raise ServerBusyError(message, status_code=raw.status, server=server)
    if any(word in lowered for word in _SERVER_WORDS):
        raise ServerError(message, status_code=raw.status, server=server)
    raise APIError(message, status_code=raw.status, server=server)


def classify(
    raw: RawResponse,
    *,
    server: str,
    phase: Literal["submit", "fetch", "other"],
    scrub: Scrub = _same,
) -> ApiResponse:
    """
    Return the parsed answer when it is usable, else raise the matching typed error.

    A ``success``, a ``processing`` with an id (or any ``processing`` while fetching) and a
    ``failed`` come back parsed; the caller decides what a failed job means. The server's
    message is cut short and ``scrub`` removes any key from it (a gateway may echo the
    request); an id that is too long or carries a piece of a key is refused.
    """
    body = _body_or_raise(raw, server, scrub)
    parsed = parse_response(body, status_code=raw.status)
    if parsed.message is not None and (parsed.status != "success" or raw.status >= 400):
        parsed.message = scrub(parsed.message[:_MESSAGE_CAP])  # it may reach an error
    if raw.status >= 400 or parsed.status == "error":
        _raise_if_error(raw, parsed, server)
    if parsed.status not in _KNOWN_STATUSES:
        raise ResponseFormatError(
            f"unknown status {scrub(repr(parsed.status)[:40])}",
            status_code=raw.status,
            snippet=scrub(repr(body)[:200]),
            server=server,
        )
    if parsed.id is not None and (len(parsed.id) > _ID_CAP or scrub(parsed.id) != parsed.id):
        raise ResponseFormatError(
            "the answer's id is unusable (too long, or not the server's)",
            status_code=raw.status,
            server=server,
        )
    if parsed.status == "processing" and parsed.id is None and phase == "submit":
        raise ServerBusyError(parsed.message or "busy", status_code=raw.status, server=server)
    return parsed


def classify_plain(raw: RawResponse, *, server: str, scrub: Scrub = _same) -> dict[str, Any]:
    """
    For endpoints with their own shapes (``system_details``): the body, or the error; every
    text in it scrubbed of keys.
    """
    body = _body_or_raise(raw, server, scrub)
    parsed = parse_response(body, status_code=raw.status)
    if parsed.message is not None:
        parsed.message = scrub(parsed.message[:_MESSAGE_CAP])
    _raise_if_error(raw, parsed, server)
    clean = json.loads(scrub(json.dumps(body)))
    return clean if isinstance(clean, dict) else body
