"""An in-process transport driven by a handler function, for fast unit tests and benchmarks."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from attrs import frozen

from .._secrets import fingerprint
from .._transport import RawResponse

__all__ = ["MockRequest", "MockTransport", "json_response"]


@frozen
class MockRequest:
    """What the client sent: URL, body without the key, and the key's fingerprint."""

    method: str
    url: str
    body: Mapping[str, Any]
    key_fingerprint: str | None
    timeout: float


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> RawResponse:
    """A JSON answer for a :class:`MockTransport` handler."""
    return RawResponse(status, dict(headers or {}), json.dumps(body).encode())


Handler = Callable[[MockRequest], RawResponse | Awaitable[RawResponse]]


class MockTransport:
    """
    A transport that answers every request by calling ``handler(request)``, with no network.

    The handler returns a :class:`RawResponse` (``json_response`` builds one), may be async,
    and may raise ``ConnectError`` or ``ReadError`` to simulate transport failures.

    Args:
        handler: Answers each request.
        record: Keep every request in ``requests`` (turn off for long benchmarks).
    """

    def __init__(self, handler: Handler, *, record: bool = True) -> None:
        self._handler = handler
        self._record = record
        self.requests: list[MockRequest] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<MockTransport requests={len(self.requests)} closed={self.closed}>"

    async def _answer(self, request: MockRequest) -> RawResponse:
        if self._record:
            self.requests.append(request)
        answer = self._handler(request)
        if inspect.isawaitable(answer):
            return await answer
        return answer

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> RawResponse:
        """Answer a POST through the handler."""
        key = body.get("key")
        clean = {name: value for name, value in body.items() if name != "key"}
        return await self._answer(
            MockRequest(
                "POST", url, clean, fingerprint(key) if isinstance(key, str) else None, timeout
            )
        )

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        """Answer a GET through the handler."""
        return await self._answer(MockRequest("GET", url, {}, None, timeout))

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True
