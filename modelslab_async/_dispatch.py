"""
Running many jobs with bounded concurrency and bounded memory.

The dispatcher reads its input lazily: it takes a slot before it pulls the next job, and a
slot is given back only when that job's outcome has been handed to the consumer, so at most
``concurrency`` jobs are held at any time, however long the input and however slow the
consumer. Every job ends as exactly one :class:`JobOutcome`, success or typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from ._config import DEFAULT, Default
from ._errors import InvalidRequestError
from ._events import EventKind, JobEvent, JobEventHandler
from ._models import Attempt, ImageResult, Img2ImgRequest

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["BatchProgress", "Dispatcher", "Job", "JobOutcome"]


@frozen(kw_only=True)
class Job:
    """
    A request with a caller-given id; with ``request_id`` (and ``server``), a job accepted
    earlier that is collected by polling instead of being submitted again.
    """

    id: str = field(converter=str)
    request: Img2ImgRequest | None = None
    request_id: str | None = None
    server: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.request is None and self.request_id is None:
            raise InvalidRequestError("request", "a job needs a request or a request_id")


@frozen(kw_only=True)
class JobOutcome:
    """
    How one job of a batch ended.

    Attributes:
        job_id: The caller's id (the input position, as a string, when none was given).
        index: The job's position in the input, from 0.
        request: The job's request, when it had one.
        result: The images, when the job succeeded.
        error: The typed error, when it failed.
        attempts: Every attempt made, oldest first.
        server: The server that ran (or last tried) the job.
        elapsed: Seconds from the job's start to its end.
        possible_duplicate: True when the job may have run twice on the servers.
    """

    job_id: str
    index: int
    request: Img2ImgRequest | None
    result: ImageResult | None = None
    error: Exception | None = None
    attempts: tuple[Attempt, ...] = ()
    server: str | None = None
    elapsed: float = 0.0
    possible_duplicate: bool = False

    @property
    def ok(self) -> bool:
        """True when the job produced images."""
        return self.result is not None


@define
class BatchProgress:
    """Running totals of a batch, updated as events happen."""

    admitted: int = 0  #: jobs taken from the input so far
    done: int = 0  #: jobs finished with images
    failed: int = 0  #: jobs ended with an error
    queued: int = 0  #: jobs processing on a server right now
    retries: int = 0  #: attempts that failed and were retried
    reroutes: int = 0  #: attempts sent to another server than the previous one
    possible_duplicates: int = 0  #: finished jobs that may have run twice
    started_at: float = field(factory=time.monotonic)

    @property
    def finished(self) -> int:
        """Jobs ended, either way."""
        return self.done + self.failed

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not yet ended."""
        return self.admitted - self.finished

    @property
    def elapsed(self) -> float:
        """Seconds since the batch started."""
        return time.monotonic() - self.started_at

    @property
    def rate(self) -> float:
        """Jobs ended per second so far."""
        elapsed = self.elapsed
        return self.finished / elapsed if elapsed > 0 else 0.0


class Dispatcher:
    """
    Runs a batch of img2img jobs over a client's pool.

    Args:
        client: An open :class:`Client`.
        concurrency: Most jobs held at once (default: the pool's capacity).
        ordered: Yield outcomes in input order instead of as they complete.
        job_timeout: Deadline of each job (default: the client's ``timeouts.job``).
        batch_timeout: Deadline of the whole batch: jobs in flight then end with
            :class:`JobTimeoutError`, and no more input is read.
        on_event: Receives every job's progress events (with ``job_id`` and ``index``).
    """

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        job_timeout: float | Default | None = DEFAULT,
        batch_timeout: float | None = None,
        on_event: JobEventHandler | None = None,
    ) -> None:
        limit: object = client.pool.capacity if concurrency is None else concurrency
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError("concurrency", f"{concurrency!r}", allowed="integers >= 1")
        self.client = client
        self.concurrency: int = limit
        self.ordered = ordered
        self._job_timeout = client._job_timeout(job_timeout)
        self._batch_timeout = batch_timeout
        self._on_event = on_event
        self.progress = BatchProgress()

    def __repr__(self) -> str:
        p = self.progress
        return (
            f"<Dispatcher concurrency={self.concurrency} in_flight={p.in_flight} "
            f"queued={p.queued} done={p.done} failed={p.failed}>"
        )

    async def run(
        self,
        jobs: Iterable[Img2ImgRequest | Job] | AsyncIterable[Img2ImgRequest | Job],
    ) -> AsyncGenerator[JobOutcome, None]:
        """
        Run every job and yield its outcome, as jobs complete (or in input order).

        One job's failure never raises: it is an outcome with ``error`` set. If reading the
        input raises, the jobs already admitted still finish and are yielded, then the error
        is raised. Breaking out of the loop (with ``contextlib.aclosing``) or cancelling the
        consumer cancels the jobs in flight and frees their slots.
        """
        self.progress = BatchProgress()
        deadline = None if self._batch_timeout is None else time.monotonic() + self._batch_timeout
        window = asyncio.Semaphore(self.concurrency)
        finished: asyncio.Queue[JobOutcome | None] = asyncio.Queue()
        feed = _Feed()
        left = False
        try:
            async with (
                asyncio.TaskGroup() as group,
                contextlib.aclosing(self._drain(finished, feed)) as outcomes,
            ):
                group.create_task(self._feed(jobs, window, finished, group, feed, deadline))
                async for outcome in outcomes:
                    try:
                        yield outcome
                    except GeneratorExit:
                        # The consumer stopped early: leave the group with an ordinary error
                        # so that it cancels the jobs in flight (3.11 groups wrap anything else).
                        raise _ConsumerLeft from None
                    window.release()
        except* _ConsumerLeft:
            left = True
        if left:
            return
        if feed.error is not None:
            raise feed.error

    async def _drain(
        self, finished: asyncio.Queue[JobOutcome | None], feed: _Feed
    ) -> AsyncGenerator[JobOutcome, None]:
        """Outcomes as they complete, or in input order, until the input is exhausted."""
        buffered: dict[int, JobOutcome] = {}
        next_index = 0
        yielded = 0
        input_done = False
        while not (input_done and yielded == feed.admitted):
            outcome = await finished.get()
            if outcome is None:
                input_done = True
                continue
            if not self.ordered:
                yielded += 1
                yield outcome
                continue
            buffered[outcome.index] = outcome
            while next_index in buffered:
                yielded += 1
                yield buffered.pop(next_index)
                next_index += 1

    async def _feed(  # noqa: PLR0917 - private, called once
        self,
        jobs: Iterable[Img2ImgRequest | Job] | AsyncIterable[Img2ImgRequest | Job],
        window: asyncio.Semaphore,
        finished: asyncio.Queue[JobOutcome | None],
        group: asyncio.TaskGroup,
        feed: _Feed,
        deadline: float | None,
    ) -> None:
        source: AsyncIterator[Any] | Iterator[Any] = (
            aiter(jobs) if isinstance(jobs, AsyncIterable) else iter(jobs)
        )
        try:
            index = 0
            while True:
                await window.acquire()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    if isinstance(source, AsyncIterator):
                        item = await anext(source)
                    else:
                        item = next(source)
                except (StopIteration, StopAsyncIteration):
                    break
                feed.admitted += 1
                self.progress.admitted += 1
                group.create_task(self._run_one(index, item, finished, deadline))
                index += 1
        except Exception as error:  # noqa: BLE001 - reported after the admitted jobs finish
            feed.error = error
        finally:
            finished.put_nowait(None)

    async def _run_one(
        self,
        index: int,
        item: Any,
        finished: asyncio.Queue[JobOutcome | None],
        deadline: float | None,
    ) -> None:
        started = time.monotonic()
        timeout = self._job_timeout
        if deadline is not None:
            left = max(deadline - started, 0.0)
            timeout = left if timeout is None else min(timeout, left)
        client = self.client
        request: Img2ImgRequest | None = None
        job_id = str(index)
        try:
            request, job_id, resume, server = _unpack(item, index)
            runner = client._runner(
                timeout, self._on_event, job_id=job_id, index=index, progress=self.progress
            )
            if resume is not None:
                route = client.pool.route(server)
                result = await runner.collect(route, resume)
            else:
                assert request is not None  # noqa: S101 - a Job has a request or a request_id
                result = await runner.submit(await client.wire_body(request))
        except Exception as error:  # noqa: BLE001 - every failure becomes this job's outcome
            self.progress.failed += 1
            if not getattr(error, "attempts", ()) and self._on_event is not None:
                # Failed before the runner could say so (bad item, unreadable file).
                text = f"{type(error).__name__}: {error}"
                self._on_event(
                    JobEvent(kind=EventKind.FAILED, job_id=job_id, index=index, error=text)
                )
            outcome = JobOutcome(
                job_id=job_id,
                index=index,
                request=request,
                error=error,
                attempts=getattr(error, "attempts", ()),
                server=getattr(error, "server", None),
                elapsed=time.monotonic() - started,
                possible_duplicate=bool(getattr(error, "possible_duplicate", False)),
            )
        else:
            self.progress.done += 1
            self.progress.possible_duplicates += result.possible_duplicate
            outcome = JobOutcome(
                job_id=job_id,
                index=index,
                request=request,
                result=result,
                server=result.server,
                elapsed=time.monotonic() - started,
                possible_duplicate=result.possible_duplicate,
            )
        finished.put_nowait(outcome)


class _ConsumerLeft(Exception):  # noqa: N818 - a signal, not an error users see
    """The consumer closed the outcome stream early."""


@define
class _Feed:
    admitted: int = 0
    error: Exception | None = None


def _unpack(item: Any, index: int) -> tuple[Img2ImgRequest | None, str, str | None, str | None]:
    """A batch item as (request, job id, request id to collect, server), or a typed error."""
    if isinstance(item, Img2ImgRequest):
        return item, str(index), None, None
    if isinstance(item, Job):
        return item.request, item.id, item.request_id, item.server
    raise InvalidRequestError(
        "jobs", f"item {index} is a {type(item).__name__}", allowed="Img2ImgRequest or Job"
    )
