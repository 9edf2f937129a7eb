"""The breaker's rule: consecutive failures open it, and only its probe closes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelslab_async import (
    Client,
    ConnectError,
    HealthPolicy,
    NoServerAvailableError,
    RetryPolicy,
    ServerError,
    ServerPool,
    Timeouts,
)
from modelslab_async._pool import scheduler_of
from modelslab_async.testing import MockRequest, MockTransport, json_response

from ._helpers import FAST_POLL, KEYS, make_request, record_failure

SUCCESS = {"status": "success", "id": 7, "output": ["https://cdn.example/7.png"]}
ERROR_500 = json_response({"status": "error", "message": "Internal server error"}, 500)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_sporadic_errors_never_take_a_healthy_server_out() -> None:
    """300 jobs, every 33rd call a 500: each is retried, and the breaker never opens, because a
    success in between resets the count."""
    calls = 0

    def handler(request: MockRequest) -> Any:
        nonlocal calls
        calls += 1
        return ERROR_500 if calls % 33 == 0 else json_response(SUCCESS)

    pool = ServerPool(KEYS[:1], health=HealthPolicy(failure_threshold=5, reset_timeout=60))
    client = Client(
        pool,
        transport=MockTransport(handler, record=False),
        retry=RetryPolicy.no_wait(),
        poll=FAST_POLL,
    )
    opened = []
    async with client:
        results = await asyncio.gather(*(client.img2img(make_request()) for _ in range(300)))
        opened = [shot.state for shot in pool.snapshot() if shot.state != "closed"]
    assert 300 == len(results)
    assert not opened
    assert 9 == pool.snapshot()[0].failures


def test_consecutive_failures_open_it_and_a_success_while_closed_resets_the_count() -> None:
    """Four failures, a success, four failures: still closed at a threshold of five."""
    pool = ServerPool(KEYS[:1], health=HealthPolicy(failure_threshold=5))
    scheduler = scheduler_of(pool)
    for _ in range(4):
        record_failure(pool, 0, ServerError("oops", status_code=500))
    scheduler.record_success(scheduler.routes[0], probe=False)
    for _ in range(4):
        record_failure(pool, 0, ServerError("oops", status_code=500))
    assert "closed" == pool.snapshot()[0].state
    record_failure(pool, 0, ServerError("oops", status_code=500))
    assert "open" == pool.snapshot()[0].state


async def test_only_the_probe_closes_an_open_breaker_and_late_answers_change_nothing() -> None:
    """A success from a call that started before the breaker opened does not close it; while
    it is open, nothing but the one probe gets a slot."""
    clock = Clock()
    pool = ServerPool(
        KEYS[:1],
        routing="least-busy",
        health=HealthPolicy(failure_threshold=2, reset_timeout=10),
        clock=clock,
    )
    scheduler = scheduler_of(pool)
    route = scheduler.routes[0]
    early = await scheduler.acquire()  # a call that started while the breaker was closed
    for _ in range(2):
        record_failure(pool, 0, ServerError("oops", status_code=500))
    assert "open" == pool.snapshot()[0].state
    scheduler.record_success(route, probe=early.probe)  # its late answer
    assert "open" == pool.snapshot()[0].state
    with pytest.raises(NoServerAvailableError):
        await scheduler.acquire(deadline=clock.now + 1)
    clock.now += 10
    probe = await scheduler.acquire(deadline=clock.now + 1)
    assert probe.probe
    with pytest.raises(NoServerAvailableError):  # the probe is out: nobody else
        await scheduler.acquire(deadline=clock.now)
    record_failure(pool, 0, ServerError("late", status_code=500))  # not the probe: ignored
    assert "half-open" == pool.snapshot()[0].state
    scheduler.record_success(route, probe=probe.probe)
    assert "closed" == pool.snapshot()[0].state
    scheduler.release(probe)
    scheduler.release(early)
    assert 0 == scheduler.active


def test_local_failures_never_count_against_a_server() -> None:
    """Running out of file descriptors is ours, not the server's."""
    pool = ServerPool(KEYS[:1], health=HealthPolicy(failure_threshold=1))
    for _ in range(5):
        record_failure(pool, 0, ConnectError("EMFILE", local=True))
    assert ("closed", 0) == (pool.snapshot()[0].state, pool.snapshot()[0].failures)


async def test_a_cancelled_call_never_counts_against_a_server() -> None:
    """A job cancelled while its submit is in flight leaves the server's health untouched."""
    started = asyncio.Event()

    async def handler(request: MockRequest) -> Any:
        started.set()
        await asyncio.sleep(10)
        return json_response(SUCCESS)

    pool = ServerPool(KEYS[:1], health=HealthPolicy(failure_threshold=1))
    async with Client(pool, transport=MockTransport(handler), timeouts=Timeouts(job=5)) as client:
        job = asyncio.create_task(client.img2img(make_request()))
        await started.wait()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    shot = pool.snapshot()[0]
    assert ("closed", 0, 0) == (shot.state, shot.failures, shot.active)
