"""200 jobs through the client, the fake's unreliable callbacks, and a mounted receiver."""

from __future__ import annotations

import asyncio
from collections import Counter

from modelslab_async import Client, ImageResult, Server, ServerPool, WebhookReceiver
from modelslab_async._webhooks import callbacks_of
from modelslab_async.testing import FakeModelsLab, FakeServerSpec

from ._helpers import FAST_POLL, make_request

JOBS = 200


async def test_unreliable_callbacks_resolve_each_job_exactly_once(
    receiver: WebhookReceiver,
) -> None:
    """30% dropped, 10% twice: every sent callback resolves its job once, dropped ones none."""
    specs = [
        FakeServerSpec(f"server-{n}", f"sk-e2e-key-{n}", slots=8, service_time=0.02)
        for n in range(3)
    ]
    fake = FakeModelsLab(
        specs, processing_threshold=0.01, seed=12, webhook_drop=0.3, webhook_duplicate=0.1
    )
    async with fake:
        pool = ServerPool([Server(key=s.key, name=s.name, max_concurrency=8) for s in specs])
        futures = {f"t-{n}": callbacks_of(receiver).expect(f"t-{n}") for n in range(JOBS)}
        async with Client(pool, base_url=fake.base_url, poll=FAST_POLL) as client:

            async def one(track: str) -> ImageResult:
                request = make_request(webhook=receiver.url_for(track), track_id=track)
                return await client.img2img(request)

            async with asyncio.TaskGroup() as group:
                tasks = {track: group.create_task(one(track)) for track in futures}
        await fake.wait_webhooks()
        attempts = fake.webhooks
    results = {track: task.result() for track, task in tasks.items()}
    assert JOBS == len({result.id for result in results.values()})
    outcomes = Counter((a.outcome, a.copy) for a in attempts)
    sent = {a.track_id for a in attempts if a.outcome == "sent" and a.copy == 1}
    dropped = {a.track_id for a in attempts if a.outcome == "dropped"}
    assert set(futures) == sent | dropped
    assert not sent & dropped
    assert {"sent", "dropped"} == {outcome for outcome, _ in outcomes}
    assert all(200 == a.http_status for a in attempts if a.outcome == "sent")
    for track, future in futures.items():
        if track in sent:
            assert (results[track].id, "success") == (future.result().id, future.result().status)
        else:
            assert not future.done()
    stats = receiver.stats
    assert len(sent) == stats["accepted"]
    assert outcomes["sent", 2] == stats["duplicates"]
    assert 0 == stats["forged"] + stats["unknown"] + stats["mismatched"] + stats["late"]
    assert 30 < len(dropped) < 90
    assert 5 < stats["duplicates"] < 40
