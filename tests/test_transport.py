"""The aiohttp transport maps every aiohttp failure to our errors (aioresponses, no network)."""

from __future__ import annotations

import aiohttp
import pytest
from aioresponses import aioresponses

from modelslab_async import AiohttpTransport, ConnectError, ReadError, TransportError

URL = "https://modelslab.example/api/v1/enterprise/img2img"


@pytest.fixture
async def transport() -> AiohttpTransport:
    client = AiohttpTransport(connect_timeout=1.0)
    yield client  # type: ignore[misc]
    await client.aclose()


async def test_post_returns_status_headers_and_body(transport: AiohttpTransport) -> None:
    """A JSON POST comes back as status, lower-cased headers and raw bytes."""
    with aioresponses() as mocked:
        mocked.post(URL, status=429, payload={"status": "error"}, headers={"Retry-After": "3"})
        answer = await transport.post_json(URL, {"key": "k"}, timeout=1.0, server="s1")
    assert 429 == answer.status
    assert "3" == answer.headers["retry-after"]
    assert b'{"status": "error"}' == answer.body


@pytest.mark.parametrize(
    ("raised", "expected", "sent"),
    [
        (
            aiohttp.ClientConnectorError(connection_key=None, os_error=OSError(111, "refused")),
            ConnectError,
            False,
        ),  # type: ignore[arg-type]
        (aiohttp.ConnectionTimeoutError("connect timeout"), ConnectError, False),
        (aiohttp.ServerDisconnectedError(), ReadError, True),
        (aiohttp.SocketTimeoutError("read timeout"), ReadError, True),
        (TimeoutError(), ReadError, True),
        (aiohttp.ClientPayloadError("truncated"), ReadError, True),
        (aiohttp.ClientOSError(104, "reset"), ReadError, True),
    ],
)
async def test_aiohttp_errors_become_ours(
    transport: AiohttpTransport, raised: Exception, expected: type[TransportError], sent: bool
) -> None:
    """Connect failures are ConnectError (never sent); later failures are ReadError (maybe sent)."""
    with aioresponses() as mocked:
        mocked.post(URL, exception=raised)
        with pytest.raises(expected) as caught:
            await transport.post_json(URL, {"key": "secret-key-xyz"}, timeout=1.0, server="s1")
    assert sent is caught.value.sent
    assert "s1" == caught.value.server
    assert "secret-key-xyz" not in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)


async def test_timeouts_are_flagged(transport: AiohttpTransport) -> None:
    """A read timeout says so, so callers can tell it from a dropped connection."""
    with aioresponses() as mocked:
        mocked.post(URL, exception=aiohttp.SocketTimeoutError("slow"))
        with pytest.raises(ReadError) as caught:
            await transport.post_json(URL, {}, timeout=1.0, server="s1")
    assert caught.value.timed_out


async def test_closed_transport_refuses_work(transport: AiohttpTransport) -> None:
    """Using a closed transport is a programming error."""
    await transport.aclose()
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.get("https://example.com/a.png", timeout=1.0)
    assert "closed" in repr(transport)
