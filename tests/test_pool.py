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

from ._helpers import KEYS


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
    balancer, *direct = pool.routes
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
    leases = [await pool.acquire(), await pool.acquire()]
    assert {"gpu-1 (balancer)"} == {lease.route.name for lease in leases}


async def test_first_server_mode_fails_over_and_comes_back_after_a_probe() -> None:
    """When the first-key path breaks, jobs go to the other keys; one probe brings it back."""
    clock = Clock()
    pool = ServerPool(
        servers(1, 1, 1), health=HealthPolicy(failure_threshold=2, reset_timeout=10), clock=clock
    )
    balancer = pool.routes[0]
    for _ in range(2):
        pool.record_error(balancer, ConnectError("refused"))
    assert "open" == pool.snapshot()[0].state
    first, second = await pool.acquire(), await pool.acquire()
    assert {"gpu-2", "gpu-3"} == {first.route.name, second.route.name}
    pool.release(first)
    pool.release(second)
    clock.now += 10
    probe = await pool.acquire()
    assert (balancer, True) == (probe.route, probe.probe)
    assert "gpu-2" == (await pool.acquire()).route.name  # the probe holds the balancer path
    pool.record_answer(balancer)
    pool.release(probe)
    assert "closed" == pool.snapshot()[0].state
    assert balancer is (await pool.acquire()).route


async def test_half_open_lets_exactly_one_probe_through() -> None:
    """While the probe is out, the half-open route takes no other job; a failed probe reopens it."""
    clock = Clock()
    pool = ServerPool(
        servers(4),
        routing="least-busy",
        health=HealthPolicy(failure_threshold=1, reset_timeout=5),
        clock=clock,
    )
    route = pool.routes[0]
    pool.record_error(route, ServerError("down", status_code=502))
    clock.now += 5
    probe = await pool.acquire(deadline=clock.now + 1)
    assert probe.probe
    with pytest.raises(NoServerAvailableError):
        await pool.acquire(deadline=clock.now)
    pool.record_error(route, ServerError("still down", status_code=502))
    pool.release(probe)
    assert "open" == pool.snapshot()[0].state


async def test_least_busy_prefers_free_capacity_then_speed() -> None:
    """The least loaded server wins; among equals, the one that finishes faster."""
    pool = ServerPool(servers(2, 2), routing="least-busy")
    slow, fast = pool.routes
    slow.health.record_job(2.0)
    fast.health.record_job(1.0)
    picks = [(await pool.acquire()).route.name for _ in range(4)]
    assert ["gpu-2", "gpu-1", "gpu-2", "gpu-1"] == picks
    assert {"gpu-1": 2, "gpu-2": 2} == {r.name: r.active for r in pool.routes}


async def test_round_robin_takes_turns() -> None:
    """round-robin sends jobs to each server in turn."""
    pool = ServerPool(servers(3, 3, 3), routing="round-robin")
    picks = []
    for _ in range(6):
        lease = await pool.acquire()
        picks.append(lease.route.name)
        pool.release(lease)
    assert ["gpu-1", "gpu-2", "gpu-3", "gpu-1", "gpu-2", "gpu-3"] == picks


async def test_no_route_exceeds_its_capacity_and_release_wakes_a_waiter() -> None:
    """A full pool makes the next job wait until a slot is released."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    held = [await pool.acquire(), await pool.acquire()]
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert "waiting=1" in repr(pool)
    pool.release(held[0])
    lease = await asyncio.wait_for(waiter, 1)
    assert held[0].route is lease.route
    assert all(r.active <= r.capacity for r in pool.routes)


def test_cooldowns_extend_to_the_latest_deadline() -> None:
    """A shorter Retry-After never shortens a longer cooldown already in force."""
    clock = Clock()
    pool = ServerPool(servers(1), clock=clock)
    route = pool.routes[0]
    pool.record_error(route, RateLimitError("slow down", retry_after=30))
    pool.record_error(route, RateLimitError("slow down", retry_after=5))
    assert 30 == pool.snapshot()[0].cooldown_left
    pool.record_error(route, RateLimitError("slow down", retry_after=60))
    assert 60 == pool.snapshot()[0].cooldown_left


async def test_a_rate_limited_server_is_skipped_while_another_has_room() -> None:
    """A 429 moves the next job to another server at once."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    first = pool.routes[0]
    pool.record_error(first, RateLimitError("slow down", retry_after=60))
    assert pool.can_reroute(first)
    assert "gpu-2" == (await pool.acquire()).route.name


async def test_when_all_servers_cool_down_the_job_waits_for_the_earliest() -> None:
    """With every server cooling, acquire waits for the first to recover (real short waits)."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    a, b = pool.routes
    pool.record_error(a, RateLimitError("slow", retry_after=0.3))
    pool.record_error(b, RateLimitError("slow", retry_after=0.1))
    started = time.monotonic()
    lease = await pool.acquire(deadline=time.monotonic() + 2)
    assert b is lease.route
    assert 0.09 <= time.monotonic() - started < 0.3


async def test_no_server_available_when_recovery_is_past_the_deadline() -> None:
    """If no server recovers before the job's deadline, fail at once with NoServerAvailableError."""
    clock = Clock()
    pool = ServerPool(servers(1, 1), routing="least-busy", clock=clock)
    for route in pool.routes:
        pool.record_error(route, RateLimitError("slow", retry_after=100))
    with pytest.raises(NoServerAvailableError) as caught:
        await pool.acquire(deadline=clock.now + 10)
    assert "gpu-1: cooling" in str(caught.value)


def test_auth_errors_open_the_breaker_at_once() -> None:
    """An invalid key takes its route out immediately."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    pool.record_error(pool.routes[0], AuthenticationError("Invalid API key", status_code=401))
    assert ["open", "closed"] == [s.state for s in pool.snapshot()]


async def test_pinned_acquire_follows_the_route_whatever_its_health() -> None:
    """Fetches of a job stay on the key that accepted it, even while it is cooling."""
    pool = ServerPool(servers(1, 1), routing="least-busy")
    route = pool.routes[1]
    pool.record_error(route, RateLimitError("slow", retry_after=60))
    assert route is (await pool.acquire(pinned=route)).route


def test_snapshot_and_repr_never_show_keys() -> None:
    """Snapshots name servers and key fingerprints only."""
    pool = ServerPool(servers(1, 2))
    pool.record_error(pool.routes[0], ServerError("Internal server error", status_code=500))
    text = repr(pool) + repr(pool.snapshot()) + repr(pool.routes) + repr(pool.servers)
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
    assert pool.routes[1] is pool.route("gpu-2") is pool.route(pool.routes[1].fingerprint)
    with pytest.raises(InvalidRequestError, match="gpu-1, gpu-2"):
        pool.route("gpu-9")


def test_default_server_name_is_a_fingerprint() -> None:
    """A server without a name is named after its key's fingerprint."""
    server = Server(key=KEYS[0])
    assert server.name.startswith("key-")
    assert KEYS[0] not in repr(server)


def test_a_route_name_means_the_same_key_in_every_routing_mode() -> None:
    """A job accepted on "gpu-1 (balancer)" is collected as "gpu-1" in another mode, and back."""
    first_server = ServerPool(servers(1, 1))
    least_busy = ServerPool(servers(1, 1), routing="least-busy")
    assert first_server.routes[0] is first_server.route("gpu-1")
    assert least_busy.routes[0] is least_busy.route("gpu-1 (balancer)")
    assert first_server.route("gpu-1").key == least_busy.route("gpu-1 (balancer)").key
