"""
Reading a manifest: one JSON object per line, in the API's own field names plus an optional
``id`` (default: the line number). Lines are read lazily, one at a time; a bad line becomes an
entry with an error, naming its line, and never stops the lines after it.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from attrs import frozen

from .. import Img2ImgRequest, InvalidRequestError, request_from_wire
from ._local import resolve_local_image
from ._text import short

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
    "ManifestEntry",
    "count_lines",
    "read_manifest",
]

logger = logging.getLogger("modelslab_async.cli")

#: The longest manifest line read (inline base64 images included); longer lines are bad.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: The deepest nesting of arrays and objects in a line.
MAX_DEPTH = 32
#: The longest job id.
MAX_ID_CHARS = 512
_BOM = b"\xef\xbb\xbf"
_TOO_LONG = f"is longer than {MAX_LINE_BYTES} bytes"


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
    """Count the non-blank lines of a manifest (a quick pass, in blocks: any line length)."""
    count, blank = 0, True
    with path.open("rb") as stream:
        while block := stream.read(1024 * 1024):
            pieces = block.split(b"\n")
            for n, piece in enumerate(pieces):
                blank = blank and not piece.strip()
                if n < len(pieces) - 1:  # a newline ends this line
                    count += not blank
                    blank = True
    return count + (not blank)


def read_manifest(path: Path, *, allow_outside_files: bool = False) -> Iterator[ManifestEntry]:
    """
    Yield one entry per non-blank line, lazily; ids must be unique (a repeat is a bad line).

    A relative ``init_image`` path is taken relative to the manifest's folder, and must lead
    to a file inside it unless ``allow_outside_files``. Whatever a line holds, it ends as an
    entry with a request or with an :class:`InvalidRequestError` naming it: nothing raises.
    """
    seen: dict[str, int] = {}
    folder = path.absolute().parent
    with path.open("rb") as stream:
        number = 0
        while raw := stream.readline(MAX_LINE_BYTES + 1):
            number += 1
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                _skip_rest_of_line(stream)
                yield _bad(number, _claim(str(number), number, seen), _TOO_LONG)
                continue
            if not raw.strip():
                continue
            try:
                yield _entry(number, raw, folder, seen, allow_outside_files)
            except Exception as error:  # noqa: BLE001 - last resort: no line stops a batch
                logger.warning("manifest line %d: internal error %s", number, type(error).__name__)
                problem = f"could not be read (internal error: {type(error).__name__})"
                yield _bad(number, _claim(str(number), number, seen), problem)


def _skip_rest_of_line(stream: IO[bytes]) -> None:
    while (piece := stream.readline(1024 * 1024)) and not piece.endswith(b"\n"):
        pass


def _bad(number: int, job_id: str | None, problem: InvalidRequestError | str) -> ManifestEntry:
    """A bad line's entry; its error reads ``manifest line N: <field>: <what is wrong>``."""
    error = InvalidRequestError(f"manifest line {number}", short(str(problem)))
    error.__cause__ = problem if isinstance(problem, InvalidRequestError) else None
    return ManifestEntry(line=number, id=job_id, error=error)


def _claim(job_id: str, number: int, seen: dict[str, int]) -> str | None:
    """Take ``job_id`` for line ``number``; None when an earlier line has it."""
    if job_id in seen:
        return None
    seen[job_id] = number
    return job_id


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The line's JSON object, or what is wrong with it (never the text: it may hold a key)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as error:
        return None, f"is not valid JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return None, f"is nested more than {MAX_DEPTH} levels deep"
    except ValueError:  # e.g. an integer of more than 4300 digits
        return None, "is not valid JSON (a number too long to read)"
    if not isinstance(body, dict):
        return None, f"must be a JSON object, got {type(body).__name__}"
    if _depth(body) > MAX_DEPTH:
        return None, f"is nested more than {MAX_DEPTH} levels deep"
    return body, None


def _entry(
    number: int, raw: bytes, folder: Path, seen: dict[str, int], allow_outside: bool
) -> ManifestEntry:
    default_id = str(number)
    body, problem = _parse(raw)
    if body is None:
        # Named by its line number, unless another line already took that id.
        return _bad(number, _claim(default_id, number, seen), problem or "is unreadable")
    raw_id = body.pop("id", None)
    job_id, problem = _job_id(raw_id, default_id)
    if job_id is None:
        return _bad(number, _claim(default_id, number, seen), problem or "id: is unusable")
    if _claim(job_id, number, seen) is None:
        shown = short(repr(job_id), 60)
        return _bad(number, None, f"id: {shown} repeats the id of line {seen[job_id]}")
    try:
        _resolve_image(body, folder, allow_outside)
        request = request_from_wire(body)
    except InvalidRequestError as error:
        return _bad(number, job_id, error)
    return ManifestEntry(line=number, id=job_id, request=request)


def _job_id(raw_id: Any, default_id: str) -> tuple[str | None, str | None]:
    if raw_id is None:
        return default_id, None
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    elif not isinstance(raw_id, str) or not raw_id.strip():
        return None, "id: must be a non-empty string or an integer"
    if len(raw_id) > MAX_ID_CHARS:
        return None, f"id: longer than {MAX_ID_CHARS} characters"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in raw_id):
        return None, "id: must not hold control characters"
    return raw_id, None


def _resolve_image(body: dict[str, Any], folder: Path, allow_outside: bool) -> None:
    """Replace a local ``init_image`` path by the real path of the file, checked."""
    image = body.get("init_image")
    if not isinstance(image, str) or image.startswith(("http://", "https://")):
        return
    flag = body.get("base64")
    if isinstance(flag, bool | str) and str(flag).strip().lower() in ("yes", "true", "1"):
        return
    body["init_image"] = str(resolve_local_image(image, folder, allow_outside=allow_outside))


def _depth(value: Any) -> int:
    """How deeply containers nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in _children(item))
    return deepest


def _children(item: dict[str, Any] | list[Any]) -> list[Any]:
    return list(item.values()) if isinstance(item, dict) else item
