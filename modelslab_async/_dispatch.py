"""
Running many jobs with bounded concurrency and bounded memory.

The dispatcher reads its input lazily: it takes a slot before it pulls the next job, and a
slot is given back only when that job's outcome has been handed to the consumer, so at most
``concurrency`` jobs are held at any time, however long the input and however slow the
consumer. Every job ends as exactly one :class:`JobOutcome`, success or typed error.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Protocol

from attrs import define, evolve, field, frozen

from ._admission import check_priority
from ._config import DEFAULT, Default, Timeouts
from ._errors import Attempt, InvalidRequestError
from ._events import EventKind, JobEvent, JobEventHandler, deliver
from ._models import ImageResult, Img2ImgRequest
from ._pool import ServerPool

__all__ = ["BatchProgress", "Dispatcher", "Job", "JobClient", "JobOutcome"]


class JobClient(Protocol):
    """
    What a :class:`Dispatcher` needs of a client: :class:`Client` is one; a wrapper that adds
    metrics or logging around these two calls can be another.
    """

    pool: ServerPool
    timeouts: Timeouts

    async def img2img(
        self,
        request: Img2ImgRequest,
        *,
        timeout: float | Default | None = ...,
        on_event: JobEventHandler | None = ...,
        priority: int = ...,
    ) -> ImageResult:
        """Run one job to its end."""
        ...

    async def fetch(
        self,
        request_id: str | int,
        *,
        server: str | None = ...,
        timeout: float | Default | None = ...,
        on_event: JobEventHandler | None = ...,
        priority: int = ...,
    ) -> ImageResult:
        """Collect a job accepted earlier."""
        ...


def _optional_int(_: object, attribute: Any, value: Any) -> None:
    check_priority(value, attribute.name)


@frozen(kw_only=True)
class Job:
    """
    A request with a caller-given id; with ``request_id`` (and ``server``), a job accepted
    earlier that is collected by polling instead of being submitted again. ``priority``
    overrides the batch's (higher goes first).
    """

    id: str = field(converter=str)
    request: Img2ImgRequest | None = None
    request_id: str | None = None
    server: str | None = None
    priority: int | None = field(default=None, validator=_optional_int)

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
        attempts: Every attempt made, oldest first (on failures).
        server: The server that ran (or last tried) the job.
        elapsed: Seconds from the job's start to its end.
        possible_duplicate: True when the job may have run twice on the servers.
        track_id: The job's ``track_id``, once it was sent.
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
    track_id: str | None = None

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

    At most ``concurrency`` jobs run at once. Unordered, a finished job keeps its place until
    the consumer takes its outcome, so at most ``concurrency`` jobs are held in all. Ordered,
    outcomes that finish ahead of their turn wait in a reorder buffer of at most
    ``max_buffered`` (default: 8 x ``concurrency``) while later jobs keep running, so one slow
    job does not stall the batch; at most ``concurrency + max_buffered`` jobs are held.

    Args:
        client: An open :class:`Client` (or any :class:`JobClient`).
        concurrency: Most jobs running at once (default: the pool's capacity).
        ordered: Yield outcomes in input order instead of as they complete.
        max_buffered: With ``ordered``, most finished outcomes waiting for their turn.
        job_timeout: Deadline of each job (default: the client's ``timeouts.job``).
        batch_timeout: Deadline of the whole batch: jobs in flight then end with
            :class:`JobTimeoutError`, and no more input is read.
        on_event: Receives every job's progress events (with ``job_id`` and ``index``).
        priority: The jobs' priority on the pool (a :class:`Job`'s own wins); a higher
            number goes first, so a web backend's interactive calls can pass a bulk batch.
    """

    def __init__(
        self,
        client: JobClient,
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        max_buffered: int | None = None,
        job_timeout: float | Default | None = DEFAULT,
        batch_timeout: float | None = None,
        on_event: JobEventHandler | None = None,
        priority: int = 0,
    ) -> None:
        limit: object = client.pool.capacity if concurrency is None else concurrency
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError("concurrency", f"{concurrency!r}", allowed="integers >= 1")
        buffered: object = 8 * limit if max_buffered is None else max_buffered
        if isinstance(buffered, bool) or not isinstance(buffered, int) or buffered < 0:
            raise InvalidRequestError("max_buffered", f"{max_buffered!r}", allowed="integers >= 0")
        check_priority(priority)
        self.client = client
        self.concurrency: int = limit
        self.ordered = ordered
        self.max_buffered: int = buffered if ordered else 0
        self._job_timeout = client.timeouts.job if isinstance(job_timeout, Default) else job_timeout
        self._batch_timeout = batch_timeout
        self._on_event = on_event
        self.priority = priority
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
        feed = _Feed(
            jobs,
            held=_Window(self.concurrency + self.max_buffered),
            finished=_Outbox(),
            deadline=deadline,
        )
        left = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._start(feed, group))
                # Outcomes as they complete, or in input order, until the input is exhausted
                # (in this generator itself: no second generator to resume per outcome).
                outbox = feed.finished
                buffered: dict[int, JobOutcome] = {}
                next_index = yielded = 0
                input_done = False
                while not (input_done and yielded == feed.admitted):
                    item = outbox.items.popleft() if outbox.items else await outbox.get()
                    if item is None:
                        input_done = True
                        continue
                    if not self.ordered:
                        ready: Iterable[JobOutcome] = (item,)
                    else:
                        buffered[item.index] = item
                        ready = []
                        while next_index in buffered:
                            ready.append(buffered.pop(next_index))
                            next_index += 1
                    for outcome in ready:
                        yielded += 1
                        try:
                            yield outcome
                        except GeneratorExit:
                            # The consumer stopped early: leave the group with an ordinary
                            # error so that it cancels the jobs in flight (3.11 groups wrap
                            # anything else).
                            raise _ConsumerLeft from None
                        feed.held.leave()
        except* _ConsumerLeft:
            left = True
        if left:
            return
        if feed.error is not None:
            raise feed.error

    # Jobs run on at most ``concurrency`` worker tasks, each taking the next job of the input
    # when its own ends (no task and no wake-up of a feeding task per job). A job is taken
    # only once the window of held jobs lets one more in, so that the input is read lazily.

    async def _start(self, feed: _Feed, group: asyncio.TaskGroup) -> None:
        """Start the workers, each with its first job, as the window allows."""
        for _ in range(self.concurrency):
            job = await self._next(feed)
            if job is None:
                return
            group.create_task(self._work(feed, *job))

    async def _work(self, feed: _Feed, index: int, item: Any) -> None:
        """One worker: run a job, take the next, until the input ends."""
        while True:
            await self._run_one(index, item, feed)
            job = await self._next(feed)
            if job is None:
                return
            index, item = job

    async def _next(self, feed: _Feed) -> tuple[int, Any] | None:
        """The next job and its index, once the window lets one more in; None at the end."""
        await feed.held.enter()
        if feed.done or (feed.deadline is not None and time.monotonic() >= feed.deadline):
            feed.end()
            return None
        try:
            item = next(feed.items) if feed.items is not None else await feed.pull()
        except (StopIteration, StopAsyncIteration):
            feed.end()
            return None
        except Exception as error:  # noqa: BLE001 - reported after the admitted jobs finish
            feed.error = error
            feed.end()
            return None
        index = feed.admitted
        feed.admitted += 1
        self.progress.admitted += 1
        return index, item

    async def _run_one(self, index: int, item: Any, feed: _Feed) -> None:
        started = time.monotonic()
        timeout = self._job_timeout
        if feed.deadline is not None:
            left = max(feed.deadline - started, 0.0)
            timeout = left if timeout is None else min(timeout, left)
        client = self.client
        request: Img2ImgRequest | None = None
        job_id = str(index)
        watch = _Watch(self.progress, self._on_event, job_id, index)
        try:
            if type(item) is Img2ImgRequest:  # the common case, without unpacking
                request, resume, server, priority = item, None, None, self.priority
            else:
                request, job_id, resume, server, priority = _unpack(item, index, self.priority)
                watch.job_id = job_id
            if resume is not None:
                result = await client.fetch(
                    resume, server=server, timeout=timeout, on_event=watch, priority=priority
                )
            else:
                result = await client.img2img(
                    _required(request), timeout=timeout, on_event=watch, priority=priority
                )
        except Exception as error:  # noqa: BLE001 - every failure becomes this job's outcome
            self.progress.failed += 1
            watch.failed_early(error)
            outcome = JobOutcome(
                job_id=job_id,
                index=index,
                request=request,
                error=error,
                attempts=getattr(error, "attempts", ()),
                server=getattr(error, "server", None),
                elapsed=time.monotonic() - started,
                possible_duplicate=bool(getattr(error, "possible_duplicate", False)),
                track_id=getattr(error, "track_id", None),
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
                track_id=result.track_id,
            )
        finally:
            watch.settle()
        feed.finished.put(outcome)


class _Watch:
    """One job's events: counted into the batch's progress, then passed to the user."""

    __slots__ = ("_ended", "_handler", "_progress", "_queued", "event_kinds", "index", "job_id")

    def __init__(
        self, progress: BatchProgress, handler: JobEventHandler | None, job_id: str, index: int
    ) -> None:
        self._progress = progress
        self._handler = handler
        self.job_id = job_id
        self.index = index
        self._queued = False
        self._ended = False
        # Without a user's handler only three kinds count (the end of a job is settled by
        # _run_one): the runner builds no other event (it reads this attribute of a handler).
        self.event_kinds = _ALL_KINDS if handler is not None else _COUNTED_KINDS

    def __call__(self, event: JobEvent) -> None:
        kind = event.kind
        progress = self._progress
        if kind is EventKind.QUEUED:
            self._queued = True
            progress.queued += 1
        elif kind is EventKind.RETRIED:
            progress.retries += 1
        elif kind is EventKind.REROUTED:
            progress.reroutes += 1
        elif kind is EventKind.DONE or kind is EventKind.FAILED:
            self._ended = True
            self.settle()
        if self._handler is not None:
            deliver(self._handler, evolve(event, job_id=self.job_id, index=self.index))

    def settle(self) -> None:
        """The job ended: it no longer counts as queued (called again, nothing happens)."""
        if self._queued:
            self._queued = False
            self._progress.queued -= 1

    def failed_early(self, error: Exception) -> None:
        """Say FAILED for a job that failed before its runner could (bad item, unreadable file)."""
        if not self._ended:
            self(JobEvent(kind=EventKind.FAILED, error=f"{type(error).__name__}: {error}"))


_ALL_KINDS = frozenset(EventKind)
_COUNTED_KINDS = frozenset({EventKind.QUEUED, EventKind.RETRIED, EventKind.REROUTED})


class _Window:
    """
    Room for jobs held at once: a count, and the workers waiting for room in line. Room
    given back goes to the first worker waiting (``asyncio.Semaphore`` scans its waiters on
    every release and acquire, which a batch pays for every job).
    """

    __slots__ = ("_free", "_waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self) -> None:
        """Take room for one job, waiting in line for it."""
        if self._free > 0:  # room is handed to waiters first: none waits while some is free
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.leave()  # handed room as it was cancelled: pass it on
            raise

    def leave(self) -> None:
        """Give room back: to the first worker waiting, if any."""
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():  # a cancelled waiter's future is done
                future.set_result(None)
                return
        self._free += 1


class _Outbox:
    """
    Outcomes on their way to the one consumer: a deque, and the consumer's future when it
    waits (``asyncio.Queue`` does the same with a dozen calls more per item).
    """

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: collections.deque[JobOutcome | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: JobOutcome | None) -> None:
        """Hand on an outcome (None: the input has ended)."""
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> JobOutcome | None:
        """The next item, waiting for one."""
        items = self.items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return items.popleft()


class _ConsumerLeft(Exception):  # noqa: N818 - a signal, not an error users see
    """The consumer closed the outcome stream early."""


class _Feed:
    """The input of one run, read by the workers, and where their outcomes go."""

    __slots__ = (
        "_async_items",
        "_lock",
        "admitted",
        "deadline",
        "done",
        "error",
        "finished",
        "held",
        "items",
    )

    def __init__(
        self,
        jobs: Iterable[Img2ImgRequest | Job] | AsyncIterable[Img2ImgRequest | Job],
        *,
        held: _Window,
        finished: _Outbox,
        deadline: float | None,
    ) -> None:
        self.items: Iterator[Any] | None = None
        self._async_items: AsyncIterator[Any] | None = None
        if isinstance(jobs, AsyncIterable):
            self._async_items = aiter(jobs)
        else:
            self.items = iter(jobs)
        self._lock = asyncio.Lock()
        self.held = held  # jobs taken and not yet handed to the consumer (or buffered)
        self.finished = finished  # outcomes; None once the input has ended
        self.deadline = deadline
        self.admitted = 0
        self.done = False
        self.error: Exception | None = None

    async def pull(self) -> Any:
        """The next item of an async input (one worker at a time advances it)."""
        async with self._lock:
            if self.done or self._async_items is None:
                raise StopAsyncIteration
            return await anext(self._async_items)

    def end(self) -> None:
        """No job is taken any more: give back the window just taken, say so once."""
        self.held.leave()  # a worker waiting for it finds the end too
        if not self.done:
            self.done = True
            self.finished.put(None)


def _required(request: Img2ImgRequest | None) -> Img2ImgRequest:
    if request is None:  # Job() refuses this already
        raise InvalidRequestError("request", "a job needs a request or a request_id")
    return request


def _unpack(
    item: Any, index: int, priority: int
) -> tuple[Img2ImgRequest | None, str, str | None, str | None, int]:
    """A batch item as (request, job id, request id to collect, server, priority)."""
    if isinstance(item, Img2ImgRequest):
        return item, str(index), None, None, priority
    if isinstance(item, Job):
        own = item.priority
        return (
            item.request,
            item.id,
            item.request_id,
            item.server,
            (priority if own is None else own),
        )
    raise InvalidRequestError(
        "jobs", f"item {index} is a {type(item).__name__}", allowed="Img2ImgRequest or Job"
    )
