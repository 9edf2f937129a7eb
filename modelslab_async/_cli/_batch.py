"""
The ``batch`` command's engine: manifest in, journal out, resumable at any moment.

The manifest is streamed lazily into the dispatcher; every event is journaled as it happens
(see ``_journal.py``), from the runner's events rather than when the consumer takes an outcome:
``submitted`` as the first submit goes out, ``accepted`` as soon as a server queues a job,
``generated`` the moment its answer arrives (however far the downloads lag behind), then one
final record. A killed run is resumed by running the same command again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from pathlib import Path

import attrs

from .. import (
    Client,
    Dispatcher,
    EventKind,
    ImageResult,
    Img2ImgRequest,
    InvalidRequestError,
    Job,
    JobEvent,
    JobOutcome,
)
from ._download import Downloader, DownloadError, DownloadResult, ImageWriteError
from ._fetch import FetchPolicy, SafeFetcher
from ._inputs import Prepared
from ._journal import (
    ACCEPTED,
    FAILED,
    GENERATED,
    SUBMITTED,
    SUCCEEDED,
    Record,
)
from ._local import read_local_image
from ._manifest import ManifestEntry, read_manifest
from ._report import Reporter
from ._summary import BatchStats
from ._text import short

__all__ = ["BatchRun"]

_TICK = 0.2


class BatchRun:
    """One run of a manifest: dispatching, journaling, downloading, counting."""

    def __init__(
        self,
        client: Client,
        prepared: Prepared,
        stats: BatchStats,
        reporter: Reporter,
        *,
        fetch: FetchPolicy | None = None,
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
        self._fetcher = SafeFetcher(fetch or FetchPolicy())
        self._downloader = (
            None
            if options.images is None
            else Downloader(self._fetcher, options.images, concurrency=options.download_concurrency)
        )
        # Jobs whose images are being downloaded: bounded, so memory stays bounded too.
        self._pending = asyncio.Semaphore(max(4 * options.download_concurrency, 16))
        # Answers journaled by _on_event, waiting for the consumer (at most `concurrency`).
        self._answered: dict[str, Record] = {}
        # Jobs an earlier run may have started on a server: their records say so.
        self._flagged = set(self._index.submitted) | {
            job_id for job_id, record in self._index.accepted.items() if record.possible_duplicate
        }
        self._journal_error: OSError | None = None

    async def run(self) -> None:
        """Run every job of the manifest not finished by an earlier run."""
        self._announce()
        async with self._fetcher, asyncio.TaskGroup() as outer:
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
        if index.final or index.accepted or index.generated or index.submitted:
            note(
                f"resuming: {len(index.final)} finished earlier (skipped), "
                f"{len(index.accepted)} accepted (collected by polling), "
                f"{len(index.generated)} generated (images downloaded again), "
                f"{len(index.submitted)} cut mid-submit (submitted again, possible duplicates)"
            )
        if index.truncated:
            note("the last line of the results file was cut short (a killed run); ignored")
        if index.unreadable:
            shown = ", ".join(map(str, index.unreadable[:5]))
            note(f"warning: ignored unreadable lines of the results file: {shown}")

    def _jobs(self) -> Generator[Job, None, None]:
        """The jobs to run, read lazily from the manifest; bad lines are journaled here."""
        index, stats = self._index, self.stats
        options = self._options
        for entry in read_manifest(
            options.manifest, allow_outside_files=options.allow_outside_files
        ):
            if self._journal_error is not None:
                return  # nothing more is sent once the journal cannot be written
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
                request = self._with_image(entry)
                if request is None:
                    continue
                stats.submitted += 1
                yield Job(id=entry.id, request=request)

    def _with_image(self, entry: ManifestEntry) -> Img2ImgRequest | None:
        """The entry's request with a local image read (once, checked); None if it cannot be."""
        request = entry.request
        if request is None or not isinstance(request.init_image, Path):
            return request
        try:
            data = read_local_image(
                request.init_image, max_bytes=self._options.max_init_image_bytes
            )
        except InvalidRequestError as error:
            self._bad_line(
                ManifestEntry(
                    line=entry.line,
                    id=entry.id,
                    error=InvalidRequestError(f"manifest line {entry.line}", str(error)),
                )
            )
            return None
        return attrs.evolve(request, init_image=data)

    def _route_name(self, server: str | None) -> str | None:
        """The route a journaled job is collected through (same key), across routing modes."""
        if server is None:
            return None
        for candidate in (server, server.removesuffix(" (balancer)")):
            try:
                return self._client.pool.route_name(candidate)
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
                error=short(str(error)),
                line=entry.line,
            )
        )
        self.stats.bad_lines += 1
        self.stats.job_ended(None, 0.0, type(error).__name__)
        self._reporter.note(f"bad line: {short(str(error))}")

    # --- events and outcomes ------------------------------------------------------------------

    def _on_event(self, event: JobEvent) -> None:
        """Journal what just happened; never raises (it runs inside the job runner)."""
        job_id = event.job_id
        try:
            if job_id is None:
                return
            if event.kind is EventKind.SUBMITTED and event.attempt == 1:
                self._write(Record(id=job_id, status=SUBMITTED, server=event.server))
            elif event.kind is EventKind.QUEUED and event.request_id:
                self._write(
                    Record(
                        id=job_id,
                        status=ACCEPTED,
                        request_id=event.request_id,
                        server=event.server,
                        possible_duplicate=job_id in self._flagged,
                    )
                )
            elif event.kind is EventKind.DONE and event.result is not None:
                self._answered[job_id] = self._journal_answer(job_id, event.result)
            elif event.kind is EventKind.RETRIED and self._options.verbose:
                self._reporter.note(
                    f"job {job_id}: retry in {event.wait or 0:.2f}s after {event.error}"
                )
        except Exception as error:  # noqa: BLE001 - a guest in the runner: never raise there
            if self._journal_error is None:
                self._journal_error = (
                    error if isinstance(error, OSError) else OSError(f"journal: {error!r}")
                )

    def _write(self, record: Record) -> None:
        if self._journal_error is not None:
            return  # the batch is stopping: see _handle
        self._journal.write(record)

    def _journal_answer(self, job_id: str, result: ImageResult) -> Record:
        """Journal an answer with images the moment it arrives; the record to finish it with."""
        generated = Record(
            id=job_id,
            status=GENERATED,
            request_id=result.id,
            server=result.server,
            output=result.output,
            attempts=result.attempts,
            elapsed=result.elapsed,
            possible_duplicate=result.possible_duplicate or job_id in self._flagged,
        )
        # Without downloads the job is finished: its final record is the only one.
        self._write(generated if self._downloader is not None else _final(generated))
        return generated

    async def _handle(self, downloads: asyncio.TaskGroup, outcome: JobOutcome) -> None:
        if self._journal_error is not None:
            raise self._journal_error  # stop: a job that cannot be journaled may be paid twice
        flagged = outcome.job_id in self._flagged
        self._flagged.discard(outcome.job_id)
        if outcome.possible_duplicate or flagged:
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
                    possible_duplicate=outcome.possible_duplicate or flagged,
                    error_type=kind,
                    error=short(str(error)),
                )
            )
            self.stats.job_ended(outcome.server, outcome.elapsed, kind)
            self._reporter.note(f"job {outcome.job_id} failed: {kind}: {short(str(error))}")
            return
        generated = self._answered.pop(outcome.job_id, None)
        if generated is None:  # no DONE event came (never expected): journal it now
            generated = self._journal_answer(outcome.job_id, result)
        if self._downloader is None:
            self.stats.job_ended(generated.server, generated.elapsed, None, server_ok=True)
            return
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
        if isinstance(download.error, ImageWriteError):
            # Not final: the journal keeps it `generated`, so the next run downloads it again.
            self.stats.job_ended(
                generated.server, generated.elapsed, "ImageWriteError", server_ok=True
            )
            self.stats.unwritten += 1
            self._reporter.note(
                f"job {generated.id}: {download.error} (run again to download its images)"
            )
            return
        final = _final(generated, download)
        self._journal.write(final)
        self.stats.job_ended(generated.server, generated.elapsed, final.error_type, server_ok=True)
        if final.error is not None:
            self._reporter.note(f"job {generated.id}: {final.error_type}: {final.error}")

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


def _final(generated: Record, download: DownloadResult | None = None) -> Record:
    """The final record of a job whose answer is ``generated``, after its downloads."""
    error = None if download is None else download.error
    return Record(
        id=generated.id,
        status=SUCCEEDED if error is None else FAILED,
        request_id=generated.request_id,
        server=generated.server,
        output=generated.output,
        images=() if download is None else download.paths,
        attempts=generated.attempts,
        elapsed=generated.elapsed,
        possible_duplicate=generated.possible_duplicate,
        error_type=None if error is None else type(error).__name__,
        error=None if error is None else short(str(error)),
    )
