"""ServerPool: routing modes, slots, breakers, cooldowns and snapshots (controlled clock)."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelslab_async import (
    AuthenticationError,
    ConnectError,
    HealthPolicy,
    InvalidRequestError,
    NoServerAvailableError,
    RateLimitError,
    Server,
    ServerError,
    ServerPool,
)
from modelslab_async._decisions import judge
from modelslab_async._pool import route_of, scheduler_of
from modelslab_async._scheduler import Scheduler
from modelslab_async._server import Lease, Route

from ._helpers import KEYS


class S:
    """A pool's scheduler, driven the way a job runner drives it."""

    def __init__(self, pool: ServerPool) -> None:
        self.scheduler: Scheduler = scheduler_of(pool)
        self.routes = self.scheduler.routes
        self.acquire = self.scheduler.acquire
        self.release = self.scheduler.release

    def record_error(self, route: Route, error: Exception, *, probe: bool = False) -> None:
        text = f"{type(error).__name__}: {getattr(error, 'message', error)}"
        self.scheduler.record_failure(route, judge(error), text, probe=probe)

    def record_answer(self, route: Route, lease: Lease | None = None) -> None:
        self.scheduler.record_success(route, probe=lease is not None and lease.probe)

    def can_reroute(self, failed: Route) -> bool:
        return self.scheduler.can_take_now({failed})


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def servers(*capacities: int) -> list[Server]:
    return [
        Server(key=KEYS[i], name=f"gpu-{i + 1}", max_concurrency=c)
        for i, c in enumerate(capacities)
    ]


def test_first_server_mode_has_a_balancer_route_with_the_total_capacity() -> None:
    """The documented path is the first key, holding the whole pool's capacity."""
    pool = ServerPool(servers(2, 3, 1))
    balancer, *direct = S(pool).routes
    assert ("gpu-1 (balancer)", "balancer", 6, KEYS[0]) == (
        balancer.name,
        balancer.kind,
        balancer.capacity,
        balancer.key,
    )
    assert ["gpu-2", "gpu-3"] == [r.name for r in direct]
    assert 6 == pool.capacity
    assert {"loadbalancer": "yes"} == balancer.extra_body


async def test_first_server_mode_uses_the_balancer_while_it_is_healthy() -> None:
    """Every job goes out with the first key while that path works."""
    pool = ServerPool(servers(1, 1))
    leases = [await S(pool).acquire(), await S(pool).acquire()]
    assert {"gpu-1 (balancer)"} == {lease.route.name for lease in leases}


async def test_first_server_mode_fails_over_and_comes_back_after_a_probe() -> None:
    """When the first-key path breaks, jobs go to the other keys; one probe brings it back."""
    clock = Clock()
    pool = ServerPool(
        servers(1, 1, 1), health=HealthPolicy(failure_threshold=2, reset_timeout=10), clock=clock
    )
    balancer = S(pool).routes[0]
    for _ in range(2):
        S(pool).record_error(balancer, ConnectError("refused"))
    assert "open" == pool.snapshot()[0].state
    first, second = await S(pool).acquire(), await S(pool).acquire()
    assert {"gpu-2", "gpu-3"} == {first.route.name, second.route.name}
    S(pool).release(first)
    S(pool).release(second)
    clock.now += 10
    probe = await S(pool).acquire()
    assert (balancer, True) == (probe.route, probe.probe)
    assert "gpu-2" == (await S(pool).acquire()).route.name  # the probe holds the balancer path
    S(pool).record_answer(balancer, probe)
    S(pool).release(probe)
    assert "closed" == pool.snapshot()[0].state
    assert balancer is (await S(pool).acquire()).route


async def test_first_server_mode_keeps_the_balancer_first_through_load_and_a_cooldown() -> None:
    """The balancer leads whatever its load; cooling down, it gives way, and leads again after."""
    clock = Clock()
    pool = ServerPool(servers(2, 2), clock=clock)
    balancer = S(pool).routes[0]
    held = [await S(pool).acquire() for _ in range(3)]
    assert all(lease.route is balancer for lease in held)
    for lease in held[:2]:
        S(pool).release(lease)
    assert balancer is (await S(pool).acquire()).route
    S(pool).record_error(balancer, RateLimitError("slow down", status_code=429, retry_after=5))
    S(pool).release(held[2])  # released while cooling: it must not come back early
    assert "gpu-2" == (await S(pool).acquire()).route.name
    clock.now += 6
    assert balancer is (await S(pool).acquire()).route


async def test_half_open_lets_exactly_one_probe_through() -> None:
    """While the probe is out, the half-open route takes no other job; a failed probe reopens it."""
    clock = Clock()
    pool = ServerPool(
        servers(4),
        routing="least-busy",
        health=HealthPolicy(failure_threshold=1, reset_timeout=5),
        clock=clock,
    )
    route = S(pool).routes[0]
    S(pool).record_error(route, ServerError("down", status_code=502))
    clock.now += 5
    probe = await S(pool).acquire(deadline=clock.now + 1)
    assert probe.probe
    with pytest.raises(NoServerAvailableError):
        await S(pool).acquire(deadline=clock.now)
    S(pool).record_error(route, ServerError("still down", status_code=502), probe=True)
    S(pool).release(probe)
    assert "open" == pool.snapshot()[0].state


async def test_least_busy_prefers_free_capacity_then_speed() -> None:
    """The least loaded server wins; among equals, the one that finishes faster."""
    pool = ServerPool(servers(2, 2), routing="least-busy")
    slow, fast = S(pool).routes
    for route, duration in ((slow, 2.0), (fast, 1.0)):
        lease = await S(pool).acquire(pinned=route)
        S(pool).scheduler.record_job(route, duration)
        S(pool).release(lease)
    picks = [(await S(pool).acquire()).route.name for _ in range(4)]
    assert ["gpu-2", "gpu-1", "gpu-2", "gpu-1"] == picks
    assert {"gpu-1": 2, "gpu-2": 2} == {r.name: r.active for r in S(pool).routes}


async def test_round_robin_takes_turns() -> None:
    """round-robin sends jobs to each server in turn."""
    pool = ServerPool(servers(3, 3, 3), routing="round-robin")
    picks = []
    for _ in range(6):
        lease = await S(pool).acquire()
        picks.append(lease.route.name)
        S(pool).release(lease)
    assert ["gpu-1", "gpu-2", "gpu-3", "gpu-1", "gpu-2", "gpu-3"] == picks


async def test_no_route_exceeds_its_capacity_and_release_wakes_a_waiter() -> None:
    """A full pool makes the next job wait until a slot is released."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    held = [await S(pool).acquire(), await S(pool).acquire()]
    waiter = asyncio.create_task(S(pool).acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert "waiting=1" in repr(pool)
    S(pool).release(held[0])
    lease = await asyncio.wait_for(waiter, 1)
    assert held[0].route is lease.route
    assert all(r.active <= r.capacity for r in S(pool).routes)


def test_cooldowns_extend_to_the_latest_deadline() -> None:
    """A shorter Retry-After never shortens a longer cooldown already in force."""
    clock = Clock()
    pool = ServerPool(servers(1), clock=clock)
    route = S(pool).routes[0]
    S(pool).record_error(route, RateLimitError("slow down", retry_after=30))
    S(pool).record_error(route, RateLimitError("slow down", retry_after=5))
    assert 30 == pool.snapshot()[0].cooldown_left
    S(pool).record_error(route, RateLimitError("slow down", retry_after=60))
    assert 60 == pool.snapshot()[0].cooldown_left


async def test_a_rate_limited_server_is_skipped_while_another_has_room() -> None:
    """A 429 moves the next job to another server at once."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    first = S(pool).routes[0]
    S(pool).record_error(first, RateLimitError("slow down", retry_after=60))
    assert S(pool).can_reroute(first)
    assert "gpu-2" == (await S(pool).acquire()).route.name


async def test_when_all_servers_cool_down_the_job_waits_for_the_earliest() -> None:
    """With every server cooling, acquire waits for the first to recover (real short waits)."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    a, b = S(pool).routes
    S(pool).record_error(a, RateLimitError("slow", retry_after=0.3))
    S(pool).record_error(b, RateLimitError("slow", retry_after=0.1))
    started = time.monotonic()
    lease = await S(pool).acquire(deadline=time.monotonic() + 2)
    assert b is lease.route
    assert 0.09 <= time.monotonic() - started < 0.3


async def test_no_server_available_when_recovery_is_past_the_deadline() -> None:
    """If no server recovers before the job's deadline, fail at once with NoServerAvailableError."""
    clock = Clock()
    pool = ServerPool(servers(1, 1), routing="least-busy", clock=clock)
    for route in S(pool).routes:
        S(pool).record_error(route, RateLimitError("slow", retry_after=100))
    with pytest.raises(NoServerAvailableError) as caught:
        await S(pool).acquire(deadline=clock.now + 10)
    assert "gpu-1: cooling" in str(caught.value)


def test_auth_errors_open_the_breaker_at_once() -> None:
    """An invalid key takes its route out immediately."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    S(pool).record_error(S(pool).routes[0], AuthenticationError("Invalid API key", status_code=401))
    assert ["open", "closed"] == [s.state for s in pool.snapshot()]


async def test_pinned_acquire_follows_the_route_whatever_its_health() -> None:
    """Fetches of a job stay on the key that accepted it, even while it is cooling."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    route = S(pool).routes[1]
    S(pool).record_error(route, RateLimitError("slow", retry_after=60))
    assert route is (await S(pool).acquire(pinned=route)).route


def test_snapshot_and_repr_never_show_keys() -> None:
    """Snapshots name servers and key fingerprints only."""
    pool = ServerPool(servers(1, 2))
    S(pool).record_error(S(pool).routes[0], ServerError("Internal server error", status_code=500))
    text = repr(pool) + repr(pool.snapshot()) + repr(S(pool).routes) + repr(pool.servers)
    assert not any(key in text for key in KEYS)
    shot = pool.snapshot()[0]
    assert "ServerError: ModelsLab API error (HTTP 500): Internal server error" == shot.last_error


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ServerPool([]), "servers"),
        (lambda: ServerPool([KEYS[0], KEYS[0]]), "servers"),
        (lambda: ServerPool([*servers(1, 1), Server(key="other", name="gpu-1")]), "servers"),
        (lambda: ServerPool(KEYS, routing="random"), "routing"),  # type: ignore[arg-type]
        (lambda: Server(key=""), "key"),
    ],
)
def test_bad_pools_are_refused(build: object, field: str) -> None:
    """Empty pools, duplicates, blank keys and unknown routing modes are typed errors."""
    with pytest.raises(InvalidRequestError) as caught:
        build()  # type: ignore[operator]
    assert field == caught.value.field


def test_routes_are_found_by_name_or_fingerprint() -> None:
    """A server can be named by its name or its key fingerprint; unknown names are listed."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    assert (
        S(pool).routes[1]
        is route_of(pool, "gpu-2")
        is route_of(pool, S(pool).routes[1].fingerprint)
    )
    with pytest.raises(InvalidRequestError, match="gpu-1, gpu-2"):
        route_of(pool, "gpu-9")


def test_default_server_name_is_a_fingerprint() -> None:
    """A server without a name is named after its key's fingerprint."""
    server = Server(key=KEYS[0])
    assert server.name.startswith("key-")
    assert KEYS[0] not in repr(server)


def test_a_route_name_means_the_same_key_in_every_routing_mode() -> None:
    """A job accepted on "gpu-1 (balancer)" is collected as "gpu-1" in another mode, and back."""
    first_server = ServerPool(servers(1, 1))
    least_busy = ServerPool(servers(1, 1), routing="least-busy")
    assert S(first_server).routes[0] is route_of(first_server, "gpu-1")
    assert S(least_busy).routes[0] is route_of(least_busy, "gpu-1 (balancer)")
    assert route_of(first_server, "gpu-1").key == route_of(least_busy, "gpu-1 (balancer)").key
    assert "gpu-1 (balancer)" == first_server.route_name("gpu-1")
