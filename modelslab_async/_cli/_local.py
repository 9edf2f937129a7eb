"""
Local files named as ``init_image`` in a manifest: found, fenced, checked, read once.

A relative path is taken relative to the manifest's folder, never the current directory. A
path that leads outside that folder (after resolving symlinks) is refused unless the user
allows it. The file must be a PNG, JPEG or WebP image by its first bytes and no larger than a
cap; it is read once, when its job is about to be submitted, and those bytes are what is sent
on every attempt.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .. import InvalidRequestError
from ._text import short

__all__ = ["MAX_INIT_IMAGE_BYTES", "read_local_image", "resolve_local_image"]

#: The default cap on a local ``init_image`` file.
MAX_INIT_IMAGE_BYTES = 20 * 1024 * 1024

_FIELD = "init_image"
_TYPES = "a PNG, JPEG or WebP image"


def resolve_local_image(text: str, folder: Path, *, allow_outside: bool = False) -> Path:
    """
    The real path of the file ``text`` names, relative to ``folder`` (the manifest's).

    Raises:
        InvalidRequestError: No such file, not a regular file, or outside ``folder`` when that
            is not allowed.
    """
    shown = short(text, 80)
    if "\x00" in text:
        raise InvalidRequestError(_FIELD, "a file name cannot hold a NUL character")
    base = folder.resolve()
    try:
        found = (base / text).resolve(strict=True)  # an absolute `text` replaces `base`
        mode = found.stat().st_mode
    except FileNotFoundError:
        raise InvalidRequestError(
            _FIELD, f"file not found: {shown} (relative paths start at {base})"
        ) from None
    except (OSError, RuntimeError, ValueError) as error:  # loops, bad names, permissions
        raise InvalidRequestError(_FIELD, f"cannot open {shown}: {_reason(error)}") from None
    if not allow_outside and not found.is_relative_to(base):
        raise InvalidRequestError(
            _FIELD,
            f"{shown} is outside the manifest's folder {base}",
            allowed="files in that folder, or any file with --allow-outside-files",
        )
    if not stat.S_ISREG(mode):
        raise InvalidRequestError(_FIELD, f"{shown} is not a regular file")
    return found


def read_local_image(path: Path, *, max_bytes: int = MAX_INIT_IMAGE_BYTES) -> bytes:
    """
    The bytes of a local image, checked (blocking: a few milliseconds for a large file).

    Raises:
        InvalidRequestError: Unreadable, larger than ``max_bytes``, or not an image.
    """
    shown = short(str(path), 80)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            data = b"" if size > max_bytes else stream.read(max_bytes + 1)
    except OSError as error:
        raise InvalidRequestError(_FIELD, f"cannot read {shown}: {_reason(error)}") from None
    if size > max_bytes or len(data) > max_bytes:
        raise InvalidRequestError(
            _FIELD,
            f"{shown} is larger than {max_bytes} bytes",
            allowed="smaller files (--max-init-image-bytes)",
        )
    if not is_input_image(data):
        raise InvalidRequestError(_FIELD, f"{shown} is not {_TYPES}", allowed=_TYPES)
    return data


def is_input_image(data: bytes) -> bool:
    """True for PNG, JPEG and WebP data (by the first bytes)."""
    if data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
