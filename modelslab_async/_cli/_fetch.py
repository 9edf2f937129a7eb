"""
GETting output images from URLs a server handed us, without trusting them.

* http(s) only, with a host; anything else (``file://``, ``//host/x``) is refused.
* Unless private addresses are allowed, every connection goes only to public addresses: IP
  literals are checked before each request, names by a resolver that refuses a name with any
  loopback, private, link-local (cloud metadata), reserved or multicast address, and the
  connection is made to the addresses it checked (no second lookup to rebind).
* Redirects are followed by hand, at most ``max_redirects``, each target checked again; only GET
  is ever sent, with no cookies carried.
* Bodies are streamed: a declared or actual size over ``max_bytes`` is refused as it is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from attrs import frozen
from yarl import URL

__all__ = [
    "FetchFailure",
    "download_policy",
    "FetchPolicy",
    "SafeFetcher",
    "check_url",
    "is_private_address",
    "resolves_to_private",
]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@frozen(kw_only=True)
class FetchPolicy:
    """What the downloader may fetch."""

    allow_private: bool = False
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    connect_timeout: float = 10.0
    timeout: float = 120.0  #: per request (one hop), body included


class FetchFailure(Exception):  # noqa: N818 - carries a reason, not an error of ours
    """Why a URL could not be fetched, and whether trying again may help."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class ForbiddenAddressError(OSError):
    """A name resolved to an address downloads may not reach."""


def is_private_address(address: str) -> bool:
    """True for loopback, private, link-local, reserved, multicast and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return True  # not an address we can judge: treat it as private
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str | URL) -> URL:
    """
    The URL, parsed, when it is http(s) with a host.

    Raises:
        FetchFailure: Any other URL (never retried).
    """
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        raise FetchFailure("not a valid URL", retry=False) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise FetchFailure("not an http(s) URL with a host", retry=False)
    return parsed


async def resolves_to_private(url: str, *, timeout: float = 3.0) -> bool:
    """True when the URL's host is, or resolves only to, private addresses (or is localhost)."""
    host = URL(url).host or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return is_private_address(host)
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, TimeoutError):
        return False  # cannot tell: the safe answer
    return bool(infos) and all(is_private_address(str(info[4][0])) for info in infos)


async def download_policy(base_url: str, *, allow_private: bool, max_bytes: int) -> FetchPolicy:
    """The download policy for an API at ``base_url``: private addresses are allowed when
    asked, or when the API itself is on one (a fake, a private deployment)."""
    private = allow_private or await resolves_to_private(base_url)
    return FetchPolicy(allow_private=private, max_bytes=max_bytes)


class _GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses a name with any address downloads may not reach."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        refused = [item["host"] for item in found if is_private_address(item["host"])]
        if refused or not found:
            raise ForbiddenAddressError(f"{host} resolves to a private address ({refused[0]})")
        return found

    async def close(self) -> None:
        await self._inner.close()


class SafeFetcher:
    """
    One aiohttp session for downloads, guarded as the module says.

    Args:
        policy: What may be fetched.
        resolver: The name resolver underneath the guard (default: aiohttp's).
    """

    def __init__(self, policy: FetchPolicy, *, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SafeFetcher:
        inner = self._resolver or aiohttp.DefaultResolver()
        resolver = inner if self.policy.allow_private else _GuardedResolver(inner)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=64),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=self.policy.timeout, sock_connect=self.policy.connect_timeout
            ),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def get(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """
        GET ``url``, following redirects by hand; yields the final answer, unread.

        Raises:
            FetchFailure: A refused URL or address, too many redirects, a transport failure.
        """
        session = self._session
        if session is None:
            raise RuntimeError("the fetcher is not open")
        target = check_url(url)
        for hop in range(self.policy.max_redirects + 1):
            self._check_literal(target)
            async with _mapped(), session.get(target, allow_redirects=False) as answer:
                location = answer.headers.get("Location")
                if answer.status not in _REDIRECTS or location is None:
                    yield answer
                    return
                if hop == self.policy.max_redirects:
                    raise FetchFailure(
                        f"more than {self.policy.max_redirects} redirects", retry=False
                    )
                try:
                    target = check_url(answer.url.join(URL(location)))
                except ValueError:
                    raise FetchFailure("redirect to an invalid URL", retry=False) from None

    def _check_literal(self, url: URL) -> None:
        host = url.host or ""
        if self.policy.allow_private:
            return
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            if is_private_address(host):
                raise FetchFailure(
                    f"refused: {host} is a private address (see --allow-private-downloads)",
                    retry=False,
                )


@contextlib.asynccontextmanager
async def _mapped() -> AsyncIterator[None]:
    """aiohttp's errors as FetchFailure (refused addresses are never retried)."""
    try:
        yield
    except aiohttp.ClientConnectorError as error:
        cause: Any = error.os_error
        if isinstance(cause, ForbiddenAddressError):
            raise FetchFailure(
                f"refused: {cause} (see --allow-private-downloads)", retry=False
            ) from None
        raise FetchFailure(f"cannot connect: {type(error).__name__}", retry=True) from None
    except aiohttp.InvalidURL:
        raise FetchFailure("not a valid URL", retry=False) from None
    except aiohttp.ClientPayloadError:
        raise FetchFailure("the body was cut short", retry=True) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise FetchFailure(f"{type(error).__name__}", retry=True) from None
