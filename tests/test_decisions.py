"""The one decision table: what each error means, and server-sent numbers made safe."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from modelslab_async import (
    APIError,
    AuthenticationError,
    Client,
    ConnectError,
    JobFailedError,
    RateLimitError,
    ReadError,
    ResponseFormatError,
    RetryPolicy,
    ServerBusyError,
    ServerError,
    ServerPool,
    Timeouts,
)
from modelslab_async._decisions import Elsewhere, Health, finite_wait, judge
from modelslab_async._responses import retry_after_seconds
from modelslab_async.testing import MockRequest, MockTransport, json_response

from ._helpers import FAST_HEALTH, FAST_POLL, KEYS, make_request

SUCCESS = {"status": "success", "id": 7, "output": ["https://cdn.example/7.png"]}


@pytest.mark.parametrize(
    ("error", "retry", "elsewhere", "sent", "health"),
    [
        (ConnectError("refused"), True, Elsewhere.PREFER, False, Health.FAILURE),
        (ConnectError("EMFILE", local=True), True, Elsewhere.ANY, False, Health.NONE),
        (ReadError("lost", timed_out=True), True, Elsewhere.ONLY, True, Health.FAILURE),
        (ResponseFormatError("html", status_code=200), True, Elsewhere.ONLY, True, Health.FAILURE),
        (ServerError("bad gateway", status_code=502), True, Elsewhere.ONLY, True, Health.FAILURE),
        (ServerError("timeout", status_code=504), True, Elsewhere.ONLY, True, Health.FAILURE),
        (ServerError("oops", status_code=500), True, Elsewhere.PREFER, False, Health.FAILURE),
        (ServerBusyError("busy", status_code=200), True, Elsewhere.PREFER, False, Health.COOLDOWN),
        (RateLimitError("slow", retry_after=3), True, Elsewhere.PREFER, False, Health.COOLDOWN),
        (
            AuthenticationError("bad key", status_code=401),
            True,
            Elsewhere.ONLY,
            False,
            Health.FATAL,
        ),
        (APIError("Model not found", status_code=200), False, Elsewhere.ANY, False, Health.NONE),
        (JobFailedError("nsfw"), False, Elsewhere.ANY, False, Health.NONE),
        (ValueError("a bug"), False, Elsewhere.ANY, False, Health.NONE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_every_error_has_one_verdict(
    error: Exception, retry: bool, elsewhere: Elsewhere, sent: bool, health: Health
) -> None:
    """Retry, where, may it have started, and what it does to the server: one row each."""
    verdict = judge(error)
    assert (retry, elsewhere, sent, health) == (
        verdict.retry,
        verdict.elsewhere,
        verdict.sent,
        verdict.health,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (math.nan, None),
        ("3", None),
        (True, None),
        (None, None),
        (-5, 0.0),
        (math.inf, 86_400.0),
        (1e300, 86_400.0),
        (2.5, 2.5),
    ],
)
def test_server_sent_waits_are_finite_and_non_negative(value: Any, expected: Any) -> None:
    """NaN and garbage are no wait at all; negatives are 0; infinity is a day at most."""
    assert expected == finite_wait(value)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "NaN"},
        {"retry-after": "inf"},
        {"retry-after": "-3"},
        {"retry-after": "9" * 400},
        {"retry-after-ms": "nan"},
        {"retry-after": "Wed, 21 Oct 2999 07:28:00 GMT"},
        {"retry-after": "garbage"},
    ],
)
def test_retry_after_headers_never_give_a_bad_number(headers: dict[str, str]) -> None:
    """Whatever the header says, the wait is None or a finite, non-negative number."""
    wait = retry_after_seconds(headers, math.nan)
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= 86_400)


def client_over(handler: Any, retry: RetryPolicy, servers: int = 1) -> Client:
    return Client(
        ServerPool(KEYS[:servers], health=FAST_HEALTH, routing="least-busy"),
        transport=MockTransport(handler),
        retry=retry,
        poll=FAST_POLL,
        timeouts=Timeouts(job=5.0),
    )


async def test_a_nan_retry_after_neither_hangs_the_job_nor_disturbs_other_timers() -> None:
    """Retry-After: NaN is ignored: the job retries after its backoff, and an unrelated timer
    elsewhere in the process fires on time (a NaN sleep corrupts the loop's timer heap)."""
    answers = iter(
        [json_response({"status": "error", "message": "Rate limit"}, 429, {"retry-after": "NaN"})]
    )

    def handler(request: MockRequest) -> Any:
        return next(answers, json_response(SUCCESS))

    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    started = time.monotonic()
    loop.call_later(0.05, fired.set_result, None)
    async with client_over(handler, RetryPolicy(wait_initial=0.01, wait_max=0.01)) as client:
        result = await asyncio.wait_for(client.img2img(make_request()), 2)
        await asyncio.wait_for(fired, 1)
    assert result.output
    assert time.monotonic() - started < 1


async def test_server_busy_under_200_is_transient_like_a_503() -> None:
    """'Server busy, please try again later.' with status error is retried, not a failure."""
    answers = iter(
        [json_response({"status": "error", "message": "Server busy, please try again later."})]
    )
    requests: list[MockRequest] = []

    def handler(request: MockRequest) -> Any:
        requests.append(request)
        return next(answers, json_response(SUCCESS))

    async with client_over(handler, RetryPolicy.no_wait()) as client:
        result = await client.img2img(make_request())
    assert result.output
    assert 2 == len(requests)


@pytest.mark.parametrize(
    "failure",
    [
        json_response({"status": "error", "message": "Bad Gateway"}, 502),
        json_response({"status": "error", "message": "Gateway Timeout"}, 504),
        ReadError("no answer within the read timeout", timed_out=True),
        ReadError("server closed the connection without answering"),
        json_response("<html>gateway</html>", 200),
    ],
    ids=["502", "504", "read-timeout", "dropped", "html"],
)
async def test_resubmit_after_send_false_never_submits_a_job_twice(failure: Any) -> None:
    """Once a submit may have reached a server, the job is never submitted again."""
    requests: list[MockRequest] = []

    def handler(request: MockRequest) -> Any:
        requests.append(request)
        if isinstance(failure, Exception):
            raise failure
        return failure

    retry = RetryPolicy(resubmit_after_send=False, wait_initial=0, wait_max=0)
    async with client_over(handler, retry, servers=3) as client:
        with pytest.raises((ServerError, ReadError, ResponseFormatError)) as caught:
            await client.img2img(make_request())
    assert 1 == len(requests)
    assert not caught.value.possible_duplicate
