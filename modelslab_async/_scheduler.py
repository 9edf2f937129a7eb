"""
Who gets which slot, and when: the pool's scheduler. Internal.

Slots are handed over, not raced for: a released slot goes straight to the waiter that is
next in line *and can use it* (wake-one), in priority order, first come first served within a
priority (see ``_admission.py``). Routes that can take a job sit in a heap ordered by the
routing mode, so choosing one costs O(log n) whatever the number of servers; routes that are
cooling down or broken rest in a second heap ordered by the time they recover, and one timer
brings them back. Stale heap entries are skipped by version and compacted now and then.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Literal

from ._admission import Waiter, WaitQueue
from ._backend import CoordinationBackend
from ._decisions import Verdict
from ._errors import NoServerAvailableError
from ._health import BreakerState
from ._server import Lease, Route
from ._shared import SharedSlots

__all__ = ["Scheduler"]

logger = logging.getLogger("modelslab_async")

SchedulingMode = Literal["first-server", "least-busy", "round-robin"]

_Ready = tuple[float, float, int, int, Route]  # (key, key, index, version, route)
_Resting = tuple[float, int, int, Route]  # (recovers at, index, version, route)


class Scheduler:
    """Slots, waiters and route choice for one pool. Internal."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        routing: SchedulingMode,
        limit: int,
        clock: Callable[[], float],
        max_overtakes: int,
        backend: CoordinationBackend | None = None,
    ) -> None:
        self.routes = tuple(routes)
        # With a backend, the slots, cooldowns and breakers that count are shared there.
        self.shared = (
            None
            if backend is None
            else SharedSlots(
                backend, self.routes, routing=routing, clock=clock, max_overtakes=max_overtakes
            )
        )
        self._routing = routing
        self._limit = limit
        self._clock = clock
        self.active = 0
        self._queue = WaitQueue(max_overtakes)
        self._max_overtakes = max_overtakes
        self._pinned: dict[Route, WaitQueue] = {}  # fetches that must use one route
        self._excluded: list[Waiter] = []  # jobs barred from some routes (a few at most)
        self._ready: list[_Ready] = []
        self._ready_cap = 4 * len(self.routes) + 16  # stale entries beyond: compact the heap
        self._resting: list[_Resting] = []
        self._healthy = 0  # routes ready or full: a release will come
        self._probing = 0  # routes waiting for their probe's outcome
        self._tick = 0.0
        self._service_sum = 0.0  # of the known service times, for the typical one
        self._service_count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._names: dict[str, Route] = {}
        for route in self.routes:
            self._names.setdefault(route.name, route)
            self._names.setdefault(route.fingerprint, route)
            route.place = "full"  # counted as leaving "full" by the first refresh
            self._healthy += 1
        now = clock()
        for route in self.routes:
            self._refresh(route, now)

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        if self.shared is not None:
            return self.shared.waiting
        return (
            len(self._queue)
            + sum(len(q) for q in self._pinned.values())
            + sum(not w.gone for w in self._excluded)
        )

    def lookup(self, name: str) -> Route | None:
        """The route with this name or key fingerprint."""
        return self._names.get(name)

    # --- taking and giving back ---------------------------------------------------------------

    async def acquire(
        self,
        *,
        priority: int = 0,
        deadline: float | None = None,
        avoid: Collection[Route] = (),
        exclude: Collection[Route] = (),
        pinned: Route | None = None,
        timer: bool = True,
    ) -> Lease:
        """
        Wait for a slot, in line, and return it.

        Args:
            priority: Higher goes first.
            deadline: Clock time after which to give up.
            avoid: Routes to use only when no other can take the job.
            exclude: Routes never to use for this job.
            pinned: Take a slot on this route only (a job's fetches follow its submit key),
                whatever its health.
            timer: Give up at the deadline with :class:`NoServerAvailableError`. A job runner
                whose own deadline already bounds the wait passes False: one timer less per
                waiting job.

        Raises:
            NoServerAvailableError: No route can take the job before the deadline.
        """
        if self.shared is not None:
            return await self.shared.acquire(
                priority=priority,
                deadline=deadline,
                avoid=avoid,
                exclude=exclude,
                pinned=pinned,
                timer=timer,
            )
        if pinned is None and not exclude:
            lease = self.take_now(avoid)
            if lease is not None:
                return lease
        now = self._clock()
        if (
            pinned is not None
            and self.active < self._limit
            and pinned.active < pinned.capacity
            and not self._pinned.get(pinned)
        ):
            return self._take(pinned, now, pinned=True)
        if pinned is None:
            self._check_hope(deadline, now)
        loop = asyncio.get_running_loop()
        waiter = Waiter(
            loop.create_future(), priority=priority, pinned=pinned, avoid=avoid, exclude=exclude
        )
        if pinned is not None:
            queue = self._pinned.get(pinned)
            if queue is None:
                queue = self._pinned[pinned] = WaitQueue(self._max_overtakes)
            queue.push(waiter)
        elif exclude:
            self._excluded.append(waiter)
        else:
            self._queue.push(waiter)
        self._dispatch()
        return await self._wait(waiter, deadline if timer else None, loop)

    def take_now(self, avoid: Collection[Route]) -> Lease | None:
        """
        :meth:`acquire`'s common case without a coroutine: a slot at once when one is free
        and nobody waits, on a pool without a backend; else None (then call acquire).
        """
        if self.shared is not None or self.active >= self._limit or self._queue.count:
            return None
        now = self._clock()
        route = self._pick(avoid, (), now)
        return None if route is None else self._take(route, now, pinned=False)

    async def _wait(
        self, waiter: Waiter, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> Lease:
        timer = None
        if deadline is not None and not waiter.future.done():
            timer = loop.call_later(
                max(deadline - self._clock(), 0.0), self._expire, waiter, self._clock()
            )
        try:
            lease: Lease = await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # handed a slot as we were cancelled: pass it on
            else:
                self._forget(waiter)
                self._dispatch()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return lease

    def _expire(self, waiter: Waiter, started: float) -> None:
        if waiter.future.done():
            return
        self._forget(waiter)
        now = self._clock()
        waiter.future.set_exception(
            NoServerAvailableError(self._why_unavailable(now), waited=now - started)
        )

    def _forget(self, waiter: Waiter, *, served: bool = False) -> None:
        """Take a waiter out of its line (``served``: it got its slot, for the guard)."""
        if waiter.pinned is not None:
            queue = self._pinned.get(waiter.pinned)
            if queue is not None:
                if served:
                    queue.served(waiter)
                else:
                    queue.remove(waiter)
                if not queue:
                    del self._pinned[waiter.pinned]
        elif waiter.exclude:
            waiter.gone = True
            self._excluded = [w for w in self._excluded if not w.gone]
        elif served:
            self._queue.served(waiter)
        else:
            self._queue.remove(waiter)

    def release(self, lease: Lease) -> None:
        """Give a slot back and hand it on; a second release of a lease does nothing."""
        if lease.released:
            return
        lease.released = True
        route = lease.route
        route.active -= 1
        self.active -= 1
        if lease.probe:
            route.health.breaker.probe_abandoned()  # no-op once its outcome was recorded
        self._refresh(route, self._clock())
        if self._queue.count or self._pinned or self._excluded:
            self._dispatch()

    def _take(self, route: Route, now: float, *, pinned: bool) -> Lease:
        breaker = route.health.breaker
        probe = not pinned and breaker.state is not BreakerState.CLOSED and breaker.claim_probe(now)
        route.active += 1
        self.active += 1
        self._refresh(route, now)
        return Lease(route, probe)

    # --- handing slots to waiters -------------------------------------------------------------

    def _dispatch(self) -> None:
        """Serve waiters, best first, while a slot can go to one of them."""
        if not (self._queue.count or self._pinned or self._excluded):
            return  # nobody waits: the common case of a pool with room
        now = self._clock()
        while self.active < self._limit:
            best: Waiter | None = None
            where: Route | None = None
            head = self._queue.next_up()
            if head is not None and head.future.done():
                self._queue.remove(head)  # cancelled; its task has not run its cleanup yet
                continue
            if head is not None:
                where = self._pick(head.avoid, head.exclude, now)
                best = head if where is not None else None
            for route, queue in self._pinned.items():
                if route.active < route.capacity:
                    first = queue.next_up()
                    if first is not None and (best is None or first.key() < best.key()):
                        best, where = first, route
            for waiter in self._excluded:
                if waiter.gone or (best is not None and waiter.key() > best.key()):
                    continue
                allowed = self._pick(waiter.avoid, waiter.exclude, now)
                if allowed is not None:
                    best, where = waiter, allowed
            if best is None or where is None:
                break
            self._grant(best, where, now)
        if self._resting and (self._queue or self._excluded):
            self._arm(self._resting[0][0], now)

    def _grant(self, waiter: Waiter, route: Route, now: float) -> None:
        self._forget(waiter, served=True)
        if waiter.future.done():  # cancelled while queued: serve the next one instead
            return
        waiter.future.set_result(self._take(route, now, pinned=waiter.pinned is not None))

    def _arm(self, at: float, now: float) -> None:
        """Wake the line when the first resting route recovers (one timer for the pool)."""
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(at - now, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _check_hope(self, deadline: float | None, now: float) -> None:
        """Raise at once when no route can possibly take the job before its deadline."""
        if deadline is None:
            return
        if now < deadline:
            if self._healthy or self._probing:
                return
            self._revive(now)
            if self._ready or self._healthy:
                return
            recovery = self._next_recovery()
            if recovery is not None and recovery <= deadline:
                return
        raise NoServerAvailableError(self._why_unavailable(now))

    # --- choosing a route ---------------------------------------------------------------------

    def _pick(
        self, avoid: Collection[Route], exclude: Collection[Route], now: float
    ) -> Route | None:
        """The best ready route for a job (without taking it), or None."""
        if self._resting:
            self._revive(now)
        ready = self._ready
        stash: list[_Ready] = []
        chosen: Route | None = None
        fallback: Route | None = None
        while ready:
            entry = ready[0]
            route = entry[4]
            if entry[3] != route.version:
                heapq.heappop(ready)
                continue
            health = route.health
            if not (
                health.breaker.state is BreakerState.CLOSED and now >= health.cooldown_until
            ) and not health.available(now):
                heapq.heappop(ready)
                self._refresh(route, now)  # rests until it recovers
                continue
            if route in exclude or (route in avoid):
                stash.append(heapq.heappop(ready))
                if fallback is None and route not in exclude:
                    fallback = route
                continue
            chosen = route
            break
        for entry in stash:
            heapq.heappush(ready, entry)
        return chosen or fallback

    def can_take_now(self, exclude: Collection[Route]) -> bool:
        """Whether a route outside ``exclude`` could take a job right now (shared: maybe)."""
        if self.shared is not None:
            return self.has_other(exclude)
        if self.active >= self._limit:
            return False
        return self._pick((), exclude, self._clock()) is not None

    def has_other(self, exclude: Collection[Route]) -> bool:
        """Whether some route outside ``exclude`` exists (it may have to be waited for)."""
        return any(route not in exclude for route in self.routes)

    def _refresh(self, route: Route, now: float) -> None:
        """Put a route where it belongs now: ready (in the heap), full, resting or probing."""
        before = route.place
        health = route.health
        if route.active >= route.capacity:
            route.version += 1  # its entry in the ready heap is stale now
            place = "full"
        elif (
            health.breaker.state is BreakerState.CLOSED and now >= health.cooldown_until
        ) or health.available(now):
            if before == "ready" and route.kind == "balancer" and self._routing == "first-server":
                # The one balancer leads the ready heap whatever its load (its first key is the
                # only 0): its entry stays valid, and a job costs no heap push or pop.
                return
            route.version += 1
            place = "ready"
            # The routing key, inline (this runs twice per job).
            if self._routing == "round-robin":
                self._tick += 1.0
                first, second = 0.0, self._tick
            else:
                service = health.service_time
                if service is None:
                    count = self._service_count
                    service = self._service_sum / count if count else 1.0
                second = (route.active + 1) * service / route.capacity
                first = 0.0 if self._routing != "first-server" or route.kind == "balancer" else 1.0
            ready = self._ready
            heapq.heappush(ready, (first, second, route.index, route.version, route))
            if len(ready) > self._ready_cap:
                self._compact()
        else:
            route.version += 1
            at = route.health.recovers_at(now)
            if at is None:
                place = "probing"
            else:
                place = "resting"
                heapq.heappush(self._resting, (at, route.index, route.version, route))
        if before != place:
            self._healthy += (place in ("ready", "full")) - (before in ("ready", "full"))
            self._probing += (place == "probing") - (before == "probing")
            route.place = place

    def _revive(self, now: float) -> None:
        """Bring back the resting routes whose time has come."""
        resting = self._resting
        while resting and resting[0][0] <= now:
            _, _, version, route = heapq.heappop(resting)
            if version == route.version:
                self._refresh(route, now)

    def _next_recovery(self) -> float | None:
        resting = self._resting
        while resting and resting[0][2] != resting[0][3].version:
            heapq.heappop(resting)
        return resting[0][0] if resting else None

    def _compact(self) -> None:
        self._ready = [e for e in self._ready if e[3] == e[4].version]
        heapq.heapify(self._ready)

    # --- shared or local, for callers that may wait on a backend ------------------------------

    async def give_back(self, lease: Lease) -> None:
        """Release a lease, in the backend when there is one."""
        if self.shared is None:
            self.release(lease)
        else:
            await self.shared.release(lease)

    async def report_failure(
        self, route: Route, verdict: Verdict, text: str, *, probe: bool
    ) -> None:
        """Account a failed call, in the backend when there is one."""
        if self.shared is None:
            self.record_failure(route, verdict, text, probe=probe)
        else:
            await self.shared.record_failure(route, verdict, text, probe=probe)

    async def report_success(self, route: Route, *, probe: bool) -> None:
        """Account a usable answer, in the backend when there is one."""
        if self.shared is None:
            self.record_success(route, probe=probe)
        else:
            await self.shared.record_success(route, probe=probe)

    # --- health -------------------------------------------------------------------------------

    def record_failure(self, route: Route, verdict: Verdict, text: str, *, probe: bool) -> None:
        """Account one failed call against its route, as its verdict says."""
        now = self._clock()
        if route.health.record(now, verdict, text, probe=probe):
            logger.warning(
                "server %s taken out of rotation for %gs after %s",
                route.name,
                route.health.policy.reset_timeout,
                text,
            )
        if route.place != "ready":
            self._refresh(route, now)
        self._dispatch()

    def record_success(self, route: Route, *, probe: bool) -> None:
        """A call to the route got a usable answer."""
        if route.health.breaker.record_success(probe=probe):
            logger.info("server %s is back in rotation", route.name)
            self._refresh(route, self._clock())
            self._dispatch()

    def claim_probe(self, route: Route) -> bool:
        """For a background probe: take the route's half-open probe if it is free."""
        claimed = route.health.breaker.claim_probe(self._clock())
        if claimed:
            self._refresh(route, self._clock())
        return claimed

    def probe_done(self, route: Route) -> None:
        """A background probe ended (its outcome recorded, or not)."""
        route.health.breaker.probe_abandoned()
        self._refresh(route, self._clock())
        self._dispatch()

    def record_job(self, route: Route, duration: float) -> None:
        """
        A job finished on ``route`` after ``duration`` seconds (feeds least-busy routing).
        Call it before releasing the job's lease: the release puts the route in its new place.
        """
        before = route.health.service_time
        route.health.record_job(duration)
        after = route.health.service_time or 0.0
        self._service_sum += after - (before or 0.0)
        self._service_count += before is None

    def _why_unavailable(self, now: float) -> str:
        parts = []
        for route in self.routes:
            health = route.health
            state = str(health.breaker.state)
            if state == "closed" and health.cooldown_until > now:
                state = f"cooling {health.cooldown_until - now:.1f}s"
            elif route.active >= route.capacity:
                state = "full"
            parts.append(f"{route.name}: {state}")
        return "no server could take the job in time (" + "; ".join(parts) + ")"
