"""Client(webhooks=...): callbacks race polling, polling never stops, lost answers come back."""

from __future__ import annotations

import asyncio
import collections
import io
import time

import aiohttp
import pytest

from modelslab_async import (
    Client,
    ImageResult,
    PollPolicy,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
    WebhookReceiver,
)
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from ._helpers import make_request

POLL = PollPolicy(
    initial_interval=0.05, min_interval=0.01, max_interval=0.2, webhook_grace=0.3, jitter=0
)


def specs(service: float = 0.05) -> list[FakeServerSpec]:
    return [
        FakeServerSpec(f"server-{n}", f"sk-webhook-client-key-{n}", slots=8, service_time=service)
        for n in range(3)
    ]


def pool_of(fake_specs: list[FakeServerSpec]) -> ServerPool:
    return ServerPool(
        [Server(key=s.key, name=s.name, max_concurrency=8) for s in fake_specs],
        routing="least-busy",
    )


async def test_200_jobs_with_lost_and_doubled_callbacks_all_succeed_exactly_once(
    receiver: WebhookReceiver,
) -> None:
    """30% of callbacks dropped, 10% sent twice: every job ends once, the dropped ones through
    polling; jobs whose callback came needed almost no fetch."""
    fake_specs = specs()
    fake = FakeModelsLab(
        fake_specs, processing_threshold=0.0, seed=3, webhook_drop=0.3, webhook_duplicate=0.1
    )
    async with (
        fake,
        Client(pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver) as client,
    ):
        results = [o async for o in client.img2img_batch([make_request() for _ in range(200)])]
        await fake.wait_webhooks()
    assert 200 == sum(o.ok for o in results)
    assert 200 == len({o.track_id for o in results})
    submits = [r for r in fake.received if r.endpoint == "submit"]
    fetches = [r for r in fake.received if r.endpoint == "fetch"]
    assert 200 == len(submits)
    assert receiver.stats["duplicates"] + receiver.stats["late"] > 0  # the doubled ones
    assert receiver.stats["accepted"] + len({r.request_id for r in fetches}) >= 200
    assert len(fetches) / 200 < 0.3 + 0.1  # about the dropped share, one look each
    assert not callbacks_book_size(receiver)


def callbacks_book_size(receiver: WebhookReceiver) -> int:
    from modelslab_async._webhooks import callbacks_of

    return len(callbacks_of(receiver).expected)


async def test_a_callback_returns_the_result_at_once_without_a_fetch(
    receiver: WebhookReceiver,
) -> None:
    """A queued job's callback comes before the first look: no fetch at all, and the result
    is returned within a few milliseconds of the callback."""
    fake_specs = specs(service=0.2)
    async with (
        FakeModelsLab(fake_specs, processing_threshold=0.0) as fake,
        Client(pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver) as client,
    ):
        started = time.monotonic()
        result = await client.img2img(make_request())
        returned = time.monotonic()
        await fake.wait_webhooks()
        assert 1 == len(fake.webhooks)
    assert result.output
    assert not [r for r in fake.received if r.endpoint == "fetch"]
    assert returned - started < 0.2 + POLL.webhook_grace  # before the first look was due


async def test_polling_still_ends_a_job_whose_callback_is_lost(
    receiver: WebhookReceiver,
) -> None:
    """Every callback dropped: the jobs end by polling, later and less often, never lost."""
    fake_specs = specs()
    async with (
        FakeModelsLab(fake_specs, processing_threshold=0.0, webhook_drop=1.0) as fake,
        Client(pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver) as client,
    ):
        results = await asyncio.gather(*(client.img2img(make_request()) for _ in range(5)))
    assert all(r.output for r in results)
    assert 0 == receiver.stats["accepted"]


async def test_a_lost_submit_answer_is_recovered_from_the_callback_not_resubmitted(
    receiver: WebhookReceiver,
) -> None:
    """The connection drops after the server accepted the job: the client waits for the
    callback (matched by track_id) and returns its result; the job ran once."""
    fake_specs = specs()
    async with FakeModelsLab(fake_specs, processing_threshold=0.0) as fake:
        fake.add_fault(Fault.drop(after_accept=True, count=1))
        async with Client(
            pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver
        ) as client:
            result = await client.img2img(make_request())
    assert result.output
    assert 1 == sum(r.endpoint == "submit" for r in fake.received)
    assert not result.possible_duplicate


async def test_without_a_callback_a_lost_answer_waits_then_resubmits_flagged(
    receiver: WebhookReceiver,
) -> None:
    """No callback within lost_answer_wait: the retry policy resubmits, flagged."""
    fake_specs = specs()
    poll = PollPolicy(
        initial_interval=0.05, min_interval=0.01, webhook_grace=0.1, lost_answer_wait=0.2
    )
    async with FakeModelsLab(fake_specs, processing_threshold=0.0, webhook_drop=1.0) as fake:
        fake.add_fault(Fault.drop(after_accept=True, count=1))
        async with Client(
            pool_of(fake_specs),
            base_url=fake.base_url,
            poll=poll,
            retry=RetryPolicy.no_wait(),
            webhooks=receiver,
        ) as client:
            result = await client.img2img(make_request())
    assert result.possible_duplicate
    assert 2 == sum(r.endpoint == "submit" for r in fake.received)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "id": 1, "output": ["http://evil/x.png"], "track_id": "nope"},
        {"status": "success", "output": ["http://evil/x.png"]},
    ],
    ids=["unknown-track", "no-track"],
)
async def test_forged_callbacks_are_refused_and_change_no_job(
    receiver: WebhookReceiver, body: dict[str, object]
) -> None:
    """A callback with a made-up token changes nothing: the job ends with the server's images."""
    fake_specs = specs(service=0.1)
    async with (
        FakeModelsLab(fake_specs, processing_threshold=0.0) as fake,
        Client(pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver) as client,
        aiohttp.ClientSession() as http,
    ):
        job = asyncio.create_task(client.img2img(make_request()))
        await asyncio.sleep(0.02)
        forged = receiver.public_url + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        async with http.post(forged, json=body) as answer:
            assert 404 == answer.status
        oversize = io.BytesIO(b"x" * 2_000_000)
        async with http.post(receiver.public_url + "/x", data=oversize) as answer:
            assert 413 == answer.status
        result: ImageResult = await job
    assert "evil" not in " ".join(result.output)
    assert receiver.stats["forged"] + receiver.stats["unknown"] >= 1


async def test_jobs_that_name_their_own_webhook_are_left_alone(
    receiver: WebhookReceiver,
) -> None:
    """A request with its own webhook URL keeps it; the client polls for it as usual."""
    fake_specs = specs()
    async with (
        FakeModelsLab(fake_specs, processing_threshold=0.0) as fake,
        Client(pool_of(fake_specs), base_url=fake.base_url, poll=POLL, webhooks=receiver) as client,
    ):
        await client.img2img(make_request(webhook="https://hooks.example.com/mine"))
    [submit] = [r for r in fake.received if r.endpoint == "submit"]
    assert "https://hooks.example.com/mine" == submit.body["webhook"]
    assert collections.Counter(r.endpoint for r in fake.received)["fetch"] >= 1


def test_timeouts_are_unchanged_by_webhooks() -> None:
    """Webhooks change how jobs are polled, not their deadlines."""
    assert Timeouts().job == 900
