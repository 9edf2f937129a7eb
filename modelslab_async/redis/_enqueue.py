"""
Adding a manifest's jobs to a batch: lazily, in pipelined chunks, idempotently.

Each manifest line becomes a job in the ledger (its request as JSON, never a key) and an entry
in the batch's stream; a bad line becomes a final ``failed`` record at once, as ``batch``
journals it. A job already in the batch with the same line is left alone; with another line,
nothing at all is added and the error names the job. A local ``init_image`` is read here (it
may not exist on the workers' machines) and stored in the ledger until the job ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
from attrs import frozen

from .. import InvalidRequestError, request_to_wire
from .._cli._journal import FAILED, Record
from .._cli._local import MAX_INIT_IMAGE_BYTES, read_local_image
from .._cli._manifest import ManifestEntry, read_manifest
from .._cli._text import short
from ._ledger import Batch

__all__ = ["EnqueueReport", "enqueue"]

_CHUNK = 500


@frozen(kw_only=True)
class EnqueueReport:
    """
    What :func:`enqueue` did.

    Attributes:
        added: Jobs added to the batch now.
        present: Jobs that were already there (same line).
        bad_lines: Lines added as failed records (this time).
        total: Jobs in the batch now.
    """

    added: int
    present: int
    bad_lines: int
    total: int


@frozen
class _Line:
    key: str  # the job's key suffix (an id, or NUL + line number for a line without one)
    digest: str
    line: int
    state: str  # queued or failed
    payload: str  # the request body, or the failed record


async def enqueue(
    batch: Batch,
    manifest: Path,
    *,
    allow_outside_files: bool = False,
    max_init_image_bytes: int = MAX_INIT_IMAGE_BYTES,
    ttl: float | None = None,
) -> EnqueueReport:
    """
    Add a manifest's jobs to ``batch`` (read lazily; memory does not grow with it).

    Args:
        batch: The batch.
        manifest: JSONL, as for the ``batch`` command.
        allow_outside_files: Let ``init_image`` name files outside the manifest's folder.
        max_init_image_bytes: Largest local ``init_image``.
        ttl: Seconds a finished job's record is kept (default: until the batch is deleted).

    Raises:
        InvalidRequestError: The manifest cannot be read, or a line of a job already in the
            batch changed (nothing is added then).

    .. versionadded:: 0.3.0
    """
    try:
        lines = read_manifest(manifest, allow_outside_files=allow_outside_files)
        first = await asyncio.to_thread(_chunk, lines, max_init_image_bytes)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidRequestError("MANIFEST", f"cannot read {manifest}: {reason}") from None
    await batch.ensure_group()
    meta = batch.key("meta")
    existing = int(await batch.db.hget(meta, "total") or 0)
    if existing:  # first check every line against the ledger: a change adds nothing
        await _check(batch, first, lines, max_init_image_bytes)
        lines = read_manifest(manifest, allow_outside_files=allow_outside_files)
        first = await asyncio.to_thread(_chunk, lines, max_init_image_bytes)
    # Not sealed while adding: workers do not stop before the whole manifest is in.
    await batch.db.hset(meta, "sealed", 0)
    await batch.db.hsetnx(meta, "created", time.time())
    if ttl is not None:
        await batch.db.hset(meta, "ttl", max(1, int(ttl * 1000)))
    added = present = bad = 0
    chunk = first
    while chunk:
        async with batch.db.pipeline(transaction=False) as pipe:
            for item in chunk:
                await batch.add_to(
                    pipe,
                    item.key,
                    digest=item.digest,
                    line=item.line,
                    state=item.state,
                    payload=item.payload,
                )
            answers = await pipe.execute()
        for item, answer in zip(chunk, answers, strict=True):
            if int(answer) == -1:
                raise _changed(item)
            added += int(answer) == 1
            present += int(answer) == 0
            bad += int(answer) == 1 and item.state == FAILED
        chunk = await asyncio.to_thread(_chunk, lines, max_init_image_bytes)
    await batch.db.hset(meta, "sealed", 1)
    total = int(await batch.db.hget(meta, "total") or 0)
    return EnqueueReport(added=added, present=present, bad_lines=bad, total=total)


async def _check(
    batch: Batch, chunk: list[_Line], lines: Iterator[ManifestEntry], max_bytes: int
) -> None:
    while chunk:
        async with batch.db.pipeline(transaction=False) as pipe:
            for item in chunk:
                pipe.hget(batch.job_key(item.key), "h")
            digests = await pipe.execute()
        for item, digest in zip(chunk, digests, strict=True):
            if digest is not None and digest != item.digest:
                raise _changed(item)
        chunk = await asyncio.to_thread(_chunk, lines, max_bytes)


def _changed(item: _Line) -> InvalidRequestError:
    shown = short(repr(item.key.removeprefix("\0")), 80)
    return InvalidRequestError(
        f"manifest line {item.line}",
        f"job {shown} is already in the batch with another line: nothing was added "
        "(use another --batch name for a changed manifest)",
    )


def _chunk(lines: Iterator[ManifestEntry], max_bytes: int) -> list[_Line]:
    """The next lines of the manifest, prepared (blocking: run off the event loop)."""
    found = []
    for entry in lines:
        found.append(_prepare(entry, max_bytes))
        if len(found) >= _CHUNK:
            break
    return found


def _prepare(entry: ManifestEntry, max_bytes: int) -> _Line:
    key = entry.id if entry.id is not None else f"\0{entry.line}"
    request, error = entry.request, entry.error
    if request is not None and isinstance(request.init_image, Path):
        try:
            data = read_local_image(request.init_image, max_bytes=max_bytes)
            request = attrs.evolve(request, init_image=data)
        except InvalidRequestError as problem:
            request = None
            error = InvalidRequestError(f"manifest line {entry.line}", str(problem))
    if request is None:
        record = Record(
            id=entry.id,
            status=FAILED,
            error_type=type(error).__name__ if error else "InvalidRequestError",
            error=short(str(error)),
            line=entry.line,
        )
        digest = _digest(f"bad:{record.error}")
        return _Line(key, digest, entry.line, FAILED, record.to_json())
    body = json.dumps(request_to_wire(request), sort_keys=True, separators=(",", ":"))
    return _Line(key, _digest(body), entry.line, "queued", body)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]
