"""
Carrying one claimed job to its final record, moving the ledger at every step.

The ``submitting`` mark must be in Redis *before* a submit leaves, or a worker killed just
after sending would leave a job that looks never sent. Progress events are synchronous, so
the mark is written by :class:`LedgerTransport`, which wraps the client's transport: for a
submit of a job this task is running (found through a context variable), it awaits
BEGIN_SUBMIT, sends, and awaits ACCEPT (or GENERATE) on the answer before the client sees it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import attrs

from .. import (
    AiohttpTransport,
    Client,
    ImageResult,
    InvalidRequestError,
    ModelsLabError,
    RawResponse,
    Transport,
    request_from_wire,
)
from .._cli._batch import _final
from .._cli._download import Downloader, DownloadError, DownloadResult, ImageWriteError
from .._cli._journal import FAILED, GENERATED, Record
from .._cli._text import short
from .._responses import classify
from ._ledger import Batch, Claim

__all__ = ["JobSetup", "LedgerFencedError", "LedgerTransport", "run_claim", "track_id_for"]

logger = logging.getLogger("modelslab_async.redis")


class LedgerFencedError(Exception):
    """This owner no longer owns the job (another worker took it over): it stops here."""


class ImagesUnwrittenError(Exception):
    """The images could not be written here: the job is handed back, still ``generated``."""


def track_id_for(batch: str, job_id: str) -> str:
    """The stable ``track_id`` of a job of a batch (unless its request sets its own)."""
    digest = hashlib.sha256(f"{batch}\0{job_id}".encode("utf-8", "surrogatepass"))
    return f"mlb-{digest.hexdigest()[:24]}"


class _Submitting:
    """The ledger side of one job's submits, reached by the transport."""

    def __init__(self, batch: Batch, claim: Claim, *, outputs: bool) -> None:
        self.batch = batch
        self.claim = claim
        self.outputs = outputs  # record an answer's outputs at once (downloads follow)

    async def before(self, server: str) -> None:
        answer = await self.batch.begin_submit(self.claim, server)
        if answer != 1:
            raise LedgerFencedError(
                f"job {self.claim.job_id}: not submitted ("
                + ("another worker owns it" if answer == 0 else "accepted already")
                + ")"
            )

    async def after(self, raw: RawResponse, server: str) -> None:
        try:
            answer = classify(raw, server=server, phase="submit")
        except ModelsLabError:
            return  # the client judges it; nothing was accepted
        if answer.status == "processing" and answer.id is not None:
            done = await self.batch.accept(self.claim, answer.id, server)
        elif self.outputs and answer.status == "success" and (answer.output or answer.proxy_links):
            outputs = answer.output or answer.proxy_links
            self.generated = await self.batch.generate(
                self.claim, answer.id, server, outputs, False
            )
            done = self.generated[0]
        else:
            return
        if done == 0:
            raise LedgerFencedError(f"job {self.claim.job_id}: another worker owns it")


_CURRENT: ContextVar[_Submitting | None] = ContextVar("modelslab-ledger-job", default=None)


class LedgerTransport:
    """
    A transport that records each submit of a ledger job in Redis before it is sent, and
    its acceptance before the client sees the answer. Wraps another transport (default:
    :class:`~modelslab_async.AiohttpTransport`). Build the worker's client with it::

        Client(pool, transport=LedgerTransport())

    .. versionadded:: 0.3.0
    """

    def __init__(self, inner: Transport | None = None) -> None:
        self.inner: Transport = inner or AiohttpTransport()

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> RawResponse:
        """POST; a ledger job's submit is marked before and recorded after."""
        job = _CURRENT.get()
        if job is None or "track_id" not in body:
            return await self.inner.post_json(url, body, timeout=timeout, server=server)
        await job.before(server)
        raw = await self.inner.post_json(url, body, timeout=timeout, server=server)
        await job.after(raw, server)
        return raw

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        """GET, unchanged."""
        return await self.inner.get(url, timeout=timeout)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.inner.aclose()


def check_client(client: Client) -> None:
    """Refuse a client whose submits the ledger would not see."""
    if not isinstance(client.transport, LedgerTransport):
        raise InvalidRequestError(
            "client", "build it with Client(pool, transport=LedgerTransport()) for the ledger"
        )


@attrs.frozen(kw_only=True)
class JobSetup:
    """What running a job needs: the ledger, a client, who we are, where images go."""

    batch: Batch
    client: Client
    worker: str | None = None
    host: str | None = None
    downloader: Downloader | None = None
    job_timeout: float | None = None


async def run_claim(setup: JobSetup, claim: Claim, entry: str = "") -> Record:
    """
    Run a claimed job to its end and FINISH it; returns the final record.

    Raises:
        LedgerFencedError: Another owner took the job over (nothing more is done here).
        ImagesUnwrittenError: Its images could not be written; hand it back.
    """
    batch = setup.batch
    if claim.deliveries > batch.max_deliveries:
        return await _end(setup, claim, entry, _dead(setup, claim), dead=True)
    try:
        result = await _result(setup, claim)
    except ModelsLabError as error:
        return await _end(setup, claim, entry, _failed(setup, claim, error))
    if result is None:
        outputs, attempts, elapsed = claim.outputs, claim.attempts, claim.elapsed
        request_id, server, dup = claim.request_id, claim.server or "", claim.possible_duplicate
    else:
        request_id, server, outputs = result.id, result.server, result.output
        dup = result.possible_duplicate or claim.possible_duplicate
        attempts, elapsed = claim.attempts + result.attempts, result.elapsed
        if setup.downloader is not None:  # the answer is recorded before the downloads
            status, attempts, elapsed, dup = await batch.generate(
                claim, request_id, server, outputs, dup
            )
            if status != 1:
                raise LedgerFencedError(f"job {claim.job_id}: another worker owns it")
    generated = Record(
        id=_record_id(claim.job_id),
        status=GENERATED,
        request_id=request_id,
        server=server,
        output=tuple(outputs),
        attempts=max(attempts, 1),
        elapsed=elapsed,
        possible_duplicate=dup,
    )
    download = None
    if setup.downloader is not None:
        try:
            download = await setup.downloader.fetch_job(claim.job_id, outputs)
        except Exception as error:  # noqa: BLE001 - a failed download is recorded, not fatal
            download = DownloadResult((), _download_error(error))
        if isinstance(download.error, ImageWriteError):
            raise ImagesUnwrittenError(str(download.error))
    return await _end(setup, claim, entry, _final(generated, download))


async def _result(setup: JobSetup, claim: Claim) -> ImageResult | None:
    client = setup.client
    if claim.state == "accepted" and claim.request_id is not None:
        server = _route_name(client, claim.server)
        return await client.fetch(claim.request_id, server=server, timeout=setup.job_timeout)
    if claim.state == "generated":
        return None
    if claim.body is None:
        raise InvalidRequestError("job", f"{claim.job_id!r} has no request in the ledger")
    request = request_from_wire(dict(claim.body))
    if request.track_id is None:
        request = attrs.evolve(request, track_id=track_id_for(setup.batch.name, claim.job_id))
    submitting = _Submitting(setup.batch, claim, outputs=setup.downloader is not None)
    token = _CURRENT.set(submitting)
    try:
        return await client.img2img(request, timeout=setup.job_timeout)
    finally:
        _CURRENT.reset(token)


async def _end(
    setup: JobSetup, claim: Claim, entry: str, record: Record, *, dead: bool = False
) -> Record:
    record = attrs.evolve(record, worker=setup.worker, host=setup.host)
    done = await setup.batch.finish(claim.job_id, record, claim=claim, entry=entry, dead=dead)
    if done == -1:
        raise LedgerFencedError(f"job {claim.job_id}: another worker owns it")
    return record


def _record_id(job_id: str) -> str | None:
    return None if job_id.startswith("\0") else job_id


def _failed(setup: JobSetup, claim: Claim, error: ModelsLabError) -> Record:
    return Record(
        id=_record_id(claim.job_id),
        status=FAILED,
        request_id=getattr(error, "request_id", None) or claim.request_id,
        server=error.server or claim.server,
        attempts=claim.attempts + sum(a.phase == "submit" for a in error.attempts),
        possible_duplicate=error.possible_duplicate or claim.possible_duplicate,
        error_type=type(error).__name__,
        error=short(str(error)),
    )


def _dead(setup: JobSetup, claim: Claim) -> Record:
    deaths = claim.deliveries - 1
    return Record(
        id=_record_id(claim.job_id),
        status=FAILED,
        request_id=claim.request_id,
        server=claim.server,
        attempts=claim.attempts,
        possible_duplicate=claim.possible_duplicate,
        error_type="DeadLetterError",
        error=f"dead-lettered: {deaths} workers stopped while holding it (state {claim.state})",
    )


def _download_error(error: Exception) -> DownloadError:
    return DownloadError(f"{type(error).__name__}: {error}")


def _route_name(client: Client, server: str | None) -> str | None:
    """The route a job is collected through (the key that accepted it)."""
    if server is None:
        return None
    for candidate in (server, server.removesuffix(" (balancer)")):
        try:
            return client.pool.route_name(candidate)
        except InvalidRequestError:
            continue
    return server  # unknown here: the fetch fails, naming the server
