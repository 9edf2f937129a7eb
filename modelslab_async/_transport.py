"""
The HTTP layer: one aiohttp session, and aiohttp's errors mapped to ours.

The client talks to a :class:`Transport`; :class:`AiohttpTransport` is the real one. Tests and
benchmarks may pass any object with the same three methods. No aiohttp exception crosses this
boundary: connection failures before the request left become :class:`ConnectError`, failures
after it left become :class:`ReadError`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

import aiohttp
from attrs import frozen

from ._errors import ConnectError, ReadError, TransportError

__all__ = ["AiohttpTransport", "RawResponse", "Transport"]


@frozen
class RawResponse:
    """What came back: the status, the headers (lower-case names) and the body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one request and returns the raw answer, raising only ``TransportError``."""

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> RawResponse:
        """POST a JSON body; ``server`` names the target in errors."""
        ...

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        """GET a URL (image downloads)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _mapped(exc: BaseException, server: str | None, url: str) -> TransportError | None:
    """Our error for an aiohttp (or socket) failure, or None when it is not one of those."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return ConnectError(f"could not connect: {type(exc).__name__}", server=server)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConnectError(f"invalid URL {url!r}", server=server)
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError | TimeoutError):
        return ReadError("no answer within the read timeout", server=server, timed_out=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ReadError("server closed the connection without answering", server=server)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ReadError(f"answer lost: {type(exc).__name__}", server=server)
    return None


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Mapping[str, Any] | None,
    timeout: aiohttp.ClientTimeout,
    server: str | None,
) -> RawResponse:
    """One request, its answer read whole; aiohttp's errors come out as ours."""
    try:
        async with session.request(method, url, json=body, timeout=timeout) as response:
            data = await response.read()
            status = response.status
            headers = _headers(response) if status >= 400 else {}
            return RawResponse(status, headers, data)
    except Exception as exc:
        mapped = _mapped(exc, server, url)
        if mapped is None:
            raise
        raise mapped from exc


@functools.lru_cache(maxsize=64)
def _client_timeout(read: float, connect: float) -> aiohttp.ClientTimeout:
    # No total: the job's own deadline bounds the whole call, and one timer less per request.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


class AiohttpTransport:
    """
    The real transport: one :class:`aiohttp.ClientSession`, created on first use.

    Args:
        connect_timeout: Seconds to open a connection.
        limit: Most connections open at once (aiohttp's ``TCPConnector.limit``).
    """

    def __init__(self, *, connect_timeout: float = 10.0, limit: int = 100) -> None:
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._session else "unopened")
        return f"<AiohttpTransport {state} limit={self._limit}>"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> Coroutine[Any, Any, RawResponse]:
        """POST ``body`` as JSON and read the whole answer."""
        return _send(
            self._get_session(),
            "POST",
            url,
            body=body,
            timeout=_client_timeout(timeout, self._connect_timeout),
            server=server,
        )

    def get(self, url: str, *, timeout: float) -> Coroutine[Any, Any, RawResponse]:
        """GET ``url`` and read the whole answer."""
        return _send(
            self._get_session(),
            "GET",
            url,
            body=None,
            timeout=_client_timeout(timeout, self._connect_timeout),
            server=None,
        )

    async def aclose(self) -> None:
        """Close the session and its connections; safe to call twice."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the connector's transports finish closing (aiohttp's documented advice).
            await asyncio.sleep(0)


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    wanted = ("retry-after", "retry-after-ms", "content-type")
    return {name: response.headers[name] for name in wanted if name in response.headers}
