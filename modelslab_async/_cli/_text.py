"""Text that goes to the terminal or the journal: bounded, whatever a server or a file held."""

from __future__ import annotations

__all__ = ["short"]

#: The longest message written to the journal or stderr for one job.
MESSAGE_LIMIT = 500


def short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} chars)"
