"""
The pool's slots, cooldowns and breakers when a :class:`CoordinationBackend` holds them
(several processes sharing the servers). Internal.

Within the process, jobs still wait in one line, highest priority first and FIFO within a
priority: only the job at the head of the line asks the backend for a slot, and when there is
none it waits for a release anywhere (the backend's wake-up, with a bounded poll) and asks
again; the next job in line takes its turn when the head leaves. Across processes the backend
decides (see its own guarantees). Health is recorded twice: in the local figures (latency,
last error, for snapshots) and in the backend, whose cooldowns and breakers are the ones that
count. Every process sharing a namespace must use the same servers and routing mode.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Sequence

from ._admission import Waiter, WaitQueue
from ._backend import CoordinationBackend, SharedState, SlotSpec
from ._decisions import Health, Verdict
from ._errors import NoServerAvailableError
from ._server import Lease, Route

__all__ = ["SharedSlots", "slot_id"]

logger = logging.getLogger("modelslab_async")

#: Longest a job waits for a wake-up before it asks the backend again.
_POLL = 1.0


def slot_id(route: Route) -> str:
    """A route as every process names it in the backend: its name and key fingerprint."""
    return f"{route.name}:{route.fingerprint}"


class SharedSlots:
    """Slots held in a backend, taken in line. Internal."""

    def __init__(
        self,
        backend: CoordinationBackend,
        routes: Sequence[Route],
        *,
        routing: str,
        clock: Callable[[], float],
        max_overtakes: int,
    ) -> None:
        self.backend = backend
        self._routes = tuple(routes)
        self._routing = routing
        self._clock = clock
        self._queue = WaitQueue(max_overtakes)
        self._ids = {route: slot_id(route) for route in self._routes}
        self._by_id = {ident: route for route, ident in self._ids.items()}
        self._next = 0  # round-robin's turn
        self.active = 0

    @property
    def waiting(self) -> int:
        """Jobs of this process waiting in line."""
        return len(self._queue)

    async def acquire(
        self,
        *,
        priority: int,
        deadline: float | None,
        avoid: Collection[Route],
        exclude: Collection[Route],
        pinned: Route | None,
        timer: bool,
    ) -> Lease:
        """Wait in line for a slot in the backend; see ``Scheduler.acquire``."""
        loop = asyncio.get_running_loop()
        waiter = Waiter(
            loop.create_future(), priority=priority, pinned=pinned, avoid=avoid, exclude=exclude
        )
        holder = uuid.uuid4().hex
        started = self._clock()
        in_line = pinned is None  # a fetch waits for its own server, not in the line
        if in_line:
            self._queue.push(waiter)
        try:
            while True:
                if in_line and self._queue.next_up() is not waiter:
                    await self._turn(waiter, deadline if timer else None)
                    continue
                lease = await self._try(waiter, holder)
                if lease is not None:
                    if in_line:
                        self._queue.served(waiter)
                    return lease
                now = self._clock()
                if timer and deadline is not None and now >= deadline:
                    raise NoServerAvailableError(
                        "no server could take the job in time (all full, cooling or broken, "
                        "in every process sharing them)",
                        waited=now - started,
                    )
                wait = _POLL if deadline is None or not timer else min(_POLL, deadline - now)
                await self.backend.wait_for_release(max(wait, 0.0))
        finally:
            if in_line:
                self._queue.remove(waiter)
                self._wake_next()

    async def _turn(self, waiter: Waiter, deadline: float | None) -> None:
        """Wait until ``waiter`` may be first in line (or a poll passes, to look again)."""
        if waiter.future.done():
            waiter.future = asyncio.get_running_loop().create_future()
        timeout = _POLL if deadline is None else max(min(_POLL, deadline - self._clock()), 0)
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except TimeoutError:
            pass

    def _wake_next(self) -> None:
        head = self._queue.next_up()
        if head is not None and not head.future.done():
            head.future.set_result(None)

    async def _try(self, waiter: Waiter, holder: str) -> Lease | None:
        candidates, weights = self._candidates(waiter)
        if not candidates:
            return None
        least = self._routing == "least-busy"
        grant = await self.backend.acquire(
            candidates, holder=holder, least_loaded=least, weights=weights if least else None
        )
        if grant is None:
            return None
        route = self._by_id[grant.server]
        route.active += 1
        self.active += 1
        if self._routing == "round-robin":
            self._next = (route.index + 1) % len(self._routes)
        lease = Lease(route, grant.probe)
        lease.holder = holder
        return lease

    def _candidates(self, waiter: Waiter) -> tuple[list[SlotSpec], list[float]]:
        """The routes this job may use, best first, with their least-busy weights."""
        if waiter.pinned is not None:
            routes: list[Route] = [waiter.pinned]
        else:
            count = len(self._routes)
            start = self._next if self._routing == "round-robin" else 0
            ordered = [self._routes[(start + step) % count] for step in range(count)]
            allowed = [route for route in ordered if route not in waiter.exclude]
            routes = [r for r in allowed if r not in waiter.avoid] + [
                r for r in allowed if r in waiter.avoid
            ]
        known = [r.health.service_time for r in routes if r.health.service_time is not None]
        typical = sum(known) / len(known) if known else 1.0
        return (
            [SlotSpec(self._ids[route], route.capacity) for route in routes],
            [route.health.service_time or typical for route in routes],
        )

    async def release(self, lease: Lease) -> None:
        """Give the slot back to the backend (a second release does nothing)."""
        if lease.released:
            return
        lease.released = True
        lease.route.active -= 1
        self.active -= 1
        await self.backend.release(self._ids[lease.route], lease.holder)

    async def record_failure(
        self, route: Route, verdict: Verdict, text: str, *, probe: bool
    ) -> None:
        """Count a failed call locally and in the backend, as its verdict says."""
        health = route.health
        health.record(self._clock(), verdict, text, probe=probe)
        ident = self._ids[route]
        if verdict.health is Health.COOLDOWN:
            cooldown = (
                health.policy.rate_limit_cooldown if verdict.cooldown is None else verdict.cooldown
            )
            await self.backend.cool_down(ident, min(cooldown, health.policy.max_cooldown))
        elif verdict.health is not Health.NONE:
            opened = await self.backend.record_failure(
                ident,
                threshold=health.policy.failure_threshold,
                open_for=health.policy.reset_timeout,
                fatal=verdict.health is Health.FATAL,
                probe=probe,
            )
            if opened:
                logger.warning(
                    "server %s taken out of rotation (in every process) for %gs after %s",
                    route.name,
                    health.policy.reset_timeout,
                    text,
                )

    async def record_success(self, route: Route, *, probe: bool) -> None:
        """A call got a usable answer: the backend resets its count or closes on the probe."""
        route.health.breaker.record_success(probe=probe)
        await self.backend.record_success(self._ids[route], probe=probe)

    async def states(self) -> list[SharedState]:
        """Each route's shared state, default route first."""
        return await self.backend.states([self._ids[route] for route in self._routes])
