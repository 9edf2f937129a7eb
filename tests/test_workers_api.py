"""Worker, process_job, results and status from Python, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from modelslab_async import Client, InvalidRequestError, Server, ServerPool
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, MockRequest, json_response

from ._helpers import FAST_POLL, make_request
from ._redis_server import RedisServer
from .cli_fixtures import job_line, write_manifest

KEYS = ("wk-key-alpha-000001", "wk-key-bravo-000002")


@pytest.fixture
async def batch(redis_server: RedisServer, redis_api: Any) -> AsyncIterator[Any]:
    """A fresh batch on the session's Redis, reclaiming after 0.4 s."""
    async with redis_api.Batch.from_url(
        redis_server.url, f"api-{uuid4().hex[:8]}", reclaim_after=0.4
    ) as made:
        yield made


def ledger_client(redis_api: Any, transport: Any = None, base_url: str = "http://x") -> Client:
    """A client whose submits go through the ledger (two servers of two slots)."""
    pool = ServerPool([Server(key=k, name=f"gpu-{n}") for n, k in enumerate(KEYS)])
    return Client(
        pool, base_url=base_url, poll=FAST_POLL, transport=redis_api.LedgerTransport(transport)
    )


async def test_an_accepted_job_is_collected_never_submitted_again(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """A worker that finds a job accepted by a dead worker polls the key that accepted it."""
    from modelslab_async.testing import MockTransport

    await redis_api.enqueue(batch, write_manifest(tmp_path / "m.jsonl", [job_line("a")]))
    dead = await batch.take("a", "dead-worker")
    await batch.begin_submit(dead, "gpu-1")
    await batch.accept(dead, "r-77", "gpu-1")
    await asyncio.sleep(0.45)  # its lease lapses

    def answer(request: MockRequest) -> Any:
        assert request.url.endswith("/fetch"), "an accepted job was submitted again"
        return json_response({"status": "success", "id": "r-77", "output": ["https://cdn/x.png"]})

    mock = MockTransport(answer)
    async with ledger_client(redis_api, mock) as client:
        record = await redis_api.process_job(batch, client, "a", owner="w2")
    assert ("succeeded", "r-77", "gpu-1") == (
        record["status"],
        record["request_id"],
        record["server"],
    )
    assert 1 == len(mock.requests)
    assert KEYS[1][:6] not in str(record)


async def test_process_job_runs_a_job_once_whoever_calls_it(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """Two deliveries at once: one runs, the other is refused (busy); a third call returns
    the record without a request."""
    from modelslab_async.testing import MockTransport

    await redis_api.add_job(batch, "one", make_request())
    assert not await redis_api.add_job(batch, "one", make_request())
    with pytest.raises(InvalidRequestError, match="another line"):
        await redis_api.add_job(batch, "one", make_request(prompt="changed"))

    async def answer(request: MockRequest) -> Any:
        await asyncio.sleep(0.05)
        return json_response({"status": "success", "id": 5, "output": ["https://cdn/o.png"]})

    mock = MockTransport(answer)
    async with ledger_client(redis_api, mock) as client:
        first, second = await asyncio.gather(
            redis_api.process_job(batch, client, "one"),
            redis_api.process_job(batch, client, "one"),
            return_exceptions=True,
        )
        outcomes = sorted([type(first).__name__, type(second).__name__])
        assert ["JobBusyError", "dict"] == outcomes
        again = await redis_api.process_job(batch, client, "one")
    assert 1 == len(mock.requests)
    assert "succeeded" == again["status"]
    track = mock.requests[0].body["track_id"]
    assert redis_api.track_id_for(batch.name, "one") == track


async def test_a_client_without_the_ledger_transport_is_refused(batch: Any, redis_api: Any) -> None:
    """Its submits would not be recorded before they leave: refused up front."""
    async with Client(list(KEYS)) as client:
        with pytest.raises(InvalidRequestError, match="LedgerTransport"):
            redis_api.Worker(batch, client)


async def test_workers_share_a_batch_and_cancel_hands_jobs_back(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """A cancelled worker hands its jobs back (owner cleared, entries reclaimed at once); a
    second worker finishes the batch; results, in manifest order or as finished, and status
    tell who did what, where."""
    lines = [job_line(f"j{n}", track_id=None) for n in range(12)]
    manifest = write_manifest(
        tmp_path / "m.jsonl", [{k: v for k, v in line.items() if v} for line in lines]
    )
    await redis_api.enqueue(batch, manifest)
    specs = [FakeServerSpec("gpu-0", KEYS[0], slots=2, service_time=0.3)]
    specs.append(FakeServerSpec("gpu-1", KEYS[1], slots=2, service_time=0.3))
    async with FakeModelsLab(specs, processing_threshold=0.1) as fake:
        async with ledger_client(redis_api, base_url=fake.base_url) as client:
            first = redis_api.Worker(
                batch, client, images=tmp_path / "one", name="one", concurrency=4
            )
            running = asyncio.create_task(first.run())
            await asyncio.sleep(0.2)  # four jobs accepted or mid-submit
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert 4 == first.report.handed_back
            owners = [await batch.db.hget(batch.job_key(f"j{n}"), "w") for n in range(12)]
            assert {None, ""} >= set(owners)
            second = redis_api.Worker(batch, client, images=tmp_path / "two", name="two")
            report = await second.run()
        submits = [r for r in fake.received if r.endpoint == "submit"]
    assert (12, 0, True) == (report.succeeded, report.failed, report.complete)
    assert 4 == report.taken_over
    assert 12 == len({r.body["track_id"] for r in submits})
    records = [r async for r in redis_api.results(batch)]
    assert [f"j{n}" for n in range(12)] == [r["id"] for r in records]
    assert {"two"} == {r["worker"] for r in records}
    assert all(Path(r["images"][0]).parent == tmp_path / "two" for r in records)
    finished = [r["id"] async for r in redis_api.results(batch, as_finished=True)]
    assert sorted(finished) == sorted(r["id"] for r in records)
    now = await redis_api.status(batch)
    assert now.complete
    assert 12 == now.states["succeeded"]
    assert {"one", "two"} == {w.name for w in now.workers}
    assert 12 == sum(s.succeeded for s in now.servers)
    assert now.rate > 0
    assert now.eta == 0
    assert 0 == now.pending_entries
    assert 0 == await batch.db.xlen(batch.key("stream"))  # finished entries are deleted
