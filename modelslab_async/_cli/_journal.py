"""
The results file is also the batch's journal: append-only JSON lines, written as the batch
runs and flushed after every record, so that a killed run (SIGKILL included) loses nothing.

Statuses, in the order a job goes through them::

    submitted   (not final) the first submit is going out: from here a server may run the job
    accepted    (not final) the server queued the job: request_id and server, to collect it
    generated   (not final) the answer arrived with images: written the moment it arrives
    succeeded   (final)
    failed      (final)

On resume, final ids are skipped, ``generated`` ones are only downloaded again, ``accepted``
ones are collected by polling with the key that submitted them, and the rest are submitted;
those whose last record is ``submitted`` (a submit cut by the kill) are marked
``possible_duplicate``.

Durability: every record is flushed to the OS as it is written, so a killed process (SIGKILL
included) loses nothing; the file is fsynced when the run ends, not per record, so a power
loss can lose the last few seconds of records (those jobs are then submitted again).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from attrs import define, field, frozen

from .. import InvalidRequestError

__all__ = [
    "ACCEPTED",
    "FAILED",
    "FINAL",
    "GENERATED",
    "SUBMITTED",
    "SUCCEEDED",
    "JournalIndex",
    "JournalWriter",
    "Record",
    "read_journal",
]

SUBMITTED = "submitted"
ACCEPTED = "accepted"
GENERATED = "generated"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINAL = frozenset({SUCCEEDED, FAILED})
_STATUSES = frozenset({SUBMITTED, ACCEPTED, GENERATED}) | FINAL


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@frozen(kw_only=True)
class Record:
    """
    One line of the results file.

    Attributes:
        id: The job's id (None for a manifest line that repeats an earlier id).
        status: ``submitted``, ``accepted``, ``generated``, ``succeeded`` or ``failed``.
        request_id: The job's id on the server, once known.
        server: The name of the server (route) that took the job.
        output: The generated images' URLs.
        images: Local paths of the downloaded images (None where a download failed).
        attempts: Submit attempts made.
        elapsed: Seconds from the job's start to its result.
        possible_duplicate: True when the job may have run twice on the servers.
        error_type: The error's type name, for a failed job.
        error: The error's message, for a failed job.
        line: The manifest line, for a line that could not be read as a job.
        worker: The worker that finished the job (``modelslab-async worker``), if any.
        host: The machine that worker ran on (where its ``images`` are).
        at: When the record was written (UTC, ISO 8601).
    """

    id: str | None
    status: str
    request_id: str | None = None
    server: str | None = None
    output: tuple[str, ...] = ()
    images: tuple[str | None, ...] = ()
    attempts: int = 0
    elapsed: float = 0.0
    possible_duplicate: bool = False
    error_type: str | None = None
    error: str | None = None
    line: int | None = None
    worker: str | None = None
    host: str | None = None
    at: str = field(factory=_now)

    @property
    def final(self) -> bool:
        """True for ``succeeded`` and ``failed``."""
        return self.status in FINAL

    def to_json(self) -> str:
        """The record as one JSON line (without the newline)."""
        data: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == SUBMITTED:
            data["server"] = self.server
        elif self.status == ACCEPTED:
            data |= {
                "request_id": self.request_id,
                "server": self.server,
                "possible_duplicate": self.possible_duplicate,
            }
        else:
            data |= {
                "request_id": self.request_id,
                "server": self.server,
                "output": list(self.output),
                "attempts": self.attempts,
                "elapsed": round(self.elapsed, 3),
                "possible_duplicate": self.possible_duplicate,
            }
        if self.final:
            data |= {
                "images": list(self.images),
                "error_type": self.error_type,
                "error": self.error,
            }
        if self.line is not None:
            data["line"] = self.line
        if self.worker is not None:
            data |= {"worker": self.worker, "host": self.host}
        data["at"] = self.at
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        """Read a record back; None when the line is not one of ours."""
        if not isinstance(data, dict) or data.get("status") not in _STATUSES:
            return None
        job_id, line = data.get("id"), data.get("line")
        if job_id is not None and not isinstance(job_id, str):
            return None
        output = data.get("output") or []
        return cls(
            id=job_id,
            status=data["status"],
            request_id=_text(data.get("request_id")),
            server=_text(data.get("server")),
            output=tuple(u for u in output if isinstance(u, str)),
            attempts=int(data.get("attempts") or 0),
            elapsed=float(data.get("elapsed") or 0.0),
            possible_duplicate=bool(data.get("possible_duplicate")),
            line=line if isinstance(line, int) else None,
            at=str(data.get("at", "")),
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@define
class JournalIndex:
    """What an earlier run left in the results file, by job id."""

    final: dict[str, str] = field(factory=dict)  #: id -> "succeeded" or "failed"
    final_lines: set[int] = field(factory=set)  #: lines of id-less (repeated id) records
    generated: dict[str, Record] = field(factory=dict)
    accepted: dict[str, Record] = field(factory=dict)
    submitted: dict[str, Record] = field(factory=dict)  #: sent, no answer journaled
    unreadable: list[int] = field(factory=list)  #: line numbers that were not records
    truncated: bool = False  #: the last line was cut short (a kill mid-write)

    def add(self, record: Record) -> None:
        """Take one record into account; a final record wins over any other."""
        if record.id is None:
            if record.final and record.line is not None:
                self.final_lines.add(record.line)
            return
        if record.id in self.final:
            return
        if record.final:
            self.final[record.id] = record.status
            self.generated.pop(record.id, None)
            self.accepted.pop(record.id, None)
            self.submitted.pop(record.id, None)
        elif record.status == GENERATED:
            self.generated[record.id] = record
            self.accepted.pop(record.id, None)
            self.submitted.pop(record.id, None)
        elif record.id in self.generated:
            return
        elif record.status == ACCEPTED:
            self.accepted[record.id] = record
            self.submitted.pop(record.id, None)
        elif record.id not in self.accepted:
            self.submitted[record.id] = record


def read_journal(path: Path) -> JournalIndex:
    """Index a results file; a missing file is an empty journal, a cut last line is ignored."""
    index = JournalIndex()
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return index
    with stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                record = Record.from_json(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, TypeError):
                record = None
            if record is not None:
                index.add(record)
            elif raw.endswith(b"\n"):
                index.unreadable.append(number)
            else:
                index.truncated = True
    return index


class JournalWriter:
    """
    Appends records to the results file, one flushed line each, holding an exclusive lock so
    that two runs cannot write the same file. A cut last line is ended before writing.

    Raises:
        InvalidRequestError: The file cannot be opened, or another run holds it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # backslashreplace: a lone surrogate in some text cannot stop the journal
            stream: IO[str] = path.open(
                "a", encoding="utf-8", errors="backslashreplace", newline="\n"
            )
        except OSError as error:
            raise InvalidRequestError("--out", f"cannot open {path}: {error.strerror}") from None
        self._stream = stream
        try:
            _lock(stream)
            # Ended on the first write, so that the cut line can still be told apart.
            self._cut = _needs_newline(path)
        except BaseException:
            stream.close()
            raise
        self.written = 0

    def write(self, record: Record) -> None:
        """Append one record and flush it to the OS (it survives the process being killed)."""
        start, self._cut = "\n" if self._cut else "", False
        self._stream.write(start + record.to_json() + "\n")
        self._stream.flush()
        self.written += 1

    def close(self) -> None:
        """Flush, sync to disk and close; safe to call twice."""
        if self._stream.closed:
            return
        try:
            self._stream.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._stream.fileno())
        finally:
            self._stream.close()


def _needs_newline(path: Path) -> bool:
    with path.open("rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() == 0:
            return False
        stream.seek(-1, os.SEEK_END)
        return stream.read(1) != b"\n"


def _lock(stream: IO[str]) -> None:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only; elsewhere runs are not locked
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidRequestError(
            "--out", f"{stream.name} is being written by another run"
        ) from None
