"""
The HTTP layer: one aiohttp session, and aiohttp's errors mapped to ours.

The client talks to a :class:`Transport`; :class:`AiohttpTransport` is the real one. Tests and
benchmarks may pass any object with the same three methods. No aiohttp exception crosses this
boundary: connection failures before the request left become :class:`ConnectError`, failures
after it left become :class:`ReadError`.

Hostile servers exist: redirects are never followed (the API key travels in the body, and a
redirect would carry it to another host), and every body is read up to a cap.
"""

from __future__ import annotations

import asyncio
import errno
import functools
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

import aiohttp
from attrs import frozen
from yarl import URL

from ._deadlines import Deadlines
from ._errors import ConnectError, ReadError, RedirectError, ResponseFormatError, TransportError

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "AiohttpTransport",
    "RawResponse",
    "Transport",
    "connection_limit",
]

#: Largest API answer read (base64 answers of four large images fit comfortably).
DEFAULT_MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: Largest download read by :meth:`AiohttpTransport.get`.
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024

#: OS errors that say the failure is ours (no descriptors or buffers left), not the server's.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_limit(capacity: int) -> int:
    """
    How many connections a pool of ``capacity`` may open: two per slot and some spare, but
    never more than the process's file-descriptor limit allows once a quarter of it (at
    least 64) is left for files, downloads and logs.
    """
    wanted = max(100, 2 * capacity + 8)
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return wanted
    return max(8, min(wanted, soft - max(64, soft // 4)))


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


def _is_local(exc: BaseException) -> bool:
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return isinstance(cause, OSError) and cause.errno in LOCAL_ERRNOS


def _mapped(exc: BaseException, server: str | None, url: str) -> TransportError | None:
    """Our error for an aiohttp (or socket) failure, or None when it is not one of those."""
    if _is_local(exc):
        return ConnectError(
            f"no file descriptors or buffers left on this machine: {type(exc).__name__}",
            server=server,
            local=True,
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return ConnectError(f"could not connect: {type(exc).__name__}", server=server)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConnectError(f"invalid URL {_shown(url)}", server=server)
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError | TimeoutError):
        return ReadError("no answer within the read timeout", server=server, timed_out=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ReadError("server closed the connection without answering", server=server)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ReadError(f"answer lost: {type(exc).__name__}", server=server)
    return None


def _shown(url: str) -> str:
    """A URL cut short for a message (no query string: it may carry a token)."""
    return repr(url.split("?", 1)[0][:120])


def check_url(url: str, server: str | None) -> None:
    """Refuse a URL that is not absolute http(s) with a host, as a typed error."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise ConnectError(f"invalid URL {_shown(url)}", server=server) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConnectError(
            f"invalid URL {_shown(url)}: only absolute http(s) URLs are fetched", server=server
        )


def _refuse_redirect(response: aiohttp.ClientResponse, server: str | None) -> None:
    try:
        host = URL(response.headers.get("location", "")).host
    except (ValueError, TypeError):
        host = None
    raise RedirectError(response.status, host, server=server)


async def _read_capped(response: aiohttp.ClientResponse, cap: int, server: str | None) -> bytes:
    declared = response.content_length
    if declared is not None:
        if declared > cap:
            raise ResponseFormatError(
                f"answer of {declared} bytes refused (the limit is {cap})",
                status_code=response.status,
                server=server,
            )
        return await response.read()  # aiohttp reads no more than the declared length
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > cap:
            raise ResponseFormatError(
                f"answer longer than {cap} bytes refused",
                status_code=response.status,
                server=server,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Mapping[str, Any] | None,
    timeout: aiohttp.ClientTimeout,
    server: str | None,
    cap: int,
    deadlines: Deadlines | None = None,
    within: float = 0.0,
) -> RawResponse:
    """
    One request, its answer read up to ``cap``; aiohttp's errors come out as ours. With
    ``deadlines``, the whole exchange must end ``within`` seconds (else a timed-out
    :class:`ReadError`), on the transport's one shared timer instead of aiohttp's
    per-read timers.
    """
    entry = None if deadlines is None else deadlines.enter(within)
    try:
        async with session.request(
            method, url, json=body, timeout=timeout, allow_redirects=False
        ) as response:
            status = response.status
            if 300 <= status < 400:
                _refuse_redirect(response, server)
            data = await _read_capped(response, cap, server)
            headers = _headers(response) if status >= 400 else {}
            return RawResponse(status, headers, data)
    except asyncio.CancelledError:
        if entry is not None and deadlines is not None and deadlines.leave(entry):
            raise ReadError(
                "no answer within the read timeout", server=server, timed_out=True
            ) from None
        raise
    except Exception as exc:
        mapped = _mapped(exc, server, url)
        if mapped is None:
            raise
        raise mapped from exc
    finally:
        if entry is not None and deadlines is not None:
            deadlines.leave(entry)  # once only: a second leave does nothing


@functools.lru_cache(maxsize=64)
def _client_timeout(read: float | None, connect: float) -> aiohttp.ClientTimeout:
    # No total: the job's own deadline bounds the whole call. POSTs pass no sock_read either
    # (it re-arms a timer on every chunk): their read timeout is on the shared timer.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


class AiohttpTransport:
    """
    The real transport: one :class:`aiohttp.ClientSession`, created on first use.

    Args:
        connect_timeout: Seconds to open a connection.
        limit: Most connections open at once (aiohttp's ``TCPConnector.limit``).
        max_answer_bytes: Largest API answer read; a longer one is a
            :class:`ResponseFormatError`.
        max_download_bytes: Largest body :meth:`get` reads.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        limit: int = 100,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._max_answer = max_answer_bytes
        self._max_download = max_download_bytes
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._deadlines = Deadlines()  # every POST's time limit, on one timer

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
        """
        POST ``body`` as JSON and read the whole answer, all within ``timeout`` seconds
        (connecting included; the connect timeout bounds the connection alone).
        """
        return _send(
            self._get_session(),
            "POST",
            url,
            body=body,
            timeout=_client_timeout(None, self._connect_timeout),
            server=server,
            cap=self._max_answer,
            deadlines=self._deadlines,
            within=timeout,
        )

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        """GET an absolute http(s) ``url`` (no redirect followed) and read its body, capped."""
        check_url(url, None)
        return await _send(
            self._get_session(),
            "GET",
            url,
            body=None,
            timeout=_client_timeout(timeout, self._connect_timeout),
            server=None,
            cap=self._max_download,
        )

    async def aclose(self) -> None:
        """Close the session and its connections; safe to call twice."""
        self._closed = True
        self._deadlines.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the connector's transports finish closing (aiohttp's documented advice).
            await asyncio.sleep(0)


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    wanted = ("retry-after", "retry-after-ms", "content-type")
    return {name: response.headers[name] for name in wanted if name in response.headers}
