"""Dispatcher: bounded, lazy, one outcome per job, clean cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from modelslab_async import (
    Client,
    Dispatcher,
    EventKind,
    InvalidRequestError,
    Job,
    JobEvent,
    JobTimeoutError,
    ServerPool,
)
from modelslab_async._pool import scheduler_of
from modelslab_async.testing import MockRequest, MockTransport, json_response

from ._helpers import FAST_HEALTH, KEYS, make_request

Build = Callable[..., tuple[Client, MockTransport]]


def succeed(request: MockRequest) -> Any:
    return json_response({"status": "success", "id": 1, "output": ["https://cdn.example/x.png"]})


class CountingSource:
    """A lazy source of jobs (endless unless given a count) that counts what was pulled."""

    def __init__(self, count: int | None = None) -> None:
        self.pulled = 0
        self._count = count

    def __iter__(self) -> Iterator[Any]:
        request = make_request()
        for _ in itertools.count() if self._count is None else range(self._count):
            self.pulled += 1
            yield request


async def slow_success(request: MockRequest) -> Any:
    await asyncio.sleep(0.005)
    return succeed(request)


async def test_every_job_ends_as_exactly_one_outcome(make_mock_client: Build) -> None:
    """Successes and failures alike come back once each, with ids and indexes."""

    def handler(request: MockRequest) -> Any:
        if request.body["prompt"] == "bad":
            return json_response({"status": "error", "messege": "Model not found"})
        return succeed(request)

    client, _ = make_mock_client(handler)
    jobs = [make_request(prompt="bad" if i % 3 == 0 else "ok") for i in range(30)]
    async with client:
        outcomes = [o async for o in client.img2img_batch(jobs, concurrency=4)]
    assert list(range(30)) == sorted(o.index for o in outcomes)
    assert [str(i) for i in range(30)] == sorted((o.job_id for o in outcomes), key=int)
    assert 10 == sum(not o.ok for o in outcomes)
    assert all(o.error is None and o.result is not None for o in outcomes if o.ok)
    assert all(type(o.error).__name__ == "APIError" for o in outcomes if not o.ok)


async def test_input_is_read_lazily_and_at_most_concurrency_jobs_are_held(
    make_mock_client: Build,
) -> None:
    """With a huge generator, only about `concurrency` jobs are pulled ahead of the consumer."""
    source = CountingSource()
    client, _ = make_mock_client(slow_success)
    seen = 0
    async with (
        client,
        contextlib.aclosing(client.img2img_batch(source, concurrency=8)) as outcomes,
    ):
        async for _ in outcomes:
            seen += 1
            assert source.pulled - seen <= 8
            if seen == 200:
                break
    assert 200 <= source.pulled <= 208


async def test_a_slow_consumer_holds_back_the_input(make_mock_client: Build) -> None:
    """Outcomes waiting for the consumer count against the window, so memory stays bounded."""
    source = CountingSource(100)
    client, _ = make_mock_client(succeed)
    async with client:
        outcomes = client.img2img_batch(source, concurrency=5)
        first = await anext(outcomes)
        await asyncio.sleep(0.05)  # jobs finish, nobody reads their outcomes
        assert first.ok
        assert source.pulled <= 6
        rest = [o async for o in outcomes]
    assert 99 == len(rest)


async def test_ordered_mode_yields_in_input_order(make_mock_client: Build) -> None:
    """ordered=True hands outcomes back in input order even when jobs finish out of order."""

    async def handler(request: MockRequest) -> Any:
        await asyncio.sleep(0.02 if request.body["prompt"] == "slow" else 0)
        return succeed(request)

    client, _ = make_mock_client(handler)
    jobs = [make_request(prompt="slow" if i % 4 == 0 else "fast") for i in range(12)]
    async with client:
        outcomes = [o.index async for o in client.img2img_batch(jobs, concurrency=4, ordered=True)]
    assert list(range(12)) == outcomes


async def test_async_iterables_and_caller_ids(make_mock_client: Build) -> None:
    """Jobs may come from an async generator and carry their own ids."""

    async def jobs() -> AsyncIterator[Job]:
        for name in ("a", "b", "c"):
            yield Job(id=name, request=make_request())

    client, _ = make_mock_client(succeed)
    async with client:
        ids = {o.job_id async for o in client.img2img_batch(jobs())}
    assert {"a", "b", "c"} == ids


async def test_invalid_items_become_failed_outcomes(make_mock_client: Build) -> None:
    """An item that is not a job fails alone, with InvalidRequestError; nothing is sent for it."""
    client, transport = make_mock_client(succeed)
    async with client:
        outcomes = [
            o async for o in client.img2img_batch([make_request(), {"prompt": "x"}, make_request()])
        ]
    [bad] = [o for o in outcomes if not o.ok]
    assert (1, InvalidRequestError) == (bad.index, type(bad.error))
    assert 2 == len(transport.requests)


async def test_an_input_error_is_raised_after_the_admitted_jobs_finish(
    make_mock_client: Build,
) -> None:
    """If reading the input fails, the jobs already read still end, then the error surfaces."""

    def broken() -> Iterator[Any]:
        yield make_request()
        yield make_request()
        raise OSError("manifest unreadable")

    client, _ = make_mock_client(succeed)
    got = []

    async def consume() -> None:
        async for outcome in client.img2img_batch(broken()):
            got.append(outcome)

    async with client:
        with pytest.raises(OSError, match="manifest unreadable"):
            await consume()
    assert 2 == len(got)


async def test_resumed_jobs_are_collected_not_resubmitted(make_mock_client: Build) -> None:
    """A Job with a request_id is fetched with its server's key; nothing is submitted."""
    pool = ServerPool(KEYS[:2], routing="least-busy", health=FAST_HEALTH)
    client, transport = make_mock_client(succeed, servers=pool)
    async with client:
        [outcome] = [
            o
            async for o in client.img2img_batch([Job(id="j1", request_id="42", server="server-2")])
        ]
    assert outcome.ok
    [fetch] = transport.requests
    assert fetch.url.endswith("/fetch")
    assert {"request_id": "42"} == dict(fetch.body)
    assert scheduler_of(pool).routes[1].fingerprint == fetch.key_fingerprint


async def test_events_and_progress_totals(make_mock_client: Build) -> None:
    """Events carry the job id; totals count done, failed, retries and queued jobs."""
    calls = 0

    def handler(request: MockRequest) -> Any:
        nonlocal calls
        calls += 1
        if request.url.endswith("/fetch"):
            return succeed(request)
        if calls == 1:
            return json_response({"status": "error", "message": "boom"}, status=500)
        return json_response({"status": "processing", "id": 3, "eta": 0.001})

    client, _ = make_mock_client(handler)
    events: list[JobEvent] = []
    async with client:
        dispatcher = Dispatcher(client, concurrency=1, on_event=events.append)
        outcomes = [o async for o in dispatcher.run([Job(id="x", request=make_request())])]
    assert outcomes[0].ok
    kinds = [e.kind for e in events]
    assert [
        EventKind.SUBMITTED,
        EventKind.RETRIED,
        EventKind.SUBMITTED,
        EventKind.QUEUED,
        EventKind.DONE,
    ] == kinds
    assert {"x"} == {e.job_id for e in events}
    progress = dispatcher.progress
    assert (1, 1, 0, 1, 0, 0) == (
        progress.admitted,
        progress.done,
        progress.failed,
        progress.retries,
        progress.queued,
        progress.in_flight,
    )
    assert "done=1" in repr(dispatcher)


async def test_cancelling_the_consumer_cancels_jobs_and_frees_slots(
    make_mock_client: Build,
) -> None:
    """Cancelling mid-batch leaves no task behind and every slot free."""
    started = asyncio.Event()

    async def hang(request: MockRequest) -> Any:
        started.set()
        await asyncio.sleep(30)
        return succeed(request)

    client, _ = make_mock_client(hang, servers=ServerPool(KEYS, routing="least-busy"))
    async with client:
        before = asyncio.all_tasks()

        async def consume() -> None:
            async for _ in client.img2img_batch([make_request()] * 50, concurrency=6):
                pass

        task = asyncio.create_task(consume())
        await started.wait()
        await asyncio.sleep(0.01)
        assert 6 == sum(r.active for r in scheduler_of(client.pool).routes)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert before == asyncio.all_tasks()
        assert 0 == sum(r.active + r.in_flight for r in scheduler_of(client.pool).routes)


async def test_breaking_out_with_aclosing_cancels_the_rest(make_mock_client: Build) -> None:
    """Leaving the loop early (under aclosing) cancels the jobs still running."""
    calls = 0

    async def handler(request: MockRequest) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0 if calls == 1 else 30)
        return succeed(request)

    client, _ = make_mock_client(handler, servers=ServerPool(KEYS, routing="least-busy"))
    async with client:
        before = asyncio.all_tasks()
        async with contextlib.aclosing(
            client.img2img_batch([make_request()] * 20, concurrency=4)
        ) as outcomes:
            async for outcome in outcomes:
                assert outcome.ok
                break
        assert before == asyncio.all_tasks()
        assert 0 == sum(r.active for r in scheduler_of(client.pool).routes)


async def test_batch_timeout_ends_jobs_in_flight_and_stops_reading(make_mock_client: Build) -> None:
    """At the batch deadline, running jobs end with JobTimeoutError and no more input is read."""
    source = CountingSource(100)

    async def hang(request: MockRequest) -> Any:
        await asyncio.sleep(30)
        return succeed(request)

    client, _ = make_mock_client(hang)
    async with client:
        dispatcher = Dispatcher(client, concurrency=3, batch_timeout=0.05)
        outcomes = [o async for o in dispatcher.run(source)]
    assert 3 == len(outcomes) == source.pulled
    assert {JobTimeoutError} == {type(o.error) for o in outcomes}


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_concurrency_must_be_a_positive_integer(make_mock_client: Build, concurrency: Any) -> None:
    """A nonsense concurrency is refused up front."""
    client, _ = make_mock_client(succeed)
    with pytest.raises(InvalidRequestError, match="concurrency"):
        Dispatcher(client, concurrency=concurrency)


def test_dispatcher_defaults_to_the_pool_capacity(make_mock_client: Build) -> None:
    """Without a concurrency, the pool's capacity bounds the batch."""
    client, _ = make_mock_client(succeed, servers=ServerPool(KEYS, routing="least-busy"))
    assert 6 == Dispatcher(client).concurrency
