"""
Where the pool's shared state lives: slots, cooldowns and breakers of each server.

Within one process the pool keeps that state in memory (the default: nothing to run). Across
processes and machines a :class:`CoordinationBackend` holds it instead (``RedisBackend`` in
``modelslab_async.redis``), so that every process sees the same slots, the same cooldowns and
the same breakers. A server is named by its *slot id* (its name and key fingerprint, never its
key), and a slot is a *lease*: held by one holder id until it is released or its lease expires.

Rules every backend keeps:

- A slot is taken only when the server's live holders are fewer than its capacity; expired
  leases of dead holders are dropped first. Release is by holder id, so a double or late
  release changes nothing.
- A cooldown only ever lengthens (the later deadline wins).
- The breaker opens after ``threshold`` *consecutive* failures (a success while closed resets
  the count), or at once on a fatal failure. While open, nothing is granted; once its time is
  up exactly one holder gets the half-open probe, and only that probe's outcome closes it (or
  opens it again). A failure or a success from a call that was not the probe, while the
  breaker is open or half-open, changes nothing.
- Every time is the backend's own clock (Redis ``TIME``), never a client's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from attrs import frozen

__all__ = [
    "BreakerView",
    "CoordinationBackend",
    "Grant",
    "MemoryBackend",
    "SharedState",
    "SlotSpec",
]

BreakerView = Literal["closed", "open", "half-open"]


@frozen
class MemoryBackend:
    """
    The default backend: the pool's slots, cooldowns and breakers live in this process's
    memory, kept by the pool's own scheduler (wake-one handoff, no round trips). Nothing to
    run; right for one process. For several processes sharing servers, use a
    :class:`CoordinationBackend` such as ``modelslab_async.redis.RedisBackend``.
    """


@frozen
class SlotSpec:
    """A server as a backend knows it: its slot id and how many jobs it runs at once."""

    server: str
    capacity: int


@frozen
class Grant:
    """A slot taken on ``server`` for a holder; ``probe`` when it is the half-open probe."""

    server: str
    probe: bool = False


@frozen
class SharedState:
    """One server's shared state, for routing and dashboards."""

    server: str
    holders: int
    cooldown_left: float
    breaker: BreakerView
    failures: int


class CoordinationBackend(Protocol):
    """The pool's shared state, owned by a store every process sees."""

    async def acquire(
        self,
        candidates: Sequence[SlotSpec],
        *,
        holder: str,
        least_loaded: bool = False,
        weights: Sequence[float] | None = None,
    ) -> Grant | None:
        """
        Take one slot for ``holder`` on the first candidate that can take it (in the given
        order), or, with ``least_loaded``, on the candidate with the lowest
        ``(holders + 1) * weight / capacity`` (weights default to 1). Skips servers cooling
        down or with an open breaker; grants the half-open probe to one holder only.
        Returns None when no candidate can take a job now. One round trip.
        """
        ...

    async def release(self, server: str, holder: str) -> None:
        """Give back ``holder``'s slot on ``server`` (none held: nothing) and wake waiters."""
        ...

    async def renew(self, leases: Sequence[tuple[str, str]]) -> None:
        """Extend the leases ``(server, holder)`` of live jobs by the lease time."""
        ...

    async def cool_down(self, server: str, seconds: float) -> None:
        """Keep ``server`` out for ``seconds`` from now, unless it is already out for longer."""
        ...

    async def record_failure(
        self,
        server: str,
        *,
        threshold: int,
        open_for: float,
        fatal: bool = False,
        probe: bool = False,
    ) -> bool:
        """Count a failed call; returns True when this failure opened the breaker."""
        ...

    async def record_success(self, server: str, *, probe: bool = False) -> None:
        """A call succeeded: reset the count while closed; close the breaker if ``probe``."""
        ...

    async def states(self, servers: Sequence[str]) -> list[SharedState]:
        """The shared state of each server, in the order asked."""
        ...

    async def wait_for_release(self, timeout: float) -> None:
        """Return when a slot may have been freed anywhere, or after ``timeout`` seconds."""
        ...

    async def aclose(self) -> None:
        """Release connections (and the holder's renewals); safe to call twice."""
        ...
