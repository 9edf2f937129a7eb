"""
Reading a manifest: one JSON object per line, in the API's own field names plus an optional
``id`` (default: the line number). Lines are read lazily, one at a time; a bad line becomes an
entry with an error, naming its line, and never stops the lines after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attrs import frozen

from .. import Img2ImgRequest, InvalidRequestError, request_from_wire

__all__ = ["ManifestEntry", "count_lines", "read_manifest"]


@frozen(kw_only=True)
class ManifestEntry:
    """
    One manifest line: its request, or why it is unusable.

    Attributes:
        line: The line number, from 1.
        id: The job's id; None when the line repeats an id used earlier (it cannot have one).
        request: The request, when the line is valid.
        error: Why the line is unusable, naming the line.
    """

    line: int
    id: str | None
    request: Img2ImgRequest | None = None
    error: InvalidRequestError | None = None


def count_lines(path: Path) -> int:
    """Count the non-blank lines of a manifest (a quick pass for the progress total)."""
    with path.open("rb") as stream:
        return sum(1 for raw in stream if raw.strip())


def read_manifest(path: Path) -> Iterator[ManifestEntry]:
    """
    Yield one entry per non-blank line, lazily; ids must be unique (a repeat is a bad line).

    A relative ``init_image`` path is taken relative to the manifest's directory.
    """
    seen: dict[str, int] = {}
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            yield _entry(number, raw, path.parent, seen)


def _bad(number: int, job_id: str | None, problem: InvalidRequestError | str) -> ManifestEntry:
    """A bad line's entry; its error reads ``manifest line N: <field>: <what is wrong>``."""
    error = InvalidRequestError(f"manifest line {number}", str(problem))
    error.__cause__ = problem if isinstance(problem, InvalidRequestError) else None
    return ManifestEntry(line=number, id=job_id, error=error)


def _claim(job_id: str, number: int, seen: dict[str, int]) -> str | None:
    """Take ``job_id`` for line ``number``; None when an earlier line has it."""
    if job_id in seen:
        return None
    seen[job_id] = number
    return job_id


def _entry(number: int, raw: bytes, base: Path, seen: dict[str, int]) -> ManifestEntry:
    default_id = str(number)
    problem: str | None = None
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except json.JSONDecodeError as error:
        # The decoder's message gives a position only, never the text (which may hold a key).
        problem = f"is not valid JSON ({error.msg} at column {error.colno})"
    else:
        if not isinstance(body, dict):
            problem = f"must be a JSON object, got {type(body).__name__}"
    if problem is not None:
        # Named by its line number, unless another line already took that id.
        return _bad(number, _claim(default_id, number, seen), problem)
    raw_id = body.pop("id", None)
    if raw_id is None:
        job_id = default_id
    elif isinstance(raw_id, str) and raw_id.strip():
        job_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        job_id = str(raw_id)
    else:
        problem = "id: must be a non-empty string or an integer"
        return _bad(number, _claim(default_id, number, seen), problem)
    if _claim(job_id, number, seen) is None:
        return _bad(number, None, f"id: {job_id!r} repeats the id of line {seen[job_id]}")
    _resolve_image(body, base)
    try:
        request = request_from_wire(body)
    except InvalidRequestError as error:
        return _bad(number, job_id, error)
    return ManifestEntry(line=number, id=job_id, request=request)


def _resolve_image(body: dict[str, Any], base: Path) -> None:
    image = body.get("init_image")
    if not isinstance(image, str) or image.startswith(("http://", "https://")):
        return
    if str(body.get("base64", "")).lower() in ("yes", "true", "1"):
        return
    candidate = Path(image)
    if not candidate.is_absolute() and (base / candidate).is_file():
        body["init_image"] = str(base / candidate)
