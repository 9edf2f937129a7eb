"""
The pool of enterprise servers: which key a job goes out with, and when it may go.

A *route* is one way to send a job: a server's own key, or, in ``"first-server"`` mode, the
first server's key through ModelsLab's load balancer (the documented path). A job holds one
slot on its route from its submit until its result is fetched, so a server that is still
working on queued jobs is counted as busy, not only while an HTTP call is open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, get_args

from ._backend import CoordinationBackend, MemoryBackend, SharedState
from ._errors import InvalidRequestError
from ._health import HealthPolicy
from ._scheduler import Scheduler
from ._server import Route, Server, ServerSnapshot

__all__ = ["Routing", "ServerPool", "route_of", "scheduler_of"]

Routing = Literal["first-server", "least-busy", "round-robin"]


class ServerPool:
    """
    The enterprise servers a client sends jobs to, and how it chooses among them.

    Jobs wait for a slot in line: a higher ``priority`` first, first come first served within
    a priority; a freed slot is handed to the next job in line that can use it. So that low
    priorities are not starved, once a job is the longest waiting of all, at most
    ``max_overtakes`` later jobs are served before it.

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
        max_overtakes: The starvation guard (see above).
        backend: Where slots, cooldowns and breakers live. :class:`MemoryBackend` (the
            default) keeps them in this process's memory, with nothing to run. When several
            processes share the servers, a :class:`CoordinationBackend` such as
            ``modelslab_async.redis.RedisBackend`` holds them for all; every process sharing
            it must use the same servers and routing mode. The pool does not close it.
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
        max_overtakes: int = 32,
        backend: MemoryBackend | CoordinationBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        listed = [
            s if isinstance(s, Server) else Server(key=s, name=f"server-{i + 1}")
            for i, s in enumerate(servers)
        ]
        _check_servers(listed, routing)
        _check_count("max_overtakes", max_overtakes)
        self.servers: tuple[Server, ...] = tuple(listed)
        self.routing: Routing = routing
        self.health_policy = health or HealthPolicy()
        self._clock = clock
        self._limit = sum(s.max_concurrency for s in listed)
        self._scheduler = Scheduler(
            self._build_routes(loadbalancer_flag),
            routing=routing,
            limit=self._limit,
            clock=clock,
            max_overtakes=max_overtakes,
            backend=None if backend is None or isinstance(backend, MemoryBackend) else backend,
        )
        self.backend: MemoryBackend | CoordinationBackend = backend or MemoryBackend()

    def _build_routes(self, flag: bool) -> list[Route]:
        def route(server: Server, extra: dict[str, str], index: int) -> Route:
            return Route(
                name=server.name,
                key=server.key.reveal(),
                capacity=server.max_concurrency,
                kind="server",
                extra_body=extra,
                health=self.health_policy,
                index=index,
            )

        first, *others = self.servers
        if self.routing == "first-server":
            balancer = Route(
                name=f"{first.name} (balancer)",
                key=first.key.reveal(),
                capacity=self._limit,
                kind="balancer",
                extra_body={"loadbalancer": "yes"} if flag else {},
                health=self.health_policy,
            )
            return [balancer, *(route(s, {}, i + 1) for i, s in enumerate(others))]
        return [
            route(first, {"loadbalancer": "no"} if flag else {}, 0),
            *(route(s, {}, i + 1) for i, s in enumerate(others)),
        ]

    def __repr__(self) -> str:
        scheduler = self._scheduler
        processing = sum(r.processing for r in scheduler.routes)
        return (
            f"<ServerPool {self.routing} servers={len(self.servers)} "
            f"active={scheduler.active}/{self._limit} processing={processing} "
            f"waiting={scheduler.waiting}>"
        )

    @property
    def capacity(self) -> int:
        """Most jobs the pool holds at once: the servers' total ``max_concurrency``."""
        return self._limit

    @property
    def active(self) -> int:
        """Jobs of this process holding a slot now."""
        shared = self._scheduler.shared
        return self._scheduler.active if shared is None else shared.active

    @property
    def waiting(self) -> int:
        """Jobs waiting in line for a slot now."""
        return self._scheduler.waiting

    def route_name(self, name: str | None) -> str:
        """
        The name the pool uses for a server given by its name or key fingerprint (the
        first-server path's name for None). ``"gpu-1 (balancer)"`` and ``"gpu-1"`` name the same
        key, so jobs accepted under one routing mode can be collected under another.

        Raises:
            InvalidRequestError: No server has that name.
        """
        return route_of(self, name).name

    async def shared_states(self) -> list[SharedState]:
        """
        Each route's state in the shared backend (holders in every process, cooldown,
        breaker), default route first; empty without a backend.
        """
        shared = self._scheduler.shared
        return [] if shared is None else await shared.states()

    def snapshot(self, now: float | None = None) -> list[ServerSnapshot]:
        """Each route's state now, default route first."""
        now = self._clock() if now is None else now
        shots = []
        for route in self._scheduler.routes:
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


def scheduler_of(pool: ServerPool) -> Scheduler:
    """The pool's scheduler, for the client's job runners (not part of the public API)."""
    return pool._scheduler


def route_of(pool: ServerPool, name: str | None) -> Route:
    """The route for a server name or fingerprint (the default route for None)."""
    routes: Sequence[Route] = pool._scheduler.routes
    if name is None:
        return routes[0]
    found = pool._scheduler.lookup(name.removesuffix(" (balancer)"))
    if found is not None:
        return found
    for server, candidate in zip(pool.servers, routes, strict=False):
        if server.name == name.removesuffix(" (balancer)"):
            return candidate
    names = ", ".join(r.name for r in routes)
    raise InvalidRequestError("server", f"no server named {name!r}", allowed=names)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(name, f"{value!r}", allowed="integers >= 0")


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
