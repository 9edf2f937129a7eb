"""
The ``batch`` command's engine: manifest in, journal out, resumable at any moment.

The manifest is streamed lazily into the dispatcher; every event and outcome is journaled as
it happens (see ``_journal.py``): ``accepted`` as soon as a server queues a job, ``generated``
before its images are downloaded, then one final record. A killed run is resumed by running the
same command again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

from .. import Client, Dispatcher, EventKind, InvalidRequestError, Job, JobEvent, JobOutcome
from ._download import Downloader, DownloadError, DownloadResult
from ._inputs import Prepared
from ._journal import (
    ACCEPTED,
    FAILED,
    GENERATED,
    SUCCEEDED,
    Record,
)
from ._manifest import ManifestEntry, read_manifest
from ._report import Reporter
from ._summary import BatchStats

__all__ = ["BatchRun"]

_TICK = 0.2


class BatchRun:
    """One run of a manifest: dispatching, journaling, downloading, counting."""

    def __init__(
        self, client: Client, prepared: Prepared, stats: BatchStats, reporter: Reporter
    ) -> None:
        options = prepared.options
        self._client = client
        self._options = options
        self._journal = prepared.journal
        self._index = prepared.index
        self.stats = stats
        self._reporter = reporter
        self.dispatcher = Dispatcher(
            client, concurrency=options.concurrency, on_event=self._on_event
        )
        self._downloader = (
            None
            if options.images is None
            else Downloader(client, options.images, concurrency=options.download_concurrency)
        )
        # Jobs whose images are being downloaded: bounded, so memory stays bounded too.
        self._pending = asyncio.Semaphore(max(4 * options.download_concurrency, 16))

    async def run(self) -> None:
        """Run every job of the manifest not finished by an earlier run."""
        self._announce()
        async with asyncio.TaskGroup() as outer:
            ticker = outer.create_task(self._tick())
            try:
                async with asyncio.TaskGroup() as downloads:
                    for record in list(self._index.generated.values()):
                        await self._download_later(downloads, record, resumed=True)
                    jobs = self._jobs()
                    try:
                        async with contextlib.aclosing(self.dispatcher.run(jobs)) as outcomes:
                            async for outcome in outcomes:
                                await self._handle(downloads, outcome)
                                self._refresh()
                    finally:
                        jobs.close()
            finally:
                ticker.cancel()
                self._refresh()

    # --- input --------------------------------------------------------------------------------

    def _announce(self) -> None:
        index, note = self._index, self._reporter.note
        options = self._options
        note(f"{self.stats.total} jobs in {options.manifest}, results in {options.results}")
        if index.final or index.accepted or index.generated:
            note(
                f"resuming: {len(index.final)} finished earlier (skipped), "
                f"{len(index.accepted)} accepted (collected by polling), "
                f"{len(index.generated)} generated (images downloaded again)"
            )
        if index.truncated:
            note("the last line of the results file was cut short (a killed run); ignored")
        if index.unreadable:
            shown = ", ".join(map(str, index.unreadable[:5]))
            note(f"warning: ignored unreadable lines of the results file: {shown}")

    def _jobs(self) -> Generator[Job, None, None]:
        """The jobs to run, read lazily from the manifest; bad lines are journaled here."""
        index, stats = self._index, self.stats
        for entry in read_manifest(self._options.manifest):
            if entry.id is None:
                if entry.line in index.final_lines:
                    stats.skipped_failed += 1
                else:
                    self._bad_line(entry)
                continue
            earlier = index.final.get(entry.id)
            if earlier is not None:
                if earlier == SUCCEEDED:
                    stats.skipped_succeeded += 1
                else:
                    stats.skipped_failed += 1
                continue
            if entry.id in index.generated:
                continue  # its images are being downloaded again
            accepted = index.accepted.get(entry.id)
            if accepted is not None:
                stats.collected += 1
                yield Job(
                    id=entry.id,
                    request=entry.request,
                    request_id=accepted.request_id,
                    server=self._route_name(accepted.server),
                )
            elif entry.error is not None:
                self._bad_line(entry)
            else:
                stats.submitted += 1
                yield Job(id=entry.id, request=entry.request)

    def _route_name(self, server: str | None) -> str | None:
        """The route a journaled job is collected through (same key), across routing modes."""
        if server is None:
            return None
        for candidate in (server, server.removesuffix(" (balancer)")):
            try:
                return self._client.pool.route(candidate).name
            except InvalidRequestError:
                continue
        return server  # unknown now: the job fails, naming the server

    def _bad_line(self, entry: ManifestEntry) -> None:
        error = entry.error
        assert error is not None  # noqa: S101 - only bad lines come here
        self._journal.write(
            Record(
                id=entry.id,
                status=FAILED,
                error_type=type(error).__name__,
                error=str(error),
                line=entry.line,
            )
        )
        self.stats.bad_lines += 1
        self.stats.job_ended(None, 0.0, type(error).__name__)
        self._reporter.note(f"bad line: {error}")

    # --- events and outcomes ------------------------------------------------------------------

    def _on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED and event.job_id is not None and event.request_id:
            self._journal.write(
                Record(
                    id=event.job_id,
                    status=ACCEPTED,
                    request_id=event.request_id,
                    server=event.server,
                )
            )
        elif event.kind is EventKind.RETRIED and self._options.verbose:
            self._reporter.note(
                f"job {event.job_id}: retry in {event.wait or 0:.2f}s after {event.error}"
            )

    async def _handle(self, downloads: asyncio.TaskGroup, outcome: JobOutcome) -> None:
        if outcome.possible_duplicate:
            self.stats.possible_duplicates += 1
        result = outcome.result
        if result is None:
            error = outcome.error
            kind = type(error).__name__
            self._journal.write(
                Record(
                    id=outcome.job_id,
                    status=FAILED,
                    request_id=getattr(error, "request_id", None),
                    server=outcome.server,
                    attempts=sum(a.phase == "submit" for a in outcome.attempts),
                    elapsed=outcome.elapsed,
                    possible_duplicate=outcome.possible_duplicate,
                    error_type=kind,
                    error=str(error),
                )
            )
            self.stats.job_ended(outcome.server, outcome.elapsed, kind)
            self._reporter.note(f"job {outcome.job_id} failed: {kind}: {error}")
            return
        generated = Record(
            id=outcome.job_id,
            status=GENERATED,
            request_id=result.id,
            server=result.server,
            output=result.output,
            attempts=result.attempts,
            elapsed=outcome.elapsed,
            possible_duplicate=outcome.possible_duplicate,
        )
        if self._downloader is None:
            self._finish(generated, DownloadResult(()))
            return
        # Journaled before any download: a kill from here on never submits the job again.
        self._journal.write(generated)
        await self._download_later(downloads, generated)

    async def _download_later(
        self, downloads: asyncio.TaskGroup, record: Record, *, resumed: bool = False
    ) -> None:
        await self._pending.acquire()
        self.stats.downloading += 1
        downloads.create_task(self._download(record, resumed=resumed))

    async def _download(self, record: Record, *, resumed: bool) -> None:
        assert record.id is not None  # noqa: S101 - generated records always have ids
        try:
            if self._downloader is None:
                result = DownloadResult(())
            else:
                result = await self._downloader.fetch_job(record.id, record.output)
        except Exception as error:  # noqa: BLE001 - a failed download is recorded, not fatal
            result = DownloadResult((), DownloadError(f"{type(error).__name__}: {error}"))
        finally:
            self._pending.release()
            self.stats.downloading -= 1
        if resumed:
            self.stats.redownloaded += 1
        self._finish(record, result)

    def _finish(self, generated: Record, download: DownloadResult) -> None:
        error = download.error
        final = Record(
            id=generated.id,
            status=SUCCEEDED if error is None else FAILED,
            request_id=generated.request_id,
            server=generated.server,
            output=generated.output,
            images=download.paths,
            attempts=generated.attempts,
            elapsed=generated.elapsed,
            possible_duplicate=generated.possible_duplicate,
            error_type=None if error is None else type(error).__name__,
            error=None if error is None else str(error),
        )
        self._journal.write(final)
        self.stats.job_ended(generated.server, generated.elapsed, final.error_type, server_ok=True)
        if error is not None:
            self._reporter.note(f"job {generated.id}: {type(error).__name__}: {error}")

    # --- progress -----------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            self._refresh()

    def _refresh(self) -> None:
        stats, progress = self.stats, self.dispatcher.progress
        stats.in_flight = progress.in_flight
        stats.retries = progress.retries
        if self._downloader is not None:
            stats.images_written = self._downloader.images_written
            stats.images_failed = self._downloader.images_failed
        self._reporter.refresh()
