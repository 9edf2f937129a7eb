"""
Running one job: submit with retries across the pool, then poll the submitting key.

A job holds one pool slot from its submit until its result is collected. Every attempt is
recorded, so that the result or the final error can tell what happened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from attrs import evolve, frozen
from tenacity import RetryCallState

from ._config import Endpoints, PollPolicy, Timeouts
from ._errors import (
    APIError,
    JobFailedError,
    JobTimeoutError,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
)
from ._events import EventKind, JobEvent, JobEventHandler
from ._models import ApiResponse, Attempt, ImageResult
from ._pool import ServerPool
from ._responses import classify
from ._retry import RetryPolicy, may_have_started
from ._secrets import redact_body
from ._server import Route
from ._transport import Transport

if TYPE_CHECKING:
    from ._dispatch import BatchProgress

__all__ = ["JobRunner", "Wire"]

logger = logging.getLogger("modelslab_async")

Phase = Literal["submit", "fetch", "other"]


@frozen
class Wire:
    """How to reach the API: transport, base URL, paths, timeouts. Internal."""

    transport: Transport
    base_url: str
    endpoints: Endpoints
    timeouts: Timeouts

    async def call(
        self,
        route: Route,
        path: str,
        fields: Mapping[str, Any],
        *,
        read_timeout: float,
        phase: Phase,
        defaults: Mapping[str, Any] | None = None,
    ) -> ApiResponse:
        """
        POST ``fields`` plus the route's key to ``path``; return the classified answer.

        ``defaults`` go in first, so a field of the caller's wins over them.
        """
        body = (
            {**defaults, **fields, "key": route.key} if defaults else {**fields, "key": route.key}
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("POST %s to %s: %s", path, route.name, redact_body(body))
        route.in_flight += 1
        try:
            raw = await self.transport.post_json(
                f"{self.base_url}/{path}", body, timeout=read_timeout, server=route.name
            )
        finally:
            route.in_flight -= 1
        return classify(raw, server=route.name, phase=phase)


class JobRunner:
    """One job's life: submit (with retries and rerouting), then poll until done. Internal."""

    def __init__(
        self,
        wire: Wire,
        pool: ServerPool,
        *,
        retry: RetryPolicy,
        poll: PollPolicy,
        timeout: float | None,
        emit: JobEventHandler | None = None,
        progress: BatchProgress | None = None,
        job_id: str | None = None,
        index: int | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._job_id = job_id
        self._index = index
        self._wire = wire
        self._pool = pool
        self._retry = retry
        self._poll_policy = poll
        self._timeout = timeout
        self._emit_to = emit
        self._progress = progress
        self._in_queue = False
        self._sleep = sleep
        self._started = time.monotonic()
        self._deadline = None if timeout is None else self._started + timeout
        self._log: list[tuple[str, Literal["submit", "fetch"], str | None, str, float]] = []
        self.request_id: str | None = None
        self.route: Route | None = None
        self._submits = 0
        self._last_route: Route | None = None
        self._avoid: set[Route] = set()
        self._maybe_started = False
        self.possible_duplicate = False
        self._waited = 0.0
        self._body: Mapping[str, Any] = {}

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far, oldest first."""
        return [
            Attempt(server=server, phase=phase, error=error, detail=detail, waited=waited)
            for server, phase, error, detail, waited in self._log
        ]

    # --- entry points -------------------------------------------------------------------------

    def submit(self, body: Mapping[str, Any]) -> Coroutine[Any, Any, ImageResult]:
        """Run the job to its end; raises a typed error carrying the attempt history."""
        self._body = body
        return self._run(self._attempt)

    def collect(self, route: Route, request_id: str) -> Coroutine[Any, Any, ImageResult]:
        """Poll a job accepted earlier (by ``route``'s key) until it ends."""
        self.request_id, self.route = request_id, route
        return self._run(functools.partial(self._collect_once, route, request_id))

    async def _run(self, attempt: Callable[[], Awaitable[ImageResult]]) -> ImageResult:
        """The job under its deadline: the first try directly, retries as the policy says."""
        try:
            async with asyncio.timeout(self._timeout) as scope:
                try:
                    result = await attempt()  # the common case: no retry machinery at all
                except ModelsLabError as error:
                    result = await self._retry.resume(
                        error,
                        attempt,
                        started=self._started,
                        can_reroute=self._can_reroute,
                        accepted=self._accepted,
                        sleep=self._sleep,
                        before_sleep=self._before_sleep,
                    )
        except TimeoutError:
            if not scope.expired():  # not our deadline: pass it on untouched
                raise
            raise self._timed_out() from None
        except ModelsLabError as error:
            raise self._fail(error) from error.__cause__
        self._emit(EventKind.DONE, result.server, result=result)
        return result

    async def _collect_once(self, route: Route, request_id: str) -> ImageResult:
        # Accepted already, so never resubmitted: the retry policy sees accepted() is true.
        lease = await self._pool.acquire(deadline=self._deadline, pinned=route)
        route.processing += 1
        try:
            final = await self._poll(route, request_id, eta=0.0)
        finally:
            route.processing -= 1
            self._pool.release(lease)
        return self.result(route, final)

    def _timed_out(self) -> ModelsLabError:
        error = JobTimeoutError(
            self._timeout or 0.0,
            request_id=self.request_id,
            server=self.route.name if self.route else None,
        )
        return self._fail(error)

    def _fail(self, error: ModelsLabError) -> ModelsLabError:
        error.with_context(attempts=self.attempts, possible_duplicate=self.possible_duplicate)
        self._emit(EventKind.FAILED, error=f"{type(error).__name__}: {error.message}")
        return error

    # --- submit -------------------------------------------------------------------------------

    def _can_reroute(self) -> bool:
        return self._pool.can_reroute(self._last_route)

    def _accepted(self) -> bool:
        return self.request_id is not None

    def _before_sleep(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self._waited = wait
        error = state.outcome.exception() if state.outcome else None
        text = f"{type(error).__name__}: {error}" if error else None
        self._emit(EventKind.RETRIED, wait=wait, error=text)

    async def _attempt(self) -> ImageResult:
        body = self._body
        lease = await self._pool.acquire(deadline=self._deadline, avoid=self._avoid)
        route = lease.route
        self._submits += 1
        if self._last_route is not None and route is not self._last_route:
            self._emit(EventKind.REROUTED, route.name)
        if self._maybe_started:
            self.possible_duplicate = True
        self._emit(EventKind.SUBMITTED, route.name)
        started = time.monotonic()
        try:
            route.health.submits += 1
            try:
                answer = await self._wire.call(
                    route,
                    self._wire.endpoints.img2img,
                    body,
                    read_timeout=self._read_timeout(self._wire.timeouts.submit_read),
                    phase="submit",
                    defaults=route.extra_body,
                )
                if answer.status == "success" and not _has_images(answer) and answer.id is None:
                    raise ResponseFormatError(
                        "success without images or id", status_code=200, server=route.name
                    )
            except ModelsLabError as error:
                logger.debug("submit to %s failed: %r", route.name, error)
                self._record(route, "submit", error)
                self._pool.record_error(route, error)
                self._maybe_started = self._maybe_started or may_have_started(error)
                self._avoid.add(route)
                self._last_route = route
                raise
            self._pool.record_answer(route)
            self._record(route, "submit", None, answer.status)
            self._last_route = route
            if answer.status == "failed":
                raise JobFailedError(
                    answer.message or "failed", request_id=answer.id, server=route.name
                )
            if answer.status == "success" and _has_images(answer):
                result = self.result(route, answer)
            else:
                result = await self._queued(route, answer)
        finally:
            self._pool.release(lease)
        route.health.record_job(time.monotonic() - started)
        return result

    async def _queued(self, route: Route, answer: ApiResponse) -> ImageResult:
        assert answer.id is not None  # noqa: S101 - classify() guarantees it on submit
        self.request_id, self.route = answer.id, route
        self._emit(EventKind.QUEUED, route.name, eta=answer.eta)
        route.processing += 1
        try:
            final = await self._poll(route, answer.id, answer.eta)
        finally:
            route.processing -= 1
        merged = final if final.meta else _with_meta(final, answer.meta)
        return self.result(route, merged)

    # --- poll ---------------------------------------------------------------------------------

    async def _poll(self, route: Route, request_id: str, eta: float | None) -> ApiResponse:
        path, fields = self._wire.endpoints.fetch_call(request_id)
        previous: float | None = None
        while True:
            delay = self._poll_policy.delay(eta, previous)
            previous = delay
            await self._sleep(delay)
            route.health.fetches += 1
            try:
                answer = await self._wire.call(
                    route,
                    path,
                    fields,
                    read_timeout=self._read_timeout(self._wire.timeouts.fetch_read),
                    phase="fetch",
                )
            except APIError as error:
                self._record(route, "fetch", error)
                if not _transient(error):
                    raise JobFailedError(
                        error.api_message, request_id=request_id, server=route.name
                    ) from error
                self._pool.record_error(route, error)
                eta = error.retry_after if isinstance(error, RateLimitError) else None
                continue
            except ModelsLabError as error:  # transport or malformed: the job is still there
                self._record(route, "fetch", error)
                self._pool.record_error(route, error)
                eta = None
                continue
            self._pool.record_answer(route)
            if answer.status == "success" and _has_images(answer):
                self._record(route, "fetch", None, "success")
                return answer
            if answer.status in ("failed", "error"):
                self._record(route, "fetch", None, answer.status)
                raise JobFailedError(
                    answer.message or answer.status, request_id=request_id, server=route.name
                )
            eta = answer.eta

    # --- helpers ------------------------------------------------------------------------------

    def _read_timeout(self, phase_timeout: float) -> float:
        if self._deadline is None:
            return phase_timeout
        return max(0.001, min(phase_timeout, self._deadline - time.monotonic()))

    def _record(
        self,
        route: Route,
        phase: Literal["submit", "fetch"],
        error: ModelsLabError | None,
        detail: str = "",
    ) -> None:
        if error is not None:
            detail = error.message
        name = type(error).__name__ if error is not None else None
        self._log.append((route.name, phase, name, detail, round(self._waited, 3)))
        self._waited = 0.0

    def result(self, route: Route, answer: ApiResponse) -> ImageResult:
        """The finished job's result, with what this runner knows of its history."""
        return ImageResult(
            id=answer.id or self.request_id,
            output=answer.output or answer.proxy_links,
            proxy_links=answer.proxy_links,
            generation_time=answer.generation_time,
            meta=MappingProxyType(answer.meta),  # parsed for this job alone: no copy needed
            nsfw_content_detected=answer.nsfw_content_detected,
            server=route.name,
            attempts=max(self._submits, 1),
            elapsed=time.monotonic() - self._started,
            possible_duplicate=self.possible_duplicate,
        )

    def _emit(
        self,
        kind: EventKind,
        server: str | None = None,
        *,
        eta: float | None = None,
        wait: float | None = None,
        error: str | None = None,
        result: ImageResult | None = None,
    ) -> None:
        progress = self._progress
        if progress is not None:
            if kind is EventKind.QUEUED:
                self._in_queue = True
                progress.queued += 1
            elif kind is EventKind.RETRIED:
                progress.retries += 1
            elif kind is EventKind.REROUTED:
                progress.reroutes += 1
            elif self._in_queue and (kind is EventKind.DONE or kind is EventKind.FAILED):
                self._in_queue = False
                progress.queued -= 1
        if self._emit_to is not None:
            self._emit_to(
                JobEvent(
                    kind=kind,
                    job_id=self._job_id,
                    index=self._index,
                    server=server if server is not None or self.route is None else self.route.name,
                    attempt=self._submits,
                    eta=eta,
                    wait=wait,
                    error=error,
                    request_id=self.request_id,
                    result=result,
                )
            )


def _has_images(answer: ApiResponse) -> bool:
    return bool(answer.output or answer.proxy_links)


def _transient(error: APIError) -> bool:
    return isinstance(error, RateLimitError | ServerBusyError | ServerError)


def _with_meta(answer: ApiResponse, meta: Mapping[str, Any]) -> ApiResponse:
    return evolve(answer, meta=meta)
