"""
The pool of enterprise servers: which key a job goes out with, and when it may go.

A *route* is one way to send a job: a server's own key, or, in ``"first-server"`` mode, the
first server's key through ModelsLab's load balancer (the documented path). A job holds one
slot on its route from its submit until its result is fetched, so a server that is still
working on queued jobs is counted as busy, not only while an HTTP call is open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal, get_args

from ._errors import InvalidRequestError, NoServerAvailableError
from ._health import BreakerState, HealthPolicy
from ._server import Lease, Route, Server, ServerSnapshot

logger = logging.getLogger("modelslab_async")

__all__ = ["Routing", "ServerPool"]

Routing = Literal["first-server", "least-busy", "round-robin"]


class ServerPool:
    """
    The enterprise servers a client sends jobs to, and how it chooses among them.

    Args:
        servers: :class:`Server` values, or plain keys (named ``server-1``, ``server-2``...).
            The first one is the *first server* of the docs.
        routing: ``"first-server"`` (default): every job goes out with the first server's key
            and ModelsLab balances; when that path fails, jobs fail over to the other servers'
            own keys until a probe through it succeeds. ``"least-busy"``: the client picks the
            server with the most free capacity, preferring faster ones. ``"round-robin"``:
            in turn.
        health: When servers are taken out of rotation.
        loadbalancer_flag: Also send ``loadbalancer: "yes"`` on the first-server path and
            ``"no"`` on the first server's own route (older deployments read this flag).
        clock: Monotonic clock in seconds (tests pass a controlled one).

    Raises:
        InvalidRequestError: No servers, a duplicate name or key, or an unknown routing mode.
    """

    def __init__(
        self,
        servers: Iterable[Server | str],
        *,
        routing: Routing = "first-server",
        health: HealthPolicy | None = None,
        loadbalancer_flag: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        listed = [
            s if isinstance(s, Server) else Server(key=s, name=f"server-{i + 1}")
            for i, s in enumerate(servers)
        ]
        _check_servers(listed, routing)
        self.servers: tuple[Server, ...] = tuple(listed)
        self.routing: Routing = routing
        self.health_policy = health or HealthPolicy()
        self._clock = clock
        self._routes = self._build_routes(loadbalancer_flag)
        self._limit = sum(s.max_concurrency for s in listed)
        self._active = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._next = 0

    def _build_routes(self, flag: bool) -> tuple[Route, ...]:
        def route(server: Server, extra: dict[str, str]) -> Route:
            return Route(
                name=server.name,
                key=server.key,
                capacity=server.max_concurrency,
                kind="server",
                extra_body=extra,
                health=self.health_policy,
            )

        first, *others = self.servers
        if self.routing == "first-server":
            balancer = Route(
                name=f"{first.name} (balancer)",
                key=first.key,
                capacity=sum(s.max_concurrency for s in self.servers),
                kind="balancer",
                extra_body={"loadbalancer": "yes"} if flag else {},
                health=self.health_policy,
            )
            return (balancer, *(route(s, {}) for s in others))
        return (
            route(first, {"loadbalancer": "no"} if flag else {}),
            *(route(s, {}) for s in others),
        )

    def __repr__(self) -> str:
        processing = sum(r.processing for r in self._routes)
        return (
            f"<ServerPool {self.routing} servers={len(self.servers)} "
            f"active={self._active}/{self._limit} processing={processing} "
            f"waiting={len(self._waiters)}>"
        )

    @property
    def capacity(self) -> int:
        """Most jobs the pool holds at once: the servers' total ``max_concurrency``."""
        return self._limit

    @property
    def routes(self) -> Sequence[Route]:
        """The routes, the default one first."""
        return self._routes

    def route(self, name: str | None) -> Route:
        """The route with this name (a server's name), or the default route for None."""
        if name is None:
            return self._routes[0]
        name = name.removesuffix(" (balancer)")  # same key, whatever the routing mode
        for candidate in self._routes:
            if name in (candidate.name, candidate.fingerprint):
                return candidate
        for server, candidate in zip(self.servers, self._routes, strict=False):
            if server.name == name:
                return candidate
        names = ", ".join(r.name for r in self._routes)
        raise InvalidRequestError("server", f"no server named {name!r}", allowed=names)

    # --- taking and giving back slots ---------------------------------------------------------

    async def acquire(
        self,
        *,
        deadline: float | None = None,
        avoid: Collection[Route] = (),
        pinned: Route | None = None,
    ) -> Lease:
        """
        Wait for a slot and return it.

        Args:
            deadline: Clock time after which to give up.
            avoid: Routes to use only when nothing else is available (they just failed).
            pinned: Take a slot on this route only (a job's fetches follow its submit key),
                whatever its health.

        Raises:
            NoServerAvailableError: No route can take the job before the deadline.
        """
        started = self._clock()
        while True:
            lease = self._try_take(avoid, pinned)
            if lease is not None:
                return lease
            now = self._clock()
            wake_at = None if pinned is not None else self._next_recovery(now)
            if deadline is not None and (now >= deadline or (wake_at or now) > deadline):
                raise NoServerAvailableError(self._why_unavailable(now), waited=now - started)
            limits = [t for t in (wake_at, deadline) if t is not None]
            await self._wait(max(min(limits) - now, 0.001) if limits else None)

    async def _wait(self, timeout: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def release(self, lease: Lease) -> None:
        """Give a slot back; safe to call once per lease."""
        route = lease.route
        route.active -= 1
        self._active -= 1
        if lease.probe and route.health.breaker.state is BreakerState.HALF_OPEN:
            route.health.breaker.probe_in_flight = False
        self._wake()

    def _try_take(self, avoid: Collection[Route], pinned: Route | None) -> Lease | None:
        if self._active >= self._limit:
            return None
        if pinned is not None:
            return self._take(pinned) if pinned.active < pinned.capacity else None
        now = self._clock()
        free = [r for r in self._routes if r.active < r.capacity and r.health.available(now)]
        if not free:
            return None
        preferred = [r for r in free if r not in avoid] or free
        return self._take(self._choose(preferred))

    def _choose(self, free: Sequence[Route]) -> Route:
        if self.routing == "round-robin":
            count = len(self._routes)
            for step in range(count):
                candidate = self._routes[(self._next + step) % count]
                if candidate in free:
                    self._next = (self._next + step + 1) % count
                    return candidate
        if self.routing == "first-server" and free[0].kind == "balancer":
            return free[0]
        known = [r.health.service_time for r in free if r.health.service_time is not None]
        typical = sum(known) / len(known) if known else 1.0

        def expected_finish(route: Route) -> float:
            service = route.health.service_time or typical
            return (route.active + 1) * service / route.capacity

        return min(free, key=expected_finish)

    def _take(self, route: Route) -> Lease:
        probe = route.health.breaker.state is BreakerState.HALF_OPEN
        if probe:
            route.health.breaker.probe_in_flight = True
        route.active += 1
        self._active += 1
        return Lease(route, probe)

    def _next_recovery(self, now: float) -> float | None:
        """
        When the first unhealthy route recovers, if every route is unhealthy; None when some
        route is merely full (a release will wake the waiter) or waits on its probe.
        """
        times = []
        for route in self._routes:
            if route.health.available(now):
                return None
            if route.health.breaker.state is not BreakerState.HALF_OPEN:
                times.append(route.health.recovers_at(now))
        return min(times) if times else None

    def _why_unavailable(self, now: float) -> str:
        parts = [f"{s.name}: {s.state}" for s in self.snapshot(now)]
        return "no server could take the job in time (" + "; ".join(parts) + ")"

    # --- health -------------------------------------------------------------------------------

    def can_reroute(self, failed: Route | None) -> bool:
        """Whether a route other than ``failed`` can take a job right now."""
        if self._active >= self._limit:
            return False
        now = self._clock()
        return any(
            route is not failed and route.active < route.capacity and route.health.available(now)
            for route in self._routes
        )

    def record_error(self, route: Route, error: Any) -> None:
        """Account a failed call against a route's health."""
        was = route.health.breaker.state
        route.health.record_error(self._clock(), error)
        now = route.health.breaker.state
        if now is BreakerState.OPEN and was is not BreakerState.OPEN:
            logger.warning(
                "server %s taken out of rotation for %gs after %s",
                route.name,
                self.health_policy.reset_timeout,
                route.health.last_error,
            )
        self._wake()

    def record_answer(self, route: Route) -> None:
        """A call to the route got a usable answer: its breaker closes."""
        if route.health.breaker.state is not BreakerState.CLOSED:
            logger.info("server %s is back in rotation", route.name)
            route.health.breaker.record_success()
            self._wake()

    def snapshot(self, now: float | None = None) -> list[ServerSnapshot]:
        """Each route's state now, default route first."""
        now = self._clock() if now is None else now
        shots = []
        for route in self._routes:
            health = route.health
            state = str(health.breaker.state)
            cooldown = max(0.0, health.cooldown_until - now)
            if state == "closed" and cooldown > 0:
                state = "cooling"
            p50, p95 = health.percentiles()
            shots.append(
                ServerSnapshot(
                    name=route.name,
                    kind=route.kind,
                    fingerprint=route.fingerprint,
                    state=state,
                    capacity=route.capacity,
                    active=route.active,
                    in_flight=route.in_flight,
                    processing=route.processing,
                    cooldown_left=round(cooldown, 3),
                    last_error=health.last_error,
                    submits=health.submits,
                    fetches=health.fetches,
                    successes=health.successes,
                    failures=health.failures,
                    service_time=health.service_time,
                    latency_p50=p50,
                    latency_p95=p95,
                )
            )
        return shots


def _check_servers(servers: Sequence[Server], routing: str) -> None:
    if not servers:
        raise InvalidRequestError("servers", "the pool needs at least one server")
    if routing not in get_args(Routing):
        raise InvalidRequestError(
            "routing", f"{routing!r} is not a routing mode", allowed=", ".join(get_args(Routing))
        )
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise InvalidRequestError("servers", "server names must be unique")
    if len({s.key for s in servers}) != len(servers):
        raise InvalidRequestError("servers", "the same key is listed twice")
