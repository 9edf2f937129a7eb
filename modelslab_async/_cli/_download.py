"""
Downloading a job's images: bounded concurrency, retries, checks, atomic writes.

Each image is fetched (no key is sent), checked (HTTP 200, a sane size, a known image type),
written to a temporary file in the target directory and renamed into place, so a file named
after a job is always complete. A failure is retried a few times, then reported, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

from .. import Client, ModelsLabError, TransportError

__all__ = ["DownloadError", "Downloader", "DownloadResult", "file_stem", "sniff_image"]

_MAX_BYTES = 64 * 1024 * 1024
_MIN_BYTES = 16
_RETRIED_STATUSES = frozenset({408, 425, 429})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DownloadError(ModelsLabError):
    """An output image could not be downloaded and saved; the job's images are incomplete."""


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


def file_stem(job_id: str) -> str:
    """A safe file name for a job id; ids that need changing get a short hash to stay unique."""
    safe = _UNSAFE.sub("_", job_id).strip("._") or "job"
    if safe == job_id:
        return safe
    digest = hashlib.sha256(job_id.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:80]}-{digest}"


class _Failed(Exception):  # noqa: N818 - internal signal carrying a reason
    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class Downloader:
    """
    Downloads the images of finished jobs into one directory.

    Args:
        client: An open client (its download timeout applies).
        directory: Where images go (recorded as an absolute path); created if missing.
        concurrency: Most images downloaded at once.
        attempts: Tries per image.
        backoff: First wait between tries, doubled each time.
    """

    def __init__(
        self,
        client: Client,
        directory: Path,
        *,
        concurrency: int = 8,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self._client = client
        self.directory = directory.absolute()
        self._slots = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._backoff = backoff
        self.images_written = 0
        self.images_failed = 0

    async def fetch_job(self, job_id: str, urls: Sequence[str]) -> DownloadResult:
        """Download every image of a job concurrently; failures are reported in the result."""
        stem = file_stem(job_id)
        names = [stem] if len(urls) == 1 else [f"{stem}-{n}" for n in range(1, len(urls) + 1)]
        outcomes = await asyncio.gather(
            *(self._fetch_one(url, name) for url, name in zip(urls, names, strict=True))
        )
        paths: list[str | None] = []
        errors: list[str] = []
        for n, outcome in enumerate(outcomes, start=1):
            if isinstance(outcome, Path):
                paths.append(str(outcome))
            else:
                paths.append(None)
                errors.append(f"image {n} of {len(urls)}: {outcome}")
        error = DownloadError("; ".join(errors)) if errors else None
        return DownloadResult(tuple(paths), error)

    async def _fetch_one(self, url: str, name: str) -> Path | str:
        """The saved path, or the reason it failed (after the retries)."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._slots:
                    data, kind = await self._get(url)
                    target = self.directory / f"{name}.{kind}"
                    await asyncio.to_thread(_write_atomic, target, data)
            except _Failed as failure:
                if not failure.retry or attempt == self._attempts:
                    self.images_failed += 1
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    return f"{failure.reason}{tries} ({url})"
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1))
            else:
                self.images_written += 1
                return target
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(self, url: str) -> tuple[bytes, str]:
        try:
            answer = await self._client.download(url)
        except TransportError as error:
            raise _Failed(f"{type(error).__name__}: {error.message}", retry=True) from None
        if answer.status != 200:
            retry = answer.status >= 500 or answer.status in _RETRIED_STATUSES
            raise _Failed(f"HTTP {answer.status}", retry=retry)
        size = len(answer.body)
        if not _MIN_BYTES <= size <= _MAX_BYTES:
            raise _Failed(f"unexpected size ({size} bytes)", retry=True)
        kind = sniff_image(answer.body)
        if kind is None:
            raise _Failed("not an image (unknown file type)", retry=True)
        return answer.body, kind


def _write_atomic(target: Path, data: bytes) -> None:
    """Write to a temporary file beside ``target``, sync it, then rename it into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as error:
        raise _Failed(f"cannot write {target}: {error.strerror}", retry=False) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise _Failed(f"cannot write {target}: {error.strerror}", retry=False) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
