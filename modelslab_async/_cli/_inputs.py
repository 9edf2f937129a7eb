"""Checking and opening a batch's inputs before anything is sent (exit status 2 otherwise)."""

from __future__ import annotations

from pathlib import Path

from attrs import define, frozen

from .. import InvalidRequestError
from ._journal import JournalIndex, JournalWriter, read_journal
from ._manifest import count_lines

__all__ = ["BatchOptions", "Prepared", "prepare"]


@frozen(kw_only=True)
class BatchOptions:
    """What the ``batch`` command was asked to do."""

    manifest: Path
    results: Path
    images: Path | None = None
    concurrency: int | None = None
    download_concurrency: int = 8
    verbose: bool = False


@define
class Prepared:
    """Everything opened and checked before anything is sent."""

    options: BatchOptions
    journal: JournalWriter
    index: JournalIndex
    total: int


def prepare(options: BatchOptions) -> Prepared:
    """
    Check the inputs and open the journal (blocking: call it off the event loop).

    Raises:
        InvalidRequestError: The manifest cannot be read, the images directory cannot be made,
            or the results file cannot be opened (or another run holds it).
    """
    try:
        total = count_lines(options.manifest)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidRequestError("MANIFEST", f"cannot read {options.manifest}: {reason}") from None
    if options.images is not None:
        try:
            options.images.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvalidRequestError(
                "--images", f"cannot create {options.images}: {error.strerror}"
            ) from None
    journal = JournalWriter(options.results)
    try:
        index = read_journal(options.results)
    except OSError as error:
        journal.close()
        raise InvalidRequestError(
            "--out", f"cannot read {options.results}: {error.strerror}"
        ) from None
    return Prepared(options=options, journal=journal, index=index, total=total)
