"""Client.img2img: submit, retry by the rules, poll with the submitting key, one deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from modelslab_async import (
    APIError,
    AuthenticationError,
    Client,
    ConnectError,
    Endpoints,
    EventKind,
    HealthPolicy,
    JobEvent,
    JobFailedError,
    JobTimeoutError,
    PollPolicy,
    RateLimitError,
    ReadError,
    RetryPolicy,
    ServerBusyError,
    ServerError,
    ServerPool,
    fingerprint,
)
from modelslab_async.testing import MockRequest, MockTransport, json_response

from ._helpers import FAST_HEALTH, KEYS, make_request, record_failure

SUCCESS = {
    "status": "success",
    "id": 11,
    "output": ["https://cdn.example/1.png"],
    "generationTime": 1.5,
    "meta": {"seed": 4},
}
Build = Callable[..., tuple[Client, MockTransport]]


def script(*answers: Any) -> Callable[[MockRequest], Any]:
    """A handler answering submits from a script; the last answer repeats. Fetches succeed."""
    queue = list(answers)

    def handler(request: MockRequest) -> Any:
        if request.url.endswith("/fetch") or "/fetch/" in request.url:
            return json_response(SUCCESS)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


async def test_a_quick_job_returns_its_images(make_mock_client: Build) -> None:
    """An immediate success comes back as an ImageResult naming its server."""
    client, transport = make_mock_client(script(json_response(SUCCESS)))
    async with client:
        result = await client.img2img(make_request(samples=1))
    assert ("11", ("https://cdn.example/1.png",), 1.5, 1) == (
        result.id,
        result.output,
        result.generation_time,
        result.attempts,
    )
    assert {"seed": 4} == dict(result.meta)
    assert "server-1 (balancer)" == result.server
    [sent] = transport.requests
    assert "https://modelslab.com/api/v1/enterprise/img2img" == sent.url
    assert fingerprint(KEYS[0]) == sent.key_fingerprint
    assert {
        "model_id": "realistic-vision-51",
        "prompt": "a cat",
        "init_image": "https://example.com/cat.png",
        "samples": 1,
        "loadbalancer": "yes",
        "track_id": result.track_id,
    } == dict(sent.body)
    assert result.track_id
    assert result.track_id.startswith("mla-")


async def test_a_queued_job_is_polled_with_the_key_that_submitted_it(
    make_mock_client: Build,
) -> None:
    """processing → fetch with the same key and request_id until success; eta times the polls."""
    fetches = 0

    def handler(request: MockRequest) -> Any:
        nonlocal fetches
        if request.url.endswith("/img2img"):
            return json_response(
                {
                    "status": "processing",
                    "id": 77,
                    "eta": 0.05,
                    "messege": "Try to fetch request after seconds estimated",
                    "future_links": ["f"],
                }
            )
        fetches += 1
        if fetches < 3:
            return json_response({"status": "processing", "id": 77, "eta": 0.01})
        return json_response(
            {"status": "success", "id": 77, "output": ["https://cdn.example/77.png"]}
        )

    pool = ServerPool(KEYS[:2], routing="least-busy", health=FAST_HEALTH)
    client, transport = make_mock_client(handler, servers=pool)
    events: list[JobEvent] = []
    async with client:
        started = time.monotonic()
        result = await client.img2img(make_request(), on_event=events.append)
        elapsed = time.monotonic() - started
    submit, *polls = transport.requests
    assert 3 == len(polls)
    assert {submit.key_fingerprint} == {p.key_fingerprint for p in polls}
    assert all(p.url.endswith("/fetch") and {"request_id": "77"} == dict(p.body) for p in polls)
    assert elapsed >= 0.05
    assert ("77", ("https://cdn.example/77.png",)) == (result.id, result.output)
    assert [EventKind.SUBMITTED, EventKind.QUEUED, EventKind.DONE] == [e.kind for e in events]
    assert 0.05 == events[1].eta


async def test_sdk_fetch_path_puts_the_id_in_the_url(make_mock_client: Build) -> None:
    """Endpoints.sdk() submits to images/img2img and fetches images/fetch/{id} with only the key."""
    client, transport = make_mock_client(
        script(json_response({"status": "processing", "id": 5, "eta": 0.001})),
        endpoints=Endpoints.sdk(),
    )
    async with client:
        await client.img2img(make_request())
    submit, fetch = transport.requests
    assert submit.url.endswith("/images/img2img")
    assert fetch.url.endswith("/images/fetch/5")
    assert {} == dict(fetch.body)


@pytest.mark.parametrize(
    "transient",
    [
        ConnectError("refused"),
        json_response({"status": "error", "message": "Rate limit exceeded"}, status=429),
        json_response({"status": "processing", "messege": "try again later.", "output": ""}),
        json_response(
            {"status": "error", "message": "Internal server error. Please try again."}, status=500
        ),
        json_response({"status": "error", "message": "Service temporarily unavailable"}),
    ],
)
async def test_transient_failures_are_retried(make_mock_client: Build, transient: Any) -> None:
    """Connection errors, 429, busy answers and 5xx are retried, and the job succeeds."""
    client, transport = make_mock_client(script(transient, transient, json_response(SUCCESS)))
    async with client:
        result = await client.img2img(make_request())
    assert 3 == result.attempts == len(transport.requests)
    assert not result.possible_duplicate


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            json_response({"status": "error", "message": "Invalid API key"}, status=401),
            AuthenticationError,
        ),
        (json_response({"status": "error", "messege": "Model not found: x"}), APIError),
        (json_response({"status": "failed", "id": 3, "message": "NSFW"}), JobFailedError),
    ],
)
async def test_permanent_failures_are_not_retried(
    make_mock_client: Build, answer: Any, error: type[Exception]
) -> None:
    """Auth errors (with no other server), API errors and failed jobs end the job at once."""
    client, transport = make_mock_client(script(answer))
    async with client:
        with pytest.raises(error) as caught:
            await client.img2img(make_request())
    assert 1 == len(transport.requests)
    assert 1 == len(caught.value.attempts)  # type: ignore[attr-defined]


async def test_lost_answers_are_resubmitted_and_flagged_as_possible_duplicates(
    make_mock_client: Build,
) -> None:
    """A request that was sent and whose answer was lost may have run: the result says so."""
    client, transport = make_mock_client(script(ReadError("disconnected"), json_response(SUCCESS)))
    async with client:
        result = await client.img2img(make_request())
    assert (2, True) == (len(transport.requests), result.possible_duplicate)


async def test_connect_errors_never_flag_duplicates(make_mock_client: Build) -> None:
    """A request that never left cannot have started a job."""
    client, _ = make_mock_client(script(ConnectError("refused"), json_response(SUCCESS)))
    async with client:
        result = await client.img2img(make_request())
    assert not result.possible_duplicate


async def test_policy_can_forbid_resubmitting_after_send(make_mock_client: Build) -> None:
    """With resubmit_after_send=False a lost answer ends the job with ReadError."""
    retry = RetryPolicy(resubmit_after_send=False, wait_initial=0, wait_max=0)
    client, transport = make_mock_client(
        script(ReadError("lost"), json_response(SUCCESS)), retry=retry
    )
    async with client:
        with pytest.raises(ReadError):
            await client.img2img(make_request())
    assert 1 == len(transport.requests)


async def test_attempts_are_capped_and_the_last_error_explains_itself(
    make_mock_client: Build,
) -> None:
    """After the last attempt the error lists every attempt, with its server."""
    client, transport = make_mock_client(
        script(json_response({"status": "error", "message": "boom"}, status=503)),
        retry=RetryPolicy.no_wait(attempts=3),
    )
    async with client:
        with pytest.raises(ServerError) as caught:
            await client.img2img(make_request())
    assert 3 == len(transport.requests) == len(caught.value.attempts)
    assert {"ServerError"} == {a.error for a in caught.value.attempts}
    assert "after 3 attempts" in str(caught.value)


async def test_retry_after_is_honoured_when_no_other_server_can_take_the_job(
    make_mock_client: Build,
) -> None:
    """A lone server's 429 with Retry-After: 0.2 delays the next attempt by about that long."""
    limited = json_response(
        {"status": "error", "message": "Rate limit exceeded"},
        status=429,
        headers={"retry-after": "0.2"},
    )
    client, transport = make_mock_client(
        script(limited, json_response(SUCCESS)), retry=RetryPolicy(wait_initial=0, jitter=0)
    )
    async with client:
        started = time.monotonic()
        await client.img2img(make_request())
        elapsed = time.monotonic() - started
    assert 2 == len(transport.requests)
    assert 0.2 <= elapsed < 1.0


async def test_retry_after_is_capped(make_mock_client: Build) -> None:
    """A server asking for an hour is waited on only up to retry_after_max."""
    limited = json_response(
        {"status": "error", "message": "Rate limit exceeded", "retry_after": 3600}, status=429
    )
    retry = RetryPolicy(wait_initial=0, jitter=0, retry_after_max=0.05)
    pool = ServerPool(KEYS[:1], health=HealthPolicy(max_cooldown=0.05))
    client, _ = make_mock_client(script(limited, json_response(SUCCESS)), retry=retry, servers=pool)
    async with client:
        started = time.monotonic()
        await client.img2img(make_request())
    assert time.monotonic() - started < 1.0


async def test_cancellation_is_never_retried(make_mock_client: Build) -> None:
    """Cancelling a job mid-request cancels it: no retry, no slot kept."""
    entered = asyncio.Event()

    async def handler(request: MockRequest) -> Any:
        entered.set()
        await asyncio.sleep(10)
        return json_response(SUCCESS)

    client, transport = make_mock_client(handler)
    async with client:
        task = asyncio.create_task(client.img2img(make_request()))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert 1 == len(transport.requests)
        assert 0 == client.pool.snapshot()[0].active


async def test_the_deadline_covers_polling_and_keeps_the_request_id(
    make_mock_client: Build,
) -> None:
    """A job still processing at its deadline raises JobTimeoutError with the id to fetch later."""

    def handler(request: MockRequest) -> Any:
        return json_response({"status": "processing", "id": 99, "eta": 0.01})

    client, _ = make_mock_client(handler)
    async with client:
        with pytest.raises(JobTimeoutError) as caught:
            await client.img2img(make_request(), timeout=0.1)
    assert ("99", "server-1 (balancer)") == (caught.value.request_id, caught.value.server)
    assert "request 99 may still finish" in str(caught.value)


async def test_fetch_errors_do_not_resubmit(make_mock_client: Build) -> None:
    """Transient fetch failures are polled through; the job is never submitted twice."""
    fetches = 0

    def handler(request: MockRequest) -> Any:
        nonlocal fetches
        if request.url.endswith("/img2img"):
            return json_response({"status": "processing", "id": 8, "eta": 0.001})
        fetches += 1
        if fetches == 1:
            raise ConnectError("refused")
        if fetches == 2:
            return json_response(
                {"status": "error", "message": "Rate limit exceeded", "retry_after": 0.01},
                status=429,
            )
        return json_response(SUCCESS)

    client, transport = make_mock_client(handler)
    async with client:
        result = await client.img2img(make_request())
    assert 1 == sum(r.url.endswith("/img2img") for r in transport.requests)
    assert (3, 1) == (fetches, result.attempts)


async def test_a_failed_fetch_ends_the_job(make_mock_client: Build) -> None:
    """A job the server reports as failed (or unknown) ends with JobFailedError and its id."""

    def handler(request: MockRequest) -> Any:
        if request.url.endswith("/img2img"):
            return json_response({"status": "processing", "id": 8, "eta": 0.001})
        return json_response({"status": "failed", "id": 8, "message": "GPU fault"})

    client, _ = make_mock_client(handler)
    async with client:
        with pytest.raises(JobFailedError) as caught:
            await client.img2img(make_request())
    assert ("8", "GPU fault") == (caught.value.request_id, caught.value.api_message)


async def test_fetch_collects_a_job_by_id_and_fetch_once_looks_once(
    make_mock_client: Build,
) -> None:
    """A job accepted earlier can be collected (polling) or looked at once."""
    answers = [json_response({"status": "processing", "id": 5, "eta": 1.5}), json_response(SUCCESS)]

    client, transport = make_mock_client(
        lambda request: answers.pop(0) if len(answers) > 1 else answers[0]
    )
    async with client:
        status = await client.fetch_once(5)
        assert (False, 1.5, None) == (status.done, status.eta, status.result)
        result = await client.fetch("5")
    assert ("11", 2) == (result.id, len(transport.requests))


async def test_system_details(make_mock_client: Build) -> None:
    """system_details reports status, queue time and model count."""
    client, transport = make_mock_client(
        lambda r: json_response({"model_count": 2, "queue_time": 1.5, "status": "ok"})
    )
    async with client:
        details = await client.system_details()
    assert ("ok", 1.5, 2) == (details.status, details.queue_time, details.model_count)
    assert transport.requests[0].url.endswith("/system_details")


async def test_client_lifecycle(make_mock_client: Build) -> None:
    """A client opens once, closes its transport, and refuses work once closed."""
    client, transport = make_mock_client(script(json_response(SUCCESS)))
    async with client:
        with pytest.raises(RuntimeError):
            await client.__aenter__()
    assert transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.img2img(make_request())
    assert "closed" in repr(client)


async def test_a_single_key_string_is_refused() -> None:
    """Passing one key string instead of a list is caught (it would be split into characters)."""
    with pytest.raises(ValueError, match="servers"):
        Client("abc")  # type: ignore[arg-type]


async def test_local_files_are_read_off_the_loop(make_mock_client: Build, tmp_path: Any) -> None:
    """A job with a local image sends it base64-encoded."""
    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    client, transport = make_mock_client(script(json_response(SUCCESS)))
    async with client:
        await client.img2img(make_request(init_image=image))
    assert ("cG5n", "yes") == (
        transport.requests[0].body["init_image"],
        transport.requests[0].body["base64"],
    )


async def test_request_type_is_checked(make_mock_client: Build) -> None:
    """img2img refuses anything but an Img2ImgRequest, before sending."""
    client, transport = make_mock_client(script(json_response(SUCCESS)))
    async with client:
        with pytest.raises(ValueError, match="request"):
            await client.img2img({"prompt": "x"})  # type: ignore[arg-type]
    assert [] == transport.requests


async def test_rate_limit_error_carries_retry_after(make_mock_client: Build) -> None:
    """When retries run out on a 429, the error keeps the server's Retry-After."""
    limited = json_response(
        {"status": "error", "message": "Rate limit exceeded", "retry_after": 0.01}, status=429
    )
    client, _ = make_mock_client(script(limited), retry=RetryPolicy.no_wait(attempts=2))
    async with client:
        with pytest.raises(RateLimitError) as caught:
            await client.img2img(make_request())
    assert 0.01 == caught.value.retry_after


async def test_busy_answers_cool_the_server_briefly(make_mock_client: Build) -> None:
    """A busy server is taken out for busy_cooldown, and the error type says busy."""
    busy = json_response({"status": "processing", "messege": "try again later.", "output": ""})
    pool = ServerPool(KEYS[:1], health=HealthPolicy(busy_cooldown=30))
    client, _ = make_mock_client(script(busy), servers=pool, retry=RetryPolicy.disabled())
    async with client:
        with pytest.raises(ServerBusyError):
            await client.img2img(make_request())
        assert "cooling" == client.pool.snapshot()[0].state


async def test_background_probes_bring_a_broken_server_back_and_stop_on_close(
    make_mock_client: Build,
) -> None:
    """With probe_interval, a system_details probe is the half-open probe that closes an open
    breaker; closing the client stops them."""
    pool = ServerPool(
        KEYS[:2], routing="least-busy", health=HealthPolicy(probe_interval=0.01, reset_timeout=0.05)
    )
    client, transport = make_mock_client(
        lambda request: json_response({"model_count": 1, "queue_time": 0, "status": "ok"}),
        servers=pool,
    )
    record_failure(pool, 0, AuthenticationError("Invalid API key", status_code=401))
    assert "open" == pool.snapshot()[0].state
    before = asyncio.all_tasks()
    async with client:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "closed" == pool.snapshot()[0].state:
                break
        assert "closed" == pool.snapshot()[0].state
    assert before == asyncio.all_tasks()
    assert all(r.url.endswith("/system_details") for r in transport.requests)


async def test_failing_probes_keep_a_server_out(make_mock_client: Build) -> None:
    """A probe that fails counts against the server's health."""
    pool = ServerPool(KEYS[:1], health=HealthPolicy(probe_interval=0.01, failure_threshold=2))
    client, _ = make_mock_client(
        lambda request: json_response({"status": "error"}, status=502), servers=pool
    )
    async with client:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "open" == pool.snapshot()[0].state:
                break
    assert "open" == pool.snapshot()[0].state


async def test_an_invalid_first_key_fails_over_to_the_other_keys(make_mock_client: Build) -> None:
    """In first-server mode, a refused first key moves the job to another server's own key."""
    refused = fingerprint(KEYS[0])

    def handler(request: MockRequest) -> Any:
        if request.key_fingerprint == refused:
            return json_response({"status": "error", "message": "Invalid API key"}, status=401)
        return json_response(SUCCESS)

    pool = ServerPool(KEYS[:2], health=HealthPolicy(reset_timeout=60))
    client, transport = make_mock_client(handler, servers=pool)
    async with client:
        result = await client.img2img(make_request())
        again = await client.img2img(make_request())
    assert ("server-2", 2) == (result.server, result.attempts)
    assert ("server-2", 1) == (again.server, again.attempts)
    assert "open" == pool.snapshot()[0].state
    assert [refused, fingerprint(KEYS[1]), fingerprint(KEYS[1])] == [
        r.key_fingerprint for r in transport.requests
    ]


def test_the_first_look_lands_just_after_the_eta() -> None:
    """With the server's eta, the first poll waits eta plus at most ~5%; without, it backs off."""
    policy = PollPolicy()
    delays = [policy.delay(10.0, None) for _ in range(200)]
    assert all(10.0 <= d <= 10.5 for d in delays)
    assert 1.0 <= policy.delay(None, None) <= 1.05
    assert 1.5 <= policy.delay(None, 1.0) <= 1.6
    assert policy.max_interval == policy.delay(None, 1000.0)
    assert policy.min_interval == policy.delay(0.0001, None)
