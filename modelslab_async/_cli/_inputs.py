"""Checking and opening a batch's inputs before anything is sent (exit status 2 otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

from attrs import define, field, frozen

from .. import InvalidRequestError
from ._download import remove_leftovers
from ._journal import JournalIndex, JournalWriter, read_journal
from ._local import MAX_INIT_IMAGE_BYTES
from ._manifest import count_lines

__all__ = ["MAX_IMAGE_BYTES", "BatchOptions", "Prepared", "prepare"]

#: The default cap on one downloaded image.
MAX_IMAGE_BYTES = 50 * 1024 * 1024


@frozen(kw_only=True)
class BatchOptions:
    """What the ``batch`` command was asked to do."""

    manifest: Path
    results: Path
    images: Path | None = None
    concurrency: int | None = None
    download_concurrency: int = 8
    verbose: bool = False
    allow_private_downloads: bool = False
    max_image_bytes: int = MAX_IMAGE_BYTES
    allow_outside_files: bool = False
    max_init_image_bytes: int = MAX_INIT_IMAGE_BYTES


@define
class Prepared:
    """Everything opened and checked before anything is sent."""

    options: BatchOptions
    journal: JournalWriter
    index: JournalIndex
    total: int
    images_lock: int | None = field(default=None, kw_only=True)  #: locked images dir (fd)

    def close(self) -> None:
        """Close the journal (synced) and unlock the images directory; safe to call twice."""
        try:
            self.journal.close()
        finally:
            lock, self.images_lock = self.images_lock, None
            if lock is not None:
                os.close(lock)


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
    images_lock = None if options.images is None else _open_images(options.images)
    try:
        journal = JournalWriter(options.results)
    except BaseException:
        if images_lock is not None:
            os.close(images_lock)
        raise
    prepared = Prepared(
        options=options, journal=journal, index=JournalIndex(), total=total, images_lock=images_lock
    )
    try:
        prepared.index = read_journal(options.results)
    except OSError as error:
        prepared.close()
        raise InvalidRequestError(
            "--out", f"cannot read {options.results}: {error.strerror}"
        ) from None
    return prepared


def _open_images(directory: Path) -> int:
    """Create and lock the images directory, and remove what a killed run left in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory, os.O_RDONLY)
    except OSError as error:
        raise InvalidRequestError(
            "--images", f"cannot create {directory}: {error.strerror}"
        ) from None
    try:
        _lock_directory(lock, directory)
        remove_leftovers(directory)  # safe: no other run writes here while we hold the lock
    except BaseException:
        os.close(lock)
        raise
    return lock


def _lock_directory(descriptor: int, directory: Path) -> None:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only; elsewhere runs are not locked
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidRequestError(
            "--images", f"{directory} is being written by another run"
        ) from None
    except OSError:
        return  # a file system without locks: run unlocked
