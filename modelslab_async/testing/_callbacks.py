"""The fake's webhook callbacks: best effort, maybe dropped, maybe twice, as ModelsLab sends them.

When a submitted job carries a ``webhook`` URL, the final answer (the success body plus
``track_id``, or ``{"status": "failed", "id", "message", "track_id"}``) is POSTed to it once the
job ends, ``delay`` seconds later. A seeded draw decides per job whether the callback is dropped
and whether it is sent twice. Only loopback URLs are called; any other is refused and recorded.
Each attempt is recorded (`WebhookAttempt`); failures are recorded, never raised. The callbacks
are tasks in a tracked set, cancelled when the fake stops, and share one client session.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import attrs

from modelslab_async._webhooks import is_loopback_host

from ._jobs import Job

__all__ = ["CallbackSender", "WebhookAttempt"]

Outcome = Literal["sent", "error", "dropped", "refused", "cancelled"]

# The docs ask receivers to answer within 30 s; the fake gives up a little sooner.
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_ERROR_CHARS = 120


@attrs.frozen
class WebhookAttempt:
    """One webhook callback of the fake, sent or not.

    Attributes:
        at: Loop time of the attempt.
        request_id: The job's id.
        track_id: The job's ``track_id``, if it had one.
        target: ``host:port`` of the webhook URL (its path, which may hold a token, is not kept).
        job_status: ``"success"`` or ``"failed"``: the payload sent (or not).
        outcome: ``"sent"`` (an answer came back), ``"error"`` (no answer: refused connection,
            timeout...), ``"dropped"`` (the drop draw), ``"refused"`` (not a loopback http(s)
            URL) or ``"cancelled"`` (the fake stopped first).
        copy: 1, or 2 for the duplicate of a callback sent twice.
        http_status: The receiver's HTTP status, when it answered.
        error: What went wrong, cut short.

    .. versionadded:: 0.1.0
    """

    at: float
    request_id: str
    track_id: str | None
    target: str
    job_status: str
    outcome: Outcome
    copy: int = 1
    http_status: int | None = None
    error: str | None = None


@attrs.frozen
class _Callback:
    """One job's callback, as scheduled."""

    job: Job
    url: str = attrs.field(repr=False)  # its path may hold a token
    track_id: str | None
    target: str
    success: Mapping[str, Any] = attrs.field(repr=False)


def _check_rate(name: str, value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _target(url: str) -> tuple[str, bool]:
    """``host:port`` of a URL and whether the fake may call it (loopback http(s) only)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?", False
    host = parts.hostname or "?"
    shown = f"[{host}]" if ":" in host else host
    target = f"{shown}:{port}" if port is not None else shown
    return target, parts.scheme in ("http", "https") and is_loopback_host(host)


class CallbackSender:
    """Sends the fake's webhook callbacks and records every attempt."""

    def __init__(
        self,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.0,
        seed: int | None = None,
        max_records: int | None = 100_000,
    ) -> None:
        self.drop = _check_rate("webhook_drop", drop)
        self.duplicate = _check_rate("webhook_duplicate", duplicate)
        if not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"webhook_delay must be >= 0 seconds, got {delay!r}")
        self.delay = float(delay)
        # Its own generator: callbacks never shift the engine's draws.
        self._rng = random.Random(None if seed is None else f"webhooks-{seed}")
        self._records: deque[WebhookAttempt] = deque(maxlen=max_records)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()

    def __len__(self) -> int:
        """Callbacks not finished yet."""
        return len(self._tasks)

    def records(self) -> list[WebhookAttempt]:
        """Every attempt, oldest first."""
        return list(self._records)

    def clear(self) -> None:
        """Forget the recorded attempts."""
        self._records.clear()

    def schedule(self, job: Job, url: str, track_id: Any, success: Mapping[str, Any]) -> None:
        """Call ``url`` back when ``job`` ends, with ``success`` or the failure as payload."""
        dropped = self._rng.random() < self.drop
        copies = 2 if self._rng.random() < self.duplicate else 1
        target, allowed = _target(url)
        call = _Callback(job, url, None if track_id is None else str(track_id), target, success)
        if not allowed:
            self._record(call, "refused", error="only loopback URLs are called")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(call, 0 if dropped else copies))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, call: _Callback, outcome: Outcome, **more: Any) -> None:
        self._records.append(
            WebhookAttempt(
                at=self.clock(),
                request_id=str(call.job.id),
                track_id=call.track_id,
                target=call.target,
                job_status="failed" if call.job.failure is not None else "success",
                outcome=outcome,
                **more,
            )
        )

    async def _deliver(self, call: _Callback, copies: int) -> None:
        job = call.job
        try:
            await asyncio.sleep(max(0.0, job.finish - self.clock()) + self.delay)
        except asyncio.CancelledError:
            self._record(call, "cancelled")
            raise
        if not copies:
            self._record(call, "dropped")
            return
        if job.failure is not None:
            payload = {"status": "failed", "id": job.id, "message": job.failure}
        else:
            payload = dict(call.success)
        payload["track_id"] = call.track_id
        for copy in range(1, copies + 1):
            await self._post(call, payload, copy)

    async def _post(self, call: _Callback, payload: dict[str, Any], copy: int) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        try:
            async with self._session.post(call.url, json=payload, allow_redirects=False) as answer:
                await answer.content.read(4096)
                status = answer.status
        except asyncio.CancelledError:
            self._record(call, "cancelled", copy=copy)
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            text = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
            self._record(call, "error", copy=copy, error=text)
        else:
            self._record(call, "sent", copy=copy, http_status=status)

    async def wait(self) -> None:
        """Wait until every scheduled callback was sent, dropped or failed."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def stop(self) -> None:
        """Cancel the callbacks not sent yet and close the session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
