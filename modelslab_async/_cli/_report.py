"""
Showing a batch as it runs: a live progress bar (rich, imported lazily) on a terminal, plain
time-stamped log lines otherwise or when rich is not installed. Everything goes to stderr, and
no line ever holds a key: servers are named by their names.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TextIO

from ._summary import BatchStats
from ._table import rich_available

__all__ = ["PlainReporter", "Reporter", "RichReporter", "make_reporter", "status_line"]


class Reporter(Protocol):
    """Receives a batch's progress; ``refresh`` is called often and must be cheap."""

    def start(self, stats: BatchStats) -> None:
        """The batch starts; ``stats`` is updated in place from now on."""

    def refresh(self) -> None:
        """Show the current totals (a reporter may skip some calls)."""

    def note(self, text: str) -> None:
        """Show one line of information (a failure, a resumed job...)."""

    def stop(self) -> None:
        """The batch ended: show the final totals and release the terminal."""


def make_reporter(
    stream: TextIO, *, interactive: bool | None = None, interval: float = 5.0
) -> Reporter:
    """A progress bar when ``stream`` is a terminal and rich is installed, log lines otherwise."""
    if interactive is None:
        interactive = stream.isatty()
    if interactive and rich_available():
        return RichReporter(stream)
    return PlainReporter(stream, interval=interval)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_line(stats: BatchStats) -> str:
    """One line of totals: done / failed / in flight / rate / ETA."""
    total = "?" if stats.total is None else str(stats.total)
    done = stats.succeeded + stats.skipped_succeeded
    failed = stats.all_failed
    parts = [f"{done + failed}/{total} ended", f"{done} ok", f"{failed} failed"]
    parts.append(f"{stats.in_flight} in flight")
    if stats.downloading:
        parts.append(f"{stats.downloading} downloading")
    parts.append(f"{stats.rate:.1f} jobs/s")
    parts.append(f"ETA {_duration(stats.eta())}")
    return ", ".join(parts)


class PlainReporter:
    """Time-stamped lines: every note at once, the totals every ``interval`` seconds."""

    def __init__(self, stream: TextIO, *, interval: float = 5.0) -> None:
        self._stream = stream
        self._interval = interval
        self._stats: BatchStats | None = None
        self._last = 0.0

    def _line(self, text: str) -> None:
        self._stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self._stream.flush()

    def start(self, stats: BatchStats) -> None:
        """Remember the totals to report."""
        self._stats = stats
        self._last = time.monotonic()

    def refresh(self) -> None:
        """Print the totals if ``interval`` seconds passed since the last time."""
        now = time.monotonic()
        if self._stats is not None and now - self._last >= self._interval:
            self._last = now
            self._line(status_line(self._stats))

    def note(self, text: str) -> None:
        """Print a line now."""
        self._line(text)

    def stop(self) -> None:
        """Print the final totals."""
        if self._stats is not None:
            self._line(status_line(self._stats))


class RichReporter:
    """A live rich progress bar: done / failed / in flight / rate / ETA; notes print above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich is optional (the cli extra)

        self._console = Console(file=stream, highlight=False)
        self._progress: Any = None
        self._task: Any = None
        self._stats: BatchStats | None = None

    def start(self, stats: BatchStats) -> None:
        """Start the live display."""
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn  # noqa: PLC0415

        self._stats = stats
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]batch"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.fields[total_text]}"),
            TextColumn("[green]{task.fields[ok]} ok"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[in_flight]}"),
            TextColumn("{task.fields[rate]} jobs/s"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self._console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("batch", total=stats.total, **self._fields())
        self._progress.start()

    def _fields(self) -> dict[str, Any]:
        stats = self._stats
        assert stats is not None  # noqa: S101 - set by start()
        in_flight = f"{stats.in_flight} in flight"
        if stats.downloading:
            in_flight += f", {stats.downloading} downloading"
        return {
            "total_text": "?" if stats.total is None else str(stats.total),
            "ok": stats.succeeded + stats.skipped_succeeded,
            "failed": stats.all_failed,
            "in_flight": in_flight,
            "rate": f"{stats.rate:.1f}",
            "eta": _duration(stats.eta()),
        }

    def refresh(self) -> None:
        """Redraw the bar."""
        if self._progress is None or self._stats is None:
            return
        stats = self._stats
        completed = stats.finished + stats.skipped
        self._progress.update(self._task, completed=completed, total=stats.total, **self._fields())
        self._progress.refresh()

    def note(self, text: str) -> None:
        """Print a line above the bar."""
        from rich.text import Text  # noqa: PLC0415

        self._console.print(Text(text))

    def stop(self) -> None:
        """Draw the final state and stop the live display."""
        if self._progress is not None:
            self.refresh()
            self._progress.stop()
            self._progress = None
