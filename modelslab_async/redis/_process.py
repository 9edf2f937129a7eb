"""
``process_job``: the ledger's protection for one job, from any job framework.

A user on arq, taskiq, SAQ or Celery adds jobs with :func:`add_job` (or :func:`enqueue`) and
calls :func:`process_job` from their own task. The framework may deliver a job twice, even at
once (a redelivery while the first run is still going): the ledger's lease lets one run go on
and refuses the other with :class:`JobBusyError`; a job found accepted is collected, never
submitted again; a final job returns its record without doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from secrets import token_hex
from typing import Any

from redis.exceptions import RedisError

from .. import Client, Img2ImgRequest, ModelsLabError, request_to_wire
from .._cli._download import Downloader
from .._cli._fetch import FetchPolicy, SafeFetcher, download_policy
from .._cli._inputs import MAX_IMAGE_BYTES
from ._enqueue import _digest
from ._jobrun import JobSetup, check_client, run_claim
from ._ledger import Batch, Claim

__all__ = ["JobBusyError", "add_job", "process_job"]


class JobBusyError(ModelsLabError):
    """Another live owner is running this job now; try again later (or never: it will end)."""


async def add_job(batch: Batch, job_id: str, request: Img2ImgRequest) -> bool:
    """
    Add one job to the batch's ledger (not to its stream: your framework delivers it).

    Returns:
        True when added, False when it was there already with the same request.

    Raises:
        InvalidRequestError: The job is there with another request.

    .. versionadded:: 0.3.0
    """
    from ._enqueue import _changed, _Line  # noqa: PLC0415

    body = json.dumps(request_to_wire(request), sort_keys=True, separators=(",", ":"))
    item = _Line(job_id, _digest(body), 0, "queued", body)
    async with batch.db.pipeline(transaction=False) as pipe:
        await batch.add_to(pipe, job_id, digest=item.digest, line=0, state="queued", payload=body)
        (answer,) = await pipe.execute()
    if int(answer) == -1:
        raise _changed(item)
    return int(answer) == 1


async def process_job(
    batch: Batch,
    client: Client,
    job_id: str,
    *,
    images: Path | None = None,
    owner: str | None = None,
    fetch: FetchPolicy | None = None,
    job_timeout: float | None = None,
) -> dict[str, Any]:
    """
    Run one job of ``batch`` to its end, once, whoever calls it how often: idempotent.

    The job is taken under a lease (``batch.reclaim_after`` seconds, renewed while it runs);
    a job found final returns its record; found accepted, it is collected by polling with
    the key that accepted it; found ``submitting`` after its owner died, it is submitted
    again and flagged ``possible_duplicate``. Cancelling hands the job back.

    Args:
        batch: The batch holding the job.
        client: A client built with ``transport=LedgerTransport()``.
        job_id: The job.
        images: Download the output images into this folder.
        owner: This caller's id (default: ``host-pid-random``).
        fetch: What image downloads may fetch.
        job_timeout: Deadline of the job in seconds (default: the client's).

    Returns:
        The job's final record (as ``results`` gives it).

    Raises:
        JobBusyError: Another owner holds a live lease on the job.
        InvalidRequestError: No such job, or the client lacks the ledger transport.

    .. versionadded:: 0.3.0
    """
    check_client(client)
    owner = owner or f"{socket.gethostname()}-{os.getpid()}-{token_hex(3)}"
    found = await batch.take(job_id, owner)
    if found in ("final", "missing"):
        return await _stored(batch, job_id)
    if found == "busy":
        raise JobBusyError(f"job {job_id!r} is being run by another owner")
    assert isinstance(found, Claim)  # noqa: S101 - the strings are handled above
    claim = found
    try:
        async with contextlib.AsyncExitStack() as stack:
            downloader = None
            if images is not None:
                policy = fetch or await download_policy(
                    client.base_url, allow_private=False, max_bytes=MAX_IMAGE_BYTES
                )
                fetcher = await stack.enter_async_context(SafeFetcher(policy))
                downloader = Downloader(fetcher, images)
            setup = JobSetup(
                batch=batch,
                client=client,
                worker=owner,
                host=socket.gethostname(),
                downloader=downloader,
                job_timeout=job_timeout,
            )
            async with asyncio.TaskGroup() as group:
                renew = group.create_task(_renew(batch, claim))
                try:
                    record = await run_claim(setup, claim)
                finally:
                    renew.cancel()
    except BaseException:
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(5.0):
                await batch.hand_back(claim)
        raise
    stored: dict[str, Any] = json.loads(record.to_json())
    return stored


async def _renew(batch: Batch, claim: Claim) -> None:
    while True:
        await asyncio.sleep(batch.reclaim_after / 4)
        with contextlib.suppress(RedisError):
            await batch.heartbeat(claim.owner, [(claim, "")], 1)


async def _stored(batch: Batch, job_id: str) -> dict[str, Any]:
    from .. import InvalidRequestError  # noqa: PLC0415

    raw = await batch.db.hget(batch.job_key(job_id), "r")
    if raw is None:
        raise InvalidRequestError("job_id", f"no job {job_id!r} in batch {batch.name!r}")
    record: dict[str, Any] = json.loads(raw)
    return record
