"""The simulated GPU servers: slots, a FIFO queue and jobs that finish on a fixed schedule.

Nothing runs in the background. Each server keeps a heap of the times its slots become free;
a job accepted at ``now`` starts at ``max(now, earliest free slot)`` and finishes one service
time later. Whether a job is finished is only a comparison with the clock, so jobs complete on
schedule whether or not anybody waits for them.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from typing import Any

import attrs

from modelslab_async._secrets import fingerprint

__all__ = [
    "DEFAULT_MODELS",
    "FIRST_JOB_ID",
    "FakeServerSpec",
    "FakeServerStats",
    "Job",
    "JobBook",
    "ServerSim",
]

FIRST_JOB_ID = 13443927
#: The models every fake server has loaded unless its spec says otherwise.
DEFAULT_MODELS = ("realistic-vision-51", "midjourney", "sdxl")
# Slack for timer wake-ups that land a hair before the finish time.
_EPS = 1e-6
# Jobs kept for fetches and images; the oldest are forgotten beyond this.
_MAX_JOBS = 500_000


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"FakeServerSpec.{attribute.name} must be positive, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"FakeServerSpec.{attribute.name} must not be negative, got {value!r}")


def _queue_limit(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"FakeServerSpec.{attribute.name} must be None or >= 0, got {value!r}")


def _models(value: Any) -> tuple[str, ...]:
    models = (value,) if isinstance(value, str) else tuple(value)
    if not models or not all(isinstance(model, str) and model for model in models):
        raise ValueError(f"FakeServerSpec.models must be non-empty model ids, got {value!r}")
    return models


def _jitter(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"FakeServerSpec.{attribute.name} must be between 0 and 1, got {value!r}")


@attrs.frozen
class FakeServerSpec:
    """One simulated enterprise server.

    Attributes:
        name: The server's name, used in stats, records and fault routes.
        key: The server's API key (never shown in a repr).
        slots: How many jobs the server's GPUs run in parallel.
        service_time: Seconds one job takes.
        service_jitter: Relative jitter of the service time: each job takes
            ``service_time * (1 + U(-jitter, +jitter))``.
        models: The model ids loaded on the server; a submit for another model is answered
            ``Model not found: <id>``. ``get_all_models`` and ``system_details`` report them.
        queue_limit: How many jobs may wait for a slot; a submit beyond that is answered
            HTTP 429 "Rate limit exceeded. Maximum N queued requests allowed.". None means
            the fake's own ``queue_limit`` (unlimited by default).
    """

    name: str
    key: str = attrs.field(repr=False)
    slots: int = attrs.field(default=2, validator=_positive)
    service_time: float = attrs.field(default=0.05, validator=_non_negative)
    service_jitter: float = attrs.field(default=0.0, validator=_jitter)
    models: tuple[str, ...] = attrs.field(default=DEFAULT_MODELS, converter=_models)
    queue_limit: int | None = attrs.field(default=None, validator=_queue_limit)


@attrs.frozen
class FakeServerStats:
    """A snapshot of one simulated server's counters.

    Attributes:
        name: The server's name.
        key_fingerprint: The fingerprint of the server's key (see ``_secrets.fingerprint``).
        slots: Parallel job slots.
        service_time: Seconds one job takes.
        down: Whether the server is currently down.
        accepted: Jobs accepted.
        completed: Accepted jobs whose finish time has passed (not counting cleared ones).
        outstanding: Accepted jobs not finished yet.
        max_outstanding: The highest ``outstanding`` reached when a job was accepted
            (counting that job).
        submits: Submit requests that reached the server.
        fetches: Fetch requests that reached the server.
        queued: Accepted jobs still waiting for a slot.
        cleared: Waiting jobs failed by ``clear_queue``.
    """

    name: str
    key_fingerprint: str
    slots: int
    service_time: float
    down: bool
    accepted: int
    completed: int
    outstanding: int
    max_outstanding: int
    submits: int
    fetches: int
    queued: int = 0
    cleared: int = 0


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@attrs.define(slots=True, eq=False)
class Job:
    """One accepted generation job."""

    id: int
    server: ServerSim
    key: str = attrs.field(repr=False)
    balanced: bool
    start: float
    finish: float
    file_prefix: str
    samples: int
    base64: bool = False
    failure: str | None = None
    # Set while a submit is held open for the job; resolved early when the job is cut short.
    waiter: asyncio.Future[None] | None = attrs.field(default=None, repr=False)

    def is_done(self, now: float) -> bool:
        """Return whether the job has finished at loop time ``now``."""
        return self.finish <= now + _EPS

    async def hold(self, wait: float) -> None:
        """Wait ``wait`` seconds for the job to end, or less if `end_now` cuts it short."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiter = waiter
        handle = loop.call_later(wait, _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self.waiter = None

    def end_now(self, now: float, failure: str) -> None:
        """Fail the job at ``now`` and wake the submit held for it, if any."""
        self.failure = failure
        self.finish = min(self.finish, now)
        if self.waiter is not None:
            _wake(self.waiter)


class ServerSim:
    """The mutable state of one simulated server."""

    __slots__ = (
        "_running",
        "_slot_free",
        "accepted",
        "cleared",
        "down",
        "fetches",
        "index",
        "key_fingerprint",
        "max_outstanding",
        "queue_limit",
        "spec",
        "submits",
    )

    def __init__(self, spec: FakeServerSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.key_fingerprint = fingerprint(spec.key)
        self.down = False
        self.queue_limit = spec.queue_limit
        self.accepted = 0
        self.cleared = 0
        self.submits = 0
        self.fetches = 0
        self.max_outstanding = 0
        self._slot_free = [0.0] * spec.slots
        # (finish, start) of every accepted job not finished yet.
        self._running: list[tuple[float, float]] = []

    @property
    def name(self) -> str:
        """The server's name."""
        return self.spec.name

    def outstanding(self, now: float) -> int:
        """Return how many accepted jobs have not finished at ``now``."""
        running = self._running
        while running and running[0][0] <= now + _EPS:
            heapq.heappop(running)
        return len(running)

    def queued(self, now: float) -> int:
        """Return how many accepted jobs are still waiting for a slot at ``now``."""
        self.outstanding(now)
        return sum(1 for _, start in self._running if start > now + _EPS)

    def slot_wait(self, now: float) -> float:
        """Return the seconds until a slot is free for a new job (0 when one is free now)."""
        return max(0.0, self._slot_free[0] - now)

    def next_start(self, now: float) -> float:
        """Return the seconds until the first waiting job gets its slot (0 when none waits)."""
        self.outstanding(now)
        starts = [start for _, start in self._running if start > now + _EPS]
        return min(starts) - now if starts else 0.0

    def clear_queue(self, now: float) -> None:
        """Forget the jobs waiting for a slot; the running ones keep their slots."""
        self.outstanding(now)
        running = [(finish, start) for finish, start in self._running if start <= now + _EPS]
        self.cleared += len(self._running) - len(running)
        heapq.heapify(running)
        self._running = running
        free = sorted(finish for finish, _ in running)
        self._slot_free = free + [now] * (self.spec.slots - len(free))
        heapq.heapify(self._slot_free)

    def load(self, now: float) -> float:
        """Return outstanding jobs per slot, the balancer's measure."""
        return self.outstanding(now) / self.spec.slots

    def schedule(self, now: float, rng: random.Random) -> tuple[float, float]:
        """Accept one job at ``now`` and return its ``(start, finish)`` times."""
        spec = self.spec
        duration = spec.service_time
        if spec.service_jitter:
            duration *= 1.0 + rng.uniform(-spec.service_jitter, spec.service_jitter)
        start = max(now, heapq.heappop(self._slot_free))
        finish = start + duration
        heapq.heappush(self._slot_free, finish)
        outstanding = self.outstanding(now) + 1
        heapq.heappush(self._running, (finish, start))
        self.accepted += 1
        self.max_outstanding = max(self.max_outstanding, outstanding)
        return start, finish

    def queue_time(self, now: float) -> float:
        """Return the seconds of work left on the server (running and queued jobs)."""
        self.outstanding(now)
        return sum(finish - max(start, now) for finish, start in self._running)

    def stats(self, now: float) -> FakeServerStats:
        """Return a snapshot of the server's counters at ``now``."""
        outstanding = self.outstanding(now)
        return FakeServerStats(
            name=self.spec.name,
            key_fingerprint=self.key_fingerprint,
            slots=self.spec.slots,
            service_time=self.spec.service_time,
            down=self.down,
            accepted=self.accepted,
            completed=self.accepted - outstanding - self.cleared,
            outstanding=outstanding,
            queued=self.queued(now),
            cleared=self.cleared,
            max_outstanding=self.max_outstanding,
            submits=self.submits,
            fetches=self.fetches,
        )


class JobBook:
    """Every job the fake remembers, by id and by output file prefix."""

    __slots__ = ("_by_id", "_by_prefix", "_next_id")

    def __init__(self) -> None:
        self._by_id: dict[int, Job] = {}
        self._by_prefix: dict[str, Job] = {}
        self._next_id = FIRST_JOB_ID

    def __len__(self) -> int:
        return len(self._by_id)

    def create(
        self,
        server: ServerSim,
        key: str,
        *,
        balanced: bool,
        now: float,
        samples: int,
        rng: random.Random,
        base64: bool = False,
    ) -> Job:
        """Schedule a new job on ``server`` and remember it."""
        start, finish = server.schedule(now, rng)
        bits = f"{rng.getrandbits(128):032x}"
        variant = "89ab"[int(bits[16], 16) & 3]
        prefix = f"{bits[:8]}-{bits[8:12]}-4{bits[13:16]}-{variant}{bits[17:20]}-{bits[20:]}"
        job = Job(self._next_id, server, key, balanced, start, finish, prefix, samples, base64)
        self._next_id += 1
        self._by_id[job.id] = job
        self._by_prefix[prefix] = job
        if len(self._by_id) > _MAX_JOBS:
            oldest = self._by_id.pop(next(iter(self._by_id)))
            del self._by_prefix[oldest.file_prefix]
        return job

    def waiting(self, server: ServerSim, now: float) -> list[Job]:
        """Return the jobs of ``server`` still waiting for a slot at ``now``."""
        return [
            job for job in self._by_id.values() if job.server is server and job.start > now + _EPS
        ]

    def get(self, request_id: Any) -> Job | None:
        """Return the job with ``request_id`` (an int or a string of digits), if known."""
        if isinstance(request_id, str):
            text = request_id.strip()
            if not (text.isascii() and text.isdigit()):
                return None
            request_id = int(text)
        elif not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        return self._by_id.get(request_id)

    def by_file(self, name: str) -> tuple[Job, int] | None:
        """Return the job and output index of a file name ``<file_prefix>-<index>``."""
        prefix, _, index = name.rpartition("-")
        job = self._by_prefix.get(prefix)
        if job is None or not (index.isascii() and index.isdigit()) or int(index) >= job.samples:
            return None
        return job, int(index)
