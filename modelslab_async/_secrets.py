"""Keeping API keys out of every log line, repr, message and file.

ModelsLab carries the key in the JSON body, so header filters (as in other SDKs) are not enough:
the key must be dropped from bodies before they are logged, a server is referred to by its name
or by a short fingerprint of its key, a key held in a :class:`Secret` never shows in a repr, a
dict or a pickle, and any text a server sent is scrubbed of every key (and of any piece of one
of 8 characters or more) before it reaches an error, a log line or a file: a hostile gateway
may echo the request back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, final

__all__ = ["Scrubber", "Secret", "fingerprint", "loggable_body", "redact_body"]

#: The shortest piece of a key that scrubbing removes.
PIECE = 8
#: Longest string value a DEBUG log line shows of a body (base64 images are cut).
_LOGGED_VALUE = 120

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
    """Return a copy of a JSON body that is safe to show: secret fields are replaced."""
    return {name: (_REDACTED if name in _SECRET_FIELDS else value) for name, value in body.items()}


def loggable_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body fit for a DEBUG log line: secret fields replaced, long strings (base64) cut."""
    return {
        name: (_REDACTED if name in _SECRET_FIELDS else _short(value))
        for name, value in body.items()
    }


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _LOGGED_VALUE:
        return f"{value[:40]}...<{len(value)} characters>"
    return value


@final
class Secret:
    """
    An API key. Its repr and str are its fingerprint; it compares and hashes by value; it
    refuses to be pickled; ``reveal()`` gives the key to the one place that sends it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, to put in a request body."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """The key's fingerprint."""
        return fingerprint(self._value)

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("an API key is never pickled (it would be written in clear)")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: Any) -> Secret:
        return self


class Scrubber:
    """
    Removes every key of a pool, and every piece of one of ``PIECE`` characters or more, from
    a text a server sent. Used where server text meets an error, a log line or a file.
    """

    __slots__ = ("_pieces", "_shortest")

    def __init__(self, keys: Iterable[str]) -> None:
        pieces: dict[int, set[str]] = {}
        for key in keys:
            if key:
                width = min(PIECE, len(key))
                found = pieces.setdefault(width, set())
                found.update(key[i : i + width] for i in range(len(key) - width + 1))
        self._pieces = {width: frozenset(found) for width, found in pieces.items()}
        self._shortest = min(pieces, default=0)

    def __call__(self, text: str) -> str:
        """``text`` with every piece of a key replaced by ``<redacted>``."""
        if len(text) < self._shortest or not self._pieces:
            return text  # too short to hold a piece of any key (most job ids)
        spans = [
            (i, i + width)
            for width, pieces in self._pieces.items()
            for i in range(len(text) - width + 1)
            if text[i : i + width] in pieces
        ]
        if not spans:
            return text
        spans.sort()
        parts: list[str] = []
        last = 0
        start, end = spans[0]
        for i, j in spans[1:]:
            if i > end:
                parts += [text[last:start], _REDACTED]
                last, start = end, i
            end = max(end, j)
        parts += [text[last:start], _REDACTED, text[end:]]
        return "".join(parts)
