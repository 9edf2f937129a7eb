"""The receiver's web adapters: a plain ASGI app (called directly) and an aiohttp sub-app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelslab_async import WebhookReceiver
from modelslab_async._webhooks import callbacks_of

SECRET = b"0123456789abcdef0123456789abcdef"


def success(track_id: str, **more: Any) -> bytes:
    fields = {"status": "success", "id": 7, "output": ["https://x/1.png"], "track_id": track_id}
    return json.dumps({**fields, **more}).encode()


class ASGICall:
    """One ASGI request: the body in chunks, what the app sent back."""

    def __init__(self, chunks: list[bytes], *, disconnect: bool = False) -> None:
        self.messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
            for n, chunk in enumerate(chunks)
        ]
        if disconnect:
            self.messages = [{"type": "http.disconnect"}]
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        message = self.messages[self.received]
        self.received += 1
        return message

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def json(self) -> Any:
        return json.loads(self.sent[1]["body"])


def scope(path: str, *, method: str = "POST", root: str = "", headers: Any = ()) -> Any:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root,
        "headers": list(headers),
    }


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver("http://127.0.0.1:8000/hooks", secret=SECRET, max_body_bytes=300)


def token(receiver: WebhookReceiver, track_id: str) -> str:
    return receiver.url_for(track_id).rsplit("/", 1)[1]


async def test_asgi_resolves_a_job_from_a_chunked_body(receiver: WebhookReceiver) -> None:
    """POST /{token} under the mount point (root_path stripped), body read in chunks."""
    future = callbacks_of(receiver).expect("job-1")
    payload = success("job-1")
    call = ASGICall([payload[:10], payload[10:50], payload[50:]])
    app = receiver.asgi_app()
    await app(scope(f"/hooks/{token(receiver, 'job-1')}", root="/hooks"), call.receive, call.send)
    assert (200, {"status": "ok", "result": "accepted"}) == (call.status, call.json)
    assert [b"application/json"] == [v for k, v in call.sent[0]["headers"] if k == b"content-type"]
    assert "success" == future.result().status


async def test_asgi_works_mounted_with_path_relative_too(receiver: WebhookReceiver) -> None:
    """Servers that already cut the prefix from path (root_path kept) are served as well."""
    future = callbacks_of(receiver).expect("job-1")
    call = ASGICall([success("job-1")])
    path = f"/{token(receiver, 'job-1')}"
    await receiver.asgi_app()(scope(path, root="/hooks"), call.receive, call.send)
    assert 200 == call.status
    assert future.done()


async def test_asgi_stops_reading_past_the_cap(receiver: WebhookReceiver) -> None:
    """An endless body is read up to the cap plus one byte, then refused with 413."""
    future = callbacks_of(receiver).expect("job-1")
    call = ASGICall([b"x" * 100] * 50)
    await receiver.asgi_app()(scope(f"/{token(receiver, 'job-1')}"), call.receive, call.send)
    assert 413 == call.status
    assert 4 == call.received
    assert not future.done()


async def test_asgi_refuses_a_declared_oversize_body_unread(receiver: WebhookReceiver) -> None:
    """A Content-Length over the cap is refused before any body is received."""
    call = ASGICall([success("job-1")])
    headers = [(b"Content-Length", b"100000")]
    await receiver.asgi_app()(scope("/abc", headers=headers), call.receive, call.send)
    assert (413, 0) == (call.status, call.received)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [("/", "POST", 404), ("/a/b", "POST", 404), ("/hooks-x", "GET", 405), ("", "POST", 404)],
)
async def test_asgi_answers_other_paths_and_methods(
    receiver: WebhookReceiver, path: str, method: str, status: int
) -> None:
    """Only POST /{token}; nothing is read or counted otherwise."""
    call = ASGICall([b"{}"])
    await receiver.asgi_app()(scope(path, method=method), call.receive, call.send)
    assert (status, 0) == (call.status, call.received)
    assert 0 == receiver.stats["received"]


async def test_asgi_forged_and_invalid_callbacks(receiver: WebhookReceiver) -> None:
    """A wrong token is 404, a non-JSON body 400: the same core as every adapter."""
    callbacks_of(receiver).expect("job-1")
    forged = ASGICall([success("job-1")])
    await receiver.asgi_app()(scope(f"/{token(receiver, 'x')}"), forged.receive, forged.send)
    garbage = ASGICall([b"<html>"])
    await receiver.asgi_app()(scope(f"/{token(receiver, 'x')}"), garbage.receive, garbage.send)
    assert (404, 400) == (forged.status, garbage.status)


async def test_asgi_client_gone_means_no_answer(receiver: WebhookReceiver) -> None:
    """A disconnect while reading ends the call quietly."""
    call = ASGICall([], disconnect=True)
    await receiver.asgi_app()(scope("/abc"), call.receive, call.send)
    assert [] == call.sent


async def test_asgi_lifespan_and_websockets(receiver: WebhookReceiver) -> None:
    """Lifespan startup and shutdown are acknowledged; a websocket is left unaccepted."""
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    app = receiver.asgi_app()
    await app({"type": "lifespan"}, receive, send)
    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == sent
    await app({"type": "websocket", "path": "/x"}, receive, send)
    assert 2 == len(sent)


@pytest.fixture
async def served(receiver: WebhookReceiver) -> AsyncIterator[str]:
    """The receiver mounted at /hooks of an aiohttp app on a loopback port; its base URL."""
    app = web.Application()
    app.add_subapp("/hooks", receiver.aiohttp_app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()


async def test_aiohttp_subapp_on_a_real_socket(receiver: WebhookReceiver, served: str) -> None:
    """Mounted with add_subapp: accepted, forged, oversize, wrong method."""
    future = callbacks_of(receiver).expect("job-1")
    url = f"{served}/{token(receiver, 'job-1')}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=success("job-1")) as answer:
            assert (200, "accepted") == (answer.status, (await answer.json())["result"])
        async with session.post(f"{served}/{token(receiver, 'x')}", data=success("job-1")) as a:
            assert 404 == a.status
        async with session.post(url, data=success("job-1", pad="x" * 400)) as answer:
            assert 413 == answer.status

        async def endless() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 100

        async with session.post(url, data=endless()) as answer:  # chunked, no length
            assert 413 == answer.status
        async with session.get(url) as answer:
            assert 405 == answer.status
    assert "success" == future.result().status
    assert {"accepted": 1, "forged": 1, "oversize": 2} == {
        name: receiver.stats[name] for name in ("accepted", "forged", "oversize")
    }
