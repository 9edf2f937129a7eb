"""
A batch worker: reads the batch's stream in a consumer group and runs its jobs.

* **Delivery.** ``XREADGROUP`` for new entries, at most as many as free places (``concurrency``).
* **Heartbeat.** Every ``reclaim_after / 4`` seconds one script renews this worker's job leases
  and resets its entries' idle time (``XCLAIM ... JUSTID``, only for entries it still owns);
  a job it finds taken over is cancelled here.
* **Reclaim.** ``XAUTOCLAIM`` of entries idle longer than ``reclaim_after``: their worker
  stopped beating (killed, or cut off from Redis). The ledger then decides: an accepted job is
  collected, one found ``submitting`` is submitted again and flagged ``possible_duplicate``.
* **Finished entries** are acknowledged and deleted (``XACK`` + ``XDEL``) in the script that
  finishes the job, so the stream holds only unfinished jobs.
* **Dead letters.** A job taken more than ``max_deliveries`` times without an outcome (its
  workers keep dying) ends ``failed`` (``DeadLetterError``) and its id goes to the dead list.
* **Cancellation** (Ctrl-C) hands every job back: the ledger forgets the owner, and the entry
  is made idle so that any other worker reclaims it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from secrets import token_hex

from attrs import define, field
from redis.exceptions import RedisError

from .. import Client
from .._cli._download import Downloader
from .._cli._fetch import FetchPolicy, SafeFetcher, download_policy
from .._cli._inputs import MAX_IMAGE_BYTES
from .._cli._journal import SUCCEEDED, Record
from ._jobrun import (
    ImagesUnwrittenError,
    JobSetup,
    LedgerFencedError,
    check_client,
    run_claim,
)
from ._ledger import GROUP, Batch, Claim
from ._workerinfo import register_worker, remove_stale_parts, unregister_worker

__all__ = ["Worker", "WorkerReport"]

logger = logging.getLogger("modelslab_async.redis")

_BLOCK_MS = 500
_HAND_BACK_TIMEOUT = 5.0


@define
class WorkerReport:
    """What one worker did: jobs it finished, by outcome, and jobs it handed back."""

    name: str
    succeeded: int = 0
    failed: int = 0
    handed_back: int = 0
    taken_over: int = 0  #: jobs reclaimed from silent workers
    collected: int = 0  #: jobs found accepted (or generated): collected, not submitted
    resubmitted: int = 0  #: jobs found mid-submit: submitted again, possible duplicates
    complete: bool = False  #: every job of the batch was final when it stopped
    started: float = field(factory=time.monotonic)


class Worker:
    """
    Runs a batch's jobs, side by side with any number of workers on any machines.

    Args:
        batch: The batch (its Redis connection).
        client: A client built with ``transport=LedgerTransport()``; its pool should share
            the servers through a ``RedisBackend`` when several workers run.
        images: Where to download the output images (this worker's own folder).
        concurrency: Most jobs at once, waiting for a slot included (default: twice the
            pool's capacity).
        name: The worker's id in the group (default: ``host-pid-random``).
        fetch: What image downloads may fetch (default: public addresses only, unless the
            API itself is on a private one, as for ``batch``).
        job_timeout: Deadline of each job, in seconds (default: the client's).

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        batch: Batch,
        client: Client,
        *,
        images: Path | None = None,
        concurrency: int | None = None,
        name: str | None = None,
        fetch: FetchPolicy | None = None,
        job_timeout: float | None = None,
        download_concurrency: int = 8,
    ) -> None:
        check_client(client)
        self.batch = batch
        self.client = client
        self.images = None if images is None else images.absolute()
        # Twice the capacity: a slot freed anywhere finds a job here already taken and waiting.
        self.concurrency = concurrency or 2 * client.pool.capacity
        self.host = socket.gethostname()
        self.name = name or f"{self.host}-{os.getpid()}-{token_hex(2)}"
        self._fetch = fetch
        self._job_timeout = job_timeout
        self._download_concurrency = download_concurrency
        self.report = WorkerReport(self.name)
        self._held: dict[str, Claim] = {}  # entry -> claim, renewed by the heartbeat
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._freed = asyncio.Event()
        self._last_reclaim = -1e9

    def __repr__(self) -> str:
        return f"<Worker {self.name} in_flight={len(self._tasks)} held={len(self._held)}>"

    @property
    def in_flight(self) -> int:
        """Jobs running here now."""
        return len(self._tasks)

    async def run(self) -> WorkerReport:
        """Run jobs until every job of the batch is final (cancel to stop: jobs go back)."""
        await self.batch.ensure_group()
        where = None if self.images is None else str(self.images)
        await register_worker(self.batch, self.name, self.host, where, self.concurrency)
        if self.images is not None:
            self.images.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(remove_stale_parts, self.images)
        policy = self._fetch or await download_policy(
            self.client.base_url, allow_private=False, max_bytes=MAX_IMAGE_BYTES
        )
        try:
            async with SafeFetcher(policy) as fetcher, asyncio.TaskGroup() as group:
                downloader = None
                if self.images is not None:
                    downloader = Downloader(
                        fetcher, self.images, concurrency=self._download_concurrency
                    )
                setup = JobSetup(
                    batch=self.batch,
                    client=self.client,
                    worker=self.name,
                    host=self.host,
                    downloader=downloader,
                    job_timeout=self._job_timeout,
                )
                beat = group.create_task(self._heartbeat(), name=f"{self.name}-heartbeat")
                try:
                    await self._consume(group, setup)
                finally:
                    beat.cancel()
        finally:
            await unregister_worker(self.batch, self.name)
        return self.report

    async def _consume(self, group: asyncio.TaskGroup, setup: JobSetup) -> None:
        while True:
            while len(self._tasks) >= self.concurrency:
                self._freed.clear()
                await self._freed.wait()
            free = self.concurrency - len(self._tasks)
            try:
                entries = await self._next(free)
            except RedisError as error:
                logger.warning("%s: Redis error while reading: %s", self.name, error)
                await asyncio.sleep(1.0)
                continue
            for entry, job_id in entries:
                if entry in self._tasks:
                    continue
                self._tasks[entry] = group.create_task(self._job(setup, entry, job_id))
            if not entries and not self._tasks and await self.batch.complete():
                self.report.complete = True
                return

    async def _next(self, count: int) -> list[tuple[str, str]]:
        """Entries to run: idle ones of silent workers first, then new ones."""
        client, stream = self.batch.db, self.batch.key("stream")
        now = time.monotonic()
        if now - self._last_reclaim >= self.batch.reclaim_after / 4:
            self._last_reclaim = now
            _, claimed, *_ = await client.xautoclaim(
                stream, GROUP, self.name, self.batch.lease_ms, start_id="0-0", count=count
            )
            found = [(entry, fields.get("j")) for entry, fields in claimed if fields]
            if found:
                logger.info("%s: took over %d jobs of silent workers", self.name, len(found))
                self.report.taken_over += len(found)
                return found
        block = _BLOCK_MS if not self._tasks else 50
        answer = await client.xreadgroup(GROUP, self.name, {stream: ">"}, count=count, block=block)
        return [(entry, fields["j"]) for _, items in answer or () for entry, fields in items]

    async def _job(self, setup: JobSetup, entry: str, job_id: str) -> None:
        claim: Claim | None = None
        try:
            found = await self.batch.take(job_id, self.name)
            if isinstance(found, str):
                if found != "busy":  # final or gone: the entry has nothing left to do
                    await self.batch.ack(entry)
                return  # busy: its owner is alive; the entry is reclaimed again later
            claim = found
            self._held[entry] = claim
            if claim.state in ("accepted", "generated"):
                self.report.collected += 1
            elif claim.state == "submitting":
                self.report.resubmitted += 1
            record = await run_claim(setup, claim, entry)
            self._count(record)
        except asyncio.CancelledError:
            if claim is not None and self._held.pop(entry, None) is not None:
                await self._give_back(claim, entry)
            raise
        except LedgerFencedError as error:
            logger.info("%s: %s", self.name, error)
        except (ImagesUnwrittenError, RedisError) as error:
            logger.warning("%s: job %r handed back: %s", self.name, job_id, error)
            if claim is not None:
                await self._give_back(claim, entry)
        except Exception:
            logger.exception("%s: job %r handed back after an internal error", self.name, job_id)
            if claim is not None:
                await self._give_back(claim, entry)
        finally:
            self._held.pop(entry, None)
            self._tasks.pop(entry, None)
            self._freed.set()

    async def _give_back(self, claim: Claim, entry: str) -> None:
        try:
            async with asyncio.timeout(_HAND_BACK_TIMEOUT):
                if await self.batch.hand_back(claim, entry) == 1:
                    self.report.handed_back += 1
        except (RedisError, TimeoutError) as error:
            # Not handed back: the entry is reclaimed once this worker stops beating.
            logger.warning("%s: could not hand job %r back: %s", self.name, claim.job_id, error)

    def _count(self, record: Record) -> None:
        if record.status == SUCCEEDED:
            self.report.succeeded += 1
        else:
            self.report.failed += 1

    async def _heartbeat(self) -> None:
        interval = self.batch.reclaim_after / 4
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.items())
            try:
                lost = await self.batch.heartbeat(
                    self.name, [(claim, entry) for entry, claim in held], len(self._tasks)
                )
            except RedisError as error:
                logger.warning("%s: heartbeat failed: %s", self.name, error)
                continue
            for index in lost:
                entry, claim = held[index]
                logger.warning("%s: job %r was taken over; stopping it", self.name, claim.job_id)
                self._held.pop(entry, None)
                task = self._tasks.get(entry)
                if task is not None:
                    task.cancel()
