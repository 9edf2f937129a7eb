"""
Running one job: submit with retries across the pool, then poll the submitting key.

A job holds one pool slot from its submit until its result is collected. Every attempt is
recorded, so that the result or the final error can tell what happened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any, Literal

from attrs import evolve

from ._call import Wire
from ._config import PollPolicy
from ._converter import ApiResponse
from ._deadlines import Deadlines
from ._decisions import Elsewhere, Health, Verdict, judge
from ._errors import (
    Attempt,
    JobFailedError,
    JobTimeoutError,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
)
from ._events import EventKind, JobEvent, JobEventHandler, deliver
from ._models import ImageResult
from ._retry import RetryPolicy
from ._retrying import RetryCallState, retry_after_failure
from ._scheduler import Scheduler
from ._server import Lease, Route
from ._webhooks import CallbackBook

__all__ = ["JobRunner"]

logger = logging.getLogger("modelslab_async")


class JobRunner:
    """One job's life: submit (with retries and rerouting), then poll until done. Internal."""

    # Defaults on the class: a job that succeeds at once never assigns most of them, and a
    # runner is built for every job. The containers are made on first write.
    request_id: str | None = None
    route: Route | None = None
    possible_duplicate = False
    _submits = 0
    _last_route: Route | None = None
    _maybe_started = False  # a submit may have reached a server
    _resubmits = 0  # submits made since then
    _last_failure: tuple[BaseException, Verdict] | None = None
    _waited = 0.0
    _body: Mapping[str, Any] = MappingProxyType({})
    _log: list[tuple[str, Literal["submit", "fetch"], str | None, str, float]] | None = None
    _avoid: frozenset[Route] | set[Route] = frozenset()  # just failed: only if nothing else can
    # Routes barred until a time: one that may still be running this job (until its p95 job
    # time has passed), one that refused the key (for good).
    _barred: Mapping[Route, float] = MappingProxyType({})

    def __init__(
        self,
        wire: Wire,
        scheduler: Scheduler,
        *,
        retry: RetryPolicy,
        poll: PollPolicy,
        timeout: float | None,
        emit: JobEventHandler | None = None,
        priority: int = 0,
        track_id: str | None = None,
        callbacks: CallbackBook | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._wire = wire
        self._deadlines = Deadlines() if deadlines is None else deadlines
        self._scheduler = scheduler
        self._shared = scheduler.shared is not None  # slots in a backend: awaited calls
        self._retry = retry
        self._poll_policy = poll
        self._timeout = timeout
        self._emit_to = emit
        # A handler may say which kinds of event it wants (``event_kinds``); others are not built.
        self._kinds: frozenset[EventKind] | None = (
            _NO_KINDS if emit is None else getattr(emit, "event_kinds", None)
        )
        self._priority = priority
        self.track_id = track_id
        self._sleep = sleep
        # With webhooks: the callback this job races against polling, and the book it is in.
        self._callbacks = callbacks
        self._callback = (
            None if callbacks is None or track_id is None else callbacks.expect(track_id)
        )
        self._started = started = time.monotonic()
        self._deadline = None if timeout is None else started + timeout

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far, oldest first."""
        return [
            Attempt(server=server, phase=phase, error=error, detail=detail, waited=waited)
            for server, phase, error, detail, waited in self._log or ()
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
        deadline = None if self._timeout is None else self._deadlines.enter(self._timeout)
        try:
            try:
                result = await attempt()  # the common case: no retry machinery at all
            except ModelsLabError as error:
                result = await retry_after_failure(
                    error,
                    attempt,
                    policy=self._retry,
                    started=self._started,
                    should_retry=self._should_retry,
                    wait=self._wait,
                    sleep=self._sleep,
                    before_sleep=self._before_sleep,
                )
        except asyncio.CancelledError:
            if deadline is not None and self._deadlines.leave(deadline):
                raise self._timed_out() from None  # our deadline, not the caller's cancel
            raise
        except ModelsLabError as error:
            if deadline is not None:
                self._deadlines.leave(deadline)
            raise self._fail(error) from error.__cause__
        except BaseException:
            if deadline is not None:
                self._deadlines.leave(deadline)
            raise
        if deadline is not None:
            self._deadlines.leave(deadline)
        if self._kinds is None or EventKind.DONE in self._kinds:
            self._emit(EventKind.DONE, result.server, result=result)
        return result

    async def _collect_once(self, route: Route, request_id: str) -> ImageResult:
        # Accepted already, so never resubmitted: _should_retry sees the request id.
        lease = await self._scheduler.acquire(
            priority=self._priority, deadline=self._deadline, pinned=route, timer=False
        )
        route.processing += 1
        try:
            final = await self._poll(route, request_id, eta=0.0)
        finally:
            route.processing -= 1
            if self._shared:
                await self._scheduler.give_back(lease)
            else:
                self._scheduler.release(lease)
        return self.result(route, final)

    def _timed_out(self) -> ModelsLabError:
        error = JobTimeoutError(
            self._timeout or 0.0,
            request_id=self.request_id,
            server=self.route.name if self.route else None,
        )
        return self._fail(error)

    def _fail(self, error: ModelsLabError) -> ModelsLabError:
        error.with_context(
            attempts=self.attempts,
            possible_duplicate=self.possible_duplicate,
            track_id=self.track_id,
        )
        if self._emit_to is not None:
            self._emit(EventKind.FAILED, error=f"{type(error).__name__}: {error.message}")
        return error

    # --- retry decisions (the verdicts come from the one table in _decisions.py) --------------

    def _verdict(self, error: BaseException) -> Verdict:
        last = self._last_failure
        if last is not None and last[0] is error:
            return last[1]
        return judge(error)  # not a call's failure (no server free, a failed job...)

    def _should_retry(self, error: BaseException) -> bool:
        if self.request_id is not None:
            return False  # accepted: collected by polling, never submitted again
        verdict = self._verdict(error)
        if not verdict.retry:
            return False
        if self._maybe_started and not self._retry.may_resubmit(self._resubmits):
            return False
        if verdict.elsewhere is Elsewhere.ONLY and verdict.health is Health.FATAL:
            return self._scheduler.can_take_now(self._barred_now())
        return True

    def _barred_now(self) -> frozenset[Route] | set[Route]:
        if not self._barred:
            return _NONE
        now = time.monotonic()
        return {route for route, until in self._barred.items() if until > now}

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        barred = self._barred_now()
        if error is None or self._scheduler.can_take_now(self._avoid | barred):
            return 0.0  # another server can take the job now
        asked = self._retry.server_wait(error)
        wait = asked if asked is not None else self._retry.backoff(state.attempt_number)
        if barred and not self._scheduler.has_other(barred):
            # Only a server that may still be running the job is left: wait until it is done.
            wait = max(wait, min(self._barred[route] for route in barred) - time.monotonic())
        return wait

    def _before_sleep(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self._waited = wait
        if self._emit_to is not None:
            error = state.outcome.exception() if state.outcome else None
            text = f"{type(error).__name__}: {error}" if error else None
            self._emit(EventKind.RETRIED, wait=wait, error=text)

    async def _failed_call(
        self, route: Route, phase: Literal["submit", "fetch"], error: ModelsLabError, probe: bool
    ) -> Verdict:
        health = route.health.policy
        verdict = judge(
            error,
            rate_limit_cooldown=health.rate_limit_cooldown,
            busy_cooldown=health.busy_cooldown,
        )
        self._last_failure = (error, verdict)
        self._record(route, phase, error)
        text = f"{type(error).__name__}: {error.message}"
        if self._shared:
            await self._scheduler.report_failure(route, verdict, text, probe=probe)
        else:
            self._scheduler.record_failure(route, verdict, text, probe=probe)
        if phase == "submit":
            self._maybe_started = self._maybe_started or verdict.sent
            if verdict.elsewhere is Elsewhere.ONLY:
                hold = math.inf if verdict.health is Health.FATAL else self._hold(route)
                self._barred = {**self._barred, route: time.monotonic() + hold}
            if verdict.elsewhere is not Elsewhere.ANY:
                self._avoid = {*self._avoid, route}
        return verdict

    def _hold(self, route: Route) -> float:
        """How long a server may still be running a job whose submit answer was lost."""
        _, p95 = route.health.percentiles()
        return p95 if p95 is not None else self._retry.backoff(1)

    # --- submit -------------------------------------------------------------------------------

    async def _attempt(self) -> ImageResult:
        """One submit: a slot, the POST, and the job's end or its queueing (one coroutine,
        not several: each await inside the HTTP exchange resumes through every layer)."""
        lease = None if self._barred else self._scheduler.take_now(self._avoid)
        if lease is None:
            lease = await self._scheduler.acquire(
                priority=self._priority,
                deadline=self._deadline,
                avoid=self._avoid,
                exclude=self._barred_now(),
                timer=self._deadline is None,  # else the job's own deadline ends the wait
            )
        route = lease.route
        self._submits += 1
        if self._maybe_started:
            self._resubmits += 1
            self.possible_duplicate = True
        if self._emit_to is not None:
            if self._last_route is not None and route is not self._last_route:
                self._emit(EventKind.REROUTED, route.name)
            if self._kinds is None or EventKind.SUBMITTED in self._kinds:
                self._emit(EventKind.SUBMITTED, route.name)
        started = time.monotonic()
        route.health.submits += 1
        self._last_route = route
        wire = self._wire
        try:
            try:
                route.in_flight += 1
                try:
                    raw = await wire.send(
                        route,
                        wire.endpoints.img2img,
                        self._body,
                        read_timeout=self._read_timeout(wire.timeouts.submit_read),
                        defaults=route.extra_body,
                    )
                finally:
                    route.in_flight -= 1
                answer = wire.classify(raw, route, "submit")
                if answer.status == "success" and not _has_images(answer) and answer.id is None:
                    raise ResponseFormatError(
                        "success without images or id", status_code=200, server=route.name
                    )
            except ModelsLabError as error:
                return await self._submit_failed(lease, error)
            if answer.status == "success" and _has_images(answer):
                # Done at once, the common case, in line. Its history is not logged: only a
                # failure reports the attempts, and this job can no longer fail.
                if self._shared:
                    await self._scheduler.report_success(route, probe=lease.probe)
                else:
                    self._scheduler.record_success(route, probe=lease.probe)
                result = self.result(route, answer)
            else:
                result = await self._submitted(lease, answer)
            self._scheduler.record_job(route, time.monotonic() - started)
            return result
        finally:  # whatever happens, cancellation included, the slot goes back
            if self._shared:
                await self._scheduler.give_back(lease)
            else:
                self._scheduler.release(lease)

    async def _submit_failed(self, lease: Lease, error: ModelsLabError) -> ImageResult:
        """A submit failed: account it; with webhooks, a lost answer may yet come back."""
        route = lease.route
        logger.debug("submit to %s failed: %r", route.name, error)
        verdict = await self._failed_call(route, "submit", error, lease.probe)
        if verdict.sent and self._callback is not None:
            # The server may have accepted the job: its callback is the one way to know.
            called = await self._callback_within(self._poll_policy.lost_answer_wait)
            if called is not None:
                self._record(route, "submit", None, f"callback: {called.status}")
                return self._from_callback(route, called)
        raise error

    async def _submitted(self, lease: Lease, answer: ApiResponse) -> ImageResult:
        """The submit was answered: done, failed, or queued (then polled)."""
        route = lease.route
        if self._shared:
            await self._scheduler.report_success(route, probe=lease.probe)
        else:
            self._scheduler.record_success(route, probe=lease.probe)
        self._record(route, "submit", None, answer.status)
        if answer.status == "failed":
            raise JobFailedError(
                answer.message or "failed", request_id=answer.id, server=route.name
            )
        if answer.status == "success" and _has_images(answer):
            return self.result(route, answer)
        return await self._queued(route, answer)

    async def _queued(self, route: Route, answer: ApiResponse) -> ImageResult:
        if answer.id is None:  # classify() lets no id-less "processing" through on a submit
            raise ResponseFormatError(
                "processing without an id", status_code=200, server=route.name
            )
        self.request_id, self.route = answer.id, route
        if self._callbacks is not None and self.track_id is not None:
            self._callbacks.set_request_id(self.track_id, answer.id)
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
        webhook = self._callback is not None
        while True:
            delay = self._poll_policy.delay(eta, previous, webhook=webhook)
            previous = delay
            if webhook:
                answer = await self._callback_within(delay)
                if answer is not None:
                    self._record(route, "fetch", None, f"callback: {answer.status}")
                    return self._final(answer, request_id, route)
            else:
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
            except ModelsLabError as error:
                verdict = await self._failed_call(route, "fetch", error, False)
                if not verdict.transient:
                    message = getattr(error, "api_message", error.message)
                    raise JobFailedError(
                        message, request_id=request_id, server=route.name
                    ) from error
                eta = self._retry.server_wait(error) if isinstance(error, RateLimitError) else None
                continue
            if self._shared:
                await self._scheduler.report_success(route, probe=False)
            else:
                self._scheduler.record_success(route, probe=False)
            if answer.status == "success" and _has_images(answer):
                self._record(route, "fetch", None, "success")
                return answer
            if answer.status in ("failed", "error"):
                self._record(route, "fetch", None, answer.status)
            eta = self._final(answer, request_id, route).eta  # raises for a failed job

    def _final(self, answer: ApiResponse, request_id: str, route: Route) -> ApiResponse:
        """A final answer as is; a failed job as its error (anything else: still running)."""
        if answer.status in ("failed", "error"):
            message = self._wire.scrub((answer.message or answer.status)[:500])
            raise JobFailedError(message, request_id=request_id, server=route.name)
        return answer

    async def _callback_within(self, timeout: float) -> ApiResponse | None:
        """The job's webhook callback, if it comes within ``timeout`` seconds."""
        callback = self._callback
        if callback is None:
            return None
        if not callback.done():
            await asyncio.wait((callback,), timeout=timeout)
        return callback.result() if callback.done() else None

    def _from_callback(self, route: Route, answer: ApiResponse) -> ImageResult:
        """The job's end as its callback told it, when its submit answer was lost."""
        request_id = answer.id or ""
        self.request_id, self.route = answer.id, route
        return self.result(route, self._final(answer, request_id, route))

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
        if self._log is None:
            self._log = []
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
            track_id=self.track_id,
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
        handler = self._emit_to
        if handler is None or (self._kinds is not None and kind not in self._kinds):
            return
        deliver(
            handler,
            JobEvent(
                kind=kind,
                server=server if server is not None or self.route is None else self.route.name,
                attempt=self._submits,
                eta=eta,
                wait=wait,
                error=error,
                request_id=self.request_id,
                track_id=self.track_id,
                possible_duplicate=self.possible_duplicate,
                result=result,
            ),
        )


_NONE: frozenset[Route] = frozenset()
_NO_KINDS: frozenset[EventKind] = frozenset()


def _has_images(answer: ApiResponse) -> bool:
    return bool(answer.output or answer.proxy_links)


def _with_meta(answer: ApiResponse, meta: Mapping[str, Any]) -> ApiResponse:
    return evolve(answer, meta=meta)
