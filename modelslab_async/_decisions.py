"""
The one table that says what an error means.

Every failed call (a submit, a fetch, ``fetch_once``, a probe) is judged here, once: may it be
tried again, must the next try go to another server, may the job have started on the server
anyway, does it count against the server's health, and how long must the server rest. The
retry policy, the job runner, the pool's health and the client all read the same verdict, so
they cannot disagree.

=========================  =====  ==========  ======  ===========  ===========================
error                      retry  elsewhere   sent    health       notes
=========================  =====  ==========  ======  ===========  ===========================
ConnectError               yes    prefer      no      failure      never left: always safe
ConnectError (local)       yes    no          no      none         our own fd shortage
ReadError                  yes    only        yes     failure      the job may be running
ResponseFormatError        yes    only        yes     failure      a gateway page, truncation
ServerError 502/504        yes    only        yes     failure      the gateway may have passed it
ServerError (other 5xx)    yes    prefer      no      failure
ServerBusyError            yes    prefer      no      cooldown     also 200 "Server busy"
RateLimitError             yes    prefer      no      cooldown     Retry-After, capped
AuthenticationError        yes    only        no      fatal        this key is refused
APIError (other)           no     -           no      none         the request's own fault
JobFailedError, others     no     -           no      none
=========================  =====  ==========  ======  ===========  ===========================

*sent* applies to submits: when it is true, resubmitting may run the job twice, so the retry
policy allows it only as far as ``resubmit_after_send`` and ``max_resubmits`` say, and never
on the server that may still be running it. While polling, a job is already accepted: every
transient error is simply asked again, and a non-transient API error ends the job.
"""

from __future__ import annotations

import enum
import math

from attrs import frozen

from ._errors import (
    AuthenticationError,
    ConnectError,
    RateLimitError,
    ReadError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
)

__all__ = ["Elsewhere", "Health", "Verdict", "finite_wait", "judge"]

# Gateways answer these while the server behind them may still be working on the request.
_AMBIGUOUS_STATUSES = frozenset({502, 504})

#: Longest wait any server-sent number may ask for before policies cap it further (a day).
_WAIT_CEILING = 86_400.0


class Health(enum.Enum):
    """What a failed call does to its server's health."""

    NONE = "none"  #: nothing: the failure is the request's or ours
    FAILURE = "failure"  #: one more consecutive failure for the breaker
    FATAL = "fatal"  #: open the breaker at once (the key is refused)
    COOLDOWN = "cooldown"  #: rest for ``Verdict.cooldown`` seconds; the breaker is not involved


class Elsewhere(enum.Enum):
    """Where the next try may go."""

    ANY = "any"  #: the same server or another
    PREFER = "prefer"  #: another server when one is free, else the same one
    ONLY = "only"  #: never the same server again for this job


@frozen
class Verdict:
    """What one error means; see the module's table."""

    retry: bool
    elsewhere: Elsewhere
    sent: bool
    health: Health
    cooldown: float | None = None
    transient: bool = True  #: while polling: ask again (True) or end the job (False)


_NO = Verdict(retry=False, elsewhere=Elsewhere.ANY, sent=False, health=Health.NONE, transient=False)
_LOCAL = Verdict(retry=True, elsewhere=Elsewhere.ANY, sent=False, health=Health.NONE)
_REFUSED = Verdict(retry=True, elsewhere=Elsewhere.PREFER, sent=False, health=Health.FAILURE)
_LOST = Verdict(retry=True, elsewhere=Elsewhere.ONLY, sent=True, health=Health.FAILURE)
_AUTH = Verdict(
    retry=True, elsewhere=Elsewhere.ONLY, sent=False, health=Health.FATAL, transient=False
)


def finite_wait(value: object, *, ceiling: float = _WAIT_CEILING) -> float | None:
    """
    A server-sent wait as a finite, non-negative number of seconds, capped; None when the
    value is not a number at all (NaN, garbage). Infinity and huge values become the ceiling.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if math.isnan(number):
        return None
    return min(max(number, 0.0), ceiling)


def judge(
    error: BaseException, *, rate_limit_cooldown: float = 5.0, busy_cooldown: float = 1.0
) -> Verdict:
    """The verdict for one failed call. Anything that is not ours is never retried."""
    if isinstance(error, ConnectError):
        return _LOCAL if error.local else _REFUSED
    if isinstance(error, ReadError | ResponseFormatError):
        return _LOST
    if isinstance(error, RateLimitError):
        wait = finite_wait(error.retry_after)
        return Verdict(
            retry=True,
            elsewhere=Elsewhere.PREFER,
            sent=False,
            health=Health.COOLDOWN,
            cooldown=rate_limit_cooldown if wait is None else wait,
        )
    if isinstance(error, ServerBusyError):
        return Verdict(
            retry=True,
            elsewhere=Elsewhere.PREFER,
            sent=False,
            health=Health.COOLDOWN,
            cooldown=busy_cooldown,
        )
    if isinstance(error, ServerError):
        return _LOST if error.status_code in _AMBIGUOUS_STATUSES else _REFUSED
    if isinstance(error, AuthenticationError):
        return _AUTH
    return _NO  # any other APIError is the request's own fault; anything else is not ours
