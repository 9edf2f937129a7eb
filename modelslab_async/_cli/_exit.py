"""Exit statuses of ``modelslab-async``, for scripts."""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

#: Every job succeeded (``servers``: every server answered ``ok``).
EXIT_OK = 0
#: Some jobs failed, bad manifest lines and failed downloads included (``servers``: some
#: server did not answer ``ok``).
EXIT_FAILED = 1
#: Bad input, usage or configuration (unreadable manifest, no keys, bad config): nothing ran.
EXIT_USAGE = 2
#: Interrupted by SIGINT (or SIGTERM); a batch run again resumes where it stopped.
EXIT_INTERRUPTED = 130
