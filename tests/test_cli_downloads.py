"""Downloads you can trust: http(s) only, no private addresses, few redirects, capped bodies."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from modelslab_async._cli import _download, _fetch
from modelslab_async._cli._download import Downloader, DownloadError, ImageWriteError
from modelslab_async._cli._fetch import FetchPolicy, SafeFetcher, download_policy
from modelslab_async.testing._png import png_bytes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ImageServer:
    """A loopback HTTP server that serves images, redirects and hostile bodies, and records."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.seen: list[tuple[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def start(self, extra: dict[str, Handler] | None = None) -> None:
        app = web.Application()
        routes: dict[str, Handler] = {
            "/img/{name}": self._image,
            "/to": self._redirect,
            "/loop": self._loop,
            "/big": self._big,
            "/endless": self._endless,
            "/text": self._text,
            **(extra or {}),
        }
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, request: web.Request) -> None:
        self.seen.append((request.method, request.path_qs))

    async def _image(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        colour = sum(request.match_info["name"].encode()) % 256
        return web.Response(body=png_bytes((colour, 1, 2)), content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        status = int(request.query.get("code", "302"))
        return web.Response(status=status, headers={"Location": request.query["url"]})

    async def _loop(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.Response(status=302, headers={"Location": "/loop"})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.Response(body=png_bytes((1, 2, 3)) + b"\0" * (2 * 1024 * 1024))

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(png_bytes((1, 2, 3)))
        chunk = b"\0" * 65536
        while True:  # until the client goes away
            await response.write(chunk)

    async def _text(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.Response(text="<html>not an image</html>" * 4)


def files_in(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


@pytest.fixture
async def images() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    await server.start()
    yield server
    await server.stop()


class StaticResolver(AbstractResolver):
    """Resolves the names it is given to fixed addresses (a DNS we control)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        address = self.table[host]
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


async def download(
    tmp_path: Path,
    urls: list[str],
    *,
    job_id: str = "job",
    resolver: AbstractResolver | None = None,
    **policy: object,
) -> _download.DownloadResult:
    async with SafeFetcher(FetchPolicy(**policy), resolver=resolver) as fetcher:  # type: ignore[arg-type]
        downloader = Downloader(fetcher, tmp_path / "images", backoff=0.001)
        return await downloader.fetch_job(job_id, urls)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "//example.com/x.png", "ftp://example.com/x.png", "http://", "x.png"],
)
async def test_urls_that_are_not_http_are_typed_download_errors(tmp_path: Path, url: str) -> None:
    """file://, //host/x and friends end as a DownloadError saying why, never another error."""
    result = await download(tmp_path, [url], allow_private=True)
    assert type(result.error) is DownloadError
    assert "not an http(s) URL" in str(result.error)
    assert (None,) == result.paths


async def test_private_addresses_are_refused_by_default_and_never_contacted(
    tmp_path: Path, images: ImageServer
) -> None:
    """Loopback by IP, by IPv6 literal and by a name that resolves to it: refused, 0 requests."""
    urls = [
        images.url("/img/a.png"),
        f"http://[::1]:{images.port}/img/a.png",
        f"http://localhost:{images.port}/img/a.png",
        f"http://[::ffff:127.0.0.1]:{images.port}/img/a.png",
        "http://169.254.169.254/latest/meta-data/",
    ]
    for url in urls:
        result = await download(tmp_path, [url])
        assert type(result.error) is DownloadError, url
        assert "refused" in str(result.error), url
        assert "after" not in str(result.error), "a refusal is never retried"
    assert [] == images.seen


async def test_names_are_judged_by_the_address_they_resolve_to(
    tmp_path: Path, images: ImageServer
) -> None:
    """A public-looking name that resolves to loopback is refused, unless private is allowed."""
    resolver = StaticResolver({"images.example.com": "127.0.0.1"})
    url = f"http://images.example.com:{images.port}/img/a.png"
    refused = await download(tmp_path, [url], resolver=resolver)
    assert "refused" in str(refused.error)
    assert "private address" in str(refused.error)
    assert [] == images.seen
    allowed = await download(tmp_path, [url], resolver=resolver, allow_private=True)
    assert allowed.error is None
    assert Path(str(allowed.paths[0])).read_bytes().startswith(b"\x89PNG")


async def test_every_redirect_target_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 127.0.0.1 playing a public host, a redirect to 127.0.0.2 (private) is refused."""
    real = _fetch.is_private_address
    monkeypatch.setattr(
        _fetch, "is_private_address", lambda a: a != "127.0.0.1" and (a == "127.0.0.2" or real(a))
    )
    public, private = ImageServer("127.0.0.1"), ImageServer("127.0.0.2")
    await public.start()
    await private.start()
    try:
        resolver = StaticResolver({"inner.test": "127.0.0.2", "outer.test": "127.0.0.1"})
        targets = [
            private.url("/img/a.png"),
            f"http://inner.test:{private.port}/img/a.png",
        ]
        for target in targets:
            url = public.url(f"/to?code=307&url={target}")
            result = await download(tmp_path, [url], resolver=resolver)
            assert "refused" in str(result.error), target
        assert [] == private.seen
        fine = public.url(f"/to?url=http://outer.test:{public.port}/img/a.png")
        assert (await download(tmp_path, [fine], resolver=resolver)).error is None
    finally:
        await public.stop()
        await private.stop()


async def test_redirects_are_followed_at_most_three_times_and_only_with_get(
    tmp_path: Path, images: ImageServer
) -> None:
    """A redirect loop fails after 3 hops; 307/308 chains still send GET without a body."""
    looped = await download(tmp_path, [images.url("/loop")], allow_private=True)
    assert "more than 3 redirects" in str(looped.error)
    assert 4 == len(images.seen)
    images.seen.clear()
    chain = images.url("/to?code=308&url=/to%3Fcode%3D307%26url%3D/img/b.png")
    result = await download(tmp_path, [chain], allow_private=True)
    assert result.error is None
    assert {"GET"} == {method for method, _ in images.seen}
    assert 3 == len(images.seen)


async def test_an_oversize_image_is_refused_at_once_and_never_retried(
    tmp_path: Path, images: ImageServer
) -> None:
    """Declared or streamed past the cap, an image is refused on its first read: 1 request."""
    for path in ("/big", "/endless"):
        images.seen.clear()
        result = await download(
            tmp_path, [images.url(path)], allow_private=True, max_bytes=1024 * 1024
        )
        assert "image too large" in str(result.error), path
        assert "--max-image-bytes" in str(result.error)
        assert 1 == len(images.seen), path
    assert [] == files_in(tmp_path / "images")  # no .part left behind


async def test_a_body_that_is_not_an_image_is_refused(tmp_path: Path, images: ImageServer) -> None:
    """An HTML page is not saved as an image."""
    result = await download(tmp_path, [images.url("/text")], allow_private=True)
    assert "not an image" in str(result.error)
    assert [] == files_in(tmp_path / "images")


async def test_image_names_never_collide_on_disk(tmp_path: Path, images: ImageServer) -> None:
    """Job `same` with 2 images and job `same-1` with one write three different files."""
    async with SafeFetcher(FetchPolicy(allow_private=True)) as fetcher:
        downloader = Downloader(fetcher, tmp_path / "images")
        two = await downloader.fetch_job("same", [images.url("/img/1"), images.url("/img/2")])
        one = await downloader.fetch_job("same-1", [images.url("/img/3")])
        long = await downloader.fetch_job("x" * 400, [images.url("/img/4")])
    paths = [*two.paths, *one.paths, *long.paths]
    assert None not in paths
    assert 4 == len({Path(str(p)).name for p in paths})
    assert ["same+1.png", "same+2.png", "same-1.png"] == [Path(str(p)).name for p in paths[:3]]
    assert 4 == len({Path(str(p)).read_bytes() for p in paths})
    assert len(Path(str(paths[3])).name) < 120


async def test_a_failed_write_is_retried_then_reported_as_an_image_write_error(
    tmp_path: Path, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (ENOSPC at fsync) is retried; when it persists the error says so."""
    calls: list[int] = []

    def full_disk(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_download.os, "fsync", full_disk)
    result = await download(tmp_path, [images.url("/img/a")], allow_private=True)
    assert type(result.error) is ImageWriteError
    assert "No space left on device" in str(result.error)
    assert 3 == len(calls)
    assert [] == files_in(tmp_path / "images")


async def test_downloads_from_private_addresses_are_allowed_when_the_api_is_private() -> None:
    """A fake or private API (loopback, localhost) allows private downloads; a public one not."""

    async def allowed(url: str, *, flag: bool = False) -> bool:
        return (await download_policy(url, allow_private=flag, max_bytes=9)).allow_private

    assert await allowed("http://127.0.0.1:8765/api")
    assert await allowed("http://localhost/api")
    assert await allowed("http://[::1]:8765/api")
    assert not await allowed("https://8.8.8.8/api")
    assert await allowed("https://8.8.8.8/api", flag=True)
