"""
What the pool is made of: a :class:`Server` (what users configure), a :class:`Route` (one way
to send a job, with its slots and health), a :class:`Lease` on a route, and a
:class:`ServerSnapshot` of a route for dashboards. None of them ever shows a key.
"""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen, validators

from ._errors import InvalidRequestError
from ._health import HealthPolicy, RouteHealth
from ._secrets import Secret, fingerprint

__all__ = ["Lease", "Route", "Server", "ServerSnapshot"]


def _to_secret(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value


def _check_key(_: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, Secret) or not value.reveal().strip():
        raise InvalidRequestError(attribute.name, "must be a non-empty string")


@frozen(kw_only=True)
class Server:
    """
    One enterprise GPU server: its key, a name to refer to it by, and how many jobs it runs
    at once. The key is kept as a :class:`Secret`: it never appears in a repr, in
    ``attrs.asdict`` or cattrs output, and a ``Server`` cannot be pickled; the default name is
    a fingerprint of it.
    """

    key: Secret = field(converter=_to_secret, validator=_check_key)
    name: str = field()
    max_concurrency: int = field(default=2, validator=validators.ge(1))

    @name.default
    def _name_from_key(self) -> str:
        return self.key.fingerprint


class Route:
    """One way to send a job: a key, its capacity and its health. Internal."""

    __slots__ = (
        "active",
        "capacity",
        "extra_body",
        "fingerprint",
        "health",
        "in_flight",
        "index",
        "key",
        "kind",
        "name",
        "place",
        "processing",
        "version",
    )

    def __init__(
        self,
        *,
        name: str,
        key: str,
        capacity: int,
        kind: Literal["balancer", "server"],
        extra_body: dict[str, str],
        health: HealthPolicy,
        index: int = 0,
    ) -> None:
        self.index = index  # position in the pool, for stable tie-breaks
        self.name = name
        self.key = key
        self.fingerprint = fingerprint(key)
        self.capacity = capacity
        self.kind = kind
        self.extra_body = extra_body
        self.health = RouteHealth(health)
        self.active = 0  # jobs holding a slot: submitting, queued on the server, or fetching
        self.in_flight = 0  # HTTP calls open right now
        self.processing = 0  # jobs the server answered "processing" for and not yet collected
        # The scheduler's bookkeeping: where the route sits (ready to take a job, full,
        # resting until it recovers, or waiting for its probe's outcome), and the version of
        # its entry in the scheduler's heaps (older entries are stale).
        self.place = "ready"
        self.version = 0

    def __repr__(self) -> str:
        return (
            f"<Route {self.name} ({self.fingerprint}) {self.health.breaker.state} "
            f"active={self.active}/{self.capacity} processing={self.processing}>"
        )


@frozen(kw_only=True)
class ServerSnapshot:
    """
    One route's state at one moment, for dashboards and logs (never the key).

    Attributes:
        name: The route's name (a server's name; ``"<first> (balancer)"`` for the
            first-server path).
        kind: ``"balancer"`` or ``"server"``.
        fingerprint: Short fingerprint of the route's key.
        state: ``"closed"``, ``"open"``, ``"half-open"`` or ``"cooling"``.
        capacity: Jobs it may hold at once.
        active: Jobs holding a slot (submitting, processing or fetching).
        in_flight: HTTP calls open now.
        processing: Jobs queued on the server, awaiting collection.
        cooldown_left: Seconds until a cooldown ends (0 when none).
        last_error: The last error's type and message.
        submits: Submit calls made. fetches: Fetch calls made.
        successes: Jobs finished. failures: Calls that failed.
        service_time: Moving average of job durations, seconds.
        latency_p50: Median job duration. latency_p95: 95th percentile.
    """

    name: str
    kind: str
    fingerprint: str
    state: str
    capacity: int
    active: int
    in_flight: int
    processing: int
    cooldown_left: float
    last_error: str | None
    submits: int
    fetches: int
    successes: int
    failures: int
    service_time: float | None
    latency_p50: float | None
    latency_p95: float | None


class Lease:
    """A slot on one route, held by one job until it is released (once; again is a no-op)."""

    __slots__ = ("holder", "probe", "released", "route")

    def __init__(self, route: Route, probe: bool = False) -> None:
        self.route = route
        self.probe = probe  # this job's first call is the half-open probe of its route
        self.released = False
        self.holder = ""  # the lease's id in a shared backend

    def __repr__(self) -> str:
        return f"<Lease {self.route.name}{' probe' if self.probe else ''}>"
