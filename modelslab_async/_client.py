"""The client: configuration, lifecycle, and the calls users make."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from ._admission import check_priority
from ._call import Wire
from ._config import DEFAULT, DEFAULT_BASE_URL, Default, Endpoints, PollPolicy, Timeouts
from ._converter import request_to_wire
from ._deadlines import Deadlines
from ._decisions import judge
from ._dispatch import Dispatcher, Job, JobOutcome
from ._errors import InvalidRequestError, JobFailedError, ModelsLabError, ReadError
from ._events import JobEventHandler
from ._job import JobRunner
from ._models import ImageResult, Img2ImgRequest, JobStatus, SystemDetails
from ._pool import ServerPool, route_of, scheduler_of
from ._responses import classify_plain
from ._retry import RetryPolicy
from ._secrets import Scrubber
from ._server import Route, Server
from ._transport import AiohttpTransport, RawResponse, Transport, connection_limit
from ._webhooks import CallbackBook, WebhookReceiver, callbacks_of

__all__ = ["Client"]

logger = logging.getLogger("modelslab_async")

# track_ids: unique per job, across processes (a random prefix) and within one (a counter).
_TRACK_PREFIX = f"mla-{secrets.token_hex(5)}-"
_track_numbers = itertools.count(1)


def _new_track_id() -> str:
    return f"{_TRACK_PREFIX}{next(_track_numbers):x}"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class Client:
    """
    An asyncio client for the ModelsLab enterprise img2img API over a pool of servers.

    Use it as ``async with Client(...) as client``; it holds one HTTP session.

    Args:
        servers: A :class:`ServerPool`, or servers / keys to build one (first-server routing).
        base_url: The enterprise API base, e.g. ``https://modelslab.com/api/v1/enterprise``.
        timeouts: Per-phase timeouts and the overall deadline of a job.
        retry: How submits are retried.
        poll: How queued jobs are polled.
        endpoints: Endpoint paths (documented by default; :meth:`Endpoints.sdk` for the SDKs').
        transport: Replaces the aiohttp transport (tests, benchmarks, custom sessions).
        webhooks: A mounted :class:`WebhookReceiver`: every job then asks for a callback
            (``webhook`` = the receiver's URL for its ``track_id``, unless the request names
            its own) and takes its result from whichever comes first, the callback or
            polling; polling starts later and runs less often, and never stops.
    """

    def __init__(
        self,
        servers: ServerPool | Iterable[Server | str],
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        endpoints: Endpoints | None = None,
        transport: Transport | None = None,
        webhooks: WebhookReceiver | None = None,
    ) -> None:
        if isinstance(servers, str):
            raise InvalidRequestError("servers", "pass a list of keys, not one string")
        self.pool = servers if isinstance(servers, ServerPool) else ServerPool(servers)
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self._transport: Transport = transport or AiohttpTransport(
            connect_timeout=self.timeouts.connect, limit=connection_limit(self.pool.capacity)
        )
        self._scheduler = scheduler_of(self.pool)
        self.webhooks = webhooks
        self._wire = Wire(
            self._transport,
            _checked_base_url(base_url),
            endpoints or Endpoints(),
            self.timeouts,
            Scrubber(server.key.reveal() for server in self.pool.servers),
        )
        self._deadlines = Deadlines()  # every job's deadline on one timer
        self._state = _State.UNOPENED
        self._stack = contextlib.AsyncExitStack()

    @property
    def base_url(self) -> str:
        """The API base URL."""
        return self._wire.base_url

    @property
    def transport(self) -> Transport:
        """The transport the client sends through (given, or its own aiohttp one)."""
        return self._transport

    def __repr__(self) -> str:
        return f"<Client {self._state.value} {self.base_url} {self.pool!r}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"a client can be opened once (it is {self._state.value})")
        self._state = _State.OPENED
        interval = self.pool.health_policy.probe_interval
        if interval is not None:
            group = await self._stack.enter_async_context(asyncio.TaskGroup())
            probes = group.create_task(self._probe_forever(interval), name="modelslab-probes")
            self._stack.callback(probes.cancel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background probes and close the HTTP session. Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        try:
            await self._stack.aclose()
        finally:
            self._deadlines.close()
            await self._transport.aclose()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("the client is closed")

    # --- jobs ---------------------------------------------------------------------------------

    async def img2img(
        self,
        request: Img2ImgRequest,
        *,
        timeout: float | Default | None = DEFAULT,
        on_event: JobEventHandler | None = None,
        priority: int = 0,
    ) -> ImageResult:
        """
        Run one img2img job to its end and return its images.

        Submits the job (retrying and rerouting as the policy allows), and when the server
        answers ``processing`` polls the fetch endpoint with the key that submitted it. The job
        goes out with a ``track_id`` unique to it (the request's own, if it sets one), found
        again on the result, its events and its error.

        Args:
            request: The job.
            timeout: Deadline for the whole job, in seconds (default: ``timeouts.job``).
            on_event: Receives progress events.
            priority: Higher numbers get a slot first when the pool is full (FIFO within a
                priority; see :class:`ServerPool` for the guard against starvation).

        Raises:
            InvalidRequestError: ``request`` is not an :class:`Img2ImgRequest`, or its local
                ``init_image`` file cannot be read.
            ModelsLabError: Any other failure; the error's ``attempts`` tell what was tried.
        """
        self._check_open()
        if not isinstance(request, Img2ImgRequest):
            raise InvalidRequestError(
                "request", f"expected an Img2ImgRequest, got {type(request).__name__}"
            )
        if type(priority) is not int:
            check_priority(priority)
        body = (
            await self._read_body(request)
            if isinstance(request.init_image, Path)
            else request_to_wire(request)
        )
        track_id = body["track_id"] = request.track_id or _new_track_id()
        job_timeout = self._job_timeout(timeout)
        webhooks = self.webhooks
        if webhooks is None or request.webhook is not None:  # no callback of ours to race
            return await self._runner(job_timeout, on_event, priority, track_id).submit(body)
        body["webhook"] = webhooks.url_for(track_id)
        callbacks = callbacks_of(webhooks)
        runner = self._runner(job_timeout, on_event, priority, track_id, callbacks)
        try:
            return await runner.submit(body)
        finally:
            callbacks.forget(track_id)

    async def _read_body(self, request: Img2ImgRequest) -> dict[str, Any]:
        """The JSON body of a request with a local image, the file read off the loop."""
        image = str(request.init_image)
        try:
            return await asyncio.to_thread(request_to_wire, request)
        except OSError as error:
            raise InvalidRequestError(
                "init_image", f"cannot read {image}: {error.strerror or error}"
            ) from error

    async def fetch(
        self,
        request_id: str | int,
        *,
        server: str | None = None,
        timeout: float | Default | None = DEFAULT,
        on_event: JobEventHandler | None = None,
        priority: int = 0,
    ) -> ImageResult:
        """
        Collect a job accepted earlier, polling until it ends.

        Args:
            request_id: The id the server gave the job.
            server: The name of the server whose key submitted it (default: the first
                server, or the first-server path). Fetches must use the submitting key.
            timeout: Deadline in seconds (default: ``timeouts.job``).
            on_event: Receives progress events.
            priority: Higher numbers get a slot on that server first.
        """
        self._check_open()
        check_priority(priority)
        route = route_of(self.pool, server)
        runner = self._runner(self._job_timeout(timeout), on_event, priority, None)
        return await runner.collect(route, str(request_id))

    async def fetch_once(self, request_id: str | int, *, server: str | None = None) -> JobStatus:
        """Ask once about a job accepted earlier: done (with its result) or still processing."""
        self._check_open()
        route = route_of(self.pool, server)
        path, fields = self._wire.endpoints.fetch_call(str(request_id))
        answer = await self._call_once(route, path, fields)
        runner = self._runner(None, None, 0, None)
        if answer.status == "success" and (answer.output or answer.proxy_links):
            return JobStatus(
                request_id=str(request_id), done=True, result=runner.result(route, answer)
            )
        if answer.status == "failed":
            raise JobFailedError(
                answer.message or "failed", request_id=str(request_id), server=route.name
            )
        return JobStatus(request_id=str(request_id), done=False, eta=answer.eta)

    async def system_details(self, server: str | None = None) -> SystemDetails:
        """Ask a server about itself (``system_details``): status, queue time, models."""
        self._check_open()
        route = route_of(self.pool, server)
        body = {"key": route.key}
        async with self._bounded(self.timeouts.fetch_read, route.name):
            raw = await self._transport.post_json(
                f"{self.base_url}/{self._wire.endpoints.system_details}",
                body,
                timeout=self.timeouts.fetch_read,
                server=route.name,
            )
        return _system_details(route.name, raw, self._wire.scrub)

    async def download(self, url: str) -> RawResponse:
        """GET an output URL (no key is sent); returns the raw answer."""
        self._check_open()
        async with self._bounded(self.timeouts.download_read, None):
            return await self._transport.get(url, timeout=self.timeouts.download_read)

    @contextlib.asynccontextmanager
    async def _bounded(self, read: float, server: str | None) -> AsyncIterator[None]:
        """Bound a call outside any job by its read timeout plus the connect timeout, in total."""
        try:
            async with asyncio.timeout(read + self.timeouts.connect):
                yield
        except TimeoutError:
            raise ReadError("no complete answer in time", server=server, timed_out=True) from None

    def img2img_batch(
        self,
        jobs: Iterable[Img2ImgRequest | Job] | AsyncIterable[Img2ImgRequest | Job],
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        job_timeout: float | Default | None = DEFAULT,
        on_event: JobEventHandler | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[JobOutcome, None]:
        """
        Run many jobs, yielding one :class:`JobOutcome` each: short for
        ``Dispatcher(client, ...).run(jobs)``. Wrap in ``contextlib.aclosing`` when you may
        stop early, so that the jobs in flight are cancelled at once.
        """
        dispatcher = Dispatcher(
            self,
            concurrency=concurrency,
            ordered=ordered,
            job_timeout=job_timeout,
            on_event=on_event,
            priority=priority,
        )
        return dispatcher.run(jobs)

    # --- internals ----------------------------------------------------------------------------

    def _job_timeout(self, timeout: float | Default | None) -> float | None:
        return self.timeouts.job if isinstance(timeout, Default) else timeout

    def _runner(
        self,
        timeout: float | None,
        on_event: JobEventHandler | None,
        priority: int,
        track_id: str | None,
        callbacks: CallbackBook | None = None,
    ) -> JobRunner:
        return JobRunner(
            self._wire,
            self._scheduler,
            retry=self.retry,
            poll=self.poll,
            timeout=timeout,
            emit=on_event,
            priority=priority,
            track_id=track_id,
            callbacks=callbacks,
            deadlines=self._deadlines,
        )

    async def _call_once(self, route: Route, path: str, fields: dict[str, str]) -> Any:
        try:
            answer = await self._wire.call(
                route, path, fields, read_timeout=self.timeouts.fetch_read, phase="fetch"
            )
        except ModelsLabError as error:
            await self._scheduler.report_failure(
                route, judge(error), f"{type(error).__name__}: {error.message}", probe=False
            )
            raise
        await self._scheduler.report_success(route, probe=False)
        return answer

    async def _probe_forever(self, interval: float) -> None:
        """Ask every server about itself now and then; a failing probe never stops this."""
        while True:
            for route in self._scheduler.routes:
                await self._probe(route)
            await asyncio.sleep(interval)

    async def _probe(self, route: Route) -> None:
        # In memory, a probe of a half-open server is its one probe; a shared backend grants
        # probes with slots only, so a background probe there just reports what it saw.
        probe = self._scheduler.shared is None and self._scheduler.claim_probe(route)
        try:
            details = await self.system_details(route.name)
        except ModelsLabError as error:
            logger.info("probe of %s failed: %s", route.name, error)
            text = f"{type(error).__name__}: {error.message}"
            await self._scheduler.report_failure(route, judge(error), text, probe=probe)
        except Exception:  # a bug must not cancel the user's code through the task group
            logger.exception("probe of %s raised", route.name)
        else:
            if details.status.lower() in ("ok", "success"):
                await self._scheduler.report_success(route, probe=probe)
        finally:
            if probe:
                self._scheduler.probe_done(route)


def _checked_base_url(base_url: object) -> str:
    """The base URL without its trailing slash, if it is an absolute http(s) URL with a host."""
    allowed = "an absolute http(s) URL with a host, e.g. " + DEFAULT_BASE_URL
    if not isinstance(base_url, str):
        raise InvalidRequestError("base_url", "must be a string", allowed=allowed)
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        raise InvalidRequestError("base_url", "is not a valid URL", allowed=allowed) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError("base_url", "is not an http(s) URL with a host", allowed=allowed)
    if port == 0 or parts.username is not None or parts.password is not None:
        raise InvalidRequestError("base_url", "must not name port 0 or hold credentials")
    return base_url.rstrip("/")


def _system_details(server: str, raw: RawResponse, scrub: Scrubber) -> SystemDetails:
    body = classify_plain(raw, server=server, scrub=scrub)
    queue = body.get("queue_time")
    models = body.get("model_count")
    return SystemDetails(
        server=server,
        status=str(body.get("status", "")),
        queue_time=float(queue) if isinstance(queue, int | float) else None,
        model_count=models if isinstance(models, int) and not isinstance(models, bool) else None,
        raw=body,
    )
