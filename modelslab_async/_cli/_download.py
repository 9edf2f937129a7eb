"""
Downloading a job's images: bounded concurrency, retries, checks, atomic writes.

Each image is fetched through :class:`SafeFetcher` (no key is sent; see ``_fetch.py`` for what
is refused), streamed into a hidden ``.part`` file beside its target (never more than
``max_bytes``), checked (HTTP 200, a sane size, a known image type), synced and renamed into
place, so a file named after a job is always complete. A remote failure is retried a few times,
then reported; a refused URL or an oversize image is reported at once. A failed *write* (disk
full, too many open files) is retried too, and if it still fails the job is left to be
downloaded again by the next run (:class:`ImageWriteError`), never marked finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from attrs import frozen

from .. import ModelsLabError
from ._fetch import FetchFailure, SafeFetcher
from ._names import image_names
from ._text import short

__all__ = [
    "DownloadError",
    "DownloadResult",
    "Downloader",
    "ImageWriteError",
    "remove_leftovers",
    "sniff_image",
]

_MIN_BYTES = 16
_FLUSH_BYTES = 1024 * 1024  # written to disk in pieces of about this size
_RETRIED_STATUSES = frozenset({408, 425, 429})
_PART = ".part"


class DownloadError(ModelsLabError):
    """An output image could not be downloaded and saved; the job's images are incomplete."""


class ImageWriteError(DownloadError):
    """An image was downloaded but could not be written; the next run downloads it again."""


@frozen
class DownloadResult:
    """The local paths of a job's images (None where one failed), and the first failure."""

    paths: tuple[str | None, ...]
    error: DownloadError | None = None


def sniff_image(data: bytes) -> str | None:
    """The file extension of an image from its first bytes, or None if not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def remove_leftovers(directory: Path) -> int:
    """Remove the ``.part`` files a killed run left in ``directory``; how many were removed."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(_PART) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class _Failed(Exception):  # noqa: N818 - internal signal carrying a reason
    def __init__(self, reason: str, *, retry: bool, local: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.local = local


class Downloader:
    """
    Downloads the images of finished jobs into one directory.

    Args:
        fetcher: An open :class:`SafeFetcher` (its policy caps sizes and refuses addresses).
        directory: Where images go (recorded as an absolute path); created if missing.
        concurrency: Most images downloaded at once.
        attempts: Tries per image.
        backoff: First wait between tries, doubled each time.
    """

    def __init__(
        self,
        fetcher: SafeFetcher,
        directory: Path,
        *,
        concurrency: int = 8,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self._fetcher = fetcher
        self._max_bytes = fetcher.policy.max_bytes
        self.directory = directory.absolute()
        self._slots = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._backoff = backoff
        self.images_written = 0
        self.images_failed = 0

    async def fetch_job(self, job_id: str, urls: Sequence[str]) -> DownloadResult:
        """Download every image of a job concurrently; failures are reported in the result."""
        names = image_names(job_id, len(urls))
        outcomes = await asyncio.gather(
            *(self._fetch_one(url, name) for url, name in zip(urls, names, strict=True))
        )
        paths: list[str | None] = []
        errors: list[str] = []
        local = False
        for n, outcome in enumerate(outcomes, start=1):
            if isinstance(outcome, Path):
                paths.append(str(outcome))
            else:
                paths.append(None)
                errors.append(f"image {n} of {len(urls)}: {outcome.reason}")
                local = local or outcome.local
        if not errors:
            return DownloadResult(tuple(paths))
        kind = ImageWriteError if local else DownloadError
        return DownloadResult(tuple(paths), kind(short("; ".join(errors))))

    async def _fetch_one(self, url: str, name: str) -> Path | _Failed:
        """The saved path, or why it failed (after the retries)."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._slots:
                    target = await self._get(url, name)
            except _Failed as failure:
                if not failure.retry or attempt == self._attempts:
                    self.images_failed += 1
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    return _Failed(
                        f"{failure.reason}{tries} ({short(url, 200)})",
                        retry=False,
                        local=failure.local,
                    )
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1))
            else:
                self.images_written += 1
                return target
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(self, url: str, name: str) -> Path:
        part: _PartFile | None = None
        try:
            async with self._fetcher.get(url) as answer:
                if answer.status != 200:
                    retry = answer.status >= 500 or answer.status in _RETRIED_STATUSES
                    raise _Failed(f"HTTP {answer.status}", retry=retry)
                declared = answer.content_length
                if declared is not None and declared > self._max_bytes:
                    raise _Failed(self._too_big(f"{declared} bytes declared"), retry=False)
                size, head = 0, b""
                async for received in answer.content.iter_chunked(64 * 1024):
                    size += len(received)
                    if size > self._max_bytes:
                        raise _Failed(self._too_big(f"over {self._max_bytes} bytes"), retry=False)
                    if part is None:
                        head += received
                        if len(head) >= 12:  # enough to tell the image type
                            part = await self._open_part(name, head)
                            await part.add(head)
                    else:
                        await part.add(received)
            if part is None:
                part = await self._open_part(name, head)  # short: refused there or below
            if size < _MIN_BYTES:
                raise _Failed(f"unexpected size ({size} bytes)", retry=True)
            target = await part.commit()
            part = None
        except FetchFailure as failure:
            raise _Failed(failure.reason, retry=failure.retry) from None
        else:
            return target
        finally:
            if part is not None:
                await asyncio.to_thread(part.discard)

    def _too_big(self, what: str) -> str:
        return f"image too large ({what}; the cap is {self._max_bytes}, see --max-image-bytes)"

    async def _open_part(self, name: str, head: bytes) -> _PartFile:
        kind = sniff_image(head)
        if kind is None:
            raise _Failed("not an image (unknown file type)", retry=True)
        return await asyncio.to_thread(_PartFile.open, self.directory / f"{name}.{kind}")


class _PartFile:
    """A hidden temporary file beside ``target``, renamed onto it once complete and synced."""

    def __init__(self, target: Path, temporary: str, stream: IO[bytes]) -> None:
        self.target = target
        self._temporary = temporary
        self._stream = stream
        self._buffer = bytearray()

    @classmethod
    def open(cls, target: Path) -> _PartFile:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=_PART
            )
        except OSError as error:
            raise _Failed(_cannot_write(target, error), retry=True, local=True) from None
        return cls(target, temporary, os.fdopen(handle, "wb"))

    async def add(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= _FLUSH_BYTES:
            data, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(self._write, data)

    async def commit(self) -> Path:
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._finish, data)
        return self.target

    def _write(self, data: bytes) -> None:
        try:
            self._stream.write(data)
        except OSError as error:
            raise _Failed(_cannot_write(self.target, error), retry=True, local=True) from None

    def _finish(self, data: bytes) -> None:
        try:
            self._stream.write(data)
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            os.replace(self._temporary, self.target)
        except OSError as error:
            raise _Failed(_cannot_write(self.target, error), retry=True, local=True) from None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temporary)


def _cannot_write(target: Path, error: OSError) -> str:
    return f"cannot write {target}: {error.strerror or type(error).__name__}"
