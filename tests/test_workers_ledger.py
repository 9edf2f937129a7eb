"""The ledger's Lua transitions and enqueue, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from modelslab_async import InvalidRequestError
from modelslab_async._cli._journal import Record

from ._redis_server import RedisServer
from .cli_fixtures import job_line, write_manifest


@pytest.fixture
async def batch(redis_server: RedisServer, redis_api: Any) -> AsyncIterator[Any]:
    """A fresh batch (its own name) on the session's Redis, reclaiming after 0.3 s."""
    async with redis_api.Batch.from_url(
        redis_server.url, f"t-{uuid4().hex[:8]}", reclaim_after=0.3, max_deliveries=2
    ) as made:
        yield made


async def add(batch: Any, redis_api: Any, tmp_path: Path, count: int = 3) -> Any:
    lines = [job_line(f"j{n}") for n in range(count)]
    return await redis_api.enqueue(batch, write_manifest(tmp_path / "m.jsonl", lines))


async def test_enqueue_is_idempotent_and_refuses_a_changed_line(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """The same manifest adds nothing the second time; a changed line adds nothing at all and
    names the job; a bad line is a failed record at once."""
    lines: list[Any] = [job_line("a"), "not json", job_line("b")]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    first = await redis_api.enqueue(batch, manifest)
    again = await redis_api.enqueue(batch, manifest)
    assert (3, 1, 3) == (first.added, first.bad_lines, first.total)
    assert (0, 3, 3) == (again.added, again.present, again.total)
    write_manifest(manifest, [job_line("a"), "not json", job_line("b", prompt="x"), job_line("c")])
    with pytest.raises(InvalidRequestError, match=r"line 3.*'b' is already in the batch"):
        await redis_api.enqueue(batch, manifest)
    counts = await batch.counts()
    assert (3, 2, 1) == (counts["total"], counts["queued"], counts["failed"])
    records = [r async for r in redis_api.results(batch)]
    assert ["a", "2", "b"] == [r["id"] for r in records]
    assert ("failed", 2) == (records[1]["status"], records[1]["line"])
    assert ["queued", "queued"] == [records[0]["status"], records[2]["status"]]


async def test_a_job_goes_through_every_state_once(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """queued -> submitting -> accepted -> generated -> succeeded; an accepted job is never
    submitted again, and a finished one keeps only its record."""
    await add(batch, redis_api, tmp_path, 1)
    claim = await batch.take("j0", "w1")
    assert ("queued", 1, False) == (claim.state, claim.deliveries, claim.possible_duplicate)
    assert "a cat, job j0" == claim.body["prompt"]
    assert 1 == await batch.begin_submit(claim, "gpu-a")
    assert 1 == await batch.accept(claim, "r-1", "gpu-a")
    assert -1 == await batch.begin_submit(claim, "gpu-b")  # accepted: never again
    status, attempts, _, dup = await batch.generate(claim, "r-1", "gpu-a", ["u1"], False)
    assert (1, 1, False) == (status, attempts, dup)
    record = Record(id="j0", status="succeeded", request_id="r-1", server="gpu-a", worker="w1")
    assert 1 == await batch.finish("j0", record, claim=claim)
    assert 0 == await batch.finish("j0", record, claim=claim)  # one outcome only
    assert [] == await batch.heartbeat("w1", [(claim, "")], 0)  # finished, not lost
    left = await batch.db.hgetall(batch.job_key("j0"))
    assert {"s", "h", "n", "r"} == set(left)
    assert "final" == await batch.take("j0", "w2")
    counts = await batch.counts()
    assert (1, 0, 0) == (counts["succeeded"], counts["accepted"], counts["generated"])


async def test_a_job_found_mid_submit_is_flagged_and_the_old_owner_fenced(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """A live lease makes the job busy; once it lapses the new owner takes it, flagged
    possible_duplicate, and every transition of the old owner is refused."""
    await add(batch, redis_api, tmp_path, 1)
    old = await batch.take("j0", "w1")
    assert 1 == await batch.begin_submit(old, "gpu-a")
    assert "busy" == await batch.take("j0", "w2")
    await asyncio.sleep(0.35)  # the lease (reclaim_after) lapses: w1 stopped beating
    new = await batch.take("j0", "w2")
    assert ("submitting", True, 2) == (new.state, new.possible_duplicate, new.deliveries)
    assert 0 == await batch.accept(old, "r-old", "gpu-a")
    assert 0 == await batch.begin_submit(old, "gpu-a")
    assert -1 == await batch.finish("j0", Record(id="j0", status="failed"), claim=old)
    assert [0] == await batch.heartbeat("w1", [(old, "")], 1)  # lost
    assert [] == await batch.heartbeat("w2", [(new, "")], 1)


async def test_a_handed_back_job_is_reclaimed_at_once_without_counting(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """Hand-back forgets the owner and makes the entry idle, so any worker reclaims it now;
    it is not a delivery for the dead-letter rule."""
    await add(batch, redis_api, tmp_path, 1)
    stream = batch.key("stream")
    ((_, [(entry, _)]),) = await batch.db.xreadgroup("workers", "w1", {stream: ">"}, count=1)
    claim = await batch.take("j0", "w1")
    assert 1 == await batch.hand_back(claim, entry)
    _, claimed, *_ = await batch.db.xautoclaim(stream, "workers", "w2", 1000, "0-0")
    assert [entry] == [e for e, _ in claimed]
    again = await batch.take("j0", "w2")
    assert (1, "queued") == (again.deliveries, again.state)


async def test_a_job_whose_workers_keep_dying_is_dead_lettered(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """Taken more than max_deliveries times without an outcome: failed, DeadLetterError."""
    from modelslab_async.redis._jobrun import JobSetup, run_claim

    await add(batch, redis_api, tmp_path, 1)
    for owner in ("w1", "w2"):
        await batch.take("j0", owner)
        await asyncio.sleep(0.35)
    claim = await batch.take("j0", "w3")
    record = await run_claim(JobSetup(batch=batch, client=None, worker="w3"), claim)  # type: ignore[arg-type]
    assert ("failed", "DeadLetterError") == (record.status, record.error_type)
    assert ["j0"] == await batch.db.lrange(batch.key("dead"), 0, -1)
    assert 1 == (await batch.counts())["dead"]


async def test_a_ttl_bounds_how_long_finished_records_stay(
    batch: Any, redis_api: Any, tmp_path: Path
) -> None:
    """With ttl, a finished job's hash expires; results then says it expired."""
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line("a")])
    await redis_api.enqueue(batch, manifest, ttl=60)
    claim = await batch.take("a", "w1")
    await batch.finish("a", Record(id="a", status="failed"), claim=claim)
    assert 55_000 < await batch.db.pttl(batch.job_key("a")) <= 60_000
    await batch.db.delete(batch.job_key("a"))
    assert [{"id": "a", "status": "expired"}] == [r async for r in redis_api.results(batch)]


async def test_no_key_or_secret_reaches_redis(batch: Any, redis_api: Any, tmp_path: Path) -> None:
    """What a batch stores names servers only; bodies never hold a key."""
    await add(batch, redis_api, tmp_path, 2)
    claim = await batch.take("j0", "w1")
    await batch.begin_submit(claim, "gpu-a")
    keys = await batch.db.keys(batch.tag + "*")
    dump = json.dumps({k: str(await batch.db.dump(k)) for k in keys})
    assert '"key"' not in dump
    assert "sk-" not in dump
