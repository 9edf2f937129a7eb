"""Keeping API keys out of every log line, repr, message and file.

ModelsLab carries the key in the JSON body, so header filters (as in other SDKs) are not enough:
the key must be dropped from bodies before they are logged, and a server is referred to by its
name or by a short fingerprint of its key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["fingerprint", "redact_body"]

_REDACTED = "<redacted>"
_SECRET_FIELDS = frozenset({"key", "sync_key", "aws_secret_access_key", "aws_access_key_id"})


def fingerprint(key: str) -> str:
    """
    Return a short, stable, non-reversible name for an API key, such as ``key-3f9a1c``.

    The same key always gives the same fingerprint, so log lines from different runs can be
    matched, but nothing about the key can be read from it.
    """
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"key-{digest[:6]}"


def redact_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a JSON body that is safe to log: secret fields are replaced."""
    return {name: (_REDACTED if name in _SECRET_FIELDS else value) for name, value in body.items()}
