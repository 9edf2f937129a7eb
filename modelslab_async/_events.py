"""
Progress events: what happens to a job, as it happens, for progress bars and metrics.

Handlers are user code: whatever one raises is logged (once per handler and kind of event)
and changes nothing else, so a broken handler can never leak a slot or lose an outcome.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from attrs import frozen

from ._models import ImageResult

__all__ = ["EventKind", "JobEvent", "JobEventHandler", "deliver"]

logger = logging.getLogger("modelslab_async")


class EventKind(enum.StrEnum):
    """What happened to a job."""

    SUBMITTED = "submitted"  #: a submit attempt is going out
    QUEUED = "queued"  #: the server accepted the job and answered "processing" (see ``eta``)
    RETRIED = "retried"  #: an attempt failed and another will follow after ``wait`` seconds
    REROUTED = "rerouted"  #: the next attempt goes to another server than the last one
    DONE = "done"  #: the job finished with images
    FAILED = "failed"  #: the job ended with an error (see ``error``)


@frozen(kw_only=True)
class JobEvent:
    """
    One thing that happened to one job.

    Attributes:
        kind: What happened.
        job_id: The job's id in its batch (None for a lone ``img2img`` call).
        index: The job's position in its batch input.
        server: The server (route) involved.
        attempt: The submit attempt number, from 1.
        eta: The server's estimate, in seconds, for ``QUEUED``.
        wait: Seconds until the next attempt, for ``RETRIED``.
        error: ``"ErrorType: message"``, for ``RETRIED`` and ``FAILED``.
        request_id: The job's id on the server, once accepted.
        track_id: The job's ``track_id`` (sent with its submit, echoed by webhooks).
        possible_duplicate: True once an earlier submit of this job may have reached a server
            (so a journal can keep the flag even if the process dies later).
        result: The job's result, for ``DONE``: sent the moment the answer arrives, before
            a batch consumer takes the outcome (a journal writes it from here).
    """

    kind: EventKind
    job_id: str | None = None
    index: int | None = None
    server: str | None = None
    attempt: int = 0
    eta: float | None = None
    wait: float | None = None
    error: str | None = None
    request_id: str | None = None
    track_id: str | None = None
    possible_duplicate: bool = False
    result: ImageResult | None = None


#: A callable that receives events; it must not block (it runs on the event loop).
JobEventHandler = Callable[[JobEvent], None]


_reported: set[tuple[str, EventKind]] = set()


def deliver(handler: JobEventHandler, event: JobEvent) -> None:
    """Call a user's handler; what it raises is logged once per handler and kind, and dropped."""
    try:
        handler(event)
    except Exception:
        name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        if (name, event.kind) not in _reported:
            _reported.add((name, event.kind))
            logger.exception(
                "on_event handler %s raised on a %r event (logged once; jobs go on)",
                name,
                str(event.kind),
            )
