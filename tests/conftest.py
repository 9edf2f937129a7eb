"""Shared fixtures: requests, a handler-driven client, and a started fake enterprise API."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from modelslab_async import (
    Client,
    Img2ImgRequest,
    RetryPolicy,
    ServerPool,
    Timeouts,
    WebhookReceiver,
)
from modelslab_async.testing import MockTransport

from ._helpers import FAST_HEALTH, FAST_POLL, KEYS, make_request
from ._redis_server import (  # noqa: F401  (the Redis fixtures)
    make_backend,
    pytest_runtest_makereport,
    raw_redis,
    redis_api,
    redis_server,
    spare_redis,
)


@pytest.fixture
def request_() -> Img2ImgRequest:
    """A valid request."""
    return make_request()


MakeClient = Callable[..., Client]


@pytest.fixture
def make_mock_client() -> Callable[..., tuple[Client, MockTransport]]:
    """Build a client over a MockTransport with fast retries and polling."""

    def build(
        handler: Any,
        *,
        servers: Any = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        **kwargs: Any,
    ) -> tuple[Client, MockTransport]:
        transport = MockTransport(handler)
        pool = (
            servers
            if isinstance(servers, ServerPool)
            else ServerPool(servers or KEYS[:1], health=FAST_HEALTH)
        )
        client = Client(
            pool,
            transport=transport,
            retry=retry or RetryPolicy.no_wait(),
            poll=FAST_POLL,
            timeouts=timeouts or Timeouts(job=5.0),
            **kwargs,
        )
        return client, transport

    return build


@pytest.fixture
async def fake() -> AsyncIterator[Any]:
    """A started FakeModelsLab with three servers (fast service, short processing threshold)."""
    from modelslab_async.testing import FakeModelsLab

    async with FakeModelsLab(servers=3, processing_threshold=0.2, seed=1) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A receiver mounted at /hooks of an aiohttp app on a loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is needed for the URL before the app is frozen
    hooks = WebhookReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}/hooks")
    app = web.Application()
    app.add_subapp("/hooks", hooks.aiohttp_app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield hooks
    finally:
        await runner.cleanup()
        sock.close()
