"""Admission: slots are handed over one at a time, in priority order, FIFO within a priority."""

from __future__ import annotations

import asyncio

import pytest

from modelslab_async import (
    HealthPolicy,
    InvalidRequestError,
    NoServerAvailableError,
    RateLimitError,
    Server,
    ServerPool,
)
from modelslab_async._pool import scheduler_of
from modelslab_async._scheduler import Scheduler
from modelslab_async._server import Lease

from ._helpers import KEYS, record_failure


def one_slot(**kwargs: object) -> tuple[ServerPool, Scheduler]:
    pool = ServerPool(
        [Server(key=KEYS[0], name="gpu-1", max_concurrency=1)], routing="least-busy", **kwargs
    )
    return pool, scheduler_of(pool)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_release_hands_the_slot_to_the_longest_waiter_and_wakes_no_one_else() -> None:
    """FIFO, wake-one: each release completes exactly one waiter, the oldest."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    order: list[int] = []

    async def wait(n: int) -> Lease:
        lease = await scheduler.acquire()
        order.append(n)
        return lease

    tasks = [asyncio.create_task(wait(n)) for n in range(5)]
    await settle()
    assert 5 == scheduler.waiting
    scheduler.release(held)
    await settle()
    assert [0] == order
    assert [True, False, False, False, False] == [t.done() for t in tasks]
    for expected in range(1, 5):
        scheduler.release(tasks[expected - 1].result())
        await settle()
        assert list(range(expected + 1)) == order
    scheduler.release(tasks[4].result())
    assert (0, 0) == (scheduler.active, scheduler.waiting)


async def test_higher_priority_goes_first_and_fifo_within_a_priority() -> None:
    """A web backend's interactive calls (priority 5) pass a bulk batch (priority 0)."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        lease = await scheduler.acquire(priority=priority)
        order.append(name)
        scheduler.release(lease)

    async with asyncio.TaskGroup() as group:
        for name, priority in [
            ("bulk-1", 0),
            ("web-1", 5),
            ("mid", 1),
            ("web-2", 5),
            ("bulk-2", 0),
        ]:
            group.create_task(wait(name, priority))
            await settle()
        scheduler.release(held)
    assert ["web-1", "web-2", "mid", "bulk-1", "bulk-2"] == order


async def test_the_starvation_guard_serves_the_oldest_after_max_overtakes() -> None:
    """A low-priority job that waits longest is passed by at most max_overtakes later ones."""
    _, scheduler = one_slot(max_overtakes=2)
    held = await scheduler.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        lease = await scheduler.acquire(priority=priority)
        order.append(name)
        await asyncio.sleep(0)
        scheduler.release(lease)

    async with asyncio.TaskGroup() as group:
        group.create_task(wait("low", 0))
        await settle()
        for n in range(6):
            group.create_task(wait(f"high-{n}", 9))
        await settle()
        scheduler.release(held)
    assert ["high-0", "high-1", "low"] == order[:3]


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    """The slot is not lost with the cancelled waiter: the next one in line gets it."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    first = asyncio.create_task(scheduler.acquire())
    second = asyncio.create_task(scheduler.acquire())
    await settle()
    scheduler.release(held)  # hands the slot to `first`, whose task has not run yet
    first.cancel()
    await settle()
    assert first.cancelled()
    lease = second.result()
    assert (1, 0) == (scheduler.active, scheduler.waiting)
    scheduler.release(lease)
    scheduler.release(lease)  # a second release of one lease changes nothing
    assert 0 == scheduler.active


async def test_a_waiter_cancelled_in_line_leaves_it() -> None:
    """Cancelling a waiting caller leaves no trace in the line."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    waiter = asyncio.create_task(scheduler.acquire())
    await settle()
    waiter.cancel()
    await settle()
    assert (1, 0) == (scheduler.active, scheduler.waiting)
    scheduler.release(held)
    assert 0 == scheduler.active


async def test_a_waiter_past_its_deadline_gets_a_typed_error_and_leaves_the_line() -> None:
    """No slot before the deadline: NoServerAvailableError, and the line is empty again."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    loop = asyncio.get_running_loop()
    with pytest.raises(NoServerAvailableError) as caught:
        await scheduler.acquire(deadline=loop.time() + 0.02)
    assert "gpu-1: full" in str(caught.value)
    assert 0 == scheduler.waiting
    scheduler.release(held)


async def test_cooling_servers_come_back_by_one_timer_without_any_release() -> None:
    """Every server cooling for 50 ms: the waiters are served when the cooldown ends."""
    pool = ServerPool(KEYS[:2], routing="round-robin")
    scheduler = scheduler_of(pool)
    for index in range(2):
        record_failure(pool, index, RateLimitError("slow down", retry_after=0.05))
    loop = asyncio.get_running_loop()
    started = loop.time()
    leases = await asyncio.gather(*(scheduler.acquire(deadline=started + 2) for _ in range(3)))
    assert 0.04 <= loop.time() - started < 1.0
    assert {"server-1", "server-2"} == {lease.route.name for lease in leases}


async def test_fetches_wait_for_their_own_server_and_do_not_block_others() -> None:
    """A job pinned to a full server waits for that server; a free one still takes new jobs."""
    pool = ServerPool(
        [Server(key=KEYS[0], name="a", max_concurrency=1), Server(key=KEYS[1], name="b")],
        routing="least-busy",
    )
    scheduler = scheduler_of(pool)
    a, _ = scheduler.routes
    held = await scheduler.acquire(pinned=a)
    pinned = asyncio.create_task(scheduler.acquire(pinned=a))
    await settle()
    assert not pinned.done()
    other = await scheduler.acquire()
    assert "b" == other.route.name
    scheduler.release(held)
    await settle()
    assert a is pinned.result().route


@pytest.mark.parametrize("servers", [1, 10, 1000])
async def test_routing_stays_exact_and_its_heap_bounded_at_any_size(servers: int) -> None:
    """Least-busy always takes the least loaded server, and stale heap entries are compacted."""
    pool = ServerPool(
        [
            Server(key=f"key-{n:04d}-xxxxxxxx", name=f"s{n}", max_concurrency=4)
            for n in range(servers)
        ],
        routing="least-busy",
    )
    scheduler = scheduler_of(pool)
    leases = [await scheduler.acquire() for _ in range(2 * servers)]
    assert {2} == {route.active for route in scheduler.routes}
    for _ in range(20):
        for lease in leases:
            scheduler.release(lease)
        leases = [await scheduler.acquire() for _ in range(2 * servers)]
    assert {2} == {route.active for route in scheduler.routes}
    assert len(scheduler._ready) <= 4 * servers + 16


def test_priority_and_max_overtakes_are_checked() -> None:
    """Bad settings are refused before anything runs, naming the field."""
    with pytest.raises(InvalidRequestError, match="max_overtakes"):
        ServerPool(KEYS[:1], max_overtakes=-1)
    with pytest.raises(InvalidRequestError, match="max_overtakes"):
        ServerPool(KEYS[:1], max_overtakes=True)


async def test_unhealthy_routes_are_not_chosen_and_health_is_not_scanned_per_job() -> None:
    """A cooling server rests out of the ready heap until its time is up."""
    pool = ServerPool(KEYS[:3], routing="least-busy", health=HealthPolicy())
    scheduler = scheduler_of(pool)
    record_failure(pool, 0, RateLimitError("slow", retry_after=60))
    picks = {(await scheduler.acquire()).route.name for _ in range(4)}
    assert "server-1" not in picks
    assert "resting" == scheduler.routes[0].place


async def test_a_newcomer_never_takes_the_slot_handed_to_an_earlier_waiter() -> None:
    """Released while a caller waits, the slot is that caller's: the releasing job asking
    again at once waits its turn (with wake-all, it took the slot back first)."""
    _, scheduler = one_slot()
    held = await scheduler.acquire()
    waiting = asyncio.create_task(scheduler.acquire())
    await settle()
    scheduler.release(held)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await scheduler.acquire()  # in this very task, before the waiter runs
    assert waiting.done()
    scheduler.release(waiting.result())
    assert (0, 0) == (scheduler.active, scheduler.waiting)
