"""The web adapters of the webhook receiver: an aiohttp sub-application and a plain ASGI app.

Both read at most ``max_body_bytes + 1`` bytes of a body (nothing when its declared length is
already too large) and hand path token, headers and body to the receiver's ``handle``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

from aiohttp import StreamReader, web

__all__ = ["ASGIApp", "aiohttp_app", "asgi_app"]

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


class Handler(Protocol):
    """What the adapters need of the receiver."""

    @property
    def max_body_bytes(self) -> int:
        """The largest body accepted."""
        ...

    async def dispatch(
        self, token: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """Answer one callback."""
        ...


def _too_long(headers: Mapping[str, str], cap: int) -> bool:
    declared = headers.get("content-length") or headers.get("Content-Length") or ""
    return declared.isascii() and declared.isdigit() and int(declared) > cap


async def _read_stream(stream: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def aiohttp_app(handler: Handler) -> web.Application:
    """Return an aiohttp application with one route, ``POST /{token}``."""

    async def post(request: web.Request) -> web.Response:
        cap = handler.max_body_bytes
        headers = request.headers
        body = b"" if _too_long(headers, cap) else await _read_stream(request.content, cap + 1)
        status, answer = await handler.dispatch(request.match_info["token"], headers, body)
        return web.Response(status=status, body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{token}", post)
    return app


async def _respond(send: ASGISend, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    length = (b"content-length", str(len(body)).encode("ascii"))
    await send(
        {"type": "http.response.start", "status": status, "headers": [_JSON, length, *extra]}
    )
    await send({"type": "http.response.body", "body": body})


def _problem(message: str) -> bytes:
    return json.dumps({"status": "error", "result": message}).encode()


async def _receive_body(receive: ASGIReceive, limit: int) -> bytes | None:
    """The body's first ``limit`` bytes at most; None when the client went away."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)[:limit]


async def _lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def asgi_app(handler: Handler) -> ASGIApp:
    """Return an ASGI 3 application answering ``POST /{token}`` under its mount point."""

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # the server refuses a websocket the app did not accept
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        token = path.removeprefix("/")
        if not path.startswith("/") or not token or "/" in token:
            await _respond(send, 404, _problem("not found"))
            return
        if scope["method"] != "POST":
            await _respond(send, 405, _problem("method not allowed"), (b"allow", b"POST"))
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        cap = handler.max_body_bytes
        body = b"" if _too_long(headers, cap) else await _receive_body(receive, cap + 1)
        if body is None:
            return
        status, answer = await handler.dispatch(token, headers, body)
        await _respond(send, status, answer)

    return app
