"""
The retry policy: a value that says how often and how long a job's submit is tried again.

*What* may be retried is not decided here but in the one decision table (``_decisions.py``);
this policy adds the limits: how many attempts, how long, how long to wait between them, and
how far to go once a submit may have reached the server. Generation is not idempotent: a
submit whose answer was lost may have started a paid job, so by default such a job is
submitted again at most once (``max_resubmits``), never to the server that may still be
running it, and its result is marked ``possible_duplicate``.
"""

from __future__ import annotations

import random

from attrs import field, frozen, validators

from ._decisions import finite_wait
from ._errors import RateLimitError

__all__ = ["RetryPolicy"]


@frozen(kw_only=True)
class RetryPolicy:
    """
    How a job's submit is retried, with sane defaults.

    Both limits apply, whichever comes first: ``attempts`` tries, and ``timeout`` seconds from
    the first try. The wait grows exponentially from ``wait_initial`` to ``wait_max``, scaled by
    a random factor in ``[1 - jitter, 1]``. A server's ``Retry-After`` (header or body) is
    obeyed up to ``retry_after_max`` seconds, whatever it says (NaN, negative and infinite
    values included); when another server can take the job now, the job moves there at once
    instead of waiting.

    Attributes:
        attempts: Most submit attempts per job, the first included.
        timeout: Most seconds spent retrying one job (the job's own deadline still applies).
        wait_initial: First backoff, in seconds.
        wait_max: Longest backoff, in seconds.
        jitter: Fraction of randomness in each backoff (0 = none, 1 = full).
        retry_after_max: Cap on a server-requested wait, in seconds.
        resubmit_after_send: Whether a job may be submitted again once a submit may have
            reached the server (answer lost, read timeout, 502/504). False: never; no job is
            ever submitted twice.
        max_resubmits: With ``resubmit_after_send``, most submits made after the first one
            that may have reached a server (each may run the job once more).
    """

    attempts: int = field(default=6, validator=validators.ge(1))
    timeout: float = field(default=300.0, validator=validators.gt(0))
    wait_initial: float = field(default=0.5, validator=validators.ge(0))
    wait_max: float = field(default=10.0, validator=validators.ge(0))
    jitter: float = field(default=0.5, validator=[validators.ge(0), validators.le(1)])
    retry_after_max: float = field(default=60.0, validator=validators.ge(0))
    resubmit_after_send: bool = True
    max_resubmits: int = field(default=1, validator=validators.ge(0))

    @classmethod
    def no_wait(cls, attempts: int = 6) -> RetryPolicy:
        """A testing preset: the same decisions, no backoff."""
        return cls(attempts=attempts, wait_initial=0, wait_max=0, jitter=0, retry_after_max=0)

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, never retried."""
        return cls(attempts=1)

    def may_resubmit(self, resubmits: int) -> bool:
        """Whether one more submit is allowed after ``resubmits`` made since one may have run."""
        return self.resubmit_after_send and resubmits < self.max_resubmits

    def backoff(self, attempt_number: int) -> float:
        """Seconds to wait after the given failed attempt (1-based), jitter included."""
        raw = min(self.wait_max, self.wait_initial * 2.0 ** (attempt_number - 1))
        return raw * random.uniform(1 - self.jitter, 1)

    def server_wait(self, error: BaseException) -> float | None:
        """The wait the server asked for, finite and capped, if it asked."""
        if isinstance(error, RateLimitError):
            return finite_wait(error.retry_after, ceiling=self.retry_after_max)
        return None
