"""Jobs under load: track_id, priorities, no retry storm, user code that cannot break things."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
from typing import Any

import pytest

from modelslab_async import (
    Client,
    ConnectError,
    Dispatcher,
    HealthPolicy,
    Job,
    JobEvent,
    ReadError,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
)
from modelslab_async._pool import scheduler_of
from modelslab_async._transport import _mapped, connection_limit
from modelslab_async.testing import MockRequest, MockTransport, json_response

from ._helpers import FAST_HEALTH, FAST_POLL, KEYS, make_request

SUCCESS = {"status": "success", "id": 7, "output": ["https://cdn.example/7.png"]}


def build(handler: Any, *, servers: Any = None, **kwargs: Any) -> Client:
    pool = servers if isinstance(servers, ServerPool) else ServerPool(KEYS[:1], health=FAST_HEALTH)
    kwargs.setdefault("retry", RetryPolicy.no_wait())
    return Client(
        pool, transport=MockTransport(handler), poll=FAST_POLL, timeouts=Timeouts(job=5), **kwargs
    )


async def test_every_job_carries_a_unique_track_id_on_its_result_events_and_errors() -> None:
    """Sent with the submit, found again on the result, every event, the outcome and the error."""
    sent: list[str] = []

    def handler(request: MockRequest) -> Any:
        sent.append(request.body["track_id"])
        if request.body["prompt"] == "fail":
            return json_response({"status": "failed", "message": "nsfw", "id": 3})
        return json_response(SUCCESS)

    events: list[JobEvent] = []
    async with build(handler) as client:
        results = [await client.img2img(make_request(), on_event=events.append) for _ in range(3)]
        own = await client.img2img(make_request(track_id="order-42"))
        outcomes = [
            o async for o in client.img2img_batch([make_request(prompt="fail"), make_request()])
        ]
    assert len(set(sent)) == len(sent) == 6
    assert [r.track_id for r in results] == sent[:3]
    assert {e.track_id for e in events} == set(sent[:3])
    assert "order-42" == own.track_id == sent[3]
    failed, ok = sorted(outcomes, key=lambda o: o.ok)
    assert failed.error is not None
    assert failed.track_id == getattr(failed.error, "track_id", None) is not None
    assert ok.result is not None
    assert ok.track_id == ok.result.track_id in sent


async def test_a_higher_priority_job_is_submitted_before_a_bulk_job_that_waited_longer() -> None:
    """On a full pool, an interactive call (priority 5) passes the bulk batch's next job."""
    release = asyncio.Event()
    order: list[str] = []

    async def handler(request: MockRequest) -> Any:
        order.append(request.body["prompt"])
        if request.body["prompt"] == "first":
            await release.wait()
        return json_response(SUCCESS)

    pool = ServerPool([Server(key=KEYS[0], max_concurrency=1)], routing="least-busy")
    async with build(handler, servers=pool) as client, asyncio.TaskGroup() as group:
        group.create_task(client.img2img(make_request(prompt="first")))
        await asyncio.sleep(0.01)
        group.create_task(client.img2img(make_request(prompt="bulk"), priority=0))
        await asyncio.sleep(0.01)
        group.create_task(client.img2img(make_request(prompt="web"), priority=5))
        await asyncio.sleep(0.01)
        release.set()
    assert ["first", "web", "bulk"] == order


async def test_a_server_that_answers_after_the_read_timeout_runs_a_job_at_most_twice() -> None:
    """No retry storm: a lost answer is resubmitted once, to another server, then the job fails
    flagged as a possible duplicate."""
    runs: collections.Counter[tuple[str, str | None]] = collections.Counter()

    def handler(request: MockRequest) -> Any:
        runs[(request.body["track_id"], request.key_fingerprint)] += 1
        raise ReadError("no answer within the read timeout", timed_out=True)

    pool = ServerPool(KEYS[:2], routing="least-busy", health=FAST_HEALTH)
    retry = RetryPolicy(wait_initial=0, wait_max=0)
    async with build(handler, servers=pool, retry=retry) as client:
        outcomes = [o async for o in client.img2img_batch([make_request() for _ in range(4)])]
    assert all(isinstance(o.error, ReadError) and o.possible_duplicate for o in outcomes)
    per_job = collections.Counter(track for track, _ in runs)
    assert {2} == set(per_job.values())
    assert {1} == set(runs.values())  # never twice on the same server


async def test_an_event_handler_that_raises_changes_nothing_and_is_logged_once_per_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every outcome arrives, no slot leaks, and the log says so once per kind of event."""

    def broken(event: JobEvent) -> None:
        raise RuntimeError("handler bug")

    async with build(lambda request: json_response(SUCCESS)) as client:
        with caplog.at_level(logging.ERROR, logger="modelslab_async"):
            outcomes = [
                o
                async for o in client.img2img_batch(
                    [make_request() for _ in range(20)], concurrency=4, on_event=broken
                )
            ]
            result = await client.img2img(make_request(), on_event=broken)
        assert 0 == scheduler_of(client.pool).active
    assert 20 == sum(o.ok for o in outcomes)
    assert result.output
    logged = [r for r in caplog.records if "on_event handler" in r.getMessage()]
    assert 2 == len(logged)  # "submitted" and "done", once each


async def test_ordered_outcomes_keep_admitting_past_a_slow_head_of_line_job() -> None:
    """Job 0 is slow: the next jobs still run (into a bounded reorder buffer), then all come
    out in input order."""
    slow = asyncio.Event()
    submitted: list[str] = []

    async def handler(request: MockRequest) -> Any:
        submitted.append(request.body["prompt"])
        if request.body["prompt"] == "0":
            await slow.wait()
        return json_response(SUCCESS)

    jobs = [make_request(prompt=str(n)) for n in range(30)]
    pool = ServerPool([Server(key=KEYS[0], max_concurrency=4)], routing="least-busy")
    async with build(handler, servers=pool) as client:
        dispatcher = Dispatcher(client, ordered=True, max_buffered=10)
        async with contextlib.aclosing(dispatcher.run(jobs)) as outcomes:
            first = asyncio.ensure_future(anext(outcomes))
            for _ in range(100):
                await asyncio.sleep(0.005)
                if len(submitted) >= 14:
                    break
            assert 14 == len(submitted)  # 4 running + 10 buffered: bounded, not stalled
            assert not first.done()
            slow.set()
            order = [(await first).job_id] + [o.job_id async for o in outcomes]
    assert [str(n) for n in range(30)] == order


async def test_a_failing_background_probe_never_cancels_the_users_code() -> None:
    """A probe that hits an unexpected error is logged; the code inside the client runs on."""

    def handler(request: MockRequest) -> Any:
        if request.url.endswith("/system_details"):
            raise RuntimeError("a bug in some transport")
        return json_response(SUCCESS)

    pool = ServerPool(KEYS[:1], health=HealthPolicy(probe_interval=0.01))
    async with build(handler, servers=pool) as client:
        await asyncio.sleep(0.05)
        result = await client.img2img(make_request())
    assert result.output


def test_the_connection_limit_leaves_room_under_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two connections a slot, but never more than the process's RLIMIT_NOFILE allows."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    assert 192 == connection_limit(500)
    assert 100 == connection_limit(4)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1_000_000, 1_000_000))
    assert 1008 == connection_limit(500)


async def test_running_out_of_descriptors_is_local_retried_and_not_held_against_the_server() -> (
    None
):
    """EMFILE maps to a local ConnectError: retried, and the server's health is untouched."""
    mapped = _mapped(OSError(errno.EMFILE, "Too many open files"), "gpu-1", "http://x")
    assert isinstance(mapped, ConnectError)
    assert mapped.local
    answers = iter([ConnectError("no descriptors", local=True)] * 3)

    def handler(request: MockRequest) -> Any:
        error = next(answers, None)
        if error is not None:
            raise error
        return json_response(SUCCESS)

    pool = ServerPool(KEYS[:1], health=HealthPolicy(failure_threshold=1))
    async with build(handler, servers=pool) as client:
        result = await client.img2img(make_request())
    assert result.output
    assert ("closed", 0) == (pool.snapshot()[0].state, pool.snapshot()[0].failures)


async def test_priority_and_jobs_are_checked_before_anything_is_sent() -> None:
    """A priority that is not an int is a typed error naming the field."""
    from modelslab_async import InvalidRequestError

    async with build(lambda request: json_response(SUCCESS)) as client:
        with pytest.raises(InvalidRequestError, match="priority"):
            await client.img2img(make_request(), priority="high")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="priority"):
        Job(id="x", request=make_request(), priority=1.5)  # type: ignore[arg-type]
