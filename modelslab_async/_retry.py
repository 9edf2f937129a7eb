"""
The retry policy, a value, and the one place that decides what is retried.

Rules: connection failures before the request left are always safe to retry; throttling (429),
"busy" answers, 5xx and malformed gateway answers are retried with backoff (or at once on
another server); a request that was sent and whose answer was lost may have started the job,
so it is retried only when the policy allows it, and the result is marked as a possible
duplicate. Validation, authentication and job failures are never retried in place, and
``asyncio.CancelledError`` never is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import field, frozen, validators
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from ._errors import (
    AuthenticationError,
    ConnectError,
    ModelsLabError,
    RateLimitError,
    ReadError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
)

__all__ = ["RetryPolicy", "may_have_started"]

T = TypeVar("T")

# Gateways answer these while the server behind them may still be working on the request.
_AMBIGUOUS_STATUSES = frozenset({502, 504})


def may_have_started(error: BaseException) -> bool:
    """True when the failed attempt may have started a job on the server anyway."""
    if isinstance(error, ReadError | ResponseFormatError):
        return True
    return isinstance(error, ServerError) and error.status_code in _AMBIGUOUS_STATUSES


@frozen(kw_only=True)
class RetryPolicy:
    """
    How a job's submit is retried (with tenacity), with sane defaults.

    Both limits apply, whichever comes first: ``attempts`` tries, and ``timeout`` seconds from
    the first try. The wait grows exponentially from ``wait_initial`` to ``wait_max``, scaled by
    a random factor in ``[1 - jitter, 1]``. A server's ``Retry-After`` (header or body) is
    obeyed up to ``retry_after_max`` seconds; when another server can take the job now, the
    job moves there at once instead of waiting.

    Attributes:
        attempts: Most submit attempts per job, the first included.
        timeout: Most seconds spent retrying one job (the job's own deadline still applies).
        wait_initial: First backoff, in seconds.
        wait_max: Longest backoff, in seconds.
        jitter: Fraction of randomness in each backoff (0 = none, 1 = full).
        retry_after_max: Cap on a server-requested wait, in seconds.
        resubmit_after_send: Whether to submit again after an attempt that was sent and whose
            answer was lost (the job may run twice; the result says so).
    """

    attempts: int = field(default=6, validator=validators.ge(1))
    timeout: float = field(default=300.0, validator=validators.gt(0))
    wait_initial: float = field(default=0.5, validator=validators.ge(0))
    wait_max: float = field(default=10.0, validator=validators.ge(0))
    jitter: float = field(default=0.5, validator=[validators.ge(0), validators.le(1)])
    retry_after_max: float = field(default=60.0, validator=validators.ge(0))
    resubmit_after_send: bool = True

    @classmethod
    def no_wait(cls, attempts: int = 6) -> RetryPolicy:
        """A testing preset: the same decisions, no backoff."""
        return cls(attempts=attempts, wait_initial=0, wait_max=0, jitter=0, retry_after_max=0)

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, never retried."""
        return cls(attempts=1)

    def is_retryable(self, error: BaseException) -> bool:
        """Whether a failed submit may be tried again (on this or another server)."""
        if not isinstance(error, ModelsLabError):
            return False  # CancelledError and programming errors pass straight through
        if isinstance(error, ConnectError | RateLimitError | ServerBusyError | ServerError):
            return True
        if isinstance(error, ReadError | ResponseFormatError):
            return self.resubmit_after_send
        return False

    def backoff(self, attempt_number: int) -> float:
        """Seconds to wait after the given failed attempt (1-based), before jitter caps."""
        raw = min(self.wait_max, self.wait_initial * 2.0 ** (attempt_number - 1))
        return raw * random.uniform(1 - self.jitter, 1)

    def server_wait(self, error: BaseException) -> float | None:
        """The wait the server asked for, capped, if it asked."""
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.retry_after_max)
        return None

    async def resume(
        self,
        first: ModelsLabError,
        attempt: Callable[[], Awaitable[T]],
        *,
        started: float,
        can_reroute: Callable[[], bool],
        accepted: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], Any] | None = None,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
    ) -> T:
        """
        Carry on after a first attempt that failed with ``first``.

        The first try is made by the caller, directly, so the common case (it works) costs
        nothing more. Tenacity takes over from its failure as attempt 1, with the same
        decisions, waits and hooks as :meth:`retrying`, and the time budget counted from
        ``started`` (a ``time.monotonic()`` value).
        """
        retrying = self.retrying(
            can_reroute=can_reroute,
            accepted=accepted,
            sleep=sleep,
            before_sleep=before_sleep,
            budget=max(self.timeout - (time.monotonic() - started), 0.0),
        )
        pending: ModelsLabError | None = first

        async def again() -> T:
            nonlocal pending
            if pending is not None:
                error, pending = pending, None
                raise error  # replayed to tenacity as attempt 1
            return await attempt()

        result: T = await retrying(again)
        return result

    def retrying(
        self,
        *,
        can_reroute: Callable[[], bool],
        accepted: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], Any] | None = None,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
        budget: float | None = None,
    ) -> AsyncRetrying:
        """
        Build the tenacity controller for one job.

        Args:
            can_reroute: Tells whether another server can take the job now; then the wait
                is skipped. Authentication errors are retried only then.
            accepted: Tells whether the server has accepted the job; from then on nothing is
                submitted again (the job is collected by polling instead).
            sleep: Replaces ``asyncio.sleep`` (tests use a controlled clock).
            before_sleep: Called before each wait (progress events, logging).
            budget: Seconds left in the time budget (default: ``timeout``).
        """

        def should_retry(error: BaseException) -> bool:
            if accepted():
                return False
            if isinstance(error, AuthenticationError):
                return can_reroute()
            return self.is_retryable(error)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if error is None or can_reroute():
                return 0.0
            asked = self.server_wait(error)
            return asked if asked is not None else self.backoff(state.attempt_number)

        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        if before_sleep is not None:
            kwargs["before_sleep"] = before_sleep
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts)
            | stop_after_delay(self.timeout if budget is None else budget),
            wait=wait,
            retry=retry_if_exception(should_retry),
            reraise=True,
            **kwargs,
        )
