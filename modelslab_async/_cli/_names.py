"""
File names for a job's images, unique whatever the ids.

An id is kept as it is when it is made of ``A-Z a-z 0-9 . _ -`` only; every other byte of its
UTF-8 form (``%`` included, and a leading dot) is written ``%XX``. That escaping is one-to-one,
and its output never holds ``+`` or ``~``, which therefore can mark what is added to it:

* ``+N`` the sample number, for jobs with more than one image (``same+1.png``, ``same+2.png``;
  a job with the id ``same-1`` writes ``same-1.png``, a job ``same+1`` writes ``same%2B1.png``);
* ``~HASH`` a long id, cut to its first 80 characters followed by 16 hex digits of its SHA-256,
  so that a name stays far below the 255 bytes file systems allow.

Names differ in case only when ids do: on a case-insensitive file system, ids that differ only
in case share their files.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["file_stem", "image_names"]

_PLAIN = re.compile(rb"[A-Za-z0-9._-]")
_LONGEST = 96  # escaped stems longer than this are cut and hashed
_KEPT = 80


def file_stem(job_id: str) -> str:
    """The file name (without extension) for a job id: one-to-one, short, never hidden."""
    raw = job_id.encode("utf-8", "surrogatepass")
    escaped = "".join(
        chr(byte) if _PLAIN.fullmatch(bytes([byte])) else f"%{byte:02X}" for byte in raw
    )
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    if not escaped:
        escaped = "%"  # the empty id (never made by the manifest reader) gets a name too
    if len(escaped) <= _LONGEST:
        return escaped
    digest = hashlib.sha256(raw).hexdigest()[:16]
    kept = escaped[:_KEPT]
    cut = kept.rfind("%", _KEPT - 2)
    if cut >= 0:  # not in the middle of an escape
        kept = kept[:cut]
    return f"{kept}~{digest}"


def image_names(job_id: str, count: int) -> list[str]:
    """The names (without extension) of a job's ``count`` images."""
    stem = file_stem(job_id)
    if count == 1:
        return [stem]
    return [f"{stem}+{n}" for n in range(1, count + 1)]
