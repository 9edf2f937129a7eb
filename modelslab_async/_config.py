"""Small value classes that configure a client: timeouts, endpoint paths, polling."""

from __future__ import annotations

import enum
import math
import random
from typing import Any
from urllib.parse import quote

from attrs import field, frozen, validators

__all__ = ["DEFAULT", "DEFAULT_BASE_URL", "Default", "Endpoints", "PollPolicy", "Timeouts"]


class Default(enum.Enum):
    """Type of :data:`DEFAULT`: "use the configured value", as opposed to None ("none")."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT

#: The documented enterprise base; every endpoint path is relative to it.
DEFAULT_BASE_URL = "https://modelslab.com/api/v1/enterprise"

_positive = validators.gt(0.0)


def _optional_positive(_: object, attribute: Any, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


@frozen(kw_only=True)
class Timeouts:
    """
    How long each phase may take, in seconds.

    Attributes:
        connect: Opening a connection.
        submit_read: Waiting for the whole answer to a submit (however slowly it trickles in).
            Long: an enterprise server holds the request open while it works before it
            answers ``processing``.
        fetch_read: Waiting for the whole answer to a fetch or ``system_details``.
        download_read: Waiting for an image download.
        job: The whole job, from the first submit to the result, across retries and polling.
            ``None`` means no overall deadline (not recommended).
    """

    connect: float = field(default=10.0, validator=_positive)
    submit_read: float = field(default=180.0, validator=_positive)
    fetch_read: float = field(default=30.0, validator=_positive)
    download_read: float = field(default=60.0, validator=_positive)
    job: float | None = field(default=900.0, validator=_optional_positive)


@frozen(kw_only=True)
class Endpoints:
    """
    Endpoint paths, relative to the base URL.

    The defaults are the documented ones. ``fetch`` either contains ``{request_id}`` (the id
    goes in the path and the body holds only the key) or not (the id goes in the body as
    ``request_id``). :meth:`sdk` gives the paths the official SDKs call instead.
    """

    img2img: str = "img2img"
    fetch: str = "fetch"
    system_details: str = "system_details"

    @classmethod
    def documented(cls) -> Endpoints:
        """The paths the enterprise docs give (the default)."""
        return cls()

    @classmethod
    def sdk(cls) -> Endpoints:
        """The paths the official SDKs call (``images/img2img``, ``images/fetch/{id}``)."""
        return cls(img2img="images/img2img", fetch="images/fetch/{request_id}")

    def fetch_call(self, request_id: str) -> tuple[str, dict[str, str]]:
        """
        Return the fetch path for a job and the body fields besides the key. An id put into
        the path is URL-encoded (a server-sent ``../x`` stays one path segment).
        """
        if "{request_id}" in self.fetch:
            return self.fetch.format(request_id=quote(request_id, safe="")), {}
        return self.fetch, {"request_id": request_id}


@frozen(kw_only=True)
class PollPolicy:
    """
    When to ask again about a queued job.

    The first look is timed by the server's ``eta`` (a little after it, with jitter so that a
    batch does not poll in lockstep); without an ``eta`` the interval starts at
    ``initial_interval`` and grows by ``backoff`` up to ``max_interval``.

    Attributes:
        initial_interval: Wait before the first look when the server gave no eta.
        min_interval: Never ask sooner than this.
        max_interval: Never wait longer than this between looks.
        backoff: Growth of the interval when the server gives no eta.
        eta_margin: Fraction added to the eta so the first look lands just after the job ends.
        jitter: Random fraction added on top, spreading the looks of a batch.
        webhook_grace: While a webhook callback is expected (``Client(webhooks=...)``), the
            first look waits this many seconds more, so the callback usually comes first.
        webhook_slowdown: While a callback is expected, later looks are this many times
            further apart (never stopped: a lost callback costs latency, not the job).
        lost_answer_wait: With webhooks, how long a job whose submit answer was lost waits
            for its callback (the one way to learn that the server accepted it) before the
            retry policy considers submitting it again.
    """

    initial_interval: float = field(default=1.0, validator=_positive)
    min_interval: float = field(default=0.05, validator=_positive)
    max_interval: float = field(default=10.0, validator=_positive)
    backoff: float = field(default=1.5, validator=validators.ge(1.0))
    eta_margin: float = field(default=0.02, validator=validators.ge(0.0))
    jitter: float = field(default=0.03, validator=validators.ge(0.0))
    webhook_grace: float = field(default=2.0, validator=validators.ge(0.0))
    webhook_slowdown: float = field(default=3.0, validator=validators.ge(1.0))
    lost_answer_wait: float = field(default=30.0, validator=validators.ge(0.0))

    def delay(self, eta: float | None, previous: float | None, *, webhook: bool = False) -> float:
        """
        Seconds to wait before the next look, given the server's eta and the last wait (and
        whether a webhook callback is expected).
        """
        if eta is not None and math.isfinite(eta) and eta > 0:
            base = eta * (1 + self.eta_margin)
        elif previous is None:
            base = self.initial_interval
        else:
            base = previous * self.backoff
        base *= 1 + random.uniform(0, self.jitter)
        if webhook:
            slow = base + self.webhook_grace if previous is None else base * self.webhook_slowdown
            return min(self.max_interval * self.webhook_slowdown, max(self.min_interval, slow))
        return min(self.max_interval, max(self.min_interval, base))
