"""
Driving a job's retries with tenacity. Internal: the job runner says what may be retried and
how long to wait (from the decision table and the :class:`RetryPolicy`); tenacity counts the
attempts, keeps the time budget and sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from ._errors import ModelsLabError
from ._retry import RetryPolicy

__all__ = ["RetryCallState", "retry_after_failure"]

T = TypeVar("T")


async def retry_after_failure(
    first: ModelsLabError,
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    started: float,
    should_retry: Callable[[BaseException], bool],
    wait: Callable[[RetryCallState], float],
    sleep: Callable[[float], Any],
    before_sleep: Callable[[RetryCallState], Any],
) -> T:
    """
    Carry on after a first attempt that failed with ``first``.

    The first try is made by the caller, directly, so the common case (it works) costs
    nothing more. Tenacity takes over from its failure as attempt 1, with the time budget
    counted from ``started`` (a ``time.monotonic()`` value).
    """
    budget = max(policy.timeout - (time.monotonic() - started), 0.0)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(budget),
        wait=wait,
        retry=retry_if_exception(should_retry),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
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
