"""End to end against FakeModelsLab: a real aiohttp server on loopback, real sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from attrs import evolve

from modelslab_async import (
    APIError,
    AuthenticationError,
    Client,
    Endpoints,
    HealthPolicy,
    Job,
    JobFailedError,
    JobOutcome,
    ModelsLabError,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
    fingerprint,
)
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from ._helpers import make_request

HEALTH = HealthPolicy(
    failure_threshold=3, reset_timeout=0.3, rate_limit_cooldown=0.2, busy_cooldown=0.05
)
RETRY = RetryPolicy(attempts=8, wait_initial=0.01, wait_max=0.05, retry_after_max=1.0)


def client_for(
    fake: FakeModelsLab, *, routing: Any = "first-server", capacities: Any = None, **kwargs: Any
) -> Client:
    servers = [
        Server(
            key=key, name=spec.name, max_concurrency=(capacities or {}).get(spec.name, spec.slots)
        )
        for key, spec in zip(fake.keys, fake.specs, strict=True)
    ]
    kwargs.setdefault("retry", RETRY)
    return Client(
        ServerPool(servers, routing=routing, health=kwargs.pop("health", HEALTH)),
        base_url=fake.base_url,
        timeouts=kwargs.pop("timeouts", Timeouts(job=20.0, submit_read=5.0, fetch_read=2.0)),
        **kwargs,
    )


def client_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this process other than the fake server's own request handlers."""
    return {
        task
        for task in asyncio.all_tasks()
        if "RequestHandler" not in getattr(task.get_coro(), "__qualname__", "")
    }


@contextlib.asynccontextmanager
async def started(*specs: FakeServerSpec, threshold: float = 0.2) -> AsyncIterator[FakeModelsLab]:
    async with FakeModelsLab(list(specs), processing_threshold=threshold, seed=7) as fake:
        yield fake


def spec(name: str, slots: int = 2, service: float = 0.02) -> FakeServerSpec:
    return FakeServerSpec(
        name=name, key=f"key-of-{name}-0123456789", slots=slots, service_time=service
    )


async def test_one_quick_job_end_to_end(fake: FakeModelsLab) -> None:
    """A job that finishes within the server's window comes back with downloadable PNGs."""
    async with client_for(fake) as client:
        result = await client.img2img(make_request(samples=2))
        image = await client.download(result.output[0])
    assert 2 == len(result.output)
    assert (200, b"\x89PNG\r\n\x1a\n") == (image.status, image.body[:8])
    assert 1 == result.attempts
    assert "server-1 (balancer)" == result.server


async def test_a_slow_job_is_queued_and_collected_with_the_submitting_key() -> None:
    """processing → fetch, with the key that submitted it (the fake refuses any other)."""
    async with started(spec("a", service=0.3), spec("b", service=0.3)) as fake:
        async with client_for(fake, routing="least-busy") as client:
            result = await client.img2img(make_request())
        submits = [r for r in fake.received if r.endpoint == "submit"]
        fetches = [r for r in fake.received if r.endpoint == "fetch"]
    assert 1 == len(submits)
    assert fetches
    assert {submits[0].key_fingerprint} == {f.key_fingerprint for f in fetches}
    assert {result.id} == {f.request_id for f in fetches}
    assert len(fetches) <= 3


async def test_sdk_paths_work_against_the_fake() -> None:
    """The SDKs' images/img2img and images/fetch/{id} paths work end to end."""
    async with started(spec("a", service=0.3)) as fake:
        async with client_for(fake, endpoints=Endpoints.sdk()) as client:
            result = await client.img2img(make_request())
        paths = {r.path.rsplit("/", 1)[0] for r in fake.received}
    assert result.output
    assert {"/api/v1/enterprise/images", "/api/v1/enterprise/images/fetch"} == paths


@pytest.mark.parametrize(
    "fault",
    [
        Fault.busy(count=2),
        Fault.malformed(count=1),
        Fault.server_error(status=500, count=2),
        Fault.server_error(status=502, count=1),
        Fault.drop(count=1),
        Fault.drop(after_accept=True, count=1),
        Fault.rate_limit(retry_after=0.1, count=2),
        Fault.slow(0.05, count=1),
    ],
    ids=lambda fault: f"{fault.kind}-{fault.status}-{fault.after_accept}",
)
async def test_transient_faults_are_survived(fault: Fault) -> None:
    """Every transient fault the fake can inject ends in a result."""
    async with started(spec("a")) as fake:
        fake.add_fault(fault)
        async with client_for(fake) as client:
            result = await client.img2img(make_request())
    assert result.output
    assert result.possible_duplicate is (fault.kind in ("drop", "malformed") or fault.status == 502)


@pytest.mark.parametrize(
    "fault",
    [Fault.malformed(count=2), Fault.server_error(status=502, count=2), Fault.drop(count=2)],
    ids=lambda fault: f"{fault.kind}-{fault.status}",
)
async def test_a_job_that_may_have_started_is_resubmitted_once_by_default(fault: Fault) -> None:
    """Two lost answers in a row: the job ran on the server at most twice, then fails, flagged;
    allowing two resubmits gets it through."""
    async with started(spec("a")) as fake:
        fake.add_fault(fault)
        async with client_for(fake) as client:
            with pytest.raises(ModelsLabError) as caught:
                await client.img2img(make_request())
        assert 2 == sum(r.endpoint == "submit" for r in fake.received)
        assert caught.value.possible_duplicate
        fake.add_fault(fault)
        async with client_for(fake, retry=evolve(RETRY, max_resubmits=2)) as client:
            result = await client.img2img(make_request())
    assert result.possible_duplicate


async def test_error_bodies_under_200_and_validation_messages_are_api_errors() -> None:
    """An error body under HTTP 200 (the legacy `messege` form too) is an APIError, not retried."""
    async with started(spec("a")) as fake:
        fake.add_fault(Fault.error_200("Model not found: realistic-vision-51"))
        async with client_for(fake) as client:
            with pytest.raises(APIError) as caught:
                await client.img2img(make_request())
            with pytest.raises(APIError) as invalid:
                await client.img2img(make_request(extra={"loadbalancer": "maybe"}))
    assert "Model not found: realistic-vision-51" == caught.value.api_message
    assert "loadbalancer" in invalid.value.api_message
    assert 2 == sum(r.endpoint == "submit" for r in fake.received)


async def test_an_invalid_key_is_an_authentication_error() -> None:
    """A key the account does not know is refused, typed, and the key is not in the message."""
    async with started(spec("a")) as fake:
        async with Client(["not-a-real-key-000"], base_url=fake.base_url, retry=RETRY) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.img2img(make_request())
    assert "not-a-real-key-000" not in str(caught.value) + repr(caught.value)
    assert 401 == caught.value.status_code


async def test_first_server_mode_sends_every_submit_with_the_first_key() -> None:
    """The documented path: all submits carry the first key and the fake balances them."""
    async with started(spec("a"), spec("b"), spec("c")) as fake:
        async with client_for(fake) as client:
            outcomes = [o async for o in client.img2img_batch([make_request()] * 18)]
        submits = [r for r in fake.received if r.endpoint == "submit"]
        served = {s.name: s.accepted for s in fake.stats()}
    assert all(o.ok for o in outcomes)
    assert {fingerprint(fake.keys[0])} == {r.key_fingerprint for r in submits}
    assert all(r.balanced and r.body.get("loadbalancer") == "yes" for r in submits)
    assert all(count > 0 for count in served.values())


async def test_first_server_path_fails_over_and_returns_after_recovery() -> None:
    """When the first-key path breaks, work moves to the other keys, and returns after a probe."""
    async with started(spec("a"), spec("b"), spec("c")) as fake:
        fake.add_fault(Fault.server_error(status=503, route="balancer", count=None))
        async with client_for(fake) as client:
            broken = [o async for o in client.img2img_batch([make_request()] * 12)]
            during = [r for r in fake.received if r.endpoint == "submit" and r.status == 200]
            assert "open" == client.pool.snapshot()[0].state
            fake.clear_faults()
            fake.clear_received()
            await asyncio.sleep(HEALTH.reset_timeout)
            healed = [o async for o in client.img2img_batch([make_request()] * 12)]
        after = [r for r in fake.received if r.endpoint == "submit"]
    assert all(o.ok for o in broken + healed)
    assert {fingerprint(fake.keys[1]), fingerprint(fake.keys[2])} == {
        r.key_fingerprint for r in during
    }
    assert {"b", "c"} == {o.server for o in broken}
    assert {fingerprint(fake.keys[0])} == {r.key_fingerprint for r in after[-6:]}
    assert "a (balancer)" == healed[-1].server


async def test_least_busy_gives_a_twice_as_fast_server_about_twice_the_jobs() -> None:
    """With equal slots, the server that finishes twice as fast serves about twice as many jobs."""
    async with started(
        spec("slow", slots=2, service=0.04), spec("fast", slots=2, service=0.02)
    ) as fake:
        async with client_for(fake, routing="least-busy") as client:
            outcomes = [o async for o in client.img2img_batch([make_request()] * 120)]
        stats = {s.name: s for s in fake.stats()}
    share = collections.Counter(o.server for o in outcomes)
    assert all(o.ok for o in outcomes)
    assert 1.6 <= share["fast"] / share["slow"] <= 2.6
    assert all(s.max_outstanding <= s.slots for s in stats.values())


async def test_a_rate_limited_server_is_cooled_for_its_retry_after_while_work_moves_on() -> None:
    """A 429 with Retry-After moves work to another server at once and cools the first that long."""
    async with started(spec("a"), spec("b")) as fake:
        fake.add_fault(Fault.rate_limit(retry_after=2, route="a", count=1))
        async with client_for(fake, routing="round-robin") as client:
            first = await client.img2img(make_request())
            cooling = client.pool.snapshot()[0]
            rest = [o async for o in client.img2img_batch([make_request()] * 6)]
        submits_to_a = [r for r in fake.received if r.endpoint == "submit" and r.server == "a"]
    assert "b" == first.server
    assert ("cooling", True) == (cooling.state, 1.5 < cooling.cooldown_left <= 2.0)
    assert {"b"} == {o.server for o in rest}
    assert 1 == len(submits_to_a)


async def test_two_thousand_jobs_with_injected_faults_end_with_exactly_two_thousand_outcomes() -> (
    None
):
    """10% faults and a server down for a while: every job ends once, none lost, none doubled."""
    specs = [
        spec("a", slots=4, service=0.005),
        spec("b", slots=4, service=0.005),
        spec("c", slots=4, service=0.2),
    ]
    async with started(*specs, threshold=0.1) as fake:
        for fault in (
            Fault.rate_limit(retry_after=0.05, probability=0.03, count=None),
            Fault.server_error(status=500, probability=0.03, count=None),
            Fault.drop(probability=0.02, count=None),
            Fault.busy(probability=0.02, count=None),
            Fault.server_error(status=503, endpoint="fetch", probability=0.05, count=None),
        ):
            fake.add_fault(fault)

        async def outage() -> None:
            await asyncio.sleep(0.3)
            fake.set_down("b", True)
            await asyncio.sleep(0.5)
            fake.set_down("b", False)

        # A downed server answers 502, which may mean the job started: by default such a job is
        # submitted again only once. This run is about none lost and none doubled under
        # faults, so it allows a few more resubmits.
        retry = evolve(RETRY, max_resubmits=4)
        async with client_for(fake, routing="least-busy", retry=retry) as client:
            jobs = (Job(id=f"job-{i}", request=make_request()) for i in range(2000))
            async with asyncio.TaskGroup() as group:
                group.create_task(outage())
                outcomes: list[JobOutcome] = [
                    o async for o in client.img2img_batch(jobs, concurrency=12)
                ]
            snapshot = client.pool.snapshot()
    ids = [o.job_id for o in outcomes]
    assert 2000 == len(ids) == len(set(ids))
    assert {f"job-{i}" for i in range(2000)} == set(ids)
    assert all((o.result is None) != (o.error is None) for o in outcomes)
    assert sum(o.ok for o in outcomes) >= 1990
    assert 0 == sum(s.active for s in snapshot)


async def test_cancelling_a_batch_against_the_fake_frees_everything() -> None:
    """Cancelling mid-batch leaves no task and no slot behind."""
    async with started(spec("a", service=0.5), spec("b", service=0.5)) as fake:
        async with client_for(fake, routing="least-busy") as client:
            before = client_tasks()

            async def consume() -> None:
                async for _ in client.img2img_batch([make_request()] * 40):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            assert 4 == sum(s.active for s in client.pool.snapshot())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert before == client_tasks()
            assert 0 == sum(s.active + s.in_flight + s.processing for s in client.pool.snapshot())


async def test_resuming_collects_an_accepted_job_by_id() -> None:
    """A job accepted in one process can be collected in another with fetch(id, server=...)."""
    async with started(spec("a", service=0.3), spec("b", service=0.3)) as fake:
        async with client_for(fake, routing="least-busy", timeouts=Timeouts(job=0.05)) as client:
            with pytest.raises(Exception) as caught:
                await client.img2img(make_request())
        request_id, server = caught.value.request_id, caught.value.server  # type: ignore[attr-defined]
        async with client_for(fake, routing="least-busy") as client:
            result = await client.fetch(request_id, server=server)
    assert request_id == result.id
    assert 1 == sum(r.endpoint == "submit" for r in fake.received)


async def test_system_details_reports_each_server() -> None:
    """system_details answers for each server's key."""
    async with started(spec("a"), spec("b")) as fake:
        async with client_for(fake, routing="least-busy") as client:
            details = [await client.system_details(name) for name in ("a", "b")]
    assert [("a", "ok"), ("b", "ok")] == [(d.server, d.status) for d in details]


@pytest.mark.parametrize("service", [0.02, 0.4], ids=["held", "queued"])
async def test_a_job_that_fails_on_the_server_is_a_job_failed_error(service: float) -> None:
    """A job accepted and then failed ends with JobFailedError, its id and message; no resubmit."""
    async with started(spec("a", service=service)) as fake:
        fake.add_fault(Fault.fail("CUDA out of memory"))
        async with client_for(fake) as client:
            with pytest.raises(JobFailedError) as caught:
                await client.img2img(make_request())
        submits = [r for r in fake.received if r.endpoint == "submit"]
    assert "CUDA out of memory" == caught.value.api_message
    assert submits[0].request_id == caught.value.request_id
    assert 1 == len(submits)
