"""Hostile servers on loopback: no key leaves, every failure is typed, memory stays bounded."""

from __future__ import annotations

import asyncio
import json
import pickle
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import cattrs
import pytest
from aiohttp import web

from modelslab_async import (
    AiohttpTransport,
    APIError,
    Client,
    ConnectError,
    Endpoints,
    HealthPolicy,
    InvalidRequestError,
    ModelsLabError,
    ReadError,
    RedirectError,
    ResponseFormatError,
    RetryPolicy,
    Server,
    ServerError,
    ServerPool,
    Timeouts,
)

from ._helpers import FAST_POLL, make_request

KEY = "sk-hostile-test-key-0123456789abcdef"
PREFIX = "/api/v1/enterprise"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server with these POST/GET routes; yields its root URL and the bodies seen."""
    seen: list[bytes] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(await request.read())
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def client_for(root: str, **kwargs: object) -> Client:
    kwargs.setdefault("retry", RetryPolicy.disabled())
    return Client([KEY], base_url=root + PREFIX, poll=FAST_POLL, **kwargs)  # type: ignore[arg-type]


async def capture(request: web.Request) -> web.Response:
    return web.json_response({"status": "success", "output": ["http://x/y.png"], "id": 1})


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_refused_and_the_other_host_receives_no_key(status: int) -> None:
    """The API answers a 3xx: the client does not follow it; the target sees nothing."""
    async with serve({"/{tail:.*}": capture}) as (elsewhere, captured):

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPException(headers={"Location": f"{elsewhere}/steal"}) from None

        async def redirect_with_status(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": f"{elsewhere}/steal"})

        async with serve({f"{PREFIX}/img2img": redirect_with_status}) as (root, _):
            async with client_for(root) as client:
                with pytest.raises(RedirectError) as caught:
                    await client.img2img(make_request())
    assert not captured
    assert status == caught.value.status_code
    assert "127.0.0.1" == caught.value.location_host
    assert KEY not in str(caught.value) + repr(caught.value)


@pytest.mark.parametrize("status", [200, 400, 500, 502])
async def test_an_echoing_server_never_puts_the_key_into_an_error(status: int) -> None:
    """A gateway that echoes the request (key included) in its error: scrubbed everywhere."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        text = body.decode()
        if status == 502:
            return web.Response(status=502, text=f"<html>{KEY} bad gateway {text}</html>")
        message = f"invalid request {text} (key {KEY[5:20]})"
        return web.json_response({"status": "error", "message": message}, status=status)

    async with serve({f"{PREFIX}/img2img": echo}) as (root, _):
        async with client_for(root) as client:
            with pytest.raises(ModelsLabError) as caught:
                await client.img2img(make_request())
    error = caught.value
    shown = str(error) + repr(error) + str(getattr(error, "api_message", ""))
    shown += str(getattr(error, "snippet", "")) + json.dumps(attrs.asdict(error.attempts[0]))
    assert "<redacted>" in shown
    assert KEY not in shown
    assert not any(KEY[i : i + 8] in shown for i in range(len(KEY) - 7))
    assert isinstance(error, APIError | ServerError | ResponseFormatError)


async def test_nan_and_garbage_waits_from_a_server_are_survived() -> None:
    """429 with Retry-After: NaN, then garbage, then a negative body value: the job ends."""
    answers = iter(
        [
            web.json_response({"status": "error", "message": "Rate limit"}, status=429,
                              headers={"Retry-After": "NaN"}),
            web.json_response({"status": "error", "message": "Rate limit"}, status=429,
                              headers={"Retry-After": "soon", "Retry-After-Ms": "nan"}),
            web.json_response({"status": "error", "message": "Rate limit", "retry_after": -5},
                              status=429),
        ]
    )  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        return next(answers, None) or await capture(request)

    async with serve({f"{PREFIX}/img2img": handler}) as (root, _):
        retry = RetryPolicy(wait_initial=0.01, wait_max=0.01, retry_after_max=0.05)
        pool = ServerPool([KEY], health=HealthPolicy(rate_limit_cooldown=0.01))
        async with Client(pool, base_url=root + PREFIX, retry=retry) as client:
            result = await asyncio.wait_for(client.img2img(make_request()), 5)
    assert result.output


@pytest.mark.parametrize("endless", [False, True], ids=["50-MB", "endless"])
async def test_huge_and_endless_bodies_are_cut_at_the_cap_with_memory_bounded(
    endless: bool,
) -> None:
    """A 50 MB answer, or one that never ends: refused once past the cap, memory bounded."""
    chunk = b"x" * 65536

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(10**9 if endless else 800):  # 800 x 64 KiB = 50 MB
            await response.write(chunk)
        return response

    async with serve({f"{PREFIX}/img2img": huge}) as (root, _):
        transport = AiohttpTransport(max_answer_bytes=1024 * 1024)
        async with client_for(root, transport=transport) as client:
            tracemalloc.start()
            try:
                with pytest.raises(ResponseFormatError) as caught:
                    await asyncio.wait_for(client.img2img(make_request()), 10)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert "longer than 1048576 bytes" in str(caught.value)
    assert peak < 8 * 1024 * 1024


async def test_a_declared_oversize_answer_is_refused_before_reading() -> None:
    """Content-Length over the cap: refused at once."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"{" + b" " * 3_000_000 + b"}", content_type="application/json")

    async with serve({f"{PREFIX}/img2img": big}) as (root, _):
        transport = AiohttpTransport(max_answer_bytes=1024 * 1024)
        async with client_for(root, transport=transport) as client:
            with pytest.raises(ResponseFormatError, match="refused"):
                await client.img2img(make_request())


async def test_a_server_sent_id_stays_one_path_segment() -> None:
    """With the SDK paths, an id like ../../capture-me is URL-encoded into the fetch path."""
    paths: list[str] = []

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"status": "processing", "id": "../../capture-me", "eta": 0})

    async def anything(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response(
            {"status": "success", "id": "x", "output": ["http://127.0.0.1/y.png"]}
        )

    async with serve({f"{PREFIX}/images/img2img": submit, "/{tail:.*}": anything}) as (root, _):
        async with client_for(root, endpoints=Endpoints.sdk()) as client:
            await client.img2img(make_request())
    assert [f"{PREFIX}/images/fetch/..%2F..%2Fcapture-me"] == paths


async def test_bad_urls_are_typed_errors_never_assertions() -> None:
    """`//host/x`, file:// and hostless URLs: typed errors, nothing sent."""
    async with client_for("http://127.0.0.1:9") as client:
        for url in ("//host/x", "file:///etc/passwd", "http://", "ftp://x/y"):
            with pytest.raises(ConnectError):
                await client.download(url)
    for base in ("http://", "not a url", "ftp://x/y", "http://user:pw@host/x", "http://h:0/x"):
        with pytest.raises(InvalidRequestError, match="base_url"):
            Client([KEY], base_url=base)


def test_a_server_key_stays_out_of_dicts_unstructuring_and_pickles() -> None:
    """attrs.asdict, cattrs and pickle of a Server never show or write the key."""
    server = Server(key=KEY, name="gpu-a")
    shown = repr(attrs.asdict(server)) + repr(cattrs.unstructure(server)) + repr(server)
    assert KEY not in shown
    assert server.key.fingerprint in shown
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(server)
    assert Server(key=KEY, name="x").key == server.key


async def test_debug_logs_show_no_key_and_no_whole_image(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG bodies: the key redacted, a base64 image cut to a short prefix."""
    async with serve({f"{PREFIX}/img2img": capture}) as (root, _):
        async with client_for(root) as client:
            with caplog.at_level("DEBUG", logger="modelslab_async"):
                await client.img2img(make_request(init_image=b"\x89PNG" + b"\x00" * 100_000))
    text = caplog.text
    assert "POST img2img" in text
    assert KEY not in text
    assert len(text) < 5_000


async def test_timeouts_bound_a_server_that_never_answers() -> None:
    """A server that accepts and never answers: the job's deadline ends it, typed."""

    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with serve({f"{PREFIX}/img2img": never}) as (root, _):
        async with client_for(root, timeouts=Timeouts(job=0.3)) as client:
            with pytest.raises(ModelsLabError):
                await client.img2img(make_request())
        release.set()


async def trickle(request: web.Request) -> web.StreamResponse:
    """A slowloris answer: a byte every 20 ms, for ever (never idle long enough to time out
    a per-read timer)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.02)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


async def timed_out_post(
    root: str, *, timeout: float, connect_timeout: float
) -> tuple[ReadError, float]:
    """POST to img2img through a fresh transport: the ReadError it raised, and when."""
    transport = AiohttpTransport(connect_timeout=connect_timeout)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ReadError) as caught:
            await transport.post_json(
                f"{root}{PREFIX}/img2img", {"key": KEY}, timeout=timeout, server="s1"
            )
        return caught.value, asyncio.get_running_loop().time() - started
    finally:
        await transport.aclose()


async def test_a_trickling_answer_cannot_outlast_the_read_timeout() -> None:
    """The read timeout bounds the whole answer, not the gap between two bytes."""
    async with serve({f"{PREFIX}/img2img": trickle}) as (root, _):
        error, took = await timed_out_post(root, timeout=0.2, connect_timeout=0.1)
    assert error.timed_out
    assert error.server == "s1"
    assert 0.15 <= took < 2.0  # the read timeout, not for ever


async def test_a_trickling_submit_is_a_timed_out_attempt_the_job_survives() -> None:
    """A submit whose answer trickles past the read timeout ends as a timed-out ReadError
    carrying its one attempt (retries disabled), long before the job's deadline."""
    async with serve({f"{PREFIX}/img2img": trickle}) as (root, _):
        timeouts = Timeouts(connect=0.05, submit_read=0.1, job=5.0)
        async with client_for(root, timeouts=timeouts) as client:
            with pytest.raises(ReadError) as caught:
                await client.img2img(make_request())
    assert caught.value.timed_out
    assert len(caught.value.attempts) == 1


async def test_a_held_submit_times_out_at_the_read_timeout_whatever_the_connect_timeout() -> None:
    """A server holding the request open past the read timeout: the attempt ends then, not
    after the (longer) connect timeout on top."""
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"status": "success", "output": ["http://x/y.png"], "id": 1})

    async with serve({f"{PREFIX}/img2img": hold}) as (root, _):
        try:
            error, took = await timed_out_post(root, timeout=0.1, connect_timeout=30.0)
        finally:
            release.set()
    assert error.timed_out
    assert took < 1.0
