"""Parse an answer with the client, forbidding keys the docs do not show (spec sections 2, 5)."""

from __future__ import annotations

from typing import Any

from modelslab_async._converter import ApiResponse, parse_response

# Every top-level key a documented img2img / fetch / error answer carries (spec section 2).
ANSWER_KEYS = frozenset(
    {
        "status",
        "message",
        "messege",
        "id",
        "output",
        "meta",
        "generationTime",
        "proxy_links",
        "nsfw_content_detected",
        "webhook_status",
        "tip",
        "tip_1",
        "eta",
        "fetch_result",
        "future_links",
        "retry_after",
        "track_id",
    }
)
# The documented bodies of the other server endpoints (spec section 5).
ADMIN_KEYS = {
    "system_details": frozenset({"model_count", "queue_time", "status"}),
    "schedulers_list": frozenset({"schedulers"}),
    "get_all_models": frozenset({"models", "status"}),
}
_MESSAGE_ONLY = frozenset({"status", "message", "messege"})


def _links(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(value or ())


def strict_parse(body: Any, *, status_code: int = 200) -> ApiResponse:
    """Parse ``body`` as the client does; fail on an undocumented key or a value the parse lost."""
    assert isinstance(body, dict), body
    unknown = set(body) - ANSWER_KEYS
    assert not unknown, f"undocumented keys {sorted(unknown)} in {body}"
    parsed = parse_response(body, status_code=status_code)
    assert body["status"].lower() == parsed.status
    if "id" in body:
        assert str(body["id"]) == parsed.id
    assert _links(body.get("output")) == parsed.output
    assert _links(body.get("proxy_links")) == parsed.proxy_links
    assert _links(body.get("future_links")) == parsed.future_links
    message = body.get("message", body.get("messege"))
    assert (message or None) == parsed.message
    for key, value in (("eta", parsed.eta), ("retry_after", parsed.retry_after)):
        assert (float(body[key]) if key in body else None) == value
    assert body.get("fetch_result") == parsed.fetch_result
    if isinstance(body.get("meta"), dict):
        assert body["meta"] == dict(parsed.meta)
    return parsed


def strict_admin(name: str, body: Any) -> None:
    """Check a server endpoint's answer against its documented keys and parse it."""
    assert isinstance(body, dict), body
    allowed = ADMIN_KEYS.get(name, _MESSAGE_ONLY)
    unknown = set(body) - allowed
    assert not unknown, f"undocumented keys {sorted(unknown)} in {name}: {body}"
    if "status" in body:
        parse_response(body)
