"""
The HTTP layer: one aiohttp session, and aiohttp's errors mapped to ours.

The client talks to a :class:`Transport`; :class:`AiohttpTransport` is the real one. Tests and
benchmarks may pass any object with the same three methods. No aiohttp exception crosses this
boundary: connection failures before the request left become :class:`ConnectError`, failures
after it left become :class:`ReadError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import aiohttp
from attrs import frozen

from ._errors import ConnectError, ReadError

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


@contextmanager
def _mapped_errors(server: str | None, url: str) -> Iterator[None]:
    try:
        yield
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise ConnectError(f"could not connect: {type(exc).__name__}", server=server) from exc
    except aiohttp.InvalidURL as exc:
        raise ConnectError(f"invalid URL {url!r}", server=server) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise ReadError("no answer within the read timeout", server=server, timed_out=True) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise ReadError("server closed the connection without answering", server=server) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ReadError(f"answer lost: {type(exc).__name__}", server=server) from exc


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

    def _timeout(self, read: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=read + self._connect_timeout, sock_connect=self._connect_timeout, sock_read=read
        )

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> RawResponse:
        """POST ``body`` as JSON and read the whole answer."""
        session = self._get_session()
        with _mapped_errors(server, url):
            async with session.post(url, json=body, timeout=self._timeout(timeout)) as response:
                data = await response.read()
                return RawResponse(response.status, _headers(response), data)

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        """GET ``url`` and read the whole answer."""
        session = self._get_session()
        with _mapped_errors(None, url):
            async with session.get(url, timeout=self._timeout(timeout)) as response:
                data = await response.read()
                return RawResponse(response.status, _headers(response), data)

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
